"""flash-linear-attention's Gated DeltaNet on hops.

Where fla has a backend registry (fla.backends since 0.5, fla.ops.backends
before), hops registers itself there as one more backend of the
"gated_delta_rule" operation: FLA's dispatcher asks its verifier per call
(device and dtype through the provider's `supports`; what hops then refuses,
such as gradients through a decode op, runs FLA's own kernel), honours its priority
and its env switch (HOPS_PATCH_GDN; FLA_HOPS=1 forces it on, as FLA_<TYPE>
does for every backend). Entry points the registry does not dispatch (and
all of them in an fla without a registry) are replaced in every loaded fla
module that holds them.
"""

import importlib
import inspect
import sys

from . import torch_ops
from ._redirects import FAMILIES

OPERATION = "gated_delta_rule"
PRIORITY = 1  # FLA: lower runs first; ahead of FlashQLA (3), behind Ascend (0, NPU only)
# fla name -> (hops drop-in, the op whose supports() the verifier asks), from the families' files
ENTRY_POINTS = {name: entry for family in FAMILIES for name, entry in family.FLA_ENTRY_POINTS.items()}
FAMILY = next(family.NAME for family in FAMILIES if family.FLA_ENTRY_POINTS)


def _registry():
    """(BaseBackend class, registry of OPERATION, whether hops must come first in its
    dict) of the installed fla, or None when it has no backend registry."""
    try:
        backends = importlib.import_module("fla.backends")  # fla >= 0.5: sorted by priority
        return backends.BaseBackend, backends._get_operation_registry(OPERATION), False
    except (ImportError, AttributeError):
        pass
    try:
        backends = importlib.import_module("fla.ops.backends")  # earlier: tried in dict order
        backends.BackendRegistry.ensure_initialized(OPERATION)
        registry = backends.BackendRegistry._registries.get(OPERATION) or backends.BackendRegistry(OPERATION)
        return backends.BaseBackend, registry, True
    except (ImportError, AttributeError):
        return None


def _dispatched_by(function, registry) -> bool:
    """Whether `function` is a dispatcher of `registry` (its closure, or a wrapped one's,
    holds the registry or the operation name)."""
    while function is not None:
        for cell in getattr(function, "__closure__", None) or ():
            try:
                if cell.cell_contents is registry or cell.cell_contents == OPERATION:
                    return True
            except ValueError:  # an empty cell
                continue
        function = getattr(function, "__wrapped__", None)
    return False


def _verifier(op: str):
    def verify(self, q, *args, **kwargs):
        if not torch_ops.supports(op, q):
            return False, f"the hops provider has no {op} for {q.device} {q.dtype}"
        return True, None
    return verify


def _register_backend(patcher, base, registry, first: bool, names: list[str], module) -> None:
    members = {"backend_type": "hops", "package_name": None, "env_var": "HOPS_PATCH_GDN",
               "default_enable": True, "priority": PRIORITY, "__doc__": "hops plugin (CPU, ...)"}
    for name in names:
        hops_impl, op = ENTRY_POINTS[name]
        default = inspect.unwrap(getattr(module, name))  # FLA's own kernels: the fallback
        members[name] = staticmethod(patcher.redirect(f"fla.{name} (backend)", hops_impl, default))
        members[f"{name}_verifier"] = _verifier(op)
    backend = type("HopsBackend", (base,), members)()
    if first:
        patcher.set_attr(registry, "_backends", {"hops": backend, **registry._backends})
    else:
        patcher.set_item(registry._backends, "hops", backend)
    patcher.report.patched.append(f"fla backend 'hops' for {OPERATION} (priority {PRIORITY})")


def _replace_entry_point(patcher, name: str, original) -> None:
    redirect = patcher.redirect(f"fla.{name}", ENTRY_POINTS[name][0], original)
    for module_name, module in list(sys.modules.items()):
        if (module_name == "fla" or module_name.startswith("fla.")) and vars(module).get(name) is original:
            patcher.set_attr(module, name, redirect)


def apply(patcher, families: set[str]) -> None:
    if FAMILY not in families:
        patcher.report.skipped["fla"] = f"{next(f.SWITCH for f in FAMILIES if f.NAME == FAMILY)}=0"
        return
    try:
        module = importlib.import_module(f"fla.ops.{OPERATION}")
    except Exception as error:  # not installed, or broken (fla imports triton)
        patcher.report.skipped["fla"] = f"cannot import fla.ops.{OPERATION} ({type(error).__name__}: {error})"
        return
    found = _registry()
    dispatched = [name for name in ENTRY_POINTS if found and _dispatched_by(getattr(module, name), found[1])]
    if dispatched:
        _register_backend(patcher, *found, dispatched, module)
    for name in ENTRY_POINTS:
        if name not in dispatched:
            _replace_entry_point(patcher, name, getattr(module, name))
