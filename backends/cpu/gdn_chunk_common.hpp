// What the chunked GDN kernels (gdn_chunk.cpp forward, gdn_chunk_bwd.cpp
// backward) share: the chunk length, the decay matrix of a chunk, the
// inverse of its unit lower triangular factor, and prefetching of the rows
// a chunk will touch. Blocks are C x C row-major with C = kChunk.
#pragma once

#include <cstdint>

#include "gdn.hpp"

namespace hops::cpu::gdn {

inline constexpr int64_t kChunk = 64;

// decay[i][j] = exp(G_i - G_j) for j <= i < length (G: cumulative log
// decays); `factors` is 2 kChunk floats of scratch. Entries above the
// diagonal, up to a whole vector, get values (inf among them) that readers
// must select away, never multiply by zero.
void fill_decay(const float* G, int64_t length, float* factors, float* decay);

// t = (I + A)^-1 for the strictly lower triangular A (rows of kChunk floats,
// zeros above the diagonal not read), rows [0, length).
void invert_unit_lower(const float* a, float* t, int64_t length);

// Asks for the elements of t at offset, offset + stride, ... (count of them)
// to be brought into L2 (not L1, which holds the chunk's own blocks), for
// reading or, with kForWrite, for writing.
template <int kForWrite>
void prefetch_span(const Tensor& t, int64_t offset, int64_t count, int64_t stride) {
  constexpr int64_t kLineBytes = 64;
  const auto* first =
      static_cast<const char*>(t.handle) + t.byte_offset + offset * dtype_size(t.dtype);
  const int64_t bytes = ((count - 1) * stride + 1) * dtype_size(t.dtype);
  for (int64_t byte = 0; byte < bytes; byte += kLineBytes) {
    __builtin_prefetch(first + byte, kForWrite, 2);
  }
}

}  // namespace hops::cpu::gdn
