// conv1d_bwd: the backward of the depthwise causal conv, channels last.
//
// With pre[t] = bias + sum_j w[j] u[t-(W-1)+j] (u: the sequence's inputs,
// preceded by its initial state) and dpre = dy * act'(pre):
//   du[p]      = sum_j w[j] dpre[p+(W-1)-j]  (+ d_final_state where u[p] was copied there)
//   dweight[j] = sum_t dpre[t] u[t-(W-1)+j],  dbias = sum_t dpre[t]
//
// The tokens of all sequences, flattened, are cut into chunks whose length
// depends on the token count only. A task is (chunk, block of channels): it
// recomputes pre from x, writes dx of its tokens, and sums its share of
// dweight and dbias; the shares are then added in chunk order, so the result
// is the same for any number of threads. Tasks (sequence, block of channels)
// write d_initial_state. The channel loop is innermost and contiguous, so it
// vectorises; positions move one row of up to kChannelBlock channels at a time.
#include <algorithm>

#include "checked_math.hpp"
#include "conv1d.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kChannelBlock = 256;
// About kTargetChunks chunks, for parallelism; at most kMaxChunkTokens tokens
// each, so that the fp32 sums of a share stay short.
constexpr int64_t kTargetChunks = 64;
constexpr int64_t kMinChunkTokens = 64;
constexpr int64_t kMaxChunkTokens = 2048;
// A share: dweight's W taps, then dbias, for one block of channels.
constexpr int64_t kShareRows = kMaxConvWidth + 1;
constexpr int64_t kShareFloats = kShareRows * kChannelBlock;

// The filter of channels [d0, d0 + count), tap-major, and the bias.
struct BlockFilter {
  int64_t d0, count;
  float taps[kMaxConvWidth][kChannelBlock];
  float bias[kChannelBlock];

  BlockFilter(const Conv1dBwd& op, int64_t d0, int64_t count) : d0(d0), count(count) {
    for (int64_t j = 0; j < op.W; ++j)
      load_run(op.weight, op.weight.offset(d0, j), op.weight.stride[0], count, taps[j]);
    if (op.bias) {
      load_run(op.bias, d0 * op.bias.stride[0], op.bias.stride[0], count, bias);
    } else {
      std::fill_n(bias, count, 0.0f);
    }
  }
};

// The channels of one filter block in sequence n, with per-worker rings of
// the last W positions.
struct BlockTask {
  const Conv1dBwd& op;
  const BlockFilter& filter;
  int64_t n;
  Sequences::Span span;
  int64_t d0, count;
  float* inputs;  // ring: u[p] at slot p mod W
  float* dpre;    // ring: dpre[t] at slot t mod W
  float* row;     // one row of scratch

  static constexpr int64_t kScratchFloats = (2 * kMaxConvWidth + 1) * kChannelBlock;

  BlockTask(const Conv1dBwd& op, const BlockFilter& filter, int64_t n, float* scratch)
      : op(op),
        filter(filter),
        n(n),
        span(op.sequences[n]),
        d0(filter.d0),
        count(filter.count),
        inputs(scratch),
        dpre(scratch + kMaxConvWidth * kChannelBlock),
        row(scratch + 2 * kMaxConvWidth * kChannelBlock) {}

  int64_t length() const { return span.end - span.begin; }
  float* input_slot(int64_t p) const { return inputs + ((p % op.W + op.W) % op.W) * kChannelBlock; }
  float* dpre_slot(int64_t t) const { return dpre + (t % op.W) * kChannelBlock; }

  // u[p]: a token for p >= 0, else the initial state's column L0 + p, else 0.
  void load_input(int64_t p) const {
    float* out = input_slot(p);
    const int64_t L0 = op.initial_state ? op.initial_state.shape[2] : 0;
    if (p >= 0) {
      load_run(op.x, op.x.offset(span.row, span.begin + p, d0), op.x.stride[2], count, out);
    } else if (L0 + p >= 0) {
      load_run(op.initial_state, op.initial_state.offset(n, d0, L0 + p), op.initial_state.stride[1],
               count, out);
    } else {
      std::fill_n(out, count, 0.0f);
    }
  }

  // With seq_idx (dense rows, no states): tap input p reaches token t only
  // when both have t's id; a token with a negative id is padding (y = 0).
  int64_t sequence_id(int64_t t) const { return read_index(op.seq_idx, span.row * op.T + t); }
  bool linked(int64_t p, int64_t t) const {
    return !op.seq_idx || (p >= 0 && sequence_id(p) == sequence_id(t));
  }

  // dpre[t] from dy[t] and the inputs u[t-(W-1) .. t] in the ring.
  void compute_dpre(int64_t t) const {
    float* __restrict out = dpre_slot(t);
    if (op.seq_idx && sequence_id(t) < 0) {
      std::fill_n(out, count, 0.0f);
      return;
    }
    load_run(op.dy, op.dy.offset(span.row, span.begin + t, d0), op.dy.stride[2], count, out);
    if (op.activation == Activation::none) return;  // act' = 1: no need for pre
    float* __restrict pre = row;
    std::copy_n(filter.bias, count, pre);
    for (int64_t j = 0; j < op.W; ++j) {
      if (!linked(t - (op.W - 1) + j, t)) continue;
      const float* __restrict in = input_slot(t - (op.W - 1) + j);
      for (int64_t c = 0; c < count; ++c) pre[c] += filter.taps[j][c] * in[c];
    }
    for (int64_t c = 0; c < count; ++c) {
      const float gate = sigmoid(pre[c]);
      out[c] *= gate * (1.0f + pre[c] * (1.0f - gate));  // silu'(pre)
    }
  }

  // Adds d_final_state's column for position p, if the forward copied u[p] there.
  void add_final_state_gradient(int64_t p, float* out) const {
    if (!op.d_final_state) return;
    const int64_t L1 = op.d_final_state.shape[2];
    const int64_t column = p - length() + L1;
    if (column < 0 || column >= L1) return;
    const Tensor& dfs = op.d_final_state;
    visit_float(dfs.dtype, [&]<class T>(T) {
      const T* in = dfs.data<const T>() + dfs.offset(n, d0, column);
      for (int64_t c = 0; c < count; ++c) out[c] += to_float(in[c * dfs.stride[1]]);
    });
  }

  // Tokens [s0, s1) of the sequence: dx, and their share of dweight and dbias.
  HOPS_VECTOR_CLONES void tokens(int64_t s0, int64_t s1, float* share) const {
    const int64_t W = op.W;
    for (int64_t p = s0 - (W - 1); p < s0; ++p) load_input(p);
    // dx[s] needs dpre[s .. s+W-1]: dpre runs W-1 tokens ahead (0 past the end).
    for (int64_t t = s0; t < s1 + W - 1; ++t) {
      if (t < length()) {
        load_input(t);
        compute_dpre(t);
        if (t < s1) accumulate_share(t, share);
      } else {
        std::fill_n(dpre_slot(t), count, 0.0f);
      }
      const int64_t s = t - (W - 1);
      if (s < s0) continue;
      float* __restrict dx = row;
      std::fill_n(dx, count, 0.0f);
      for (int64_t j = 0; j < W; ++j) {
        if (op.seq_idx && (t - j >= length() || !linked(s, t - j))) continue;
        const float* __restrict d = dpre_slot(t - j);  // dpre[s + (W-1) - j]
        for (int64_t c = 0; c < count; ++c) dx[c] += filter.taps[j][c] * d[c];
      }
      add_final_state_gradient(s, dx);
      store_run(op.dx, op.dx.offset(span.row, span.begin + s, d0), op.dx.stride[2], count, dx);
    }
  }

  void accumulate_share(int64_t t, float* share) const {
    const float* __restrict d = dpre_slot(t);
    for (int64_t j = 0; j < op.W; ++j) {
      if (!linked(t - (op.W - 1) + j, t)) continue;
      const float* __restrict in = input_slot(t - (op.W - 1) + j);
      float* __restrict sum = share + j * kChannelBlock;
      for (int64_t c = 0; c < count; ++c) sum[c] += d[c] * in[c];
    }
    float* __restrict bias_sum = share + kMaxConvWidth * kChannelBlock;
    for (int64_t c = 0; c < count; ++c) bias_sum[c] += d[c];
  }

  // d_initial_state: column L0 + p gets the taps that read u[p] (p < 0 only
  // reaches the first W-1 tokens) and the final state's copy of it.
  HOPS_VECTOR_CLONES void initial_state_gradient() const {
    const int64_t W = op.W, L0 = op.initial_state.shape[2];
    const int64_t first = std::min(W - 1, length());  // tokens whose taps reach back
    for (int64_t p = -(W - 1); p < first; ++p) {
      load_input(p);
      if (p >= 0) compute_dpre(p);
    }
    float* __restrict out = row;
    for (int64_t column = 0; column < L0; ++column) {
      const int64_t p = column - L0;
      std::fill_n(out, count, 0.0f);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t t = p + (W - 1) - j;
        if (t < 0 || t >= first) continue;
        const float* __restrict d = dpre_slot(t);
        for (int64_t c = 0; c < count; ++c) out[c] += filter.taps[j][c] * d[c];
      }
      add_final_state_gradient(p, out);
      store_run(op.d_initial_state, op.d_initial_state.offset(n, d0, column),
                op.d_initial_state.stride[1], count, out);
    }
  }
};

// The sequence that holds flat token f (dense: f = row * T + t).
int64_t sequence_of(const Conv1dBwd& op, int64_t f) {
  if (!op.sequences.cu_seqlens) return f / op.T;
  int64_t low = 0, high = op.sequences.count - 1;  // the last n with begin <= f
  while (low < high) {
    const int64_t mid = (low + high + 1) / 2;
    if (op.sequences[mid].begin <= f) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  return low;
}

// Flat tokens [f0, f1) of one channel block, sequence by sequence.
void chunk_task(const Conv1dBwd& op, const BlockFilter& filter, int64_t f0, int64_t f1,
                float* share, float* scratch) {
  std::fill_n(share, kShareFloats, 0.0f);
  for (int64_t f = f0; f < f1;) {
    const BlockTask task(op, filter, sequence_of(op, f), scratch);
    const int64_t start = task.span.row * op.T + task.span.begin;  // flat index of token 0
    const int64_t s1 = std::min(f1 - start, task.length());
    task.tokens(f - start, s1, share);
    f = start + s1;
  }
}

}  // namespace

void conv1d_bwd(const ExecContext& context, const Conv1dBwd& op) {
  const int64_t D = op.D, blocks = (D + kChannelBlock - 1) / kChannelBlock;
  const int64_t tokens = op.B * op.T;
  const int64_t chunk_tokens =
      std::clamp((tokens + kTargetChunks - 1) / kTargetChunks, kMinChunkTokens, kMaxChunkTokens);
  const int64_t chunks = (tokens + chunk_tokens - 1) / chunk_tokens;
  const int64_t state_tasks = op.d_initial_state ? op.sequences.count * blocks : 0;
  const int64_t per_worker = BlockTask::kScratchFloats;
  const auto scratch = context.scratch->acquire(
      scratch_bytes(op.kName, per_worker, context.max_workers, sizeof(float)));
  const auto shares = context.scratch->acquire(
      scratch_bytes(op.kName, chunks, blocks, kShareFloats, sizeof(float)));
  auto share_of = [&](int64_t chunk, int64_t block) {
    return shares.as<float>() + (chunk * blocks + block) * kShareFloats;
  };

  // (chunk, block) tasks first, then (sequence, block) tasks.
  const int64_t task_count = chunks * blocks + state_tasks;
  context.threads->parallel_for(task_count, context.max_workers, [&](int64_t task, int worker) {
    float* own = scratch.as<float>() + worker * per_worker;
    const int64_t block = task % blocks, d0 = block * kChannelBlock;
    const BlockFilter filter(op, d0, std::min(kChannelBlock, D - d0));
    if (task < chunks * blocks) {
      const int64_t chunk = task / blocks, f0 = chunk * chunk_tokens;
      chunk_task(op, filter, f0, std::min(tokens, f0 + chunk_tokens), share_of(chunk, block), own);
    } else {
      BlockTask(op, filter, (task - chunks * blocks) / blocks, own).initial_state_gradient();
    }
  });

  // dweight and dbias: the chunks' shares added in chunk order.
  context.threads->parallel_for(blocks, context.max_workers, [&](int64_t block, int) {
    const int64_t d0 = block * kChannelBlock, count = std::min(kChannelBlock, D - d0);
    for (int64_t j = 0; j < kShareRows; ++j) {
      const bool is_bias = j == kMaxConvWidth;
      if (is_bias ? !op.dbias : j >= op.W) continue;
      double sum[kChannelBlock] = {};
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const float* share = share_of(chunk, block) + j * kChannelBlock;
        for (int64_t c = 0; c < count; ++c) sum[c] += share[c];
      }
      float result[kChannelBlock];
      for (int64_t c = 0; c < count; ++c) result[c] = static_cast<float>(sum[c]);
      if (is_bias) {
        store_run(op.dbias, d0 * op.dbias.stride[0], op.dbias.stride[0], count, result);
      } else {
        store_run(op.dweight, op.dweight.offset(d0, j), op.dweight.stride[0], count, result);
      }
    }
  });
}

}  // namespace hops::cpu
