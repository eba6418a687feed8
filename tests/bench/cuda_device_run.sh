#!/usr/bin/env bash
# One call on the lent GPU (issue 5): build with nvcc there, run the
# conformance runner over libhops_cuda.so, compute-sanitizer memcheck and
# racecheck on --quick, then time the kernels (tests/bench/cuda_bench.py).
# Usage (repo root): tests/bench/cuda_device_run.sh [OUT_DIR]
# Carry .whl (fla-core) for the FLA comparison; without it FLA is skipped.
# The device image has no fmt, DLPack, GTest or libffi: carry .deps, a prefix
# copied from a Debian dev machine (ignored via .git/info/exclude):
#   include/{fmt,dlpack,gtest,gmock,ffi.h,ffitarget.h},
#   lib/x86_64-linux-gnu/{libfmt.so*,libgtest*.a,libgmock*.a,libffi.so*,libpkgconf.so.3*},
#   lib/x86_64-linux-gnu/cmake/{fmt,GTest,dlpack}, lib/x86_64-linux-gnu/pkgconfig/libffi.pc
#   (prefix=${pcfiledir}/../../..), bin/pkg-config (pkgconf).
set -uo pipefail
OUT=${1:-${OUT:-/tmp/hops-out}}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
B=build-dev
t0=$(date +%s)
# The device image lacks fmt, DLPack and GTest: carry .deps (a prefix copied from the dev machine).
if [ -d .deps ]; then
  PREFIX_ARGS="-DCMAKE_PREFIX_PATH=$PWD/.deps"
  export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$PWD/.deps/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
  command -v pkg-config >/dev/null || export PATH=$PATH:$PWD/.deps/bin
fi
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release ${PREFIX_ARGS:-} -DHOPS_WITH_CUDA=ON -DHOPS_WITH_OPENCL=OFF > "$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C $B hops hops_cuda hops-conformance > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
C=$B/tests/conformance/hops-conformance
P=$B/plugin/libhops.so
timeout 400 $C --provider $P --backend cuda > "$OUT/conformance.log" 2>&1
echo "conformance rc=$?: $(tail -1 "$OUT/conformance.log")"
grep -E "^FAIL" "$OUT/conformance.log" | head -40
for op in ${RACECHECK_OPS-gdn_chunk_fwd gdn_recurrent}; do  # the kernels that share memory between threads
  timeout 200 compute-sanitizer --tool racecheck --error-exitcode 99 $C --provider $P --backend cuda --quick --op $op > "$OUT/san_racecheck_$op.log" 2>&1
  echo "sanitizer racecheck $op --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_racecheck_$op.log" | tail -2 | tr '\n' ' ')"
done
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 $C --provider $P --backend cuda --quick > "$OUT/san_memcheck.log" 2>&1
echo "sanitizer memcheck all --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_memcheck.log" | tail -2 | tr '\n' ' ')"
HOPS_LIBRARY=$PWD/$P PYTHONPATH=$PWD/shims/python:${PYTHONPATH:-} PYTHONUNBUFFERED=1 timeout 300 python3 tests/bench/cuda_bench.py 2>&1 | tee "$OUT/bench.log"
