#!/usr/bin/env bash
# GDN on PoCL against the CPU backend (issue 18): hops-opencl-bench's
# gdn_chunk_fwd and gdn_chunk_bwd (H=16, HV=32, K=V=128, use_qk_l2norm) at each
# T, once per form in FORMS: "rule" is the form the backend chooses for the
# device (docs/OPENCL.md: on CPU devices the rows kernels, gdn_chunk_rows.cl
# forward and gdn_bwd_rows.cl backward), the others are forced through
# HOPS_OPENCL_GDN_FORM ("scan": the token scan forward, gdn_scan_panels;
# "chunked": the GPU kernels of gdn_chunk.cl, tens of seconds per call here).
# Prints one markdown table; the CPU column is the CPU backend on the same
# cores, timed in the same process just before.
# Usage (repo root): tests/bench/opencl_gdn_pocl.sh [BUILD_DIR] [TOKENS...]
#   (defaults: build, 1024 4096; REPEAT=3, DTYPE=f32, FORMS="rule scan")
set -euo pipefail
B=${1:-build}
shift || true
TOKENS=${*:-1024 4096}
BENCH=$B/backends/opencl/hops-opencl-bench
export HOPS_OPENCL_DEVICE=${HOPS_OPENCL_DEVICE:-pocl}
echo "| op | shape | dtype | form | CPU ms | PoCL ms | PoCL / CPU |"
echo "|---|---|---|---|--:|--:|--:|"
for T in $TOKENS; do
  for op in gdn_chunk_fwd gdn_chunk_bwd; do
    for form in ${FORMS:-rule scan}; do
      # The backward has no scan to force apart from the one it chooses on CPU devices.
      [ "$op" = gdn_chunk_bwd ] && [ "$form" = scan ] && continue
      [ "$form" = rule ] && unset HOPS_OPENCL_GDN_FORM || export HOPS_OPENCL_GDN_FORM=$form
      label=$([ "$form" = rule ] && echo "chosen (rows)" || echo "$form (forced)")
      "$BENCH" --provider "$B/plugin/libhops.so" --tokens "$T" --repeat "${REPEAT:-3}" --op "$op" \
        --dtype "${DTYPE:-f32}" | grep "^| $op " | awk -F'|' -v form="$label" \
        '{printf "|%s|%s|%s| %s |%s|%s|%s|\n", $2, $3, $4, form, $5, $6, $7}'
    done
  done
done
