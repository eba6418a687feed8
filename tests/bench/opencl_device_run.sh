#!/usr/bin/env bash
# One call on the lent GPU (issue 6, item 4): the OpenCL backend on NVIDIA's
# OpenCL platform. The image registers only PoCL in /etc/OpenCL/vendors, so an
# ICD folder naming libnvidia-opencl.so.1 is made here. Also re-runs the CUDA
# conformance sweep, and times NVIDIA's OpenCL against the CPU backend and the
# CUDA backend (tests/bench/cuda_vs_opencl.py). Carry .deps (device_deps.sh).
# Usage (repo root): [CONFORMANCE=0] tests/bench/opencl_device_run.sh [OUT_DIR]
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
export OCL_ICD_VENDORS=/tmp/icd
# Headers and loader: the system's if present, else the CUDA toolkit's.
CL_ARGS=""
[ -f /usr/include/CL/cl.h ] || CL_ARGS="-DOpenCL_INCLUDE_DIR=/usr/local/cuda/include -DOpenCL_LIBRARY=/usr/local/cuda/lib64/libOpenCL.so"
B=build-dev
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release ${PREFIX_ARGS:-} -DHOPS_WITH_CUDA=ON -DHOPS_WITH_OPENCL=ON $CL_ARGS \
  > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C $B hops hops_cuda hops_opencl hops-conformance hops-opencl-bench hops-call > "$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -60; exit 1; }
C=$B/tests/conformance/hops-conformance
P=$B/plugin/libhops.so
HOPS_OPENCL_DEVICE=nvidia $B/shims/cli/hops-call --provider $P --list 2>/dev/null | grep -i -E "backend|opencl|cuda" | head -8
if [ "${CONFORMANCE:-1}" != 0 ]; then
  HOPS_OPENCL_DEVICE=nvidia timeout 300 $C --provider $P --backend opencl > "$OUT/conformance_opencl_nvidia.log" 2>&1
  echo "conformance opencl (nvidia) rc=$?: $(tail -1 "$OUT/conformance_opencl_nvidia.log")"
  grep -E "^FAIL|backend" "$OUT/conformance_opencl_nvidia.log" | head -20
  HOPS_OPENCL_DEVICE=nvidia timeout 300 $C --provider $P --backend opencl --host-indices > "$OUT/conformance_opencl_nvidia_host.log" 2>&1
  echo "conformance opencl (nvidia, host indices) rc=$?: $(tail -1 "$OUT/conformance_opencl_nvidia_host.log")"
  timeout 300 $C --provider $P --backend cuda > "$OUT/conformance_cuda.log" 2>&1
  echo "conformance cuda rc=$?: $(tail -1 "$OUT/conformance_cuda.log")"
  grep -E "^FAIL" "$OUT/conformance_cuda.log" | head -10
fi
for dtype in f32 bf16; do
  HOPS_OPENCL_DEVICE=nvidia timeout 200 $B/backends/opencl/hops-opencl-bench --provider $P --tokens 4096 --repeat 9 --dtype $dtype 2>&1 | tee "$OUT/opencl_bench_$dtype.md"
done
HOPS_LIBRARY=$PWD/$P PYTHONPATH=$PWD/shims/python:${PYTHONPATH:-} PYTHONUNBUFFERED=1 timeout 200 \
  python3 tests/bench/cuda_vs_opencl.py --tokens 4096 --repeat 9 "$OUT"/opencl_bench_{f32,bf16}.md | tee "$OUT/cuda_vs_opencl.md"
