// libFuzzer entry of the generic call path: every input decodes to one
// api->call (fuzz_call.hpp), run and judged in process. docs/FUZZING.md.
//
// Environment:
//   HOPS_FUZZ_WRITE_SEEDS=dir  write the seed corpus (valid calls of every op,
//                              in several dtypes, layouts and options) and exit
//   HOPS_FUZZ_VERBOSE=1        print each decoded call and its status
//   HOPS_FUZZ_STATS=1          print how the calls ended when the process exits
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_call.hpp"

namespace hops::fuzz {
namespace {

const hops_api* g_api = nullptr;

struct Counts {
  std::atomic<uint64_t> skipped{0}, rejected{0}, accepted{0}, compared{0};
} g_counts;
// Per op (by name): calls rejected, accepted without comparison, compared.
std::map<std::string, std::array<uint64_t, 3>> g_op_counts;

void print_counts() {
  const uint64_t ran = g_counts.rejected + g_counts.accepted + g_counts.compared;
  if (ran + g_counts.skipped == 0) return;  // a -fork parent: its workers ran the calls
  for (const auto& [op, n] : g_op_counts) {
    std::fprintf(
        stderr, "hops-fuzz:   %-20s %8llu calls: %8llu rejected, %8llu accepted (%llu compared)\n",
        op.c_str(), static_cast<unsigned long long>(n[0] + n[1] + n[2]),
        static_cast<unsigned long long>(n[0]), static_cast<unsigned long long>(n[1] + n[2]),
        static_cast<unsigned long long>(n[2]));
  }
  std::fprintf(stderr,
               "hops-fuzz: %llu calls ran: %llu rejected, %llu accepted (%llu of them compared "
               "with the float64 reference); %llu inputs skipped (too much memory or work)\n",
               static_cast<unsigned long long>(ran),
               static_cast<unsigned long long>(g_counts.rejected.load()),
               static_cast<unsigned long long>(g_counts.accepted + g_counts.compared),
               static_cast<unsigned long long>(g_counts.compared.load()),
               static_cast<unsigned long long>(g_counts.skipped.load()));
}

// attn_prefill and its backward (Plan: Hq = H*G, Hkv = H, Tk from L0,
// cu_seqlens_k's cuts in prefix): groups, more keys than queries, fewer
// (causal rows without keys), none, varlen with empty sequences, not causal
// with a scale, lse -inf in rows with keys (the backward), many key blocks.
template <class Add, class AllOptional>
void attention_seeds(Add& add, AllOptional& all_optional) {
  add("f32-gqa-more-keys", [&](Plan& p) { all_optional(p), p.H = 1, p.G = 3, p.L0 = 2; });
  add("f32-fewer-keys", [&](Plan& p) { all_optional(p), p.T = 7, p.L0 = 4, p.G = 0; });
  add("f16-no-keys", [&](Plan& p) { all_optional(p), p.dtype = 1, p.L0 = 5; });
  add("bf16-varlen-kv-not-causal", [&](Plan& p) {
    all_optional(p), p.dtype = 2, p.varlen = 3, p.T = 7, p.L0 = 2, p.index_dtype = 1;
    p.cuts[0] = 0, p.cuts[1] = 100, p.cuts[2] = 100;
    p.prefix[0] = 200, p.prefix[1] = 30, p.prefix[2] = 255;
    p.scalars[0] = 2, p.scalars[1] = 2;  // scale 0.5, causal false
  });
  add("f32-varlen-causal", [&](Plan& p) {
    all_optional(p), p.varlen = 2, p.T = 8, p.L0 = 1, p.H = 1, p.G = 1;
    p.cuts[0] = 60, p.cuts[1] = 180, p.prefix[0] = 20, p.prefix[1] = 250;
  });
  add("f32-lse-holes", [&](Plan& p) { all_optional(p), p.squeeze = 2, p.L0 = 1, p.T = 7; });
  add("f32-long", [&](Plan& p) { all_optional(p), p.T = 11, p.L0 = 1, p.D = 3, p.exec = 4; });
}

// attn_decode (Plan: N = B, seq_lens leave cuts[n % 3] 255ths of the table
// unused, block_size from W, max_blocks from S, num_blocks from L1): split
// contexts longer than 512 tokens, sequences shorter than L or empty, an
// unused table tail out of range, one-row blocks.
template <class Add>
void decode_seeds(Add& add) {
  add("f32-gqa-long", [&](Plan& p) {
    p.B = 2, p.H = 1, p.G = 1, p.D = 2, p.W = 7, p.S = 6, p.L1 = 7, p.L = 0;
    p.cuts[1] = 60, p.cuts[2] = 255;
  });
  add("f32-shorter-than-L", [&](Plan& p) { p.B = 1, p.L = 3, p.cuts[0] = 255, p.cuts[1] = 200; });
  add("bf16-unused-blocks-out-of-range", [&](Plan& p) {
    p.dtype = 2, p.B = 2, p.slots = 1, p.S = 3, p.cuts[0] = 128, p.cuts[1] = 200;
    p.index_dtype = 1;
  });
  add("f16-one-row-blocks", [&](Plan& p) {
    p.dtype = 1, p.W = 0, p.S = 5, p.L1 = 4, p.B = 1, p.cuts[1] = 100, p.slot_shift = 3;
  });
}

// kv_cache_write (Plan: slots from L1 blocks of W rows, bit t+1 of slots
// skips row t): skipped rows, every slot written, more rows than slots.
template <class Add>
void cache_write_seeds(Add& add) {
  add("f32-skips", [&](Plan& p) { p.slots = 0b1010, p.slot_shift = 9; });
  add("f32-every-slot", [&](Plan& p) { p.W = 0, p.L1 = 0, p.T = 5, p.slot_shift = 2; });
  add("bf16-more-rows-than-slots", [&](Plan& p) { p.dtype = 2, p.T = 9, p.H = 1, p.L1 = 2; });
}

// The MoE ops (Plan: E from K, k from V, Hd from D, I from W, extra rows
// from L, routing from varlen, every (slots % 8)-th slot dropped, the
// routing weights' dtype from G; the base plan is E = 4, k = 3, Hd = 8,
// I = 4, weights f32): E = 1, 65 and 70 with k up to 10, one token, Hd off
// 16 and 0, repeated experts, one expert for all, experts without rows,
// every slot dropped, int64 tables, transposed and padded views, weights in
// another dtype than the rows; moe_route's ties, sigmoid and wide logits;
// rows no dispatch makes for the gathers.
template <class Add, class AllOptional>
void moe_seeds(Add& add, AllOptional& all_optional, std::string_view op) {
  add("f32-E70-k10-Hd33", [&](Plan& p) { all_optional(p), p.K = 14, p.V = 9, p.D = 8, p.T = 7; });
  add("f32-E1-k1", [&](Plan& p) { all_optional(p), p.K = 0, p.V = 0; });
  add("bf16-T1-E65-k8", [&](Plan& p) { all_optional(p), p.dtype = 2, p.T = 1, p.K = 13, p.V = 7; });
  add("f16-repeats-drops-i64", [&](Plan& p) {
    all_optional(p), p.dtype = 1, p.varlen = 1, p.slots = 3, p.index_dtype = 1, p.V = 9;
  });
  add("f32-one-expert-many-rows", [&](Plan& p) {
    all_optional(p), p.varlen = 2, p.T = 11, p.V = 1, p.D = 3, p.slot_shift = 5, p.K = 5;
  });
  add("bf16-few-experts-E33", [&](Plan& p) {
    all_optional(p), p.dtype = 2, p.varlen = 3, p.K = 11, p.V = 5, p.slots = 5, p.T = 7;
  });
  add("f32-all-dropped", [&](Plan& p) { all_optional(p), p.slots = 1, p.T = 6; });
  add("bf16-transposed-i64", [&](Plan& p) {
    all_optional(p), p.dtype = 2, p.index_dtype = 1, p.slots = 4, p.K = 5, p.D = 7;
    std::memset(p.layouts, 3, sizeof p.layouts);
  });
  add("f16-padded-weights-bf16", [&](Plan& p) {
    all_optional(p), p.dtype = 1, p.G = 3, p.D = 9, p.W = 7;
    std::memset(p.layouts, 2, sizeof p.layouts);
  });
  add("f32-Hd0", [&](Plan& p) { all_optional(p), p.D = 13; });
  if (op == "moe_route") {
    add("f32-sigmoid-grid-ties",
        [&](Plan& p) { p.scalars[1] = 1, p.squeeze = 4, p.K = 14, p.T = 8; });
    add("f16-softmax-wide-grid-unnormalized",
        [&](Plan& p) { p.dtype = 1, p.scalars[0] = 2, p.squeeze = 12, p.K = 12, p.V = 7; });
    add("bf16-sigmoid-wide-k-equals-E",
        [&](Plan& p) { p.dtype = 2, p.scalars[1] = 1, p.squeeze = 8, p.K = 5, p.V = 6; });
    add("f32-k-clamped-weights-bf16-ids-i64",
        [&](Plan& p) { p.K = 1, p.V = 9, p.G = 3, p.index_dtype = 2; });
    add("f32-E-huge", [&](Plan& p) { p.K = 248, p.T = 1, p.V = 7; });
  }
  if (op == "moe_dispatch") {
    add("f32-maps-i32-ids-i64",
        [&](Plan& p) { p.index_dtype = 3, p.slots = 7, p.K = 12, p.V = 7; });
    add("bf16-maps-i64-ids-i32", [&](Plan& p) { p.dtype = 2, p.index_dtype = 2, p.varlen = 1; });
    add("f32-E-huge", [&](Plan& p) { p.K = 248, p.T = 1, p.V = 7; });
  }
  if (op == "moe_combine" || op == "moe_dispatch_bwd" || op == "moe_combine_bwd") {
    add("f32-shuffled-rows-extra",
        [&](Plan& p) { all_optional(p), p.varlen = 4, p.L = 3, p.slots = 5, p.index_dtype = 1; });
    add("bf16-shuffled-rows-weights-f16",
        [&](Plan& p) { all_optional(p), p.dtype = 2, p.varlen = 4, p.G = 2, p.K = 12, p.V = 7; });
  }
  if (op == "moe_combine" || op == "moe_dispatch_bwd") {
    add("f32-any-rows", [&](Plan& p) { p.varlen = 5, p.L = 2, p.slots = 4, p.V = 5; });
  }
  if (op == "moe_combine_bwd")
    add("f16-no-weight-grads", [&](Plan& p) { p.dtype = 1, p.slots = 3; });
  if (op == "moe_expert_mlp" || op == "moe_expert_mlp_bwd") {
    add("f32-I20-Hd40-extra-rows", [&](Plan& p) { all_optional(p), p.W = 7, p.D = 9, p.L = 3; });
    add("bf16-I48-one-expert",
        [&](Plan& p) { all_optional(p), p.dtype = 2, p.W = 9, p.varlen = 2, p.T = 9, p.V = 1; });
    add("f16-E70-few-experts",
        [&](Plan& p) { all_optional(p), p.dtype = 1, p.K = 14, p.varlen = 3, p.T = 7, p.D = 3; });
  }
  if (op == "moe_expert_mlp_bwd")
    add("f32-no-weight-grads", [&](Plan& p) { p.slots = 4, p.W = 5; });
}

// Valid calls of every op: a small base problem and variants that each turn
// on what the op can take (optional tensors, flags, varlen, state slots,
// strided and packed layouts, other dtypes, an empty problem).
std::vector<std::pair<std::string, Plan>> seed_plans(const hops_api& api) {
  std::vector<std::pair<std::string, Plan>> seeds;
  for (int32_t o = 0; o < api.op_count(); ++o) {
    const hops_op_desc* op = api.op_at(o);
    Plan base{};
    base.op = static_cast<uint8_t>(o);
    base.B = 1;  // 2
    base.T = 5;  // 5 tokens
    base.H = 0;  // 1 key head
    base.G = 1;  // 2 value heads per key head
    base.K = 3;  // 4
    base.V = 2;  // 3
    base.D = 4;  // 8 channels
    base.W = 3;  // width 4
    base.L = 1;  // 2 tokens per decode step
    base.seed[0] = static_cast<uint8_t>(o + 1);
    auto all_optional = [](Plan& p) { std::memset(p.present, 0xff, sizeof p.present); };
    auto flags_on = [&](Plan& p) {
      int scalar = 0;
      for (int32_t i = 0; i < op->num_args; ++i) {
        const hops_arg_desc& d = *hops_op_arg(op, i);
        if (d.kind < HOPS_ARG_I64) continue;
        if (d.kind == HOPS_ARG_BOOL) p.scalars[scalar % 8] = 1;
        ++scalar;
      }
    };
    auto layouts = [](Plan& p, uint8_t a, uint8_t b) {
      for (int i = 0; i < kMaxArgs; ++i) p.layouts[i] = i % 2 ? b : a;
    };
    auto add = [&](const char* name, auto edit) {
      Plan p = base;
      edit(p);
      seeds.emplace_back(fmt::format("seed-{}-{}", op->name, name), p);
    };
    add("f32", [](Plan&) {});
    add("f32-optional", [&](Plan& p) { all_optional(p); });
    add("f16-optional", [&](Plan& p) { all_optional(p), p.dtype = 1; });
    add("bf16-optional-flags", [&](Plan& p) { all_optional(p), flags_on(p), p.dtype = 2; });
    add("f32-varlen", [&](Plan& p) {
      all_optional(p), p.varlen = 3, p.T = 7, p.index_dtype = 1;
      p.cuts[0] = 40, p.cuts[1] = 40, p.cuts[2] = 200;
    });
    add("f32-slots",
        [&](Plan& p) { all_optional(p), p.B = 2, p.slots = 0b101, p.slot_shift = 1, p.S = 2; });
    add("f32-varlen-slots-flags", [&](Plan& p) {
      all_optional(p), flags_on(p), p.varlen = 2, p.T = 6, p.slots = 0b11, p.S = 1;
      p.cuts[0] = 0, p.cuts[1] = 128;
    });
    add("f32-padded", [&](Plan& p) { all_optional(p), layouts(p, 2, 2); });
    add("f32-compact-exec-null", [&](Plan& p) { all_optional(p), layouts(p, 1, 1), p.exec = 1; });
    add("f32-arena-reversed", [&](Plan& p) { all_optional(p), layouts(p, 3, 0), p.arena = 1; });
    add("f32-sliced-offset", [&](Plan& p) {
      all_optional(p), layouts(p, 4, 7), p.exec = 2, p.prefix_rank = 2, p.prefix[0] = 1,
                                         p.prefix[1] = 2;
    });
    add("f32-chunk-edge", [&](Plan& p) {
      all_optional(p), flags_on(p), p.T = 10, p.K = 7, p.V = 6, p.D = 7, p.H = 1, p.G = 2;
    });
    add("f16-empty", [&](Plan& p) { all_optional(p), p.T = 0, p.dtype = 1; });
    add("bf16-squeeze-odd-unit", [&](Plan& p) {
      all_optional(p), p.dtype = 2, p.squeeze = 1, p.slots = 0b10, p.index_dtype = 1, p.B = 0;
      layouts(p, 5 + 8, 5 + 16);
    });
    add("f32-broadcast-inputs-threads", [&](Plan& p) {
      all_optional(p), p.exec = 3, p.prefix_rank = 1, p.prefix[0] = 2;
      for (int32_t i = 0; i < op->num_args; ++i) {
        const hops_arg_desc& d = *hops_op_arg(op, i);
        // Not the attention tables: kv_cache_write's slots would all be one.
        const bool table = !d.optional && (d.dtypes & ~uint32_t{HOPS_DTYPE_INDEX}) == 0;
        if (d.kind == HOPS_ARG_TENSOR_IN && !table) p.layouts[i] = 6;
      }
    });
    const std::string_view name = op->name;
    if (name == "attn_prefill" || name == "attn_prefill_bwd") attention_seeds(add, all_optional);
    if (name == "attn_decode") decode_seeds(add);
    if (name == "kv_cache_write") cache_write_seeds(add);
    if (name.starts_with("moe_") && !name.starts_with("moe_ep_"))
      moe_seeds(add, all_optional, name);
  }
  return seeds;
}

void write_seeds(const char* dir) {
  std::filesystem::create_directories(dir);
  int accepted = 0, total = 0;
  for (const auto& [name, plan] : seed_plans(*g_api)) {
    std::vector<uint8_t> bytes(sizeof plan);
    std::memcpy(bytes.data(), &plan, sizeof plan);
    std::ofstream(std::filesystem::path(dir) / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    FuzzCall call(*g_api, bytes);
    const bool ok = call.runnable() && call.run_and_check() != Outcome::rejected;
    accepted += ok;
    ++total;
    if (!ok) std::fprintf(stderr, "seed %s is rejected: %s\n", name.c_str(), g_api->last_error());
  }
  std::fprintf(stderr, "hops-fuzz: wrote %d seeds to %s, %d of them valid calls\n", total, dir,
               accepted);
}

}  // namespace
}  // namespace hops::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hops::fuzz;
  g_api = hops_get_api(HOPS_ABI_MAJOR);
  if (!g_api) {
    std::fprintf(stderr, "hops-fuzz: hops_get_api(%d) returned NULL\n", HOPS_ABI_MAJOR);
    std::abort();
  }
  if (const char* dir = std::getenv("HOPS_FUZZ_WRITE_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  if (std::getenv("HOPS_FUZZ_STATS")) std::atexit(print_counts);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hops::fuzz;
  FuzzCall call(*g_api, {data, size});
  if (!call.runnable()) {
    ++g_counts.skipped;
    return -1;  // not worth keeping in the corpus
  }
  const Outcome outcome = call.run_and_check();
  switch (outcome) {
    case Outcome::rejected:
      ++g_counts.rejected;
      break;
    case Outcome::accepted:
      ++g_counts.accepted;
      break;
    case Outcome::compared:
      ++g_counts.compared;
      break;
  }
  ++g_op_counts[call.op().name][static_cast<size_t>(outcome)];
  return 0;
}
