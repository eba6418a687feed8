#!/usr/bin/env bash
# Off-GPU check of backends/opencl/attn_nv.cl's inline PTX: each variant (f16/bf16,
# D 64/128/256, ldmatrix or plain loads) compiled as the backend builds it (common.cl
# first) by clang's OpenCL front end to PTX, then assembled by ptxas for sm_90; prints
# ptxas' registers, spills and errors. clang spells inline asm __asm__ (NV_GNU_ASM), and
# without libclc the work-item functions and the few builtins the program calls come from
# ocl_nv_ptx_prelude.h. NVIDIA's own OpenCL compiler is not this one: the build on the
# device is the real check (docs/OPENCL.md).
# Usage: [PIPES="0 1"] tests/bench/ocl_nv_ptx_check.sh   (needs clang-16 and /usr/local/cuda/bin/ptxas;
# PIPES: NV_PIPE values to try beside the default)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLANG=${CLANG:-/usr/lib/llvm-16/bin/clang}
PTXAS=${PTXAS:-/usr/local/cuda/bin/ptxas}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cat "$ROOT/backends/opencl/common.cl"; echo '#line 1 "attn_nv.cl"'; cat "$ROOT/backends/opencl/attn_nv.cl") > "$TMP/src.cl"
status=0
for X in 1 2; do for D in 64 128 256; do for L in 1 0; do for PIPE in ${PIPES:-default}; do
  ptx=$TMP/attn_nv_${X}_${D}_${L}.ptx
  if ! "$CLANG" -x cl -cl-std=CL1.2 -target nvptx64-nvidia-nvcl -Xclang -finclude-default-header \
      -include "$ROOT/tests/bench/ocl_nv_ptx_prelude.h" -DHOPS_X=$X -DNV_D=$D -DNV_LDSM=$L $([ $PIPE = default ] || echo -DNV_PIPE=$PIPE) -O2 -S \
      -Xclang -target-cpu -Xclang sm_80 -Xclang -target-feature -Xclang +ptx70 "$TMP/src.cl" -o "$ptx"; then
    echo "FAIL clang HOPS_X=$X NV_D=$D NV_LDSM=$L"; status=1; continue
  fi
  if out=$("$PTXAS" -arch=sm_90 -c -v "$ptx" -o "$TMP/out.o" 2>&1); then
    echo "ok   HOPS_X=$X NV_D=$D NV_LDSM=$L NV_PIPE=$PIPE: $(echo "$out" | grep -E "Used|[1-9][0-9]* bytes spill" | sed 's/ptxas info *: //' | tr -s ' \n' ' ')"
  else
    echo "FAIL ptxas HOPS_X=$X NV_D=$D NV_LDSM=$L"; echo "$out" | head -5; status=1
  fi
done; done; done; done
exit $status
