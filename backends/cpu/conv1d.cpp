// Depthwise causal conv1d, channels last. Work is split into (sequence,
// block of channels) tasks: the channel loop is innermost and contiguous, so
// it vectorises, and each task owns its slice of the states.
#include <algorithm>

#include "cpu_kernels.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kChannelBlock = 256;

inline float activate(Activation activation, float x) {
  return activation == Activation::silu ? silu(x) : x;
}

// Weights of one channel block, tap-major, and the bias.
struct BlockFilter {
  float taps[kMaxConvWidth][kChannelBlock];
  float bias[kChannelBlock];
  BlockFilter(const Tensor& weight, const Tensor& bias_tensor, int64_t width, int64_t d0, int64_t count) {
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t j = 0; j < width; ++j) taps[j][c] = load(weight, weight.offset(d0 + c, j));
      bias[c] = bias_tensor ? load(bias_tensor, (d0 + c) * bias_tensor.stride[0]) : 0.0f;
    }
  }
};

template <class T>
void conv_forward(const ExecContext& context, const Conv1dFwd& op) {
  const int64_t blocks = (op.D + kChannelBlock - 1) / kChannelBlock;
  const int64_t W = op.W;
  const int64_t L0 = op.initial_state ? op.initial_state.shape[2] : 0;
  context.threads->parallel_for(op.sequences.count * blocks, context.max_workers, [&](int64_t task, int) {
    const auto [row, begin, end] = op.sequences[task / blocks];
    const int64_t n = task / blocks, d0 = (task % blocks) * kChannelBlock;
    const int64_t count = std::min(kChannelBlock, op.D - d0);
    const BlockFilter filter(op.weight, op.bias, W, d0, count);
    const T* x = op.x.data<const T>();
    T* y = op.y.data<T>();
    const int64_t xd = op.x.stride[2], yd = op.y.stride[2];
    // Input at virtual position p: the sequence's tokens from 0, its initial
    // state's columns (newest last) before that, zeros beyond.
    auto input = [&](int64_t p, int64_t c) -> float {
      if (p >= 0) return to_float(x[op.x.offset(row, begin + p, d0 + c)]);
      if (L0 + p < 0) return 0.0f;
      return load(op.initial_state, op.initial_state.offset(n, d0 + c, L0 + p));
    };
    float acc[kChannelBlock];
    for (int64_t t = 0; t < end - begin; ++t) {
      std::copy_n(filter.bias, count, acc);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t p = t - (W - 1) + j;
        if (p >= 0) {  // the common case: contiguous channels of one token
          const T* source = x + op.x.offset(row, begin + p, d0);
          for (int64_t c = 0; c < count; ++c) acc[c] += filter.taps[j][c] * to_float(source[c * xd]);
        } else {
          for (int64_t c = 0; c < count; ++c) acc[c] += filter.taps[j][c] * input(p, c);
        }
      }
      T* target = y + op.y.offset(row, begin + t, d0);
      for (int64_t c = 0; c < count; ++c) target[c * yd] = from_float<T>(activate(op.activation, acc[c]));
    }
    if (op.final_state) {
      const int64_t L1 = op.final_state.shape[2], length = end - begin;
      for (int64_t c = 0; c < count; ++c) {
        for (int64_t col = 0; col < L1; ++col) {
          store(op.final_state, op.final_state.offset(n, d0 + c, col), input(length - L1 + col, c));
        }
      }
    }
  });
}

template <class T>
void conv_update(const ExecContext& context, const Conv1dUpdate& op) {
  const int64_t blocks = (op.D + kChannelBlock - 1) / kChannelBlock;
  const int64_t W = op.W, L = op.L, SL = op.state.shape[2];
  context.threads->parallel_for(op.N * blocks, context.max_workers, [&](int64_t task, int) {
    const int64_t n = task / blocks, d0 = (task % blocks) * kChannelBlock;
    const int64_t slot = op.slots(n);
    if (slot < 0) return;
    const int64_t count = std::min(kChannelBlock, op.D - d0);
    const BlockFilter filter(op.weight, op.bias, W, d0, count);
    const T* x = op.x.data<const T>();
    T* y = op.y.data<T>();
    // Virtual input: the SL state columns, then the L new tokens.
    auto input = [&](int64_t p, int64_t c) -> float {
      if (p >= SL) return to_float(x[op.x.offset(n, p - SL, d0 + c)]);
      return load(op.state, op.state.offset(slot, d0 + c, p));
    };
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t c = 0; c < count; ++c) {
        float acc = filter.bias[c];
        for (int64_t j = 0; j < W; ++j) acc += filter.taps[j][c] * input(SL + t - (W - 1) + j, c);
        y[op.y.offset(n, t, d0 + c)] = from_float<T>(activate(op.activation, acc));
      }
    }
    // Shift in place: column col takes virtual position L + col, which is at
    // or right of col, so ascending order reads before it overwrites.
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t col = 0; col < SL; ++col) {
        store(op.state, op.state.offset(slot, d0 + c, col), input(L + col, c));
      }
    }
  });
}

}  // namespace

void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op) {
  visit_float(op.x.dtype, [&]<class T>(T) { conv_forward<T>(context, op); });
}

void conv1d_update(const ExecContext& context, const Conv1dUpdate& op) {
  visit_float(op.x.dtype, [&]<class T>(T) { conv_update<T>(context, op); });
}

}  // namespace hops::cpu
