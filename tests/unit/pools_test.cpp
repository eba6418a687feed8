#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "scratch_pool.hpp"
#include "thread_pool.hpp"

namespace hops {
namespace {

TEST(ThreadPool, RunsEveryTaskOnceWithWorkerIdsInRange) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(1000);
  std::atomic<bool> worker_in_range{true};
  pool.parallel_for(1000, 3, [&](int64_t i, int worker) {
    hits[i]++;
    if (worker < 0 || worker >= 3) worker_in_range = false;
  });
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
  EXPECT_TRUE(worker_in_range);
}

TEST(ThreadPool, ConcurrentCallersAllFinish) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 8; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        pool.parallel_for(64, pool.size(), [&](int64_t i, int) { total += i; });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 8 * 50 * (63 * 64 / 2));
}

TEST(ThreadPool, RethrowsTheTaskException) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(100, 2,
                                 [](int64_t i, int) {
                                   if (i == 42) throw std::runtime_error("task 42");
                                 }),
               std::runtime_error);
}

TEST(ScratchPool, SteadyStateAllocatesNothing) {
  ScratchPool pool({kDLCPU, 0});
  for (int i = 0; i < 100; ++i) {
    auto a = pool.acquire(1000);
    auto b = pool.acquire(50);
    EXPECT_NE(a.as<void>(), b.as<void>());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.as<void>()) % 64, 0u);
  }
  EXPECT_EQ(pool.allocation_count(), 2u);
}

TEST(ScratchPool, UsesTheHostAllocator) {
  struct Counts {
    int allocs = 0, frees = 0;
  } counts;
  hops_allocator allocator{sizeof(hops_allocator), &counts,
                           [](void* ctx, DLDevice, size_t bytes, void*) -> void* {
                             static_cast<Counts*>(ctx)->allocs++;
                             return std::aligned_alloc(64, bytes);
                           },
                           [](void* ctx, DLDevice, void* ptr, size_t, void*) {
                             static_cast<Counts*>(ctx)->frees++;
                             std::free(ptr);
                           }};
  {
    ScratchPool pool({kDLCPU, 0});
    pool.set_allocator(&allocator);
    { auto lease = pool.acquire(128); }
    { auto lease = pool.acquire(100); }
    EXPECT_EQ(counts.allocs, 1);
  }
  EXPECT_EQ(counts.frees, 1);
}

}  // namespace
}  // namespace hops
