"""Finding and loading a hops provider, in the order of DESIGN.md section 2:

1. HOPS_LIBRARY: an explicit path. If it cannot be loaded that is an error —
   an explicit choice never falls through silently to another provider.
2. Manifest files `*.json` {"library", "abi", "priority"} in the folders of
   HOPS_PROVIDER_PATH (os.pathsep-separated), then ~/.local/share/hops/providers.d,
   then /etc/hops/providers.d. Higher priority first; ties keep folder order,
   then file name order. A relative "library" is relative to its manifest.
   Manifests of another ABI major, or whose library does not load, are skipped
   (as the OpenCL ICD loader skips broken ICDs) and listed in the error if
   nothing loads.
3. The library bundled in the package (hops/lib/libhops.so), then the one built
   in this source tree (build/plugin/libhops.so).
"""

import ctypes
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ._abi import ABI_MAJOR, hops_api
from .errors import HopsError

LIBRARY_NAME = "libhops.so"
_PACKAGE_DIR = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE_DIR / "lib" / LIBRARY_NAME
_IN_TREE = _PACKAGE_DIR.parents[2] / "build" / "plugin" / LIBRARY_NAME  # shims/python/hops -> root
_SYSTEM_MANIFEST_DIRS = (Path.home() / ".local/share/hops/providers.d", Path("/etc/hops/providers.d"))


@dataclass(frozen=True)
class Candidate:
    path: Path
    source: str  # how it was found, as info() reports it
    explicit: bool = False


@dataclass
class Provider:
    path: Path
    source: str
    api: hops_api
    handle: ctypes.CDLL  # keeps the library loaded as long as the Provider lives


def manifest_dirs() -> list[Path]:
    listed = os.environ.get("HOPS_PROVIDER_PATH", "")
    return [Path(d) for d in listed.split(os.pathsep) if d] + list(_SYSTEM_MANIFEST_DIRS)


def _abi_major(value) -> int | None:
    """"abi" may be written 1, "1" or "1.0"."""
    try:
        return int(str(value).split(".")[0])
    except ValueError:
        return None


def _manifest_candidates(skipped: list[str]) -> list[Candidate]:
    found = []  # (priority, order, candidate)
    for folder in manifest_dirs():
        if not folder.is_dir():
            continue
        for manifest in sorted(folder.glob("*.json")):
            try:
                entry = json.loads(manifest.read_text())
                library = Path(entry["library"])
                major = _abi_major(entry.get("abi", ABI_MAJOR))
                priority = int(entry.get("priority", 0))
            except (OSError, ValueError, KeyError, TypeError) as error:
                skipped.append(f"{manifest}: unreadable manifest ({error})")
                continue
            if major != ABI_MAJOR:
                skipped.append(f"{manifest}: ABI major {major}, this shim speaks {ABI_MAJOR}")
                continue
            path = library if library.is_absolute() else manifest.parent / library
            found.append((-priority, len(found), Candidate(path, f"manifest {manifest}")))
    return [candidate for _, _, candidate in sorted(found, key=lambda item: item[:2])]


def candidates(skipped: list[str]) -> list[Candidate]:
    explicit = os.environ.get("HOPS_LIBRARY")
    if explicit:
        return [Candidate(Path(explicit), "HOPS_LIBRARY", explicit=True)]
    found = _manifest_candidates(skipped)
    for path, source in ((_BUNDLED, "bundled with the package"), (_IN_TREE, "built in the source tree")):
        if path.is_file():
            found.append(Candidate(path, source))
        else:
            skipped.append(f"{path}: not there ({source})")
    return found


def open_provider(candidate: Candidate) -> Provider:
    """Load one library and check that it speaks ABI major 1; HopsError otherwise."""
    try:
        handle = ctypes.CDLL(str(candidate.path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        get_api = handle.hops_get_api
    except (OSError, AttributeError) as error:
        raise HopsError("HOPS_ERR_NOT_FOUND", f"{candidate.path}: cannot load as a hops provider: {error}")
    get_api.restype = ctypes.POINTER(hops_api)
    get_api.argtypes = [ctypes.c_uint32]
    api = get_api(ABI_MAJOR)
    if not api:
        raise HopsError("HOPS_ERR_NOT_FOUND", f"{candidate.path}: hops_get_api({ABI_MAJOR}) returned NULL "
                        "(the provider does not speak this ABI major)")
    table = api.contents
    if table.abi_major != ABI_MAJOR or table.struct_size < hops_api.set_allocator.offset:
        raise HopsError("HOPS_ERR_NOT_FOUND", f"{candidate.path}: API table of ABI "
                        f"{table.abi_major}.{table.abi_minor} ({table.struct_size} bytes) is not usable")
    return Provider(candidate.path.resolve(), candidate.source, table, handle)


def discover() -> Provider:
    skipped: list[str] = []
    for candidate in candidates(skipped):
        try:
            return open_provider(candidate)
        except HopsError as error:
            if candidate.explicit:
                raise HopsError(error.status, f"HOPS_LIBRARY={candidate.path}: {error.message}") from None
            skipped.append(error.message)
    tried = "\n  ".join(skipped) or "(nothing)"
    raise HopsError("HOPS_ERR_NOT_FOUND", "no hops provider found. Set HOPS_LIBRARY to libhops.so, add a "
                    "manifest to HOPS_PROVIDER_PATH, or build the plugin (./run.sh build). Tried:\n  " + tried)
