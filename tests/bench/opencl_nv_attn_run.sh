#!/usr/bin/env bash
# attn_prefill's tensor-core kernel for NVIDIA's OpenCL (backends/opencl/attn_nv.cl) on
# the lent GPU, in one call (~5 min; reuses build-dev when cuda_session_run.sh built it):
#  1. conformance --op attn_prefill on NVIDIA's platform: the default (attn_nv.cl with
#     ldmatrix), HOPS_OPENCL_ATTN=nv-plain (plain local loads), nv-pipe
#     (HOPS_OPENCL_NV_DEFINES=-DNV_PIPE=1) and HOPS_OPENCL_ATTN=portable (attn.cl),
#     device-resident indices, then the default with --host-indices; a build that NVIDIA's
#     compiler rejected shows as "not built" lines (the portable kernel ran instead);
#  2. NVIDIA's compiler's own PTX of attn_nv.cl (the program binaries in the disk cache)
#     through ptxas -v for sm_90: registers and spills;
#  3. hops-opencl-bench attn_prefill bf16 (D 256, 16/2 heads, causal) for the four
#     variants, then cuda_vs_opencl.py: CUDA default (sm_90a) and mma.sync beside them,
#     ratios and TFLOP/s.
# Usage (repo root, .deps and .whl carried): [TOKENS=4096] tests/bench/opencl_nv_attn_run.sh $OUT
set -uo pipefail
OUT=${1:-${OUT:-/tmp/hops-out}}; mkdir -p "$OUT"
TOKENS=${TOKENS:-4096}
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
if [ -d .deps ]; then
  PREFIX_ARGS="-DCMAKE_PREFIX_PATH=$PWD/.deps"
  export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$PWD/.deps/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
  command -v pkg-config >/dev/null || export PATH=$PATH:$PWD/.deps/bin
fi
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/icd && cp /etc/OpenCL/vendors/*.icd /tmp/icd/ 2>/dev/null
echo libnvidia-opencl.so.1 > /tmp/icd/nvidia.icd
export OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia HOPS_OPENCL_CACHE_DIR=$OUT/clcache
CL_ARGS=""
[ -f /usr/include/CL/cl.h ] || CL_ARGS="-DOpenCL_INCLUDE_DIR=/usr/local/cuda/include -DOpenCL_LIBRARY=/usr/local/cuda/lib64/libOpenCL.so"
B=build-dev
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release ${PREFIX_ARGS:-} -DHOPS_WITH_CUDA=ON -DHOPS_WITH_OPENCL=ON $CL_ARGS \
  > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C $B hops hops_cuda hops_opencl hops-conformance hops-opencl-bench > "$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; exit 1; }
C=$B/tests/conformance/hops-conformance P=$B/plugin/libhops.so
# nv: attn_nv.cl with ldmatrix (opt-in until this run passes); nv-pipe: D = 256's next tile staged in registers
attn() { case $1 in nv-pipe) echo nv ;; *) echo $1 ;; esac; }
defs() { [ $1 = nv-pipe ] && echo "-DNV_PIPE=1"; }
for variant in nv nv-plain nv-pipe portable; do
  HOPS_OPENCL_ATTN=$(attn $variant) HOPS_OPENCL_NV_DEFINES=$(defs $variant) timeout 150 $C --provider $P --backend opencl --op attn_prefill > "$OUT/conf_$variant.log" 2>&1
  echo "conformance attn_prefill [$variant] rc=$?: $(tail -1 "$OUT/conf_$variant.log")"
  grep -E "^FAIL" "$OUT/conf_$variant.log" | head -6 | cut -c1-220
  grep -m2 "not built" "$OUT/conf_$variant.log" | cut -c1-400
done
timeout 150 $C --provider $P --backend opencl --op attn_prefill --host-indices > "$OUT/conf_nv_host.log" 2>&1
echo "conformance attn_prefill [nv, host indices] rc=$?: $(tail -1 "$OUT/conf_nv_host.log")"
# NVIDIA's program binaries are PTX: the cache files (key, then binary) hold it.
for bin in "$OUT"/clcache/*.bin; do
  grep -q "attn_nv.cl" "$bin" 2>/dev/null || continue
  python3 - "$bin" "$bin.ptx" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"//\n// Generated")
start = start if start >= 0 else data.rfind(b"\n", 0, data.find(b".version")) + 1
open(sys.argv[2], "wb").write(data[start:].split(b"\0")[0])
PY
  echo "$(grep -a -m1 -o "options: .*" "$bin"): $(ptxas -arch=sm_90 -v "$bin.ptx" -o /dev/null 2>&1 | grep -E "Used|spill|error" | tr -s ' \n' ' ' | cut -c1-300)"
done
for variant in nv nv-plain nv-pipe portable; do
  HOPS_OPENCL_ATTN=$(attn $variant) HOPS_OPENCL_NV_DEFINES=$(defs $variant) timeout 200 $B/backends/opencl/hops-opencl-bench --provider $P --tokens $TOKENS --repeat 5 \
    --dtype bf16 --op attn_prefill > "$OUT/bench@$variant.md" 2>&1
  cat "$OUT/bench@$variant.md"
done
HOPS_LIBRARY=$PWD/$P PYTHONPATH=$PWD/shims/python:/tmp/site:${PYTHONPATH:-} timeout 200 \
  python3 tests/bench/cuda_vs_opencl.py --tokens $TOKENS --repeat 9 "$OUT"/bench@{nv,nv-plain,nv-pipe,portable}.md \
  | tee "$OUT/cuda_vs_opencl.md"
rm -rf "$OUT/clcache"/*.bin  # keep the .ptx files only
