#!/usr/bin/env bash
# The lent GPU's checks and timings in two calls of one session, each step
# only while time is left (DEADLINE seconds, 540 by default), most needed first.
# Both build the CUDA and OpenCL backends (build-dev). Every log comes back in
# one archive, logs.tar, beside PERFORMANCE.md (a call returns at most 8 files).
#   PART=a (the defaults; issues 14 and 15): the conformance runner over every
#     CUDA op; cuda_moe_check (every MoE path, every dispatch version);
#     tests/python/test_cuda.py; cuda_moe_bench (dispatch v2 / v1 / v3 /
#     v3-chain); memcheck on the sm_90a attention backward; the attention
#     family on NVIDIA's OpenCL (conformance, then hops-opencl-bench beside
#     the CUDA backend: cuda_vs_opencl.py); the other sanitizer runs (MoE,
#     conv1d, racecheck of the sm_90a kernels).
#   PART=b (issue 21's opt-in kernels): gdn_chunk_bwd v4 (HOPS_CUDA_GDN_BWD=v4:
#     cuda_bwd_check, conformance, memcheck and racecheck, bench beside v3);
#     gdn_recurrent v2 (HOPS_CUDA_RECURRENT=v2: conformance, racecheck, bench
#     beside v1); the GDN peers (FLA, and FlashQLA when
#     .gpu-run/flashqla_site.tar.zst was carried; zstd from .gpu-run/bin where
#     the image lacks it) with v4 beside v3; the conv1d tile variants.
# Usage (repo root, .deps and .whl carried; .gpu-run too for PART=b):
#   PART=a|b tests/bench/cuda_session_run.sh $OUT
OUT=$1; T0=$(date +%s); DEADLINE=${DEADLINE:-540}
LOGS=$OUT/logs; mkdir -p $LOGS
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
cap() { local l=$(left); echo $(( l < $1 ? l : $1 )); }
step() {  # name cap command...: runs while time is left, log in $LOGS/name.log
  local name=$1 c=$2 t=$(date +%s); shift 2
  [ $(left) -gt 15 ] || { echo "skip $name (time)"; return 1; }
  timeout $(cap $c) "$@" > $LOGS/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t )) s"
}
pack() { tar -C $OUT -cf $OUT/logs.tar logs && rm -rf $LOGS; cp docs/PERFORMANCE.md $OUT/; }
trap pack EXIT
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PKG_CONFIG_PATH=$PWD/.deps/lib/x86_64-linux-gnu/pkgconfig
command -v pkg-config > /dev/null || export PATH=$PATH:$PWD/.deps/bin
CL_ARGS=""  # OpenCL headers and loader: the system's if present, else the CUDA toolkit's
[ -f /usr/include/CL/cl.h ] || CL_ARGS="-DOpenCL_INCLUDE_DIR=/usr/local/cuda/include -DOpenCL_LIBRARY=/usr/local/cuda/lib64/libOpenCL.so"
t=$(date +%s)
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$PWD/.deps -DHOPS_WITH_CUDA=ON \
  -DHOPS_WITH_OPENCL=ON $CL_ARGS > $LOGS/configure.log 2>&1 &&
  ninja -C build-dev hops hops_cuda hops_opencl hops-conformance hops-opencl-bench > $LOGS/build.log 2>&1
echo "build rc=$? $(( $(date +%s) - t )) s"
B=build-dev C=build-dev/tests/conformance/hops-conformance
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python:/tmp/site PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} CUDA_HOME=/usr/local/cuda
[ -f $HOPS_LIBRARY ] || { grep -E "error" -A3 $LOGS/configure.log $LOGS/build.log | head -40; exit 1; }

san() {  # tool name kernel-filter (- for every kernel) command...
  local tool=$1 name=$2 filter=(--kernel-name kns=$3); shift 3
  [ "${filter[1]}" = kns=- ] && filter=()
  step san_${tool}_$name 90 compute-sanitizer --tool $tool --error-exitcode 99 "${filter[@]}" "$@"
  grep -E "ERROR SUMMARY|passed" $LOGS/san_${tool}_$name.log | tail -2 | tr '\n' ' '; echo
}
if [ "${PART:-a}" = a ]; then
step conformance 100 $C --provider $HOPS_LIBRARY --backend cuda
grep -E "^FAIL" $LOGS/conformance.log | head -8 | cut -c1-200; tail -1 $LOGS/conformance.log
step moe_check 90 python3 tests/bench/cuda_moe_check.py
grep -E "^FAIL|Error" $LOGS/moe_check.log | head -8 | cut -c1-200; tail -1 $LOGS/moe_check.log
step pytest_cuda 100 python3 -m pytest -q -rs -p no:cacheprovider tests/python/test_cuda.py
grep -E "^(FAILED|ERROR)|passed|failed" $LOGS/pytest_cuda.log | head -10 | cut -c1-200
step moe_bench 60 python3 tests/bench/cuda_moe_bench.py --write
grep -E "^\| (dispatch|combine|expert)" $LOGS/moe_bench.log | head -16 | cut -c1-250
san memcheck attn sm90 python3 tests/bench/cuda_attn_check.py --quick
# The attention family on NVIDIA's OpenCL: the image registers PoCL alone, so an ICD folder names NVIDIA's too
mkdir -p /tmp/icd && cp /etc/OpenCL/vendors/*.icd /tmp/icd/ 2>/dev/null; echo libnvidia-opencl.so.1 > /tmp/icd/nvidia.icd
for op in attn_prefill attn_prefill_bwd attn_decode kv_cache_write; do
  OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia step ocl_conf_$op 60 $C --provider $HOPS_LIBRARY --backend opencl --op $op
  echo "  $(grep -E "chosen|device" $LOGS/ocl_conf_$op.log | head -1 | cut -c1-120) $(tail -1 $LOGS/ocl_conf_$op.log)"
  grep -E "^FAIL" $LOGS/ocl_conf_$op.log | head -4 | cut -c1-200
done
for dtype in f32 bf16; do
  for op in attn_prefill attn_prefill_bwd attn_decode kv_cache_write; do
    [ $(left) -gt 30 ] || continue
    OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia timeout $(cap 40) build-dev/backends/opencl/hops-opencl-bench \
      --provider $HOPS_LIBRARY --tokens 4096 --repeat 3 --dtype $dtype --op $op
  done > $LOGS/ocl_attn_$dtype.md 2>&1
done
# attn_prefill on attn_nv.cl (tensor cores through inline PTX; opt-in HOPS_OPENCL_ATTN=nv until it has passed here)
OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia HOPS_OPENCL_ATTN=nv step ocl_conf_nv 60 $C --provider $HOPS_LIBRARY \
  --backend opencl --op attn_prefill
tail -1 $LOGS/ocl_conf_nv.log; grep -E "^FAIL" $LOGS/ocl_conf_nv.log | head -4 | cut -c1-200
grep -m2 "not built" $LOGS/ocl_conf_nv.log | cut -c1-300
[ $(left) -gt 30 ] && OCL_ICD_VENDORS=/tmp/icd HOPS_OPENCL_DEVICE=nvidia HOPS_OPENCL_ATTN=nv timeout $(cap 40) \
  build-dev/backends/opencl/hops-opencl-bench --provider $HOPS_LIBRARY --tokens 4096 --repeat 3 --dtype bf16 \
  --op attn_prefill > $LOGS/ocl_attn_bf16@nv.md 2>&1
step ocl_vs_cuda 60 python3 tests/bench/cuda_vs_opencl.py --tokens 4096 --repeat 9 $LOGS/ocl_attn_f32.md $LOGS/ocl_attn_bf16.md \
  $(ls $LOGS/ocl_attn_bf16@nv.md 2>/dev/null)
grep -E "^\||TFLOP" $LOGS/ocl_vs_cuda.log; grep -E "rror" $LOGS/ocl_vs_cuda.log $LOGS/ocl_attn_*.md | head -5 | cut -c1-200
san memcheck moe - python3 tests/bench/cuda_moe_check.py --quick
for op in conv1d_fwd conv1d_update conv1d_bwd; do san memcheck $op conv $C --provider $HOPS_LIBRARY --backend cuda --quick --op $op; done
san racecheck attn sm90 python3 tests/bench/cuda_attn_check.py --quick
san racecheck moe sm90 python3 tests/bench/cuda_moe_check.py --quick
else
# gdn_chunk_bwd v4 (opt-in HOPS_CUDA_GDN_BWD=v4): float64-autograd check, conformance, sanitizers, bench beside v3
HOPS_CUDA_GDN_BWD=v4 step v4_check 120 python3 tests/bench/cuda_bwd_check.py
grep -E "^FAIL|Error" $LOGS/v4_check.log | head -6 | cut -c1-200; tail -1 $LOGS/v4_check.log
HOPS_CUDA_GDN_BWD=v4 step v4_conf 60 $C --provider $HOPS_LIBRARY --backend cuda --op gdn_chunk_bwd
grep -E "^FAIL" $LOGS/v4_conf.log | head -4 | cut -c1-200; tail -1 $LOGS/v4_conf.log
HOPS_CUDA_GDN_BWD=v4 san memcheck v4 _kernel python3 tests/bench/cuda_bwd_check.py --quick --no-reference
HOPS_CUDA_GDN_BWD=v4 san racecheck v4 _kernel python3 tests/bench/cuda_bwd_check.py --quick --no-reference
step v4_bench 80 python3 tests/bench/cuda_bench.py --only bwd_T4096,bwd_B1,bwd_B8,bwd_varlen --gdn-bwd-v4
sed -n '/==== summary/,$p' $LOGS/v4_bench.log | grep -v "^====" | cut -c1-140
# gdn_recurrent v2 (opt-in HOPS_CUDA_RECURRENT=v2): conformance, racecheck, then v1 and v2 timed in one process
HOPS_CUDA_RECURRENT=v2 step rec_v2_conf 40 $C --provider $HOPS_LIBRARY --backend cuda --op gdn_recurrent
grep -E "^FAIL" $LOGS/rec_v2_conf.log | head -4 | cut -c1-200; tail -1 $LOGS/rec_v2_conf.log
HOPS_CUDA_RECURRENT=v2 san racecheck rec_v2 chunk $C --provider $HOPS_LIBRARY --backend cuda --quick --op gdn_recurrent
HOPS_CUDA_RECURRENT=v2 step rec_v2_bench 70 python3 tests/bench/cuda_bench.py --only "N=64,N=256,N=64 L=2,N=64 L=3,N=64 L=4,N=256 L=2,N=256 L=3,N=256 L=4"
grep -E "v2 against|MISMATCH" $LOGS/rec_v2_bench.log | head -8 | cut -c1-200; sed -n '/==== summary/,$p' $LOGS/rec_v2_bench.log | grep -v "^====" | cut -c1-120
if [ -f .gpu-run/flashqla_site.tar.zst ] && [ $(left) -gt 60 ]; then
  command -v zstd > /dev/null || export PATH=$PATH:$PWD/.gpu-run/bin LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$PWD/.gpu-run/lib
  mkdir -p /tmp/fqsite && zstd -dq --long=27 -c .gpu-run/flashqla_site.tar.zst | tar -C /tmp/fqsite -xf -
fi
if [ $(left) -gt 90 ]; then
  PYTHONPATH=$PYTHONPATH:/tmp/fqsite step gdn_peers $(( $(left) - 60 )) python3 tests/bench/cuda_gdn_peers.py --write --hops-bwd-v4
  grep -E "FAILED|not importable" $LOGS/gdn_peers.log | head -6 | cut -c1-300; grep -E "^\|" $LOGS/gdn_peers.log | cut -c1-200
fi
for v in "v4:" "v3:HOPS_CONV_V4=0:" "fwd 4x5:HOPS_CONV_FWD=4x5:conv" "bwd 4x4:HOPS_CONV_BWD=4x4:conv_bwd" \
         "update no PDL:HOPS_CONV_PDL=0:conv_update,conv_update3" "fwd 4x3:HOPS_CONV_FWD=4x3:conv"; do
  IFS=: read -r label env cases <<< "$v"
  [ $(left) -gt 20 ] || { echo "skip conv $label (time)"; continue; }
  echo "== conv $label"
  env $env timeout $(( $(left) - 5 )) python3 tests/bench/cuda_bench.py --only ${cases:-conv,conv_update,conv_update3,conv_bwd} 2>&1 |
    sed -n '/==== summary/,$p' | grep -v "^====\|^copy"
done
fi
echo "done in $(( $(date +%s) - T0 )) s"
