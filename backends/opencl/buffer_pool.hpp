// Device scratch of one cl_context, reused across calls. Calls are
// asynchronous, so a block cannot go back to the pool when the host function
// returns: the lease records the event of the last command that touches the
// block, and the block is reused only once that event has completed. Steady
// state creates no buffers; the pool grows when every block is in flight.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "cl.hpp"

namespace hops::opencl {

class BufferPool {
  struct Block {
    MemHandle buffer;
    size_t bytes = 0;
    bool leased = false;
    EventHandle pending;             // busy until this completes
    std::vector<std::byte> staging;  // host source of an upload, alive while busy
  };

 public:
  explicit BufferPool(cl_context context) : context_(context) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  class Lease {
   public:
    Lease(BufferPool& pool, Block& block) : pool_(&pool), block_(&block) {}
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)),
          block_(other.block_),
          last_(std::move(other.last_)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease();

    cl_mem buffer() const { return block_->buffer.get(); }
    // Host bytes that an asynchronous upload into buffer() may read from.
    std::vector<std::byte>& staging() const { return block_->staging; }
    // The block stays busy until `event` (the last command using it) completes.
    void busy_until(EventHandle event) { last_ = std::move(event); }

   private:
    BufferPool* pool_;
    Block* block_;
    EventHandle last_;
  };

  Lease acquire(size_t bytes);
  size_t buffer_count() const;

 private:
  cl_context context_;  // not owned: the Runtime that owns the pool holds it
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Block>> blocks_;  // unique_ptr: leases point into them
};

}  // namespace hops::opencl
