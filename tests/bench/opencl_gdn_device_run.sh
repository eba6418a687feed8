#!/usr/bin/env bash
# One call on the lent GPU (issue 18): the chunked (WY) GDN of the OpenCL
# backend on NVIDIA's OpenCL platform against the CUDA backend on the same GPU.
#   1. build (CUDA + OpenCL) in build-dev, as opencl_device_run.sh does;
#   2. conformance on NVIDIA's OpenCL: the whole sweep with device-resident and
#      with host index tensors (GPUs take the chunked form from 32 tokens per
#      sequence on), then gdn_chunk_fwd / gdn_chunk_bwd with the chunked form
#      forced (HOPS_OPENCL_GDN_FORM=chunked: the short cases too), both modes;
#   3. hops-opencl-bench (CPU backend and NVIDIA's OpenCL) and
#      cuda_vs_opencl.py (CUDA backend) for gdn_chunk_fwd and gdn_chunk_bwd,
#      bf16, H=16 HV=32 K=V=128, at T=4096 and 32768, with a fwd+bwd row.
# Carry .deps (tests/bench/device_deps.sh). Usage (repo root):
#   [CONFORMANCE=0] [TOKENS="4096 32768"] tests/bench/opencl_gdn_device_run.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-${OUT:-/tmp/hops-out}}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
if [ -d .deps ]; then
  PREFIX_ARGS="-DCMAKE_PREFIX_PATH=$PWD/.deps"
  export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$PWD/.deps/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
  command -v pkg-config >/dev/null || export PATH=$PATH:$PWD/.deps/bin
fi
mkdir -p /tmp/icd && cp /etc/OpenCL/vendors/*.icd /tmp/icd/ 2>/dev/null
echo libnvidia-opencl.so.1 > /tmp/icd/nvidia.icd
export OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia
CL_ARGS=""
[ -f /usr/include/CL/cl.h ] || CL_ARGS="-DOpenCL_INCLUDE_DIR=/usr/local/cuda/include -DOpenCL_LIBRARY=/usr/local/cuda/lib64/libOpenCL.so"
B=build-dev
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release ${PREFIX_ARGS:-} -DHOPS_WITH_CUDA=ON -DHOPS_WITH_OPENCL=ON $CL_ARGS \
  > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C $B hops hops_cuda hops_opencl hops-conformance hops-opencl-bench > "$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; exit 1; }
C=$B/tests/conformance/hops-conformance
P=$B/plugin/libhops.so
status=0
conformance() {  # log name, arguments...
  local log=$OUT/$1.log
  shift
  timeout 300 $C --provider $P --backend opencl "$@" > "$log" 2>&1
  local rc=$?
  [ $rc = 0 ] || status=1
  echo "$(basename "$log" .log) rc=$rc: $(tail -1 "$log")"
  grep -E "^FAIL|backend opencl" "$log" | head -12
}
if [ "${CONFORMANCE:-1}" != 0 ]; then
  conformance conformance_opencl_nvidia
  conformance conformance_opencl_nvidia_host --host-indices
  for op in gdn_chunk_fwd gdn_chunk_bwd; do
    HOPS_OPENCL_GDN_FORM=chunked conformance "conformance_${op}_chunked_nvidia" --op $op
    HOPS_OPENCL_GDN_FORM=chunked conformance "conformance_${op}_chunked_nvidia_host" --op $op --host-indices
  done
fi
for T in ${TOKENS:-4096 32768}; do
  table=$OUT/opencl_gdn_T$T.md
  : > "$table"
  for op in gdn_chunk_fwd gdn_chunk_bwd; do
    timeout 240 $B/backends/opencl/hops-opencl-bench --provider $P --tokens "$T" --repeat 5 \
      --op $op --dtype bf16 2>&1 | tee -a "$table" || status=1
  done
  HOPS_LIBRARY=$PWD/$P PYTHONPATH=$PWD/shims/python:${PYTHONPATH:-} PYTHONUNBUFFERED=1 timeout 200 \
    python3 tests/bench/cuda_vs_opencl.py --tokens "$T" --repeat 5 "$table" | tee "$OUT/cuda_vs_opencl_gdn_T$T.md" \
    || status=1
done
exit $status
