#include "scratch_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "checked_math.hpp"
#include "error.hpp"

namespace hops {

namespace {
constexpr size_t kAlignment = 64;  // a cache line, and enough for any SIMD load
}

ScratchPool::~ScratchPool() {
  for (const Block& block : blocks_) free_block(block);
}

ScratchPool::Lease ScratchPool::acquire(size_t bytes) {
  // Bounded before any arithmetic: the rounding below cannot wrap.
  if (bytes > static_cast<size_t>(kMaxScratchBytes)) {
    fail(HOPS_ERR_OUT_OF_MEMORY, "scratch: {} bytes asked, more than one request's limit of {}",
         bytes, kMaxScratchBytes);
  }
  const std::scoped_lock lock(mutex_);
  // The smallest idle block that fits keeps big blocks for big requests.
  size_t best = blocks_.size();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& block = blocks_[i];
    if (!block.in_use && block.bytes >= bytes &&
        (best == blocks_.size() || block.bytes < blocks_[best].bytes)) {
      best = i;
    }
  }
  if (best == blocks_.size()) {
    const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    void* data = allocator_.alloc ? allocator_.alloc(allocator_.ctx, device_, rounded, nullptr)
                                  : std::aligned_alloc(kAlignment, rounded);
    if (!data) fail(HOPS_ERR_OUT_OF_MEMORY, "scratch: could not allocate {} bytes", rounded);
    ++allocations_;
    blocks_.push_back({data, rounded, false, allocator_});
  }
  blocks_[best].in_use = true;
  return {this, blocks_[best].data};
}

void ScratchPool::release(void* data) {
  const std::scoped_lock lock(mutex_);
  for (Block& block : blocks_) {
    if (block.data == data) block.in_use = false;
  }
}

void ScratchPool::free_block(const Block& block) {
  if (block.owner.free) {
    block.owner.free(block.owner.ctx, device_, block.data, block.bytes, nullptr);
  } else {
    std::free(block.data);  // NOLINT(cppcoreguidelines-owning-memory): the pool owns its blocks
  }
}

void ScratchPool::set_allocator(const hops_allocator* allocator) {
  const std::scoped_lock lock(mutex_);
  std::erase_if(blocks_, [this](const Block& block) {
    if (block.in_use) return false;
    free_block(block);
    return true;
  });
  // Copy only what the host's (possibly older, smaller) struct holds.
  allocator_ = hops_allocator{};
  if (allocator)
    std::memcpy(&allocator_, allocator, std::min(allocator->struct_size, sizeof allocator_));
}

size_t ScratchPool::allocation_count() const {
  const std::scoped_lock lock(mutex_);
  return allocations_;
}

}  // namespace hops
