"""ctypes mirror of abi/include/hops/hops.h (ABI major 1) and of DLPack's structs.

Only layouts live here; behaviour is in _library (loading), _dlpack (tensors)
and _bindings (calls). Every hops struct starts with `struct_size`: fields a
newer minor appends are read only when that size covers them.
"""

import ctypes
import struct

ABI_MAJOR = 1

# ---- DLPack (0.6 and 1.x share DLTensor) -------------------------------------

# DLDeviceType codes that matter to hops (kDLROCM: a ROCm array is never read as a CUDA one).
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_OPENCL, DL_ROCM = 1, 2, 3, 4, 10
DL_DEVICE_NAMES = {DL_CPU: "cpu", DL_CUDA: "cuda", DL_CUDA_HOST: "cuda_host", DL_OPENCL: "opencl"}

# DLDataTypeCode values.
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT = 0, 1, 2, 4
FLOAT_DTYPES = {"float32": (DL_FLOAT, 32), "float16": (DL_FLOAT, 16), "bfloat16": (DL_BFLOAT, 16),
                "float64": (DL_FLOAT, 64)}  # name -> (code, bits)


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


# One DLTensor as bytes (data, device, ndim, dtype, shape, strides, byte_offset), followed
# by its shape, padding to a fixed place for the strides, and its strides: a block per ndim
# up to MAX_DIMS. The bindings pack argument tensors with these, not a ctypes object per field.
DLTENSOR_FORMAT = "<QiiiBBHQQQ"
MAX_DIMS = 16
DLTENSOR_BLOCKS = [struct.Struct(f"{DLTENSOR_FORMAT}{n}q{8 * (MAX_DIMS - n)}x{n}q") for n in range(MAX_DIMS + 1)]
DLTENSOR_HEAD_BYTES = struct.calcsize(DLTENSOR_FORMAT)


DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))),
]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    pass


DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", DLTensor),
]

DLPACK_FLAG_READ_ONLY = 1 << 0

# ---- hops.h --------------------------------------------------------------------

HOPS_OK = 0
HOPS_ERR_INVALID_ARGUMENT = 1
HOPS_ERR_UNSUPPORTED = 2

# hops_arg_kind
ARG_TENSOR_IN, ARG_TENSOR_OUT, ARG_TENSOR_INOUT, ARG_I64, ARG_F64, ARG_BOOL = range(6)
TENSOR_KINDS = (ARG_TENSOR_IN, ARG_TENSOR_OUT, ARG_TENSOR_INOUT)
KIND_NAMES = {ARG_TENSOR_IN: "in", ARG_TENSOR_OUT: "out", ARG_TENSOR_INOUT: "inout",
              ARG_I64: "i64", ARG_F64: "f64", ARG_BOOL: "bool"}

# HOPS_DTYPE_* bits, named as numpy/torch name them.
DTYPE_BITS = {"float32": 1 << 0, "float16": 1 << 1, "bfloat16": 1 << 2, "float64": 1 << 3,
              "int32": 1 << 4, "int64": 1 << 5}


HOPS_COMM_MPI, HOPS_COMM_NCCL = 1, 2


class hops_comm(ctypes.Structure):
    """A communicator of an engine the host runs (ABI 1.3): the expert-parallel ops' ranks."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("kind", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("size", ctypes.c_int32),
        ("handle", ctypes.c_void_p),
    ]


class hops_exec(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", DLDevice),
        ("stream", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("num_threads", ctypes.c_int32),
        ("comm", ctypes.POINTER(hops_comm)),  # 1.3; NULL: one rank
    ]


class hops_arg_desc(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("kind", ctypes.c_int32),
        ("optional", ctypes.c_int32),
        ("dtypes", ctypes.c_uint32),
        ("default_i64", ctypes.c_int64),
        ("default_f64", ctypes.c_double),
        ("shape", ctypes.c_char_p),
        ("doc", ctypes.c_char_p),
        ("since_minor", ctypes.c_uint32),  # 1.1: read only when struct_size covers it
    ]


class hops_op_desc(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("since_major", ctypes.c_uint32),
        ("since_minor", ctypes.c_uint32),
        ("doc", ctypes.c_char_p),
        ("num_args", ctypes.c_int32),
        ("args", ctypes.c_void_p),  # stride is args->struct_size, see op_arg()
        ("fn", ctypes.c_void_p),
    ]


class hops_value(ctypes.Union):
    _fields_ = [
        ("tensor", ctypes.POINTER(DLTensor)),
        ("i64", ctypes.c_int64),
        ("f64", ctypes.c_double),
        ("boolean", ctypes.c_bool),
    ]


class hops_backend_info(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("name", ctypes.c_char_p),
        ("device_type", ctypes.c_int32),
        ("available", ctypes.c_int32),
        ("detail", ctypes.c_char_p),
    ]


_OpPtr = ctypes.POINTER(hops_op_desc)


class hops_api(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("abi_major", ctypes.c_uint32),
        ("abi_minor", ctypes.c_uint32),
        ("version", ctypes.c_char_p),
        ("last_error", ctypes.CFUNCTYPE(ctypes.c_char_p)),
        ("status_name", ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_int32)),
        ("op_count", ctypes.CFUNCTYPE(ctypes.c_int32)),
        ("op_at", ctypes.CFUNCTYPE(_OpPtr, ctypes.c_int32)),
        ("find_op", ctypes.CFUNCTYPE(_OpPtr, ctypes.c_char_p)),
        ("supports", ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_char_p, DLDevice, DLDataType)),
        ("call", ctypes.CFUNCTYPE(ctypes.c_int32, _OpPtr, ctypes.POINTER(hops_exec),
                                  ctypes.POINTER(hops_value), ctypes.c_int32)),
        ("backend_count", ctypes.CFUNCTYPE(ctypes.c_int32)),
        ("backend_at", ctypes.CFUNCTYPE(ctypes.POINTER(hops_backend_info), ctypes.c_int32)),
        ("set_allocator", ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)),
        # 1.1: validates as call() does and asks the kernels, running nothing.
        ("supports_call", ctypes.CFUNCTYPE(ctypes.c_int32, _OpPtr, ctypes.POINTER(hops_exec),
                                           ctypes.POINTER(hops_value), ctypes.c_int32)),
    ]


ALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, DLDevice, ctypes.c_size_t, ctypes.c_void_p)
FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, DLDevice, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


class hops_allocator(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("ctx", ctypes.c_void_p),
        ("alloc", ALLOC_FN),
        ("free", FREE_FN),
    ]


def op_arg(op: hops_op_desc, index: int) -> hops_arg_desc:
    """hops_op_arg(): argument `index`, stepping by the provider's own struct size."""
    first = ctypes.cast(op.args, ctypes.POINTER(hops_arg_desc)).contents
    return hops_arg_desc.from_address(op.args + index * first.struct_size)


def has_field(struct, name: str) -> bool:
    """HOPS_HAS_FIELD: whether the provider's struct (its struct_size) holds `name`."""
    field = getattr(type(struct), name)
    return struct.struct_size >= field.offset + field.size


def text(raw) -> str:
    return raw.decode() if raw else ""
