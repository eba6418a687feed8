// Scratch memory that is reused across calls: a call leases a block and gives
// it back when the lease ends, so a steady stream of same-sized calls
// allocates nothing after the first. Blocks come from the host's allocator
// when one is set (hops_api::set_allocator), else from the system.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "hops/hops.h"

namespace hops {

class ScratchPool {
 public:
  explicit ScratchPool(DLDevice device) : device_(device) {}
  ~ScratchPool();
  ScratchPool(const ScratchPool&) = delete;
  ScratchPool& operator=(const ScratchPool&) = delete;

  class Lease {
   public:
    Lease(Lease&& other) noexcept : pool_(other.pool_), data_(other.data_) {
      other.pool_ = nullptr;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_) pool_->release(data_);
    }
    template <class T>
    T* as() const {
      return static_cast<T*>(data_);
    }

   private:
    friend class ScratchPool;
    Lease(ScratchPool* pool, void* data) : pool_(pool), data_(data) {}
    ScratchPool* pool_;
    void* data_;
  };

  // Throws Error(HOPS_ERR_OUT_OF_MEMORY) when no memory can be had, or when
  // `bytes` is over kMaxScratchBytes (checked_math.hpp).
  Lease acquire(size_t bytes);

  // Frees idle blocks and uses `allocator` (NULL: the system) from now on.
  void set_allocator(const hops_allocator* allocator);

  // Blocks allocated so far: constant in steady state.
  size_t allocation_count() const;

 private:
  struct Block {
    void* data;
    size_t bytes;
    bool in_use;
    hops_allocator owner;  // who allocated it, so that it returns there
  };
  void release(void* data);
  void free_block(const Block& block);

  DLDevice device_;
  mutable std::mutex mutex_;
  std::vector<Block> blocks_;
  hops_allocator allocator_{};  // struct_size 0: none
  size_t allocations_ = 0;
};

}  // namespace hops
