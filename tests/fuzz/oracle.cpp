// The float64 reference (tests/reference) of every op, fed from an accepted
// fuzzed call: the oracle reads each argument's logical values (any dtype,
// strides, offsets) and compares each output with FuzzCall::expect.
#include <cmath>
#include <map>
#include <stdexcept>
#include <string_view>

#include "attn_reference.hpp"
#include "conv1d_reference.hpp"
#include "fuzz_call.hpp"
#include "gdn_reference.hpp"
#include "moe_reference.hpp"
#include "norm_reference.hpp"

namespace hops::fuzz {

namespace {

// One accepted call, read by argument name.
class Args {
 public:
  explicit Args(const FuzzCall& call) : call_(call) {}
  bool has(std::string_view name) const { return call_.tensor(name) != nullptr; }
  Array64 in(std::string_view name) const { return call_.read(*call_.tensor(name), false); }
  Array64 before(std::string_view name) const { return call_.read(*call_.tensor(name), true); }
  // Input `name`'s shape, every element 1 (FuzzCall::expect_zeros).
  Array64 ones(std::string_view name) const { return Array64(in(name).shape, 1.0); }
  // An optional input: empty when absent (pass ptr() of it).
  std::optional<Array64> maybe(std::string_view name) const {
    return has(name) ? std::optional(in(name)) : std::nullopt;
  }
  std::optional<std::vector<int64_t>> indices(std::string_view name) const {
    const TensorArg* t = call_.tensor(name);
    return t ? std::optional(call_.read_indices(*t)) : std::nullopt;
  }
  double f64(std::string_view name) const { return call_.f64(name); }
  int64_t i64(std::string_view name) const { return call_.i64(name); }
  // A scalar the op may lack (gdn_chunk_bwd has no beta_mode): its value or `absent`.
  int64_t i64_or(std::string_view name, int64_t absent) const {
    return call_.arg_index(name) >= 0 ? call_.i64(name) : absent;
  }
  bool flag(std::string_view name) const { return call_.flag(name); }
  void expect(std::string_view name, const Array64& want, bool exact_zeros = false) const {
    call_.expect(name, want, exact_zeros);
  }
  void expect_if_given(std::string_view name, const Array64& want, bool exact_zeros = false) const {
    if (has(name)) expect(name, want, exact_zeros);
  }
  void expect_copy(std::string_view name, const Array64& want) const {
    call_.expect(name, want, false, 0.0);
  }
  void expect_indices(std::string_view name, const std::vector<int64_t>& want) const {
    call_.expect_indices(name, want);
  }
  void expect_zeros(std::string_view name, const Array64& where) const {
    call_.expect_zeros(name, where);
  }
  void expect_zeros_if_given(std::string_view name, const Array64& where) const {
    if (has(name)) expect_zeros(name, where);
  }
  // A [T,k] index table (ids or a row map) as the reference takes it.
  ref::SlotTable slots(std::string_view name) const {
    ref::SlotTable table(dim(name, 0), dim(name, 1));
    table.data = *indices(name);
    return table;
  }
  int64_t dim(std::string_view name, int d) const { return call_.tensor(name)->dl.shape[d]; }
  const FuzzCall& call() const { return call_; }

 private:
  const FuzzCall& call_;
};

template <class T>
const T* ptr(const std::optional<T>& value) {
  return value ? &*value : nullptr;
}

// [B,T,D] <-> [B,D,T].
Array64 swap_last(const Array64& a) {
  Array64 out({a.shape[0], a.shape[2], a.shape[1]});
  for (int64_t b = 0; b < a.shape[0]; ++b) {
    for (int64_t i = 0; i < a.shape[1]; ++i) {
      for (int64_t j = 0; j < a.shape[2]; ++j) out.at({b, j, i}) = a.at({b, i, j});
    }
  }
  return out;
}

std::vector<bool> used_slots(int64_t pool, int64_t sequences,
                             const std::optional<std::vector<int64_t>>& slots) {
  std::vector<bool> used(static_cast<size_t>(pool), false);
  for (int64_t n = 0; n < sequences; ++n) {
    const int64_t slot = slots ? (*slots)[static_cast<size_t>(n)] : n;
    if (slot >= 0 && slot < pool) used[static_cast<size_t>(slot)] = true;
  }
  return used;
}

struct GdnInputs {
  Array64 q, k, v, g, beta;
  std::optional<Array64> A_log, dt_bias;
  std::optional<std::vector<int64_t>> cu_seqlens;
  ref::GdnOptions options;
};

GdnInputs gdn_inputs(const Args& a) {
  GdnInputs in{a.in("q"),
               a.in("k"),
               a.in("v"),
               a.in("g"),
               a.in("beta"),
               a.maybe("A_log"),
               a.maybe("dt_bias"),
               a.indices("cu_seqlens"),
               {}};
  in.options = {.scale = a.f64("scale"),
                .use_qk_l2norm = a.flag("use_qk_l2norm"),
                .state_v_first = a.flag("state_v_first"),
                .A_log = ptr(in.A_log),
                .dt_bias = ptr(in.dt_bias),
                .beta_mode = static_cast<int>(a.i64_or("beta_mode", -1))};
  return in;
}

void gdn_chunk_fwd(const Args& a) {
  const GdnInputs in = gdn_inputs(a);
  const auto h0 = a.maybe("initial_state");
  const ref::GdnResult want =
      ref::gdn_forward(in.q, in.k, in.v, in.g, in.beta, ptr(h0), ptr(in.cu_seqlens), in.options);
  a.expect("o", want.o);
  a.expect_if_given("final_state", want.final_state);
}

void gdn_recurrent(const Args& a) {
  const GdnInputs in = gdn_inputs(a);
  const auto slots = a.indices("state_indices");
  Array64 pool = a.before("state");
  Array64 o(a.in("o").shape, NAN);  // skipped sequences keep their bytes
  ref::gdn_recurrent(in.q, in.k, in.v, in.g, in.beta, pool, ptr(slots), ptr(in.cu_seqlens),
                     in.options, o);
  a.expect("o", o);
  a.expect("state", pool);
  const int64_t sequences =
      in.cu_seqlens ? static_cast<int64_t>(in.cu_seqlens->size()) - 1 : in.q.shape[0];
  a.call().expect_slots_kept("state", used_slots(pool.shape[0], sequences, slots));
}

void gdn_chunk_bwd(const Args& a) {
  const GdnInputs in = gdn_inputs(a);
  const auto h0 = a.maybe("initial_state");
  const auto d_final = a.maybe("d_final_state");
  const ref::GdnGrads want =
      ref::gdn_backward(in.q, in.k, in.v, in.g, in.beta, ptr(h0), ptr(in.cu_seqlens), a.in("do"),
                        ptr(d_final), in.options);
  a.expect("dq", want.dq);
  a.expect("dk", want.dk);
  a.expect("dv", want.dv);
  a.expect("dg", want.dg);
  a.expect("dbeta", want.dbeta);
  a.expect_if_given("dh0", want.dh0);
}

void gdn_gating(const Args& a) {
  const ref::Gating want = ref::gdn_gating(a.in("A_log"), a.in("a"), a.in("b"), a.in("dt_bias"),
                                           a.f64("softplus_beta"), a.f64("softplus_threshold"));
  a.expect("g", want.g);
  a.expect("beta", want.beta);
}

void gated_rmsnorm(const Args& a) {
  a.expect("y", ref::gated_rmsnorm(a.in("x"), a.in("z"), a.in("weight"), a.f64("eps")));
}

void gated_rmsnorm_bwd(const Args& a) {
  const ref::GatedRmsNormGrads want =
      ref::gated_rmsnorm_bwd(a.in("x"), a.in("z"), a.in("weight"), a.in("dy"), a.f64("eps"));
  a.expect("dx", want.dx);
  a.expect("dz", want.dz);
  a.expect("dweight", want.dweight);
}

// x, y, dx, dy as the reference takes them: channels last.
Array64 tokens(const Args& a, std::string_view name) {
  return a.flag("channels_first") ? swap_last(a.in(name)) : a.in(name);
}

void conv1d_fwd(const Args& a) {
  const auto bias = a.maybe("bias");
  const auto h0 = a.maybe("initial_state");
  const auto cu = a.indices("cu_seqlens");
  const auto seq_idx = a.indices("seq_idx");
  const int64_t final_len = a.has("final_state") ? a.in("final_state").shape[2] : 0;
  const ref::Conv1dResult want =
      ref::conv1d_fwd(tokens(a, "x"), a.in("weight"), ptr(bias), ptr(h0), ptr(cu),
                      static_cast<ref::Activation>(a.i64("activation")), final_len, ptr(seq_idx));
  a.expect("y", a.flag("channels_first") ? swap_last(want.y) : want.y);
  a.expect_if_given("final_state", want.final_state);
}

void conv1d_bwd(const Args& a) {
  const auto bias = a.maybe("bias");
  const auto h0 = a.maybe("initial_state");
  const auto d_final = a.maybe("d_final_state");
  const auto cu = a.indices("cu_seqlens");
  const auto seq_idx = a.indices("seq_idx");
  const ref::Conv1dGrads want = ref::conv1d_bwd(
      tokens(a, "x"), a.in("weight"), ptr(bias), ptr(h0), ptr(cu), tokens(a, "dy"), ptr(d_final),
      static_cast<ref::Activation>(a.i64("activation")), ptr(seq_idx));
  a.expect("dx", a.flag("channels_first") ? swap_last(want.dx) : want.dx);
  a.expect("dweight", want.dweight);
  a.expect_if_given("dbias", want.dbias);
  a.expect_if_given("d_initial_state", want.d_initial_state);
}

void conv1d_update(const Args& a) {
  Array64 x = a.in("x");
  const std::vector<int64_t> shape = x.shape;
  if (x.shape.size() == 2) x.shape = {x.shape[0], 1, x.shape[1]};  // [N,D] is one token
  const auto bias = a.maybe("bias");
  const auto slots = a.indices("state_indices");
  const auto cache_seqlens = a.indices("cache_seqlens");
  Array64 pool = a.before("state");
  Array64 y(x.shape, NAN);  // skipped sequences keep their bytes (or get zeros)
  ref::conv1d_update(x, pool, a.in("weight"), ptr(bias), ptr(slots),
                     static_cast<ref::Activation>(a.i64("activation")), y, ptr(cache_seqlens),
                     a.flag("zero_skipped"));
  y.shape = shape;
  a.expect("y", y);
  a.expect("state", pool);
  a.call().expect_slots_kept("state", used_slots(pool.shape[0], x.shape[0], slots));
}

// Rows that see no key have o = 0 and lse = -inf, and every gradient
// element nothing contributes to is 0: those are compared exactly.
constexpr bool kExactZeros = true;

void attn_prefill(const Args& a) {
  const auto gate = a.maybe("gate");
  const auto cu_q = a.indices("cu_seqlens_q");
  const auto cu_k = a.indices("cu_seqlens_k");
  const ref::AttnResult want =
      ref::attn_prefill(a.in("q"), a.in("k"), a.in("v"), ptr(gate), ptr(cu_q), ptr(cu_k),
                        a.f64("scale"), a.flag("causal"));
  a.expect("o", want.o, kExactZeros);
  a.expect_if_given("lse", want.lse);
}

void attn_prefill_bwd(const Args& a) {
  const auto gate = a.maybe("gate");
  const auto cu_q = a.indices("cu_seqlens_q");
  const auto cu_k = a.indices("cu_seqlens_k");
  const ref::AttnGrads want =
      ref::attn_prefill_bwd(a.in("q"), a.in("k"), a.in("v"), ptr(gate), a.in("o"), a.in("lse"),
                            a.in("do"), ptr(cu_q), ptr(cu_k), a.f64("scale"), a.flag("causal"));
  a.expect("dq", want.dq, kExactZeros);
  a.expect("dk", want.dk, kExactZeros);
  a.expect("dv", want.dv, kExactZeros);
  a.expect_if_given("dgate", want.dgate, kExactZeros);
}

void attn_decode(const Args& a) {
  const std::vector<int64_t> table = *a.indices("block_table");
  const int64_t max_blocks = a.dim("block_table", 1);
  std::vector<std::vector<int64_t>> rows;
  for (size_t begin = 0; begin < table.size(); begin += static_cast<size_t>(max_blocks))
    rows.emplace_back(table.begin() + begin, table.begin() + begin + max_blocks);
  rows.resize(static_cast<size_t>(a.dim("block_table", 0)));  // max_blocks == 0: empty rows
  const Array64 want = ref::attn_decode(a.in("q"), a.in("k_cache"), a.in("v_cache"), rows,
                                        *a.indices("seq_lens"), a.f64("scale"));
  a.expect("o", want, kExactZeros);
}

void kv_cache_write(const Args& a) {
  Array64 k_cache = a.before("k_cache"), v_cache = a.before("v_cache");
  const std::vector<int64_t> slots = *a.indices("slot_mapping");
  ref::kv_cache_write(a.in("k"), a.in("v"), k_cache, v_cache, slots);
  // The slots no row names keep their bytes (NaN: see FuzzCall::expect).
  const int64_t per_slot = k_cache.shape[2] * k_cache.shape[3];
  const std::vector<bool> used =
      used_slots(k_cache.shape[0] * k_cache.shape[1], static_cast<int64_t>(slots.size()), slots);
  for (size_t n = 0; n < k_cache.data.size(); ++n) {
    if (!used[n / static_cast<size_t>(per_slot)]) k_cache.data[n] = v_cache.data[n] = NAN;
  }
  a.expect("k_cache", k_cache);
  a.expect("v_cache", v_cache);
}

// The MoE ops: index outputs and dispatch's rows (copies) exact; elsewhere
// the tolerance, and 0 exactly where nothing contributes (rows past the kept
// or counted ones, tokens whose slots are all dropped, experts without rows,
// rows no slot reads, dropped slots' weight gradients): the zeros of the
// reference on inputs of all ones (FuzzCall::expect_zeros).
void moe_route(const Args& a) {
  const ref::MoeRouteResult want =
      ref::moe_route(a.in("logits"), a.dim("topk_ids", 1), a.flag("normalize"),
                     static_cast<ref::MoeScoring>(a.i64("scoring")));
  a.expect_indices("topk_ids", want.topk_ids.data);
  a.expect("topk_weights", want.topk_weights);
}

void moe_dispatch(const Args& a) {
  const ref::MoeDispatchResult want =
      ref::moe_dispatch(a.in("x"), a.slots("topk_ids"), a.dim("counts", 0));
  a.expect_copy("rows", want.rows);
  a.expect_indices("counts", want.counts);
  a.expect_indices("row_map", want.row_map.data);
}

void moe_expert_mlp(const Args& a) {
  const std::vector<int64_t> counts = *a.indices("counts");
  a.expect("out",
           ref::moe_expert_mlp(a.in("rows"), counts, a.in("gate_up_proj"), a.in("down_proj")));
  a.expect_zeros("out", ref::moe_expert_mlp(a.ones("rows"), counts, a.ones("gate_up_proj"),
                                            a.ones("down_proj")));
}

void moe_combine(const Args& a) {
  const ref::SlotTable map = a.slots("row_map");
  a.expect("y", ref::moe_combine(a.in("rows"), map, a.in("topk_weights")));
  a.expect_zeros("y", ref::moe_combine(a.ones("rows"), map, a.ones("topk_weights")));
}

void moe_dispatch_bwd(const Args& a) {
  const ref::SlotTable map = a.slots("row_map");
  a.expect("dx", ref::moe_dispatch_bwd(a.in("d_rows"), map));
  a.expect_zeros("dx", ref::moe_dispatch_bwd(a.ones("d_rows"), map));
}

void moe_expert_mlp_bwd(const Args& a) {
  const std::vector<int64_t> counts = *a.indices("counts");
  const ref::MoeExpertMlpGrads want = ref::moe_expert_mlp_bwd(
      a.in("rows"), counts, a.in("gate_up_proj"), a.in("down_proj"), a.in("d_out"));
  a.expect("d_rows", want.d_rows);
  a.expect_if_given("d_gate_up_proj", want.d_gate_up_proj);
  a.expect_if_given("d_down_proj", want.d_down_proj);
  const ref::MoeExpertMlpGrads support = ref::moe_expert_mlp_bwd(
      a.ones("rows"), counts, a.ones("gate_up_proj"), a.ones("down_proj"), a.ones("d_out"));
  a.expect_zeros("d_rows", support.d_rows);
  a.expect_zeros_if_given("d_gate_up_proj", support.d_gate_up_proj);
  a.expect_zeros_if_given("d_down_proj", support.d_down_proj);
}

void moe_combine_bwd(const Args& a) {
  const ref::SlotTable map = a.slots("row_map");
  const ref::MoeCombineGrads want =
      ref::moe_combine_bwd(a.in("rows"), map, a.in("topk_weights"), a.in("dy"));
  a.expect("d_rows", want.d_rows);
  a.expect_if_given("d_topk_weights", want.d_topk_weights);
  const ref::MoeCombineGrads support =
      ref::moe_combine_bwd(a.ones("rows"), map, a.ones("topk_weights"), a.ones("dy"));
  a.expect_zeros("d_rows", support.d_rows);
  a.expect_zeros_if_given("d_topk_weights", support.d_topk_weights);
}

const std::map<std::string_view, void (*)(const Args&)> kOracles = {
    {"gdn_chunk_fwd", gdn_chunk_fwd},
    {"gdn_recurrent", gdn_recurrent},
    {"gdn_chunk_bwd", gdn_chunk_bwd},
    {"gdn_gating", gdn_gating},
    {"gated_rmsnorm", gated_rmsnorm},
    {"gated_rmsnorm_bwd", gated_rmsnorm_bwd},
    {"conv1d_fwd", conv1d_fwd},
    {"conv1d_bwd", conv1d_bwd},
    {"conv1d_update", conv1d_update},
    {"attn_prefill", attn_prefill},
    {"attn_prefill_bwd", attn_prefill_bwd},
    {"attn_decode", attn_decode},
    {"kv_cache_write", kv_cache_write},
    {"moe_route", moe_route},
    {"moe_dispatch", moe_dispatch},
    {"moe_expert_mlp", moe_expert_mlp},
    {"moe_combine", moe_combine},
    {"moe_dispatch_bwd", moe_dispatch_bwd},
    {"moe_expert_mlp_bwd", moe_expert_mlp_bwd},
    {"moe_combine_bwd", moe_combine_bwd},
};

}  // namespace

bool check_against_reference(const FuzzCall& call) {
  const auto oracle = kOracles.find(call.op().name);
  if (oracle == kOracles.end()) return false;
  try {
    oracle->second(Args(call));
  } catch (const std::exception& e) {
    // The plugin accepted a call that the reference calls invalid.
    call.finding(std::string("HOPS_OK for a call the reference rejects: ") + e.what());
  }
  return true;
}

}  // namespace hops::fuzz
