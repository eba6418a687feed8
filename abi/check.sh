#!/usr/bin/env bash
# The ABI-compatibility check (docs/ABI.md, "ABI compatibility"): builds
# libhops.so with debug info in build-abi/, describes its ABI with libabigail's
# abidw (hops_get_api and the public types of abi/include reachable from it)
# and compares that with the committed baseline abi/libhops.abi with abidiff.
#
#   abi/check.sh           exit 0 when the ABI equals the baseline, 1 on any
#                          change, 2 when a tool fails
#   abi/check.sh --update  rewrite the baseline, only for a change a minor
#                          version may make: members appended to structs
#                          (each old struct a prefix of its new self, checked
#                          by abi/prefix.py), with HOPS_ABI_MINOR raised above
#                          the baseline's
#
# abidiff's exit status is a bit field: 1 tool error, 2 usage error, 4 the ABI
# changed, 8 the change is known to be incompatible (e.g. a removed symbol).
# The check fails on 8 and on 4: an addition counts only once --update has
# checked it and written it into the baseline, which is then committed with
# the minor bump.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASELINE=$ROOT/abi/libhops.abi
BUILD=$ROOT/build-abi
JOBS=${JOBS:-$(nproc)}

for tool in abidw abidiff python3; do
  command -v $tool >/dev/null || { echo "abi/check.sh: $tool not found — install it with: apt-get install abigail-tools" >&2; exit 2; }
done

header_version() {  # MAJOR.MINOR of abi/include/hops/hops.h
  local major minor
  major=$(sed -n 's/^#define HOPS_ABI_MAJOR \([0-9]*\).*/\1/p' "$ROOT/abi/include/hops/hops.h")
  minor=$(sed -n 's/^#define HOPS_ABI_MINOR \([0-9]*\).*/\1/p' "$ROOT/abi/include/hops/hops.h")
  echo "$major.$minor"
}
baseline_version() {  # from the baseline's second line, <!-- hops ABI MAJOR.MINOR ... -->
  sed -n '2s/^<!-- hops ABI \([0-9]*\.[0-9]*\) .*/\1/p' "$BASELINE"
}

# Types only matter as the library's code sees them, so the library is built
# (RelWithDebInfo: the DWARF abidw reads), not just the header parsed. No
# modules or tests: only libhops.so exports the ABI.
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOPS_WITH_CUDA=OFF \
    -DHOPS_WITH_OPENCL=OFF -DHOPS_BUILD_TESTS=OFF >/dev/null || { echo "abi/check.sh: CMake configure failed" >&2; exit 2; }
fi
cmake --build "$BUILD" -j "$JOBS" --target hops >/dev/null || { echo "abi/check.sh: build failed" >&2; exit 2; }

# --exported-interfaces-only: what hops_get_api reaches, not the plugin's
# internals; --headers-dir/--drop-private-types: only types of the public
# headers (and DLPack's, which they include). Hash type ids and no source
# locations keep the file stable across unrelated edits of hops.h.
current=$BUILD/libhops.abi
abidw --headers-dir "$ROOT/abi/include" --drop-private-types --exported-interfaces-only \
  --no-corpus-path --no-comp-dir-path --no-show-locs --type-id-style hash \
  --out-file "$current.body" "$BUILD/plugin/libhops.so" || { echo "abi/check.sh: abidw failed" >&2; exit 2; }
# The version goes in a comment after the root element's tag (abidiff tells
# the file's type from its first line; XML comments may not hold "--").
version=$(header_version)
# The build's path is dropped from the file too.
sed -e "1a <!-- hops ABI $version of libhops.so, written by abi/check.sh in its update mode (docs/ABI.md) -->" \
  -e "s|path='$ROOT/|path='|" "$current.body" >"$current"
rm "$current.body"

# libhops.so's ABI against the baseline: prints abidiff's report and
# returns its exit status.
compare() {
  local status=0
  abidiff "$BASELINE" "$current" || status=$?
  return $status
}

# 0 when the change is members appended to structs only: cut back to the
# baseline's struct sizes, the library's ABI is the baseline's.
additions_only() {
  python3 "$ROOT/abi/prefix.py" "$BASELINE" "$current" "$current.prefix" &&
    abidiff "$BASELINE" "$current.prefix" >/dev/null
}

if [ "${1:-}" = "--update" ]; then
  if [ ! -f "$BASELINE" ]; then
    cp "$current" "$BASELINE"
    echo "abi/check.sh: wrote the first baseline, ABI $version"
    exit 0
  fi
  old=$(baseline_version)
  status=0
  compare >/dev/null || status=$?
  if [ $status -eq 0 ]; then
    echo "abi/check.sh: the ABI equals the baseline; nothing to update"
    exit 0
  fi
  [ $((status & 3)) -eq 0 ] || { echo "abi/check.sh: abidiff failed ($status)" >&2; exit 2; }
  if [ "${version%%.*}" != "${old%%.*}" ]; then
    echo "abi/check.sh: new major version ($old -> $version): any change goes" >&2
  else
    if ! additions_only; then
      echo "abi/check.sh: refused: the change is more than members appended to structs (it needs a new major):" >&2
      compare >&2 || true
      exit 1
    fi
    if [ "${version#*.}" -le "${old#*.}" ]; then
      echo "abi/check.sh: refused: the ABI grew, so HOPS_ABI_MINOR must rise above the baseline's $old (hops.h says $version)" >&2
      exit 1
    fi
  fi
  echo "abi/check.sh: the change ($old -> $version), for review:"
  compare || true
  cp "$current" "$BASELINE"
  echo "abi/check.sh: baseline updated; commit abi/libhops.abi with the version bump"
  exit 0
fi

status=0
compare || status=$?
if [ $status -eq 0 ]; then
  echo "abi/check.sh: libhops.so keeps the ABI of the baseline ($(baseline_version))"
  exit 0
fi
[ $((status & 3)) -eq 0 ] || { echo "abi/check.sh: abidiff failed ($status)" >&2; exit 2; }
if [ $((status & 8)) -ne 0 ]; then
  echo "abi/check.sh: FAIL: an incompatible ABI change (abidiff status $status), see above" >&2
  exit 1
fi
if additions_only; then
  echo "abi/check.sh: FAIL: the ABI grew (members appended, abidiff status 4): if this is the next" \
    "minor version, raise HOPS_ABI_MINOR, run abi/check.sh --update and commit abi/libhops.abi" >&2
else
  echo "abi/check.sh: FAIL: an ABI change that is not an addition (abidiff status 4), see above" >&2
fi
exit 1
