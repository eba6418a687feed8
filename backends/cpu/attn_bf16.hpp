// attn_prefill for bf16 storage on bf16 dot products (attn_prefill_bf16.cpp):
// S = Q K^T and O += P V multiply bf16 operands into fp32 sums, on AMX tiles
// (amx.hpp) where the process may use them, else on AVX512-BF16's
// vdpbf16ps; the softmax stays in fp32 and P is rounded to bf16 for P V, as
// flash attention does on GPUs. Every other call, and every call under
// HOPS_CPU_GEMM=tiles, takes attn_prefill.cpp's fp32 path.
#pragma once

#include <cstdint>

#include "amx.hpp"  // HOPS_AMX_BUILD: x86-64 Linux, GCC or clang
#include "attn.hpp"

// The ISA of the kernels around the products (packing, softmax): every CPU
// that bf16_engine() does not answer none for has it.
#define HOPS_AVX512_BF16 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace hops::cpu::attn {

enum class Bf16Engine { none, avx512_bf16, amx };
// Decided once, at the first call.
Bf16Engine bf16_engine();

// out[rows, 16 * groups] (+)= a[rows, depth] b[depth, 16 * groups]. a: bf16
// row-major, rows lda apart, all rows and depth readable (rows a multiple of
// 16, depth of 32). b: bf16 pairs along the depth (VNNI: element (2i + j, c)
// of a group is half j of the uint32 [i][c]), each group of 16 columns
// [depth / 2][16] contiguous, groups group_step uint32 apart. out: fp32
// row-major, ldo apart. Each output is one chain over the depth from 0 up,
// however the rows are split: the bytes depend on the engine alone.
struct Bf16Product {
  const uint16_t* a;
  int64_t lda, rows, depth;
  const uint32_t* b;
  int64_t groups, group_step;
  float* out;
  int64_t ldo;
  bool accumulate;
};
void bf16_product(const Bf16Product& p);  // on bf16_engine(), not none

void attn_prefill_bf16(const ExecContext& context, const AttnPrefill& op);

}  // namespace hops::cpu::attn
