// A fixed pool of worker threads shared by all calls. Several host threads may
// call parallel_for at once: each call is a job whose tasks are claimed with
// an atomic counter, and the calling thread always works on its own job, so a
// call finishes even when every worker is busy elsewhere.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace hops {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // counting the caller
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(i, worker) for every i in [0, count) on at most max_workers
  // threads; worker in [0, max_workers) indexes per-worker scratch. Rethrows
  // the first exception a task threw.
  template <class Task>
  void parallel_for(int64_t count, int max_workers, Task&& task) {
    run(
        count, max_workers,
        [](void* context, int64_t i, int worker) { (*static_cast<Task*>(context))(i, worker); },
        &task);
  }

 private:
  using TaskFn = void (*)(void* context, int64_t index, int worker);
  struct Job;

  void run(int64_t count, int max_workers, TaskFn fn, void* context);
  void work_on(Job& job);
  void worker_loop(const std::stop_token& stop);

  std::mutex mutex_;
  std::condition_variable_any wake_;  // a job was queued
  std::condition_variable job_done_;  // a helper left a job
  std::deque<Job*> queue_;            // one entry per helper a job asks for
  std::vector<std::jthread> workers_;
};

// Threads to use when the host does not say: HOPS_NUM_THREADS, else all cores.
int default_thread_count();

}  // namespace hops
