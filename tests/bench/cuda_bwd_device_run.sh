#!/usr/bin/env bash
# One device call for gdn_chunk_bwd work (issue 21): builds this tree and a
# baseline (this tree with backends/cuda/gdn_chunk_bwd.cu replaced by
# BASELINE_BWD, when given) side by side, then runs STEPS of
# cuda_device_run.sh for gdn_chunk_bwd on this tree and BASELINE_BENCH (the
# cuda_bench.py cases) on the baseline, without FLA there (its wheels stay
# behind), so both versions are timed on the same card in the same call.
# Usage (repo root): [BASELINE_BWD=file] [STEPS=...] [BENCH_ONLY=...]
#   [BASELINE_BENCH=bwd_B1] tests/bench/cuda_bwd_device_run.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-${OUT:-/tmp/hops-out}}
mkdir -p "$OUT"
base=/tmp/hops-baseline
if [ -n "${BASELINE_BWD:-}" ]; then
  rm -rf $base && mkdir -p $base
  tar --exclude=./.whl --exclude='./build*' -cf - . | tar -C $base -xf -
  cp "$BASELINE_BWD" $base/backends/cuda/gdn_chunk_bwd.cu
  (cd $base && STEPS= tests/bench/cuda_device_run.sh "$OUT/baseline" > "$OUT/baseline_build.log" 2>&1) &
fi
STEPS=${STEPS-conformance bwdcheck bench memcheck} CONFORMANCE_OP=gdn_chunk_bwd MEMCHECK_OP=gdn_chunk_bwd \
  BENCH_ONLY=${BENCH_ONLY-bwd_B1,bwd_B8} tests/bench/cuda_device_run.sh "$OUT"
wait
if [ -n "${BASELINE_BWD:-}" ]; then
  tail -1 "$OUT/baseline_build.log"
  echo "==== baseline ($BASELINE_BWD) ===="
  (cd $base && STEPS=bench BENCH_ONLY=${BASELINE_BENCH-bwd_B1} tests/bench/cuda_device_run.sh "$OUT/baseline" 2>&1 \
    | grep -E "gdn_chunk|copy|kernel|FAILED")
fi
