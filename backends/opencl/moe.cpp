// The MoE family's index tables, moe_route (moe.cl) and the family's list of
// kernels.
#include "moe.hpp"

#include <climits>
#include <cstring>
#include <vector>

#include "checked_math.hpp"
#include "family.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "moe.cl";  // after common.cl

constexpr size_t kRouteGroup = 64;  // tokens per work-group of moe_route

int64_t rows_of(const Tensor& t) { return t.ndim > 0 ? t.shape[0] : 1; }
int64_t columns_of(const Tensor& t) { return t.ndim > 1 ? t.shape[1] : 1; }

MoeIndex in_place(const Tensor& t) {
  return {t.numel() > 0 ? static_cast<cl_mem>(t.handle) : nullptr,
          element_offset(t),
          {{t.ndim > 0 ? t.stride[0] : 0, t.ndim > 1 ? t.stride[1] : 0}},
          static_cast<cl_int>(dtype_size(t.dtype))};
}

// A row-major int64 copy of `t` in a pooled block.
MoeIndex staged(const Tensor& t, cl_mem buffer) {
  return {buffer, 0, {{t.ndim > 1 ? columns_of(t) : 1, 1}}, static_cast<cl_int>(sizeof(int64_t))};
}

size_t staged_bytes(const Tensor& t) {
  return scratch_bytes("opencl: index tensor", rows_of(t), columns_of(t), sizeof(int64_t));
}

// The kernels count slots and rows in int: HOPS_ERR_UNSUPPORTED from 2^31 on.
void check_moe_rows(const char* name, int64_t T, int64_t k) {
  const std::optional<int64_t> slots = try_mul(T, k);
  if (!slots || *slots >= INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the opencl backend supports fewer than 2^31 - 1 slots (rows) T*k", name);
  }
}

// The accepts checks of supports_call. Plain functions, not templates: GCC
// with -fsanitize=undefined rejects a function template's address in the
// constant expression of kernel<>() (backend.hpp).
void experts_limit(const char* name, int64_t E) {
  if (E >= INT32_MAX - 1) {  // dispatch's bucket E counts the dropped slots
    fail(HOPS_ERR_UNSUPPORTED, "{}: the opencl backend supports fewer than 2^31 - 2 experts", name);
  }
}

void accepts_route(const MoeRoute& op) {
  check_moe_rows(op.kName, op.T, op.k);
  experts_limit(op.kName, op.E);
}
void accepts_dispatch(const MoeDispatch& op) {
  check_moe_rows(op.kName, op.T, op.k);
  experts_limit(op.kName, op.E);
}
void accepts_expert_mlp(const MoeExpertMlp& op) {
  check_moe_rows(op.kName, op.R, 1);
  experts_limit(op.kName, op.E);
}
void accepts_expert_mlp_bwd(const MoeExpertMlpBwd& op) {
  check_moe_rows(op.kName, op.R, 1);
  experts_limit(op.kName, op.E);
}
void accepts_combine(const MoeCombine& op) { check_moe_rows(op.kName, op.T, op.k); }
void accepts_dispatch_bwd(const MoeDispatchBwd& op) { check_moe_rows(op.kName, op.T, op.k); }
void accepts_combine_bwd(const MoeCombineBwd& op) { check_moe_rows(op.kName, op.T, op.k); }

// entry() (family.hpp) with the size check that supports_call asks.
template <class Op, void (*fn)(const ExecContext&, const Op&), void (*accepts)(const Op&)>
constexpr Kernel checked_entry() {
  return kernel<Op, &named<Op, fn>, accepts>(HOPS_DTYPE_FLOATS);
}

}  // namespace

MoeIndexInput::MoeIndexInput(Call& call, const Tensor& t) : call_(call) {
  if (!host_accessible(t.device)) {
    arg = in_place(t);
    return;
  }
  lease_.emplace(call.runtime().pool().acquire(staged_bytes(t)));
  std::vector<std::byte>& staging = lease_->staging();
  const int64_t rows = rows_of(t), columns = columns_of(t);
  staging.resize(static_cast<size_t>(rows * columns) * sizeof(int64_t));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      const int64_t value = t.ndim > 1 ? read_index(t, i, j) : read_index(t, i);
      std::memcpy(staging.data() + static_cast<size_t>(i * columns + j) * sizeof value, &value,
                  sizeof value);
    }
  }
  arg = staged(t, lease_->buffer());
  if (staging.empty()) return;
  // Asynchronous: `staging` lives in the block, busy until the call's last command.
  const cl_event wait = call.last_event().get();
  EventHandle written;
  check(clEnqueueWriteBuffer(call.queue(), arg.buffer, CL_FALSE, 0, staging.size(), staging.data(),
                             wait ? 1 : 0, wait ? &wait : nullptr, written.receive()),
        "clEnqueueWriteBuffer(index tensor)");
  call.set_last_event(std::move(written));
}

MoeIndexInput::~MoeIndexInput() {
  if (lease_) lease_->busy_until(call_.last_event());
}

MoeIndexOutput::MoeIndexOutput(Call& call, const Tensor& t) : call_(call), tensor_(t) {
  if (!host_accessible(t.device)) {
    arg = in_place(t);
    return;
  }
  lease_.emplace(call.runtime().pool().acquire(staged_bytes(t)));
  arg = staged(t, lease_->buffer());
}

MoeIndexOutput::~MoeIndexOutput() {
  if (lease_) lease_->busy_until(call_.last_event());
}

void MoeIndexOutput::finish() const {
  const int64_t rows = rows_of(tensor_), columns = columns_of(tensor_);
  if (!lease_ || rows * columns == 0) return;
  std::vector<int64_t> values(static_cast<size_t>(rows * columns));
  const cl_event wait = call_.last_event().get();
  check(clEnqueueReadBuffer(call_.queue(), arg.buffer, CL_TRUE, 0, values.size() * sizeof(int64_t),
                            values.data(), wait ? 1 : 0, wait ? &wait : nullptr, nullptr),
        "clEnqueueReadBuffer(index output to the host)");
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < columns; ++j) {
      const int64_t at = i * tensor_.stride[0] + (tensor_.ndim > 1 ? j * tensor_.stride[1] : 0);
      const int64_t value = values[static_cast<size_t>(i * columns + j)];
      if (tensor_.dtype == DType::i32) {
        tensor_.data<int32_t>()[at] = static_cast<int32_t>(value);
      } else {
        tensor_.data<int64_t>()[at] = value;
      }
    }
  }
}

void moe_route(const ExecContext& exec, const MoeRoute& op) {
  Call call(exec,
            {{op.logits, "logits"}, {op.topk_weights, "topk_weights"}, {op.topk_ids, "topk_ids"}});
  if (!call.active()) return;
  const MoeIndexOutput ids(call, op.topk_ids);
  Launch launch(call.kernel(kProgram, op.logits.dtype, "moe_route"));
  launch.tensor(op.logits).value(cl_long2{{op.logits.stride[0], op.logits.stride[1]}});
  launch.any_float(op.topk_weights);
  launch.value(cl_long2{{op.topk_weights.stride[0], op.topk_weights.stride[1]}});
  moe_index(launch, ids.arg);
  launch.value(cl_long{op.T}).value(static_cast<cl_int>(op.E)).value(static_cast<cl_int>(op.k));
  launch.value(cl_int{op.normalize}).value(cl_int{op.scoring == MoeScoring::sigmoid});
  const size_t local = launch.group_size(kRouteGroup);
  const size_t groups = op.k > 0 ? groups_for(op.T, local) : 0;
  launch.run(call, 1, &groups, &local);
  ids.finish();
  call.complete();
}

std::span<const Kernel> moe_kernels() {
  static constexpr Kernel kernels[] = {
      checked_entry<MoeRoute, &moe_route, &accepts_route>(),
      checked_entry<MoeDispatch, &moe_dispatch, &accepts_dispatch>(),
      checked_entry<MoeExpertMlp, &moe_expert_mlp, &accepts_expert_mlp>(),
      checked_entry<MoeCombine, &moe_combine, &accepts_combine>(),
      checked_entry<MoeDispatchBwd, &moe_dispatch_bwd, &accepts_dispatch_bwd>(),
      checked_entry<MoeExpertMlpBwd, &moe_expert_mlp_bwd, &accepts_expert_mlp_bwd>(),
      checked_entry<MoeCombineBwd, &moe_combine_bwd, &accepts_combine_bwd>(),
  };
  return kernels;
}

}  // namespace hops::opencl
