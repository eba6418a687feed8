"""hops.patch on the installed transformers: equal results, proof of which function
ran, exact unpatch, fallbacks counted and never raised, switches."""

import functools
import importlib
import inspect
import sys
import types
from collections import Counter

import pytest
import torch

import hops
from hops import _patch_transformers
from models import MODULES, build, greedy, torch_function, torch_route

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=sorted(MODULES))
def case(request):
    return request.param, build(request.param), importlib.import_module(MODULES[request.param])


def prompt(batch=2, tokens=50):
    return torch.randint(1, 256, (batch, tokens), generator=torch.Generator().manual_seed(7))


def hops_calls(report, alias, names):
    return {name: report.calls[f"{alias}.{name}"] for name in names}


@torch.no_grad()
def test_prefill_logits_equal_and_hops_ran(case):
    alias, model, module = case
    with torch_route(module):
        expected = model(prompt()).logits
    report = hops.patch()
    actual = model(prompt()).logits
    assert (actual - expected).abs().max().item() <= 1e-4
    norm = next(name for name in vars(module) if name.endswith("RMSNormGated"))
    ran = hops_calls(report, alias, ["torch_chunk_gated_delta_rule", "causal_conv1d_fn", f"{norm}.forward"])
    assert ran == dict.fromkeys(ran, 3)  # once per linear layer
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons


@torch.no_grad()
def test_greedy_decode_with_cache_equal(case):
    alias, model, module = case
    with torch_route(module):
        expected = greedy(model, prompt(1, 12))
    report = hops.patch()
    actual = greedy(model, prompt(1, 12))
    assert torch.equal(actual, expected)
    decode_steps = 31  # the first new token comes from the prefill
    assert hops_calls(report, alias, ["torch_recurrent_gated_delta_rule", "causal_conv1d_update"]) == dict.fromkeys(
        ["torch_recurrent_gated_delta_rule", "causal_conv1d_update"], 3 * decode_steps)
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons


def routed_through_fake_package(monkeypatch, module, name, fla_name, package, called: Counter):
    """Replace module.name by what transformers builds when `package` (a fake FLA or
    causal-conv1d that counts its calls) is importable."""
    from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback
    torch_impl = torch_function(module, name)

    @functools.wraps(torch_impl)  # the signature transformers filters the keywords by
    def fake_kernel(*args, **kwargs):
        called[fla_name] += 1
        return torch_impl(*args, **kwargs)

    path = [package] + (["ops", "gated_delta_rule"] if package == "fake_fla" else [])
    parent = None
    for depth in range(len(path)):
        child = sys.modules.get(".".join(path[:depth + 1])) or types.ModuleType(".".join(path[:depth + 1]))
        monkeypatch.setitem(sys.modules, child.__name__, child)
        if parent is not None:
            setattr(parent, path[depth], child)
        parent = child
    setattr(parent, fla_name, fake_kernel)
    routed = use_kernel_func_from_hub_with_fallback(fla_name, package)(torch_impl)
    monkeypatch.setattr(module, name, routed)


@torch.no_grad()
def test_patch_wins_over_the_fla_route(case, monkeypatch):
    alias, model, module = case
    called = Counter()
    for name, fla_name, package in [
            ("torch_chunk_gated_delta_rule", "chunk_gated_delta_rule", "fake_fla"),
            ("torch_recurrent_gated_delta_rule", "fused_recurrent_gated_delta_rule", "fake_fla"),
            ("causal_conv1d_fn", "causal_conv1d_fn", "fake_causal_conv1d")]:
        routed_through_fake_package(monkeypatch, module, name, fla_name, package, called)
    expected = greedy(model, prompt(1, 12), tokens=4)
    assert called == Counter(chunk_gated_delta_rule=3, fused_recurrent_gated_delta_rule=9, causal_conv1d_fn=3)
    report = hops.patch()
    actual = greedy(model, prompt(1, 12), tokens=4)
    assert torch.equal(actual, expected)
    assert called == Counter(chunk_gated_delta_rule=3, fused_recurrent_gated_delta_rule=9, causal_conv1d_fn=3)
    assert report.calls[f"{alias}.torch_chunk_gated_delta_rule"] == 3
    assert report.calls[f"{alias}.torch_recurrent_gated_delta_rule"] == 9


def test_own_functions_found_beneath_the_installed_wrappers(case):
    _, _, module = case
    wrapped = [name for name in _patch_transformers.FUNCTIONS if callable(vars(module).get(name))]
    assert {"torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
            "causal_conv1d_update"} <= set(wrapped)
    own = {name: torch_function(module, name) for name in wrapped}
    assert all(f.__globals__ is vars(module) and f.__code__.co_name == n and not hasattr(f, "__wrapped__")
               for n, f in own.items())
    hops.patch()
    for name, function in own.items():  # the redirects carry the torch functions' names and signatures
        redirect = vars(module)[name]
        assert redirect.__name__ == name and inspect.signature(redirect) == inspect.signature(function)
        assert inspect.unwrap(redirect) is function and redirect.__hops_original__ is not function


def test_own_function_sees_through_each_wrapper_kind():
    module = types.ModuleType("fake_modeling")
    exec("def kernel(x):\n    return x + 1\n", vars(module))
    kernel = module.kernel

    def closure_over(function):  # a wrapper without __wrapped__
        return lambda *args: function(*args)

    def func_module(function):  # kernels' use_kernel_forward_from_hub on a function (transformers 5.25)
        class Func(torch.nn.Module):
            def forward(self, *args):
                return function(*args)
        return Func()

    class Holder:  # an object keeping the function as an attribute
        def __init__(self, function):
            self.function = function

        def __call__(self, *args):
            return self.function(*args)

    for wrap in (functools.wraps(kernel)(closure_over(kernel)), closure_over(kernel), func_module(kernel),
                 func_module(functools.wraps(kernel)(closure_over(kernel))), Holder(func_module(kernel))):
        module.kernel = wrap
        assert _patch_transformers.own_function(module, "kernel") is kernel
    registry = {"kernel": kernel}
    module.kernel = lambda *args: registry["kernel"](*args)  # held in a table: a protocol it does not know
    assert _patch_transformers.own_function(module, "kernel") is None
    with pytest.raises(LookupError, match="fake_modeling.kernel: transformers' own function not found"):
        torch_function(module, "kernel")


def patchable(module):
    """Every (owner, name) patch() may change in a modeling module, with its object."""
    found = {(module, name): vars(module)[name] for name in _patch_transformers.FUNCTIONS if name in vars(module)}
    found |= {(module, name): vars(module)[name] for name in _patch_transformers.FLAGS if name in vars(module)}
    for cls in vars(module).values():
        if isinstance(cls, type) and cls.__name__.endswith("RMSNormGated"):
            found[(cls, "forward")] = vars(cls)["forward"]
    return found


def test_unpatch_restores_every_attribute_exactly(case):
    alias, model, module = case
    layer = next(m for m in model.modules() if type(m).__name__.endswith("GatedDeltaNet"))
    # The references older transformers bind at __init__ (plain attributes: set in __dict__, since
    # nn.Module would register a global that is a kernels Func module as a submodule), and a kernel table.
    vars(layer)["chunk_gated_delta_rule"] = module.torch_chunk_gated_delta_rule
    layer._hidden_kernels = {"causal_conv1d_update": module.causal_conv1d_update}
    submodule = module.causal_conv1d_fn if isinstance(module.causal_conv1d_fn, torch.nn.Module) else None
    if submodule is not None:  # a kernels Func (transformers >= 5.25) bound as an attribute is a submodule
        layer.registered = submodule
    before = {key: value for m in map(importlib.import_module, MODULES.values()) for key, value in patchable(m).items()}
    bound_before = (layer.chunk_gated_delta_rule, layer._hidden_kernels["causal_conv1d_update"])

    hops.patch()
    changed = [key for key, value in before.items() if getattr(*key) is not value]
    assert len(changed) == len(before)
    assert layer.chunk_gated_delta_rule is module.torch_chunk_gated_delta_rule  # re-bound to the redirect
    assert layer._hidden_kernels["causal_conv1d_update"] is module.causal_conv1d_update
    if submodule is not None:  # a submodule stays a module: the model tree must still walk
        assert layer._modules["registered"] is submodule and submodule in list(model.modules())
        del layer.registered
    created_while_patched = type(layer).__new__(type(layer))
    created_while_patched.__dict__.update(recurrent=module.torch_recurrent_gated_delta_rule)

    hops.unpatch()
    assert all(getattr(*key) is value for key, value in before.items())
    assert (layer.chunk_gated_delta_rule, layer._hidden_kernels["causal_conv1d_update"]) == bound_before
    assert created_while_patched.recurrent is module.torch_recurrent_gated_delta_rule
    assert hops.unpatch() is None  # nothing left to undo
    del layer.chunk_gated_delta_rule, layer._hidden_kernels


def test_patch_model_rebinds_a_model(case):
    _, model, module = case
    layer = next(m for m in model.modules() if type(m).__name__.endswith("GatedDeltaNet"))
    original = module.causal_conv1d_fn
    report = hops.patch()
    vars(layer)["conv_fn"] = original  # bound after patch() swept the live models (a plain attribute)
    hops.patch_model(model)
    assert layer.conv_fn is module.causal_conv1d_fn is not original
    assert report is hops.patch_model(model)
    hops.unpatch()
    assert layer.conv_fn is original
    del layer.conv_fn


def test_unsupported_dtype_falls_back_and_is_counted():
    model = build("qwen3_5", torch.float64)  # hops has no float64 kernels
    module = importlib.import_module(MODULES["qwen3_5"])
    label = "qwen3_5.torch_chunk_gated_delta_rule"
    with torch_route(module):
        with torch.no_grad():
            expected = model(prompt()).logits
            report = hops.patch()
            assert torch.equal(model(prompt()).logits, expected)
        assert sum(report.calls.values()) == 0 and report.fallbacks[label] == 3
        assert "float64" in report.fallback_reasons[label]  # refused before the provider is asked
        model(prompt()).logits.sum().backward()  # with gradients: refused alike, autograd runs torch's
        assert report.fallbacks[label] == 6 and not report.kernels
        assert "last fallback" in str(report)
        hops.unpatch()  # before torch_route puts the routed functions back


@torch.no_grad()
def test_unsupported_option_falls_back_per_call(case):
    alias, _, module = case
    model = build(alias, hidden_act="gelu")  # the conv activation follows hidden_act; hops has none|silu
    with torch_route(module):
        expected = model(prompt()).logits
    report = hops.patch()
    assert (model(prompt()).logits - expected).abs().max().item() <= 1e-4
    assert report.fallbacks[f"{alias}.causal_conv1d_fn"] == 3 and report.calls[f"{alias}.causal_conv1d_fn"] == 0
    assert "gelu" in report.fallback_reasons[f"{alias}.causal_conv1d_fn"]
    assert report.calls[f"{alias}.torch_chunk_gated_delta_rule"] == 3


def test_switches(case, monkeypatch):
    _, _, module = case
    original = module.causal_conv1d_fn
    monkeypatch.setenv("HOPS_PATCH", "0")
    report = hops.patch()
    assert report.skipped == {"all": "HOPS_PATCH=0"} and module.causal_conv1d_fn is original
    monkeypatch.setenv("HOPS_PATCH", "1")
    monkeypatch.setenv("HOPS_PATCH_CONV", "0")
    report = hops.patch()
    assert module.causal_conv1d_fn is original and report.skipped["conv"] == "HOPS_PATCH_CONV=0"
    assert module.torch_chunk_gated_delta_rule.__hops_original__ is not None


def test_unknown_target_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown targets"):
        hops.patch(["qwen4"])
