// One fuzzed call of the generic C-ABI entry (api->call), decoded from the
// fuzzer's bytes: a fixed-size Plan (op, dtypes, sizes, layouts, optional
// arguments, scalars, exec) that builds a valid call, followed by 4-byte
// Records that each damage one thing (a dim, a stride, a dtype, a device, an
// index entry, the exec, ...). docs/FUZZING.md describes the invariants.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.hpp"
#include "hops/hops.h"
#include "reference.hpp"

namespace hops::fuzz {

using conformance::DType;
using ref::Array64;

inline constexpr int kMaxArgs = 24;     // descriptor arguments an op may have here
inline constexpr int kShapeSlots = 12;  // dims a tensor may claim (beyond the plugin's 8)

// The head of every input. Each byte is read modulo the choices it has, so
// every byte string decodes to some call; the seed writer (call_fuzzer.cpp)
// fills one in for valid calls of every op.
struct Plan {
  uint8_t op;           // index over api->op_count()
  uint8_t dtype;        // float tensors: f32, f16, bf16
  uint8_t index_dtype;  // even: i32, odd: i64; MoE index outputs: bit 1 flips it
  // Sizes of the shape symbols; bytes >= 248 pick a huge value (kHuge).
  // The attention ops' symbols reuse bytes: Hq = H*G, Hkv = H, Tq = T, Tk
  // from L0, block_size from W, max_blocks from S, num_blocks from L1. The
  // MoE ops' too: E experts from K, k slots from V, Hd from D, I from W, and
  // R = T*k rows plus the extra ones of L (none for moe_dispatch).
  uint8_t B, T, H, G, K, V, D, W, S, L0, L1, state_len, L;  // MoE: G % 4 picks the routing
                                                            // weights' dtype (0: the plan's)
  uint8_t prefix_rank, prefix[3];  // the "..." dims of [...,D] and [...,HV]; cu_seqlens_k's cuts
  uint8_t varlen;      // nonzero: cu_seqlens (or _q and _k) with 1 + varlen % 4 sequences (B = 1);
                       // MoE ops: how the slots are routed (MoeRouting, varlen % 6)
  uint8_t cuts[3];     // where the sequences end, in 255ths of T; attn_decode: the part of
                       // sequence n % 3's table left unused (0: seq_lens = max_blocks * block_size)
  uint8_t slots;       // nonzero: state_indices; bit n+1 skips sequence n (-1); kv_cache_write:
                       // bit t+1 skips row t; attn_decode, odd: table entries past the used
                       // blocks out of range; MoE ops: every (slots % 8)-th slot dropped (-1)
  uint8_t slot_shift;  // sequence n uses slot (n + shift) % S; the cache blocks' and slots' shift;
                       // MoE's one_expert routing: the expert shift % E
  uint8_t squeeze;     // odd: tensors drop their L dim (conv1d_update's x [N,D]); bit 1:
                       // attn_prefill_bwd's lse is -inf in rows with keys too; moe_route: bit 2
                       // logits on a grid (exact ties), bit 3 within +-30 (else +-4)
  uint8_t present[4];  // bit i: optional tensor argument i is passed
  uint8_t scalars[8];  // per scalar argument in order: 0 default, else a value table
  uint8_t layouts[kMaxArgs];  // per tensor argument: memory layout (Layout)
  uint8_t arena;              // odd: every tensor in one allocation, else one each
  uint8_t exec;               // exec variant
  uint8_t seed[4];            // of the input values
};

// What a Record damages; kind is read modulo kKinds.
enum class Kind : uint8_t {
  null_tensor,   // the argument becomes NULL
  dtype,         // code, bits, lanes
  device,        // device type and id
  ndim,          // -1 .. 10
  dim,           // one dim: small, zero, negative or huge
  stride,        // one stride: zero, negative or huge
  swap_dims,     // two dims swap (shape and stride): a permuted view
  byte_offset,   // shifted, aligned or not
  null_pointer,  // shape or strides pointer NULL
  exec,          // NULL, struct_size, device, flags, num_threads
  num_args,      // wrong count or NULL list
  scalar,        // a scalar argument from a wide table (NaN, inf, raw bool bytes)
  // After the buffers are filled:
  null_data,     // data NULL
  alias,         // data points at another argument's buffer
  index_value,   // one entry of cu_seqlens / state_indices
  poison_value,  // one input element NaN, inf or huge
};
inline constexpr int kKinds = 16;

struct Record {
  uint8_t kind, arg, p1, p2;
};

// Layout of one tensor argument's memory (Plan::layouts, modulo kLayouts).
enum class Layout : uint8_t {
  contiguous,  // row-major, explicit strides
  compact,     // strides == NULL
  padded,      // row-major over shape + 1 in every dim but the first
  reversed,    // column-major: strides grow from the first dim
  sliced,      // last dim a slice of wider rows, one element in
  odd_unit,    // size-1 dims with strides 0 / 7 / 2^40 / 2^62 (legal: never stepped)
  broadcast,   // the first dim of size > 1 has stride 0 (legal for inputs only)
  offset,      // row-major at byte_offset = 2 elements
};
inline constexpr int kLayouts = 8;

struct Buffer {
  std::unique_ptr<std::byte[]> bytes;
  size_t size = 0;
};

// A tensor argument as the harness hands it over.
struct TensorArg {
  bool present = false;  // a DLTensor is passed (not NULL)
  DLTensor dl{};
  std::array<int64_t, kShapeSlots> shape{}, strides{};
  std::optional<DType> dtype;         // when dl.dtype is one the harness can read and write
  int buffer = -1;                    // Buffers index of its memory, -1: none
  size_t region = 0;                  // its memory's start inside that buffer
  size_t claim = 0;                   // bytes from region that its elements span
  std::vector<int64_t> index_values;  // cu_seqlens, state_indices, attention tables as built
};

// What became of a call that ran.
enum class Outcome { rejected, accepted, compared };

class FuzzCall {
 public:
  FuzzCall(const hops_api& api, std::span<const uint8_t> input);

  // False when the input asks for more memory than the harness gives out
  // (a tensor of a legal but large span): the call is skipped, nothing judged.
  bool runnable() const { return runnable_; }
  // Runs the call, checks every invariant and aborts on a violation.
  Outcome run_and_check();
  // Human-readable decoding of the call (HOPS_FUZZ_VERBOSE=1, and on a finding).
  std::string describe() const;

  // For the oracles (oracle.cpp).
  const hops_op_desc& op() const { return *op_; }
  int arg_index(std::string_view name) const;            // -1 when the op has none
  const TensorArg* tensor(std::string_view name) const;  // present tensors only
  Array64 read(const TensorArg& t, bool before) const;   // logical values, f64
  std::vector<int64_t> read_indices(const TensorArg& t) const;
  double f64(std::string_view name) const;
  int64_t i64(std::string_view name) const;
  bool flag(std::string_view name) const;
  // Aborts unless the logical values of output `name` match `want` within
  // the tolerance; NaN in `want` means the element must keep its bytes, an
  // infinity must be matched exactly, and so must 0 with exact_zeros (where
  // nothing contributes, the contract says 0).
  // A tolerance >= 0 replaces the call's (0: a copy, every element exact).
  void expect(std::string_view name, const Array64& want, bool exact_zeros = false,
              double tolerance = -1) const;
  // Aborts unless output `name` is 0 exactly wherever `where` is 0: `where` is
  // the reference on inputs of all ones, whose sums cannot cancel, so its
  // zeros are where nothing contributes (the real reference may cancel to 0).
  void expect_zeros(std::string_view name, const Array64& where) const;
  // Aborts unless index output `name` holds exactly `want` (row-major).
  void expect_indices(std::string_view name, const std::vector<int64_t>& want) const;
  // Aborts unless every element of the slots of pool `name` ([S,...]) that
  // no sequence uses kept its bytes.
  void expect_slots_kept(std::string_view name, const std::vector<bool>& used) const;
  [[noreturn]] void finding(const std::string& what) const;

 private:
  void decode_plan(const Plan& plan);
  void build_tensor(int arg, const Plan& plan);
  void apply(const Record& r, bool after_fill);
  bool allocate();
  void fill();
  void check_rejection(hops_status status, const std::string& message) const;
  Outcome check_success() const;
  const std::byte* address(const TensorArg& t, bool before) const;
  int64_t symbol(std::string_view name) const;  // the plan's size of a shape symbol
  int64_t attention_work(int64_t pad) const;
  void forward_lse();
  bool judgeable() const;

  const hops_api& api_;
  const hops_op_desc* op_ = nullptr;
  std::vector<Record> records_;
  std::array<TensorArg, kMaxArgs> tensors_{};
  std::array<hops_value, kMaxArgs + 8> values_{};  // room for a too-long argument list
  std::array<bool, kMaxArgs> raw_bool_{};          // a bool scalar holds a byte other than 0/1
  std::vector<Buffer> buffers_;
  std::vector<std::vector<std::byte>> snapshot_;
  struct {
    hops_exec exec;
    std::byte tail[32];  // lets struct_size claim more than hops_exec has
  } exec_{};
  bool null_exec_ = false;
  int32_t num_args_ = 0;
  bool null_args_ = false;
  bool arena_ = false;
  bool runnable_ = true;
  bool unjudgeable_ = false;  // aliasing or planted values: no reference comparison
  bool lse_holes_ = false;    // attn_prefill_bwd: lse -inf in rows with keys too
  double logit_reach_ = 4;    // moe_route: logits in [-reach, reach] ...
  double logit_step_ = 0;     // ... on a grid of this step (0: none)
  double tolerance_ = 0;
  uint64_t seed_ = 0;
  // Symbol sizes the plan chose, for describe().
  std::vector<std::pair<std::string, int64_t>> symbols_;
};

// The float64 reference of `call`'s op, or false when there is none.
bool check_against_reference(const FuzzCall& call);

}  // namespace hops::fuzz
