"""transformers' Qwen3-Next / Qwen3.5 / Qwen3.5-MoE modeling modules on hops.

The GatedDeltaNet layers look their kernels up as module globals at call time
(transformers 5: `torch_chunk_gated_delta_rule(...)`, wrapped by
`use_kernel_func_from_hub_with_fallback`, which routes to FLA or causal-conv1d
whenever those import). Replacing the module globals therefore wins over the
FLA route and the torch route alike, whatever the wrapper is; own_function finds
transformers' torch function beneath it. Names of older layouts (fla names bound
at import, `is_fast_path_available`) are patched when present; instance
references are re-bound by patch.Patcher.rebind. See docs/PYTHON.md.

Attention: the function "hops" joins transformers' AttentionInterface (a counted
redirect whose fallback is the model's configured attention, then the output gate),
with sdpa's mask builder in the AttentionMaskInterface; the full-attention layers'
forward is replaced by one that hands the output gate to it (_redirects/attn.py).

Mixture of experts: the experts function "hops" joins transformers' ExpertsInterface (a
counted redirect whose fallback is the model's configured experts implementation), and,
where the kernels package imports, a hops layer is registered for the routers' hub name
(SoftmaxTopKRouter) in its layer mapping; the Qwen3.5-MoE / Qwen3-Next experts classes'
forward calls the "hops" experts function, their routers' forward becomes a redirect to
moe_route (_redirects/moe.py). The shared expert stays a dense torch MLP.
"""

import copy
import importlib
import inspect

from ._redirects import FAMILIES, attn, moe

MODULES = {
    "qwen3_next": "transformers.models.qwen3_next.modeling_qwen3_next",
    "qwen3_5": "transformers.models.qwen3_5.modeling_qwen3_5",
    "qwen3_5_moe": "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
}
UNWRAP_DEPTH = 4  # wrapper layers searched; 5.25 has two (kernels' Func, then the routing function)


def _held_by(wrapper) -> list:
    """The callables a wrapper may keep the function it wraps in: `__wrapped__`
    (functools.wraps: use_kernel_func_from_hub_with_fallback's routing function);
    the closure of the wrapper, or of its class's forward / __call__ (the `Func`
    nn.Module that kernels' use_kernel_forward_from_hub makes of the routing
    function where kernels is installed, as transformers 5.25 requires); and a
    wrapper object's attributes."""
    held = [getattr(wrapper, "__wrapped__", None)]
    functions = [wrapper]
    if not inspect.isfunction(wrapper):
        functions = [getattr(type(wrapper), method, None) for method in ("forward", "__call__")]
        held += list(getattr(wrapper, "__dict__", {}).values())
    for function in functions:
        for cell in getattr(function, "__closure__", None) or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # a cell not yet filled
                continue
    return [value for value in held if callable(value)]


def own_function(module, name: str):
    """transformers' own function `name` of `module` (the torch implementation: code
    named `name` that runs in the module's namespace; functools.wraps copies a name,
    not code) beneath whatever wraps the module global, or None when no wrapper layer
    holds it. Searches breadth first, so the nearest path wins."""
    layer, seen = [vars(module).get(name)], set()
    for _ in range(UNWRAP_DEPTH + 1):
        below = []
        for candidate in layer:
            if candidate is None or id(candidate) in seen:
                continue
            seen.add(id(candidate))
            if (inspect.isfunction(candidate) and candidate.__globals__ is vars(module)
                    and candidate.__code__.co_name == name):
                return candidate
            below += _held_by(candidate)
        layer = below
    return None


# Module globals: name -> (family, hops implementation), from each family's file
# (hops._redirects). A name that is absent or None in the installed version is left alone.
FUNCTIONS = {name: (family.NAME, implementation) for family in FAMILIES
             for name, implementation in family.TRANSFORMERS_FUNCTIONS.items()}
# Flags the layers test to pick (or warn about) the fast path.
FLAGS = {"is_fast_path_available": ("gdn", "conv")}


def _patch_module(patcher, alias: str, module, families: set[str]) -> set[type]:
    report = patcher.report
    for name, (family, hops_impl) in FUNCTIONS.items():
        if family in families and callable(getattr(module, name, None)):
            patcher.replace(module, name, f"{alias}.{name}", hops_impl, like=own_function(module, name))
    for name, needed in FLAGS.items():
        if not hasattr(module, name):
            report.skipped[f"{alias}.{name}"] = "not in this transformers version"
        elif set(needed) <= families:
            patcher.set_attr(module, name, True)
            report.patched.append(f"{alias}.{name} = True")
    own_classes = [cls for cls in vars(module).values()
                   if inspect.isclass(cls) and cls.__module__ == module.__name__]
    for family in FAMILIES:
        if family.NAME not in families:
            continue
        for suffix, methods in family.TRANSFORMERS_METHODS.items():
            for cls in own_classes:
                if cls.__name__.endswith(suffix):
                    for method, implementation in methods.items():
                        patcher.replace(cls, method, f"{alias}.{cls.__name__}.{method}", implementation)
    return {cls for cls in own_classes if cls.__name__.endswith("GatedDeltaNet")}


ATTENTION_LABEL = f"AttentionInterface.{attn.INTERFACE}"


def _register_attention(patcher) -> bool:
    """The attention function "hops" in transformers' AttentionInterface (so that any model
    may select it, attn_implementation="hops"), and its mask builder in the
    AttentionMaskInterface (without one, transformers builds no mask at all for a custom
    function, padding included): sdpa's, returning None for a plain causal mask, which hops
    runs, and materializing the rest, which falls back (attn.mask_builder). sdpa's and
    eager's builders, which the patched layers of models configured with them use, tag the
    plain causal masks they build (attn.tagging_mask_builder)."""
    try:
        from transformers.masking_utils import AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface
    except Exception as error:  # no transformers, or one without these interfaces
        patcher.report.skipped[ATTENTION_LABEL] = f"{type(error).__name__}: {error}"
        return False
    redirect = patcher.redirect(ATTENTION_LABEL, attn.attention, attn.fallback_attention, like=attn.attention)
    patcher.set_item(AttentionInterface._global_mapping, attn.INTERFACE, redirect)
    patcher.set_item(AttentionMaskInterface._global_mapping, attn.INTERFACE, attn.mask_builder)
    for configured in ("sdpa", "eager"):
        builder = AttentionMaskInterface._global_mapping.get(configured)
        if builder is not None:
            patcher.set_item(AttentionMaskInterface._global_mapping, configured, attn.tagging_mask_builder(builder))
    return True


def _patch_attention_layers(patcher, alias: str, module) -> None:
    """The full-attention layers' forward -> attn.gated_attention_forward, which calls the
    attention function "hops" with the output gate (whatever the model's configured
    attention: that one is the fallback). Not a redirect itself: the attention call is."""
    for cls in [cls for cls in vars(module).values() if inspect.isclass(cls) and cls.__module__ == module.__name__]:
        if attn.is_gated_attention_layer(cls, module):
            patcher.set_attr(cls, "forward", attn.gated_attention_forward)
            patcher.report.patched.append(f"{alias}.{cls.__name__}.forward")


EXPERTS_LABEL = f"ExpertsInterface.{moe.INTERFACE}"
ROUTER_KERNEL_LABEL = f"kernels.{moe.ROUTER_HUB_NAME}"


def _register_experts(patcher) -> bool:
    """The experts function "hops" in transformers' ExpertsInterface (so that any model with
    use_experts_implementation may select it, experts_implementation="hops"), and hops'
    router layer for the kernels package's layer name SoftmaxTopKRouter."""
    try:
        from transformers.integrations.moe import ExpertsInterface
    except Exception as error:  # no transformers, or one without the interface
        patcher.report.skipped[EXPERTS_LABEL] = f"{type(error).__name__}: {error}"
        return False
    redirect = patcher.redirect(EXPERTS_LABEL, moe.experts, moe.fallback_experts, like=moe.experts)
    patcher.set_item(ExpertsInterface._global_mapping, moe.INTERFACE, redirect)
    _register_router_kernel(patcher)
    return True


class _LayerRepository:
    """A repository of the kernels package's layer mapping (its RepositoryProtocol: load()
    returns the layer class) that holds hops' router layer, in memory."""

    def __init__(self, layer: type):
        self.layer = layer

    def load(self) -> type:
        return self.layer

    def __str__(self) -> str:
        return f"hops ({self.layer.__name__})"


def _register_router_kernel(patcher) -> None:
    """kernels.kernelize(model, ...) then gives the routers (use_kernel_forward_from_hub(
    "SoftmaxTopKRouter")) hops' forward on CPU and CUDA devices, in every mode: a counted
    redirect whose fallback is the router class's own forward. The mapping's entry for that
    name is replaced by a copy with hops added, so that unpatch() restores the original."""
    try:
        from kernels import register_kernel_mapping
        from kernels._internals.layer.globals import _KERNEL_MAPPING
    except Exception as error:  # kernels is optional (transformers 5.23/5.24 do not need it)
        patcher.report.skipped[ROUTER_KERNEL_LABEL] = f"kernels: {type(error).__name__}: {error}"
        return
    forward = patcher.redirect(ROUTER_KERNEL_LABEL, moe.router_forward, moe.fallback_router, like=moe.router_forward)
    repository = _LayerRepository(moe.router_layer(forward))
    mapping = _KERNEL_MAPPING.get()
    patcher.set_item(mapping, moe.ROUTER_HUB_NAME, copy.deepcopy(mapping.get(moe.ROUTER_HUB_NAME, {})))
    register_kernel_mapping({moe.ROUTER_HUB_NAME: dict.fromkeys(("cpu", "cuda"), repository)})


def _patch_moe_layers(patcher, alias: str, module, expert_parallel=None) -> None:
    """The experts classes' forward -> the experts function "hops" (the configured one is its
    fallback), or with expert_parallel the experts over its ranks (no fallback: counted, and
    raising where hops refuses); the top-k softmax routers' forward -> a redirect to moe_route."""
    for cls in [cls for cls in vars(module).values() if inspect.isclass(cls) and cls.__module__ == module.__name__]:
        if moe.is_experts_class(cls) and expert_parallel is not None:
            label = f"{alias}.{cls.__name__}.forward (expert parallel)"
            patcher.set_attr(cls, "forward", moe.expert_parallel_forward(vars(cls)["forward"], expert_parallel,
                                                                         patcher.report.calls, label))
            patcher.report.patched.append(label)
            patcher.report.redirects.add(label)
        elif moe.is_experts_class(cls):
            patcher.set_attr(cls, "forward", moe.experts_forward(vars(cls)["forward"]))
            patcher.report.patched.append(f"{alias}.{cls.__name__}.forward")
        elif moe.is_router_class(cls):
            patcher.replace(cls, "forward", f"{alias}.{cls.__name__}.forward", moe.router_forward)


def apply(patcher, targets: list[str], families: set[str], expert_parallel=None) -> set[type]:
    """Patch the modeling modules of `targets` (the MoE experts over expert_parallel's ranks
    when given); returns the GatedDeltaNet classes."""
    layer_classes: set[type] = set()
    attention = attn.NAME in families and targets and _register_attention(patcher)
    experts = moe.NAME in families and targets and _register_experts(patcher)
    for alias in targets:
        try:
            module = importlib.import_module(MODULES[alias])
        except Exception as error:  # not installed, or a version without this model
            patcher.report.skipped[alias] = f"cannot import {MODULES[alias]} ({type(error).__name__}: {error})"
            continue
        layer_classes |= _patch_module(patcher, alias, module, families)
        if attention:
            _patch_attention_layers(patcher, alias, module)
        if experts:
            _patch_moe_layers(patcher, alias, module, expert_parallel)
    return layer_classes
