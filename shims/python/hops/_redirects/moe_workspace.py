"""The MoE layer's intermediates, reused: the experts function's dispatched rows and expert
outputs (two [T*k, Hd] arrays: 256 MiB each at T = 4096, Hd = 2048, k = 8 in fp32).

A fresh array that large is a fresh mapping from the system allocator, and its first touch
page-faults every 4 KiB page: on the CPU that costs more than dispatch and combine
together (docs/PERFORMANCE.md, "MoE on the CPU"). Where autograd does not keep the
intermediates (no_grad, inference_mode, or nothing requiring grad), the experts function
takes them from this pool instead, on CPU tensors only (torch's CUDA caching allocator
already reuses device memory, in stream order).

The pool holds flat buffers per (dtype, device); a call borrows the two largest (a new one
where none is large enough) and gives them back once its combine has read them. A borrowed
buffer is out of the pool, so concurrent calls (threads) and nested ones never share one:
each takes its own, and the pool grows to as many as ran at once. Buffers grow to the
largest call seen, so the memory kept is 2 x T*k x Hd x itemsize of the largest layer call,
per call that ran concurrently (512 MiB for the demo's fp32 prefill of 4096 tokens, shared
by all layers). release() (hops.release_moe_workspace) frees it (buffers borrowed meanwhile
are dropped when given back); HOPS_MOE_WORKSPACE=0 turns the pool off (each call then
allocates, as the torch operators do)."""

import math
import os
import sys
import threading
from contextlib import contextmanager

SWITCH = "HOPS_MOE_WORKSPACE"


class Workspace:
    """Flat buffers per (dtype, device), borrowed whole by one call at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle = {}  # (dtype, device) -> [1-D tensors]
        self._generation = 0  # bumped by release(): buffers borrowed before it are not taken back

    @contextmanager
    def borrow(self, like, shape: tuple, count: int):
        """`count` arrays of `shape`, like's dtype and device, nobody else's until the block ends."""
        import torch

        key, need = (like.dtype, like.device), math.prod(shape)
        with self._lock:
            idle, generation = self._idle.setdefault(key, []), self._generation
            idle.sort(key=lambda b: b.numel())  # stable: the largest last, in the order given back
            taken = idle[len(idle) - min(count, len(idle)):]
            del idle[len(idle) - len(taken):]
        with torch.inference_mode(False):  # plain tensors, usable outside inference mode later
            buffers = [b if b.numel() >= need else torch.empty(need, dtype=like.dtype, device=like.device)
                       for b in taken]
            buffers += [torch.empty(need, dtype=like.dtype, device=like.device) for _ in range(count - len(taken))]
        try:
            yield [b[:need].view(shape) for b in buffers]
        finally:
            with self._lock:
                if generation == self._generation:
                    self._idle.setdefault(key, []).extend(buffers)

    def release(self) -> int:
        """Frees the idle buffers (and, when given back, those borrowed now); returns the bytes freed."""
        with self._lock:
            freed = self.nbytes()
            self._idle.clear()
            self._generation += 1
        return freed

    def nbytes(self) -> int:
        """Bytes of the idle buffers."""
        return sum(b.numel() * b.element_size() for buffers in self._idle.values() for b in buffers)


WORKSPACE = Workspace()


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def serves(x, *others) -> bool:
    """Whether a call on these tensors may take its intermediates from the pool: plain CPU
    torch tensors (no subclass: FakeTensor, DTensor, ...), not while torch.compile traces,
    and autograd keeping nothing (grad off or no tensor requiring it)."""
    torch = sys.modules.get("torch")
    if torch is None or type(x) is not torch.Tensor or not x.is_cpu or not enabled():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in others)):
        return False
    return not torch.compiler.is_compiling()


def release() -> int:
    """Frees the MoE workspace (hops.release_moe_workspace); returns the bytes freed."""
    return WORKSPACE.release()
