#!/usr/bin/env bash
# Prepares what the lent GPU machine lacks, here, once per checkout (both
# folders are ignored through .git/info/exclude and travel with `carry`):
#   .deps  a prefix with fmt, DLPack, GoogleTest, libffi and pkg-config copied
#          from this Debian machine's packages (the device image has none);
#   .whl   the fla-core wheel (flash-linear-attention's Triton kernels), the
#          peer of the CUDA benchmarks;
#   .gpu-run/flashqla_site.tar.zst  with FLASHQLA=1: flash-qla and its TileLang
#          dependencies unpacked and packed with zstd (~54 MB; the wheels are
#          ~90 MB), for tests/bench/cuda_gdn_peers.py; cuda_session_run.sh
#          unpacks it onto PYTHONPATH when it was carried.
# Usage (repo root): [FLASHQLA=1] tests/bench/device_deps.sh [FLA_VERSION]
set -euo pipefail
FLA_VERSION=${1:-0.6.0}
cd "$(git rev-parse --show-toplevel)"
for folder in /.deps/ /.whl/ /.gpu-run/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
multiarch=lib/x86_64-linux-gnu
rm -rf .deps && mkdir -p .deps/include .deps/$multiarch/cmake .deps/$multiarch/pkgconfig .deps/bin
cp -r /usr/include/{fmt,dlpack,gtest,gmock} .deps/include/
cp /usr/include/x86_64-linux-gnu/{ffi.h,ffitarget.h} .deps/include/
cp -a /usr/$multiarch/{libfmt.so*,libgtest*.a,libgmock*.a,libffi.so*,libpkgconf.so.3*} .deps/$multiarch/
cp -r /usr/$multiarch/cmake/{fmt,GTest,dlpack} .deps/$multiarch/cmake/
sed 's|^prefix=.*|prefix=${pcfiledir}/../../..|' /usr/$multiarch/pkgconfig/libffi.pc > .deps/$multiarch/pkgconfig/libffi.pc
cp "$(command -v pkgconf)" .deps/bin/pkg-config
du -sh .deps
if ! ls .whl/fla_core-"$FLA_VERSION"-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "fla-core==$FLA_VERSION"
fi
ls -la .whl
if [ "${FLASHQLA:-0}" = 1 ] && [ ! -f .gpu-run/flashqla_site.tar.zst ]; then
  tmp=$(mktemp -d) && mkdir -p "$tmp/site" .gpu-run
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$tmp/wheels" flash-qla==0.1.3 tilelang==0.1.15 apache-tvm-ffi torch-c-dlpack-ext \
    cloudpickle ml-dtypes z3-solver
  for wheel in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$tmp/site/"; done
  tar -C "$tmp/site" -cf - . | zstd --long=27 -19 -T0 -q -o .gpu-run/flashqla_site.tar.zst
  rm -rf "$tmp"
fi
ls -la .gpu-run/flashqla_site.tar.zst 2>/dev/null || true
