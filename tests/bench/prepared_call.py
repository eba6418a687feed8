"""A hops CUDA call prepared once (DLPack views kept alive) and then issued
through the generic api->call with a hops_exec naming the stream: cheap
enough to time microsecond kernels, and capturable in a CUDA graph."""

import ctypes

import torch

import hops.ops as hops_ops
from hops import _abi
from hops._dlpack import NO_SYNC


class Prepared:
    def __init__(self, name, **kwargs):
        self.binding = hops_ops.library().ops[name]
        self.values = (_abi.hops_value * len(self.binding.args))()
        self.views = []
        self.keep = kwargs
        for slot, arg in zip(self.values, self.binding.args):
            value = kwargs.get(arg.name, self.binding._default(arg))
            # Exported once and issued later on whichever stream the timing picks: no sync.
            self.binding._set(slot, arg, value, self.views, NO_SYNC)
        self.exec = _abi.hops_exec(ctypes.sizeof(_abi.hops_exec), _abi.DLDevice(2, 0), None, 0, 0)

    def __call__(self, stream=None):
        s = stream if stream is not None else torch.cuda.current_stream()
        self.exec.stream = ctypes.c_void_p(s.cuda_stream)
        status = self.binding._library.api.call(self.binding._desc, ctypes.byref(self.exec), self.values,
                                                len(self.binding.args))
        if status != _abi.HOPS_OK:
            raise self.binding._library.error(status)
