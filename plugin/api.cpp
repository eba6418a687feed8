// The one exported symbol and the function table behind it.
#include <cstring>

#include "registry.hpp"

namespace hops {
namespace {

int32_t op_count() { return static_cast<int32_t>(all_ops().size()); }

const hops_op_desc* op_at(int32_t index) {
  const auto ops = all_ops();
  return index >= 0 && static_cast<size_t>(index) < ops.size() ? &ops[index]->desc : nullptr;
}

const OpDef* op_of(const hops_op_desc* desc) {
  for (const OpDef* op : all_ops()) {
    if (&op->desc == desc) return op;
  }
  return nullptr;
}

const hops_op_desc* find_op(const char* name) {
  const OpDef* op = name ? Registry::get().find_op(name) : nullptr;
  return op ? &op->desc : nullptr;
}

int32_t supports(const char* name, DLDevice device, DLDataType dtype) {
  const OpDef* op = name ? Registry::get().find_op(name) : nullptr;
  const auto type = dtype_from_dl(dtype);
  if (!op || !type || !(op->desc.args[op->primary_arg].dtypes & dtype_bit(*type))) return 0;
  const std::optional<DLDevice> known = read_device(device);  // any int may come as the enum
  if (!known) return 0;
  for (const Backend* backend : Registry::get().backends_for(known->device_type)) {
    if (backend->find(name, *type)) return 1;
  }
  return 0;
}

// call() and supports_call(): the same checks, then run or only ask.
hops_status generic_call(const char* entry, const hops_op_desc* desc, const hops_exec* exec,
                         const hops_value* args, int32_t num_args, bool run) {
  const OpDef* op = op_of(desc);
  if (!op) {
    set_last_error(fmt::format(
        "{}: op descriptor is NULL or not one of this provider's (use find_op)", entry));
    return HOPS_ERR_NOT_FOUND;
  }
  if (num_args < 0 || (num_args > 0 && !args)) {
    set_last_error(fmt::format("{}: argument list is NULL or has a negative length", desc->name));
    return HOPS_ERR_INVALID_ARGUMENT;
  }
  return dispatch(*op, exec, {args, static_cast<size_t>(num_args)}, run);
}

hops_status call(const hops_op_desc* desc, const hops_exec* exec, const hops_value* args,
                 int32_t num_args) {
  return generic_call("call", desc, exec, args, num_args, true);
}

hops_status supports_call(const hops_op_desc* desc, const hops_exec* exec, const hops_value* args,
                          int32_t num_args) {
  return generic_call("supports_call", desc, exec, args, num_args, false);
}

int32_t backend_count() { return static_cast<int32_t>(Registry::get().backend_infos().size()); }

const hops_backend_info* backend_at(int32_t index) {
  const auto infos = Registry::get().backend_infos();
  return index >= 0 && static_cast<size_t>(index) < infos.size() ? &infos[index] : nullptr;
}

hops_status set_allocator(const hops_allocator* allocator) {
  if (allocator &&
      (allocator->struct_size < sizeof(hops_allocator) || !allocator->alloc || !allocator->free)) {
    set_last_error("set_allocator: argument 'allocator': needs struct_size, alloc and free");
    return HOPS_ERR_INVALID_ARGUMENT;
  }
  return guarded([&] { Registry::get().set_allocator(allocator); });
}

const hops_api kApi{
    sizeof(hops_api), HOPS_ABI_MAJOR, HOPS_ABI_MINOR, HOPS_VERSION, &last_error, &status_name,
    &op_count,        &op_at,         &find_op,       &supports,    &call,       &backend_count,
    &backend_at,      &set_allocator, &supports_call,
};

}  // namespace
}  // namespace hops

extern "C" __attribute__((visibility("default"))) const hops_api* hops_get_api(uint32_t abi_major) {
  return abi_major == HOPS_ABI_MAJOR ? &hops::kApi : nullptr;
}
