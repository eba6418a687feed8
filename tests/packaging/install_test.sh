#!/usr/bin/env bash
# `cmake --install` of a built tree, then the two out-of-tree example hosts
# built against that install: examples/find_package (CMake) and
# examples/pkg_config (make + pkg-config). Also the manifest's place for the
# prefix /usr (DESTDIR-staged). ctest runs it (tests/packaging/CMakeLists.txt).
#
#   install_test.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
build=$1 source=$2 work=$3
prefix=$work/prefix

fail() { echo "install_test: $*" >&2; exit 1; }
expect_file() { [ -f "$1" ] || fail "missing after install: ${1#"$prefix"/}"; }

rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"

export PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name hops.pc -print -quit)")
[ "$PKG_CONFIG_PATH" != . ] || fail "no hops.pc installed"
libdir=$(pkg-config --variable=libdir hops)
for file in include/hops/hops.h include/hops/hops.hpp include/hops/dlpack/dlpack/dlpack.h \
            share/hops/providers.d/hops.json; do
  expect_file "$prefix/$file"
done
for file in libhops.so cmake/hops/hopsConfig.cmake cmake/hops/hopsConfigVersion.cmake \
            cmake/hops/hopsTargets.cmake; do
  expect_file "$libdir/$file"
done
# Every backend module the build made is installed beside libhops.so.
for module in "$build"/plugin/libhops_*.so; do
  [ -e "$module" ] && expect_file "$libdir/$(basename "$module")"
done

# The manifest names the installed library, relative to the manifest.
manifest=$prefix/share/hops/providers.d/hops.json
library=$(sed -n 's/.*"library": "\([^"]*\)".*/\1/p' "$manifest")
[[ $library != /* ]] || fail "manifest names an absolute path inside the prefix: $library"
[ "$(realpath "$prefix/share/hops/providers.d/$library")" = "$(realpath "$libdir/libhops.so")" ] ||
  fail "manifest's library $library is not the installed libhops.so"
grep -q '"abi": 1' "$manifest" || fail "manifest without \"abi\": 1: $(cat "$manifest")"

echo "== find_package(hops) host"
cmake -S "$source/examples/find_package" -B "$work/find_package" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/find_package.log"
cmake --build "$work/find_package" >>"$work/find_package.log"
"$work/find_package/find_package_host" | tee "$work/find_package.out"
# The modules are found beside the installed libhops.so, not in the build tree.
if grep "libhops_" "$work/find_package.out" | grep -vq "$(realpath "$libdir")/libhops_"; then
  fail "a backend module was loaded from outside $libdir"
fi
if [ -e "$libdir/libhops_opencl.so" ]; then
  grep -q "^backend opencl: .*($(realpath "$libdir")/libhops_opencl.so" "$work/find_package.out" ||
    fail "the installed OpenCL module is not reported as a backend"
fi

echo "== pkg-config host"
mkdir -p "$work/pkg_config"
make -s -C "$source/examples/pkg_config" O="$work/pkg_config"
"$work/pkg_config/pkg_config_host"

echo "== the manifest for the prefix /usr goes to /etc/hops/providers.d"
DESTDIR=$work/stage cmake --install "$build" --prefix /usr --component provider >/dev/null
grep -q '"library": "/usr/.*/libhops.so"' "$work/stage/etc/hops/providers.d/hops.json" ||
  fail "unexpected /usr manifest: $(cat "$work/stage/etc/hops/providers.d/hops.json")"
echo "install_test: ok"
