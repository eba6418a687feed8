// amx::available(): plain x86-64 code, no AMX instruction.
#include "amx.hpp"

#include "small_gemm.hpp"

#if HOPS_AMX_BUILD
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hops::cpu::amx {

namespace {

#if HOPS_AMX_BUILD
bool cpu_has_amx_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;  // cpuid.(7, 0).edx
  return (edx & kAmxBf16) && (edx & kAmxTile) && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}

// Linux (5.16+) keeps the 8 KB of tile data out of a process's saved state
// until it asks; without this a tile instruction raises SIGILL. The grant is
// for the whole process, so asking once suffices.
bool tiles_granted() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#endif

}  // namespace

bool available() {
  static const bool usable = [] {
    if (gemm_forced_to_tiles()) return false;
#if HOPS_AMX_BUILD
    return cpu_has_amx_bf16() && tiles_granted();
#else
    return false;
#endif
  }();
  return usable;
}

}  // namespace hops::cpu::amx
