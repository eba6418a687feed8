#include "thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>

namespace hops {

struct ThreadPool::Job {
  Job(TaskFn task_fn, void* task_context, int64_t task_count)
      : fn(task_fn), context(task_context), count(task_count) {}
  TaskFn fn;
  void* context;
  int64_t count;
  std::atomic<int64_t> next_task{0};
  std::atomic<int> next_worker{0};
  int active_helpers = 0;  // guarded by the pool mutex
  std::mutex error_mutex;
  std::exception_ptr error;
};

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) {
    workers_.emplace_back([this](const std::stop_token& stop) { worker_loop(stop); });
  }
}

ThreadPool::~ThreadPool() {
  for (auto& worker : workers_) worker.request_stop();
  wake_.notify_all();
}

void ThreadPool::work_on(Job& job) {
  const int worker = job.next_worker.fetch_add(1);
  try {
    for (int64_t i = job.next_task.fetch_add(1); i < job.count; i = job.next_task.fetch_add(1)) {
      job.fn(job.context, i, worker);
    }
  } catch (...) {
    const std::scoped_lock lock(job.error_mutex);
    if (!job.error) job.error = std::current_exception();
    job.next_task = job.count;  // stop handing out tasks
  }
}

void ThreadPool::run(int64_t count, int max_workers, TaskFn fn, void* context) {
  if (count <= 0) return;
  Job job(fn, context, count);
  const auto helpers = static_cast<int>(std::min<int64_t>(
      {count - 1, static_cast<int64_t>(max_workers) - 1, static_cast<int64_t>(workers_.size())}));
  if (helpers > 0) {
    {
      const std::scoped_lock lock(mutex_);
      for (int i = 0; i < helpers; ++i) queue_.push_back(&job);
    }
    wake_.notify_all();
  }
  work_on(job);
  if (helpers > 0) {
    std::unique_lock lock(mutex_);
    // Helpers that never started are withdrawn; running ones are awaited,
    // since the job lives on this stack.
    std::erase(queue_, &job);
    job_done_.wait(lock, [&] { return job.active_helpers == 0; });
  }
  if (job.error) std::rethrow_exception(job.error);
}

void ThreadPool::worker_loop(const std::stop_token& stop) {
  std::unique_lock lock(mutex_);
  while (wake_.wait(lock, stop, [&] { return !queue_.empty(); })) {
    Job* job = queue_.front();
    queue_.pop_front();
    ++job->active_helpers;
    lock.unlock();
    work_on(*job);
    lock.lock();
    --job->active_helpers;
    job_done_.notify_all();
  }
}

int default_thread_count() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read once, when the pool is made
  if (const char* env = std::getenv("HOPS_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace hops
