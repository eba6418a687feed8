#!/usr/bin/env bash
# hops set-up and entry points. Each command installs what is missing (apt-get
# for system packages, pip into ./.venv for Python), configures and builds,
# then runs. Safe to run again: installed things are skipped, builds are
# incremental, pip keeps its cache.
#
#   ./run.sh demo    build, then run the main job on the CPU backend
#   ./run.sh test    build, then every test: ctest (Release and ASan/UBSan) + pytest,
#                    the threaded tests under TSan (build-tsan/) and the ABI check
#   ./run.sh test-latest  pytest on the newest Python releases (.venv-latest), then
#                    what changed against the pins (python/constraints.txt)
#   ./run.sh build   build only
#   ./run.sh wheel   the pip wheel (pyproject.toml, scikit-build-core) built, checked and
#                    repaired by auditwheel, then smoke-tested in a fresh venv; into dist/
#   ./run.sh lint    clang-format check and clang-tidy over the sources
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
JOBS=$(nproc)

say() { printf '\n== %s\n' "$*"; }

# ---- system packages ---------------------------------------------------------
APT_PACKAGES=(build-essential cmake pkg-config git python3 python3-venv
              libffi-dev libdlpack-dev libfmt-dev ocl-icd-opencl-dev pocl-opencl-icd
              googletest libgtest-dev libbenchmark-dev clang-format clang-tidy
              abigail-tools  # abi/check.sh: abidw, abidiff
              clang-16 libclang-rt-16-dev  # the fuzzer: clang >= 16 and libFuzzer
              libopenmpi-dev openmpi-bin  # libhops_mpi.so and its mpirun tests
              libxsmm-dev)  # the CPU backend's JIT small GEMMs (optional: HOPS_WITH_LIBXSMM)

install_system_packages() {
  local missing=()
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "hops: missing packages: ${missing[*]} — install them with: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---- python environment --------------------------------------------------------
# torch from the package index pulls large CUDA wheels: minutes the first
# time, then pip's cache and the skip below make it free. Versions come from
# python/constraints.txt, the tested set (its header says how to update it).
PYTHON_PACKAGES=(numpy pytest torch transformers tqdm mpi4py)  # mpi4py: built against the system Open MPI
# flash-linear-attention in a folder of its own: importable, it would become
# transformers' unpatched path, so only tests/python/test_patch_fla.py sees it.
FLA_PACKAGES=(fla-core einops)
CONSTRAINTS=python/constraints.txt
FLA_SITE=.venv/fla-site

install_python_packages() {  # venv folder [latest: the newest releases, no constraints]
  local venv=${1:-.venv} mode=${2:-pinned}
  local python=$venv/bin/python fla_site=$venv/fla-site stale
  if [ ! -x "$python" ]; then
    say "python venv in $venv"
    python3 -m venv "$venv"
  fi
  if [ "$mode" = latest ]; then
    say "pip install --upgrade ${PYTHON_PACKAGES[*]} (the newest releases, into $venv)"
    "$python" -m pip install -q --upgrade --upgrade-strategy eager "${PYTHON_PACKAGES[@]}"
    say "pip install ${FLA_PACKAGES[*]} (the newest, into $fla_site)"
    rm -rf "$fla_site"  # pip --target --upgrade would leave the old .dist-info beside the new
    "$python" -m pip install -q --no-deps --target "$fla_site" "${FLA_PACKAGES[@]}"
  else
    # Versions, not presence: what is missing or not at its pin (a newer
    # transformers left in the venv, say) is installed at the pin.
    stale=$("$python" python/pins.py check "$CONSTRAINTS" "${PYTHON_PACKAGES[@]}")
    if [ -n "$stale" ]; then
      say "pip install -c $CONSTRAINTS $stale"
      "$python" -m pip install -q -c "$CONSTRAINTS" $stale
    fi
    stale=$("$python" python/pins.py check "$CONSTRAINTS" --site "$fla_site" "${FLA_PACKAGES[@]}")
    if [ -n "$stale" ]; then
      say "pip install -c $CONSTRAINTS ${FLA_PACKAGES[*]} (into $fla_site)"
      rm -rf "$fla_site"
      "$python" -m pip install -q --no-deps --target "$fla_site" -c "$CONSTRAINTS" "${FLA_PACKAGES[@]}"
    fi
  fi
  # The shim, editable, so that it finds the in-tree build.
  "$python" -m pip show -q hops >/dev/null 2>&1 || "$python" -m pip install -q -e shims/python
}

# ---- builds ------------------------------------------------------------------
configure_and_build() {  # build_dir, cmake args...
  local dir=$1
  shift
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$dir" "$@" >/dev/null || { echo "hops: CMake configure failed ($dir)" >&2; exit 1; }
  fi
  cmake --build "$dir" -j "$JOBS"
}

build_release() { configure_and_build build -DCMAKE_BUILD_TYPE=Release; }
build_sanitized() {
  # No GPU in CI: the sanitized build skips the CUDA module (Release builds it).
  configure_and_build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOPS_SANITIZE=ON -DHOPS_WITH_CUDA=OFF
}
build_tsan() {
  # ThreadSanitizer: only what the tests labelled "threads" run.
  if [ ! -f build-tsan/CMakeCache.txt ]; then
    cmake -S "$ROOT" -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOPS_SANITIZE_THREAD=ON \
      -DHOPS_WITH_CUDA=OFF >/dev/null || { echo "hops: CMake configure failed (build-tsan)" >&2; exit 1; }
  fi
  local targets=(hops hops-conformance hops_thread_tests)
  [[ $(cmake --build build-tsan --target help) == *hops_opencl* ]] && targets+=(hops_opencl)
  cmake --build build-tsan -j "$JOBS" --target "${targets[@]}"
}

setup() {
  install_system_packages
  install_python_packages
  say "build (Release)"
  build_release
}

# ---- commands ----------------------------------------------------------------
# A bounded libFuzzer run of the generic call path (tests/fuzz, docs/FUZZING.md):
# any finding fails the tests.
run_fuzz() {
  say "fuzz api->call for ${HOPS_FUZZ_SECONDS:-90} s (libFuzzer + ASan/UBSan, build-fuzz/)"
  tests/fuzz/run_fuzz.sh "${HOPS_FUZZ_SECONDS:-90}"
}

run_tests() {
  local status=0
  say "ctest (Release)"
  (cd build && ctest --output-on-failure -j "$JOBS") || status=1
  say "build (AddressSanitizer + UndefinedBehaviorSanitizer)"
  build_sanitized
  say "ctest (ASan/UBSan)"
  # use_tls=0: LeakSanitizer's exit scan crashed its own tracer on a bogus dynamic-TLS
  # range of the main thread once PoCL's libraries are loaded (after every check of
  # hops-conformance had passed). Without TLS as a root it can only report more leaks,
  # never hide one.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=use_tls=0 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure -j "$JOBS") || status=1
  say "pytest"
  .venv/bin/python -m pytest -q tests/python || status=1
  say "pytest with flash-linear-attention importable"
  PYTHONPATH="$FLA_SITE" .venv/bin/python -m pytest -q tests/python/test_patch_fla.py || status=1
  say "build (ThreadSanitizer)"
  build_tsan
  say "ctest -L threads (ThreadSanitizer)"
  (cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
     ctest -L threads --output-on-failure -j "$JOBS") || status=1
  say "ABI compatibility with abi/libhops.abi (abidiff)"
  JOBS=$JOBS abi/check.sh || status=1
  run_fuzz || status=1
  return $status
}

run_test_latest() {
  local status=0 python=.venv-latest/bin/python
  say "pytest on the newest releases (.venv-latest; ctest does not depend on them, so it is not rerun)"
  "$python" -m pytest -q tests/python || status=1
  say "pytest with flash-linear-attention importable (.venv-latest)"
  PYTHONPATH=.venv-latest/fla-site "$python" -m pytest -q tests/python/test_patch_fla.py || status=1
  say "what changed: package: pinned ($CONSTRAINTS) -> newest"
  PYTHONPATH=.venv-latest/fla-site "$python" python/pins.py diff "$CONSTRAINTS"
  [ $status -eq 0 ] && echo "hops: the suite passes on the newest releases" ||
    echo "hops: the suite FAILS on the newest releases" >&2
  return $status
}

run_demo() {
  say "demo 1/2: one Qwen3.5-sized GDN layer from a plain C host, through the C ABI"
  build/examples/c_host build/plugin/libhops.so
  say "demo 2/2: Qwen3.5-35B-A3B's layout scaled to this machine (GDN, gated attention, MoE) on the CPU, unpatched vs hops.patch()"
  .venv/bin/python examples/python_demo.py
}

run_lint() {
  local sources
  sources=$(git ls-files '*.c' '*.h' '*.cpp' '*.hpp')
  say "clang-format"
  clang-format --dry-run --Werror $sources
  say "clang-tidy"
  git ls-files 'plugin/*.cpp' 'backends/cpu/*.cpp' | xargs -P "$JOBS" -n 4 clang-tidy -p build --quiet
}

case "${1:-}" in
  demo) setup; run_demo ;;
  test) setup; run_tests ;;
  test-latest) install_system_packages; install_python_packages .venv-latest latest
               say "build (Release)"; build_release; run_test_latest ;;
  build) setup ;;
  wheel) install_system_packages; tests/packaging/wheel_test.sh ;;
  lint) setup; run_lint ;;
  *) echo "usage: ./run.sh demo|test|test-latest|build|wheel|lint" >&2; exit 2 ;;
esac
