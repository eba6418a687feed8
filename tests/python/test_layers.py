"""The shim's modules are layered bottom to top (docs/PYTHON.md, Layers): a module
imports only modules of lower layers (or, inside a package, its own package's
modules), so there is no import cycle. Read from every module's import statements,
including the ones inside functions."""

import ast
import importlib
from pathlib import Path

import hops

PACKAGE = Path(hops.__file__).parent
# Bottom to top; a name is a module or a package of hops (the package's modules share its layer).
LAYERS = [
    {"errors", "_abi"},
    {"_dlpack", "_library", "_host_memory"},
    {"_frameworks", "_torch_allocator", "opencl"},  # _frameworks: the leaf knowing numpy/torch/cupy
    {"_bindings"},  # generic: descriptors in, framework policy injected
    {"ops"},  # hops.ops and its families
    {"torch_ops"},  # torch.ops.hops.* and their families
    {"_dispatch"},  # ops or torch_ops, per array
    {"fla", "causal_conv1d", "flash_attn"},  # the drop-ins
    {"_redirects"},  # what hops.patch redirects, per family
    {"_patch_transformers", "_patch_fla"},
    {"patch"},
    {"hops"},  # the package itself: hops/__init__.py
]
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hops"


def imports(module: str, known: set[str]) -> set[str]:
    """The hops modules `module` imports (resolved: `from . import x` names module x when it is one)."""
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "hops"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "hops":
                base = node.module
            else:
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found & known


def graph() -> dict[str, set[str]]:
    known = set(module_names())
    return {module: imports(module, known) - {module} for module in known}


def test_every_module_imports():
    for name in module_names():
        importlib.import_module(name)


def test_every_unit_has_a_layer():
    assert {unit(name) for name in module_names()} <= set(LAYER), "add the new module to LAYERS"


def test_imports_go_only_downwards():
    upward = [f"{module} -> {target}" for module, targets in graph().items() for target in targets
              if unit(module) != unit(target) and LAYER[unit(target)] >= LAYER[unit(module)]]
    assert not upward, "imports that do not go to a lower layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The graph is read from the source: an import of a higher layer is found (here the
    kind the old _frameworks had, a function-level import of torch_ops)."""
    fake = tmp_path / "hops"
    for path in PACKAGE.rglob("*.py"):
        target = fake / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (fake / "_frameworks.py").write_text((fake / "_frameworks.py").read_text() +
                                         "\n\ndef ops_for(x):\n    from . import torch_ops\n    return torch_ops\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    edges = graph()
    assert "hops.torch_ops" in edges["hops._frameworks"]
    assert LAYER[unit("hops.torch_ops")] > LAYER[unit("hops._frameworks")]
