// Concurrency: 8 threads run medium gdn_chunk_fwd and conv1d_fwd calls at
// once, interleaved, each into its own outputs, and every result must equal
// the single-threaded one bit for bit.
#include <fmt/format.h>

#include <mutex>
#include <thread>

#include "cases.hpp"
#include "invocation.hpp"

namespace hops::conformance {

namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 3;

Tensor random_input(const Context& ctx, Random& random, Shape shape, double lo, double hi) {
  Array64 values = random.uniform(shape, lo, hi);
  return Tensor::input(ctx.device, DType::f32, values);
}

Invocation gdn_chunk_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {2, 200, 2, 32}, -1, 1))
      .tensor("k", random_input(ctx, random, {2, 200, 2, 32}, -1, 1))
      .tensor("v", random_input(ctx, random, {2, 200, 4, 32}, -1, 1))
      .tensor("g", random_input(ctx, random, {2, 200, 4}, -0.2, -0.01))
      .tensor("beta", random_input(ctx, random, {2, 200, 4}, 0, 1))
      .tensor("initial_state", random_input(ctx, random, {2, 4, 32, 32}, -1, 1))
      .tensor("o", Tensor::empty(ctx.device, DType::f32, {2, 200, 4, 32}))
      .tensor("final_state", Tensor::empty(ctx.device, DType::f32, {2, 4, 32, 32}))
      .flag("use_qk_l2norm", true);
  return call;
}

Invocation conv1d_fwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("x", random_input(ctx, random, {2, 500, 256}, -1, 1))
      .tensor("weight", random_input(ctx, random, {256, 4}, -1, 1))
      .tensor("bias", random_input(ctx, random, {256}, -1, 1))
      .tensor("initial_state", random_input(ctx, random, {2, 256, 3}, -1, 1))
      .tensor("y", Tensor::empty(ctx.device, DType::f32, {2, 500, 256}))
      .tensor("final_state", Tensor::empty(ctx.device, DType::f32, {2, 256, 3}));
  return call;
}

struct ThreadCase {
  std::string_view op;
  Invocation (*build)(const Context&, const hops_op_desc&, Random&);
  std::vector<std::string_view> outputs;
};

const ThreadCase kThreadCases[] = {
    {"gdn_chunk_fwd", gdn_chunk_call, {"o", "final_state"}},
    {"conv1d_fwd", conv1d_fwd_call, {"y", "final_state"}},
};

// A call with fresh outputs, so that threads share inputs only.
Invocation with_own_outputs(const Context& ctx, Invocation call, const ThreadCase& c) {
  for (std::string_view name : c.outputs) {
    const Tensor& out = call.tensor(name);
    call.tensor(name, Tensor::empty(ctx.device, out.dtype(), out.shape()));
  }
  return call;
}

std::vector<std::vector<std::byte>> output_bytes(const Invocation& call, const ThreadCase& c) {
  std::vector<std::vector<std::byte>> bytes;
  for (std::string_view name : c.outputs) bytes.push_back(call.tensor(name).memory()->read());
  return bytes;
}

}  // namespace

void thread_cases(const Context& ctx, const OpFilter& selected) {
  struct Ready {
    const ThreadCase* c;
    Invocation call;
    std::vector<std::vector<std::byte>> expected;
    std::string error;
  };
  std::vector<Ready> ready;
  for (const ThreadCase& c : kThreadCases) {
    if (!selected(c.op)) continue;
    const hops_op_desc* op = find_or_skip(ctx, c.op);
    if (!op || !supported_or_skip(ctx, c.op, DType::f32)) continue;
    Random random(case_seed(ctx.seed, c.op));
    Invocation call = c.build(ctx, *op, random);
    // The contract's promise of bitwise equal results is under this flag.
    call.exec().flags |= HOPS_EXEC_DETERMINISTIC;
    try {
      call.run();
    } catch (const std::exception& e) {
      ctx.report.fail(fmt::format("threads: {} single-threaded", c.op), e.what());
      continue;
    }
    ready.push_back({&c, call, output_bytes(call, c), {}});
  }
  if (ready.empty()) return;

  std::mutex mutex;
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        std::vector<Invocation> mine;
        for (const Ready& r : ready) mine.push_back(with_own_outputs(ctx, r.call, *r.c));
        for (int round = 0; round < kRounds; ++round) {
          for (size_t i = 0; i < ready.size(); ++i) {
            std::string error;
            try {
              mine[i].run();
              if (output_bytes(mine[i], *ready[i].c) != ready[i].expected) {
                error = fmt::format("round {}: bytes differ from the single-threaded run", round);
              }
            } catch (const std::exception& e) {
              error = e.what();
            }
            if (!error.empty()) {
              const std::scoped_lock lock(mutex);
              if (ready[i].error.empty()) ready[i].error = error;
            }
          }
        }
      });
    }
  }
  for (const Ready& r : ready) {
    ctx.report.check(r.error.empty(),
                     fmt::format("threads: {} from {} threads x {} rounds, bitwise equal to one "
                                 "thread",
                                 r.c->op, kThreads, kRounds),
                     r.error);
  }
}

}  // namespace hops::conformance
