#!/usr/bin/env bash
# One call on the lent GPU that checks what has not yet run on one, most
# needed first, each step only while time is left (DEADLINE seconds, 540 by
# default): one build (cuda_device_run.sh); the sm_80 module (compute_80 PTX,
# which the GPU compiles on load) built in the background; then, with every
# opt-in sm_90 path switched on (they stay off by default until a device run
# has passed them: docs/CUDA_NOTES.md, "not yet run on a GPU"):
#   HOPS_CUDA_ATTN_BWD=auto   the wgmma attention backward (dK/dV and dQ)
#   HOPS_CUDA_MOE_MLP=any     the wgmma expert MLP forward (where it takes the call)
#   HOPS_CUDA_MOE_DISPATCH=v2 moe_dispatch's bookkeeping v2
#   HOPS_CONV_V4=1            the conv1d bulk-copy and decode kernels
# the checks (cuda_attn_check and cuda_moe_check force both paths
# themselves), the conformance runner over those ops, cuda_conv_check, the
# benches (attention, MoE, conv1d and multi-token decode rows), the sm_80
# module through the conformance runner, and the GDN peers (FLA, FlashQLA)
# when .gpu-run/flashqla_site.tar.zst was carried. PERFORMANCE.md comes back.
# Usage (repo root, .deps and .whl carried): tests/bench/cuda_session_run.sh $OUT
OUT=$1; T0=$(date +%s); DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
cap() { local l=$(left); echo $(( l < $1 ? l : $1 )); }
step() {  # name cap command...: runs while time is left, log in $OUT/name.log
  local name=$1 c=$2; shift 2
  [ $(left) -gt 15 ] || { echo "skip $name (time)"; return 1; }
  timeout $(cap $c) "$@" > $OUT/$name.log 2>&1; echo "== $name rc=$?"
}
STEPS="" tests/bench/cuda_device_run.sh $OUT > $OUT/build_out.log 2>&1; tail -2 $OUT/build_out.log
rm -f $OUT/configure.log
B=build-dev
export HOPS_LIBRARY=$PWD/$B/plugin/libhops.so PYTHONPATH=$PWD/shims/python:/tmp/site PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} CUDA_HOME=/usr/local/cuda
[ -f $HOPS_LIBRARY ] || { grep -E "error" -A3 $OUT/build.log | head -40; exit 1; }
( cmake -S . -B build-sm80 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$PWD/.deps -DHOPS_WITH_CUDA=ON \
    -DHOPS_WITH_OPENCL=OFF -DHOPS_CUDA_ARCHITECTURES=80-virtual > /tmp/sm80_cfg.log 2>&1 &&
  nice ninja -C build-sm80 -j10 hops hops_cuda > /tmp/sm80_build.log 2>&1; echo "sm80 build rc=$?" > /tmp/sm80_done ) &
export HOPS_CUDA_ATTN_BWD=auto HOPS_CUDA_MOE_MLP=any HOPS_CUDA_MOE_DISPATCH=v2 HOPS_CONV_V4=1
step attn_check 170 python3 tests/bench/cuda_attn_check.py
grep -E "^FAIL|Error" $OUT/attn_check.log | head -10 | cut -c1-220; tail -1 $OUT/attn_check.log
step moe_check 110 python3 tests/bench/cuda_moe_check.py
grep -E "^FAIL|Error" $OUT/moe_check.log | head -8 | cut -c1-200; tail -1 $OUT/moe_check.log
for op in attn_prefill_bwd moe_dispatch moe_expert_mlp conv1d_fwd conv1d_update conv1d_bwd; do
  [ $(left) -gt 15 ] || break
  timeout $(cap 60) $B/tests/conformance/hops-conformance --provider $HOPS_LIBRARY --backend cuda --op $op > /tmp/conf_$op.log 2>&1
  echo "conformance $op rc=$? $(tail -1 /tmp/conf_$op.log)"; grep -E "^FAIL" /tmp/conf_$op.log | head -8
done
step conv_check 60 python3 tests/bench/cuda_conv_check.py && { grep -E "FAIL|rror" $OUT/conv_check.log | head -8; tail -1 $OUT/conv_check.log; }
step cbench 80 python3 tests/bench/cuda_bench.py --only "conv,conv_update,conv_update3,conv_bwd,N=64,N=256,N=64 L=2,N=64 L=3,N=64 L=4,N=256 L=2,N=256 L=3,N=256 L=4" &&
  sed -n '/==== summary/,$p' $OUT/cbench.log
step attn_bench 110 python3 tests/bench/cuda_attn_bench.py --compare --write && tail -22 $OUT/attn_bench.log | cut -c1-300
step moe_bench 90 python3 tests/bench/cuda_moe_bench.py --write && grep -E "^\|" $OUT/moe_bench.log | head -16 | cut -c1-250
if [ -f /tmp/sm80_done ] && [ $(left) -gt 25 ]; then cat /tmp/sm80_done
  ( unset HOPS_CUDA_ATTN_BWD HOPS_CUDA_MOE_MLP HOPS_CUDA_MOE_DISPATCH HOPS_CONV_V4
    timeout $(cap 70) $B/tests/conformance/hops-conformance --provider $PWD/build-sm80/plugin/libhops.so --backend cuda > $OUT/conf_sm80.log 2>&1
    echo "conformance sm80 all rc=$? $(tail -1 $OUT/conf_sm80.log)"; grep -E "^FAIL" $OUT/conf_sm80.log | head -8 )
else echo "sm80: $(cat /tmp/sm80_done 2>/dev/null || echo build not done) left $(left)"; fi
if [ -f .gpu-run/flashqla_site.tar.zst ] && [ $(left) -gt 60 ]; then
  mkdir -p /tmp/fqsite && zstd -dq --long=27 -c .gpu-run/flashqla_site.tar.zst | tar -C /tmp/fqsite -xf -
  PYTHONPATH=$PYTHONPATH:/tmp/fqsite step gdn_peers $(left) python3 tests/bench/cuda_gdn_peers.py --write
  tail -14 $OUT/gdn_peers.log | cut -c1-300
fi
cp docs/PERFORMANCE.md $OUT/
echo "done in $(( $(date +%s) - T0 )) s"
