// attn_decode: the L new queries of a sequence against its paged cache. The
// context is split into chunks of about kChunkTokens (whole cache blocks),
// one task per chunk and key-value head, which takes all G x L query rows of
// that head at once so that each cache row is read once: the scores are dot
// products along the head dim (attn_dots.cpp) and O = P V a register-tiled
// GEMM, both on the cache rows in place (fp32 rows with a unit feature stride
// and D a multiple of 16; other rows are converted into scratch first). Each
// task leaves its partial (max, sum, sum of p v) per row; a second pass
// merges them in chunk order, so the result does not depend on the threads.
#include <cstring>
#include <utility>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace {

using attn::kMinusInf;

constexpr int64_t kChunkTokens = 256;

struct Chunk {
  int64_t sequence, begin, end;  // tokens [begin, end) of the sequence
};

// Tokens per chunk: whole cache blocks, about kChunkTokens.
int64_t chunk_tokens(const AttnDecode& op) {
  return std::max<int64_t>(1, kChunkTokens / op.block_size) * op.block_size;
}

// The cached tokens of sequence n (check bounds them by the table).
int64_t sequence_length(const AttnDecode& op, int64_t n) { return read_index(op.seq_lens, n); }

// The partial result of one chunk and key-value head: R rows.
struct Partial {
  float* max;  // [R]
  float* sum;  // [R]
  float* acc;  // [R, Dp]
};

// A worker's blocks, fp32.
struct Blocks {
  float* q;       // [Hkv, R, Dp] the queries, times the scale (zero past D)
  float* scores;  // [Hkv, chunk, Rp] s^T, then p^T
  float* keys;    // [block_size, Dp] cache rows converted to fp32
  float* values;  // [block_size, Dp]

  static int64_t floats(std::string_view op, int64_t heads, int64_t chunk, int64_t block_size,
                        int64_t Rp, int64_t Dp) {
    return round_up(
        scratch_sum(op, scratch_size(op, heads, Dp, Rp), scratch_size(op, heads, chunk, Rp),
                    scratch_size(op, 2 * block_size, Dp)),
        kPadding);
  }
  Blocks(float* base, int64_t heads, int64_t chunk, int64_t block_size, int64_t Rp, int64_t Dp) {
    auto take = [&](int64_t count) { return std::exchange(base, base + count); };
    q = take(heads * Dp * Rp), scores = take(heads * chunk * Rp), keys = take(block_size * Dp);
    values = take(block_size * Dp);
  }
};

// Per row: the max over the chunk's tokens, then p = e^(s - max) and its sum.
// Columns are rows (Rp of them, contiguous), so the loops run across rows.
HOPS_VECTOR_CLONES void softmax_columns(float* __restrict scores, int64_t tokens, int64_t Rp,
                                        float* __restrict max, float* __restrict sum) {
  std::fill(max, max + Rp, kMinusInf);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = scores + t * Rp;
    for (int64_t r = 0; r < Rp; ++r) max[r] = std::max(max[r], row[r]);
  }
  float* shift = sum;  // the max, 0 where it is -inf (e^(-inf - 0) = 0, no NaN)
  for (int64_t r = 0; r < Rp; ++r) shift[r] = max[r] == kMinusInf ? 0.0f : max[r];
  float lanes[kPadding * 4];
  for (int64_t r0 = 0; r0 < Rp; r0 += std::size(lanes)) {
    const int64_t width = std::min<int64_t>(std::size(lanes), Rp - r0);
    std::fill(lanes, lanes + width, 0.0f);
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = scores + t * Rp + r0;
      for (int64_t r = 0; r < width; ++r) {
        row[r] = exp_approx(row[r] - shift[r0 + r]);
        lanes[r] += row[r];
      }
    }
    std::copy(lanes, lanes + width, sum + r0);
  }
}

// The next cache block (all heads: one stretch of memory) is brought into
// L2 while one is worked on, a slice per head and, for the keys, spread over
// the score tiles (attn::Dots::ahead): the blocks are scattered, and the
// hardware prefetchers find a block only after its first misses. From DRAM
// (a model's layers evict each other's caches) a 4096-token decode took
// 2.2-2.4 instead of 3.3 ms; from L3 the same (a whole block at once, before
// the block before it, took 2.5-2.9 from DRAM and 10% longer from L3).
struct Span {
  const char* start = nullptr;
  int64_t bytes = 0;
  // Part `part` of `parts` (whole cache lines).
  Span slice(int64_t part, int64_t parts) const {
    constexpr int64_t kLineBytes = 64;
    const int64_t size = round_up((bytes + parts - 1) / parts, kLineBytes);
    const int64_t from = std::min(bytes, part * size);
    return {start + from, std::min(size, bytes - from)};
  }
};
Span block_span(const AttnDecode& op, const Tensor& cache, const Chunk& chunk, int64_t first) {
  if (first >= chunk.end) return {};
  const int64_t block = read_index(op.block_table, chunk.sequence, first / op.block_size);
  const int64_t rows = std::min(op.block_size, chunk.end - first), size = dtype_size(cache.dtype);
  const int64_t bytes = ((rows - 1) * cache.stride[1] + (op.Hkv - 1) * cache.stride[2] +
                         (op.D - 1) * cache.stride[3] + 1) *
                        size;
  const auto* start = static_cast<const char*>(cache.handle) + cache.byte_offset +
                      cache.offset(block, 0, 0, 0) * size;
  return {start, bytes};
}

// One chunk for every key-value head: the heads' rows of a cache block are
// read together (one stretch of memory), then each head's softmax and P V.
template <class PartialOf>
void attend_chunk(const AttnDecode& op, const Chunk& chunk, const Blocks& b,
                  const PartialOf& partial_of) {
  const int64_t G = op.group(), D = op.D, Dp = round_up(D, kPadding);
  const int64_t R = op.L * G, Rp = round_up(R, kPadding), bs = op.block_size;
  const int64_t length = sequence_length(op, chunk.sequence);
  const int64_t tokens = chunk.end - chunk.begin, per_chunk = chunk_tokens(op);
  const auto scale = static_cast<float>(op.scale);
  const auto queries = [&](int64_t head) { return b.q + head * R * Dp; };
  const auto scores = [&](int64_t head) { return b.scores + head * per_chunk * Rp; };
  for (int64_t head = 0; head < op.Hkv; ++head) {
    for (int64_t r = 0; r < R; ++r) {
      float* row = queries(head) + r * Dp;
      attn::load_head_row(op.q, chunk.sequence, r / G, head * G + r % G, D, Dp, row);
      for (int64_t d = 0; d < D; ++d) row[d] *= scale;
    }
  }
  for (int64_t first = chunk.begin; first < chunk.end; first += bs) {
    const Span next = block_span(op, op.k_cache, chunk, first + bs);
    const int64_t block = read_index(op.block_table, chunk.sequence, first / bs);
    const int64_t count = std::min(bs, chunk.end - first);
    for (int64_t head = 0; head < op.Hkv; ++head) {
      const attn::Rows keys =
          attn::head_rows(op.k_cache, block, 0, count, head, D, Dp, true, b.keys);
      const Span ahead = next.slice(head, op.Hkv);
      attn::dots({queries(head), R, Dp, keys.data, keys.ld, count, Dp,
                  scores(head) + (first - chunk.begin) * Rp, Rp, ahead.start, ahead.bytes});
    }
  }
  for (int64_t head = 0; head < op.Hkv; ++head) {
    // Query l sits at position length - L + l: the keys past it are masked.
    for (int64_t r = 0; r < R; ++r) {
      const int64_t seen = length - op.L + r / G + 1;
      for (int64_t t = std::max(seen, chunk.begin); t < chunk.end; ++t) {
        scores(head)[(t - chunk.begin) * Rp + r] = kMinusInf;
      }
    }
    const Partial out = partial_of(head);
    softmax_columns(scores(head), tokens, Rp, out.max, out.sum);
    std::fill(out.acc, out.acc + R * Dp, 0.0f);
  }
  for (int64_t first = chunk.begin; first < chunk.end; first += bs) {
    const Span next = block_span(op, op.v_cache, chunk, first + bs);
    const int64_t block = read_index(op.block_table, chunk.sequence, first / bs);
    const int64_t count = std::min(bs, chunk.end - first);
    for (int64_t head = 0; head < op.Hkv; ++head) {
      const Span ahead = next.slice(head, op.Hkv);
      for (int64_t byte = 0; byte < ahead.bytes; byte += 64) {
        __builtin_prefetch(ahead.start + byte, 0, 2);
      }
      const attn::Rows values =
          attn::head_rows(op.v_cache, block, 0, count, head, D, Dp, true, b.values);
      gemm({R, Dp, count, scores(head) + (first - chunk.begin) * Rp, Rp, values.data, values.ld,
            partial_of(head).acc, Dp, true, Shape::full, true});
    }
  }
}

HOPS_VECTOR_CLONES void add_scaled(float* __restrict to, const float* __restrict from, int64_t n,
                                   float factor) {
  for (int64_t d = 0; d < n; ++d) to[d] += factor * from[d];
}

}  // namespace

void attn_decode(const ExecContext& context, const AttnDecode& op) {
  const int64_t G = op.group(), D = op.D, Dp = round_up(D, kPadding);
  const int64_t R = op.L * G, Rp = round_up(R, kPadding);
  const int64_t per_chunk = chunk_tokens(op);
  int64_t count = 0;
  for (int64_t n = 0; n < op.N; ++n) count += (sequence_length(op, n) + per_chunk - 1) / per_chunk;
  const int64_t partial_floats = scratch_size(op.kName, R, Dp + 2);
  const int64_t per_worker = Blocks::floats(op.kName, op.Hkv, per_chunk, op.block_size, Rp, Dp);
  // The chunks, then where each sequence's chunks start (int64s in float slots).
  const int64_t list_floats = round_up(
      scratch_size(op.kName, scratch_sum(op.kName, scratch_size(op.kName, count, 3), op.N + 1), 2),
      kPadding);
  const int64_t partials = scratch_size(op.kName, count, op.Hkv, partial_floats);
  const auto lease = context.scratch->acquire(
      scratch_bytes(op.kName,
                    scratch_sum(op.kName, list_floats, partials,
                                scratch_size(op.kName, per_worker, context.max_workers)),
                    sizeof(float)));
  auto* chunks = lease.as<Chunk>();
  auto* firsts = reinterpret_cast<int64_t*>(chunks + count);
  float* partial_base = lease.as<float>() + list_floats;
  float* workers = partial_base + partials;
  int64_t next = 0;
  for (int64_t n = 0; n < op.N; ++n) {
    firsts[n] = next;
    const int64_t length = sequence_length(op, n);
    for (int64_t begin = 0; begin < length; begin += per_chunk) {
      chunks[next++] = {n, begin, std::min(length, begin + per_chunk)};
    }
  }
  firsts[op.N] = next;
  auto partial = [&](int64_t c, int64_t head) {
    float* base = partial_base + (c * op.Hkv + head) * partial_floats;
    return Partial{base, base + R, base + 2 * R};
  };
  context.threads->parallel_for(count, context.max_workers, [&](int64_t task, int worker) {
    const Blocks b(workers + worker * per_worker, op.Hkv, per_chunk, op.block_size, Rp, Dp);
    attend_chunk(op, chunks[task], b, [&](int64_t head) { return partial(task, head); });
  });
  // Merge the chunks of each sequence and head in order.
  context.threads->parallel_for(
      checked_product(op.kName, op.N, op.Hkv), context.max_workers, [&](int64_t task, int worker) {
        const int64_t n = task / op.Hkv, head = task % op.Hkv;
        float* out = workers + worker * per_worker;
        for (int64_t r = 0; r < R; ++r) {
          float max = kMinusInf;
          for (int64_t c = firsts[n]; c < firsts[n + 1]; ++c)
            max = std::max(max, partial(c, head).max[r]);
          std::fill(out, out + D, 0.0f);
          float sum = 0.0f;
          if (max != kMinusInf) {
            for (int64_t c = firsts[n]; c < firsts[n + 1]; ++c) {
              const Partial p = partial(c, head);
              const float weight = exp_approx(p.max[r] - max);
              sum += p.sum[r] * weight;
              add_scaled(out, p.acc + r * Dp, D, weight);
            }
          }
          for (int64_t d = 0; d < D; ++d) out[d] = sum > 0.0f ? out[d] / sum : 0.0f;
          store_run(op.o, op.o.offset(n, r / G, head * G + r % G, 0), op.o.stride[3], D, out);
        }
      });
}

}  // namespace hops::cpu
