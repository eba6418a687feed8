"""Packaging (docs/INSTALL.md): the wheel's metadata against the tree and the tested
pins, and a `cmake --install`ed provider found through its providers.d manifest.
The wheel itself is built and tried in a fresh venv by `./run.sh wheel`."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import hops

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "python" / "constraints.txt").read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if version:
            found[name.lower()] = version
    return found


def test_one_version_everywhere():
    wheel = pyproject(ROOT / "pyproject.toml")
    rule = wheel["tool"]["scikit-build"]["metadata"]["version"]
    cmake_version = re.search(rule["regex"], (ROOT / rule["input"]).read_text())["value"]
    shim = pyproject(ROOT / "shims" / "python" / "pyproject.toml")["project"]["version"]
    assert "version" in wheel["project"]["dynamic"]
    assert cmake_version == shim == hops.__version__


def test_wheel_carries_the_shim_and_pins_the_tested_hosts():
    wheel = pyproject(ROOT / "pyproject.toml")
    shim = pyproject(ROOT / "shims" / "python" / "pyproject.toml")
    assert wheel["project"]["dependencies"] == shim["project"]["dependencies"]
    assert wheel["tool"]["scikit-build"]["wheel"]["packages"] == ["shims/python/hops"]
    tested = pins()
    extras = wheel["project"]["optional-dependencies"]
    assert extras["torch"] == [f"torch=={tested['torch']}"]
    assert extras["transformers"] == [f"torch=={tested['torch']}", f"transformers=={tested['transformers']}"]


def test_installed_provider_is_found_through_its_manifest(tmp_path):
    """The runtime and provider components of `cmake --install` (what a vendor's
    package or a distribution lays out): the shim finds the installed libhops.so by
    the manifest alone, and libhops.so finds its modules beside itself there."""
    assert (BUILD / "cmake_install.cmake").is_file(), "build/ first: ./run.sh build"
    prefix = tmp_path / "prefix"
    for component in ("runtime", "provider"):
        subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix), "--component", component],
                       check=True, capture_output=True)
    manifest = prefix / "share" / "hops" / "providers.d" / "hops.json"
    entry = json.loads(manifest.read_text())
    assert entry["abi"] == 1 and not Path(entry["library"]).is_absolute()
    library = (manifest.parent / entry["library"]).resolve()

    env = {key: value for key, value in os.environ.items() if key != "HOPS_LIBRARY"}
    env.update(HOPS_PROVIDER_PATH=str(manifest.parent), HOME=str(tmp_path))  # no user manifests
    script = ("import json, hops; info = hops.info(); print(json.dumps({'path': info.path, 'source': info.source, "
              "'backends': {b.name: b.detail for b in info.backends}}))")
    found = json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                                      text=True, cwd=tmp_path).stdout)
    assert found["source"] == f"manifest {manifest}"
    assert Path(found["path"]) == library and prefix.resolve() in library.parents
    modules = sorted(library.parent.glob("libhops_*.so"))
    assert [module.name for module in modules] == sorted(p.name for p in (BUILD / "plugin").glob("libhops_*.so"))
    # A module's detail names the path it was loaded from.
    loaded_from = {name: Path(re.search(r"/\S*/libhops_\w+\.so", detail)[0]).resolve()
                   for name, detail in found["backends"].items() if "libhops_" in detail}
    assert loaded_from and all(path.parent == library.parent for path in loaded_from.values())
    if (library.parent / "libhops_opencl.so").is_file():
        assert loaded_from["opencl"] == library.parent / "libhops_opencl.so"
