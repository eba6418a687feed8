// moe_expert_mlp and moe_expert_mlp_bwd (moe_mlp.cl; the experts' first
// rows from moe_expert_offsets in moe.cl). Intermediates are f32 scratch:
// h = silu(g) u [R, I]; the backward's [g | u] [R, 2I], which becomes
// [dg | du] in place.
#include <algorithm>

#include "checked_math.hpp"
#include "moe.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "moe_mlp.cl";  // after common.cl
constexpr std::string_view kRowsProgram = "moe.cl";  // moe_expert_offsets

constexpr int64_t kTile = 64;      // TM = TN of moe_gemm_rows / moe_gemm_weights
constexpr size_t kTileItems = 16;  // WI: work-items per dim of their work-groups
constexpr size_t kScanGroup = 256;
constexpr size_t kColumnGroup = 64;

enum Epilogue : cl_int { kPlain = 0, kSwiglu = 1, kSwigluBwd = 2 };

// A GEMM operand: a float tensor of any dtype, its element (i, j) at
// offset + i strides.x + j strides.y.
struct Operand {
  cl_mem buffer = nullptr;
  cl_long offset = 0;
  cl_long2 strides{};
  cl_int dtype = 0;  // common.cl's code
};

Operand view(const Tensor& t, int64_t i_dim, int64_t j_dim) {
  return {t.numel() > 0 ? static_cast<cl_mem>(t.handle) : nullptr,
          element_offset(t),
          {{t.stride[i_dim], t.stride[j_dim]}},
          dtype_code(t)};
}

// Row-major f32 scratch of `columns` columns.
Operand scratch_view(cl_mem buffer, int64_t columns) { return {buffer, 0, {{columns, 1}}, 0}; }

Launch& operand(Launch& launch, const Operand& o) {
  return launch.value(o.buffer).value(o.offset).value(o.strides).value(o.dtype);
}

// What the expert kernels share: the experts' first rows and row tiles.
struct Experts {
  cl_mem first = nullptr, tiles = nullptr;
  int64_t E = 0, R = 0;
};

Experts expert_offsets(Call& call, DType dtype, const MoeIndex& counts, int64_t E, int64_t R,
                       const char* name) {
  Experts experts{call.scratch(scratch_bytes(name, E + 1, sizeof(cl_int))),
                  call.scratch(scratch_bytes(name, E + 1, sizeof(cl_int))), E, R};
  Launch launch(call.kernel(kRowsProgram, dtype, "moe_expert_offsets"));
  moe_index(launch, counts);
  launch.value(static_cast<cl_int>(E)).value(cl_long{R}).value(static_cast<cl_int>(kTile));
  launch.value(experts.first).value(experts.tiles);
  const size_t local = launch.group_size(kScanGroup);
  launch.local_floats(4 * local);  // 2 * local longs
  const size_t groups = 1;
  launch.run(call, 1, &groups, &local);
  return experts;
}

void check_tile_group(const Launch& launch) {
  if (launch.group_size(kTileItems * kTileItems) < kTileItems * kTileItems) {
    fail(HOPS_ERR_UNSUPPORTED, "opencl: the MoE GEMM needs work-groups of {} items",
         kTileItems * kTileItems);
  }
}

// C[r, n] = sum_k A[r, k] B_e[k, n] for the rows r of each expert e; B_e
// starts b_se elements after B (B2, SWIGLU's up rows, b2_shift after B_e).
void gemm_rows(Call& call, DType dtype, const Experts& experts, const Operand& A, const Operand& B,
               int64_t b_se, int64_t b2_shift, const Operand& C, cl_mem h, int64_t N, int64_t K,
               Epilogue epilogue) {
  Launch launch(call.kernel(kProgram, dtype, "moe_gemm_rows"));
  check_tile_group(launch);
  operand(launch, A);
  launch.value(B.buffer).value(B.offset).value(cl_long{b_se}).value(cl_long{b2_shift});
  launch.value(B.strides).value(B.dtype);
  operand(launch, C);
  launch.value(h).value(cl_long{N}).value(cl_long{K}).value(static_cast<cl_int>(experts.E));
  launch.value(cl_int{epilogue}).value(experts.first).value(experts.tiles);
  // At most ceil(R / tile) + (experts with rows) row tiles; the others exit.
  const int64_t tiles = (experts.R + kTile - 1) / kTile + std::min(experts.E, experts.R);
  const size_t groups[2] = {static_cast<size_t>(tiles), groups_for(N, kTile)};
  const size_t locals[2] = {kTileItems, kTileItems};
  launch.run(call, 2, groups, locals);
}

// C_e[m, n] = sum over the rows r of expert e, in order, of A[m, r] B[r, n];
// C_e starts c_se elements after C.
void gemm_weights(Call& call, DType dtype, const Experts& experts, const Operand& A,
                  const Operand& B, const Operand& C, int64_t c_se, int64_t M, int64_t N) {
  Launch launch(call.kernel(kProgram, dtype, "moe_gemm_weights"));
  check_tile_group(launch);
  operand(launch, A);
  operand(launch, B);
  launch.value(C.buffer).value(C.offset).value(cl_long{c_se}).value(C.strides).value(C.dtype);
  launch.value(cl_long{M}).value(cl_long{N}).value(experts.first);
  const size_t groups[3] = {groups_for(N, kTile), groups_for(M, kTile),
                            static_cast<size_t>(experts.E)};
  const size_t locals[3] = {kTileItems, kTileItems, 1};
  launch.run(call, 3, groups, locals);
}

// Rows [first[E], R) of out set to zero.
void zero_tail(Call& call, DType dtype, const Experts& experts, const Tensor& out, int64_t Hd) {
  Launch launch(call.kernel(kProgram, dtype, "moe_zero_tail"));
  launch.any_float(out).value(cl_long2{{out.stride[0], out.stride[1]}});
  launch.value(experts.first).value(static_cast<cl_int>(experts.E)).value(cl_long{experts.R});
  launch.value(cl_long{Hd});
  const size_t local = launch.group_size(kColumnGroup);
  const size_t groups[2] = {groups_for(Hd, local), static_cast<size_t>(experts.R)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

}  // namespace

void moe_expert_mlp(const ExecContext& exec, const MoeExpertMlp& op) {
  Call call(exec, {{op.rows, "rows"},
                   {op.counts, "counts"},
                   {op.gate_up_proj, "gate_up_proj"},
                   {op.down_proj, "down_proj"},
                   {op.out, "out"}});
  if (!call.active()) return;
  const MoeIndexInput counts(call, op.counts);
  const DType dtype = op.rows.dtype;
  const Experts experts = expert_offsets(call, dtype, counts.arg, op.E, op.R, op.kName);
  const cl_mem h = call.scratch(scratch_bytes(op.kName, op.R, op.I, sizeof(float)));
  // h = silu(rows Wg^T) * (rows Wu^T): B_e[d, n] = gate_up_proj[e, n, d].
  gemm_rows(call, dtype, experts, view(op.rows, 0, 1), view(op.gate_up_proj, 2, 1),
            op.gate_up_proj.stride[0], op.I * op.gate_up_proj.stride[1], scratch_view(h, op.I),
            nullptr, op.I, op.Hd, kSwiglu);
  // out = h Wd^T: B_e[i, c] = down_proj[e, c, i].
  gemm_rows(call, dtype, experts, scratch_view(h, op.I), view(op.down_proj, 2, 1),
            op.down_proj.stride[0], 0, view(op.out, 0, 1), nullptr, op.Hd, op.I, kPlain);
  zero_tail(call, dtype, experts, op.out, op.Hd);
  call.complete();
}

void moe_expert_mlp_bwd(const ExecContext& exec, const MoeExpertMlpBwd& op) {
  Call call(exec, {{op.rows, "rows"},
                   {op.counts, "counts"},
                   {op.gate_up_proj, "gate_up_proj"},
                   {op.down_proj, "down_proj"},
                   {op.d_out, "d_out"},
                   {op.d_rows, "d_rows"},
                   {op.d_gate_up_proj, "d_gate_up_proj"},
                   {op.d_down_proj, "d_down_proj"}});
  if (!call.active()) return;
  const MoeIndexInput counts(call, op.counts);
  const DType dtype = op.rows.dtype;
  const int64_t I = op.I, I2 = 2 * op.I, Hd = op.Hd;
  const Experts experts = expert_offsets(call, dtype, counts.arg, op.E, op.R, op.kName);
  const cl_mem gu = call.scratch(scratch_bytes(op.kName, op.R, I2, sizeof(float)));
  const cl_mem h = call.scratch(scratch_bytes(op.kName, op.R, I, sizeof(float)));
  const Operand gate_up_by_depth = view(op.gate_up_proj, 2, 1);  // B_e[d, n] = W[e, n, d]
  const Operand gate_up_by_row = view(op.gate_up_proj, 1, 2);    // B_e[n, d] = W[e, n, d]
  // [g | u] = rows [Wg; Wu]^T.
  gemm_rows(call, dtype, experts, view(op.rows, 0, 1), gate_up_by_depth, op.gate_up_proj.stride[0],
            0, scratch_view(gu, I2), nullptr, I2, Hd, kPlain);
  // dh = d_out Wd (B_e[c, i] = down_proj[e, c, i]); [g | u] := [dg | du], h.
  gemm_rows(call, dtype, experts, view(op.d_out, 0, 1), view(op.down_proj, 1, 2),
            op.down_proj.stride[0], 0, scratch_view(gu, I2), h, I, Hd, kSwigluBwd);
  // d_rows = [dg | du] [Wg; Wu].
  gemm_rows(call, dtype, experts, scratch_view(gu, I2), gate_up_by_row, op.gate_up_proj.stride[0],
            0, view(op.d_rows, 0, 1), nullptr, Hd, I2, kPlain);
  zero_tail(call, dtype, experts, op.d_rows, Hd);
  if (op.d_down_proj) {
    // d_down[e][c, i] = sum_r d_out[r, c] h[r, i].
    gemm_weights(call, dtype, experts, view(op.d_out, 1, 0), scratch_view(h, I),
                 view(op.d_down_proj, 1, 2), op.d_down_proj.stride[0], Hd, I);
  }
  if (op.d_gate_up_proj) {
    // d_gate_up[e][n, d] = sum_r [dg | du][r, n] rows[r, d].
    const Operand dgu_by_column{gu, 0, {{1, I2}}, 0};
    gemm_weights(call, dtype, experts, dgu_by_column, view(op.rows, 0, 1),
                 view(op.d_gate_up_proj, 1, 2), op.d_gate_up_proj.stride[0], I2, Hd);
  }
  call.complete();
}

}  // namespace hops::opencl
