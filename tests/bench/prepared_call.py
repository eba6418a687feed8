"""A hops CUDA call prepared once (OpBinding.prepare: its DLTensors packed, borrowed
arrays kept alive) and then issued through the generic api->call with a hops_exec
naming the stream: cheap enough to time microsecond kernels, and capturable in a
CUDA graph."""

import ctypes

import torch

import hops.ops as hops_ops
from hops import _abi


class Prepared:
    def __init__(self, name, **kwargs):
        self.call = hops_ops.library().ops[name].prepare(**kwargs)
        self.exec = _abi.hops_exec(ctypes.sizeof(_abi.hops_exec), _abi.DLDevice(_abi.DL_CUDA, 0), None, 0, 0)

    def __call__(self, stream=None):
        s = stream if stream is not None else torch.cuda.current_stream()
        self.exec.stream = ctypes.c_void_p(s.cuda_stream)
        self.call(ctypes.byref(self.exec))
