// For tests/bench/ocl_nv_ptx_check.sh only (clang -> ptxas of attn_nv.cl without libclc):
// the work-item functions and the few builtins the program calls, defined with
// clang's NVPTX builtins and inline PTX.
#define get_local_id(x) ((size_t)__nvvm_read_ptx_sreg_tid_x())
#define get_group_id(x) ((size_t)__nvvm_read_ptx_sreg_ctaid_x())
#define OVL __attribute__((overloadable))
long OVL min(long a, long b) { return a < b ? a : b; }
long OVL clamp(long x, long a, long b) { return x < a ? a : (x > b ? b : x); }
float OVL fmax(float a, float b) { return __nvvm_fmax_f(a, b); }
int OVL isnan(float x) { return x != x; }
float OVL exp(float x) { return __nvvm_ex2_approx_f(x * 1.4426950408889634f); }
float OVL log2(float x) { return __nvvm_lg2_approx_f(x); }
void OVL barrier(cl_mem_fence_flags f) { __nvvm_bar_sync(0); }
#define NV_GNU_ASM 1
int16 OVL isnan(float16 x) { return x != x; }
float16 OVL exp(float16 x) { return (float16)(0.0f); }  // unused by attn_nv.cl
float OVL vload_half(size_t i, const global half* p) {
  float r;
  __asm__("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(((const global ushort*)p)[i]));
  return r;
}
void OVL vstore_half_rte(float v, size_t i, global half* p) {
  ushort b;
  __asm__("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(v));
  ((global ushort*)p)[i] = b;
}
