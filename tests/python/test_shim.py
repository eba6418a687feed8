"""The generic bindings (issue 12): tensors packed straight from torch/numpy equal their
DLPack export, argument matching, call plans across threads, the stream/device policy
of each framework (torch CUDA, torch ROCm, cupy) as the bindings receive it, and
api->supports_call (ABI 1.1) with trace-time refusal under torch.compile."""

import ctypes
import sys
import threading
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import hops
import reference
from conftest import relative_error
from hops import _abi, _frameworks, torch_ops
from hops._dlpack import NO_SYNC, borrow
from hops.patch import Patcher, PatchReport
from hops.torch_ops import _common as torch_checks

SUPPORTS_CALL = hops.library().has_supports_call
needs_supports_call = pytest.mark.skipif(
    not SUPPORTS_CALL, reason=f"the provider ({hops.library().provider.path}, ABI {hops.info().abi}) has no "
    "api->supports_call (ABI 1.1); it lights up with a provider that has it")


def fields(tensor: _abi.DLTensor) -> tuple:
    return (tensor.data, tensor.device.device_type, tensor.device.device_id, tensor.ndim, tensor.dtype.code,
            tensor.dtype.bits, tensor.dtype.lanes, [tensor.shape[i] for i in range(tensor.ndim)],
            [tensor.strides[i] for i in range(tensor.ndim)] if tensor.strides else None, tensor.byte_offset)


def new_slot() -> _frameworks.Slot:
    return _frameworks.Slot(ctypes.create_string_buffer(_abi.DLTENSOR_BLOCKS[_abi.MAX_DIMS].size), 0)


def packed(value, slot=None) -> tuple:
    """value's DLTensor as the bindings pack it (None: they borrow it through __dlpack__),
    into `slot` (one a call plan keeps: what an earlier call left there) or a fresh one."""
    slot = slot or new_slot()
    read_only = _frameworks.framework_of(value).pack(value, slot)
    if read_only is None:
        return None
    return fields(_abi.DLTensor.from_buffer(slot.buffer)), read_only


def exported(value) -> tuple:
    view = borrow(value)
    try:
        strides = fields(view.tensor)
        if strides[8] is None:  # compact: the strides a C-contiguous array has
            strides = strides[:8] + (list(_frameworks.contiguous_strides(strides[7])),) + strides[9:]
        return strides, view.read_only
    finally:
        view.release()


def arrays():
    base = torch.randn(4, 6, 8)
    read_only = np.arange(12, dtype=np.float32).reshape(3, 4)
    read_only.setflags(write=False)
    return {
        "torch contiguous": base,
        "torch transposed view": base.transpose(0, 2),
        "torch offset slice": base[1:, 2:5, ::2],
        "torch size-1 dims, odd strides": torch.randn(8, 4)[:, :1],
        "torch bfloat16": base.bfloat16(),
        "torch int32": torch.arange(5, dtype=torch.int32),
        "torch 0-d": torch.tensor(3.0),
        "torch empty": torch.empty(0, 3),
        "torch requires grad": torch.randn(3, requires_grad=True),
        "numpy contiguous": np.ones((2, 3), np.float32),
        "numpy fortran": np.asfortranarray(np.ones((2, 3), np.float16)),
        "numpy negative strides": np.arange(10, dtype=np.int64)[::-2],
        "numpy read-only": read_only,
    }


@pytest.mark.parametrize("case", sorted(arrays()))
def test_packed_tensors_equal_their_dlpack_export(case):
    value = arrays()[case]
    assert packed(value) == exported(value)


def test_a_slot_reused_call_after_call_holds_each_export():
    """A call plan's slot keeps what the previous call wrote: a tensor of the same layout
    rewrites only the pointer, any other layout (or framework) the whole DLTensor."""
    values = arrays()
    values["torch contiguous, another"] = torch.randn(4, 6, 8)  # the layout of "torch contiguous"
    values["numpy contiguous, another"] = np.zeros((2, 3), np.float32)
    values["numpy contiguous, read-only"] = np.ones((2, 3), np.float32)
    values["numpy contiguous, read-only"].setflags(write=False)
    order = sorted(values)
    slot = new_slot()
    for case in [*order, *order[::-1], *(case for case in order for _ in range(2))]:
        assert packed(values[case], slot) == exported(values[case]), case


def test_what_cannot_be_packed_goes_through_dlpack():
    assert packed(np.zeros(3, np.bool_)) is None  # a dtype hops names no bits for
    odd = np.ndarray((3,), np.float32, buffer=np.zeros(16, np.uint8), strides=(5,))
    assert packed(odd) is None  # byte strides no multiple of the element size: numpy's export says
    assert packed(torch.zeros(3).to_sparse()) is None


def test_arguments_are_matched_like_a_python_signature(rng):
    op = hops.library().op("gated_rmsnorm")
    x, z = rng.standard_normal((2, 2, 8)).astype(np.float32)
    weight, y = np.ones(8, np.float32), np.zeros((2, 8), np.float32)
    op(x, z, weight=weight, y=y)  # eps: the descriptor's default
    assert relative_error(y, reference.gated_rmsnorm(x, z, weight, eps=op.args[-1].default)) <= 1e-5
    for args, kwargs, message in [((x, z, weight, y, 1e-6, 1), {}, "too many positional arguments"),
                                  ((x, z, weight, y), {"epsilon": 1.0}, "unexpected keyword argument 'epsilon'"),
                                  ((x, z, weight, y), {"z": z}, "multiple values for argument 'z'"),
                                  ((x,), {"weight": weight}, r"missing arguments \['z', 'y'\]")]:
        with pytest.raises(hops.HopsError, match=message):
            op(*args, **kwargs)


def test_call_plans_are_per_thread(rng):
    """Each thread packs its calls into its own block: concurrent calls keep their own tensors."""
    inputs = [tuple(torch.from_numpy(a) for a in (*rng.standard_normal((2, 3, 16)).astype(np.float32),
                                                   rng.standard_normal(16).astype(np.float32)))
              for _ in range(4)]
    expected = [hops.ops.gated_rmsnorm(*args) for args in inputs]
    failures = []

    def worker(index):
        for _ in range(300):
            if not torch.equal(hops.ops.gated_rmsnorm(*inputs[index]), expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ---- the stream / device policy, per framework ------------------------------------------

class _Stream:
    def __init__(self, handle):
        self.cuda_stream = self.ptr = handle


class _DeviceTensor:
    """What Torch.placement reads of a CUDA (or ROCm) tensor, on a machine without one."""
    is_cpu = False

    def __init__(self, index):
        self.device = torch.device("cuda", index)


@pytest.mark.parametrize("hip, device_type", [(None, _abi.DL_CUDA), ("6.2.0", _abi.DL_ROCM)])
def test_torch_cuda_and_rocm_tensors_run_on_torch_current_stream(monkeypatch, hip, device_type):
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index: _Stream(0x1000 + index))
    placement = _frameworks.Torch(torch).placement(_DeviceTensor(1))
    assert (placement.device_type, placement.device_id, placement.stream) == (device_type, 1, 0x1001)
    assert placement.export_stream == NO_SYNC and placement.allocator == "torch"
    assert _frameworks.Torch(torch).placement(torch.zeros(1)) is None  # CPU: exec NULL


@contextmanager
def fake_cupy(monkeypatch, device_type=_abi.DL_CUDA):
    """A cupy with arrays on device 1 and a current stream per device (0xC0 + device)."""
    current = [0]
    cupy = types.ModuleType("cupy")

    @contextmanager
    def device(index):
        previous, current[0] = current[0], index
        try:
            yield
        finally:
            current[0] = previous

    cupy.cuda = types.SimpleNamespace(Device=device, get_current_stream=lambda: _Stream(0xC0 + current[0]))

    class ndarray:  # noqa: N801 (cupy's name)
        streams = []

        def __init__(self, array):
            self.array, self.shape, self.dtype = array, array.shape, array.dtype

        def __dlpack_device__(self):
            return device_type, 1

        def __dlpack__(self, stream=None, **_):
            ndarray.streams.append(stream)
            return self.array.__dlpack__()  # host memory stands in for the device's

    cupy.ndarray = ndarray
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    yield cupy


class _Recorder:
    """The provider's API table with api->call replaced: records the exec it gets."""

    def __init__(self, api):
        self._api, self.execs = api, []

    def __getattr__(self, name):
        return getattr(self._api, name)

    def call(self, op, exec_, values, count):
        self.execs.append(None if exec_ is None else (exec_._obj.device.device_type, exec_._obj.device.device_id,
                                                      exec_._obj.stream or 0))
        return _abi.HOPS_OK


@pytest.mark.parametrize("device_type", [_abi.DL_CUDA, _abi.DL_ROCM])
def test_cupy_arrays_run_on_cupy_current_stream_of_their_device(monkeypatch, device_type):
    with fake_cupy(monkeypatch, device_type) as cupy:
        x = cupy.ndarray(np.ones((2, 8), np.float32))
        placement = _frameworks.framework_of(x).placement(x)
        assert (placement.device_type, placement.device_id, placement.stream) == (device_type, 1, 0xC1)
        library = hops.library()
        recorder = _Recorder(library.api)
        monkeypatch.setattr(library, "api", recorder)
        y = cupy.ndarray(np.zeros((2, 8), np.float32))
        library.op("gated_rmsnorm")(x, x, cupy.ndarray(np.ones(8, np.float32)), y)
        assert recorder.execs == [(device_type, 1, 0xC1)]
        assert cupy.ndarray.streams == [NO_SYNC] * 4  # no synchronisation: hops runs on cupy's stream


def test_torch_cpu_and_numpy_calls_pass_no_exec(monkeypatch, rng):
    library = hops.library()
    recorder = _Recorder(library.api)
    monkeypatch.setattr(library, "api", recorder)
    hops.ops.gated_rmsnorm(*rng.standard_normal((2, 2, 8)).astype(np.float32), np.ones(8, np.float32))
    hops.ops.gated_rmsnorm(torch.ones(2, 8), torch.ones(2, 8), torch.ones(8))
    assert recorder.execs == [None, None]


# ---- api->supports_call and refusal at trace time ----------------------------------------

def norm_call(weight_length=8, dtype=torch.float32):
    return torch.randn(2, 8, dtype=dtype), torch.randn(2, 8, dtype=dtype), torch.ones(weight_length, dtype=dtype)


@needs_supports_call
def test_supports_call_asks_without_running():
    x, z, weight = norm_call()
    y = torch.full((2, 8), 7.0)
    binding = hops.library().op("gated_rmsnorm")
    assert binding.check(x, z, weight, y) is True
    with pytest.raises(hops.HopsError, match="HOPS_ERR_INVALID_ARGUMENT.*weight"):
        binding.check(x, z, torch.ones(4), y)
    assert torch.equal(y, torch.full((2, 8), 7.0))  # asked, not run


def test_without_supports_call_check_has_no_answer(monkeypatch):
    monkeypatch.setattr(hops.library(), "has_supports_call", False)
    x, z, weight = norm_call()
    assert hops.library().op("gated_rmsnorm").check(x, z, torch.ones(4), torch.empty(2, 8)) is False


def fallback_norm(x, z, weight):
    """The host's own function the redirect falls back to (any shapes)."""
    return torch.tanh(x) * z.sum() + weight.sum()


def compiled_redirect(args):
    report = PatchReport()
    redirect = Patcher(report).redirect("norm", torch_ops.gated_rmsnorm, fallback_norm)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(redirect)(*args)
    torch._dynamo.reset()
    result = torch.compile(redirect, fullgraph=True)(*args)
    return explained, result, report


@needs_supports_call
def test_a_call_the_provider_refuses_falls_back_at_trace_time():
    """weight [4] for rows of 8: valid in type, device and dtype (the static checks pass),
    refused by the provider's validation; supports_call says so while torch.compile traces,
    so the host's function is traced instead of a hops op that would fail at run time."""
    args = norm_call(weight_length=4)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_INVALID_ARGUMENT"):
        torch_ops.gated_rmsnorm(*args)  # eager: the provider refuses the call itself
    explained, result, report = compiled_redirect(args)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    assert "torch.ops.hops" not in explained.graphs[0].code
    assert torch.allclose(result, fallback_norm(*args))
    assert report.fallbacks["norm"] >= 1 and "weight" in report.fallback_reasons["norm"]


def test_trace_time_refusal_without_supports_call_is_by_device_and_dtype(monkeypatch):
    """What the ABI 1.0 fallback gives at trace time: the device/dtype table (float64 has no kernel)."""
    monkeypatch.setattr(torch_checks, "_ASKS", False)
    args = norm_call(dtype=torch.float64)
    explained, result, report = compiled_redirect(args)
    assert "torch.ops.hops" not in explained.graphs[0].code and explained.graph_break_count == 0
    assert torch.allclose(result, fallback_norm(*args))
    args = norm_call()
    explained, result, _ = compiled_redirect(args)  # a call hops takes is traced as the hops op
    assert "torch.ops.hops.gated_rmsnorm" in explained.graphs[0].code
    assert torch.allclose(result, hops.ops.gated_rmsnorm(*args))


@needs_supports_call
def test_a_call_the_provider_takes_is_traced_as_the_hops_op():
    args = norm_call()
    explained, result, report = compiled_redirect(args)
    assert "torch.ops.hops.gated_rmsnorm" in explained.graphs[0].code
    assert torch.allclose(result, hops.ops.gated_rmsnorm(*args))
