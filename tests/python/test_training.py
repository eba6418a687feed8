"""Training through hops.patch (issue 4): a tiny random-weight model, unpatched and
patched, each trained 3 AdamW steps on the same batch, once with every weight trainable
and once with LoRA-style adapters only, gives equal losses (1e-5 relative) and
parameter gradients (1e-4 relative L2 where fp32 allows it: gradient_tolerance), fp32;
the patch report proves that hops ran the forward and the backward of every GDN,
conv1d, gated-norm, (full-)attention and (Qwen3-Next) MoE call. The patched
model also compiles whole (torch.compile fullgraph=True): the hops ops are traced,
not graph breaks."""

import importlib

import pytest
import torch
from torch import nn

import hops
from hops._patch_transformers import ATTENTION_LABEL
from models import MODULES, MOE_MODULES, build, torch_route

pytest.importorskip("transformers")

STEPS = 3
LINEAR_LAYERS = 3  # of the tiny models' 4 layers
ATTENTION_LAYERS = 1
# The projections into and out of each linear-attention layer (Qwen3-Next fuses q, k, v, z) and
# the attention's q and v: every GDN, conv1d and norm call then needs its backward.
LORA_TARGETS = ("in_proj_qkv", "in_proj_qkvz", "in_proj_z", "out_proj", "q_proj", "v_proj")
GATE_FACTOR = 10


def gradient_tolerance(step: int, name: str) -> float:
    """Relative L2 bound of a parameter's gradient. At step 0 (equal weights) it checks the
    backward itself. Later steps start from weights that AdamW moved: its normalised update
    turns fp32 rounding in gradient components near zero into lr-sized weight differences,
    so there even two torch implementations (transformers' chunk fallback at chunk size 32
    and 64) differ by up to 1e-4. The gate's A_log and dt_bias sum dg * g over all tokens
    with much cancellation: fp32 leaves them ~1e-4 from float64 at step 0 already (chunk 32
    against 64: 1.4e-4; 3e-4 at step 2), hence GATE_FACTOR."""
    return (1e-4 if step == 0 else 1e-3) * (GATE_FACTOR if name.endswith((".A_log", ".dt_bias")) else 1)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-4 update (nonzero from the start, so that
    every adapter has gradients at the first step)."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(base.in_features * 1000 + base.out_features)
        self.base = base
        self.down = nn.Parameter(0.1 * torch.randn(rank, base.in_features, generator=generator))
        self.up = nn.Parameter(0.1 * torch.randn(base.out_features, rank, generator=generator))

    def forward(self, x):
        return self.base(x) + x @ self.down.T @ self.up.T


def with_lora(model):
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in LORA_TARGETS and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child))
    return model


SUBSETS = {"all weights": lambda model: model, "LoRA": with_lora}


def batch():
    return torch.randint(1, 256, (2, 80), generator=torch.Generator().manual_seed(5))  # 80: two chunks of 64


def train(model, tokens):
    """STEPS AdamW steps -> the loss and the gradients of the trainable parameters, per step."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    losses, gradients = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        gradients.append({name: p.grad.clone() for name, p in trainable.items()})
    return losses, gradients


def relative_l2(actual, expected) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("subset", sorted(SUBSETS))
@pytest.mark.parametrize("alias", sorted(MODULES))
def test_training_steps_equal_and_hops_ran_both_ways(alias, subset):
    module = importlib.import_module(MODULES[alias])
    with torch_route(module):
        expected_losses, expected_gradients = train(SUBSETS[subset](build(alias).train()), batch())
        report = hops.patch()
        losses, gradients = train(SUBSETS[subset](build(alias).train()), batch())
        hops.unpatch()  # before torch_route puts the routed functions back

    loss_error = max(abs(a - b) / abs(b) for a, b in zip(losses, expected_losses))
    gradient_errors = {(step, name): relative_l2(ours[name], expected[name])
                       for step, (ours, expected) in enumerate(zip(gradients, expected_gradients)) for name in ours}
    assert loss_error <= 1e-5, (losses, expected_losses)
    # The criterion, all parameter gradients as one vector: 1e-4 for Qwen3.5. The
    # Qwen3-Next model reached 2.4e-4 at step 2 (its gate parameters, as gradient_tolerance says).
    whole = [relative_l2(torch.cat([ours[name].flatten() for name in ours]),
                         torch.cat([expected[name].flatten() for name in ours]))
             for ours, expected in zip(gradients, expected_gradients)]
    assert max(whole) <= (1e-4 if alias == "qwen3_5" else 1e-3), whole
    failed = {key: error for key, error in gradient_errors.items() if error > gradient_tolerance(*key)}
    assert not failed, failed
    if subset == "LoRA":
        assert all(name.endswith((".down", ".up")) for name in gradients[0])

    norm = next(name for name in vars(module) if name.endswith("RMSNormGated"))
    calls = STEPS * LINEAR_LAYERS
    forwards = {f"{alias}.{name}": report.calls[f"{alias}.{name}"]
                for name in ("torch_chunk_gated_delta_rule", "causal_conv1d_fn", f"{norm}.forward")}
    assert forwards == dict.fromkeys(forwards, calls)
    assert report.calls[ATTENTION_LABEL] == STEPS * ATTENTION_LAYERS
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons
    moe = dict.fromkeys(["moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine", "moe_dispatch_bwd",
                         "moe_expert_mlp_bwd", "moe_combine_bwd"], STEPS * (LINEAR_LAYERS + ATTENTION_LAYERS))
    assert report.kernels == dict.fromkeys(["gdn_chunk_fwd", "gdn_chunk_bwd", "conv1d_fwd", "conv1d_bwd",
                                            "gated_rmsnorm", "gated_rmsnorm_bwd"], calls) | dict.fromkeys(
        ["attn_prefill", "attn_prefill_bwd"], STEPS * ATTENTION_LAYERS) | (moe if alias in MOE_MODULES else {})


def test_patched_model_compiles_whole_and_trains_like_eager():
    model = build("qwen3_5").train()
    tokens = batch()
    report = hops.patch()
    eager_loss = model(input_ids=tokens, labels=tokens).loss
    eager_loss.backward()
    eager_gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=recording_backend, fullgraph=True)  # a graph break is an error
    loss = compiled(input_ids=tokens, labels=tokens).loss
    loss.backward()

    assert abs(loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    assert max(relative_l2(p.grad, eager_gradients[name]) for name, p in model.named_parameters()) <= 1e-4
    assert len(graphs) == 1
    for op in ("gdn_chunk", "causal_conv1d", "gated_rmsnorm"):
        assert graphs[0].code.count(f"torch.ops.hops.{op}.default(") == LINEAR_LAYERS
    assert graphs[0].code.count("torch.ops.hops.attn_prefill.default(") == ATTENTION_LAYERS
    assert report.kernels["gdn_chunk_bwd"] == 2 * LINEAR_LAYERS  # eager, then compiled
    assert sum(report.fallbacks.values()) == 0
