// moe_expert_mlp and moe_expert_mlp_bwd (moe_mlp.cl; the experts' first
// rows from moe_expert_offsets in moe.cl). Intermediates are f32 scratch:
// h = silu(g) u; the backward's [g | u], which becomes [dg | du] in place.
// The portable kernels tile through local memory (moe_gemm_*); CPU devices
// take explicit-SIMD kernels on rows packed in panels of 32 (moe_mm_*) where
// Hd % 32 == 0 and the rows have unit column steps.
#include <algorithm>
#include <string>

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

enum Epilogue : cl_int { kPlain = 0, kSwiglu = 1, kSwigluBwd = 2, kSplit = 3 };

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
                       int64_t tile, const char* name) {
  Experts experts{call.scratch(scratch_bytes(name, E + 1, sizeof(cl_int))),
                  call.scratch(scratch_bytes(name, E + 1, sizeof(cl_int))), E, R};
  Launch launch(call.kernel(kRowsProgram, dtype, "moe_expert_offsets"));
  moe_index(launch, counts);
  launch.value(static_cast<cl_int>(E)).value(cl_long{R}).value(static_cast<cl_int>(tile));
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

// Rows [first[E], R) of out set to zero (CPU devices: a work-item per row
// where out has unit column steps and Hd % 16 == 0).
void zero_tail(Call& call, DType dtype, const Experts& experts, const Tensor& out, int64_t Hd) {
  if (call.runtime().cpu_device() && out.step(-1) == 1 && Hd % 16 == 0) {
    Launch launch(call.kernel(kProgram, dtype, "moe_zero_tail_rows"));
    launch.tensor(out).value(cl_long{out.stride[0]}).value(experts.first);
    launch.value(static_cast<cl_int>(experts.E)).value(cl_long{experts.R}).value(cl_long{Hd});
    const size_t local = launch.group_size(kColumnGroup);
    const size_t groups = groups_for(Hd > 0 ? experts.R : 0, local);
    launch.run(call, 1, &groups, &local);
    return;
  }
  Launch launch(call.kernel(kProgram, dtype, "moe_zero_tail"));
  launch.any_float(out).value(cl_long2{{out.stride[0], out.stride[1]}});
  launch.value(experts.first).value(static_cast<cl_int>(experts.E)).value(cl_long{experts.R});
  launch.value(cl_long{Hd});
  const size_t local = launch.group_size(kColumnGroup);
  const size_t groups[2] = {groups_for(Hd, local), static_cast<size_t>(experts.R)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

// ---- CPU devices: the explicit-SIMD kernels (moe_pack_rows, moe_mm_*) ----

constexpr int64_t kPanel = 32;    // PANEL: rows per packed panel, columns per weights item
constexpr size_t kSimdGroup = 4;  // work-items per work-group of moe_pack_rows

// Where Hd is a multiple of 32 and rows, d_out and every output have unit
// column steps (what the weight gradients' in-place vectors need; the
// forward takes the same rule, so that the sweep covers the portable
// kernels on CPU devices too).
bool simd_fits(const Call& call, int64_t Hd, std::initializer_list<const Tensor*> tensors) {
  if (!call.runtime().cpu_device() || Hd % kPanel != 0) return false;
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const Tensor* t) { return !*t || t->step(-1) == 1; });
}

// MR, the weight rows of a work-item: 12 where vectors hold 16 floats, else 4.
int simd_rows(const Call& call) {
  const auto width =
      device_value<cl_uint>(call.runtime().device(), CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT);
  return width >= 16 ? 12 : 4;
}

// The packed panels: at most ceil(R / 32) + (experts with rows) of them.
int64_t panel_count(const Experts& experts) {
  return (experts.R + kPanel - 1) / kPanel + std::min(experts.E, experts.R);
}

// Scratch for `columns` columns of every panel, f32.
cl_mem panels_scratch(Call& call, const Experts& experts, int64_t columns, const char* name) {
  return call.scratch(scratch_bytes(name, panel_count(experts), columns, kPanel, sizeof(float)));
}

// The rows of x [R, K] in panels (moe_pack_rows).
cl_mem pack_rows(Call& call, DType dtype, const Experts& experts, const Tensor& x, int64_t K,
                 const char* name) {
  const cl_mem packed = panels_scratch(call, experts, K, name);
  Launch launch(call.kernel(kProgram, dtype, "moe_pack_rows"));
  launch.tensor(x).value(cl_long2{{x.stride[0], x.stride[1]}}).value(packed).value(cl_long{K});
  launch.value(static_cast<cl_int>(experts.E)).value(experts.first).value(experts.tiles);
  const size_t local = launch.group_size(kSimdGroup);
  const size_t groups[2] = {groups_for(groups_for(K, 16), local),
                            static_cast<size_t>(panel_count(experts))};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
  return packed;
}

// A weight [E, *, *] as moe_mm_rows reads it: W_e(n, k) at offset + e se +
// n strides.x + k strides.y.
struct Weight {
  const Tensor& w;
  int n_dim, k_dim;
};

// Where moe_mm_rows writes: C (x_t, its strides) for PLAIN; packed panels
// in `buffer` for SPLIT and SWIGLU_BWD, and h for SWIGLU and SWIGLU_BWD.
struct RowsOut {
  cl_mem buffer = nullptr;
  cl_long offset = 0;
  cl_long2 strides{};
  cl_mem h = nullptr;
  cl_long h_row = 0;  // SWIGLU_BWD: h's row stride
};

// Depth slices of moe_mm_rows: 512 steps of weight rows with unit depth
// steps (MR x 2 KiB); 128 where each step is a row of the weight (MR
// values of one line, 128 lines in L1).
constexpr int64_t kDepthSlice = 512, kStridedDepthSlice = 128;
constexpr int64_t kItemBlocks = 8;  // NB

// moe_mm_rows: every panel against the N rows of W (with `halves`, N = I
// gate rows and the I up rows after them) over depth K.
void simd_rows_gemm(Call& call, DType dtype, int mr, const Experts& experts, cl_mem panels,
                    int64_t K, const Weight& W, int64_t N, bool halves, int64_t I,
                    const RowsOut& out, Epilogue epilogue, const char* name) {
  const Tensor& w = W.w;
  const int64_t per_block = halves ? mr / 2 : mr, blocks = (N + per_block - 1) / per_block;
  const int64_t slice = w.stride[W.k_dim] == 1 ? kDepthSlice : kStridedDepthSlice;
  // The sums between depth slices, per panel and weight row.
  const cl_mem partial =
      K > slice ? panels_scratch(call, experts, halves ? 2 * I : N, name) : nullptr;
  Launch launch(call.kernel(kProgram, dtype, fmt::format("moe_mm_rows_{}", mr)));
  launch.value(panels).value(cl_long{K});
  launch.tensor(w).value(cl_long{w.stride[0]});
  launch.value(cl_long2{{w.stride[W.n_dim], w.stride[W.k_dim]}});
  launch.value(cl_long{N}).value(cl_int{halves}).value(cl_long{I});
  launch.value(out.buffer).value(out.offset).value(out.strides).value(out.h);
  launch.value(cl_long{out.h_row}).value(partial);
  launch.value(cl_long{slice}).value(cl_long{blocks}).value(static_cast<cl_int>(experts.E));
  launch.value(cl_int{epilogue}).value(experts.first).value(experts.tiles);
  const size_t groups[2] = {groups_for(blocks, kItemBlocks), static_cast<size_t>(experts.E)};
  const size_t locals[2] = {1, 1};
  launch.run(call, 2, groups, locals);
}

// moe_mm_weights: C_e[m, c] = sum over the rows r of expert e of S(r, m)
// V[r, c] for `cols` columns, S packed with M columns; V in place: the op's
// dtype, or f32 scratch (`f32_v`) with rows readable to whole panels.
void simd_weights_gemm(Call& call, DType dtype, int mr, const Experts& experts, cl_mem V,
                       cl_long v_off, cl_long v_row, bool f32_v, cl_mem S, int64_t M,
                       const Tensor& C, int m_dim, int c_dim, int64_t cols) {
  Launch launch(
      call.kernel(kProgram, dtype, fmt::format("moe_mm_weights_{}_{}", f32_v ? "f" : "x", mr)));
  launch.value(V).value(v_off).value(v_row).value(S).value(cl_long{M});
  launch.tensor(C).value(cl_long{C.stride[0]});
  launch.value(cl_long2{{C.stride[m_dim], C.stride[c_dim]}});
  launch.value(cl_long{cols}).value(static_cast<cl_int>(experts.E));
  launch.value(experts.first).value(experts.tiles);
  const size_t groups[2] = {groups_for((M + mr - 1) / mr, kItemBlocks),
                            static_cast<size_t>(experts.E)};
  const size_t locals[2] = {1, 1};
  launch.run(call, 2, groups, locals);
}

RowsOut plain_out(const Tensor& t) {
  return {t.numel() > 0 ? static_cast<cl_mem>(t.handle) : nullptr,
          element_offset(t),
          {{t.stride[0], t.stride[1]}},
          nullptr};
}

void simd_expert_mlp(Call& call, const MoeExpertMlp& op, const MoeIndex& counts) {
  const DType dtype = op.rows.dtype;
  const int64_t I = op.I, Hd = op.Hd;
  const int mr = simd_rows(call);
  const Experts experts = expert_offsets(call, dtype, counts, op.E, op.R, kPanel, op.kName);
  const cl_mem rows = pack_rows(call, dtype, experts, op.rows, Hd, op.kName);
  const cl_mem h = panels_scratch(call, experts, I, op.kName);
  // h = silu(rows Wg^T) * (rows Wu^T), packed.
  simd_rows_gemm(call, dtype, mr, experts, rows, Hd, {op.gate_up_proj, 1, 2}, I, true, I,
                 {nullptr, 0, {}, h, 0}, kSwiglu, op.kName);
  // out = h Wd^T.
  simd_rows_gemm(call, dtype, mr, experts, h, I, {op.down_proj, 1, 2}, Hd, false, I,
                 plain_out(op.out), kPlain, op.kName);
  zero_tail(call, dtype, experts, op.out, Hd);
}

void simd_expert_mlp_bwd(Call& call, const MoeExpertMlpBwd& op, const MoeIndex& counts) {
  const DType dtype = op.rows.dtype;
  const int64_t I = op.I, I2 = 2 * op.I, Hd = op.Hd;
  const int64_t h_row = (I + kPanel - 1) / kPanel * kPanel;  // whole panels of columns
  const int mr = simd_rows(call);
  const Experts experts = expert_offsets(call, dtype, counts, op.E, op.R, kPanel, op.kName);
  const cl_mem rows = pack_rows(call, dtype, experts, op.rows, Hd, op.kName);
  const cl_mem d_out = pack_rows(call, dtype, experts, op.d_out, Hd, op.kName);
  const cl_mem gu = panels_scratch(call, experts, I2, op.kName);
  const cl_mem h = call.scratch(scratch_bytes(op.kName, op.R, h_row, sizeof(float)));
  // [g | u] = rows [Wg; Wu]^T, packed.
  simd_rows_gemm(call, dtype, mr, experts, rows, Hd, {op.gate_up_proj, 1, 2}, I, true, I,
                 {gu, 0, {}, nullptr, 0}, kSplit, op.kName);
  // dh = d_out Wd (W(n, k) = down_proj[e, k, n]); [g | u] := [dg | du], h [R, h_row].
  simd_rows_gemm(call, dtype, mr, experts, d_out, Hd, {op.down_proj, 2, 1}, I, false, I,
                 {gu, 0, {}, h, h_row}, kSwigluBwd, op.kName);
  // d_rows = [dg | du] [Wg; Wu] (W(n, k) = gate_up_proj[e, k, n]).
  simd_rows_gemm(call, dtype, mr, experts, gu, I2, {op.gate_up_proj, 2, 1}, Hd, false, I,
                 plain_out(op.d_rows), kPlain, op.kName);
  zero_tail(call, dtype, experts, op.d_rows, Hd);
  // d_down[e][c, i] = sum_r d_out[r, c] h[r, i]: m = c, columns i.
  if (op.d_down_proj) {
    simd_weights_gemm(call, dtype, mr, experts, h, 0, h_row, true, d_out, Hd, op.d_down_proj, 1, 2,
                      I);
  }
  // d_gate_up[e][n, d] = sum_r [dg | du][r, n] rows[r, d]: m = n, columns d.
  if (op.d_gate_up_proj) {
    simd_weights_gemm(call, dtype, mr, experts, static_cast<cl_mem>(op.rows.handle),
                      element_offset(op.rows), op.rows.stride[0], false, gu, I2, op.d_gate_up_proj,
                      1, 2, Hd);
  }
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
  if (simd_fits(call, op.Hd, {&op.rows, &op.out})) {
    simd_expert_mlp(call, op, counts.arg);
    call.complete();
    return;
  }
  const DType dtype = op.rows.dtype;
  const Experts experts = expert_offsets(call, dtype, counts.arg, op.E, op.R, kTile, op.kName);
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
  if (simd_fits(call, op.Hd,
                {&op.rows, &op.d_out, &op.d_rows, &op.d_gate_up_proj, &op.d_down_proj})) {
    simd_expert_mlp_bwd(call, op, counts.arg);
    call.complete();
    return;
  }
  const DType dtype = op.rows.dtype;
  const int64_t I = op.I, I2 = 2 * op.I, Hd = op.Hd;
  const Experts experts = expert_offsets(call, dtype, counts.arg, op.E, op.R, kTile, op.kName);
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
