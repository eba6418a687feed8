#!/usr/bin/env bash
# One call on the lent GPU (issue 5): build with nvcc there, check the
# tensor-core chunk path (tests/bench/cuda_chunk_check.py), time the kernels
# (tests/bench/cuda_bench.py), run the conformance runner over
# libhops_cuda.so, compute-sanitizer memcheck and racecheck on --quick, the Python tests
# (STEPS=pytest: tests/python/test_cuda.py and the quick CPU-only ones); STEPS=bwdcheck:
# gdn_chunk_bwd's tensor-core sweeps against float64 autograd (tests/bench/cuda_bwd_check.py);
# STEPS=moe_ep: tests/bench/cuda_moe_ep_check.py (NCCL opened from the nvidia-nccl wheel beside torch).
# STEPS=sanitize_v4: memcheck and racecheck on gdn_chunk_bwd v4's kernels (HOPS_CUDA_GDN_BWD=v4).
# Usage (repo root): [STEPS="check bench ..."] [CONFORMANCE_OP="op ..."] [MEMCHECK_OP="op ..."]
#   [BENCH_ONLY=N=1,conv,...] tests/bench/cuda_device_run.sh [OUT_DIR]
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
export HOPS_LIBRARY=$PWD/$P PYTHONPATH=$PWD/shims/python:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# STEPS picks and orders the rest (default: all); CONFORMANCE_OP limits the sweep to one op.
for step in ${STEPS-check bench conformance memcheck racecheck ncu}; do
  case $step in
    check)  # the tensor-core chunk path against a float64 recurrence
      timeout 300 python3 tests/bench/cuda_chunk_check.py 2>&1 | tee "$OUT/chunk_check.log" ;;
    moe_ep)  # expert parallelism on one GPU: NCCL with one rank and this device alone, bitwise
      # against moe_dispatch / moe_combine, and dispatch + combine captured in a CUDA graph
      timeout 300 python3 tests/bench/cuda_moe_ep_check.py 2>&1 | tee "$OUT/moe_ep_check.log" ;;
    bwdcheck)  # gdn_chunk_bwd's tensor-core sweeps against float64 autograd
      timeout 300 python3 tests/bench/cuda_bwd_check.py 2>&1 | tee "$OUT/bwd_check.log" ;;
    bench)
      timeout 300 python3 tests/bench/cuda_bench.py ${BENCH_ONLY:+--only $BENCH_ONLY} 2>&1 | tee "$OUT/bench.log" ;;
    conformance)  # CONFORMANCE_OP: one op or a space-separated list
      for op in ${CONFORMANCE_OP:-all}; do
        [ "$op" = all ] && op_arg= || op_arg="--op $op"
        timeout 400 $C --provider $P --backend cuda $op_arg > "$OUT/conformance_$op.log" 2>&1
        echo "conformance $op rc=$?: $(tail -1 "$OUT/conformance_$op.log")"
        grep -E "^FAIL" "$OUT/conformance_$op.log" | head -40
      done ;;
    memcheck)  # MEMCHECK_OP: one op or a space-separated list
      for op in ${MEMCHECK_OP:-all}; do
        [ "$op" = all ] && op_arg= || op_arg="--op $op"
        timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 $C --provider $P --backend cuda --quick $op_arg > "$OUT/san_memcheck_$op.log" 2>&1
        echo "sanitizer memcheck $op --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_memcheck_$op.log" | tail -2 | tr '\n' ' ')"
      done
      case " ${MEMCHECK_OP:-all} " in *" all "*|*" gdn_chunk_bwd "*)
        # the backward's tensor-core sweeps at K = 128 over several chunks
        timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 python3 tests/bench/cuda_bwd_check.py --quick --no-reference > "$OUT/san_memcheck_bwd.log" 2>&1
        echo "sanitizer memcheck cuda_bwd_check --quick rc=$?: $(grep -E 'ERROR SUMMARY|cuda_bwd_check' "$OUT/san_memcheck_bwd.log" | tail -2 | tr '\n' ' ')" ;;
      esac
      case " ${MEMCHECK_OP:-all} " in *" all "*|*" gdn_chunk_fwd "*) ;; *) continue ;; esac
      # the multi-chunk tensor-core cases too (the runner's only K=128 16-bit case is one chunk)
      timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 --kernel-name kns=chunk_ python3 tests/bench/cuda_chunk_check.py --quick > "$OUT/san_memcheck_tc.log" 2>&1
      echo "sanitizer memcheck chunk kernels (cuda_chunk_check --quick) rc=$?: $(grep -E 'ERROR SUMMARY|cuda_chunk_check' "$OUT/san_memcheck_tc.log" | tail -2 | tr '\n' ' ')" ;;
    racecheck)
      for op in ${RACECHECK_OPS-gdn_chunk_fwd gdn_recurrent}; do
        timeout 200 compute-sanitizer --tool racecheck --error-exitcode 99 $C --provider $P --backend cuda --quick --op $op > "$OUT/san_racecheck_$op.log" 2>&1
        echo "sanitizer racecheck $op --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_racecheck_$op.log" | tail -2 | tr '\n' ' ')"
      done
      case " ${RACECHECK_OPS-gdn_chunk_fwd} " in *" gdn_chunk_fwd "*) ;; *) continue ;; esac
      timeout 300 compute-sanitizer --tool racecheck --error-exitcode 99 --kernel-name kns=chunk_ python3 tests/bench/cuda_chunk_check.py --quick > "$OUT/san_racecheck_tc.log" 2>&1
      echo "sanitizer racecheck chunk kernels (cuda_chunk_check --quick) rc=$?: $(grep -E 'ERROR SUMMARY|cuda_chunk_check' "$OUT/san_racecheck_tc.log" | tail -2 | tr '\n' ' ')" ;;
    racecheck_bwd)  # the backward's tensor-core sweeps (cp.async stages, shared state) at K = 128
      timeout 300 compute-sanitizer --tool racecheck --error-exitcode 99 --kernel-name kns=sweep_tc python3 tests/bench/cuda_bwd_check.py --quick --no-reference > "$OUT/san_racecheck_bwd.log" 2>&1
      echo "sanitizer racecheck sweep_tc kernels (cuda_bwd_check --quick) rc=$?: $(grep -E 'ERROR SUMMARY|cuda_bwd_check' "$OUT/san_racecheck_bwd.log" | tail -2 | tr '\n' ' ')" ;;
    sanitize_v4)  # gdn_chunk_bwd v4's kernels (every *_kernel: the records, the state and reverse
      # sweeps, the gradients) under memcheck and racecheck, on the check's quick cases
      for tool in memcheck racecheck; do
        HOPS_CUDA_GDN_BWD=v4 timeout 300 compute-sanitizer --tool $tool --error-exitcode 99 --kernel-name kns=_kernel \
          python3 tests/bench/cuda_bwd_check.py --quick --no-reference > "$OUT/san_${tool}_v4.log" 2>&1
        echo "sanitizer $tool v4 kernels (cuda_bwd_check --quick) rc=$?: $(grep -E 'ERROR SUMMARY|cuda_bwd_check' "$OUT/san_${tool}_v4.log" | tail -2 | tr '\n' ' ')"
      done ;;
    pytest)  # the Python shim on CUDA tensors; then the quick CPU-only Python tests that hold on the
      # device's transformers 5.17 (test_dropins needs GQA in its torch functions, test_training is slow)
      python3 -c 'import hops; print(hops.info())' | grep -A3 backends
      timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/python/test_cuda.py > "$OUT/pytest_cuda.log" 2>&1
      echo "pytest test_cuda.py rc=$?"; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$OUT/pytest_cuda.log" | head -40
      timeout 200 python3 -m pytest -q -p no:cacheprovider tests/python/test_ops.py tests/python/test_dlpack.py \
        tests/python/test_library.py tests/python/test_patch.py tests/python/test_torch_ops.py > "$OUT/pytest_cpu.log" 2>&1
      echo "pytest CPU-only rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_cpu.log" | head -20 ;;
    ncu)  # hardware counters of the two chunk kernels at B=1 T=32768 (Firecracker machines)
      timeout 200 ncu --clock-control none --kernel-name regex:chunk_ --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
        --section LaunchStats python3 tests/bench/cuda_bench.py --profile > "$OUT/ncu.log" 2>&1
      echo "ncu rc=$?"
      grep -E "chunk_(prepare|state)_kernel|Duration|Throughput|Warp Cycles Per Issued|Issued Warp|Achieved Occupancy|L2 Hit|L1/TEX Hit|Registers Per|stalled|Mem Busy|Max Bandwidth" "$OUT/ncu.log" | cut -c1-220 | head -80 ;;
  esac
done
