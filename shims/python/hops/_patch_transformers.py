"""transformers' Qwen3-Next / Qwen3.5 / Qwen3.5-MoE modeling modules on hops.

The GatedDeltaNet layers look their kernels up as module globals at call time
(transformers 5: `torch_chunk_gated_delta_rule(...)`, wrapped by
`use_kernel_func_from_hub_with_fallback`, which routes to FLA or causal-conv1d
whenever those import). Replacing the module globals therefore wins over the
FLA route and the torch route alike, whatever the wrapper is; own_function finds
transformers' torch function beneath it. Names of older layouts (fla names bound
at import, `is_fast_path_available`) are patched when present; instance
references are re-bound by patch.Patcher.rebind. See docs/PYTHON.md.
"""

import importlib
import inspect

import torch

from . import causal_conv1d, fla, torch_ops
from .errors import unsupported

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


# ---- hops implementations with the signatures of the functions they replace -------

def chunk_rule(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    return fla.chunk_gated_delta_rule(query, key, value, g, beta, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens)


def recurrent_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                   use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    if initial_state is not None and initial_state.dtype == torch.float32 and output_final_state:
        # The layer passes its cache buffer and copies the returned state back into it
        # (cache_utils: update_recurrent_state), so advancing that buffer in place gives
        # the same cache without a fresh HV*K*V*4-byte state per layer and token.
        o = torch_ops.gdn_recurrent(query, key, value, g, beta, initial_state, cu_seqlens=cu_seqlens,
                                    use_qk_l2norm=use_qk_l2norm_in_kernel)
        return o, initial_state
    return fla.fused_recurrent_gated_delta_rule(query, key, value, g=g, beta=beta, initial_state=initial_state,
                                                output_final_state=output_final_state,
                                                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                                cu_seqlens=cu_seqlens)


def conv_fn(hidden_states, weight, bias=None, activation=None, seq_idx=None, **_):
    return causal_conv1d.causal_conv1d_fn(hidden_states, weight, bias, seq_idx=seq_idx, activation=activation)


def conv_update(hidden_states, conv_state, weight, bias=None, activation=None, **_):
    return causal_conv1d.causal_conv1d_update(hidden_states, conv_state, weight, bias, activation)


def gated_norm_forward(self, hidden_states, gate=None):
    if gate is None or getattr(self, "activation", "silu") not in ("silu", "swish"):
        raise unsupported("RMSNormGated without a silu gate")
    return torch_ops.gated_rmsnorm(hidden_states, gate, self.weight, eps=self.variance_epsilon)


# Module globals: name -> (family, hops implementation). Both layouts' names are
# listed; a name that is absent or None in the installed version is left alone.
FUNCTIONS = {
    "torch_chunk_gated_delta_rule": ("gdn", chunk_rule),
    "torch_recurrent_gated_delta_rule": ("gdn", recurrent_rule),
    "chunk_gated_delta_rule": ("gdn", chunk_rule),
    "fused_recurrent_gated_delta_rule": ("gdn", recurrent_rule),
    "causal_conv1d_fn": ("conv", conv_fn),
    "causal_conv1d_update": ("conv", conv_update),
    "torch_causal_conv1d_update": ("conv", conv_update),
}
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
    if "norm" in families:
        for cls in own_classes:
            if cls.__name__.endswith("RMSNormGated"):
                patcher.replace(cls, "forward", f"{alias}.{cls.__name__}.forward", gated_norm_forward)
    return {cls for cls in own_classes if cls.__name__.endswith("GatedDeltaNet")}


def apply(patcher, targets: list[str], families: set[str]) -> set[type]:
    """Patch the modeling modules of `targets`; returns the GatedDeltaNet classes."""
    layer_classes: set[type] = set()
    for alias in targets:
        try:
            module = importlib.import_module(MODULES[alias])
        except Exception as error:  # not installed, or a version without this model
            patcher.report.skipped[alias] = f"cannot import {MODULES[alias]} ({type(error).__name__}: {error})"
            continue
        layer_classes |= _patch_module(patcher, alias, module, families)
    return layer_classes
