// Depthwise causal conv1d, channels last. The prefill is split into
// (sequence, block of tokens, block of channels) tasks, so that both cores
// stream through x and y even for one sequence; the channel loop is
// innermost and contiguous, so it vectorises. Decode is split into
// (sequence, block of channels) tasks, each owning its slice of the state.
#include <algorithm>

#include "checked_math.hpp"
#include "conv1d.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kChannelBlock = 512;
constexpr int64_t kTokenBlock = 64;

// Weights of one channel block, tap-major, and the bias.
struct BlockFilter {
  int64_t width;
  float taps[kMaxConvWidth][kChannelBlock];
  float bias[kChannelBlock];
  BlockFilter(const Tensor& weight, const Tensor& bias_tensor, int64_t d0, int64_t count)
      : width(weight.shape[1]) {
    for (int64_t j = 0; j < width; ++j)
      load_run(weight, weight.offset(d0, j), weight.stride[0], count, taps[j]);
    if (bias_tensor) {
      load_run(bias_tensor, d0 * bias_tensor.stride[0], bias_tensor.stride[0], count, bias);
    } else {
      std::fill_n(bias, count, 0.0f);
    }
  }

  // out = act(bias + sum_j taps[j] * inputs[j]); inputs[j] is W-1-j positions back.
  void apply(const float* const* inputs, int64_t count, Activation activation, float* out) const {
    std::copy_n(bias, count, out);
    for (int64_t j = 0; j < width; ++j) {
      const float* __restrict in = inputs[j];
      for (int64_t c = 0; c < count; ++c) out[c] += taps[j][c] * in[c];
    }
    if (activation == Activation::silu) {
      for (int64_t c = 0; c < count; ++c) out[c] = silu(out[c]);
    }
  }
};

// Loads state column `column` of sequence/slot `index` for channels [d0, d0+count).
void load_state_column(const Tensor& state, int64_t index, int64_t d0, int64_t column,
                       int64_t count, float* out) {
  load_run(state, state.offset(index, d0, column), state.stride[1], count, out);
}

// Tokens [t0, t1) of sequence n, channels [d0, d0 + count); the task that
// ends the sequence also writes its final state. `rows` holds the positions
// t0 - (W-1) .. t1 - 1, one row of kChannelBlock floats each.
HOPS_VECTOR_CLONES void conv_forward_task(const Conv1dFwd& op, int64_t n, int64_t t0, int64_t t1,
                                          int64_t d0, int64_t count, float* rows) {
  const Sequences::Span span = op.sequences[n];
  const int64_t W = op.W, length = span.end - span.begin;
  const int64_t L0 = op.initial_state ? op.initial_state.shape[2] : 0;
  const int64_t L1 = op.final_state ? op.final_state.shape[2] : 0;
  const BlockFilter filter(op.weight, op.bias, d0, count);
  // Position p of the sequence: a token for p >= 0, else the initial state's
  // column L0 + p, else zero.
  auto load_position = [&](int64_t p, float* out) {
    if (p >= 0) {
      load_run(op.x, op.x.offset(span.row, span.begin + p, d0), op.x.stride[2], count, out);
    } else if (L0 + p >= 0) {
      load_state_column(op.initial_state, n, d0, L0 + p, count, out);
    } else {
      std::fill_n(out, count, 0.0f);
    }
  };
  auto row = [&](int64_t p) { return rows + (p - t0 + W - 1) * kChannelBlock; };
  for (int64_t p = t0 - (W - 1); p < t1; ++p) load_position(p, row(p));
  float* out = rows + (kTokenBlock + kMaxConvWidth - 1) * kChannelBlock;
  float* zeros = out + kChannelBlock;
  if (op.seq_idx) std::fill_n(zeros, count, 0.0f);
  const float* inputs[kMaxConvWidth];
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t j = 0; j < W; ++j) inputs[j] = row(t - (W - 1) + j);
    if (op.seq_idx) {
      // Taps reach only tokens of t's sequence id; a negative id is padding: y = 0.
      const int64_t id = read_index(op.seq_idx, span.row * op.T + t);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t p = t - (W - 1) + j;
        if (id < 0 || p < 0 || read_index(op.seq_idx, span.row * op.T + p) != id) inputs[j] = zeros;
      }
      if (id < 0) {
        store_run(op.y, op.y.offset(span.row, t, d0), op.y.stride[2], count, zeros);
        continue;
      }
    }
    filter.apply(inputs, count, op.activation, out);
    store_run(op.y, op.y.offset(span.row, span.begin + t, d0), op.y.stride[2], count, out);
  }
  if (t1 != length) return;
  // Final state column c holds position length - L1 + c.
  for (int64_t c = 0; c < L1; ++c) {
    load_position(length - L1 + c, out);
    store_run(op.final_state, op.final_state.offset(n, d0, c), op.final_state.stride[1], count,
              out);
  }
}

HOPS_VECTOR_CLONES void conv_update_task(const Conv1dUpdate& op, int64_t n, int64_t slot,
                                         int64_t d0, int64_t count, float* window) {
  const int64_t W = op.W, L = op.L, SL = op.state.shape[2];
  const BlockFilter filter(op.weight, op.bias, d0, count);
  auto row = [&](int64_t p) { return window + p * kChannelBlock; };
  // The window: `history` state columns (oldest first), then the L new tokens.
  // A circular state holds its newest column just before column
  // cache_seqlens % SL; a plain one is shifted, its newest column last.
  const bool circular = static_cast<bool>(op.cache_seqlens);
  const int64_t start = circular ? read_index(op.cache_seqlens, n) % SL : 0;
  const int64_t history = circular ? W - 1 : SL;
  for (int64_t p = 0; p < history; ++p) {
    const int64_t column = circular ? (start - (W - 1) + p + SL) % SL : p;
    load_state_column(op.state, slot, d0, column, count, row(p));
  }
  for (int64_t t = 0; t < L; ++t)
    load_run(op.x, op.x.offset(n, t, d0), op.x.stride[2], count, row(history + t));
  float out[kChannelBlock];
  const float* inputs[kMaxConvWidth];
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t j = 0; j < W; ++j) inputs[j] = row(history + t - (W - 1) + j);
    filter.apply(inputs, count, op.activation, out);
    store_run(op.y, op.y.offset(n, t, d0), op.y.stride[2], count, out);
  }
  if (circular) {  // token t goes to column (start + t) % SL; a later token wins
    for (int64_t t = 0; t < L; ++t) {
      store_run(op.state, op.state.offset(slot, d0, (start + t) % SL), op.state.stride[1], count,
                row(history + t));
    }
    return;
  }
  // The new state is the last SL positions of the window.
  for (int64_t c = 0; c < SL; ++c) {
    store_run(op.state, op.state.offset(slot, d0, c), op.state.stride[1], count, row(L + c));
  }
}

// Dao's padding rows (state_indices -1 with zero_skipped): y = 0.
void zero_rows(const Conv1dUpdate& op, int64_t n, int64_t d0, int64_t count) {
  const float zeros[kChannelBlock] = {};
  for (int64_t t = 0; t < op.L; ++t)
    store_run(op.y, op.y.offset(n, t, d0), op.y.stride[2], count, zeros);
}

}  // namespace

void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op) {
  const int64_t channel_blocks = (op.D + kChannelBlock - 1) / kChannelBlock;
  int64_t longest = 0;
  for (int64_t n = 0; n < op.sequences.count; ++n) {
    const Sequences::Span span = op.sequences[n];
    longest = std::max(longest, span.end - span.begin);
  }
  // Every sequence gets as many token blocks as the longest one: the blocks
  // past a sequence's end return at once (an empty sequence still has one,
  // which writes its final state).
  const int64_t token_blocks = std::max<int64_t>(1, (longest + kTokenBlock - 1) / kTokenBlock);
  // Rows: the block's positions, the output and a row of zeros (seq_idx).
  const size_t per_worker = (kTokenBlock + kMaxConvWidth + 1) * kChannelBlock;
  const auto scratch = context.scratch->acquire(
      scratch_bytes(op.kName, per_worker, context.max_workers, sizeof(float)));
  context.threads->parallel_for(
      checked_product(op.kName, op.sequences.count, token_blocks, channel_blocks),
      context.max_workers, [&](int64_t task, int worker) {
        const int64_t d0 = (task % channel_blocks) * kChannelBlock;
        const int64_t block = task / channel_blocks % token_blocks;
        const int64_t n = task / channel_blocks / token_blocks;
        const Sequences::Span span = op.sequences[n];
        const int64_t t0 = block * kTokenBlock;
        if (t0 > 0 && t0 >= span.end - span.begin) return;
        conv_forward_task(op, n, t0, std::min(t0 + kTokenBlock, span.end - span.begin), d0,
                          std::min(kChannelBlock, op.D - d0),
                          scratch.as<float>() + worker * per_worker);
      });
}

void conv1d_update(const ExecContext& context, const Conv1dUpdate& op) {
  const int64_t blocks = (op.D + kChannelBlock - 1) / kChannelBlock;
  const int64_t per_worker =
      scratch_size(op.kName, scratch_sum(op.kName, op.state.shape[2], op.L), kChannelBlock);
  const auto scratch = context.scratch->acquire(
      scratch_bytes(op.kName, per_worker, context.max_workers, sizeof(float)));
  context.threads->parallel_for(
      checked_product(op.kName, op.N, blocks), context.max_workers, [&](int64_t task, int worker) {
        const int64_t n = task / blocks, d0 = (task % blocks) * kChannelBlock;
        const int64_t slot = op.slots(n), count = std::min(kChannelBlock, op.D - d0);
        if (slot < 0) {
          if (op.zero_skipped) zero_rows(op, n, d0, count);
          return;
        }
        conv_update_task(op, n, slot, d0, count, scratch.as<float>() + worker * per_worker);
      });
}

std::span<const Kernel> conv1d_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<Conv1dFwd, &conv1d_fwd>(HOPS_DTYPE_FLOATS),
      kernel<Conv1dUpdate, &conv1d_update>(HOPS_DTYPE_FLOATS),
      kernel<Conv1dBwd, &conv1d_bwd>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
