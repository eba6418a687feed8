#!/usr/bin/env bash
# Issue 21's conv1d device calls, two `run`s of ~5 minutes on one warm machine:
#   check: build (cuda_device_run.sh, .deps carried), the conformance sweeps and
#     memcheck --quick of the three conv ops, racecheck --quick of the two
#     bulk-copy ones, tests/bench/cuda_conv_check.py;
#   bench: the conv bench, each process with its own copy bandwidth, on the same
#     card: v4, v3 (HOPS_CONV_V3=1), v4 again, then the temporary variants
#     (HOPS_CONV_FWD=4x3 / 4x5 tiles, HOPS_CONV_BWD=4x4, HOPS_CONV_PDL=0).
# Usage (repo root): tests/bench/cuda_conv_run.sh $OUT check|bench
OUT=${1:-/tmp/hops-out}
mkdir -p "$OUT"
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
if [ "${2:-check}" = check ]; then
  OPS="conv1d_fwd conv1d_update conv1d_bwd"
  STEPS="conformance memcheck" CONFORMANCE_OP="$OPS" MEMCHECK_OP="$OPS" tests/bench/cuda_device_run.sh "$OUT"
  for op in conv1d_fwd conv1d_bwd; do
    timeout 100 compute-sanitizer --tool racecheck --error-exitcode 99 $B/tests/conformance/hops-conformance \
      --provider $HOPS_LIBRARY --backend cuda --quick --op $op > "$OUT/san_racecheck_$op.log" 2>&1
    echo "racecheck $op --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_racecheck_$op.log" | tail -2 | tr '\n' ' ')"
  done
  timeout 120 python3 tests/bench/cuda_conv_check.py > "$OUT/conv_check.log" 2>&1
  echo "cuda_conv_check rc=$?"; grep -E "FAIL|rror" "$OUT/conv_check.log" | head -20; tail -1 "$OUT/conv_check.log"
  exit 0
fi
bench() {  # label env cases
  echo "== $1"
  env $2 timeout 60 python3 tests/bench/cuda_bench.py --only $3 2>&1 | sed -n '/==== summary/,$p'
}
ALL=conv,conv_update,conv_update3,conv_bwd
bench v4 "" $ALL
bench v3 HOPS_CONV_V3=1 $ALL
bench v4 "" $ALL
bench "fwd tiles 4x3" HOPS_CONV_FWD=4x3 conv
bench "fwd tiles 4x5" HOPS_CONV_FWD=4x5 conv
bench "bwd tiles 4x4" HOPS_CONV_BWD=4x4 conv_bwd
bench "update without PDL" HOPS_CONV_PDL=0 conv_update,conv_update3
