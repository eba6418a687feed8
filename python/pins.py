"""The pinned Python set (python/constraints.txt) against what an environment holds.

    python pins.py check CONSTRAINTS [--site DIR] NAME...
        print the packages pip must install (-c CONSTRAINTS): each NAME that is
        missing, and each installed distribution that is not at its pin
    python pins.py diff CONSTRAINTS [--site DIR]
        print "package: pinned -> installed" for each difference (./run.sh test-latest)
    python pins.py freeze CONSTRAINTS [--site DIR]
        rewrite CONSTRAINTS' pins to what is installed, keeping its header comment

Without --site it reads the running interpreter's packages (sys.path, so
PYTHONPATH folders too). Standard library only, so any venv's python runs it.
"""

import argparse
import re
import sys
from importlib import metadata

NOT_PINNED = {"pip", "hops"}  # the venv's own installer, and the shim (editable from this tree)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def read_pins(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, separator, version = line.partition("==")
            if not separator:
                sys.exit(f"pins.py: {path}: '{line}' is not an exact pin (name==version)")
            pins[canonical(name)] = version.strip()
    return pins


def installed(sites: list[str] | None) -> dict[str, tuple[str, str]]:
    """canonical name -> (name as published, version). The first folder holding a name
    wins (as for import); two versions in one folder (pip --target over an older
    install leaves both .dist-info) read as "a|b", which matches no pin."""
    found, folder = {}, {}
    for distribution in metadata.distributions(**({"path": sites} if sites else {})):
        name, key, where = distribution.metadata["Name"], canonical(distribution.metadata["Name"]), \
            distribution.locate_file("")
        if key not in found:
            found[key], folder[key] = (name, distribution.version), where
        elif folder[key] == where and distribution.version not in found[key][1].split("|"):
            found[key] = (name, f"{found[key][1]}|{distribution.version}")
    return found


def check(constraints: str, present: dict, names: list[str]) -> int:
    pins = read_pins(constraints)
    missing = [name for name in names if canonical(name) not in present]
    stale = [name for name, (_, version) in sorted(present.items()) if name in pins and version != pins[name]]
    for name in stale:
        print(f"pins.py: {name} {present[name][1]} is installed, {constraints} pins {pins[name]}", file=sys.stderr)
    print(" ".join(missing + stale))
    return 0


def diff(constraints: str, present: dict) -> int:
    pins = read_pins(constraints)
    versions = {name: version for name, (_, version) in present.items()}
    changes = [f"  {name}: {pins.get(name, '(not pinned)')} -> {versions.get(name, '(not installed)')}"
               for name in sorted((pins.keys() | versions.keys()) - NOT_PINNED)
               if pins.get(name) != versions.get(name)]
    print("\n".join(changes) if changes else "  none: the installed versions are the pinned ones")
    return 0


def freeze(constraints: str, present: dict) -> int:
    with open(constraints, encoding="utf-8") as lines:
        header = [line for line in lines if line.startswith("#")]
    pins = [f"{name}=={version}\n" for key, (name, version) in sorted(present.items()) if key not in NOT_PINNED]
    with open(constraints, "w", encoding="utf-8") as out:
        out.writelines(header + pins)
    print(f"pins.py: {constraints}: {len(pins)} pins")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "diff", "freeze"])
    parser.add_argument("constraints")
    parser.add_argument("names", nargs="*", help="check: the packages that must be installed")
    parser.add_argument("--site", action="append", help="a folder of installed packages (repeatable)")
    options = parser.parse_intermixed_args()
    command = {"check": lambda c, p: check(c, p, options.names), "diff": diff, "freeze": freeze}[options.command]
    return command(options.constraints, installed(options.site))


if __name__ == "__main__":
    sys.exit(main())
