// gdn_chunk_fwd and gdn_recurrent: gdn_prepare, then a chunked form
// (gdn_chunk.cpp: gdn_chunk_rows.cl where rows_form takes the call, on CPU
// devices, else gdn_chunk.cl where chunk_plan does), else gdn_scan, or on CPU
// devices gdn_scan_panels where the state allows (gdn.cl).
#include <algorithm>

#include "checked_math.hpp"
#include "family.hpp"
#include "gdn.hpp"
#include "gdn_tokens.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "gdn.cl";  // after common.cl

constexpr size_t kPrepareGroup = 64;
constexpr size_t kScanGroup = 64;  // state columns per work-group
constexpr size_t kTokenInfo = 6;   // floats per (b, t, hv): TOKEN_INFO in common.cl
constexpr int64_t kPanel = 16;     // state columns per work-item of gdn_scan_panels: PANEL

// The state gdn_scan works on: a buffer with strides (index, hv, k step, v step).
struct StateArg {
  cl_mem buffer = nullptr;
  cl_long offset = 0;
  cl_long4 steps{};
};

StateArg state_arg(const Tensor& state, bool v_first) {
  return {state.numel() > 0 ? static_cast<cl_mem>(state.handle) : nullptr, element_offset(state),
          state_steps(state, v_first)};
}

size_t groups_for(int64_t items, size_t group) {
  return static_cast<size_t>((items + static_cast<int64_t>(group) - 1) /
                             static_cast<int64_t>(group));
}

struct ScanArgs {
  cl_mem info;
  const Tensor& init;  // absent for gdn_recurrent and for zero initial states
  const Tensor& fin;   // gdn_scan_panels: where the final state is copied (absent: nowhere)
  StateArg state;
  IndexArg cu_seqlens, slots;
  int64_t sequences, pool;
  bool in_place;
};

// The arguments both scan kernels share, around their own state arguments.
void scan_inputs(Launch& launch, const GdnProblem& op, const ScanArgs& a) {
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.value(a.info);
  launch.tensor(op.o).value(strides4(op.o));
  launch.tensor(a.init).value(state_steps(a.init, op.state_v_first));
}

void scan_sizes(Launch& launch, const GdnProblem& op, const ScanArgs& a) {
  launch.value(a.state.buffer).value(a.state.offset).value(a.state.steps);
  launch.index(a.cu_seqlens).index(a.slots);
  launch.value(cl_long{op.T}).value(cl_long{a.pool});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
  launch.value(static_cast<cl_float>(op.scale)).value(cl_int{a.in_place});
}

// Portable: a work-item per state column (what a GPU coalesces).
void scan(Call& call, const GdnProblem& op, const ScanArgs& a) {
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_scan"));
  scan_inputs(launch, op, a);
  scan_sizes(launch, op, a);
  launch.local_floats(2 * static_cast<size_t>(op.K));
  const size_t local = launch.group_size(kScanGroup);
  const size_t groups[3] = {groups_for(op.V, local), static_cast<size_t>(op.HV),
                            static_cast<size_t>(a.sequences)};
  const size_t locals[3] = {local, 1, 1};
  launch.run(call, 3, groups, locals);
}

// CPU devices, where the state's columns come in whole panels: explicit SIMD (gdn.cl).
bool panels_fit(const Call& call, const GdnProblem& op) {
  return call.runtime().cpu_device() && op.V % kPanel == 0;
}

void scan_panels(Call& call, const GdnProblem& op, const ScanArgs& a) {
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_scan_panels"));
  scan_inputs(launch, op, a);
  launch.tensor(a.fin).value(state_steps(a.fin, op.state_v_first));
  scan_sizes(launch, op, a);
  // One work-group holds the panels of a head.
  const size_t local = launch.group_size(static_cast<size_t>(op.V / kPanel));
  const size_t groups[3] = {groups_for(op.V / kPanel, local), static_cast<size_t>(op.HV),
                            static_cast<size_t>(a.sequences)};
  const size_t locals[3] = {local, 1, 1};
  launch.run(call, 3, groups, locals);
}

StateArg dense_scratch(Call& call, const GdnProblem& op, int64_t sequences) {
  const int64_t per_head = op.K * op.V;  // validated: HV K V <= 2^48
  return {call.scratch(scratch_bytes("opencl: gdn state scratch", sequences, op.HV, per_head,
                                     sizeof(float))),
          0,
          {{op.HV * per_head, per_head, op.V, 1}}};
}

}  // namespace

cl_long4 state_steps(const Tensor& state, bool v_first) {
  if (!state) return {};
  return {{state.stride[0], state.stride[1], state.stride[v_first ? 3 : 2],
           state.stride[v_first ? 2 : 3]}};
}

void check_kernel_ints(const GdnProblem& op, const char* name) {
  if (std::max({op.H, op.HV, op.K, op.V}) > INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the opencl backend takes H, HV, K and V below 2^31, got H = {}, HV = {}, K = {}, V = "
         "{}",
         name, op.H, op.HV, op.K, op.V);
  }
}

cl_mem prepare_tokens(Call& call, const GdnProblem& op, bool key_stats) {
  const int64_t items = checked_product("opencl: gdn_prepare", op.B, op.T, op.HV);
  const cl_mem info =
      call.scratch(scratch_bytes("opencl: gdn_prepare", items, kTokenInfo, sizeof(float)));
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_prepare"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.any_float(op.g).value(strides4(op.g));
  launch.any_float(op.beta).value(strides4(op.beta));
  launch.any_float(op.A_log).value(cl_long{op.A_log ? op.A_log.stride[0] : 0});
  launch.any_float(op.dt_bias).value(cl_long{op.dt_bias ? op.dt_bias.stride[0] : 0});
  launch.value(info).value(cl_long{op.B}).value(cl_long{op.T});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(cl_int{op.use_qk_l2norm});
  launch.value(static_cast<cl_int>(op.beta_mode)).value(cl_int{key_stats});
  const size_t local = launch.group_size(kPrepareGroup);
  const size_t groups = groups_for(items, local);
  launch.run(call, 1, &groups, &local);
  return info;
}

void gdn_chunk_fwd(const ExecContext& exec, const GdnChunkFwd& op) {
  check_kernel_ints(op, op.kName);
  Call call(exec, {{op.q, "q"},
                   {op.k, "k"},
                   {op.v, "v"},
                   {op.g, "g"},
                   {op.beta, "beta"},
                   {op.initial_state, "initial_state"},
                   {op.sequences.cu_seqlens, "cu_seqlens"},
                   {op.A_log, "A_log"},
                   {op.dt_bias, "dt_bias"},
                   {op.o, "o"},
                   {op.final_state, "final_state"}});
  if (!call.active()) return;
  const IndexArg cu_seqlens = call.index(op.sequences.cu_seqlens);
  const bool rows = rows_form(call, op);
  const cl_mem info = prepare_tokens(call, op, !rows);
  const int64_t N = op.sequences.count;
  const Tensor none;
  if (rows) {
    rows_forward(call, op, info, cu_seqlens);
  } else if (const std::optional<ChunkPlan> plan = chunk_plan(call, op, false)) {
    chunked_forward(call, op, info, cu_seqlens, *plan);
  } else if (panels_fit(call, op)) {
    // Dense scratch carries the state; initial and final states are copied in and out.
    scan_panels(call, op,
                {.info = info,
                 .init = op.initial_state,
                 .fin = op.final_state,
                 .state = dense_scratch(call, op, N),
                 .cu_seqlens = cu_seqlens,
                 .slots = {},
                 .sequences = N,
                 .pool = N,
                 .in_place = false});
  } else {
    // The state is carried in final_state itself, or in dense scratch without one.
    const StateArg state =
        op.final_state ? state_arg(op.final_state, op.state_v_first) : dense_scratch(call, op, N);
    scan(call, op,
         {.info = info,
          .init = op.initial_state,
          .fin = none,
          .state = state,
          .cu_seqlens = cu_seqlens,
          .slots = {},
          .sequences = N,
          .pool = N,
          .in_place = false});
  }
  call.complete();
}

void gdn_recurrent(const ExecContext& exec, const GdnRecurrent& op) {
  check_kernel_ints(op, op.kName);
  Call call(exec, {{op.q, "q"},
                   {op.k, "k"},
                   {op.v, "v"},
                   {op.g, "g"},
                   {op.beta, "beta"},
                   {op.state, "state"},
                   {op.slots.indices, "state_indices"},
                   {op.sequences.cu_seqlens, "cu_seqlens"},
                   {op.A_log, "A_log"},
                   {op.dt_bias, "dt_bias"},
                   {op.o, "o"}});
  if (!call.active()) return;
  const IndexArg slots = call.index(op.slots.indices);
  const IndexArg cu_seqlens = call.index(op.sequences.cu_seqlens);
  const cl_mem info = prepare_tokens(call, op);
  const Tensor none;
  const StateArg state = state_arg(op.state, op.state_v_first);
  const ScanArgs args{.info = info,
                      .init = none,
                      .fin = none,
                      .state = state,
                      .cu_seqlens = cu_seqlens,
                      .slots = slots,
                      .sequences = op.sequences.count,
                      .pool = op.state.shape[0],
                      .in_place = true};
  if (panels_fit(call, op) && state.steps.s[3] == 1) {
    scan_panels(call, op, args);
  } else {
    scan(call, op, args);
  }
  call.complete();
}

std::span<const Kernel> gdn_kernels() {
  static constexpr Kernel kernels[] = {
      entry<GdnChunkFwd, &gdn_chunk_fwd>(),
      entry<GdnRecurrent, &gdn_recurrent>(),
      entry<GdnGating, &gdn_gating>(),
      entry<GdnChunkBwd, &gdn_chunk_bwd>(),
  };
  return kernels;
}

}  // namespace hops::opencl
