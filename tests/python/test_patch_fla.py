"""hops inside flash-linear-attention, through its backend registry where it has one.
Runs only where fla imports (it needs triton; on a CPU machine its kernels cannot
run, which is exactly where hops takes over)."""

import importlib

import pytest
import torch

import hops

try:
    gdr = importlib.import_module("fla.ops.gated_delta_rule")
except Exception as error:  # not installed, or triton missing
    pytest.skip(f"fla not importable: {error}", allow_module_level=True)


def tensors():
    generator = torch.Generator().manual_seed(9)
    q = torch.randn(1, 20, 2, 16, generator=generator)
    v = torch.randn(1, 20, 4, 16, generator=generator)
    return q, q.clone(), v, -torch.rand(1, 20, 4, generator=generator), torch.rand(1, 20, 4, generator=generator)


@torch.no_grad()
def test_fla_entry_points_run_hops_and_unpatch_restores_them():
    originals = (gdr.chunk_gated_delta_rule, gdr.fused_recurrent_gated_delta_rule)
    report = hops.patch(["fla"])
    q, k, v, g, beta = tensors()
    o_chunk, state_chunk = gdr.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    o_step, state_step = gdr.fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, output_final_state=True)
    assert torch.allclose(o_chunk, o_step, atol=1e-4) and torch.allclose(state_chunk, state_step, atol=1e-4)
    assert sum(report.calls.values()) == 2 and sum(report.fallbacks.values()) == 0
    registries = [label for label in report.patched if label.startswith("fla backend")]
    hops.unpatch()
    assert (gdr.chunk_gated_delta_rule, gdr.fused_recurrent_gated_delta_rule) == originals
    if registries:  # registered as a backend: it must be gone again
        backends = importlib.import_module("fla.backends")
        assert "hops" not in backends._get_operation_registry("gated_delta_rule")._backends


def test_fla_chunk_gradients_run_hops_backward():
    report = hops.patch(["fla"])
    q, k, v, g, beta = (t.requires_grad_() for t in tensors())
    o, _ = gdr.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v, g, beta))
    assert report.kernels["gdn_chunk_fwd"] == report.kernels["gdn_chunk_bwd"] == 1
    assert sum(report.fallbacks.values()) == 0
