#!/usr/bin/env bash
# Issue 21's conv1d device call (one `run`, ~8 minutes): build (cuda_device_run.sh,
# .deps carried), the conformance sweeps and memcheck --quick of the three conv
# ops, racecheck --quick of the two bulk-copy ones, tests/bench/cuda_conv_check.py,
# then the conv bench three times: v4, v3 (HOPS_CONV_V3=1, the temporary switch)
# and v4 again, each with its own copy bandwidth, on the same card.
# Usage (repo root): tests/bench/cuda_conv_run.sh $OUT
OUT=${1:-/tmp/hops-out}
mkdir -p "$OUT"
OPS="conv1d_fwd conv1d_update conv1d_bwd"
STEPS="conformance memcheck" CONFORMANCE_OP="$OPS" MEMCHECK_OP="$OPS" tests/bench/cuda_device_run.sh "$OUT" 2>&1 |
  grep -v "^$"
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
for op in conv1d_fwd conv1d_bwd; do
  timeout 120 compute-sanitizer --tool racecheck --error-exitcode 99 $B/tests/conformance/hops-conformance \
    --provider $HOPS_LIBRARY --backend cuda --quick --op $op > "$OUT/san_racecheck_$op.log" 2>&1
  echo "racecheck $op --quick rc=$?: $(grep -E 'ERROR SUMMARY|passed' "$OUT/san_racecheck_$op.log" | tail -2 | tr '\n' ' ')"
done
timeout 120 python3 tests/bench/cuda_conv_check.py > "$OUT/conv_check.log" 2>&1
echo "cuda_conv_check rc=$?"; grep -E "FAIL|rror" "$OUT/conv_check.log" | head -20; tail -1 "$OUT/conv_check.log"
CASES=conv,conv_update,conv_update3,conv_bwd
for run in v4 v3 v4; do
  echo "== bench $run"
  ( [ $run = v3 ] && export HOPS_CONV_V3=1
    timeout 100 python3 tests/bench/cuda_bench.py --only $CASES 2>&1 | sed -n '/==== summary/,$p' )
done
