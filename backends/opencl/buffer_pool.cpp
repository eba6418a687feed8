#include "buffer_pool.hpp"

#include <algorithm>

namespace hops::opencl {

namespace {

constexpr size_t kGranule = 4096;

// A failed command also frees its block: nothing will touch it any more.
bool finished(const EventHandle& event) {
  cl_int status = CL_COMPLETE;
  if (clGetEventInfo(event.get(), CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status,
                     nullptr) != CL_SUCCESS) {
    return true;
  }
  return status == CL_COMPLETE || status < 0;
}

}  // namespace

BufferPool::Lease::~Lease() {
  if (!pool_) return;
  const std::scoped_lock lock(pool_->mutex_);
  block_->leased = false;
  block_->pending = std::move(last_);
}

BufferPool::Lease BufferPool::acquire(size_t bytes) {
  const std::scoped_lock lock(mutex_);
  Block* best = nullptr;
  for (const auto& block : blocks_) {
    if (block->leased) continue;
    if (block->pending && finished(block->pending)) block->pending = EventHandle();
    if (!block->pending && block->bytes >= bytes && (!best || block->bytes < best->bytes)) {
      best = block.get();
    }
  }
  if (!best) {
    auto block = std::make_unique<Block>();
    block->bytes = (std::max<size_t>(bytes, 1) + kGranule - 1) / kGranule * kGranule;
    cl_int status = CL_SUCCESS;
    block->buffer =
        MemHandle(clCreateBuffer(context_, CL_MEM_READ_WRITE, block->bytes, nullptr, &status));
    check(status, fmt::format("clCreateBuffer({} bytes of scratch)", block->bytes));
    best = blocks_.emplace_back(std::move(block)).get();
  }
  best->leased = true;
  return {*this, *best};
}

size_t BufferPool::buffer_count() const {
  const std::scoped_lock lock(mutex_);
  return blocks_.size();
}

}  // namespace hops::opencl
