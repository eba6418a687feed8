// attn_decode (attn.cl: attn_fwd over the pages, split over the context and
// merged by attn_merge) and kv_cache_write.
#include <algorithm>
#include <cstring>
#include <optional>

#include "attn.hpp"
#include "checked_math.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "attn.cl";  // after common.cl

constexpr size_t kGroup = 256;       // work-items of attn_fwd
constexpr size_t kMergeGroup = 64;   // channels per work-group of attn_merge and kv_cache_write
constexpr int kMaxRows = 32;         // packed query rows per work-group
constexpr int kMaxKeys = 32;         // keys per tile
constexpr int64_t kSplitKeys = 256;  // a context split takes at least this many keys (capacity)
constexpr int64_t kMaxSplits = 64;   // and there are at most this many
// Splits until the work-groups (work-items on CPU devices) fill the compute units this often.
constexpr int64_t kGroupsPerUnit = 4;
// attn_decode_rows (CPU devices)
constexpr int64_t kLanes = 16;            // keys per tile: LANES
constexpr int64_t kMaxRowsHeadDim = 256;  // MAX_D
constexpr int64_t kItemRows = 32;         // packed rows per work-item: ROWS
constexpr size_t kRowsGroup = 1;          // work-items per work-group
constexpr size_t kCopyRowsGroup = 64;     // rows per work-group of kv_cache_write_rows

// block_table for the kernels: a device-resident one is read in place; a
// host-resident one (validated by the plugin) is copied row-major as int64
// into a pooled block, asynchronously from the block's own staging copy, as
// Call::index does for 1-D index tensors. Declared after the Call: the block
// stays busy until the call's last command.
class StagedTable {
 public:
  StagedTable(Call& call, const Tensor& table) : call_(call) {
    if (table.device.device_type == kDLOpenCL) {
      arg = {static_cast<cl_mem>(table.handle),
             element_offset(table),
             {{table.stride[0], table.stride[1]}},
             static_cast<cl_int>(dtype_size(table.dtype))};
      return;
    }
    const int64_t rows = table.shape[0], columns = table.shape[1];
    lease_.emplace(call.runtime().pool().acquire(
        scratch_bytes("opencl: block_table", rows, columns, sizeof(int64_t))));
    std::vector<std::byte>& staging = lease_->staging();
    staging.resize(static_cast<size_t>(rows * columns) * sizeof(int64_t));
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t b = 0; b < columns; ++b) {
        const int64_t value = read_index(table, n, b);
        std::memcpy(staging.data() + static_cast<size_t>(n * columns + b) * sizeof value, &value,
                    sizeof value);
      }
    }
    arg = {lease_->buffer(), 0, {{columns, 1}}, static_cast<cl_int>(sizeof(int64_t))};
    if (staging.empty()) return;
    const cl_event wait = call.last_event().get();
    EventHandle written;
    check(
        clEnqueueWriteBuffer(call.queue(), arg.buffer, CL_FALSE, 0, staging.size(), staging.data(),
                             wait ? 1 : 0, wait ? &wait : nullptr, written.receive()),
        "clEnqueueWriteBuffer(block_table)");
    call.set_last_event(std::move(written));
  }
  StagedTable(const StagedTable&) = delete;
  StagedTable& operator=(const StagedTable&) = delete;
  ~StagedTable() {
    if (lease_) lease_->busy_until(call_.last_event());
  }

  TableArg arg;

 private:
  Call& call_;
  std::optional<BufferPool::Lease> lease_;
};

// The tokens block_table can hold, saturated (the kernels clamp seq_lens to it).
int64_t table_capacity(const AttnDecode& op) {
  return try_mul(op.max_blocks, op.block_size).value_or(INT64_MAX);
}

// Context splits: enough work-groups to fill the device, each split at
// least kSplitKeys of the table's capacity.
int64_t split_count(const Call& call, const AttnDecode& op, int64_t groups) {
  const auto units = device_value<cl_uint>(call.runtime().device(), CL_DEVICE_MAX_COMPUTE_UNITS);
  const int64_t wanted = (kGroupsPerUnit * units + groups - 1) / std::max<int64_t>(groups, 1);
  const int64_t capacity = table_capacity(op);
  return std::clamp<int64_t>(wanted, 1, std::clamp<int64_t>(capacity / kSplitKeys, 1, kMaxSplits));
}

// CPU devices: attn_decode_rows (attn.cl) where the rows fit its private
// arrays (D % 16 == 0, D <= 256), its int key indices hold the table's
// tokens, and q, o and the caches have unit channel steps.
bool rows_fit(const Call& call, const AttnDecode& op) {
  return call.runtime().cpu_device() && op.D % kLanes == 0 && op.D <= kMaxRowsHeadDim &&
         op.q.step(-1) == 1 && op.o.step(-1) == 1 && op.k_cache.step(-1) == 1 &&
         op.v_cache.step(-1) == 1 && table_capacity(op) < INT32_MAX;
}

}  // namespace

void attn_decode(const ExecContext& exec, const AttnDecode& op) {
  Call call(exec, {{op.q, "q"},
                   {op.k_cache, "k_cache"},
                   {op.v_cache, "v_cache"},
                   {op.block_table, "block_table"},
                   {op.seq_lens, "seq_lens"},
                   {op.o, "o"}});
  if (!call.active()) return;
  const IndexArg seq_lens = call.index(op.seq_lens);
  const StagedTable block_table(call, op.block_table);
  const int64_t U = op.N * op.L;  // flat query tokens
  const int64_t rows = checked_product(op.kName, U, op.group());
  const auto D = static_cast<size_t>(op.D);
  const bool per_item = rows_fit(call, op);
  // A work-group takes the L G rows of one sequence where they fit.
  const int max_rows = static_cast<int>(std::min<int64_t>(kMaxRows, op.L * op.group()));
  const Tiles tiles = fit_tiles(local_floats_budget(call), max_rows, kMaxKeys, [&](int r, int k) {
    return (2 * r + k) * (D + 1) + static_cast<size_t>(r * k + 3 * r);
  });
  // Work-groups, or on CPU devices work-items, per kv head and split.
  const int64_t row_blocks = per_item ? op.N * ((op.L * op.group() + kItemRows - 1) / kItemRows)
                                      : static_cast<int64_t>(groups_for(rows, tiles.rows));
  const int64_t splits = split_count(call, op, row_blocks * op.Hkv);
  const cl_mem partial =
      splits > 1
          ? call.scratch(scratch_bytes(op.kName, splits, rows, op.Hkv, op.D + 1, sizeof(float)))
          : nullptr;
  const Tensor none;
  if (per_item) {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_decode_rows"));
    launch.tensor(op.q).value(strides4(op.q));
    launch.tensor(op.k_cache).value(strides4(op.k_cache));
    launch.tensor(op.v_cache).value(strides4(op.v_cache));
    launch.tensor(op.o).value(strides4(op.o));
    launch.index(seq_lens);
    table(launch, block_table.arg);
    launch.value(partial).value(cl_long{op.N}).value(cl_long{op.L});
    launch.value(cl_long{op.num_blocks}).value(cl_long{op.block_size});
    launch.value(cl_long{table_capacity(op)});
    launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
    launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
    launch.value(static_cast<cl_int>(splits));
    const size_t local = launch.group_size(kRowsGroup);
    const size_t groups[3] = {groups_for(row_blocks, local), static_cast<size_t>(op.Hkv),
                              static_cast<size_t>(splits)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  } else {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_fwd"));
    launch.tensor(op.q).value(strides4(op.q));
    launch.tensor(op.k_cache).value(strides4(op.k_cache));
    launch.tensor(op.v_cache).value(strides4(op.v_cache));
    launch.tensor(none).value(cl_long4{});  // no gate
    launch.tensor(op.o).value(strides4(op.o));
    launch.tensor(none).value(cl_long4{});  // no lse
    launch.index({}).index({}).index(seq_lens);
    table(launch, block_table.arg);
    launch.value(partial);
    launch.value(cl_long{U}).value(cl_long{op.L}).value(cl_long{0}).value(cl_long{op.N});
    launch.value(cl_long{op.num_blocks}).value(cl_long{op.block_size});
    launch.value(cl_long{table_capacity(op)});
    launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
    launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
    launch.value(cl_int{1}).value(cl_int{tiles.rows}).value(cl_int{tiles.keys});
    launch.value(static_cast<cl_int>(splits));
    launch.local_floats((2 * tiles.rows + tiles.keys) * (D + 1) +
                        static_cast<size_t>(tiles.rows * tiles.keys + 3 * tiles.rows));
    const size_t local = launch.group_size(kGroup);
    const size_t groups[3] = {static_cast<size_t>(row_blocks), static_cast<size_t>(op.Hkv),
                              static_cast<size_t>(splits)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  if (splits > 1) {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_merge"));
    launch.value(partial).value(static_cast<cl_int>(splits)).value(cl_long{U});
    launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.D)).value(cl_long{op.L});
    launch.tensor(op.o).value(strides4(op.o));
    const size_t local = launch.group_size(kMergeGroup);
    const size_t groups[2] = {groups_for(op.D, local),
                              static_cast<size_t>(checked_product(op.kName, U, op.Hq))};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  call.complete();
}

void kv_cache_write(const ExecContext& exec, const KvCacheWrite& op) {
  if (op.D > INT32_MAX || op.Hkv > INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED, "the opencl backend takes D and Hkv below 2^31");
  }
  Call call(exec, {{op.k, "k"},
                   {op.v, "v"},
                   {op.k_cache, "k_cache"},
                   {op.v_cache, "v_cache"},
                   {op.slot_mapping, "slot_mapping"}});
  if (!call.active()) return;
  const IndexArg slots = call.index(op.slot_mapping);
  // CPU devices copy a row per work-item; GPUs an element, neighbours coalesced.
  const bool per_row = call.runtime().cpu_device();
  Launch launch(
      call.kernel(kProgram, op.k.dtype, per_row ? "kv_cache_write_rows" : "kv_cache_write"));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.tensor(op.k_cache).value(strides4(op.k_cache));
  launch.tensor(op.v_cache).value(strides4(op.v_cache));
  launch.index(slots).value(cl_long{op.T}).value(static_cast<cl_int>(op.Hkv));
  launch.value(static_cast<cl_int>(op.D)).value(cl_long{op.block_size}).value(cl_long{op.slots()});
  const int64_t rows = checked_product(op.kName, op.T, op.Hkv);
  if (per_row) {
    const size_t local = launch.group_size(kCopyRowsGroup);
    const size_t groups = groups_for(rows, local);
    launch.run(call, 1, &groups, &local);
  } else {
    const size_t local = launch.group_size(kMergeGroup);
    const size_t groups[2] = {groups_for(op.D, local), static_cast<size_t>(rows)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  call.complete();
}

}  // namespace hops::opencl
