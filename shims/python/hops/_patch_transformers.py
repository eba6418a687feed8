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

from ._redirects import FAMILIES

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
