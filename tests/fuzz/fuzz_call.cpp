#include "fuzz_call.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#include "attn_reference.hpp"

namespace hops::fuzz {

namespace {

using i128 = __int128;
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();

// Memory the harness gives one call; a tensor of a legal span beyond it is
// skipped (the plugin cannot know the buffer's size, so it would be right to
// accept it).
constexpr size_t kMaxBytes = size_t{16} << 20;
// Elements of one tensor: larger problems are legal but slow (a second per
// call under ASan), so their inputs are skipped.
constexpr int64_t kMaxElements = int64_t{1} << 18;
// The GDN chunk kernels work in whole 64-token chunks per (sequence, value
// head), each about C x C x (C + K + V) operations whatever T, K and V are: a
// call with small tensors (a few tokens over ~2^17 heads, or 2^16 tokens at
// K = V = 1) is legal yet takes seconds under ASan, so its work is bounded.
constexpr i128 kMaxChunkWork = i128{1} << 27;
// The attention ops' work (FuzzCall::attention_work: query rows x D x keys):
// legal calls of 2^18-element tensors (2^16 queries against as many keys)
// run for minutes under ASan. At the bounds the backward kernel takes about
// 0.1 s (its tokens, keys and D padded to kKernelPad), the float64 reference
// as long (its backward 2^20 x 8 Array64::at).
constexpr int64_t kMaxAttentionWork = int64_t{1} << 22;
constexpr int64_t kKernelPad = 16;
constexpr int64_t kMaxReferenceAttentionWork = int64_t{1} << 20;
// A span no address space holds (x86-64 5-level paging: 2^57 bytes): a
// tensor claiming it cannot exist, so a call with one must be rejected.
constexpr i128 kImpossibleBytes = i128{1} << 57;
// Where the harness's own size arithmetic saturates (a product of two
// clamped values still fits in 128 bits).
constexpr i128 kClamp = i128{1} << 62;

constexpr int64_t kHuge[] = {
    (int64_t{1} << 16) + 1, (int64_t{1} << 31) - 1, (int64_t{1} << 31) + 1, (int64_t{1} << 32) + 1,
    (int64_t{1} << 48) + 1, int64_t{1} << 61,       (int64_t{1} << 62) + 3, kI64Max};

int64_t saturate(i128 v) {
  return v > kI64Max ? kI64Max : v < kI64Min ? kI64Min : static_cast<int64_t>(v);
}

// A size from a plan byte: mostly one of `small`, a huge one from 248 up.
int64_t size_from(uint8_t b, std::initializer_list<int64_t> small) {
  if (b >= 248) return kHuge[b - 248];
  return small.begin()[b % small.size()];
}

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double uniform(uint64_t& state, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(splitmix(state) >> 11) * 0x1p-53;
}

std::optional<DType> dtype_of(DLDataType dl) {
  if (dl.lanes != 1) return std::nullopt;
  if (dl.code == kDLFloat && dl.bits == 32) return DType::f32;
  if (dl.code == kDLFloat && dl.bits == 16) return DType::f16;
  if (dl.code == kDLBfloat && dl.bits == 16) return DType::bf16;
  if (dl.code == kDLInt && dl.bits == 32) return DType::i32;
  if (dl.code == kDLInt && dl.bits == 64) return DType::i64;
  return std::nullopt;
}

// The HOPS_DTYPE_* bit of a DLPack dtype, 0 for one hops has no name for.
uint32_t dtype_bit(DLDataType dl) {
  if (dl.lanes != 1) return 0;
  if (dl.code == kDLFloat && dl.bits == 32) return HOPS_DTYPE_F32;
  if (dl.code == kDLFloat && dl.bits == 16) return HOPS_DTYPE_F16;
  if (dl.code == kDLBfloat && dl.bits == 16) return HOPS_DTYPE_BF16;
  if (dl.code == kDLFloat && dl.bits == 64) return HOPS_DTYPE_F64;
  if (dl.code == kDLInt && dl.bits == 32) return HOPS_DTYPE_I32;
  if (dl.code == kDLInt && dl.bits == 64) return HOPS_DTYPE_I64;
  return 0;
}

// Bytes per element as the span of a tensor counts them (at least 1).
int64_t element_bytes(DLDataType dl) {
  return std::max<int64_t>(1, (int64_t{dl.bits} * std::max<int64_t>(dl.lanes, 1) + 7) / 8);
}

bool is_written(const hops_arg_desc& d) {
  return d.kind == HOPS_ARG_TENSOR_OUT || d.kind == HOPS_ARG_TENSOR_INOUT;
}
bool is_tensor(const hops_arg_desc& d) { return d.kind <= HOPS_ARG_TENSOR_INOUT; }
bool index_only(const hops_arg_desc& d) { return (d.dtypes & ~uint32_t{HOPS_DTYPE_INDEX}) == 0; }

int32_t raw_device_type(DLDevice d) {
  int32_t type = 0;
  std::memcpy(&type, &d.device_type, sizeof type);
  return type;
}
void set_device_type(DLDevice& d, int32_t type) { std::memcpy(&d.device_type, &type, sizeof type); }
bool same_device(DLDevice a, DLDevice b) {
  return raw_device_type(a) == raw_device_type(b) && a.device_id == b.device_id;
}
bool host_memory(DLDevice d) {
  return raw_device_type(d) == kDLCPU || raw_device_type(d) == kDLCUDAHost;
}

// Device types a record may pick, valid and not.
constexpr int32_t kDeviceTypes[] = {kDLCPU,    kDLCUDA,        kDLCUDAHost, kDLOpenCL,
                                    kDLVulkan, kDLCUDAManaged, 99,          -1};

// Rank-checked view of a DLTensor: dims, strides (explicit or compact), and
// the element count; `ok` is false when the header itself is unusable.
struct Geometry {
  bool ok = false;
  bool negative = false;  // a negative dim or stride
  int ndim = 0;
  std::array<int64_t, kShapeSlots> shape{}, strides{};
  i128 numel = 0;   // saturated at kClamp
  i128 extent = 0;  // elements from the first to one past the last (0 when empty)
};

Geometry geometry(const DLTensor& dl) {
  Geometry g;
  if (dl.ndim < 0 || dl.ndim > kShapeSlots || (dl.ndim > 0 && !dl.shape)) return g;
  g.ok = true;
  g.ndim = dl.ndim;
  g.numel = 1;
  for (int d = 0; d < g.ndim; ++d) {
    g.shape[d] = dl.shape[d];
    if (g.shape[d] < 0) g.negative = true;
    g.numel = std::min<i128>(g.numel * std::max<int64_t>(g.shape[d], 0), kClamp);
  }
  if (dl.strides) {
    for (int d = 0; d < g.ndim; ++d) {
      g.strides[d] = dl.strides[d];
      if (g.strides[d] < 0) g.negative = true;
    }
  } else {
    i128 step = 1;
    for (int d = g.ndim - 1; d >= 0; --d) {
      g.strides[d] = saturate(step);
      step = std::min<i128>(step * std::max<int64_t>(g.shape[d], 1), kClamp);
    }
  }
  if (g.numel > 0 && !g.negative) {
    i128 last = 0;
    for (int d = 0; d < g.ndim; ++d) {
      last += i128{g.shape[d] - 1} * g.strides[d];
      last = std::min<i128>(last, kClamp);
    }
    g.extent = last + 1;
  }
  return g;
}

// Element offsets of every logical element, row-major order.
std::vector<int64_t> offsets(const Geometry& g) {
  std::vector<int64_t> out;
  if (!g.ok || g.negative || g.numel == 0 || g.numel > kMaxElements) return out;
  if (g.extent > (i128{1} << 40)) return out;  // no buffer of the harness is that long
  out.reserve(static_cast<size_t>(g.numel));
  std::array<int64_t, kShapeSlots> index{};
  for (int64_t n = 0; n < static_cast<int64_t>(g.numel); ++n) {
    int64_t offset = 0;
    for (int d = 0; d < g.ndim; ++d) offset += index[d] * g.strides[d];
    out.push_back(offset);
    for (int d = g.ndim - 1; d >= 0; --d) {
      if (++index[d] < g.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

void store_index(DType t, std::byte* base, int64_t offset, int64_t value) {
  if (t == DType::i32) {
    const auto v = static_cast<int32_t>(value);  // wraps: the plugin sees what an i32 holds
    std::memcpy(base + offset * 4, &v, 4);
  } else {
    std::memcpy(base + offset * 8, &value, 8);
  }
}

int64_t load_index(DType t, const std::byte* base, int64_t offset) {
  if (t == DType::i32) {
    int32_t v = 0;
    std::memcpy(&v, base + offset * 4, 4);
    return v;
  }
  int64_t v = 0;
  std::memcpy(&v, base + offset * 8, 8);
  return v;
}

// The value range of an input, as the conformance runner draws them: the
// delta rule's decays and write strengths where the ops expect them, the
// norm's weight around 1, wide gate inputs.
struct Range {
  double lo = -1, hi = 1;
  bool either_sign = false;  // |value| in [lo, hi], the sign at random
};
Range value_range(std::string_view op, std::string_view arg, bool fused_gating) {
  const bool gdn = op.starts_with("gdn_") && op != "gdn_gating";
  if (gdn && arg == "g") return fused_gating ? Range{-1, 1} : Range{-0.2, -0.01};
  if (gdn && arg == "beta") return fused_gating ? Range{-2, 2} : Range{0, 1};
  if (op == "gdn_gating" && arg == "a") return {-3, 3};
  if (op == "gdn_gating" && arg == "b") return {-4, 4};
  // |x| >= 0.25: with D = 1 the backward's f32 terms grow as 1/|x| and cancel.
  if (op.starts_with("gated_rmsnorm") && arg == "x") return {0.25, 1, true};
  if (op.starts_with("gated_rmsnorm") && arg == "z") return {-3, 3};
  if (op.starts_with("gated_rmsnorm") && arg == "weight") return {0.5, 1.5};
  if (op.starts_with("moe_combine") && arg == "topk_weights") return {0, 1};  // a router's
  return {};
}

// Scalars the oracle can be trusted with: the ranges real hosts pass.
bool sane_scalar(const hops_arg_desc& d, double f64, int64_t i64) {
  const std::string_view name = d.name;
  if (d.kind == HOPS_ARG_I64) {
    const bool choice = name == "activation" || name == "scoring";
    if (name == "beta_mode") return i64 >= -1 && i64 <= 2;
    return choice ? (i64 == 0 || i64 == 1) : i64 == d.default_i64;
  }
  if (!std::isfinite(f64)) return false;
  if (name == "scale") return f64 >= 0 && f64 <= 4;
  if (name == "eps") return f64 >= 0 && f64 <= 1;
  if (name == "softplus_beta") return f64 >= 0.25 && f64 <= 4;
  if (name == "softplus_threshold") return f64 >= 0.5 && f64 <= 40;
  return f64 == d.default_f64;
}

// The dims of a descriptor's symbolic shape ("[B,T,HV,K]", "[N+1]", "[...,D]").
std::vector<std::string> shape_symbols(const hops_arg_desc& d) {
  std::vector<std::string> dims;
  std::string item;
  for (char ch : std::string_view(d.shape ? d.shape : "[]").substr(1)) {
    if (ch == ',' || ch == ']') {
      if (!item.empty()) dims.push_back(item);
      item.clear();
    } else if (ch != ' ') {
      item += ch;
    }
  }
  return dims;
}

// The mixture-of-experts ops the plan builds valid calls of (their index
// tables below); not the expert-parallel ones, which need a communicator.
bool moe_op(std::string_view op) {
  for (std::string_view name : {"moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine",
                                "moe_dispatch_bwd", "moe_expert_mlp_bwd", "moe_combine_bwd"}) {
    if (op == name) return true;
  }
  return false;
}

// How the MoE slots are routed (Plan::varlen % 6), as the conformance runner
// routes them: the first four give expert ids, and the row map and counts are
// moe_dispatch's of them; the last two give row maps no dispatch makes (for
// combine and the backwards of dispatch and combine; any_rows names rows
// twice, which moe_combine_bwd must reject).
enum class MoeRouting { top_k, repeats, one_expert, few_experts, shuffled_rows, any_rows };

struct MoeTables {
  std::vector<int64_t> ids, row_map, counts;  // [T,k], [T,k], [E]
};

// T tokens of k slots over E experts and R >= T*k rows; every drop_every-th
// slot (flat order) dropped; one_expert routes every slot to `one`. Empty
// where the tables would not fit the harness (such tensors are skipped).
MoeTables moe_tables(int64_t T, int64_t k, int64_t E, int64_t R, MoeRouting routing,
                     int64_t drop_every, int64_t one, uint64_t seed) {
  MoeTables m;
  const i128 slots = i128{T} * k;
  if (slots > kMaxElements || E < 1) return m;
  const auto n = static_cast<int64_t>(slots);
  uint64_t state = seed ^ 0x6d6f652d726f7574ull;
  auto below = [&](int64_t count) {
    return static_cast<int64_t>(splitmix(state) % static_cast<uint64_t>(count));
  };
  // Distinct experts per token as a router picks them, where k is small
  // enough to draw them by rejection; else any (repeats).
  const bool distinct = k <= E && k <= 64;
  // Slot by slot (not token by token: 2^48 tokens of no slot are legal).
  for (int64_t s = 0; s < n; ++s) {
    const int64_t j = s % k;  // the slot's index in its token
    int64_t id = 0;
    switch (routing) {
      case MoeRouting::repeats:
        id = below(E);
        break;
      case MoeRouting::one_expert:
        id = one % E;
        break;
      case MoeRouting::few_experts:
        id = 3 * below((E - 1) / 3 + 1);  // 0, 3, ... below E
        break;
      default:
        do {
          id = below(E);
        } while (distinct && std::find(m.ids.end() - j, m.ids.end(), id) != m.ids.end());
    }
    m.ids.push_back(id);
  }
  if (drop_every > 0) {
    for (int64_t s = drop_every - 1; s < n; s += drop_every) m.ids[s] = -1;
  }
  // moe_dispatch's rows: expert by expert, within one in slot order.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return m.ids[a] < m.ids[b]; });
  m.row_map.assign(static_cast<size_t>(n), -1);
  int64_t row = 0;
  for (int64_t s : order) {
    if (m.ids[s] >= 0) m.row_map[s] = row++;
  }
  if (E <= kMaxElements) {
    m.counts.assign(static_cast<size_t>(E), 0);
    for (int64_t id : m.ids) {
      if (id >= 0) ++m.counts[id];
    }
  }
  // (Beyond kMaxElements rows, from a huge extra, the row map stays dispatch's.)
  if ((routing == MoeRouting::shuffled_rows || routing == MoeRouting::any_rows) &&
      R <= kMaxElements) {
    std::vector<int64_t> rows(static_cast<size_t>(std::max<int64_t>(R, n)));
    std::iota(rows.begin(), rows.end(), 0);
    for (int64_t i = static_cast<int64_t>(rows.size()) - 1; i > 0; --i)
      std::swap(rows[i], rows[below(i + 1)]);
    for (int64_t s = 0; s < n; ++s) {
      if (m.row_map[s] < 0) continue;
      m.row_map[s] = routing == MoeRouting::shuffled_rows ? rows[s] : below(R);
    }
  }
  return m;
}

std::string dtype_text(DLDataType dl) {
  return fmt::format("{}:{}x{}", dl.code, dl.bits, dl.lanes);
}

}  // namespace

FuzzCall::FuzzCall(const hops_api& api, std::span<const uint8_t> input) : api_(api) {
  Plan plan{};
  if (!input.empty()) std::memcpy(&plan, input.data(), std::min(input.size(), sizeof plan));
  for (size_t at = sizeof plan; at + sizeof(Record) <= input.size(); at += sizeof(Record)) {
    Record r;
    std::memcpy(&r, input.data() + at, sizeof r);
    records_.push_back(r);
  }
  decode_plan(plan);
  if (!runnable_) return;
  for (const Record& r : records_) apply(r, false);
  if (attention_work(kKernelPad) > kMaxAttentionWork || !allocate()) {
    runnable_ = false;
    return;
  }
  fill();
  if (std::string_view(op_->name) == "attn_prefill_bwd") forward_lse();
  for (const Record& r : records_) apply(r, true);
  // A shorter list is a caller of an older arity (ABI 1.1): the provider gives
  // the arguments left out their defaults, NULL tensors and the descriptor's
  // scalars, so the model does too (a required tensor left out is then NULL).
  if (!null_args_ && num_args_ >= 0 && num_args_ < op_->num_args) {
    for (int i = num_args_; i < op_->num_args; ++i) {
      const hops_arg_desc& d = *hops_op_arg(op_, i);
      raw_bool_[i] = false;
      if (is_tensor(d)) {
        tensors_[i].present = false;
      } else if (d.kind == HOPS_ARG_F64) {
        values_[i].f64 = d.default_f64;
      } else if (d.kind == HOPS_ARG_I64) {
        values_[i].i64 = d.default_i64;
      } else {
        values_[i] = {};
        values_[i].boolean = d.default_i64 != 0;
      }
    }
  }
  for (int i = 0; i < op_->num_args; ++i) {
    if (is_tensor(*hops_op_arg(op_, i))) {
      values_[i].tensor = tensors_[i].present ? &tensors_[i].dl : nullptr;
    }
  }
  snapshot_.reserve(buffers_.size());
  for (const Buffer& b : buffers_) snapshot_.emplace_back(b.bytes.get(), b.bytes.get() + b.size);
}

void FuzzCall::decode_plan(const Plan& plan) {
  op_ = api_.op_at(plan.op % std::max(api_.op_count(), 1));
  if (!op_ || op_->num_args > kMaxArgs) {
    runnable_ = false;
    return;
  }
  num_args_ = op_->num_args;
  arena_ = plan.arena & 1;
  std::memcpy(&seed_, plan.seed, sizeof plan.seed);
  exec_.exec = {};  // fields a newer ABI adds stay zero
  exec_.exec.struct_size = sizeof(hops_exec);
  exec_.exec.device = {kDLCPU, 0};
  switch (plan.exec % 8) {
    case 1:
      null_exec_ = true;
      break;
    case 2:
      exec_.exec.flags = HOPS_EXEC_DETERMINISTIC;
      break;
    case 3:
      exec_.exec.num_threads = 1;
      break;
    case 4:
      exec_.exec.num_threads = 2;
      break;
    case 5:
      exec_.exec.struct_size = offsetof(hops_exec, stream) + sizeof(void*);
      break;
    case 6:
      exec_.exec.num_threads = -1;
      break;
    case 7:
      exec_.exec.struct_size = sizeof exec_;
      break;  // a newer, larger exec
    default:
      break;
  }

  // Scalars first: channels_first shapes the tensors.
  int scalar = 0;
  for (int i = 0; i < op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    if (is_tensor(d)) continue;
    const uint8_t c = plan.scalars[scalar++ % 8];
    if (d.kind == HOPS_ARG_F64) {
      constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
      constexpr double kInf = std::numeric_limits<double>::infinity();
      const double table[] = {d.default_f64, 0,    0.5,   1,     2,    0.25,   1e-6, 20, -1,
                              kNan,          kInf, -kInf, 1e300, -0.0, 5e-324, 3};
      values_[i].f64 = c == 0 ? d.default_f64 : table[c % 16];
    } else if (d.kind == HOPS_ARG_I64) {
      const int64_t table[] = {0, 1, 2, -1, 3, kI64Min, kI64Max, int64_t{1} << 32};
      values_[i].i64 = c == 0 ? d.default_i64 : table[c % 8];
    } else {
      // c & 3 == 3: the raw byte c (never 0 or 1) where a C bool goes.
      const uint8_t byte = c == 0         ? static_cast<uint8_t>(d.default_i64 != 0)
                           : (c & 3) == 3 ? c
                                          : static_cast<uint8_t>(c & 1);
      std::memcpy(&values_[i], &byte, 1);
      raw_bool_[i] = byte > 1;
    }
  }

  const int64_t B0 = size_from(plan.B, {1, 2, 3});
  const int64_t T = size_from(plan.T, {0, 1, 2, 3, 4, 5, 8, 17, 63, 64, 65, 130});
  const int64_t H = size_from(plan.H, {1, 2, 3, 1, 2});
  const int64_t G = size_from(plan.G, {1, 2, 3, 4});
  const int64_t K = size_from(plan.K, {1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 128});
  const int64_t V = size_from(plan.V, {1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 128});
  const int64_t D = size_from(plan.D, {1, 2, 3, 4, 8, 15, 16, 33, 64, 256});
  const int64_t W = 1 + plan.W % 4;
  const bool varlen =
      (arg_index("cu_seqlens") >= 0 || arg_index("cu_seqlens_q") >= 0) && plan.varlen != 0;
  lse_holes_ = plan.squeeze & 2;
  const int64_t sequences = 1 + plan.varlen % 4;
  const int64_t B = varlen ? 1 : B0;
  const int64_t N = varlen ? sequences : B;
  const int64_t S = saturate(i128{N} + size_from(plan.S, {0, 1, 2}));
  const int64_t L = size_from(plan.L, {1, 2, 3, 5});
  auto state_length = [&](uint8_t b) { return saturate(i128{W} - 1 + size_from(b, {0, 1, 2, 3})); };
  symbols_ = {{"B", B},
              {"T", T},
              {"H", H},
              {"HV", saturate(i128{H} * G)},
              {"K", K},
              {"V", V},
              {"N", N},
              {"S", S},
              {"W", W},
              {"D", D},
              {"L", L},
              {"L0", state_length(plan.L0)},
              {"L1", state_length(plan.L1)},
              {"state_len", state_length(plan.state_len)}};
  // The attention ops' sizes, from bytes their shapes leave unused: Hkv = H
  // key-value heads serve Hq = H*G query heads; Tq = T queries see Tk keys
  // (L0: as many, a few more or fewer, none); the paged cache has num_blocks
  // (L1) blocks of block_size (W) rows, a sequence at most max_blocks (S).
  auto keys = [&](int64_t more) { return std::max<int64_t>(saturate(i128{T} + more), 0); };
  const int64_t Tk = size_from(plan.L0, {T, keys(1), keys(4), keys(-1), keys(-3), 0, 1, 65});
  const int64_t block_size = size_from(plan.W, {1, 2, 3, 4, 5, 8, 16, 64});
  const int64_t max_blocks = size_from(plan.S, {2, 3, 1, 4, 0, 8, 16});
  const int64_t num_blocks = size_from(plan.L1, {5, 2, 1, 3, 8, 16, 0, 64});
  const i128 capacity = std::min<i128>(i128{max_blocks} * block_size, kClamp);
  const i128 cache_slots = std::min<i128>(i128{num_blocks} * block_size, kClamp);
  symbols_.insert(symbols_.end(), {{"Tq", T},
                                   {"Tk", Tk},
                                   {"Hq", saturate(i128{H} * G)},
                                   {"Hkv", H},
                                   {"num_blocks", num_blocks},
                                   {"block_size", block_size},
                                   {"max_blocks", max_blocks}});
  // The MoE ops' sizes, from bytes their shapes leave unused: E experts (K),
  // k slots (V; at most E for moe_route), Hd (D), I (W), R = T*k rows and
  // 0, 1 or 5 more (L; moe_dispatch's are T*k).
  const std::string_view op_name = op_->name;
  const bool moe = moe_op(op_name);
  const int64_t E = size_from(plan.K, {1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 33, 64, 65, 70, 6});
  int64_t k = size_from(plan.V, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0});
  if (op_name == "moe_route") k = std::min(k, E);
  const int64_t Hd = size_from(plan.D, {1, 2, 3, 5, 8, 15, 16, 17, 33, 40, 64, 96, 128, 0});
  const int64_t I = size_from(plan.W, {1, 2, 3, 4, 5, 8, 16, 20, 32, 48});
  const int64_t R =
      saturate(i128{T} * k + (op_name == "moe_dispatch" ? 0 : size_from(plan.L, {0, 0, 1, 5})));
  symbols_.insert(
      symbols_.end(),
      {{"E", E}, {"k", k}, {"Hd", Hd}, {"I", I}, {"I2", saturate(i128{I} * 2)}, {"R", R}});
  MoeTables tables;
  if (moe) {
    tables = moe_tables(T, k, E, R, static_cast<MoeRouting>(plan.varlen % 6), plan.slots % 8,
                        plan.slot_shift, seed_);
    logit_reach_ = plan.squeeze & 8 ? 30 : 4;
    logit_step_ = plan.squeeze & 4 ? (plan.squeeze & 8 ? 0.25 : 0.125) : 0;
  }
  // Saturating at kClamp: the factors may be as large as int64 allows.
  i128 chunk_work = 64 * 64;
  for (const i128 factor : {i128{H}, i128{G}, i128{T} / 64 + N, 64 + i128{K} + V})
    chunk_work = std::min(chunk_work * std::min(factor, kClamp), kClamp);
  if (std::string_view(op_->name).starts_with("gdn_chunk") && chunk_work > kMaxChunkWork) {
    runnable_ = false;
    return;
  }
  std::vector<int64_t> prefix;
  for (int i = 0; i < plan.prefix_rank % 3; ++i)
    prefix.push_back(size_from(plan.prefix[i], {1, 2, 3, 4, 5, 0, 7}));

  // Offsets of `sequences` spans over `tokens`, the inner ends at `cuts`
  // 255ths (equal cuts: empty sequences).
  auto offsets_at = [&](int64_t tokens, const uint8_t* cuts) {
    std::vector<int64_t> ends;
    for (int64_t n = 0; n + 1 < sequences; ++n)
      ends.push_back(saturate(i128{tokens} * cuts[n] / 255));
    std::sort(ends.begin(), ends.end());
    ends.insert(ends.begin(), 0);
    ends.push_back(tokens);
    return ends;
  };
  std::vector<int64_t> cu, cu_k, slots;
  if (varlen) {
    cu = offsets_at(T, plan.cuts);
    cu_k = offsets_at(Tk, plan.prefix);  // the keys' spans cut elsewhere than the queries'
  }
  if (plan.slots && N <= 4096 && S > 0) {
    for (int64_t n = 0; n < N; ++n) {
      const bool skip = n < 7 && ((plan.slots >> (n + 1)) & 1);
      slots.push_back(skip ? -1 : static_cast<int64_t>((i128{n} + plan.slot_shift) % S));
    }
  }

  // attn_decode: sequence n leaves cuts[n % 3] 255ths of its table's capacity
  // unused; its blocks are scattered over the cache (shared ones too), and
  // with slots odd the table entries past them are out of range (never read).
  std::vector<int64_t> seq_lens, block_table;
  if (N <= 4096 && i128{N} * max_blocks <= kMaxElements) {
    for (int64_t n = 0; n < N; ++n) {
      const i128 length = num_blocks > 0 ? capacity - capacity * plan.cuts[n % 3] / 255 : 0;
      seq_lens.push_back(saturate(length));
      const i128 used = (length + block_size - 1) / block_size;
      for (int64_t b = 0; b < max_blocks; ++b) {
        int64_t block = b % 2 ? -1 : num_blocks;
        if (num_blocks > 0 && (b < used || !(plan.slots & 1)))
          block = ((n * max_blocks + b) * 7 + plan.slot_shift) % num_blocks;
        block_table.push_back(block);
      }
    }
  }
  // kv_cache_write: row t goes to slot (t * step + slot_shift) % slots, a
  // step coprime with slots (so the slots are distinct); bit t+1 of slots
  // skips row t, as do the rows past the cache's slots.
  std::vector<int64_t> slot_mapping;
  if (T <= kMaxElements && cache_slots > 0) {
    int64_t step = 1;
    for (int64_t s : {5, 3, 7}) {
      if (std::gcd(s, saturate(cache_slots)) == 1) {
        step = s;
        break;
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      const bool skip = (t < 7 && ((plan.slots >> (t + 1)) & 1)) || t >= cache_slots;
      slot_mapping.push_back(
          skip ? -1 : static_cast<int64_t>((i128{t} * step + plan.slot_shift) % cache_slots));
    }
  } else if (T <= kMaxElements) {
    slot_mapping.assign(static_cast<size_t>(T), -1);
  }

  uint32_t present = 0;
  std::memcpy(&present, plan.present, sizeof present);
  for (int i = 0; i < op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    if (!is_tensor(d)) continue;
    TensorArg& t = tensors_[i];
    const std::string_view name = d.name;
    t.present = !d.optional || (present >> i & 1);
    if (name == "cu_seqlens") t.present = varlen, t.index_values = cu;
    if (name == "state_indices") t.present = plan.slots != 0, t.index_values = slots;
    if (name == "cu_seqlens_q") t.present = varlen, t.index_values = cu;
    if (name == "cu_seqlens_k") t.present = varlen, t.index_values = cu_k;
    if (name == "seq_lens") t.index_values = seq_lens;
    if (name == "block_table") t.index_values = block_table;
    if (name == "slot_mapping") t.index_values = slot_mapping;
    if (moe && d.kind == HOPS_ARG_TENSOR_IN) {  // outputs keep the fill's junk
      if (name == "topk_ids") t.index_values = tables.ids;
      if (name == "row_map") t.index_values = tables.row_map;
      if (name == "counts") t.index_values = tables.counts;
    }

    std::vector<std::string> dims = shape_symbols(d);
    if (flag("channels_first") && dims == std::vector<std::string>{"B", "T", "D"})
      dims = {"B", "D", "T"};
    const bool attention = std::string_view(op_->name).starts_with("attn_");
    if ((plan.squeeze & 1) && !attention) std::erase(dims, "L");  // [N,L,Hq,D] stays
    // States are [.., V, K] with state_v_first.
    if (flag("state_v_first") && dims.size() == 4 && dims[1] == "HV" && dims[2] == "K" &&
        dims[3] == "V") {
      std::swap(dims[2], dims[3]);
    }
    int ndim = 0;
    for (const std::string& s : dims) {
      if (s == "...") {
        for (int64_t p : prefix) {
          if (ndim < kShapeSlots) t.shape[ndim++] = p;
        }
        continue;
      }
      int64_t value = 2;  // a symbol this harness does not know yet
      const bool plus_one = s.ends_with("+1");
      const std::string base = plus_one ? s.substr(0, s.size() - 2) : s;
      for (const auto& [symbol, v] : symbols_) {
        if (symbol == base) value = v;
      }
      if (ndim < kShapeSlots) t.shape[ndim++] = plus_one ? saturate(i128{value} + 1) : value;
    }

    // dtype: index tensors as planned, floats the primary dtype where accepted.
    // MoE: index outputs in the other index dtype with bit 1, routing weights
    // in their own float dtype.
    DType dtype = DType::f32;
    if (index_only(d)) {
      const bool flip = moe && is_written(d) && (plan.index_dtype & 2);
      dtype = (plan.index_dtype & 1) != flip ? DType::i64 : DType::i32;
    } else {
      DType primary = conformance::kFloatTypes[plan.dtype % 3];
      if (moe && name.ends_with("topk_weights") && plan.G % 4 != 0)
        primary = conformance::kFloatTypes[plan.G % 4 - 1];
      const uint32_t bit = dtype_bit(conformance::to_dl(primary));
      dtype = (d.dtypes & bit) ? primary : DType::f32;
    }
    t.dtype = dtype;
    t.dl.dtype = conformance::to_dl(dtype);
    t.dl.device = {kDLCPU, 0};
    t.dl.ndim = ndim;
    t.dl.shape = t.shape.data();
    t.dl.strides = t.strides.data();

    // Strides of the layout; sizes of 0 count as 1, as torch computes them.
    const auto layout = static_cast<Layout>(plan.layouts[i] % kLayouts);
    const int variant = plan.layouts[i] / kLayouts;
    std::array<int64_t, kShapeSlots> extent = t.shape;
    if (layout == Layout::padded) {
      for (int dd = 1; dd < ndim; ++dd) extent[dd] = saturate(i128{extent[dd]} + 1);
    }
    if (layout == Layout::sliced && ndim > 0)
      extent[ndim - 1] = saturate(i128{extent[ndim - 1]} + 3);
    i128 step = 1;
    for (int dd = ndim - 1; dd >= 0; --dd) {
      t.strides[dd] = saturate(step);
      step = std::min<i128>(step * std::max<int64_t>(extent[dd], 1), kClamp);
    }
    if (layout == Layout::reversed) {
      step = 1;
      for (int dd = 0; dd < ndim; ++dd) {
        t.strides[dd] = saturate(step);
        step = std::min<i128>(step * std::max<int64_t>(t.shape[dd], 1), kClamp);
      }
    }
    const int64_t elem = conformance::size_of(dtype);
    if (layout == Layout::compact) t.dl.strides = nullptr;
    if (layout == Layout::sliced && ndim > 0) t.dl.byte_offset = static_cast<uint64_t>(elem);
    if (layout == Layout::offset) t.dl.byte_offset = static_cast<uint64_t>(2 * elem);
    if (layout == Layout::odd_unit) {
      constexpr int64_t kUnitStrides[] = {0, 7, int64_t{1} << 40, int64_t{1} << 62};
      for (int dd = 0; dd < ndim; ++dd) {
        if (t.shape[dd] == 1) t.strides[dd] = kUnitStrides[variant % 4];
      }
    }
    if (layout == Layout::broadcast) {
      for (int dd = 0; dd < ndim; ++dd) {
        if (t.shape[dd] > 1) {
          t.strides[dd] = 0;
          break;
        }
      }
    }
  }
  tolerance_ = 0;
}

int FuzzCall::arg_index(std::string_view name) const {
  for (int i = 0; i < op_->num_args; ++i) {
    if (name == hops_op_arg(op_, i)->name) return i;
  }
  return -1;
}

const TensorArg* FuzzCall::tensor(std::string_view name) const {
  const int i = arg_index(name);
  return i >= 0 && is_tensor(*hops_op_arg(op_, i)) && tensors_[i].present ? &tensors_[i] : nullptr;
}

int64_t FuzzCall::symbol(std::string_view name) const {
  for (const auto& [symbol, value] : symbols_) {
    if (symbol == name) return value;
  }
  return 0;
}

double FuzzCall::f64(std::string_view name) const { return values_[arg_index(name)].f64; }
int64_t FuzzCall::i64(std::string_view name) const { return values_[arg_index(name)].i64; }
bool FuzzCall::flag(std::string_view name) const {
  const int i = arg_index(name);
  if (i < 0) return false;
  uint8_t byte = 0;  // read as a byte: a raw one is no valid C++ bool
  std::memcpy(&byte, &values_[i], 1);
  return byte != 0;
}

void FuzzCall::apply(const Record& r, bool after_fill) {
  const auto kind = static_cast<Kind>(r.kind % kKinds);
  const bool late = kind >= Kind::null_data;
  if (late != after_fill) return;
  std::vector<int> tensor_args, scalar_args;
  for (int i = 0; i < op_->num_args; ++i) {
    (is_tensor(*hops_op_arg(op_, i)) ? tensor_args : scalar_args).push_back(i);
  }
  if (kind == Kind::exec) {
    hops_exec& e = exec_.exec;
    switch (r.p1 % 6) {
      case 0:
        null_exec_ = true;
        break;
      case 1:
        e.struct_size = r.p2 % (sizeof exec_ + 1);
        break;
      case 2:
        set_device_type(e.device, kDeviceTypes[r.p2 % 8]);
        break;
      case 3:
        e.device.device_id = r.p2 >= 250 ? -1 : r.p2 % 3;
        break;
      case 4:
        e.flags = uint64_t{r.p2} | (r.p2 & 0x80 ? uint64_t{1} << 63 : 0);
        break;
      default: {
        constexpr int32_t kThreads[] = {-1,
                                        0,
                                        1,
                                        2,
                                        3,
                                        64,
                                        std::numeric_limits<int32_t>::max(),
                                        std::numeric_limits<int32_t>::min()};
        e.num_threads = kThreads[r.p2 % 8];
      }
    }
    return;
  }
  if (kind == Kind::num_args) {
    switch (r.p1 % 4) {
      case 0:
        num_args_ = op_->num_args - 1 - r.p2 % 3;
        break;
      case 1:
        num_args_ = op_->num_args + 1 + r.p2 % 3;
        break;
      case 2:
        num_args_ = -1 - r.p2;
        break;
      default:
        null_args_ = true;
    }
    return;
  }
  if (kind == Kind::scalar) {
    if (scalar_args.empty()) return;
    const int i = scalar_args[r.arg % scalar_args.size()];
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
    constexpr double kInf = std::numeric_limits<double>::infinity();
    if (d.kind == HOPS_ARG_F64) {
      const double table[] = {kNan, kInf, -kInf, -1, 0, 1e300, -1e-300, 5e-324};
      values_[i].f64 = table[r.p2 % 8];
    } else if (d.kind == HOPS_ARG_I64) {
      const int64_t table[] = {kI64Min, kI64Max, -1, 2, 255, int64_t{1} << 32, -2, 0};
      values_[i].i64 = table[r.p2 % 8];
    } else {
      values_[i] = {};
      std::memcpy(&values_[i], &r.p2, 1);
      raw_bool_[i] = r.p2 > 1;
    }
    return;
  }
  if (tensor_args.empty()) return;
  const int target = tensor_args[r.arg % tensor_args.size()];
  TensorArg& t = tensors_[target];
  if (!t.present) return;
  DLTensor& dl = t.dl;
  const int ndim = std::clamp(dl.ndim, 0, kShapeSlots);
  // Strides become explicit before one of them is edited.
  auto explicit_strides = [&] {
    if (dl.strides) return;
    const Geometry g = geometry(dl);
    t.strides = g.strides;
    dl.strides = t.strides.data();
  };
  switch (kind) {
    case Kind::null_tensor:
      t.present = false;
      break;
    case Kind::dtype: {
      constexpr uint8_t kCodes[] = {kDLFloat, kDLFloat,        kDLBfloat,  kDLInt,
                                    kDLUInt,  kDLOpaqueHandle, kDLComplex, 200};
      constexpr uint8_t kBits[] = {16, 32, 64, 8};
      dl.dtype = {kCodes[r.p1 % 8], r.p2 >= 252 ? r.p2 : kBits[r.p2 % 4],
                  static_cast<uint16_t>(r.p1 >= 240 ? 2 + r.p1 % 3 : 1)};
      if (r.p1 >= 250) dl.dtype.lanes = 0;
      t.dtype = dtype_of(dl.dtype);
      break;
    }
    case Kind::device:
      set_device_type(dl.device, kDeviceTypes[r.p1 % 8]);
      dl.device.device_id = r.p2 >= 250 ? std::numeric_limits<int32_t>::max() : r.p2 % 2;
      break;
    case Kind::ndim: {
      const int rank = r.p2 % 12 - 1;
      for (int d = std::max(ndim, 0); d < std::clamp(rank, 0, kShapeSlots); ++d) {
        t.shape[d] = 1, t.strides[d] = 1;
      }
      dl.ndim = rank;
      break;
    }
    case Kind::dim:
      if (ndim > 0 && dl.shape) {
        const int d = r.p1 % ndim;
        const int64_t table[] = {0,
                                 1,
                                 2,
                                 3,
                                 4,
                                 7,
                                 16,
                                 65,
                                 -1,
                                 -(int64_t{1} << 62),
                                 (int64_t{1} << 31) + 1,
                                 (int64_t{1} << 32) + 1,
                                 (int64_t{1} << 48) + 1,
                                 int64_t{1} << 62,
                                 kI64Max,
                                 saturate(i128{t.shape[d]} + 1)};
        t.shape[d] = table[r.p2 % 16];
      }
      break;
    case Kind::stride:
      if (ndim > 0) {
        explicit_strides();
        const int d = r.p1 % ndim;
        const int64_t table[] = {0,
                                 1,
                                 2,
                                 3,
                                 -1,
                                 7,
                                 1000,
                                 int64_t{1} << 31,
                                 (int64_t{1} << 32) + 1,
                                 int64_t{1} << 40,
                                 int64_t{1} << 61,
                                 int64_t{1} << 62,
                                 kI64Max,
                                 kI64Min,
                                 saturate(i128{t.strides[d]} * 2),
                                 saturate(i128{t.strides[d]} + 1)};
        t.strides[d] = table[r.p2 % 16];
      }
      break;
    case Kind::swap_dims:
      if (ndim > 1) {
        explicit_strides();
        const int a = r.p1 % ndim, b = r.p2 % ndim;
        std::swap(t.shape[a], t.shape[b]);
        std::swap(t.strides[a], t.strides[b]);
      }
      break;
    case Kind::byte_offset:
      dl.byte_offset +=
          r.p1 & 1 ? static_cast<uint64_t>(element_bytes(dl.dtype)) * (r.p2 % 4) : 1 + r.p2 % 7;
      break;
    case Kind::null_pointer:
      if (r.p1 & 1) {
        dl.shape = nullptr;
      } else {
        dl.strides = nullptr;
      }
      break;
    case Kind::null_data:
      dl.data = nullptr;
      break;
    case Kind::alias: {
      const TensorArg& other = tensors_[tensor_args[r.p1 % tensor_args.size()]];
      if (&other == &t || !other.present || other.buffer < 0) break;
      if (t.claim > other.claim) break;  // would reach past the other's memory
      dl.data = buffers_[other.buffer].bytes.get() + other.region;
      t.buffer = other.buffer, t.region = other.region;
      unjudgeable_ = true;
      break;
    }
    case Kind::index_value: {
      if (!t.dtype || (*t.dtype != DType::i32 && *t.dtype != DType::i64) || !dl.data) break;
      const std::vector<int64_t> at = offsets(geometry(dl));
      if (at.empty()) break;
      // The edges of the entry's range: the tokens T and the slots S
      // (cu_seqlens, state_indices), the keys Tk (cu_seqlens_k), the table's
      // capacity and the new tokens L (seq_lens), the cache's blocks
      // (block_table) and slots (slot_mapping).
      const std::string_view name = hops_op_arg(op_, target)->name;
      const int64_t slots = saturate(i128{symbol("num_blocks")} * symbol("block_size"));
      int64_t end = symbol("T"), limit = symbol("S");
      if (name == "cu_seqlens_k") end = symbol("Tk");
      if (name == "seq_lens") {
        end = saturate(i128{symbol("max_blocks")} * symbol("block_size"));
        limit = symbol("L");
      }
      if (name == "block_table") end = limit = symbol("num_blocks");
      if (name == "slot_mapping") end = limit = slots;
      // MoE: the experts E (ids), the rows R (row maps; counts: one count of
      // R or R+1 makes them sum past the rows).
      if (moe_op(op_->name) && name == "topk_ids") end = limit = symbol("E");
      if (moe_op(op_->name) && (name == "row_map" || name == "counts")) end = limit = symbol("R");
      const int64_t table[] = {-3,
                               -2,
                               -1,
                               0,
                               1,
                               2,
                               3,
                               end,
                               saturate(i128{end} + 1),
                               limit,
                               saturate(i128{limit} - 1),
                               std::numeric_limits<int32_t>::max(),
                               std::numeric_limits<int32_t>::min(),
                               kI64Max,
                               kI64Min,
                               5};
      auto* base = static_cast<std::byte*>(dl.data) + dl.byte_offset;
      store_index(*t.dtype, base, at[r.p1 % at.size()], table[r.p2 % 16]);
      break;
    }
    case Kind::poison_value: {
      const hops_arg_desc& d = *hops_op_arg(op_, target);
      if (is_written(d) && d.kind != HOPS_ARG_TENSOR_INOUT) break;
      if (!t.dtype || !conformance::is_float(*t.dtype) || !dl.data) break;
      const std::vector<int64_t> at = offsets(geometry(dl));
      if (at.empty()) break;
      const double table[] = {std::numeric_limits<double>::quiet_NaN(),
                              std::numeric_limits<double>::infinity(),
                              -std::numeric_limits<double>::infinity(),
                              1e30,
                              65504,
                              1e-40,
                              -0.0,
                              -1e30};
      auto* base = static_cast<std::byte*>(dl.data) + dl.byte_offset;
      conformance::store(*t.dtype, base, at[(r.p1 * 257u + r.p2) % at.size()], table[r.p2 % 8]);
      unjudgeable_ = true;
      break;
    }
    default:
      break;
  }
}

bool FuzzCall::allocate() {
  // Claims: the bytes from data that each tensor's elements span.
  std::vector<int> users;
  for (int i = 0; i < op_->num_args; ++i) {
    if (!is_tensor(*hops_op_arg(op_, i)) || !tensors_[i].present) continue;
    TensorArg& t = tensors_[i];
    const Geometry g = geometry(t.dl);
    const i128 bytes = g.extent * element_bytes(t.dl.dtype);
    if (g.numel > kMaxElements && g.extent > 0 && bytes < kImpossibleBytes) return false;
    if (!g.ok || g.negative || bytes >= kImpossibleBytes) {
      t.claim = 64;  // the plugin must reject before it touches any of it
    } else {
      const i128 claim = bytes + t.dl.byte_offset;
      if (claim > static_cast<i128>(kMaxBytes)) return false;
      t.claim = static_cast<size_t>(std::max<i128>(claim, 1));
    }
    users.push_back(i);
  }
  if (arena_) {
    size_t total = 0;
    for (int i : users) {
      tensors_[i].region = total;
      total += (tensors_[i].claim + 127) / 64 * 64;  // 64-byte aligned, a gap between
    }
    buffers_.push_back({std::make_unique<std::byte[]>(std::max<size_t>(total, 1)), total});
    for (int i : users) tensors_[i].buffer = 0;
  } else {
    for (int i : users) {
      tensors_[i].buffer = static_cast<int>(buffers_.size());
      buffers_.push_back({std::make_unique<std::byte[]>(tensors_[i].claim), tensors_[i].claim});
    }
  }
  for (int i : users) {
    tensors_[i].dl.data = buffers_[tensors_[i].buffer].bytes.get() + tensors_[i].region;
  }
  return true;
}

void FuzzCall::fill() {
  for (Buffer& b : buffers_) std::memset(b.bytes.get(), 0xa5, b.size);
  const bool fused = tensor("A_log") != nullptr;
  const bool l2norm = flag("use_qk_l2norm");
  for (int i = 0; i < op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    TensorArg& t = tensors_[i];
    if (!is_tensor(d) || !t.present || t.buffer < 0 || !t.dtype) continue;
    std::byte* region = buffers_[t.buffer].bytes.get() + t.region;
    const Geometry g = geometry(t.dl);
    if (conformance::is_float(*t.dtype)) {  // the whole region poisoned, gaps included
      const uint32_t poison = conformance::poison_bits(*t.dtype);
      const int size = conformance::size_of(*t.dtype);
      for (size_t at = 0; at + size <= t.claim; at += size) std::memcpy(region + at, &poison, size);
    }
    if (!g.ok || g.negative || g.extent * element_bytes(t.dl.dtype) >= kImpossibleBytes) continue;
    std::byte* base = region + t.dl.byte_offset;
    const std::vector<int64_t> at = offsets(g);
    if (!conformance::is_float(*t.dtype)) {
      for (size_t n = 0; n < std::min(at.size(), t.index_values.size()); ++n) {
        store_index(*t.dtype, base, at[n], t.index_values[n]);
      }
      continue;
    }
    if (d.kind == HOPS_ARG_TENSOR_OUT) continue;
    uint64_t state = seed_ ^ (uint64_t{0x1234567} * (i + 1));
    const std::string_view op = op_->name, name = d.name;
    Range range = value_range(op, name, fused);
    double step = 0;  // a grid of the values (exact ties), 0: none
    if (op == "moe_route" && name == "logits") {
      range = {-logit_reach_, logit_reach_};
      step = logit_step_;
    }
    // Without l2norm the delta rule is only stable for |k| <= 1; the expert
    // weights are scaled as the conformance runner's (2/sqrt of the width
    // they dot with), so the MLP's values stay of unit spread.
    const double width =
        g.ndim > 0 ? static_cast<double>(std::max<int64_t>(g.shape[g.ndim - 1], 1)) : 1;
    double scale = 1;
    if (op.starts_with("gdn_") && name == "k" && !l2norm) scale = 1 / std::sqrt(width);
    if (op.starts_with("moe_expert_mlp") && name.ends_with("_proj")) scale = 2 / std::sqrt(width);
    for (int64_t offset : at) {
      double value = uniform(state, range.lo, range.hi);
      if (step > 0) value = std::round(value / step) * step;
      value *= scale;
      if (range.either_sign && (splitmix(state) & 1)) value = -value;
      conformance::store(*t.dtype, base, offset, value);
    }
  }
}

// attn_prefill_bwd's lse as the forward of q and k leaves it (the float64
// reference's): p = exp(s - lse) <= 1 as in real use (random values would
// overflow f16 gradients), -inf in the rows that see no key, and with
// lse_holes_ in every third query row with keys too (the contract: such a
// row contributes nothing). Left random where the reference cannot say: a
// call it does not judge (too large: 2^33 heads of no query loop for hours;
// a bad scale) or one the plugin rejects.
void FuzzCall::forward_lse() {
  const TensorArg* lse = tensor("lse");
  const TensorArg* q = tensor("q");
  const TensorArg* k = tensor("k");
  if (!lse || !q || !k || !judgeable()) return;
  for (const TensorArg* t : {lse, q, k}) {
    const Geometry g = geometry(t->dl);
    if (t->buffer < 0 || !t->dl.data || !t->dtype || !conformance::is_float(*t->dtype) || !g.ok ||
        g.negative || g.ndim != (t == lse ? 3 : 4) ||
        static_cast<i128>(offsets(g).size()) != g.numel) {
      return;
    }
  }
  const TensorArg* cu_q = tensor("cu_seqlens_q");
  const TensorArg* cu_k = tensor("cu_seqlens_k");
  Array64 forward;
  try {
    const Array64 keys = read(*k, false);
    forward = ref::attn_prefill(read(*q, false), keys, keys, nullptr,
                                cu_q ? &cu_q->index_values : nullptr,
                                cu_k ? &cu_k->index_values : nullptr, f64("scale"), flag("causal"))
                  .lse;
  } catch (const std::exception&) {
    return;  // shapes or offsets the plugin must reject
  }
  const Geometry g = geometry(lse->dl);
  if (forward.shape != std::vector<int64_t>(g.shape.begin(), g.shape.begin() + 3)) return;
  auto* base = static_cast<std::byte*>(lse->dl.data) + lse->dl.byte_offset;
  const std::vector<int64_t> at = offsets(g);
  for (size_t n = 0; n < at.size(); ++n) {
    const bool hole = lse_holes_ && n % static_cast<size_t>(g.shape[2]) % 3 == 0;
    conformance::store(*lse->dtype, base, at[n],
                       hole ? -std::numeric_limits<double>::infinity() : forward.data[n]);
  }
}

const std::byte* FuzzCall::address(const TensorArg& t, bool before) const {
  const auto* data = static_cast<const std::byte*>(t.dl.data);
  if (!data) return nullptr;  // an empty tensor may have no data: nothing is read from it
  const std::byte* live = buffers_[t.buffer].bytes.get();
  const std::byte* base = before ? snapshot_[t.buffer].data() : live;
  return base + (data - live) + t.dl.byte_offset;
}

Array64 FuzzCall::read(const TensorArg& t, bool before) const {
  const Geometry g = geometry(t.dl);
  Array64 out(std::vector<int64_t>(g.shape.begin(), g.shape.begin() + g.ndim));
  const std::byte* base = address(t, before);
  const std::vector<int64_t> at = offsets(g);
  for (size_t n = 0; n < at.size(); ++n) out.data[n] = conformance::load(*t.dtype, base, at[n]);
  return out;
}

std::vector<int64_t> FuzzCall::read_indices(const TensorArg& t) const {
  std::vector<int64_t> out;
  const std::byte* base = address(t, false);
  for (int64_t offset : offsets(geometry(t.dl))) out.push_back(load_index(*t.dtype, base, offset));
  return out;
}

void FuzzCall::expect_zeros(std::string_view name, const Array64& where) const {
  const TensorArg* t = tensor(name);
  if (!t) finding(fmt::format("oracle: output '{}' is absent", name));
  const Array64 got = read(*t, false);
  if (got.shape != where.shape) {
    finding(fmt::format("'{}': shape [{}] but the reference has [{}]", name,
                        fmt::join(got.shape, ","), fmt::join(where.shape, ",")));
  }
  int64_t wrong = 0, zeros = 0;
  for (size_t n = 0; n < got.data.size(); ++n) {
    if (where.data[n] != 0) continue;
    ++zeros;
    wrong += got.data[n] != 0;
  }
  if (wrong) {
    finding(fmt::format("'{}': {} of the {} elements nothing contributes to are not 0", name, wrong,
                        zeros));
  }
}

void FuzzCall::expect_indices(std::string_view name, const std::vector<int64_t>& want) const {
  const TensorArg* t = tensor(name);
  if (!t) finding(fmt::format("oracle: output '{}' is absent", name));
  const std::vector<int64_t> got = read_indices(*t);
  if (got.size() != want.size()) {
    finding(
        fmt::format("'{}': {} entries but the reference has {}", name, got.size(), want.size()));
  }
  size_t wrong = 0, first = 0;
  for (size_t n = 0; n < got.size(); ++n) {
    if (got[n] != want[n] && wrong++ == 0) first = n;
  }
  if (wrong) {
    finding(
        fmt::format("'{}' disagrees with the reference: {} of {} entries differ, the first "
                    "at flat index {}: {} (expected {})",
                    name, wrong, got.size(), first, got[first], want[first]));
  }
}

void FuzzCall::expect(std::string_view name, const Array64& want, bool exact_zeros,
                      double tolerance) const {
  const TensorArg* t = tensor(name);
  if (!t) finding(fmt::format("oracle: output '{}' is absent", name));
  const Array64 got = read(*t, false);
  if (got.shape != want.shape) {
    finding(fmt::format("'{}': shape [{}] but the reference has [{}]", name,
                        fmt::join(got.shape, ","), fmt::join(want.shape, ",")));
  }
  const std::vector<int64_t> at = offsets(geometry(t->dl));
  const int size = conformance::size_of(*t->dtype);
  const std::byte* now = address(*t, false);
  const std::byte* then = address(*t, true);
  double diff2 = 0, ref2 = 0;
  int64_t compared = 0, not_finite = 0, touched = 0, inexact = 0;
  for (size_t n = 0; n < at.size(); ++n) {
    if (std::isnan(want.data[n])) {  // must keep its bytes
      touched += std::memcmp(now + at[n] * size, then + at[n] * size, size) != 0;
      continue;
    }
    ++compared;
    if (std::isinf(want.data[n]) || (exact_zeros && want.data[n] == 0)) {
      inexact += got.data[n] != want.data[n];  // -inf lse, 0 where nothing contributes
      continue;
    }
    if (!std::isfinite(got.data[n])) {
      ++not_finite;
      continue;
    }
    diff2 += (got.data[n] - want.data[n]) * (got.data[n] - want.data[n]);
    ref2 += want.data[n] * want.data[n];
  }
  // Relative L2 error (DESIGN §4), against a reference of at least 0.1 RMS:
  // a few elements that nearly cancel must not turn rounding into "error".
  const double floor2 = 0.01 * static_cast<double>(compared);
  const double error = std::sqrt(diff2 / std::max(ref2, std::max(floor2, 1e-300)));
  if (tolerance < 0) tolerance = tolerance_;
  if (not_finite || touched || inexact || !(error <= tolerance)) {
    finding(fmt::format(
        "'{}' disagrees with the reference: rel_err {:.3g} (tolerance {:.0e}), "
        "{} of {} elements not finite, {} not exactly the reference's 0 or inf, {} skipped "
        "elements written",
        name, error, tolerance, not_finite, compared, inexact, touched));
  }
}

void FuzzCall::expect_slots_kept(std::string_view name, const std::vector<bool>& used) const {
  const TensorArg* t = tensor(name);
  if (!t || used.empty()) return;
  const std::vector<int64_t> at = offsets(geometry(t->dl));
  const size_t per_slot = at.size() / used.size();
  const int size = conformance::size_of(*t->dtype);
  const std::byte* now = address(*t, false);
  const std::byte* then = address(*t, true);
  for (size_t n = 0; n < at.size(); ++n) {
    if (used[n / per_slot]) continue;
    if (std::memcmp(now + at[n] * size, then + at[n] * size, size) != 0) {
      finding(fmt::format("'{}': slot {} is used by no sequence but changed", name, n / per_slot));
    }
  }
}

// The attention ops' work from the shapes as given: q's elements times the
// keys each query may see (Tk for prefill, the table's capacity
// max_blocks x block_size for decode); 0 for the other ops. With `pad`, the
// tokens, keys and D count in whole multiples of it, as in the kernels'
// blocks (65537 sequences of 3 tokens at D = 1 take seconds under ASan).
int64_t FuzzCall::attention_work(int64_t pad) const {
  const TensorArg* q = tensor("q");
  const TensorArg* k = tensor("k") ? tensor("k") : tensor("k_cache");
  if (!std::string_view(op_->name).starts_with("attn_") || !q || !k) return 0;
  auto dim = [](const TensorArg& t, int d) -> i128 {
    return t.dl.shape && d < t.dl.ndim ? std::max<int64_t>(t.dl.shape[d], 0) : 0;
  };
  auto padded = [&](i128 n) { return std::min<i128>((n + pad - 1) / pad * pad, kClamp); };
  i128 keys = dim(*k, 1);
  if (const TensorArg* table = tensor("block_table"))
    keys = std::min(keys * dim(*table, 1), kClamp);
  i128 work = 1;
  for (const i128 factor :
       {dim(*q, 0), padded(dim(*q, 1)), dim(*q, 2), padded(dim(*q, 3)), padded(keys)}) {
    work = std::min(work * factor, kClamp);
  }
  return saturate(work);
}

bool FuzzCall::judgeable() const {
  if (unjudgeable_) return false;
  int64_t elements = 0;
  for (int i = 0; i < op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    if (!is_tensor(d)) {
      if (raw_bool_[i] ||
          (d.kind != HOPS_ARG_BOOL && !sane_scalar(d, values_[i].f64, values_[i].i64)))
        return false;
      continue;
    }
    if (!tensors_[i].present) continue;
    if (!tensors_[i].dtype) return false;
    const Geometry g = geometry(tensors_[i].dl);
    elements += static_cast<int64_t>(g.numel);
    // Sums over more tokens or rows than the conformance sweeps use (a few
    // thousand) drift past the f32 tolerance by accumulation alone.
    for (int d = 0; d < g.ndim; ++d) {
      if (g.shape[d] > 4096) return false;
    }
  }
  // The float64 reference costs T*HV*K*V per GDN call: keep it to milliseconds.
  const TensorArg* v = tensor("v");
  const TensorArg* q = tensor("q");
  if (std::string_view(op_->name).starts_with("gdn_") && v && q && q->dl.ndim > 0) {
    const i128 work = geometry(v->dl).numel * q->dl.shape[q->dl.ndim - 1];
    if (work > (i128{1} << 21)) return false;
  }
  return elements <= (int64_t{1} << 18) && attention_work(1) <= kMaxReferenceAttentionWork;
}

Outcome FuzzCall::run_and_check() {
  // Tolerance (DESIGN §4): 16-bit anywhere in the call: 1e-2; f32: 1e-5, 1e-4 for chunked GDN.
  bool half = false;
  for (int i = 0; i < op_->num_args; ++i) {
    const TensorArg& t = tensors_[i];
    if (is_tensor(*hops_op_arg(op_, i)) && t.present && t.dtype)
      half |= *t.dtype == DType::f16 || *t.dtype == DType::bf16;
  }
  const std::string_view name = op_->name;
  tolerance_ = half ? 1e-2 : (name == "gdn_chunk_fwd" || name == "gdn_chunk_bwd") ? 1e-4 : 1e-5;

  if (std::getenv("HOPS_FUZZ_VERBOSE")) std::fprintf(stderr, "%s", describe().c_str());
  const hops_status status = api_.call(op_, null_exec_ ? nullptr : &exec_.exec,
                                       null_args_ ? nullptr : values_.data(), num_args_);
  const std::string message = api_.last_error() ? api_.last_error() : "(null)";
  if (std::getenv("HOPS_FUZZ_VERBOSE")) {
    std::fprintf(stderr, "-> %s: %s\n", api_.status_name(status), status ? message.c_str() : "");
  }
  if (status == HOPS_OK) return check_success();
  check_rejection(status, message);
  return Outcome::rejected;
}

void FuzzCall::check_rejection(hops_status status, const std::string& message) const {
  if (status != HOPS_ERR_INVALID_ARGUMENT && status != HOPS_ERR_UNSUPPORTED &&
      status != HOPS_ERR_OUT_OF_MEMORY) {
    finding(fmt::format("status {} ({}): {}", status, api_.status_name(status), message));
  }
  if (message.find(op_->name) == std::string::npos) {
    finding(fmt::format("the message does not name the op: {}", message));
  }
  const bool list_damaged = null_args_ || num_args_ < 0 || num_args_ > op_->num_args;
  if (status == HOPS_ERR_INVALID_ARGUMENT && !list_damaged) {
    bool named = message.find("'exec'") != std::string::npos;
    for (int i = 0; i < op_->num_args && !named; ++i) {
      named = message.find(fmt::format("'{}'", hops_op_arg(op_, i)->name)) != std::string::npos;
    }
    if (!named) finding(fmt::format("the message names no argument: {}", message));
  }
  if (status == HOPS_ERR_OUT_OF_MEMORY) return;  // the contract promises nothing then
  for (size_t b = 0; b < buffers_.size(); ++b) {
    // An arena of no tensor is empty: its snapshot's data() may be NULL.
    if (buffers_[b].size > 0 &&
        std::memcmp(buffers_[b].bytes.get(), snapshot_[b].data(), buffers_[b].size) != 0) {
      finding(fmt::format("rejected ({}) but changed memory of buffer {}: {}",
                          api_.status_name(status), b, message));
    }
  }
}

Outcome FuzzCall::check_success() const {
  // What the contract says must be rejected.
  std::string reason;
  auto must_reject = [&](const std::string& why) {
    if (reason.empty()) reason = why;
  };
  if (null_args_ || num_args_ < 0 || num_args_ > op_->num_args) {
    must_reject("a wrong argument count or list");
  }
  if (!null_exec_ && exec_.exec.struct_size < offsetof(hops_exec, stream) + sizeof(void*)) {
    must_reject("exec.struct_size too small");
  }
  DLDevice device = exec_.exec.device;
  if (null_exec_) {
    for (int i = 0; i < op_->num_args; ++i) {
      if (is_tensor(*hops_op_arg(op_, i)) && tensors_[i].present) {
        device = tensors_[i].dl.device;
        break;
      }
    }
  }
  struct Span {
    int arg;
    uintptr_t begin, end;
  };
  std::vector<Span> spans;
  for (int i = 0; i < op_->num_args && !null_args_ && num_args_ == op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    const TensorArg& t = tensors_[i];
    if (!is_tensor(d)) continue;
    if (!t.present) {
      if (!d.optional) must_reject(fmt::format("'{}' is required but NULL", d.name));
      continue;
    }
    if (!(dtype_bit(t.dl.dtype) & d.dtypes)) {
      must_reject(fmt::format("'{}' has dtype {} outside its descriptor's", d.name,
                              dtype_text(t.dl.dtype)));
    }
    if (!same_device(t.dl.device, device) && !(index_only(d) && host_memory(t.dl.device))) {
      must_reject(fmt::format("'{}' is on another device than the call", d.name));
    }
    const Geometry g = geometry(t.dl);
    if (t.dl.ndim < 0 || (t.dl.ndim > 0 && !t.dl.shape)) {
      must_reject(fmt::format("'{}' has no valid shape", d.name));
      continue;
    }
    if (!g.ok) continue;  // more dims than the harness models: the plugin's limit decides
    if (g.negative) must_reject(fmt::format("'{}' has a negative dim or stride", d.name));
    if (g.numel > 0 && !t.dl.data) must_reject(fmt::format("'{}' has data NULL", d.name));
    const i128 bytes = g.extent * element_bytes(t.dl.dtype);
    if (bytes >= kImpossibleBytes)
      must_reject(fmt::format("'{}' spans 2^57 bytes or more", d.name));
    if (g.numel == 0 || g.negative || !t.dl.data || bytes >= kImpossibleBytes) continue;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.dl.data) + t.dl.byte_offset;
    if (begin % static_cast<uintptr_t>(element_bytes(t.dl.dtype)) != 0) {
      must_reject(fmt::format("'{}' is misaligned", d.name));
    }
    spans.push_back({i, begin, begin + static_cast<uintptr_t>(bytes)});
    if (is_written(d)) {
      std::vector<int64_t> at = offsets(g);
      std::sort(at.begin(), at.end());
      if (std::adjacent_find(at.begin(), at.end()) != at.end()) {
        must_reject(fmt::format("written '{}' overlaps itself", d.name));
      }
    }
  }
  for (const Span& out : spans) {
    if (!is_written(*hops_op_arg(op_, out.arg))) continue;
    for (const Span& other : spans) {
      if (other.arg != out.arg && out.begin < other.end && other.begin < out.end) {
        must_reject(fmt::format("written '{}' overlaps '{}'", hops_op_arg(op_, out.arg)->name,
                                hops_op_arg(op_, other.arg)->name));
      }
    }
  }
  if (!reason.empty()) finding("HOPS_OK for a call that must be rejected: " + reason);

  // Only the elements of written views may have changed.
  std::vector<std::vector<bool>> writable(buffers_.size());
  for (size_t b = 0; b < buffers_.size(); ++b) writable[b].assign(buffers_[b].size, false);
  for (int i = 0; i < op_->num_args; ++i) {
    const TensorArg& t = tensors_[i];
    if (!is_tensor(*hops_op_arg(op_, i)) || !t.present || !is_written(*hops_op_arg(op_, i)) ||
        t.buffer < 0 || !t.dl.data) {
      continue;
    }
    const auto* live = buffers_[t.buffer].bytes.get();
    const size_t start =
        static_cast<size_t>(static_cast<const std::byte*>(t.dl.data) - live) + t.dl.byte_offset;
    const auto elem = static_cast<size_t>(element_bytes(t.dl.dtype));
    for (int64_t offset : offsets(geometry(t.dl))) {
      for (size_t k = 0; k < elem; ++k) {
        const size_t at = start + static_cast<size_t>(offset) * elem + k;
        if (at < writable[t.buffer].size()) writable[t.buffer][at] = true;
      }
    }
  }
  for (size_t b = 0; b < buffers_.size(); ++b) {
    const std::byte* now = buffers_[b].bytes.get();
    for (size_t at = 0; at < buffers_[b].size; ++at) {
      if (now[at] != snapshot_[b][at] && !writable[b][at]) {
        finding(fmt::format("HOPS_OK but byte {} of buffer {} changed outside every output view",
                            at, b));
      }
    }
  }
  return judgeable() && check_against_reference(*this) ? Outcome::compared : Outcome::accepted;
}

std::string FuzzCall::describe() const {
  std::string text = fmt::format("op {} ({} args, num_args {}{})\n", op_->name, op_->num_args,
                                 num_args_, null_args_ ? ", args NULL" : "");
  text += "  sizes:";  // of the symbols the op's shapes name
  for (const auto& [symbol, v] : symbols_) {
    bool named = false;
    for (int i = 0; i < op_->num_args && !named; ++i) {
      for (const std::string& dim : shape_symbols(*hops_op_arg(op_, i)))
        named |= dim == symbol || dim == symbol + "+1";
    }
    if (named) text += fmt::format(" {}={}", symbol, v);
  }
  text += "\n";
  if (null_exec_) {
    text += "  exec: NULL\n";
  } else {
    const hops_exec& e = exec_.exec;
    text += fmt::format("  exec: struct_size {} device {}:{} flags {:#x} num_threads {}\n",
                        e.struct_size, raw_device_type(e.device), e.device.device_id, e.flags,
                        e.num_threads);
  }
  for (int i = 0; i < op_->num_args; ++i) {
    const hops_arg_desc& d = *hops_op_arg(op_, i);
    if (!is_tensor(d)) {
      uint8_t byte = 0;
      std::memcpy(&byte, &values_[i], 1);
      text += d.kind == HOPS_ARG_F64   ? fmt::format("  {} = {}\n", d.name, values_[i].f64)
              : d.kind == HOPS_ARG_I64 ? fmt::format("  {} = {}\n", d.name, values_[i].i64)
                                       : fmt::format("  {} = bool byte {}\n", d.name, byte);
      continue;
    }
    const TensorArg& t = tensors_[i];
    if (!t.present) {
      text += fmt::format("  {}: NULL\n", d.name);
      continue;
    }
    const DLTensor& dl = t.dl;
    const int shown = std::clamp(dl.ndim, 0, kShapeSlots);
    text += fmt::format(
        "  {}: dtype {} device {}:{} ndim {} shape {} strides {} byte_offset {} data {}", d.name,
        dtype_text(dl.dtype), raw_device_type(dl.device), dl.device.device_id, dl.ndim,
        dl.shape ? fmt::format("[{}]", fmt::join(dl.shape, dl.shape + shown, ",")) : "NULL",
        dl.strides ? fmt::format("[{}]", fmt::join(dl.strides, dl.strides + shown, ",")) : "NULL",
        dl.byte_offset,
        dl.data ? fmt::format("buffer {}+{}", t.buffer, t.region) : std::string("NULL"));
    if (t.dtype && !conformance::is_float(*t.dtype) && dl.data && t.buffer >= 0) {
      const Geometry g = geometry(dl);
      if (g.ok && !g.negative && g.numel <= 64 &&
          g.extent * element_bytes(dl.dtype) <= i128(t.claim)) {
        text += fmt::format(" values [{}]", fmt::join(read_indices(t), ","));
      }
    }
    text += "\n";
  }
  text += fmt::format("  memory: {} ({} buffers); {} records", arena_ ? "one arena" : "one each",
                      buffers_.size(), records_.size());
  for (const Record& r : records_) {
    text += fmt::format(" [{} {} {} {}]", r.kind % kKinds, r.arg, r.p1, r.p2);
  }
  return text + "\n";
}

void FuzzCall::finding(const std::string& what) const {
  std::fprintf(stderr, "\nhops-fuzz FINDING: %s\n%s", what.c_str(), describe().c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace hops::fuzz
