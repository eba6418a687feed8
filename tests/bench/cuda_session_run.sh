#!/usr/bin/env bash
# One call on the lent GPU that checks everything not yet seen on one, most
# needed first, each step only while time is left (DEADLINE seconds, 480 by
# default): build (cuda_device_run.sh), the CUDA-graph decode step
# and the CUDA shim (test_cuda.py), the NCCL expert-parallel check, the drop-in options
# on CUDA, the MoE and attention checks, the conformance runner over every op,
# then the attention (old and wgmma forward side by side) and MoE benches,
# which write their docs/PERFORMANCE.md sections; PERFORMANCE.md comes back.
# Usage (repo root, .deps carried): tests/bench/cuda_session_run.sh $OUT
OUT=$1; T0=$(date +%s); DEADLINE=${DEADLINE:-480}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
cap() { local l=$(left); echo $(( l < $1 ? l : $1 )); }
STEPS="" tests/bench/cuda_device_run.sh $OUT > $OUT/build_out.log 2>&1; tail -2 $OUT/build_out.log; rm -f $OUT/configure.log
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
pt() {  # pytest file [-k expr]
  [ $(left) -gt 20 ] || { echo "skip pytest $1 (time)"; return; }
  timeout $(cap 80) python3 -m pytest -q -p no:cacheprovider "$@" > $OUT/pytest_$(basename $1 .py).log 2>&1
  echo "pytest $* rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/pytest_$(basename $1 .py).log | head -10
}
chk() {  # script cap
  [ $(left) -gt 20 ] || { echo "skip $1 (time)"; return; }
  timeout $(cap $2) python3 tests/bench/$1.py > $OUT/$1.log 2>&1
  echo "$1 rc=$? PASS=$(grep -c PASS $OUT/$1.log) FAIL=$(grep -c FAIL $OUT/$1.log)"
  grep -E "FAIL|Error|error" $OUT/$1.log | head -10; tail -1 $OUT/$1.log
}
pt tests/python/test_cuda.py
chk cuda_moe_ep_check 50
pt tests/python/test_dropin_options.py -k cuda
chk cuda_moe_check 90
chk cuda_attn_check 110
[ $(left) -gt 30 ] && { timeout $(cap 80) $B/tests/conformance/hops-conformance --provider $HOPS_LIBRARY --backend cuda > $OUT/conf.log 2>&1
  echo "conformance all rc=$? $(tail -1 $OUT/conf.log)"; grep -E "^FAIL" $OUT/conf.log | head -10; }
echo "left $(left) s"
[ $(left) -gt 60 ] && { timeout $(cap 90) python3 tests/bench/cuda_attn_bench.py --compare --write > $OUT/attn_bench.log 2>&1; echo "attn bench rc=$?"; tail -28 $OUT/attn_bench.log; }
[ $(left) -gt 50 ] && { timeout $(cap 80) python3 tests/bench/cuda_moe_bench.py --write > $OUT/moe_bench.log 2>&1; echo "moe bench rc=$?"; grep -E "^\|" $OUT/moe_bench.log | head -20; }
cp docs/PERFORMANCE.md $OUT/
