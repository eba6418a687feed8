"""The CUDA backend's expert-parallel ops (issue 16's NCCL path) on one GPU: moe_ep_dispatch /
moe_ep_combine with an NCCL communicator of one rank (ncclCommInitRank from ncclGetUniqueId) and
with exec->comm NULL (this device alone), against the single-device moe_dispatch / moe_combine
on the same GPU, bitwise, through the generic C-ABI binding (hops.ops.library().op).

Sweep: f32, f16, bf16; int32 and int64 ids; dropped slots; every slot to one expert; E = 1;
T = 0; Hd = 33 (the element-wise row moves) and a transposed x; a capacity C above the rows
(zero tail) and below them (the rows past the peer block's C / W dropped: row_map -1 there,
counts what arrived, y as moe_combine with those slots dropped). Then dispatch + combine captured
in a CUDA graph (capture fails on any host synchronisation) and replayed on new inputs, equal to
eager calls bit for bit.

Outputs are poisoned first (NaN, index 12345), so an unwritten element fails.

Usage (repo root, after building hops and hops_cuda in BUILD):
  HOPS_LIBRARY=BUILD/plugin/libhops.so PYTHONPATH=shims/python python3 tests/bench/cuda_moe_ep_check.py
NCCL: HOPS_NCCL_LIBRARY, else the nvidia-nccl wheel's lib/libnccl.so.2 beside torch, else
libnccl.so.2 on the loader's path; hops opens the same file. --device cpu runs the lone-rank
cases on the CPU backend (a check of this script off the GPU: no NCCL, no graphs, no overflow,
which the CPU path answers with an error instead). Prints PASS/FAIL per case, exits 1 on any
failure."""

import argparse
import contextlib
import ctypes
import importlib.util
import os
import sys

import torch

dev = torch.device("cuda")
RESULTS = []
SENTINEL = 12345


def nccl_library():
    """The libnccl.so.2 to use, for this script and (HOPS_NCCL_LIBRARY) for hops."""
    path = os.environ.get("HOPS_NCCL_LIBRARY")
    if not path:
        try:
            spec = importlib.util.find_spec("nvidia.nccl")
        except ModuleNotFoundError:  # no nvidia-* wheels at all
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(folder, "lib", "libnccl.so.2")
            if os.path.exists(candidate):
                path = candidate
        path = path or "libnccl.so.2"
        os.environ["HOPS_NCCL_LIBRARY"] = path  # read when hops first loads libhops_cuda.so
    return path, ctypes.CDLL(path)


class UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]  # NCCL_UNIQUE_ID_BYTES


def nccl_comm_of_one(lib):
    """An NCCL communicator of one rank on the current device: ncclComm_t as an int."""
    lib.ncclGetUniqueId.argtypes = [ctypes.POINTER(UniqueId)]
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, UniqueId, ctypes.c_int]
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    uid, comm = UniqueId(), ctypes.c_void_p()
    for status in (lib.ncclGetUniqueId(ctypes.byref(uid)), lib.ncclCommInitRank(ctypes.byref(comm), 1, uid, 0)):
        if status != 0:
            raise RuntimeError(f"NCCL error {status}: {lib.ncclGetErrorString(status).decode()}")
    version = ctypes.c_int()
    lib.ncclGetVersion(ctypes.byref(version))
    return comm.value, version.value


def op(name):
    import hops.ops as hops_ops
    return hops_ops.library().op(name)


def poison(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=dev)


def poison_index(shape, dtype):
    return torch.full(shape, SENTINEL, dtype=dtype, device=dev)


def bitwise(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        view = {2: torch.int16, 4: torch.int32}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def report(name, checks):
    ok = all(checks.values())
    RESULTS.append(ok)
    bad = [key for key, good in checks.items() if not good]
    print(f"{'PASS' if ok else 'FAIL'} {name:<78} {'' if ok else 'differ: ' + ' '.join(bad)}", flush=True)


def make_ids(T, k, E, pattern, drop_every, idx):
    ids = torch.full((T, k), E // 2, dtype=torch.int64)
    if pattern == "topk":
        for t in range(T):
            ids[t] = torch.randperm(E)[:k] if k <= E else torch.randint(0, E, (k,))
    if drop_every:
        ids.view(-1)[drop_every - 1::drop_every] = -1
    return ids.to(idx).to(dev)


def communicator(comm):
    if comm is None:
        return contextlib.nullcontext()
    from hops._bindings import communicating
    return communicating(comm)


def ep_dispatch(comm, x, ids, E, C, W=1):
    T, k = ids.shape
    out = dict(rows=poison((C, x.shape[1]), x.dtype), counts=poison_index((E // W,), ids.dtype),
               row_map=poison_index((T, k), ids.dtype), send_counts=poison_index((E,), ids.dtype),
               recv_counts=poison_index((W, E // W), ids.dtype))
    with communicator(comm):
        op("moe_ep_dispatch")(x=x, topk_ids=ids, **out)
    return out


def ep_combine(comm, expert_out, handle, w):
    y = poison((handle["row_map"].shape[0], expert_out.shape[1]), expert_out.dtype)
    with communicator(comm):
        op("moe_ep_combine")(expert_out=expert_out, row_map=handle["row_map"], topk_weights=w,
                             send_counts=handle["send_counts"], recv_counts=handle["recv_counts"], y=y)
    return y


def expert_outputs(rows, counts):
    """A stand-in expert: row r of expert e times (1 + e/64), the same arithmetic on both paths."""
    scale = torch.repeat_interleave(1 + torch.arange(len(counts), device=dev, dtype=torch.float32) / 64,
                                    counts.long())
    out = rows.clone()
    out[: len(scale)] = (out[: len(scale)].float() * scale[:, None]).to(rows.dtype)
    return out


def expected(x, ids, w, E, C):
    """The single-device ops, with what a capacity C (one rank: one block of C rows) drops."""
    T, k = ids.shape
    Hd = x.shape[1]
    rows = poison((T * k, Hd), x.dtype)
    counts, row_map = poison_index((E,), ids.dtype), poison_index((T, k), ids.dtype)
    op("moe_dispatch")(x=x, topk_ids=ids, rows=rows, counts=counts, row_map=row_map)
    kept = int(counts.sum())
    fits = min(kept, C)
    want_rows = torch.zeros(C, Hd, dtype=x.dtype, device=dev)
    want_rows[:fits] = rows[:fits]
    before = torch.cumsum(counts.long(), 0) - counts.long()
    arrived = (C - before).clamp(min=0).minimum(counts.long()).to(ids.dtype)
    dropped_map = torch.where(row_map.long() >= C, torch.full_like(row_map, -1), row_map)
    y = poison((T, Hd), x.dtype)
    op("moe_combine")(rows=expert_outputs(rows, counts), row_map=dropped_map, topk_weights=w, y=y)
    return dict(rows=want_rows, counts=arrived, row_map=dropped_map, send_counts=counts,
                recv_counts=arrived[None], y=y)


def check_case(label, comms, T, k, E, Hd, dtype=torch.float32, idx=torch.int64, drop_every=0, pattern="topk",
               C=None, transposed=False, w_dtype=None):
    C = T * k if C is None else C
    ids = make_ids(T, k, E, pattern, drop_every, idx)
    if transposed:
        x = torch.randn(Hd, T, device=dev).to(dtype).t()
    else:
        x = torch.randn(T, Hd, device=dev).to(dtype)
    w = torch.rand(T, k, device=dev).to(w_dtype or dtype)
    want = expected(x, ids, w, E, C)
    for comm_name, comm in comms:
        try:
            got = ep_dispatch(comm, x, ids, E, C)
            got["y"] = ep_combine(comm, expert_outputs(got["rows"], got["counts"]), got, w)
        except Exception as error:  # the call failed: report it and go on
            report(f"{comm_name:<5} {label}", {f"call ({error})": False})
            continue
        report(f"{comm_name:<5} {label}", {key: bitwise(got[key], want[key]) for key in want})


def check_graph(label, comm_name, comm, T, k, E, Hd, dtype, idx, C):
    """dispatch + combine captured once, replayed on two new inputs: equal to eager calls."""
    x = torch.randn(T, Hd, device=dev).to(dtype)
    ids = make_ids(T, k, E, "topk", 7, idx)
    w = torch.rand(T, k, device=dev).to(dtype)
    handle = ep_dispatch(comm, x, ids, E, C)  # the static outputs (and a warm-up, out of capture)
    expert_out = handle["rows"] * 2
    y = ep_combine(comm, expert_out, handle, w)

    def step():
        with communicator(comm):
            op("moe_ep_dispatch")(x=x, topk_ids=ids, **{key: handle[key] for key in
                                                          ("rows", "counts", "row_map", "send_counts", "recv_counts")})
            torch.mul(handle["rows"], 2, out=expert_out)
            op("moe_ep_combine")(expert_out=expert_out, row_map=handle["row_map"], topk_weights=w,
                                 send_counts=handle["send_counts"], recv_counts=handle["recv_counts"], y=y)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except Exception as error:  # a host synchronisation (or anything else) broke the capture
        report(f"{comm_name:<5} graph {label}", {f"capture ({error})": False})
        return
    for replay in range(2):
        x.copy_(torch.randn(T, Hd, device=dev).to(dtype))
        ids.copy_(make_ids(T, k, E, "one" if replay else "topk", 5, idx))
        w.copy_(torch.rand(T, k, device=dev).to(dtype))
        graph.replay()
        torch.cuda.synchronize()
        eager = ep_dispatch(comm, x, ids, E, C)
        eager["y"] = ep_combine(comm, eager["rows"] * 2, eager, w)
        got = {**handle, "y": y}
        report(f"{comm_name:<5} graph replay {replay} {label}", {key: bitwise(got[key], eager[key]) for key in eager})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global dev
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.manual_seed(0)
    comms = [("lone", None)]
    if gpu:
        torch.cuda.set_device(0)
        torch.zeros(1, device=dev)  # the context NCCL joins
        path, lib = nccl_library()
        handle, version = nccl_comm_of_one(lib)
        print(f"NCCL {version} from {path}")
        from hops import _abi
        comms.append(("nccl", _abi.hops_comm(ctypes.sizeof(_abi.hops_comm), _abi.HOPS_COMM_NCCL, 0, 1, handle)))
    import hops
    for backend in hops.info().backends:
        print(f"backend {backend.name}: {backend.detail}")

    f32, f16, bf16, i32, i64 = torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64
    cases = [
        dict(label="T=64 k=4 E=16 Hd=128 f32 i64", T=64, k=4, E=16, Hd=128),
        dict(label="T=37 k=2 E=8 Hd=33 f32 i32 drops (element-wise rows)", T=37, k=2, E=8, Hd=33, idx=i32,
             drop_every=3),
        dict(label="T=100 k=8 E=64 Hd=256 bf16 i64 drops, C = T*k + 7 (zero tail)", T=100, k=8, E=64, Hd=256,
             dtype=bf16, drop_every=5, C=807),
        dict(label="T=50 k=4 E=20 Hd=48 f16 i32 transposed x, weights f32", T=50, k=4, E=20, Hd=48, dtype=f16,
             idx=i32, transposed=True, w_dtype=f32),
        dict(label="T=75 k=8 E=64 Hd=64 f32 one expert (600 rows)", T=75, k=8, E=64, Hd=64, pattern="one"),
        dict(label="T=33 k=4 E=9 Hd=24 bf16 all dropped", T=33, k=4, E=9, Hd=24, dtype=bf16, drop_every=1),
        dict(label="T=1 k=1 E=1 Hd=8 f32 i32", T=1, k=1, E=1, Hd=8, idx=i32),
        dict(label="T=0 k=2 E=4 Hd=16 f32, C = 4", T=0, k=2, E=4, Hd=16, C=4),
        dict(label="T=512 k=8 E=128 Hd=2048 bf16 i64", T=512, k=8, E=128, Hd=2048, dtype=bf16),
    ]
    if gpu:  # past the capacity: the CUDA path drops, the CPU path fails the call
        cases += [
            dict(label="T=64 k=4 E=16 Hd=64 f32 C = 100 < 256 rows (dropped past C)", T=64, k=4, E=16, Hd=64,
                 C=100),
            dict(label="T=40 k=2 E=8 Hd=32 bf16 i32 one expert, C = 50 (dropped past C)", T=40, k=2, E=8, Hd=32,
                 dtype=bf16, idx=i32, pattern="one", C=50),
        ]
    for case in cases:
        check_case(comms=comms, **case)
    if gpu:
        for name, comm in comms:
            check_graph("T=128 k=8 E=32 Hd=256 f32 i64", name, comm, 128, 8, 32, 256, f32, i64, 1024)
            check_graph("T=96 k=4 E=16 Hd=128 bf16 i32, C = 200", name, comm, 96, 4, 16, 128, bf16, i32, 200)
    failed = RESULTS.count(False)
    print(f"cuda_moe_ep_check: {len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
