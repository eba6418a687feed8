// Concurrency: 8 threads run medium calls of several ops at once,
// interleaved, each into its own outputs, and every result must equal the
// single-threaded one bit for bit. The same calls capped at one worker
// (exec.num_threads = 1) must give the same bytes too: reductions across
// tokens or rows (dweight) may not depend on how many threads share them.
#include <fmt/format.h>

#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "cases.hpp"
#include "suite.hpp"

namespace hops::conformance {

namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 10;
// Threads alternate between input sets: a provider that mixes up concurrent
// calls (shared scratch, global state) then shows, which identical calls hide.
constexpr int kVariants = 2;

using Bytes = std::vector<std::vector<std::byte>>;  // one per output

struct ThreadCase {
  std::string_view op;
  CallBuilder build;
  std::vector<std::string_view> outputs;
};

// A call with fresh outputs, so that threads share inputs only.
Invocation with_own_outputs(const Context& ctx, Invocation call, const ThreadCase& c) {
  for (std::string_view name : c.outputs) {
    const Tensor& out = call.tensor(name);
    call.tensor(name, Tensor::empty(ctx.device, out.dtype(), out.shape()));
  }
  return call;
}

Bytes output_bytes(const Invocation& call, const ThreadCase& c) {
  Bytes bytes;
  for (std::string_view name : c.outputs) bytes.push_back(call.tensor(name).memory()->read());
  return bytes;
}

// The call capped at one worker gives the bytes of the uncapped call.
void one_worker_check(const Context& ctx, const Invocation& call, const ThreadCase& c,
                      const Bytes& expected) {
  std::string error;
  try {
    Invocation capped = with_own_outputs(ctx, call, c);
    capped.exec().num_threads = 1;
    capped.run_lean();
    if (output_bytes(capped, c) != expected) error = "bytes differ from the uncapped call";
  } catch (const std::exception& e) {
    error = e.what();
  }
  ctx.report.check(
      error.empty(),
      fmt::format("threads: {} with num_threads=1, bitwise equal to all threads", c.op), error);
}

}  // namespace

void thread_cases(const Context& ctx, const OpFilter& selected) {
  // Per op: one call and its single-threaded result per input variant.
  struct Prepared {
    const ThreadCase* c;
    std::vector<Invocation> calls;
    std::vector<Bytes> expected;
    std::string error;
  };
  std::vector<ThreadCase> cases;
  for (const OpSuite& s : all_suites()) {
    if (s.thread_call) cases.push_back({s.op, s.thread_call, s.thread_outputs});
  }
  std::vector<Prepared> prepared;
  for (const ThreadCase& c : cases) {
    if (!selected(c.op)) continue;
    const hops_op_desc* op = find_or_skip(ctx, c.op);
    if (!op || !supported_or_skip(ctx, c.op, DType::f32)) continue;
    Prepared p{&c, {}, {}, {}};
    try {
      for (int variant = 0; variant < kVariants; ++variant) {
        Random random(case_seed(ctx.seed, fmt::format("{} {}", c.op, variant)));
        Invocation call = c.build(ctx, *op, random);
        // The contract's promise of bitwise equal results is under this flag.
        call.exec().flags |= HOPS_EXEC_DETERMINISTIC;
        call.run();
        p.expected.push_back(output_bytes(call, c));
        p.calls.push_back(std::move(call));
      }
    } catch (const std::exception& e) {
      ctx.report.fail(fmt::format("threads: {} single-threaded", c.op), e.what());
      continue;
    }
    one_worker_check(ctx, p.calls[0], c, p.expected[0]);
    prepared.push_back(std::move(p));
  }
  if (prepared.empty()) return;

  std::mutex mutex;
  std::latch start(kThreads);  // all threads call at once, not one after another
  {
    std::vector<std::jthread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, variant = t % kVariants] {
        std::vector<Invocation> mine;
        mine.reserve(prepared.size());
        for (const Prepared& p : prepared) {
          mine.push_back(with_own_outputs(ctx, p.calls[variant], *p.c));
        }
        start.arrive_and_wait();
        for (int round = 0; round < kRounds; ++round) {
          for (size_t i = 0; i < prepared.size(); ++i) {
            std::string error;
            try {
              mine[i].run_lean();
              if (output_bytes(mine[i], *prepared[i].c) != prepared[i].expected[variant]) {
                error =
                    fmt::format("inputs {}, round {}: bytes differ from the single-threaded run",
                                variant, round);
              }
            } catch (const std::exception& e) {
              error = e.what();
            }
            if (!error.empty()) {
              const std::scoped_lock lock(mutex);
              if (prepared[i].error.empty()) prepared[i].error = error;
            }
          }
        }
      });
    }
  }
  for (const Prepared& p : prepared) {
    ctx.report.check(p.error.empty(),
                     fmt::format("threads: {} from {} threads x {} rounds ({} input sets), bitwise "
                                 "equal to one thread",
                                 p.c->op, kThreads, kRounds, kVariants),
                     p.error);
  }
}

}  // namespace hops::conformance
