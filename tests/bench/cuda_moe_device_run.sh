#!/usr/bin/env bash
# One call on the lent GPU for the MoE kernels (issue 15, v2: the dispatch
# bookkeeping and the sm_90a expert MLP): build (cuda_device_run.sh), the MoE
# check (both forward paths of the expert MLP), the conformance runner over
# the MoE ops, compute-sanitizer memcheck on the quick check, then the bench
# (dispatch's kernel split, the MLP on wgmma and mma.sync beside F.grouped_mm).
# Each step runs only while time is left (DEADLINE seconds, 540 by default).
# Usage (repo root, .deps carried): tests/bench/cuda_moe_device_run.sh $OUT
OUT=$1; T0=$(date +%s); DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
cap() { local l=$(left); echo $(( l < $1 ? l : $1 )); }
STEPS="" tests/bench/cuda_device_run.sh $OUT > $OUT/build_out.log 2>&1; tail -2 $OUT/build_out.log
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
[ -f $HOPS_LIBRARY ] || { echo "no build"; exit 1; }
timeout $(cap 200) python3 tests/bench/cuda_moe_check.py > $OUT/moe_check.log 2>&1
echo "cuda_moe_check rc=$? PASS=$(grep -c ^PASS $OUT/moe_check.log) FAIL=$(grep -c ^FAIL $OUT/moe_check.log)"
grep -E "^FAIL|Error" $OUT/moe_check.log | head -20; tail -1 $OUT/moe_check.log
for op in moe_dispatch moe_expert_mlp; do
  [ $(left) -gt 30 ] || break
  timeout $(cap 60) $B/tests/conformance/hops-conformance --provider $HOPS_LIBRARY --backend cuda --op $op \
    > $OUT/conf_$op.log 2>&1
  echo "conformance $op rc=$? $(tail -1 $OUT/conf_$op.log)"; grep -E "^FAIL" $OUT/conf_$op.log | head -5
done
echo "left $(left) s"
[ $(left) -gt 120 ] && { timeout $(cap 150) python3 tests/bench/cuda_moe_bench.py --write > $OUT/moe_bench.log 2>&1
  echo "moe bench rc=$?"; grep -vE "^\|" $OUT/moe_bench.log | tail -25; grep -E "^\|" $OUT/moe_bench.log | head -20; }
[ $(left) -gt 60 ] && { timeout $(cap 150) compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 tests/bench/cuda_moe_check.py --quick > $OUT/moe_memcheck.log 2>&1
  echo "memcheck rc=$? $(grep -E 'ERROR SUMMARY|passed' $OUT/moe_memcheck.log | tail -2 | tr '\n' ' ')"; }
cp docs/PERFORMANCE.md $OUT/ 2>/dev/null
echo "done in $(( $(date +%s) - T0 )) s"
