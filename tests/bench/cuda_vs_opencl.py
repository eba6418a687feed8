"""The CUDA backend at hops-opencl-bench's shapes, joined to that tool's tables
(issue 6, item 5: NVIDIA's OpenCL against CUDA on the same GPU, one run).

hops-opencl-bench times each call through the public ABI including clFinish;
here each CUDA call is timed the same way, wall clock around the call and a
stream synchronize (median of --repeat), on buffers made once. The ratio
column is OpenCL ms / CUDA ms.

    python3 tests/bench/cuda_vs_opencl.py --tokens 4096 OPENCL_TABLE.md [...]

Where a table has both gdn_chunk_fwd and gdn_chunk_bwd of one dtype, a
"gdn fwd+bwd" row adds them (a training step's GDN core: the backward
recomputes the forward's states, nothing is saved between the calls).

A table whose file name has "@LABEL" before its suffix (opencl_bench_bf16@nv.md,
written with HOPS_OPENCL_ATTN=nv) shows its rows as "op [LABEL]". attn_prefill rows
also get a "CUDA mma.sync" row (HOPS_CUDA_ATTN_FWD=mma, the sm_80 kernel beside the
default sm_90a one) and TFLOP/s (4 D Hq causal pairs) after the table.

Run by tests/bench/opencl_device_run.sh, opencl_gdn_device_run.sh and
opencl_nv_attn_run.sh after hops-opencl-bench."""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepared_call import Prepared  # noqa: E402

H, HV, K, V, D, W, N = 16, 32, 128, 128, 8192, 4, 8
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def inputs(op, T, dtype):
    """The tensors hops-opencl-bench gives `op` (same shapes, value ranges and flags)."""
    dev = "cuda"

    def u(shape, low=-1.0, high=1.0, f32=False):
        return torch.empty(shape, device=dev, dtype=torch.float32 if f32 else dtype).uniform_(low, high)

    slots = torch.arange(N, dtype=torch.int32)  # host memory, as the OpenCL bench passes them
    if op == "gdn_chunk_fwd":
        return dict(q=u((1, T, H, K)), k=u((1, T, H, K)), v=u((1, T, HV, V)), g=u((1, T, HV), -0.2, -0.01),
                    beta=u((1, T, HV), 0, 1), o=u((1, T, HV, V)), final_state=u((1, HV, K, V), f32=True),
                    use_qk_l2norm=True)
    if op == "conv1d_fwd":
        return dict(x=u((1, T, D)), weight=u((D, W)), bias=u((D,)), y=u((1, T, D)))
    if op == "gdn_recurrent":
        return dict(q=u((N, 1, H, K)), k=u((N, 1, H, K)), v=u((N, 1, HV, V)), g=u((N, 1, HV), -0.2, -0.01),
                    beta=u((N, 1, HV), 0, 1), state=u((N, HV, K, V), f32=True), state_indices=slots,
                    o=u((N, 1, HV, V)), use_qk_l2norm=True)
    if op == "conv1d_update":
        return dict(x=u((N, D)), state=u((N, D, W - 1)), weight=u((D, W)), state_indices=slots, y=u((N, D)))
    if op == "gated_rmsnorm":
        return dict(x=u((T, HV, V)), z=u((T, HV, V)), weight=u((V,)), y=u((T, HV, V)))
    if op == "gdn_chunk_bwd":
        return {"q": u((1, T, H, K)), "k": u((1, T, H, K)), "v": u((1, T, HV, V)), "g": u((1, T, HV), -0.2, -0.01),
                "beta": u((1, T, HV), 0, 1), "do": u((1, T, HV, V)), "d_final_state": u((1, HV, K, V), f32=True),
                "dq": u((1, T, H, K)), "dk": u((1, T, H, K)), "dv": u((1, T, HV, V)), "dg": u((1, T, HV)),
                "dbeta": u((1, T, HV)), "use_qk_l2norm": True}
    # Attention as hops-opencl-bench times it: Qwen3.5's 16 query and 2 kv heads
    # of 256, causal; decode: one sequence, 4096 cached tokens in 16-row blocks.
    Hq, Hkv, Dh, context, block = 16, 2, 256, 4096, 16
    if op == "attn_prefill":
        return dict(q=u((1, T, Hq, Dh)), k=u((1, T, Hkv, Dh)), v=u((1, T, Hkv, Dh)), o=u((1, T, Hq, Dh)),
                    lse=u((1, Hq, T), f32=True))
    if op == "attn_prefill_bwd":
        return {"q": u((1, T, Hq, Dh)), "k": u((1, T, Hkv, Dh)), "v": u((1, T, Hkv, Dh)), "o": u((1, T, Hq, Dh)),
                "lse": u((1, Hq, T), 5, 9, f32=True), "do": u((1, T, Hq, Dh)), "dq": u((1, T, Hq, Dh)),
                "dk": u((1, T, Hkv, Dh)), "dv": u((1, T, Hkv, Dh))}
    if op == "attn_decode":
        blocks = context // block
        return dict(q=u((1, 1, Hq, Dh)), k_cache=u((blocks, block, Hkv, Dh)), v_cache=u((blocks, block, Hkv, Dh)),
                    block_table=torch.arange(blocks, dtype=torch.int32, device=dev).view(1, blocks),
                    seq_lens=torch.tensor([context], dtype=torch.int32, device=dev), o=u((1, 1, Hq, Dh)))
    if op == "kv_cache_write":
        blocks = (T + block - 1) // block
        return dict(k=u((T, Hkv, Dh)), v=u((T, Hkv, Dh)), k_cache=u((blocks, block, Hkv, Dh)),
                    v_cache=u((blocks, block, Hkv, Dh)), slot_mapping=torch.arange(T, dtype=torch.int32, device=dev))
    if op == "gdn_gating":
        return dict(A_log=u((HV,)), a=u((T, HV)), b=u((T, HV)), dt_bias=u((HV,)), g=u((T, HV)), beta=u((T, HV)))
    raise KeyError(op)


def median_ms(call, repeat):
    stream = torch.cuda.current_stream()
    call(stream)
    stream.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call(stream)
        stream.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tables", nargs="+", help="hops-opencl-bench outputs (markdown)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}\n")
    print("| op | shape | dtype | CPU ms | NVIDIA OpenCL ms | CUDA ms | OpenCL / CUDA |\n|---|---|---|--:|--:|--:|--:|")
    gdn = {}  # (dtype, shape) -> op -> (cpu, opencl, cuda) ms
    rates = []  # attn_prefill: (row name, OpenCL ms, CUDA ms, CUDA mma.sync ms)
    for table in args.tables:
        stem = Path(table).stem
        label = f" [{stem.split('@', 1)[1]}]" if "@" in stem else ""
        for line in Path(table).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 6 or cells[0] in ("op",) or cells[0].startswith("-"):
                continue
            op, shape, dtype, cpu_ms, opencl_ms, _ = cells
            call = Prepared(op, **inputs(op, args.tokens, DTYPES[dtype]))
            cuda_ms = median_ms(call, args.repeat)
            mma_ms = None
            if op == "attn_prefill" and dtype != "f32":
                os.environ["HOPS_CUDA_ATTN_FWD"] = "mma"  # read by the CUDA backend per call
                mma_ms = median_ms(call, args.repeat)
                del os.environ["HOPS_CUDA_ATTN_FWD"]
            del call
            torch.cuda.empty_cache()
            print(f"| {op}{label} | {shape} | {dtype} | {cpu_ms} | {opencl_ms} | {cuda_ms:.3f} | "
                  f"{float(opencl_ms) / cuda_ms:.1f}x |", flush=True)
            if mma_ms is not None:
                print(f"| {op}{label} vs CUDA mma.sync | {shape} | {dtype} | {cpu_ms} | {opencl_ms} | "
                      f"{mma_ms:.3f} | {float(opencl_ms) / mma_ms:.1f}x |", flush=True)
            if op == "attn_prefill":
                rates.append((f"{op}{label} {dtype}", float(opencl_ms), cuda_ms, mma_ms))
            if op in ("gdn_chunk_fwd", "gdn_chunk_bwd"):
                gdn.setdefault((dtype, shape), {})[op] = (float(cpu_ms), float(opencl_ms), cuda_ms)
    T = args.tokens
    flops = 4 * 256 * 16 * T * (T + 1) / 2  # the bench's D = 256, Hq = 16, causal
    for name, opencl, cuda, mma in rates:
        line = f"{name} T={T}: TFLOP/s OpenCL {flops / opencl / 1e9:.1f}, CUDA {flops / cuda / 1e9:.1f}"
        print(line + (f", CUDA mma.sync {flops / mma / 1e9:.1f}" if mma else ""), flush=True)
    for (dtype, shape), ops in gdn.items():
        if len(ops) == 2:
            cpu, opencl, cuda = (sum(t[i] for t in ops.values()) for i in range(3))
            print(f"| gdn fwd+bwd | {shape} | {dtype} | {cpu:.2f} | {opencl:.2f} | {cuda:.3f} | "
                  f"{opencl / cuda:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
