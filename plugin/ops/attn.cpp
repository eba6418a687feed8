#include "attn.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checked_math.hpp"

namespace hops {

namespace {

double check_scale(const Call& call, int arg, int64_t D) {
  const double scale = call.f64(arg);
  if (!(scale >= 0) || std::isinf(scale)) {
    call.fail(arg, "expected a finite value >= 0 (0 means D^-1/2), got {}", scale);
  }
  return scale == 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : scale;
}

// Hq query heads share Hkv key-value heads: both proven positive here (the
// kernels divide by them).
void check_heads(const Call& call, int arg, int64_t Hq, int64_t Hkv, int64_t D) {
  if (Hq == 0 || Hkv == 0 || Hq % Hkv != 0) {
    call.fail(arg,
              "query heads Hq = {} must be a positive multiple of the key-value heads Hkv = {}", Hq,
              Hkv);
  }
  if (D == 0) call.fail(arg, "head dim D must be positive");
}

// One offsets tensor [N+1]: starts at 0, nondecreasing, ends at `tokens`
// (read only when host-resident: device kernels clamp, docs/DECISIONS.md).
void check_offsets(const Call& call, int arg, int64_t count, int64_t tokens) {
  const Tensor& cu = call.tensor(arg);
  if (cu.ndim != 1 || cu.shape[0] != count + 1) {
    call.fail(arg,
              "shape expected [{}] (N+1 offsets, as cu_seqlens_q), got rank {} with {} entries",
              count + 1, cu.ndim, cu.ndim > 0 ? cu.shape[0] : 0);
  }
  if (!host_accessible(cu.device)) return;
  if (read_index(cu, 0) != 0) call.fail(arg, "must start at 0, got {}", read_index(cu, 0));
  for (int64_t n = 1; n <= count; ++n) {
    if (read_index(cu, n) < read_index(cu, n - 1)) {
      call.fail(arg, "must be nondecreasing, but entry {} = {} < entry {} = {}", n,
                read_index(cu, n), n - 1, read_index(cu, n - 1));
    }
  }
  if (read_index(cu, count) != tokens) {
    call.fail(arg, "must end at the token count {}, got {}", tokens, read_index(cu, count));
  }
}

// The prefill ops' shared arguments; `Arg` is the op's index enum.
template <class Arg>
void check_problem(const Call& call, Shapes& dims, AttnProblem& p) {
  dims.expect(Arg::q, {"B", "Tq", "Hq", "D"});
  dims.expect(Arg::k, {"B", "Tk", "Hkv", "D"});
  dims.expect(Arg::v, {"B", "Tk", "Hkv", "D"});
  dims.expect(Arg::gate, {"B", "Tq", "Hq", "D"});
  for (int arg : {Arg::k, Arg::v, Arg::gate}) call.same_dtype(arg, Arg::q);
  p.B = dims["B"], p.Tq = dims["Tq"], p.Tk = dims["Tk"];
  p.Hq = dims["Hq"], p.Hkv = dims["Hkv"], p.D = dims["D"];
  check_heads(call, Arg::k, p.Hq, p.Hkv, p.D);
  p.q = call.tensor(Arg::q), p.k = call.tensor(Arg::k), p.v = call.tensor(Arg::v);
  p.gate = call.tensor(Arg::gate);

  AttnSequences& seqs = p.sequences;
  seqs.cu_seqlens_q = call.tensor(Arg::cu_seqlens_q);
  seqs.cu_seqlens_k = call.tensor(Arg::cu_seqlens_k);
  seqs.Tq = p.Tq, seqs.Tk = p.Tk, seqs.count = p.B;
  if (static_cast<bool>(seqs.cu_seqlens_q) != static_cast<bool>(seqs.cu_seqlens_k)) {
    call.fail(seqs.cu_seqlens_q ? Arg::cu_seqlens_k : Arg::cu_seqlens_q,
              "cu_seqlens_q and cu_seqlens_k are given together or not at all");
  }
  if (seqs.cu_seqlens_q) {
    const Tensor& cu = seqs.cu_seqlens_q;
    call.require(cu.ndim == 1 && cu.shape[0] >= 2, Arg::cu_seqlens_q,
                 "expected shape [N+1] with N >= 1");
    if (p.B != 1) call.fail(Arg::cu_seqlens_q, "is given, so the batch dim must be 1, got {}", p.B);
    seqs.count = cu.shape[0] - 1;
    check_offsets(call, Arg::cu_seqlens_q, seqs.count, p.Tq);
    check_offsets(call, Arg::cu_seqlens_k, seqs.count, p.Tk);
  }
  p.scale = check_scale(call, Arg::scale, p.D);
  p.causal = call.flag(Arg::causal);
}

// A paged cache [num_blocks, block_size, Hkv, D]; the slots it holds fit.
void check_cache(const Call& call, Shapes& dims, int cache, int twin) {
  dims.expect(cache, {"num_blocks", "block_size", "Hkv", "D"});
  dims.expect(twin, {"num_blocks", "block_size", "Hkv", "D"});
  if (dims["block_size"] == 0) call.fail(cache, "block_size must be positive");
}

// seq_lens within the table, and the blocks each sequence uses within the
// cache. Device-resident tables are not read here (that would sync the
// stream): device kernels clamp seq_lens to the table and skip blocks out of
// range (docs/DECISIONS.md).
void check_tables(const Call& call, const AttnDecode& op) {
  using Arg = AttnDecode::Arg;
  if (!host_accessible(op.seq_lens.device) || !host_accessible(op.block_table.device)) return;
  const int64_t capacity =
      try_mul(op.max_blocks, op.block_size).value_or(std::numeric_limits<int64_t>::max());
  for (int64_t n = 0; n < op.N; ++n) {
    const int64_t length = read_index(op.seq_lens, n);
    if (length < 0 || length > capacity) {
      call.fail(Arg::seq_lens, "entry {} is {}, expected 0..{} (max_blocks x block_size)", n,
                length, capacity);
    }
    const int64_t blocks = (length + op.block_size - 1) / op.block_size;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t block = read_index(op.block_table, n, b);
      if (block < 0 || block >= op.num_blocks) {
        call.fail(Arg::block_table, "entry [{}, {}] is {}, expected a block in [0, {})", n, b,
                  block, op.num_blocks);
      }
    }
  }
}

}  // namespace

AttnPrefill AttnPrefill::check(const Call& call) {
  AttnPrefill op;
  Shapes dims(call);
  check_problem<Arg>(call, dims, op);
  dims.expect(Arg::o, {"B", "Tq", "Hq", "D"});
  dims.expect(Arg::lse, {"B", "Hq", "Tq"});
  call.same_dtype(Arg::o, Arg::q);
  op.o = call.tensor(Arg::o), op.lse = call.tensor(Arg::lse);
  return op;
}

AttnPrefillBwd AttnPrefillBwd::check(const Call& call) {
  AttnPrefillBwd op;
  Shapes dims(call);
  check_problem<Arg>(call, dims, op);
  for (int arg : {Arg::o, Arg::d_o, Arg::dq, Arg::dgate}) dims.expect(arg, {"B", "Tq", "Hq", "D"});
  for (int arg : {Arg::dk, Arg::dv}) dims.expect(arg, {"B", "Tk", "Hkv", "D"});
  dims.expect(Arg::lse, {"B", "Hq", "Tq"});
  for (int arg : {Arg::o, Arg::d_o, Arg::dq, Arg::dk, Arg::dv, Arg::dgate}) {
    call.same_dtype(arg, Arg::q);
  }
  op.dgate = call.tensor(Arg::dgate);
  if (op.dgate && !op.gate) {
    call.fail(Arg::dgate, "is given without gate: there is no gate to differentiate");
  }
  op.o = call.tensor(Arg::o), op.lse = call.tensor(Arg::lse), op.d_o = call.tensor(Arg::d_o);
  op.dq = call.tensor(Arg::dq), op.dk = call.tensor(Arg::dk), op.dv = call.tensor(Arg::dv);
  return op;
}

AttnDecode AttnDecode::check(const Call& call) {
  AttnDecode op;
  Shapes dims(call);
  dims.expect(Arg::q, {"N", "L", "Hq", "D"});
  dims.expect(Arg::o, {"N", "L", "Hq", "D"});
  check_cache(call, dims, Arg::k_cache, Arg::v_cache);
  dims.expect(Arg::block_table, {"N", "max_blocks"});
  dims.expect(Arg::seq_lens, {"N"});
  for (int arg : {Arg::k_cache, Arg::v_cache, Arg::o}) call.same_dtype(arg, Arg::q);
  op.N = dims["N"], op.L = dims["L"], op.Hq = dims["Hq"], op.Hkv = dims["Hkv"], op.D = dims["D"];
  op.num_blocks = dims["num_blocks"], op.block_size = dims["block_size"];
  op.max_blocks = dims["max_blocks"];
  check_heads(call, Arg::k_cache, op.Hq, op.Hkv, op.D);
  op.q = call.tensor(Arg::q), op.o = call.tensor(Arg::o);
  op.k_cache = call.tensor(Arg::k_cache), op.v_cache = call.tensor(Arg::v_cache);
  op.block_table = call.tensor(Arg::block_table), op.seq_lens = call.tensor(Arg::seq_lens);
  op.scale = check_scale(call, Arg::scale, op.D);
  check_tables(call, op);
  return op;
}

KvCacheWrite KvCacheWrite::check(const Call& call) {
  KvCacheWrite op;
  Shapes dims(call);
  dims.expect(Arg::k, {"T", "Hkv", "D"});
  dims.expect(Arg::v, {"T", "Hkv", "D"});
  check_cache(call, dims, Arg::k_cache, Arg::v_cache);
  dims.expect(Arg::slot_mapping, {"T"});
  for (int arg : {Arg::v, Arg::k_cache, Arg::v_cache}) call.same_dtype(arg, Arg::k);
  op.T = dims["T"], op.Hkv = dims["Hkv"], op.D = dims["D"];
  op.num_blocks = dims["num_blocks"], op.block_size = dims["block_size"];
  op.k = call.tensor(Arg::k), op.v = call.tensor(Arg::v);
  op.k_cache = call.tensor(Arg::k_cache), op.v_cache = call.tensor(Arg::v_cache);
  op.slot_mapping = call.tensor(Arg::slot_mapping);
  // The slots (num_blocks * block_size) are at most the cache's elements.
  if (!host_accessible(op.slot_mapping.device)) return op;  // device kernels skip bad slots
  // Two rows for one slot would race on parallel backends: found among the
  // used slots, sorted (O(T log T) whatever the cache size).
  std::vector<int64_t> used;
  used.reserve(static_cast<size_t>(op.T));
  for (int64_t t = 0; t < op.T; ++t) {
    const int64_t slot = read_index(op.slot_mapping, t);
    if (slot < -1 || slot >= op.slots()) {
      call.fail(Arg::slot_mapping, "entry {} is {}, expected -1 (skip) or a slot in [0, {})", t,
                slot, op.slots());
    }
    if (slot >= 0) used.push_back(slot);
  }
  std::sort(used.begin(), used.end());
  const auto twice = std::adjacent_find(used.begin(), used.end());
  if (twice != used.end()) {
    call.fail(Arg::slot_mapping, "slot {} is written by two rows", *twice);
  }
  return op;
}

std::span<const OpEntry> attn_ops() {
  static const OpEntry ops[] = {
      {9, &op_def<AttnPrefill>()},
      {10, &op_def<AttnPrefillBwd>()},
      {11, &op_def<AttnDecode>()},
      {12, &op_def<KvCacheWrite>()},
  };
  return ops;
}

}  // namespace hops
