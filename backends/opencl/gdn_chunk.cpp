// The chunked (WY) GDN of gdn_chunk.cl: which form a call takes, the tile
// sizes on this device, the scratch and the launches.
#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "checked_math.hpp"
#include "gdn_tokens.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "gdn_chunk.cl";  // after common.cl

constexpr int64_t kChunks[] = {64, 32, 16};  // chunk lengths, the longest that fits first
constexpr int64_t kSlice = 16;               // SLICE in gdn_chunk.cl
constexpr int64_t kTile = 32;                // value columns per sweep work-group, at most
constexpr size_t kSweepGroup = 256;          // work-items of a sweep work-group, at most
constexpr size_t kPackGroup = 64;

// Local floats of the kernels whose work-group is one chunk (gdn_chunk.cl).
int64_t wy_floats(int64_t C) { return 3 * C + 2 * C * (C + 1) + 2 * kSlice * C; }
int64_t grads_floats(int64_t C) { return 2 * C * (C + 1) + 8 * C + kSlice * C; }
// ... and of the sweeps, for a tile of value columns.
int64_t states_floats(int64_t K, int64_t C, int64_t tile) { return (K + C) * tile + C; }
int64_t dstates_floats(int64_t K, int64_t C, int64_t tile) { return (K + 2 * C) * tile + 2 * C; }

// HOPS_OPENCL_GDN_FORM=chunked or scan forces a form (tests, benchmarks).
std::string_view forced_form() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_OPENCL_GDN_FORM");
  return value ? value : "";
}

int64_t slots(const GdnProblem& op, int64_t C) {
  return scratch_sum("opencl: gdn chunks", op.sequences.count, (op.B * op.T + C - 1) / C);
}

// The scratch both directions share, per slot: q^, k^ (per key head), G, W,
// U, P and the chunks' states (per value head).
struct ChunkScratch {
  cl_mem q, k, G, W, U, P, S;
};

ChunkScratch forward_scratch(Call& call, const GdnProblem& op, int64_t C) {
  constexpr std::string_view kWhat = "opencl: gdn chunk scratch";
  const int64_t S = slots(op, C), F = sizeof(float);
  return {call.scratch(scratch_bytes(kWhat, S, op.H, C, op.K, F)),
          call.scratch(scratch_bytes(kWhat, S, op.H, C, op.K, F)),
          call.scratch(scratch_bytes(kWhat, S, op.HV, C, F)),
          call.scratch(scratch_bytes(kWhat, S, op.HV, C, op.K, F)),
          call.scratch(scratch_bytes(kWhat, S, op.HV, C, op.V, F)),
          call.scratch(scratch_bytes(kWhat, S, op.HV, C, C, F)),
          call.scratch(scratch_bytes(kWhat, S, op.HV, op.K, op.V, F))};
}

void geometry(Launch& launch, const IndexArg& cu, const GdnProblem& op) {
  launch.index(cu).value(cl_long{op.sequences.count}).value(cl_long{op.T});
}

void sizes(Launch& launch, const GdnProblem& op, int64_t C) {
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
  launch.value(static_cast<cl_int>(C));
}

void pack(Call& call, const GdnProblem& op, cl_mem info, const IndexArg& cu, int64_t C,
          const ChunkScratch& s) {
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_pack"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.value(info);
  geometry(launch, cu, op);
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(C));
  launch.value(s.q).value(s.k);
  const size_t local = launch.group_size(kPackGroup);
  const size_t groups[2] = {static_cast<size_t>(slots(op, C)), static_cast<size_t>(op.H)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

void wy(Call& call, const GdnProblem& op, cl_mem info, const IndexArg& cu, int64_t C,
        const ChunkScratch& s, cl_mem T, cl_mem DK) {
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_wy"));
  launch.tensor(op.v).value(strides4(op.v));
  launch.value(info).value(s.q).value(s.k);
  geometry(launch, cu, op);
  sizes(launch, op, C);
  launch.value(static_cast<cl_float>(op.scale));
  launch.value(s.G).value(s.W).value(s.U).value(s.P).value(T).value(DK);
  launch.local_floats(static_cast<size_t>(wy_floats(C)));
  const size_t groups[2] = {static_cast<size_t>(slots(op, C)), static_cast<size_t>(op.HV)};
  const size_t locals[2] = {static_cast<size_t>(C), 1};
  launch.run(call, 2, groups, locals);
}

// A sweep's grid: (tiles of value columns, HV, N).
void run_sweep(Launch& launch, Call& call, const GdnProblem& op, const ChunkPlan& plan) {
  const size_t groups[3] = {static_cast<size_t>((op.V + plan.tile - 1) / plan.tile),
                            static_cast<size_t>(op.HV), static_cast<size_t>(op.sequences.count)};
  const size_t locals[3] = {static_cast<size_t>(plan.tile),
                            plan.sweep_group / static_cast<size_t>(plan.tile), 1};
  launch.run(call, 3, groups, locals);
}

void states(Call& call, const GdnProblem& op, const IndexArg& cu, const ChunkPlan& plan,
            const ChunkScratch& s, const Tensor& init, const Tensor& fin, bool transposed) {
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_states"));
  launch.value(s.k).index(cu).value(cl_long{op.T});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
  launch.value(static_cast<cl_int>(plan.chunk)).value(static_cast<cl_int>(plan.tile));
  launch.tensor(init).value(state_steps(init, op.state_v_first));
  launch.tensor(fin).value(state_steps(fin, op.state_v_first));
  launch.value(s.G).value(s.W).value(s.U).value(s.S).value(cl_int{transposed});
  launch.local_floats(static_cast<size_t>(states_floats(op.K, plan.chunk, plan.tile)));
  run_sweep(launch, call, op, plan);
}

// CPU devices: gdn_chunk_rows.cl, a work-item per (sequence, value head).
constexpr std::string_view kRowsProgram = "gdn_chunk_rows.cl";  // after common.cl
constexpr int64_t kRowsChunk = 64;                              // RC in gdn_chunk_rows.cl
constexpr int64_t kRowsVector = 16;       // its float16 columns: K and V multiples of this
constexpr int64_t kRowsWorkers = 128;     // work-items at most, each with its scratch
constexpr int64_t kRowsItemsPerUnit = 4;  // work-items per compute unit, at least, where G allows

// Tokens per sequence, on average, from which the chunked forms pay for
// themselves; decode and short speculative runs take the scan.
constexpr int64_t kMinTokens = 32;

bool enough_tokens(const GdnProblem& op) {
  return op.B * op.T >= kMinTokens * std::max<int64_t>(op.sequences.count, 1);
}

}  // namespace

bool rows_form(const Call& call, const GdnProblem& op) {
  const std::string_view form = forced_form();
  if (op.K % kRowsVector != 0 || op.V % kRowsVector != 0) return false;
  if (form == "rows") return true;
  return form.empty() && call.runtime().cpu_device() && enough_tokens(op);
}

void rows_forward(Call& call, const GdnChunkFwd& op, cl_mem info, const IndexArg& cu) {
  constexpr std::string_view kWhat = "opencl: gdn_chunk_fwd_rows scratch";
  const int64_t C = kRowsChunk, G = op.HV / op.H, N = op.sequences.count;
  // A work-item's value heads: the most (a divisor of G) that still leaves
  // kRowsItemsPerUnit items per compute unit, so the key work is shared without idling cores.
  const auto units = static_cast<int64_t>(
      device_value<cl_uint>(call.runtime().device(), CL_DEVICE_MAX_COMPUTE_UNITS));
  int64_t group = G;
  while (group > 1 && scratch_size(kWhat, N, op.H, G / group) < kRowsItemsPerUnit * units) {
    --group;
    while (G % group != 0) --group;  // the next divisor of G down
  }
  const int64_t per_worker =
      scratch_sum(kWhat, scratch_size(kWhat, group, op.K, op.V), scratch_size(kWhat, 3 * C, op.K),
                  scratch_size(kWhat, 2 * C, op.K + op.V), scratch_size(kWhat, C, op.V), 4 * C * C);
  const int64_t workers = std::min(scratch_size(kWhat, N, op.H, G / group), kRowsWorkers);
  Launch launch(call.kernel(kRowsProgram, op.q.dtype, "gdn_chunk_fwd_rows"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.value(info);
  launch.tensor(op.o).value(strides4(op.o));
  launch.tensor(op.initial_state).value(state_steps(op.initial_state, op.state_v_first));
  launch.tensor(op.final_state).value(state_steps(op.final_state, op.state_v_first));
  launch.index(cu).value(cl_long{N}).value(cl_long{op.T});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
  launch.value(static_cast<cl_float>(op.scale)).value(cl_int{op.use_qk_l2norm});
  launch.value(static_cast<cl_int>(group));
  launch.value(call.scratch(scratch_bytes(kWhat, workers, per_worker, sizeof(float))));
  launch.value(cl_long{per_worker});
  // Work-groups of one: each work-item walks its items alone, without barriers.
  const size_t groups = static_cast<size_t>(workers), local = 1;
  launch.run(call, 1, &groups, &local);
}

std::optional<ChunkPlan> chunk_plan(const Call& call, const GdnProblem& op, bool backward) {
  const std::string_view form = forced_form();
  if (form == "scan") return std::nullopt;
  Runtime& runtime = call.runtime();
  // The rule: this chunked form on GPUs (any device that is not a CPU) when a
  // sequence averages at least kMinTokens tokens: from there its parallelism
  // over chunks pays for its extra launches and scratch; decode and short
  // speculative runs take the scan. CPU devices take rows_form's kernel
  // forward and the token scan backward (on PoCL these GPU-shaped kernels
  // ran the forward 9-17x, the backward 1.0-1.3x slower than the scan,
  // docs/OPENCL.md).
  if (form != "chunked" && (runtime.cpu_device() || !enough_tokens(op))) {
    return std::nullopt;
  }
  const auto local_bytes = device_value<cl_ulong>(runtime.device(), CL_DEVICE_LOCAL_MEM_SIZE);
  const auto fits = [&](int64_t floats) {
    return static_cast<cl_ulong>(floats) * sizeof(float) <= local_bytes;
  };
  const size_t wy_limit = runtime.kernel(kProgram, op.q.dtype, "gdn_chunk_wy").max_work_group;
  const size_t grads_limit =
      backward ? runtime.kernel(kProgram, op.q.dtype, "gdn_chunk_grads").max_work_group : wy_limit;
  // The sweeps' work-group size serves gdn_chunk_states and, forward, gdn_chunk_output or,
  // backward, gdn_chunk_dstates.
  const size_t sweep_limit = std::min(
      runtime.kernel(kProgram, op.q.dtype, "gdn_chunk_states").max_work_group,
      runtime.kernel(kProgram, op.q.dtype, backward ? "gdn_chunk_dstates" : "gdn_chunk_output")
          .max_work_group);
  for (const int64_t C : kChunks) {
    if (!fits(wy_floats(C)) || (backward && !fits(grads_floats(C))) ||
        static_cast<size_t>(C) > std::min(wy_limit, grads_limit)) {
      continue;
    }
    int64_t tile = 1;
    while (tile < std::min(op.V, kTile)) tile *= 2;
    const auto sweep_fits = [&](int64_t t) {
      return fits(states_floats(op.K, C, t)) && (!backward || fits(dstates_floats(op.K, C, t)));
    };
    while (tile > 1 && !sweep_fits(tile)) tile /= 2;
    if (!sweep_fits(tile)) continue;
    size_t group = static_cast<size_t>(tile);
    while (group * 2 <= std::min(kSweepGroup, sweep_limit)) group *= 2;
    return ChunkPlan{C, tile, group};
  }
  return std::nullopt;
}

void chunked_forward(Call& call, const GdnChunkFwd& op, cl_mem info, const IndexArg& cu,
                     const ChunkPlan& plan) {
  const int64_t C = plan.chunk;
  const ChunkScratch s = forward_scratch(call, op, C);
  pack(call, op, info, cu, C, s);
  wy(call, op, info, cu, C, s, nullptr, nullptr);
  states(call, op, cu, plan, s, op.initial_state, op.final_state, false);
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_output"));
  launch.tensor(op.o).value(strides4(op.o));
  launch.value(s.q);
  geometry(launch, cu, op);
  sizes(launch, op, C);
  launch.value(static_cast<cl_int>(plan.tile)).value(static_cast<cl_float>(op.scale));
  launch.value(s.G).value(s.U).value(s.P).value(s.S);
  const size_t groups[3] = {static_cast<size_t>((op.V + plan.tile - 1) / plan.tile),
                            static_cast<size_t>(slots(op, C)), static_cast<size_t>(op.HV)};
  const size_t locals[3] = {static_cast<size_t>(plan.tile),
                            plan.sweep_group / static_cast<size_t>(plan.tile), 1};
  launch.run(call, 3, groups, locals);
}

void chunked_backward(Call& call, const GdnChunkBwd& op, cl_mem info, const IndexArg& cu,
                      const ChunkPlan& plan, cl_mem partial) {
  constexpr std::string_view kWhat = "opencl: gdn_chunk_bwd scratch";
  const int64_t C = plan.chunk, S = slots(op, C), F = sizeof(float);
  const ChunkScratch s = forward_scratch(call, op, C);
  const cl_mem T = call.scratch(scratch_bytes(kWhat, S, op.HV, C, C, F));
  const cl_mem DK = call.scratch(scratch_bytes(kWhat, S, op.HV, C, C, F));
  const cl_mem dU = call.scratch(scratch_bytes(kWhat, S, op.HV, C, op.V, F));
  const cl_mem dH = call.scratch(scratch_bytes(kWhat, S, op.HV, op.K, op.V, F));
  pack(call, op, info, cu, C, s);
  wy(call, op, info, cu, C, s, T, DK);
  const Tensor none;
  states(call, op, cu, plan, s, op.initial_state, none, true);
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_dstates"));
    launch.tensor(op.d_o).value(strides4(op.d_o));
    launch.value(s.q).value(s.k).index(cu).value(cl_long{op.T});
    sizes(launch, op, C);
    launch.value(static_cast<cl_int>(plan.tile)).value(static_cast<cl_float>(op.scale));
    launch.tensor(op.d_final_state).value(state_steps(op.d_final_state, op.state_v_first));
    launch.tensor(op.dh0).value(state_steps(op.dh0, op.state_v_first));
    launch.value(s.G).value(s.W).value(s.P).value(dU).value(dH);
    launch.local_floats(static_cast<size_t>(dstates_floats(op.K, C, plan.tile)));
    run_sweep(launch, call, op, plan);
  }
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_chunk_grads"));
  launch.tensor(op.v).value(strides4(op.v));
  launch.tensor(op.d_o).value(strides4(op.d_o));
  launch.tensor(op.dv).value(strides4(op.dv));
  launch.value(info).value(s.q).value(s.k);
  geometry(launch, cu, op);
  sizes(launch, op, C);
  launch.value(static_cast<cl_float>(op.scale));
  launch.value(s.G).value(s.W).value(s.U).value(dU).value(T).value(s.P).value(DK).value(s.S);
  launch.value(dH).value(partial);
  launch.local_floats(static_cast<size_t>(grads_floats(C)));
  const size_t groups[2] = {static_cast<size_t>(S), static_cast<size_t>(op.HV)};
  const size_t locals[2] = {static_cast<size_t>(C), 1};
  launch.run(call, 2, groups, locals);
}

}  // namespace hops::opencl
