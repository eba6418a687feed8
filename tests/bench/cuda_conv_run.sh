#!/usr/bin/env bash
# Issue 21's conv1d device calls, two `run`s of ~5 minutes on one warm machine:
#   check: build (cuda_device_run.sh, .deps carried), the conformance sweeps and
#     memcheck --quick of the three conv ops, racecheck --quick of the two
#     bulk-copy ones, tests/bench/cuda_conv_check.py;
#   bench: the conv bench, each process with its own copy bandwidth, on the same
#     card: v4, v3 (HOPS_CONV_V4=0), v4 again, then the temporary variants
#     (HOPS_CONV_FWD=4x3 / 4x5 tiles, HOPS_CONV_BWD=4x4, HOPS_CONV_PDL=0).
#   quick: for a shared call after build-dev is built (builds it if absent),
#     most needed first while DEADLINE seconds (150) last: the conformance
#     sweeps of the three ops, cuda_conv_check.py, the conv bench for v4 and
#     v3 (HOPS_CONV_V4=0), then the sweep's variants.
# Usage (repo root): tests/bench/cuda_conv_run.sh $OUT check|bench|quick
OUT=${1:-/tmp/hops-out}
mkdir -p "$OUT"
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export HOPS_CONV_V4=1  # the v4 paths (off by default, kConvV4, until a GPU has run them)
T0=$(date +%s); DEADLINE=${DEADLINE:-150}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
if [ "${2:-check}" = quick ]; then
  [ -x $B/tests/conformance/hops-conformance ] || STEPS="" tests/bench/cuda_device_run.sh "$OUT" | tail -3
  for op in conv1d_fwd conv1d_update conv1d_bwd; do
    timeout 40 $B/tests/conformance/hops-conformance --provider $HOPS_LIBRARY --backend cuda --op $op \
      > "$OUT/conformance_$op.log" 2>&1
    echo "conformance $op rc=$?: $(tail -1 "$OUT/conformance_$op.log")"; grep -E "^FAIL" "$OUT/conformance_$op.log" | head -10
  done
  timeout 60 python3 tests/bench/cuda_conv_check.py > "$OUT/conv_check.log" 2>&1
  echo "cuda_conv_check rc=$?"; grep -E "FAIL|rror" "$OUT/conv_check.log" | head -20; tail -1 "$OUT/conv_check.log"
  for v in "v4:" "v3:HOPS_CONV_V4=0:" "fwd 4x5:HOPS_CONV_FWD=4x5:conv" "bwd 4x4:HOPS_CONV_BWD=4x4:conv_bwd" \
           "update no PDL:HOPS_CONV_PDL=0:conv_update,conv_update3" "fwd 4x3:HOPS_CONV_FWD=4x3:conv"; do
    IFS=: read -r label env cases <<< "$v"
    [ $(left) -gt 25 ] || { echo "skip bench $label (time)"; continue; }
    echo "== bench $label"
    env $env timeout $(( $(left) - 5 )) python3 tests/bench/cuda_bench.py --only ${cases:-conv,conv_update,conv_update3,conv_bwd} 2>&1 |
      sed -n '/==== summary/,$p'
  done
  exit 0
fi
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
bench v3 HOPS_CONV_V4=0 $ALL
bench v4 "" $ALL
bench "fwd tiles 4x3" HOPS_CONV_FWD=4x3 conv
bench "fwd tiles 4x5" HOPS_CONV_FWD=4x5 conv
bench "bwd tiles 4x4" HOPS_CONV_BWD=4x4 conv_bwd
bench "update without PDL" HOPS_CONV_PDL=0 conv_update,conv_update3
