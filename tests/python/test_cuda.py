"""The shim on torch CUDA tensors (issue 5): hops.ops against the float64 reference,
work ordered on torch's current stream with no synchronisation, the torch.library ops
(fake kernels, autograd where the CUDA backward exists), and a tiny Qwen3.5 model on the
GPU patched vs unpatched. Skipped where torch has no CUDA device or the provider's cuda
backend is unavailable."""

import importlib

import numpy as np
import pytest
import torch

import hops
import reference
from conftest import relative_error
from models import MODULES, build, greedy, torch_route


def _why_no_cuda() -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        backends = [backend for backend in hops.info().backends if backend.device == "cuda"]
    except hops.HopsError as error:
        return f"no hops provider: {error.message}"
    if not any(backend.available for backend in backends):
        details = "; ".join(backend.detail for backend in backends) or "not in this build"
        return f"the hops provider's cuda backend is unavailable ({details})"
    return None


WHY_NO_CUDA = _why_no_cuda()
pytestmark = pytest.mark.skipif(WHY_NO_CUDA is not None, reason=WHY_NO_CUDA or "")

# Relative L2 against float64: fp32 as the CPU tests (the GDN chunking sums in another
# order); 16-bit outputs carry their own rounding (the conformance bound).
TOLERANCES = {torch.float32: {"gdn": 1e-4, "elementwise": 1e-5}, torch.bfloat16: {"gdn": 1e-2, "elementwise": 1e-2}}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# The backward op each differentiable family needs, the redirect that patch() counts, and
# its calls in one step of the tiny model (3 linear-attention layers, 1 full-attention layer).
BACKWARD = {"gdn_chunk_bwd": ("qwen3_5.torch_chunk_gated_delta_rule", 3),
            "conv1d_bwd": ("qwen3_5.causal_conv1d_fn", 3),
            "gated_rmsnorm_bwd": ("qwen3_5.Qwen3_5RMSNormGated.forward", 3),
            "attn_prefill_bwd": ("AttentionInterface.hops", 1)}


@pytest.fixture(autouse=True, scope="module")
def no_tf32():
    """fp32 comparisons at fp32 precision: cuDNN (transformers' torch conv1d) allows TF32 by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cuda(array, dtype=torch.float32):
    return torch.from_numpy(np.ascontiguousarray(array)).to("cuda", dtype)


def host(tensor):
    """What the reference reads: the values hops read (16-bit rounding included), in float64."""
    return tensor.detach().double().cpu().numpy()


def gdn_inputs(rng, dtype, batch=2, tokens=70, heads=2, value_heads=4, key_dim=16, value_dim=8):
    q, k = (cuda(rng.standard_normal((batch, tokens, heads, key_dim)), dtype) for _ in range(2))
    v = cuda(rng.standard_normal((batch, tokens, value_heads, value_dim)), dtype)
    g = cuda(-rng.uniform(0.01, 0.5, (batch, tokens, value_heads)))  # float32, as transformers passes it
    beta = cuda(rng.uniform(0.1, 0.9, (batch, tokens, value_heads)), dtype)
    return q, k, v, g, beta


# ---- hops.ops on CUDA tensors against the float64 reference -------------------------------

@DTYPES
@pytest.mark.parametrize("key_dim, value_dim", [(16, 8), (128, 64)])  # K = 128: the tensor-core path (16-bit)
def test_gdn_chunk_fwd(rng, dtype, key_dim, value_dim):
    q, k, v, g, beta = gdn_inputs(rng, dtype, key_dim=key_dim, value_dim=value_dim)
    h0 = cuda(rng.standard_normal((2, 4, key_dim, value_dim)))
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, initial_state=h0, use_qk_l2norm=True,
                                      output_final_state=True)
    o_ref, final_ref = reference.gdn(*map(host, (q, k, v, g, beta, h0)), use_qk_l2norm=True)
    assert o.device == q.device and o.dtype == dtype and final.dtype == torch.float32
    assert relative_error(host(o), o_ref) <= TOLERANCES[dtype]["gdn"]
    assert relative_error(host(final), final_ref) <= TOLERANCES[dtype]["gdn"]


@DTYPES
def test_gdn_chunk_fwd_varlen(rng, dtype):
    q, k, v, g, beta = gdn_inputs(rng, dtype, batch=1)
    cu_seqlens = [0, 5, 5, 70]  # a host list: the plugin stages it on the call's stream
    o, _ = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, cu_seqlens=cu_seqlens, scale=0.3)
    o_ref, _ = reference.gdn(*map(host, (q, k, v, g, beta)), None, cu_seqlens=cu_seqlens, scale=0.3)
    assert relative_error(host(o), o_ref) <= TOLERANCES[dtype]["gdn"]


@DTYPES
def test_gdn_recurrent_state_pool(rng, dtype):
    q, k, v, g, beta = gdn_inputs(rng, dtype, batch=3, tokens=2)
    pool = cuda(rng.standard_normal((5, 4, 16, 8)))
    slots = torch.tensor([4, -1, 0], device="cuda")  # device-resident, as a cache keeps them
    expected_o, expected_pool = reference.gdn(*map(host, (q, k, v, g, beta, pool)), slots=[4, -1, 0],
                                              use_qk_l2norm=True)
    o = hops.ops.gdn_recurrent(q, k, v, g, beta, pool, state_indices=slots, use_qk_l2norm=True)
    for n in (0, 2):
        assert relative_error(host(o[n]), expected_o[n]) <= TOLERANCES[dtype]["gdn"]
    assert relative_error(host(pool), expected_pool) <= TOLERANCES[torch.float32]["elementwise"]


@DTYPES
def test_gdn_gating(rng, dtype):
    A_log = cuda(np.log(rng.uniform(1, 16, 6)), dtype)
    a, b = (cuda(rng.standard_normal((2, 3, 5, 6)) * 10, dtype) for _ in range(2))  # both softplus branches
    dt_bias = cuda(rng.standard_normal(6), dtype)
    g, beta = hops.ops.gdn_gating(A_log, a, b, dt_bias)
    g_ref, beta_ref = reference.gdn_gating(*map(host, (A_log, a, b, dt_bias)))
    assert g.dtype == torch.float32 and beta.dtype == dtype and g.device == a.device
    assert relative_error(host(g), g_ref) <= TOLERANCES[dtype]["elementwise"]
    assert relative_error(host(beta), beta_ref) <= TOLERANCES[dtype]["elementwise"]


@DTYPES
def test_gated_rmsnorm(rng, dtype):
    x, z = (cuda(rng.standard_normal((2, 7, 3, 32)), dtype) for _ in range(2))
    weight = cuda(rng.standard_normal(32), dtype)
    y = hops.ops.gated_rmsnorm(x, z, weight, eps=1e-5)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    assert relative_error(host(y), reference.gated_rmsnorm(*map(host, (x, z, weight)), eps=1e-5)) <= (
        TOLERANCES[dtype]["elementwise"])


@DTYPES
@pytest.mark.parametrize("channels_first", [False, True])
def test_conv1d_fwd(rng, dtype, channels_first):
    x = cuda(rng.standard_normal((2, 9, 12)), dtype)
    weight, bias = cuda(rng.standard_normal((12, 4)), dtype), cuda(rng.standard_normal(12), dtype)
    initial = cuda(rng.standard_normal((2, 12, 4)), dtype)  # transformers keeps W columns
    given = x.transpose(1, 2) if channels_first else x  # a transposed view, as causal-conv1d callers pass
    y, final = hops.ops.conv1d_fwd(given, weight, bias, initial_state=initial, output_final_state=True,
                                   channels_first=channels_first)
    y_ref, final_ref = reference.conv1d(*map(host, (x, weight, bias)), "silu", host(initial), state_len=4)
    y = y.transpose(1, 2) if channels_first else y
    assert relative_error(host(y), y_ref) <= TOLERANCES[dtype]["elementwise"]
    assert torch.equal(final, cuda(final_ref, dtype))  # shifted inputs, no arithmetic


@DTYPES
def test_conv1d_update_state_pool(rng, dtype):
    x = cuda(rng.standard_normal((3, 2, 12)), dtype)
    weight = cuda(rng.standard_normal((12, 4)), dtype)
    pool = cuda(rng.standard_normal((4, 12, 5)), dtype)
    y_ref, pool_ref = reference.conv1d_update(*map(host, (x, pool, weight)), slots=[2, -1, 0])
    y = hops.ops.conv1d_update(x, pool, weight, state_indices=[2, -1, 0])
    for n in (0, 2):
        assert relative_error(host(y[n]), y_ref[n]) <= TOLERANCES[dtype]["elementwise"]
    assert torch.equal(pool, cuda(pool_ref, dtype))


# ---- streams ------------------------------------------------------------------------------

def test_work_runs_on_torch_current_stream_without_synchronising(rng):
    """The producer of q is slow and on a side stream; nothing synchronises. hops must run
    after it on that stream (torch's pool streams do not wait for the legacy default stream,
    so a kernel there would read q before it is written), must not block the host, and must
    not make the default stream wait (torch's DLPack export does that unless told not to)."""
    q, k, v, g, beta = gdn_inputs(rng, torch.bfloat16, key_dim=128, value_dim=64)
    expected, _ = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, use_qk_l2norm=True)  # on the default stream
    late_q = torch.full_like(q, float("nan"))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before q is written
        late_q.copy_(q)
        o, _ = hops.ops.gdn_chunk_fwd(late_q, k, v, g, beta, use_qk_l2norm=True)
        side_still_busy = not side.query()
        default_idle = torch.cuda.default_stream().query()
        consumed = o.float()  # a consumer on the same stream
    side.synchronize()
    assert side_still_busy, "the call waited for the producer on the host"
    assert default_idle, "the default stream was made to wait for the side stream"
    assert torch.equal(consumed, expected.float())


# ---- the torch.library ops on CUDA ----------------------------------------------------------

def _supported_on_cuda(op: str) -> bool:
    from hops import torch_ops
    return torch_ops.supports(op, torch.empty(0, device="cuda"))


def _opcheck_cases_on_cuda():
    """test_torch_ops' opcheck cases moved to the GPU; a forward whose CUDA backward is
    missing is checked without gradients (opcheck would run the backward)."""
    from test_torch_ops import opcheck_cases
    needs = {"gdn_chunk": "gdn_chunk_bwd", "causal_conv1d": "conv1d_bwd", "gated_rmsnorm": "gated_rmsnorm_bwd",
             "gdn_chunk_bwd": "gdn_chunk_bwd", "causal_conv1d_bwd": "conv1d_bwd",
             "gated_rmsnorm_bwd": "gated_rmsnorm_bwd"}
    cases = {}
    for case, args in opcheck_cases().items():
        op = case.split()[0]
        backward = op in needs and _supported_on_cuda(needs[op])
        if op.endswith("_bwd") and not backward:
            cases[case] = None
            continue
        cases[case] = tuple(arg.detach().cuda().requires_grad_(arg.requires_grad and backward)
                            if isinstance(arg, torch.Tensor) else arg for arg in args)
    return cases


@pytest.mark.parametrize("case", ["gdn_chunk", "gdn_chunk varlen", "gdn_chunk_bwd", "causal_conv1d",
                                  "causal_conv1d channels first", "causal_conv1d_bwd", "gated_rmsnorm",
                                  "gated_rmsnorm_bwd", "gdn_recurrent", "causal_conv1d_update"])
def test_opcheck_on_cuda(case):
    args = _opcheck_cases_on_cuda()[case]
    if args is None:
        pytest.skip(f"supports says the CUDA backend has no {case} kernel yet")
    torch.library.opcheck(getattr(torch.ops.hops, case.split()[0]).default, args)


# ---- a tiny Qwen3.5 model on the GPU ---------------------------------------------------------

def prompt(batch=2, tokens=50):
    return torch.randint(1, 256, (batch, tokens), generator=torch.Generator().manual_seed(7)).cuda()


@pytest.fixture(scope="module")
def qwen3_5():
    return build("qwen3_5").cuda(), importlib.import_module(MODULES["qwen3_5"])


@torch.no_grad()
def test_model_prefill_and_greedy_decode_equal_unpatched(qwen3_5):
    model, module = qwen3_5
    with torch_route(module):
        expected_logits = model(prompt()).logits
        expected_tokens = greedy(model, prompt(1, 12))
        report = hops.patch()
        logits = model(prompt()).logits
        tokens = greedy(model, prompt(1, 12))
        hops.unpatch()  # before torch_route puts the routed functions back
    assert (logits - expected_logits).abs().max().item() <= 1e-4
    assert torch.equal(tokens, expected_tokens)
    prefills, decodes = 2 * 3, 31 * 3  # two prefills (ours, generate's) and 31 steps, 3 linear layers each
    attention = 2 + 31  # the full-attention layer: prefills and decode steps alike through attn_prefill
    assert {label: report.calls[label] for label in report.redirects if report.calls[label]} == {
        "qwen3_5.torch_chunk_gated_delta_rule": prefills, "qwen3_5.causal_conv1d_fn": prefills,
        "qwen3_5.Qwen3_5RMSNormGated.forward": prefills + decodes,
        "qwen3_5.torch_recurrent_gated_delta_rule": decodes, "qwen3_5.causal_conv1d_update": decodes,
        "AttentionInterface.hops": attention}
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons
    assert report.kernels == {"gdn_chunk_fwd": prefills, "conv1d_fwd": prefills, "gated_rmsnorm": prefills + decodes,
                              "gdn_recurrent": decodes, "conv1d_update": decodes, "attn_prefill": attention}


@torch.no_grad()
def test_unsupported_dtype_on_the_gpu_falls_back_and_is_counted():
    model = build("qwen3_5", torch.float64).cuda()  # hops has no float64 kernels
    module = importlib.import_module(MODULES["qwen3_5"])
    label = "qwen3_5.torch_chunk_gated_delta_rule"
    with torch_route(module):
        expected = model(prompt()).logits
        report = hops.patch()
        logits = model(prompt()).logits
        hops.unpatch()
    assert (logits - expected).abs().max().item() <= 1e-12  # the same torch functions ran
    assert report.fallbacks[label] == 3 and "float64 on cuda" in report.fallback_reasons[label]
    assert sum(report.calls.values()) == 0


def test_training_step_gradients(qwen3_5):
    """One forward and backward of the model, unpatched and patched: each family whose CUDA
    backward the provider has runs hops both ways; the others fall back (counted)."""
    from test_training import batch, gradient_tolerance, relative_l2
    available = [op for op in BACKWARD if _supported_on_cuda(op)]
    if not available:
        pytest.skip(f"supports says the CUDA backend has none of {', '.join(BACKWARD)} yet")
    _, module = qwen3_5
    tokens = batch().cuda()

    def gradients():
        model = build("qwen3_5").cuda().train()
        model(input_ids=tokens, labels=tokens).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    with torch_route(module):
        expected = gradients()
        report = hops.patch()
        actual = gradients()
        hops.unpatch()
    whole = relative_l2(torch.cat([actual[name].flatten() for name in actual]),
                        torch.cat([expected[name].flatten() for name in actual]))
    assert whole <= 1e-4
    failed = {name: relative_l2(actual[name], expected[name]) for name in actual
              if relative_l2(actual[name], expected[name]) > gradient_tolerance(0, name)}
    assert not failed, failed
    for op, (label, calls) in BACKWARD.items():
        if op in available:
            assert (report.calls[label], report.kernels[op], report.fallbacks[label]) == (calls, calls, 0), label
        else:
            assert report.fallbacks[label] == calls and "no kernel" in report.fallback_reasons[label], label


def test_backward_scratch_comes_from_torch_and_goes_back(rng):
    """gdn_chunk_bwd's scratch is taken from torch's caching allocator on the call's stream and
    freed there (hops holds no device memory between calls): torch counts the allocations, and
    once the call is done torch's allocated bytes are back where they were."""
    B, T, H, HV, K, V = 1, 300, 2, 4, 32, 32
    q, k = (cuda(rng.standard_normal((B, T, H, K))) for _ in range(2))
    v, do = (cuda(rng.standard_normal((B, T, HV, V))) for _ in range(2))
    g = cuda(-rng.uniform(0.01, 0.2, (B, T, HV)))
    beta = cuda(rng.uniform(0.1, 0.9, (B, T, HV)))
    hops.ops.gdn_chunk_bwd(q, k, v, g, beta, do)  # outputs allocated, allocator installed
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    grads = hops.ops.gdn_chunk_bwd(q, k, v, g, beta, do)
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    output_bytes = sum(t.numel() * t.element_size() for t in grads if t is not None)
    scratch_allocations = after["allocation.all.allocated"] - before["allocation.all.allocated"] - 5
    assert scratch_allocations >= 1
    # The outputs are all that stays allocated.
    assert after["allocated_bytes.all.current"] - before["allocated_bytes.all.current"] <= output_bytes + 5 * 512
    del grads


@torch.no_grad()
def test_decode_step_replays_in_a_cuda_graph(qwen3_5):
    """A decode step of the patched model captured in a torch CUDA graph and replayed gives
    eager's logits: the shim neither synchronises nor allocates outside torch's stream and
    pool, and every hops call records onto the capturing stream (issue 12)."""
    import copy
    model, module = qwen3_5
    with torch_route(module):
        report = hops.patch()
        try:
            prefill = model(prompt(1, 20), use_cache=True)
            token = prefill.logits[:, -1:].argmax(-1)
            eager_cache, warm_cache, graph_cache = (copy.deepcopy(prefill.past_key_values) for _ in range(3))
            expected = model(token, past_key_values=eager_cache).logits
            calls_before = dict(report.kernels)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS handles, torch's lazy init)
                model(token, past_key_values=warm_cache)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = model(token, past_key_values=graph_cache).logits
            graph.replay()
            torch.cuda.synchronize()
        finally:
            hops.unpatch()
    assert report.kernels["gdn_recurrent"] > calls_before.get("gdn_recurrent", 0)  # hops ran in the step
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons
    assert (captured - expected).abs().max().item() <= 1e-5
