// gdn_chunk_bwd: gdn_prepare (gdn.cl), then the chunked form (gdn_chunk.cpp)
// where chunk_plan takes the call, else the token scan: gdn_bwd_rows on CPU
// devices where V allows, gdn_bwd_scan elsewhere; then gdn_bwd_reduce
// (gdn_bwd.cl).
#include <algorithm>
#include <cmath>
#include <utility>

#include "checked_math.hpp"
#include "gdn.hpp"
#include "gdn_tokens.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "gdn_bwd.cl";  // after common.cl

constexpr size_t kColumns = 32;      // state columns per work-group of gdn_bwd_scan, at most
constexpr size_t kReduceGroup = 64;  // work-items per (token, key head) of gdn_bwd_reduce
constexpr int64_t kMinChunk = 8, kMaxChunk = 64;
constexpr std::string_view kRowsProgram = "gdn_bwd_rows.cl";  // after common.cl
constexpr int64_t kRowsVector = 16;    // its float16 columns: V a multiple of this
constexpr int64_t kRowsWorkers = 128;  // work-items at most, each with its scratch

size_t groups_for(int64_t items, size_t group) {
  return static_cast<size_t>((items + static_cast<int64_t>(group) - 1) /
                             static_cast<int64_t>(group));
}

// A checkpoint every `chunk` tokens, about sqrt(mean sequence length):
// balances the checkpoints (tokens / chunk states per value head) against
// the recomputed states (chunk per sequence and value head).
int64_t checkpoint_interval(int64_t tokens, int64_t sequences) {
  return std::clamp<int64_t>(
      std::llround(std::sqrt(static_cast<double>(tokens) /
                             static_cast<double>(std::max<int64_t>(sequences, 1)))),
      kMinChunk, kMaxChunk);
}

// gdn_bwd_scan's local memory: dS ([K][columns + 1]), q^, k^ and dg shares
// (K each), and four floats per column.
size_t scan_local_floats(const GdnProblem& op, size_t columns) {
  const auto K = static_cast<size_t>(op.K);
  return K * (columns + 1) + 3 * K + 4 * columns;
}

// Columns per work-group: kColumns (idle ones for a smaller V: a fixed size
// spares PoCL a compile per work-group size), halved until dS fits the
// device's local memory; none fit means K is too large.
size_t scan_columns(const Call& call, const Launch& launch, const GdnProblem& op) {
  const auto local_bytes =
      device_value<cl_ulong>(call.runtime().device(), CL_DEVICE_LOCAL_MEM_SIZE);
  size_t columns = launch.group_size(kColumns);
  while (columns > 1 && scan_local_floats(op, columns) * sizeof(float) > local_bytes) columns /= 2;
  if (scan_local_floats(op, columns) * sizeof(float) > local_bytes) {
    fail(HOPS_ERR_UNSUPPORTED,
         "opencl: K = {} needs {} bytes of local memory per work-group, the device has {}", op.K,
         scan_local_floats(op, columns) * sizeof(float), local_bytes);
  }
  return columns;
}

// The token-recurrent form: gdn_bwd_scan, which fills `partial` with the shares of
// ceil(V / columns) column blocks; returns the buffer and the block count.
std::pair<cl_mem, int64_t> token_scan(Call& call, const GdnChunkBwd& op, cl_mem info,
                                      const IndexArg& cu_seqlens) {
  const int64_t N = op.sequences.count, tokens = checked_product(op.kName, op.B, op.T);
  const int64_t chunk = checkpoint_interval(tokens, N);
  const int64_t head_floats = op.K * op.V;  // validated: HV K V <= 2^48
  const cl_mem checkpoints =
      call.scratch(scratch_bytes(op.kName, scratch_sum(op.kName, N, (tokens + chunk - 1) / chunk),
                                 op.HV, head_floats, sizeof(float)));
  const cl_mem recompute =
      call.scratch(scratch_bytes(op.kName, N, op.HV, chunk, head_floats, sizeof(float)));
  int64_t blocks = 0;
  cl_mem partial = nullptr;
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_bwd_scan"));
    const size_t columns = scan_columns(call, launch, op);
    blocks = static_cast<int64_t>(groups_for(op.V, columns));
    partial = call.scratch(scratch_bytes(op.kName, tokens, op.HV, blocks,
                                         scratch_sum(op.kName, op.K, op.K, 2), sizeof(float)));
    launch.tensor(op.q).value(strides4(op.q));
    launch.tensor(op.k).value(strides4(op.k));
    launch.tensor(op.v).value(strides4(op.v));
    launch.value(info);
    launch.tensor(op.d_o).value(strides4(op.d_o));
    launch.tensor(op.dv).value(strides4(op.dv));
    for (const Tensor* state : {&op.initial_state, &op.d_final_state, &op.dh0}) {
      launch.tensor(*state).value(state_steps(*state, op.state_v_first));
    }
    launch.index(cu_seqlens);
    launch.value(checkpoints).value(recompute).value(partial);
    launch.value(cl_long{op.T});
    launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
    launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
    launch.value(static_cast<cl_int>(chunk)).value(static_cast<cl_float>(op.scale));
    launch.local_floats(scan_local_floats(op, columns));
    const size_t groups[3] = {static_cast<size_t>(blocks), static_cast<size_t>(op.HV),
                              static_cast<size_t>(N)};
    const size_t locals[3] = {columns, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  return {partial, blocks};
}

// CPU devices, V a multiple of 16: gdn_bwd_rows (gdn_bwd_rows.cl), the same
// scan with a work-item per (sequence, value head) and explicit SIMD; fills
// `partial` with one block of shares.
bool rows_fit(const Call& call, const GdnProblem& op) {
  return call.runtime().cpu_device() && op.V % kRowsVector == 0;
}

void rows_scan(Call& call, const GdnChunkBwd& op, cl_mem info, const IndexArg& cu_seqlens,
               cl_mem partial) {
  const int64_t N = op.sequences.count, tokens = checked_product(op.kName, op.B, op.T);
  const int64_t chunk = checkpoint_interval(tokens, N);
  const int64_t head_floats = op.K * op.V;  // validated: HV K V <= 2^48
  // dS, q^ and k^ of a chunk (and a row past it), its tokens' e, its token states (and the one
  // after).
  const int64_t per_worker = scratch_sum(op.kName, scratch_size(op.kName, chunk + 2, head_floats),
                                         scratch_size(op.kName, 2 * (chunk + 1), op.K),
                                         scratch_size(op.kName, chunk, op.V));
  const int64_t workers = std::min(scratch_size(op.kName, N, op.HV), kRowsWorkers);
  Launch launch(call.kernel(kRowsProgram, op.q.dtype, "gdn_bwd_rows"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.value(info);
  launch.tensor(op.d_o).value(strides4(op.d_o));
  launch.tensor(op.dv).value(strides4(op.dv));
  for (const Tensor* state : {&op.initial_state, &op.d_final_state, &op.dh0}) {
    launch.tensor(*state).value(state_steps(*state, op.state_v_first));
  }
  launch.index(cu_seqlens);
  launch.value(
      call.scratch(scratch_bytes(op.kName, scratch_sum(op.kName, N, (tokens + chunk - 1) / chunk),
                                 op.HV, head_floats, sizeof(float))));
  launch.value(call.scratch(scratch_bytes(op.kName, workers, per_worker, sizeof(float))));
  launch.value(cl_long{per_worker}).value(partial);
  launch.value(cl_long{N}).value(cl_long{op.T});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(op.V));
  launch.value(static_cast<cl_int>(chunk)).value(static_cast<cl_float>(op.scale));
  // Work-groups of one: each work-item walks its pairs alone, without barriers.
  const size_t groups = static_cast<size_t>(workers), local = 1;
  launch.run(call, 1, &groups, &local);
}

// gdn_bwd_reduce: dq, dk, dg and dbeta from the shares of `blocks` column blocks
// per (token, value head).
void reduce(Call& call, const GdnChunkBwd& op, cl_mem info, cl_mem partial, int64_t blocks) {
  const int64_t tokens = checked_product(op.kName, op.B, op.T);
  Launch launch(call.kernel(kProgram, op.q.dtype, "gdn_bwd_reduce"));
  launch.value(partial).value(info);
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.dq).value(strides4(op.dq));
  launch.tensor(op.dk).value(strides4(op.dk));
  launch.any_float(op.dg).value(strides4(op.dg));
  launch.any_float(op.dbeta).value(strides4(op.dbeta));
  launch.value(cl_long{op.T});
  launch.value(static_cast<cl_int>(op.H)).value(static_cast<cl_int>(op.HV));
  launch.value(static_cast<cl_int>(op.K)).value(static_cast<cl_int>(blocks));
  launch.value(cl_int{op.use_qk_l2norm});
  const size_t local = launch.group_size(kReduceGroup);
  launch.local_floats(2 * static_cast<size_t>(op.K) + 2 * local);
  const size_t groups[2] = {static_cast<size_t>(tokens), static_cast<size_t>(op.H)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

}  // namespace

void gdn_chunk_bwd(const ExecContext& exec, const GdnChunkBwd& op) {
  check_kernel_ints(op, op.kName);
  Call call(exec, {{op.q, "q"},
                   {op.k, "k"},
                   {op.v, "v"},
                   {op.g, "g"},
                   {op.beta, "beta"},
                   {op.initial_state, "initial_state"},
                   {op.sequences.cu_seqlens, "cu_seqlens"},
                   {op.d_o, "do"},
                   {op.d_final_state, "d_final_state"},
                   {op.dq, "dq"},
                   {op.dk, "dk"},
                   {op.dv, "dv"},
                   {op.dg, "dg"},
                   {op.dbeta, "dbeta"},
                   {op.dh0, "dh0"}});
  if (!call.active()) return;
  const IndexArg cu_seqlens = call.index(op.sequences.cu_seqlens);
  const cl_mem info = prepare_tokens(call, op);
  if (const std::optional<ChunkPlan> plan = chunk_plan(call, op, true)) {
    const int64_t tokens = checked_product(op.kName, op.B, op.T);
    const cl_mem partial = call.scratch(scratch_bytes(
        op.kName, tokens, op.HV, scratch_sum(op.kName, op.K, op.K, 2), sizeof(float)));
    chunked_backward(call, op, info, cu_seqlens, *plan, partial);
    reduce(call, op, info, partial, 1);
  } else if (rows_fit(call, op)) {
    const int64_t tokens = checked_product(op.kName, op.B, op.T);
    const cl_mem partial = call.scratch(scratch_bytes(
        op.kName, tokens, op.HV, scratch_sum(op.kName, op.K, op.K, 2), sizeof(float)));
    rows_scan(call, op, info, cu_seqlens, partial);
    reduce(call, op, info, partial, 1);
  } else {
    const auto [partial, blocks] = token_scan(call, op, info, cu_seqlens);
    reduce(call, op, info, partial, blocks);
  }
  call.complete();
}

}  // namespace hops::opencl
