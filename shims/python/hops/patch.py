"""hops.patch(): run the hosts' Gated DeltaNet, conv1d, gated RMSNorm, attention and mixture of
experts on hops.

Every replaced attribute becomes a *redirect*: it calls hops (torch tensors
through the custom ops of hops.torch_ops, so autograd runs hops' backward
kernels and torch.compile traces the ops), and when hops refuses the call
(device, dtype, shape, an option it lacks, gradients where it has no backward
kernel) it calls the original function instead and counts the fallback in the
report. Every change is logged, so unpatch() puts back exactly the objects
that were there. What each op family redirects: hops/_redirects/<family>.py;
the hosts: _patch_transformers.py and _patch_fla.py; why: docs/PYTHON.md.
"""

import functools
import gc
import os
import threading
from collections import Counter
from dataclasses import dataclass, field

from . import _redirects
from ._bindings import library
from .errors import HopsError

FAMILIES = {family.NAME: family.SWITCH for family in _redirects.FAMILIES}  # family -> its switch
TARGETS = ("qwen3_next", "qwen3_5", "qwen3_5_moe", "fla")


@dataclass
class PatchReport:
    """What patch() changed, and (live) how calls went since."""

    provider: str = ""
    patched: list[str] = field(default_factory=list)  # every change, in patch order
    redirects: set[str] = field(default_factory=set)  # the patched functions that count calls
    skipped: dict[str, str] = field(default_factory=dict)  # what was not patched -> why
    calls: Counter = field(default_factory=Counter)  # redirect -> calls hops ran
    fallbacks: Counter = field(default_factory=Counter)  # redirect -> calls the original ran
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # redirect -> latest reason
    kernels: Counter = field(default_factory=Counter)  # plugin op -> calls while patched (backward ops too)

    def __str__(self) -> str:
        lines = [f"hops.patch — provider: {self.provider or 'none'}"]
        for label in self.patched:
            counts = ""
            if label in self.redirects:
                counts = f"  (hops {self.calls[label]}, fallback {self.fallbacks[label]})"
            lines.append(f"  patched  {label}{counts}")
            if label in self.fallback_reasons:
                lines.append(f"           last fallback: {self.fallback_reasons[label]}")
        lines += [f"  skipped  {label}: {reason}" for label, reason in self.skipped.items()]
        if self.kernels:
            lines.append("  kernels  " + ", ".join(f"{op} {count}" for op, count in sorted(self.kernels.items())))
        return "\n".join(lines)


# nn.Module's registries: what they hold must stay a module, parameter or buffer, so
# a wrapper module registered there (transformers 5.25's kernels `Func`) is left alone.
REGISTRIES = {"_modules", "_parameters", "_buffers"}


def _references(instance, swaps):
    """(dict, key, replacement) for each attribute of `instance` (in its __dict__), and
    each entry of a dict attribute, that holds one of the `swaps` originals."""
    def swap_for(value):
        entry = swaps.get(id(value))
        return entry[1] if entry and entry[0] is value else None

    for name, value in list(vars(instance).items()):
        if swap_for(value) is not None:
            yield vars(instance), name, swap_for(value)
        elif isinstance(value, dict) and name not in REGISTRIES:
            yield from ((value, key, swap_for(item)) for key, item in list(value.items())
                        if swap_for(item) is not None)


class Patcher:
    """Applies redirects and remembers how to undo every change."""

    def __init__(self, report: PatchReport):
        self.report = report
        self._undo: list = []  # callables that put one thing back, in patch order
        self.originals: dict[int, tuple[object, object]] = {}  # id(original) -> (original, redirect)
        self.layer_classes: set[type] = set()  # host classes whose instances may hold references

    def redirect(self, label: str, hops_impl, original, like=None):
        """A function that runs `hops_impl` and falls back to `original`, with the name,
        signature and docs of `like` (the host's own function beneath `original`'s
        wrappers), else of `original`."""
        report = self.report

        # updated=(): a wrapper that is an object (kernels' Func module) keeps state in
        # its __dict__ that is no function metadata.
        @functools.wraps(original if like is None else like, updated=())
        def redirected(*args, **kwargs):
            try:
                result = hops_impl(*args, **kwargs)
            except HopsError as error:
                report.fallbacks[label] += 1
                report.fallback_reasons[label] = error.message
                return original(*args, **kwargs)
            report.calls[label] += 1
            return result

        redirected.__hops_original__ = original
        self.originals[id(original)] = (original, redirected)
        report.patched.append(label)
        report.redirects.add(label)
        return redirected

    def set_attr(self, owner, name: str, value) -> None:
        had, previous = name in vars(owner), vars(owner).get(name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, previous) if had else delattr(owner, name))

    def set_item(self, mapping: dict, key, value) -> None:
        had, previous = key in mapping, mapping.get(key)
        mapping[key] = value
        self._undo.append(lambda: mapping.__setitem__(key, previous) if had else mapping.pop(key))

    def replace(self, owner, name: str, label: str, hops_impl, like=None) -> None:
        self.set_attr(owner, name, self.redirect(label, hops_impl, getattr(owner, name), like))

    def rebind(self, instance, swaps: dict[int, tuple[object, object]], logged: bool) -> int:
        """Swap the references an instance keeps to functions (bound at __init__, or
        in a dict such as kernels' hidden-kernel table); swaps maps id(old) -> (old, new).
        Logged swaps are undone by undo(). Attributes are swapped in the instance's
        __dict__, where they were found: nn.Module.__setattr__ would register a module
        value as a submodule instead."""
        count = 0
        for container, key, new in _references(instance, swaps):
            (self.set_item if logged else dict.__setitem__)(container, key, new)
            count += 1
        return count

    def undo(self) -> None:
        for restore in reversed(self._undo):
            restore()
        self._undo.clear()


_lock = threading.RLock()
_active: Patcher | None = None


def _enabled(variable: str) -> bool:
    return os.environ.get(variable, "1") != "0"


def _live_modules(classes: set[type]) -> list:
    return [obj for obj in gc.get_objects() if type(obj) in classes]


def patch(targets=None, *, expert_parallel=None) -> PatchReport:
    """Patch the hosts named in `targets` (default: all of TARGETS that are installed)
    and the models that already exist; returns the live report. Patching again first
    undoes the previous patch. Never raises for a host it cannot patch: the report
    says why. expert_parallel: an mpi4py communicator or a torch.distributed process
    group (of mpirun's processes); the MoE experts then run over its ranks, each rank
    computing E / ranks experts for the tokens of all (_redirects.moe.expert_parallel_experts;
    shard_experts frees the other experts' weights)."""
    from . import _patch_fla, _patch_transformers

    global _active
    with _lock:
        unpatch()
        report = PatchReport()
        patcher = Patcher(report)
        targets = TARGETS if targets is None else tuple(targets)
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"hops.patch: unknown targets {sorted(unknown)}; known: {TARGETS}")
        if not _enabled("HOPS_PATCH"):
            report.skipped["all"] = "HOPS_PATCH=0"
            return report
        try:
            report.provider = str(library().provider.path)
        except HopsError as error:
            report.skipped["all"] = error.message
            return report
        _active = patcher  # before any change, so that unpatch() can undo a partial patch
        patcher.set_attr(library(), "counter", report.kernels)
        families = {family for family, variable in FAMILIES.items() if _enabled(variable)}
        report.skipped.update({family: f"{variable}=0" for family, variable in FAMILIES.items()
                               if family not in families})
        patcher.layer_classes = _patch_transformers.apply(patcher, [t for t in targets if t != "fla"], families,
                                                          expert_parallel)
        if "fla" in targets:
            _patch_fla.apply(patcher, families)
        for instance in _live_modules(patcher.layer_classes):
            patcher.rebind(instance, patcher.originals, logged=True)
        return report


def patch_model(model) -> PatchReport:
    """Re-bind the functions that `model`'s layers keep as attributes (older
    transformers bind them at __init__; kernels keeps a table) to the redirects.
    Patches the hosts first when patch() has not run."""
    with _lock:
        if _active is None:
            patch()
        if _active is None:  # HOPS_PATCH=0 or no provider: patch() said why
            return PatchReport(skipped={"model": "hops.patch is not active"})
        modules = model.modules() if hasattr(model, "modules") else [model]
        for module in modules:
            _active.rebind(module, _active.originals, logged=True)
        return _active.report


def unpatch() -> PatchReport | None:
    """Undo everything patch() and patch_model() changed (the original objects come
    back, identical) and point layers created while patched back at the originals.
    Returns the final report, or None when nothing was patched."""
    global _active
    with _lock:
        if _active is None:
            return None
        patcher, _active = _active, None
        patcher.undo()
        redirects = {id(new): (new, old) for old, new in patcher.originals.values()}
        for instance in _live_modules(patcher.layer_classes):
            patcher.rebind(instance, redirects, logged=False)
        return patcher.report
