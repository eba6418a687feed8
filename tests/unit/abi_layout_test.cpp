// Pins the byte layout of every struct that crosses the ABI (x86-64 / LP64).
// A change here breaks every host built against an older hops.h: such a
// change needs a new major version, not an edit of this test.
#include <gtest/gtest.h>

#include <cstddef>

#include "hops/hops.h"

namespace {

#define EXPECT_LAYOUT(type, field, offset) \
  EXPECT_EQ(offsetof(type, field), offset) << #type "." #field

TEST(AbiLayout, Exec) {
  EXPECT_EQ(sizeof(hops_exec), 48u);
  EXPECT_LAYOUT(hops_exec, struct_size, 0u);
  EXPECT_LAYOUT(hops_exec, device, 8u);
  EXPECT_LAYOUT(hops_exec, stream, 16u);
  EXPECT_LAYOUT(hops_exec, flags, 24u);
  EXPECT_LAYOUT(hops_exec, num_threads, 32u);
  EXPECT_LAYOUT(hops_exec, comm, 40u);  // 1.3: past 1.2's size (40), not in its tail padding
}

TEST(AbiLayout, Comm) {
  EXPECT_EQ(sizeof(hops_comm), 32u);
  EXPECT_LAYOUT(hops_comm, struct_size, 0u);
  EXPECT_LAYOUT(hops_comm, kind, 8u);
  EXPECT_LAYOUT(hops_comm, rank, 12u);
  EXPECT_LAYOUT(hops_comm, size, 16u);
  EXPECT_LAYOUT(hops_comm, handle, 24u);
}

TEST(AbiLayout, ArgDesc) {
  EXPECT_EQ(sizeof(hops_arg_desc), 72u);
  EXPECT_LAYOUT(hops_arg_desc, struct_size, 0u);
  EXPECT_LAYOUT(hops_arg_desc, name, 8u);
  EXPECT_LAYOUT(hops_arg_desc, kind, 16u);
  EXPECT_LAYOUT(hops_arg_desc, optional, 20u);
  EXPECT_LAYOUT(hops_arg_desc, dtypes, 24u);
  EXPECT_LAYOUT(hops_arg_desc, default_i64, 32u);
  EXPECT_LAYOUT(hops_arg_desc, default_f64, 40u);
  EXPECT_LAYOUT(hops_arg_desc, shape, 48u);
  EXPECT_LAYOUT(hops_arg_desc, doc, 56u);
  EXPECT_LAYOUT(hops_arg_desc, since_minor, 64u);  // 1.1
}

TEST(AbiLayout, OpDesc) {
  EXPECT_EQ(sizeof(hops_op_desc), 56u);
  EXPECT_LAYOUT(hops_op_desc, struct_size, 0u);
  EXPECT_LAYOUT(hops_op_desc, name, 8u);
  EXPECT_LAYOUT(hops_op_desc, since_major, 16u);
  EXPECT_LAYOUT(hops_op_desc, since_minor, 20u);
  EXPECT_LAYOUT(hops_op_desc, doc, 24u);
  EXPECT_LAYOUT(hops_op_desc, num_args, 32u);
  EXPECT_LAYOUT(hops_op_desc, args, 40u);
  EXPECT_LAYOUT(hops_op_desc, fn, 48u);
}

TEST(AbiLayout, ValueAndInfo) {
  EXPECT_EQ(sizeof(hops_value), 8u);
  EXPECT_EQ(sizeof(hops_backend_info), 32u);
  EXPECT_LAYOUT(hops_backend_info, name, 8u);
  EXPECT_LAYOUT(hops_backend_info, device_type, 16u);
  EXPECT_LAYOUT(hops_backend_info, available, 20u);
  EXPECT_LAYOUT(hops_backend_info, detail, 24u);
  EXPECT_EQ(sizeof(hops_allocator), 32u);
  EXPECT_LAYOUT(hops_allocator, ctx, 8u);
  EXPECT_LAYOUT(hops_allocator, alloc, 16u);
  EXPECT_LAYOUT(hops_allocator, free, 24u);
}

TEST(AbiLayout, ApiTable) {
  EXPECT_LAYOUT(hops_api, struct_size, 0u);
  EXPECT_LAYOUT(hops_api, abi_major, 8u);
  EXPECT_LAYOUT(hops_api, abi_minor, 12u);
  EXPECT_LAYOUT(hops_api, version, 16u);
  EXPECT_LAYOUT(hops_api, last_error, 24u);
  EXPECT_LAYOUT(hops_api, status_name, 32u);
  EXPECT_LAYOUT(hops_api, op_count, 40u);
  EXPECT_LAYOUT(hops_api, op_at, 48u);
  EXPECT_LAYOUT(hops_api, find_op, 56u);
  EXPECT_LAYOUT(hops_api, supports, 64u);
  EXPECT_LAYOUT(hops_api, call, 72u);
  EXPECT_LAYOUT(hops_api, backend_count, 80u);
  EXPECT_LAYOUT(hops_api, backend_at, 88u);
  EXPECT_LAYOUT(hops_api, set_allocator, 96u);
  EXPECT_LAYOUT(hops_api, supports_call, 104u);  // 1.1
  EXPECT_EQ(sizeof(hops_api), 112u);
}

TEST(AbiLayout, DLPack) {
  // DLTensor is shared by DLPack 0.6 and 1.x; hosts of either pass it as is.
  EXPECT_EQ(sizeof(DLTensor), 48u);
  EXPECT_LAYOUT(DLTensor, data, 0u);
  EXPECT_LAYOUT(DLTensor, device, 8u);
  EXPECT_LAYOUT(DLTensor, ndim, 16u);
  EXPECT_LAYOUT(DLTensor, dtype, 20u);
  EXPECT_LAYOUT(DLTensor, shape, 24u);
  EXPECT_LAYOUT(DLTensor, strides, 32u);
  EXPECT_LAYOUT(DLTensor, byte_offset, 40u);
}

TEST(AbiLayout, HasField) {
  hops_exec old_exec{offsetof(hops_exec, flags), {kDLCPU, 0}, nullptr, 0, 0, nullptr};
  EXPECT_TRUE(HOPS_HAS_FIELD(&old_exec, hops_exec, stream));
  EXPECT_FALSE(HOPS_HAS_FIELD(&old_exec, hops_exec, flags));
}

}  // namespace
