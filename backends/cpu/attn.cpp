// The attention family's list of CPU kernels, kv_cache_write, and the query
// blocks the prefill ops share.
#include <unistd.h>

#include <algorithm>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace attn {

int64_t count_key_blocks(const AttnProblem& p, int64_t block_keys) {
  int64_t count = 0;
  for (int64_t n = 0; n < p.sequences.count; ++n) {
    const auto span = p.sequences[n];
    count += (span.k_end - span.k_begin + block_keys - 1) / block_keys;
  }
  return count;
}

void list_key_blocks(const AttnProblem& p, int64_t block_keys, KeyBlock* blocks) {
  for (int64_t n = 0; n < p.sequences.count; ++n) {
    const auto span = p.sequences[n];
    const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
    for (int64_t first = 0; first < Lk; first += block_keys) {
      const int64_t queries = p.causal ? std::clamp<int64_t>(first - (Lk - Lq), 0, Lq) : 0;
      *blocks++ = {n, first, std::min(block_keys, Lk - first), queries};
    }
  }
}

int64_t query_block_tokens(const AttnProblem& p, int64_t row_bytes) {
  static const int64_t l2_bytes = [] {
    const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return bytes > 0 ? static_cast<int64_t>(bytes) : int64_t{1} << 20;
  }();
  const int64_t rows = l2_bytes / 2 / row_bytes;
  return std::max<int64_t>(1, std::clamp<int64_t>(rows, 120, 480) / p.group());
}

int64_t count_query_blocks(const AttnProblem& p, int64_t tokens) {
  int64_t count = 0;
  for (int64_t n = 0; n < p.sequences.count; ++n) {
    const auto span = p.sequences[n];
    count += (span.q_end - span.q_begin + tokens - 1) / tokens;
  }
  return count;
}

void list_query_blocks(const AttnProblem& p, int64_t tokens, int64_t block_keys,
                       QueryBlock* blocks) {
  QueryBlock* next = blocks;
  int64_t key_blocks = 0;
  for (int64_t n = 0; n < p.sequences.count; ++n) {
    const auto span = p.sequences[n];
    const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
    for (int64_t begin = 0; begin < Lq; begin += tokens) {
      const int64_t end = std::min(Lq, begin + tokens);
      *next++ = {n, begin, end, key_end(p, Lq, Lk, end - 1), key_blocks};
    }
    key_blocks += (Lk + block_keys - 1) / block_keys;
  }
  // Stable: equal blocks keep sequence order, so the schedule is reproducible.
  std::stable_sort(blocks, next,
                   [](const QueryBlock& a, const QueryBlock& b) { return a.keys > b.keys; });
}

}  // namespace attn

namespace {

constexpr int64_t kRowsPerTask = 64;

// Copies D elements (the storage type, no conversion) per head of token t
// into the cache slot.
template <class T>
void write_row(const KvCacheWrite& op, const Tensor& from, const Tensor& cache, int64_t t,
               int64_t block, int64_t offset) {
  const T* in = from.data<const T>();
  T* out = cache.data<T>();
  for (int64_t h = 0; h < op.Hkv; ++h) {
    const T* source = in + from.offset(t, h, 0);
    T* target = out + cache.offset(block, offset, h, 0);
    const int64_t in_step = from.stride[2], out_step = cache.stride[3];
    for (int64_t d = 0; d < op.D; ++d) target[d * out_step] = source[d * in_step];
  }
}

}  // namespace

void kv_cache_write(const ExecContext& context, const KvCacheWrite& op) {
  context.threads->parallel_for(
      (op.T + kRowsPerTask - 1) / kRowsPerTask, context.max_workers, [&](int64_t task, int) {
        for (int64_t t = task * kRowsPerTask; t < std::min(op.T, (task + 1) * kRowsPerTask); ++t) {
          const int64_t slot = read_index(op.slot_mapping, t);
          if (slot < 0 || slot >= op.slots()) continue;  // -1 skips; check rejected the rest
          const int64_t block = slot / op.block_size, offset = slot % op.block_size;
          visit_float(op.k.dtype, [&]<class T>(T) {
            write_row<T>(op, op.k, op.k_cache, t, block, offset);
            write_row<T>(op, op.v, op.v_cache, t, block, offset);
          });
        }
      });
}

std::span<const Kernel> attn_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<AttnPrefill, &attn_prefill>(HOPS_DTYPE_FLOATS),
      kernel<AttnPrefillBwd, &attn_prefill_bwd>(HOPS_DTYPE_FLOATS),
      kernel<AttnDecode, &attn_decode>(HOPS_DTYPE_FLOATS),
      kernel<KvCacheWrite, &kv_cache_write>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
