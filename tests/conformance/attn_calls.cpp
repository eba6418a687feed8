// The attention family's calls besides its reference cases: the typed entry
// points fed by argument name, the wrong calls and the threaded calls.
#include <cmath>

#include "attn_calls.hpp"

namespace hops::conformance {

Tensor index_table(Device& device, DType dtype, const std::vector<std::vector<int64_t>>& rows) {
  const auto N = static_cast<int64_t>(rows.size());
  const int64_t M = N > 0 ? static_cast<int64_t>(rows[0].size()) : 0;
  Tensor t = Tensor::empty(device, dtype, {N, M});
  Array64 values({N, M});
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) values.at({n, m}) = static_cast<double>(rows[n][m]);
  }
  t.write(values);
  return t;
}

// ---- typed calls -------------------------------------------------------------------

hops_status attn_prefill_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_attn_prefill_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("gate"), a.tensor("cu_seqlens_q"),
      a.tensor("cu_seqlens_k"), a.tensor("o"), a.tensor("lse"), a.f64("scale"), a.flag("causal"));
}

hops_status attn_prefill_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                   const ArgValues& a) {
  return typed<hops_attn_prefill_bwd_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("gate"), a.tensor("o"),
      a.tensor("lse"), a.tensor("do"), a.tensor("cu_seqlens_q"), a.tensor("cu_seqlens_k"),
      a.tensor("dq"), a.tensor("dk"), a.tensor("dv"), a.tensor("dgate"), a.f64("scale"),
      a.flag("causal"));
}

hops_status attn_decode_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_attn_decode_fn>(op)(exec, a.tensor("q"), a.tensor("k_cache"),
                                        a.tensor("v_cache"), a.tensor("block_table"),
                                        a.tensor("seq_lens"), a.tensor("o"), a.f64("scale"));
}

hops_status kv_cache_write_typed(const hops_op_desc& op, const hops_exec* exec,
                                 const ArgValues& a) {
  return typed<hops_kv_cache_write_fn>(op)(exec, a.tensor("k"), a.tensor("v"), a.tensor("k_cache"),
                                           a.tensor("v_cache"), a.tensor("slot_mapping"));
}

namespace {

// Wrong varlen offsets: in host memory, where the plugin validates them.
auto offsets(const Context& ctx, std::string_view name, const std::vector<int64_t>& values) {
  return set(name, Tensor::indices(*ctx.host, DType::i32, values));
}

// Both offsets at once (one wrong, the other right).
auto varlen(const Context& ctx, const std::vector<int64_t>& cu_q,
            const std::vector<int64_t>& cu_k) {
  return [q = Tensor::indices(*ctx.host, DType::i32, cu_q),
          k = Tensor::indices(*ctx.host, DType::i32, cu_k)](Invocation& call) {
    call.tensor("cu_seqlens_q", q).tensor("cu_seqlens_k", k);
  };
}

// The prefill ops' shared wrong calls, on the bases below: q, gate [1,5,4,8],
// k, v [1,7,2,8].
std::vector<BadCall> prefill_problem_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"Hq=4 is not a multiple of Hkv=3 (k, v [1,7,3,8])",
       {"k"},
       [k = f32(d, {1, 7, 3, 8}), v = f32(d, {1, 7, 3, 8})](Invocation& call) {
         call.tensor("k", k).tensor("v", v);
       }},
      {"k has D=9 while q has D=8", {"k"}, set("k", f32(d, {1, 7, 2, 9}))},
      {"v has Tk=6 while k has Tk=7", {"v"}, set("v", f32(d, {1, 6, 2, 8}))},
      {"k is f16 while q is f32", {"k"}, set("k", Tensor::empty(d, DType::f16, {1, 7, 2, 8}))},
      {"gate has D=7", {"gate"}, set("gate", f32(d, {1, 5, 4, 7}))},
      {"q has rank 3", {"q"}, set("q", f32(d, {5, 4, 8}))},
      {"cu_seqlens_q without cu_seqlens_k",
       {"cu_seqlens_k", "cu_seqlens_q"},
       offsets(ctx, "cu_seqlens_q", {0, 2, 5})},
      {"cu_seqlens_k without cu_seqlens_q",
       {"cu_seqlens_k", "cu_seqlens_q"},
       offsets(ctx, "cu_seqlens_k", {0, 3, 7})},
      {"cu_seqlens_q decreases: [0,3,2,5]",
       {"cu_seqlens_q"},
       varlen(ctx, {0, 3, 2, 5}, {0, 2, 4, 7})},
      {"cu_seqlens_k decreases: [0,4,3,7]",
       {"cu_seqlens_k"},
       varlen(ctx, {0, 2, 3, 5}, {0, 4, 3, 7})},
      {"cu_seqlens_q does not start at 0: [1,5]", {"cu_seqlens_q"}, varlen(ctx, {1, 5}, {0, 7})},
      {"cu_seqlens_k ends at 6, Tk=7: [0,3,6]",
       {"cu_seqlens_k"},
       varlen(ctx, {0, 2, 5}, {0, 3, 6})},
      {"cu_seqlens_q has 3 sequences, cu_seqlens_k 2",
       {"cu_seqlens_k"},
       varlen(ctx, {0, 1, 2, 5}, {0, 3, 7})},
      {"cu_seqlens_q has dtype f32",
       {"cu_seqlens_q"},
       [cu_q = f32(d, {2}), cu_k = Tensor::indices(*ctx.host, DType::i32, {0, 7})](
           Invocation& call) { call.tensor("cu_seqlens_q", cu_q).tensor("cu_seqlens_k", cu_k); }},
      {"scale is NaN", {"scale"}, [](Invocation& call) { call.f64("scale", NAN); }},
      {"scale is -1", {"scale"}, [](Invocation& call) { call.f64("scale", -1.0); }},
  };
}

}  // namespace

// ---- attn_prefill: q, gate, o [1,5,4,8], k, v [1,7,2,8], lse [1,4,5] ----------------

Invocation attn_prefill_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("k", filled(d, DType::f32, random, {1, 7, 2, 8}))
      .tensor("v", filled(d, DType::f32, random, {1, 7, 2, 8}))
      .tensor("gate", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("o", f32(d, {1, 5, 4, 8}))
      .tensor("lse", f32(d, {1, 4, 5}));
  return call;
}

std::vector<BadCall> attn_prefill_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = prefill_problem_bad_calls(ctx);
  const std::vector<BadCall> more = {
      {"o is bf16 while q is f32", {"o"}, set("o", Tensor::empty(d, DType::bf16, {1, 5, 4, 8}))},
      {"o has Hq=2", {"o"}, set("o", f32(d, {1, 5, 2, 8}))},
      {"o is NULL", {"o"}, set("o", {})},
      {"lse is f16 (lse is f32 whatever q is)",
       {"lse"},
       set("lse", Tensor::empty(d, DType::f16, {1, 4, 5}))},
      {"lse is bf16", {"lse"}, set("lse", Tensor::empty(d, DType::bf16, {1, 4, 5}))},
      {"lse has shape [1,5,4] (Tq before Hq)", {"lse"}, set("lse", f32(d, {1, 5, 4}))},
      {"o aliases q", {"o", "q"}, same_as("o", "q")},
      {"lse overlaps o",
       {"lse", "o"},
       [](Invocation& call) {
         call.tensor("lse", call.tensor("o").view(8, {1, 4, 5}, {20, 5, 1}));
       }},
      {"cu_seqlens with B=2",
       {"cu_seqlens_q"},
       [cu = varlen(ctx, {0, 5}, {0, 7}), q = f32(d, {2, 5, 4, 8}), kv = f32(d, {2, 7, 2, 8}),
        o = f32(d, {2, 5, 4, 8}), lse = f32(d, {2, 4, 5})](Invocation& call) {
         cu(call);
         call.tensor("q", q).tensor("k", kv).tensor("v", kv).tensor("gate", {});
         call.tensor("o", o).tensor("lse", lse);
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- attn_prefill_bwd: the forward's shapes, with do, dq, dk, dv, dgate -------------

Invocation attn_prefill_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("k", filled(d, DType::f32, random, {1, 7, 2, 8}))
      .tensor("v", filled(d, DType::f32, random, {1, 7, 2, 8}))
      .tensor("gate", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("o", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("lse", random_input(ctx, random, {1, 4, 5}, 1, 2))
      .tensor("do", filled(d, DType::f32, random, {1, 5, 4, 8}))
      .tensor("dq", f32(d, {1, 5, 4, 8}))
      .tensor("dk", f32(d, {1, 7, 2, 8}))
      .tensor("dv", f32(d, {1, 7, 2, 8}))
      .tensor("dgate", f32(d, {1, 5, 4, 8}));
  return call;
}

std::vector<BadCall> attn_prefill_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = prefill_problem_bad_calls(ctx);
  const std::vector<BadCall> more = {
      {"dgate without gate", {"dgate"}, set("gate", {})},
      {"lse is NULL", {"lse"}, set("lse", {})},
      {"lse is f16", {"lse"}, set("lse", Tensor::empty(d, DType::f16, {1, 4, 5}))},
      {"lse has Tq=4", {"lse"}, set("lse", f32(d, {1, 4, 4}))},
      {"do is NULL", {"do"}, set("do", {})},
      {"do is bf16 while q is f32", {"do"}, set("do", Tensor::empty(d, DType::bf16, {1, 5, 4, 8}))},
      {"o has D=9", {"o"}, set("o", f32(d, {1, 5, 4, 9}))},
      {"dq has Hq=2", {"dq"}, set("dq", f32(d, {1, 5, 2, 8}))},
      {"dk has Hkv=4 while k has Hkv=2", {"dk"}, set("dk", f32(d, {1, 7, 4, 8}))},
      {"dv has Tk=6", {"dv"}, set("dv", f32(d, {1, 6, 2, 8}))},
      {"dv is NULL", {"dv"}, set("dv", {})},
      {"dgate is f16 while q is f32",
       {"dgate"},
       set("dgate", Tensor::empty(d, DType::f16, {1, 5, 4, 8}))},
      {"dq aliases q", {"dq", "q"}, same_as("dq", "q")},
      {"dk aliases dv", {"dk", "dv"}, same_as("dk", "dv")},
      {"dgate overlaps dq (rows 1-4 of dq are rows 0-3 of dgate)",
       {"dgate", "dq"},
       [both = f32(d, {1, 6, 4, 8})](Invocation& call) {
         call.tensor("dq", both.view(0, {1, 5, 4, 8}, {160, 32, 8, 1}));
         call.tensor("dgate", both.view(32, {1, 5, 4, 8}, {160, 32, 8, 1}));
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- attn_decode: q, o [3,2,4,8], caches [6,4,2,8] (12 tokens a sequence at most) ----

namespace {

const std::vector<std::vector<int64_t>> kDecodeTable = {{5, 0, -1}, {2, -1, 7}, {1, 3, 4}};
const std::vector<int64_t> kDecodeLengths = {5, 2, 9};

}  // namespace

Invocation attn_decode_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("q", filled(d, DType::f32, random, {3, 2, 4, 8}))
      .tensor("k_cache", filled(d, DType::f32, random, {6, 4, 2, 8}))
      .tensor("v_cache", filled(d, DType::f32, random, {6, 4, 2, 8}))
      .tensor("block_table", index_table(d, DType::i32, kDecodeTable))
      .tensor("seq_lens", Tensor::indices(d, DType::i32, kDecodeLengths))
      .tensor("o", f32(d, {3, 2, 4, 8}));
  return call;
}

std::vector<BadCall> attn_decode_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  // Tables in host memory, where the plugin validates them.
  auto lengths = [&](const std::vector<int64_t>& values) {
    return [table = index_table(*ctx.host, DType::i32, kDecodeTable),
            lens = Tensor::indices(*ctx.host, DType::i32, values)](Invocation& call) {
      call.tensor("block_table", table).tensor("seq_lens", lens);
    };
  };
  auto table = [&](const std::vector<std::vector<int64_t>>& rows) {
    return [table = index_table(*ctx.host, DType::i32, rows),
            lens = Tensor::indices(*ctx.host, DType::i32, kDecodeLengths)](Invocation& call) {
      call.tensor("block_table", table).tensor("seq_lens", lens);
    };
  };
  return {
      {"seq_lens entry 13 > max_blocks x block_size = 12", {"seq_lens"}, lengths({5, 13, 9})},
      {"seq_lens entry -1", {"seq_lens"}, lengths({-1, 2, 9})},
      {"seq_lens 10 reaches the table's entry -1 ([1,2] used)",
       {"block_table"},
       lengths({5, 10, 9})},
      {"block_table entry [2,2] is 6 = num_blocks",
       {"block_table"},
       table({{5, 0, -1}, {2, -1, 7}, {1, 3, 6}})},
      {"block_table entry [0,1] is -1 and used",
       {"block_table"},
       table({{5, -1, 0}, {2, -1, 7}, {1, 3, 4}})},
      {"seq_lens has 2 entries for N=3",
       {"seq_lens"},
       set("seq_lens", Tensor::indices(*ctx.host, DType::i32, {5, 2}))},
      {"block_table has 2 rows for N=3",
       {"block_table"},
       set("block_table", index_table(*ctx.host, DType::i32, {{5, 0, 1}, {2, 3, 4}}))},
      {"block_table has dtype f32", {"block_table"}, set("block_table", f32(d, {3, 3}))},
      {"seq_lens has dtype f16", {"seq_lens"}, set("seq_lens", Tensor::empty(d, DType::f16, {3}))},
      {"Hq=4 is not a multiple of Hkv=3 (caches [6,4,3,8])",
       {"k_cache"},
       [k = f32(d, {6, 4, 3, 8}), v = f32(d, {6, 4, 3, 8})](Invocation& call) {
         call.tensor("k_cache", k).tensor("v_cache", v);
       }},
      {"k_cache has D=9 while q has D=8", {"k_cache"}, set("k_cache", f32(d, {6, 4, 2, 9}))},
      {"v_cache has block_size 8 while k_cache has 4",
       {"v_cache"},
       set("v_cache", f32(d, {6, 8, 2, 8}))},
      {"v_cache is bf16 while q is f32",
       {"v_cache"},
       set("v_cache", Tensor::empty(d, DType::bf16, {6, 4, 2, 8}))},
      {"caches with block_size 0",
       {"k_cache"},
       [k = f32(d, {6, 0, 2, 8}), v = f32(d, {6, 0, 2, 8})](Invocation& call) {
         call.tensor("k_cache", k).tensor("v_cache", v);
       }},
      {"o has L=1 while q has L=2", {"o"}, set("o", f32(d, {3, 1, 4, 8}))},
      {"q has rank 3", {"q"}, set("q", f32(d, {3, 4, 8}))},
      {"o aliases q", {"o", "q"}, same_as("o", "q")},
      {"o overlaps v_cache",
       {"o", "v_cache"},
       [](Invocation& call) {
         call.tensor("o", call.tensor("v_cache").view(0, {3, 2, 4, 8}, {64, 32, 8, 1}));
       }},
      {"scale is NaN", {"scale"}, [](Invocation& call) { call.f64("scale", NAN); }},
  };
}

// ---- kv_cache_write: k, v [5,2,8], caches [4,4,2,8], slots [3,-1,12,7,0] -----------

Invocation kv_cache_write_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("k", filled(d, DType::f32, random, {5, 2, 8}))
      .tensor("v", filled(d, DType::f32, random, {5, 2, 8}))
      .tensor("k_cache", filled(d, DType::f32, random, {4, 4, 2, 8}))
      .tensor("v_cache", filled(d, DType::f32, random, {4, 4, 2, 8}))
      .tensor("slot_mapping", Tensor::indices(d, DType::i32, {3, -1, 12, 7, 0}));
  return call;
}

std::vector<BadCall> kv_cache_write_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  auto slots = [&](const std::vector<int64_t>& values) {
    return set("slot_mapping", Tensor::indices(*ctx.host, DType::i32, values));
  };
  return {
      {"slot_mapping entry 16 = num_blocks x block_size",
       {"slot_mapping"},
       slots({3, -1, 16, 7, 0})},
      {"slot_mapping entry -2", {"slot_mapping"}, slots({3, -2, 12, 7, 0})},
      {"slot_mapping names slot 7 twice", {"slot_mapping"}, slots({3, 7, 12, 7, 0})},
      {"slot_mapping has 4 entries for T=5", {"slot_mapping"}, slots({3, -1, 12, 7})},
      {"slot_mapping has dtype f32", {"slot_mapping"}, set("slot_mapping", f32(d, {5}))},
      {"slot_mapping is NULL", {"slot_mapping"}, set("slot_mapping", {})},
      {"v has Hkv=3 while k has Hkv=2", {"v"}, set("v", f32(d, {5, 3, 8}))},
      {"k_cache has D=9 while k has D=8", {"k_cache"}, set("k_cache", f32(d, {4, 4, 2, 9}))},
      {"v_cache has 3 blocks while k_cache has 4",
       {"v_cache"},
       set("v_cache", f32(d, {3, 4, 2, 8}))},
      {"v_cache is f16 while k is f32",
       {"v_cache"},
       set("v_cache", Tensor::empty(d, DType::f16, {4, 4, 2, 8}))},
      {"v is bf16 while k is f32", {"v"}, set("v", Tensor::empty(d, DType::bf16, {5, 2, 8}))},
      {"k_cache aliases v_cache", {"k_cache", "v_cache"}, same_as("k_cache", "v_cache")},
      {"v_cache overlaps v",
       {"v_cache", "v"},
       [](Invocation& call) {
         call.tensor("v", call.tensor("v_cache").view(0, {5, 2, 8}, {16, 8, 1}));
       }},
      {"k has rank 4", {"k"}, set("k", f32(d, {1, 5, 2, 8}))},
  };
}

// ---- threads: medium calls --------------------------------------------------------

namespace {

// Varlen with a sequence of one query and keys longer than queries.
const std::vector<int64_t> kThreadCuQ = {0, 50, 51, 150}, kThreadCuK = {0, 70, 71, 190};

}  // namespace

Invocation attn_prefill_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {1, 150, 4, 64}, -2, 2))
      .tensor("k", random_input(ctx, random, {1, 190, 2, 64}, -1, 1))
      .tensor("v", random_input(ctx, random, {1, 190, 2, 64}, -1, 1))
      .tensor("gate", random_input(ctx, random, {1, 150, 4, 64}, -3, 3))
      .tensor("cu_seqlens_q", Tensor::indices(ctx.index_device(), DType::i32, kThreadCuQ))
      .tensor("cu_seqlens_k", Tensor::indices(ctx.index_device(), DType::i32, kThreadCuK))
      .tensor("o", Tensor::empty(ctx.device, DType::f32, {1, 150, 4, 64}))
      .tensor("lse", Tensor::empty(ctx.device, DType::f32, {1, 4, 150}));
  return call;
}

// o and lse need not be the forward's: the call's bytes are what is compared.
Invocation attn_prefill_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {1, 150, 4, 64}, -2, 2))
      .tensor("k", random_input(ctx, random, {1, 190, 2, 64}, -1, 1))
      .tensor("v", random_input(ctx, random, {1, 190, 2, 64}, -1, 1))
      .tensor("gate", random_input(ctx, random, {1, 150, 4, 64}, -3, 3))
      .tensor("o", random_input(ctx, random, {1, 150, 4, 64}, -1, 1))
      .tensor("lse", random_input(ctx, random, {1, 4, 150}, 2, 4))
      .tensor("do", random_input(ctx, random, {1, 150, 4, 64}, -1, 1))
      .tensor("cu_seqlens_q", Tensor::indices(ctx.index_device(), DType::i32, kThreadCuQ))
      .tensor("cu_seqlens_k", Tensor::indices(ctx.index_device(), DType::i32, kThreadCuK))
      .tensor("dq", Tensor::empty(ctx.device, DType::f32, {1, 150, 4, 64}))
      .tensor("dk", Tensor::empty(ctx.device, DType::f32, {1, 190, 2, 64}))
      .tensor("dv", Tensor::empty(ctx.device, DType::f32, {1, 190, 2, 64}))
      .tensor("dgate", Tensor::empty(ctx.device, DType::f32, {1, 150, 4, 64}));
  return call;
}

// 4 sequences of up to 128 tokens in blocks of 16, two new tokens each.
Invocation attn_decode_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  std::vector<std::vector<int64_t>> table(4, std::vector<int64_t>(8));
  for (int64_t n = 0; n < 4; ++n) {
    for (int64_t b = 0; b < 8; ++b) table[n][b] = (b * 4 + n * 3) % 32;  // 32 distinct blocks
  }
  Invocation call(ctx, op);
  call.tensor("q", random_input(ctx, random, {4, 2, 4, 64}, -2, 2))
      .tensor("k_cache", random_input(ctx, random, {32, 16, 2, 64}, -1, 1))
      .tensor("v_cache", random_input(ctx, random, {32, 16, 2, 64}, -1, 1))
      .tensor("block_table", index_table(ctx.index_device(), DType::i32, table))
      .tensor("seq_lens", Tensor::indices(ctx.index_device(), DType::i32, {100, 1, 128, 37}))
      .tensor("o", Tensor::empty(ctx.device, DType::f32, {4, 2, 4, 64}));
  return call;
}

Invocation kv_cache_write_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  std::vector<int64_t> slots(200);
  for (int64_t t = 0; t < 200; ++t) slots[t] = t % 7 == 3 ? -1 : (t * 37) % 512;  // distinct
  Invocation call(ctx, op);
  call.tensor("k", random_input(ctx, random, {200, 2, 64}, -1, 1))
      .tensor("v", random_input(ctx, random, {200, 2, 64}, -1, 1))
      .tensor("k_cache", Tensor::empty(ctx.device, DType::f32, {32, 16, 2, 64}))
      .tensor("v_cache", Tensor::empty(ctx.device, DType::f32, {32, 16, 2, 64}))
      .tensor("slot_mapping", Tensor::indices(ctx.index_device(), DType::i32, slots));
  return call;
}

}  // namespace hops::conformance
