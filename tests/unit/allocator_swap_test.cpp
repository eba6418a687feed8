// hops_api::set_allocator while other threads call ops. The contract: a call
// gives the same bytes whichever allocator serves its scratch, and every
// block goes back to the allocator that made it (one that was in use during a
// swap stays with its maker). Run under ThreadSanitizer by ./run.sh test
// (ctest -L threads in build-tsan/).
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "host_tensor.hpp"
#include "scratch_pool.hpp"

namespace hops {
namespace {

// libhops.so as a host loads it. Loaded, not linked: ThreadSanitizer must be
// running before the loader calls the CPU kernels' ifunc resolvers
// (target_clones), which it instruments.
const hops_api* api() {
  static const hops_api* const table = [] {
    void* library = dlopen(HOPS_LIBRARY_PATH, RTLD_NOW | RTLD_LOCAL);
    const auto get_api =
        library ? reinterpret_cast<hops_get_api_fn>(dlsym(library, "hops_get_api")) : nullptr;
    return get_api ? get_api(HOPS_ABI_MAJOR) : nullptr;
  }();
  return table;
}

// A host allocator that keeps a ledger of its live blocks, so that a block
// freed by the wrong allocator, freed twice, freed with the wrong size or
// never freed shows. New blocks are filled with NaN bytes: a kernel that reads
// scratch it has not written then gives wrong results.
class LedgerAllocator {
 public:
  hops_allocator table() { return {sizeof(hops_allocator), this, &alloc, &release}; }

  size_t allocations() const {
    const std::scoped_lock lock(mutex_);
    return allocations_;
  }
  size_t live() const {
    const std::scoped_lock lock(mutex_);
    return live_.size();
  }
  std::vector<std::string> errors() const {
    const std::scoped_lock lock(mutex_);
    return errors_;
  }

 private:
  static void* alloc(void* ctx, DLDevice device, size_t bytes, void*) {
    auto& self = *static_cast<LedgerAllocator*>(ctx);
    if (device.device_type != kDLCPU) return nullptr;
    void* data = std::aligned_alloc(64, bytes);
    if (!data) return nullptr;
    std::memset(data, 0xff, bytes);
    const std::scoped_lock lock(self.mutex_);
    self.live_[data] = bytes;
    ++self.allocations_;
    return data;
  }
  static void release(void* ctx, DLDevice, void* ptr, size_t bytes, void*) {
    auto& self = *static_cast<LedgerAllocator*>(ctx);
    const std::scoped_lock lock(self.mutex_);
    const auto block = self.live_.find(ptr);
    if (block == self.live_.end()) {
      // Not ours (or already freed): keep it, freeing would corrupt the heap.
      self.errors_.push_back("free of a block this allocator does not hold");
      return;
    }
    if (block->second != bytes) {
      self.errors_.push_back("free with " + std::to_string(bytes) + " bytes, allocated " +
                             std::to_string(block->second));
    }
    self.live_.erase(block);
    std::free(ptr);  // NOLINT(cppcoreguidelines-owning-memory): the ledger owns its blocks
  }

  mutable std::mutex mutex_;
  std::map<void*, size_t> live_;
  size_t allocations_ = 0;
  std::vector<std::string> errors_;
};

const hops_exec kExec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, HOPS_EXEC_DETERMINISTIC, 0, nullptr};

// One caller's calls: three ops that lease scratch, each into its own outputs.
struct Calls {
  std::mt19937 random{7};  // the same inputs in every caller
  HostTensor norm_x{{64, 256}, random, -1, 1}, norm_z{{64, 256}, random, -3, 3},
      norm_w{{256}, random, 0.5, 1.5}, norm_y{{64, 256}, random, 0, 0};
  HostTensor conv_x{{2, 300, 128}, random, -1, 1}, conv_w{{128, 4}, random, -1, 1},
      conv_b{{128}, random, -1, 1}, conv_y{{2, 300, 128}, random, 0, 0};
  HostTensor q{{1, 150, 2, 16}, random, -1, 1}, k{{1, 150, 2, 16}, random, -1, 1},
      v{{1, 150, 4, 16}, random, -1, 1}, g{{1, 150, 4}, random, -0.2f, -0.01f},
      beta{{1, 150, 4}, random, 0, 1}, o{{1, 150, 4, 16}, random, 0, 0};

  // The status of the first failing call, HOPS_OK when all three ran.
  hops_status run() {
    const auto norm = reinterpret_cast<hops_gated_rmsnorm_fn>(api()->find_op("gated_rmsnorm")->fn);
    const auto conv = reinterpret_cast<hops_conv1d_fwd_fn>(api()->find_op("conv1d_fwd")->fn);
    const auto chunk = reinterpret_cast<hops_gdn_chunk_fwd_fn>(api()->find_op("gdn_chunk_fwd")->fn);
    hops_status status = norm(&kExec, &norm_x.dl, &norm_z.dl, &norm_w.dl, &norm_y.dl, 1e-6);
    if (status == HOPS_OK) {
      status = conv(&kExec, &conv_x.dl, &conv_w.dl, &conv_b.dl, nullptr, nullptr, &conv_y.dl,
                    nullptr, HOPS_ACTIVATION_SILU, false);
    }
    if (status == HOPS_OK) {
      status = chunk(&kExec, &q.dl, &k.dl, &v.dl, &g.dl, &beta.dl, nullptr, nullptr, nullptr,
                     nullptr, &o.dl, nullptr, 0.0, true, false);
    }
    return status;
  }
  std::vector<float> outputs() const {
    std::vector<float> all(norm_y.data);
    all.insert(all.end(), conv_y.data.begin(), conv_y.data.end());
    all.insert(all.end(), o.data.begin(), o.data.end());
    return all;
  }
};

bool same_bytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(AllocatorSwap, CallsDuringSwapsKeepTheirResultsAndBlocksGoHome) {
  ASSERT_NE(api(), nullptr);
  ASSERT_EQ(api()->set_allocator(nullptr), HOPS_OK);
  std::vector<float> expected;
  {
    Calls alone;
    ASSERT_EQ(alone.run(), HOPS_OK) << api()->last_error();
    expected = alone.outputs();
  }

  LedgerAllocator first, second;
  const hops_allocator tables[] = {first.table(), second.table()};
  constexpr int kCallers = 4;
  constexpr int kCycles = 5;  // of first, second, the built-in pools
  std::atomic<bool> swapping{true};
  std::vector<std::string> failures(kCallers + 1);  // one per caller, then the swapper's
  {
    std::vector<std::jthread> threads;
    for (int c = 0; c < kCallers; ++c) {
      threads.emplace_back([&, c] {
        Calls mine;
        for (int round = 0; swapping.load() && failures[c].empty(); ++round) {
          if (const hops_status status = mine.run(); status != HOPS_OK) {
            failures[c] = std::string("round ") + std::to_string(round) + ": " +
                          api()->status_name(status) + ": " + api()->last_error();
          } else if (!same_bytes(mine.outputs(), expected)) {
            failures[c] = "round " + std::to_string(round) + ": outputs differ from the call alone";
          }
          std::fill(mine.norm_y.data.begin(), mine.norm_y.data.end(), 0.0f);
          std::fill(mine.conv_y.data.begin(), mine.conv_y.data.end(), 0.0f);
          std::fill(mine.o.data.begin(), mine.o.data.end(), 0.0f);
        }
      });
    }
    // Each host allocator stays in force until it has served a block. Blocks
    // in use at a swap go on serving calls, so it is set again (which frees
    // the idle ones) until a call needs a new block.
    threads.emplace_back([&] {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      for (int cycle = 0; cycle < kCycles && failures[kCallers].empty(); ++cycle) {
        for (int i = 0; i < 2 && failures[kCallers].empty(); ++i) {
          const LedgerAllocator& ledger = i == 0 ? first : second;
          const size_t before = ledger.allocations();
          while (ledger.allocations() == before) {
            if (api()->set_allocator(&tables[i]) != HOPS_OK ||
                std::chrono::steady_clock::now() > deadline) {
              failures[kCallers] = "allocator " + std::to_string(i) + " served no block in time";
              break;
            }
            std::this_thread::yield();
          }
        }
        if (api()->set_allocator(nullptr) != HOPS_OK) failures[kCallers] = "set_allocator(NULL)";
        std::this_thread::yield();
      }
      swapping = false;
    });
  }
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(failures[c], "") << "caller " << c;
  EXPECT_EQ(failures[kCallers], "") << "the swapper";

  // Every call is over, so every block is idle: restoring the built-in pools
  // hands each one back to its maker.
  ASSERT_EQ(api()->set_allocator(nullptr), HOPS_OK);
  EXPECT_GE(first.allocations(), size_t{kCycles});
  EXPECT_GE(second.allocations(), size_t{kCycles});
  EXPECT_EQ(first.live(), 0u);
  EXPECT_EQ(second.live(), 0u);
  EXPECT_EQ(first.errors(), std::vector<std::string>{});
  EXPECT_EQ(second.errors(), std::vector<std::string>{});
}

// The deterministic core of the above, on one pool: a block leased under one
// allocator and released after a swap is reused, then freed by its maker.
TEST(AllocatorSwap, ABlockInUseDuringSwapsStaysWithItsMaker) {
  LedgerAllocator first, second;
  const hops_allocator first_table = first.table(), second_table = second.table();
  {
    ScratchPool pool({kDLCPU, 0});
    pool.set_allocator(&first_table);
    {
      const auto lease = pool.acquire(1000);
      pool.set_allocator(&second_table);
      pool.set_allocator(nullptr);
      EXPECT_EQ(first.live(), 1u) << "a block in use was freed";
    }
    { const auto again = pool.acquire(500); }  // the idle block fits: no new allocation
    EXPECT_EQ(first.allocations(), 1u);
    pool.set_allocator(&second_table);
    EXPECT_EQ(first.live(), 0u) << "the idle block went back at the swap";
    { const auto lease = pool.acquire(1000); }
  }
  EXPECT_EQ(second.allocations(), 1u);
  EXPECT_EQ(second.live(), 0u) << "the pool's last block went back when the pool went";
  EXPECT_EQ(first.errors(), std::vector<std::string>{});
  EXPECT_EQ(second.errors(), std::vector<std::string>{});
}

}  // namespace
}  // namespace hops
