#!/usr/bin/env bash
# Builds the libFuzzer harness of the generic call path (tests/fuzz) in
# build-fuzz/ with clang, ASan and UBSan, then fuzzes api->call for a bounded
# time. docs/FUZZING.md says what it checks and how to run it for hours.
#
#   tests/fuzz/run_fuzz.sh [seconds] [libFuzzer flags...]
#   tests/fuzz/run_fuzz.sh 60                      # CI: one minute
#   tests/fuzz/run_fuzz.sh 14400 -fork=2 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1
#
# Inputs: build-fuzz/corpus (grows), tests/fuzz/corpus (committed),
# build-fuzz/seeds (rewritten by the harness each run). Findings land in
# build-fuzz/findings/<time>/ (crash-*, timeout-*, oom-*, leak-*); the script
# exits nonzero when there is any.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-60}
[ $# -gt 0 ] && shift
build=${HOPS_FUZZ_BUILD_DIR:-build-fuzz}  # another dir: a build of your own beside CI's
jobs=${HOPS_FUZZ_BUILD_JOBS:-$(nproc)}

# clang >= 16: older ones reject the plugin's lambdas that capture structured bindings.
cxx=${HOPS_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for candidate in clang++-19 clang++-18 clang++-17 clang++-16 clang++; do
    command -v "$candidate" >/dev/null || continue
    major=$("$candidate" -dumpversion | cut -d. -f1)
    if [ "$major" -ge 16 ]; then cxx=$candidate; break; fi
  done
fi
if [ -z "$cxx" ]; then
  echo "hops: the fuzzer needs clang >= 16 with libFuzzer — apt-get install clang-16 libclang-rt-16-dev" >&2
  exit 1
fi
cc=${cxx/clang++/clang}

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=$cc CXX=$cxx cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOPS_FUZZ=ON \
    -DHOPS_BUILD_TESTS=OFF -DHOPS_WITH_OPENCL=OFF -DHOPS_WITH_CUDA=OFF >/dev/null
fi
cmake --build "$build" --target call_fuzzer -j "$jobs"
fuzzer=$build/tests/fuzz/call_fuzzer

HOPS_FUZZ_WRITE_SEEDS=$build/seeds "$fuzzer"
findings=$build/findings/$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$build/corpus" "$findings"

# Reports with symbols; every sanitizer report is fatal (a finding).
symbolizer=$(command -v llvm-symbolizer || true)
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$symbolizer}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export HOPS_FUZZ_STATS=1

set +e
"$fuzzer" -max_total_time="$duration" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$findings/" "$@" "$build/corpus" tests/fuzz/corpus "$build/seeds" \
  2>&1 | tee "$findings/fuzz.log" | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)'
status=${PIPESTATUS[0]}
set -e

echo
grep -E '^#[0-9]+.*(DONE|cov:)' "$findings/fuzz.log" | tail -1 || true
grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec)' \
  "$findings/fuzz.log" || true
# Calls per op (summed over -fork's workers), then the last worker's totals.
awk '/^hops-fuzz:   /{n[$2]+=$3; r[$2]+=$5; a[$2]+=$7; c[$2]+=substr($9,2)}
  END{for (op in n) printf "  %-20s %9d calls %9d rejected %9d accepted %9d compared\n", op, n[op], r[op], a[op], c[op]}' \
  "$findings/fuzz.log" | sort
grep -E '^hops-fuzz: [0-9]' "$findings/fuzz.log" | tail -1 || true
found=$(find "$findings" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \
  -o -name 'leak-*' \) | sort)
if [ -n "$found" ]; then
  echo "hops: the fuzzer found $(echo "$found" | wc -l) problem(s) — reproduce with $fuzzer <file>:"
  echo "$found"
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "hops: the fuzzer exited with status $status (see $findings/fuzz.log)" >&2
  exit 1
fi
echo "hops: no findings (log: $findings/fuzz.log)"
