// Small fp32 GEMMs on dense row-major blocks, the building block of the
// chunked GDN kernels (forward and backward) and of attention's: libxsmm's
// JIT kernels where available (xsmm_gemm.hpp), else register-blocked tiles
// written with vector types, one width per ISA, the widest the CPU runs
// picked at run time (GCC's auto-vectoriser does not keep such a tile in
// registers reliably): the portable fallback.
#pragma once

#include <cstdint>

namespace hops::cpu {

constexpr int64_t kPadding = 16;  // cols round up to it: a multiple of every vector width

constexpr int64_t round_up(int64_t x, int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// Which part of a product a chunk needs: the C x C factors are triangular.
enum class Shape {
  full,
  lower_a,    // a is lower triangular (zeros stored): a row tile's depth ends at its last row
  lower_out,  // only out's lower triangle is wanted: a row tile's columns end near its last row
  upper_a,    // a is upper triangular (zeros stored): a row tile's depth starts at its first row
};

// out[rows x cols] = (or += when accumulate) a[rows x depth] b[depth x cols],
// row-major; cols is a multiple of kPadding. With transpose_a, a is stored
// as its transpose [depth x rows] (element (r, p) at a[p * lda + r]), which
// the backward's A^T B products read without packing a copy.
struct Gemm {
  int64_t rows, cols, depth;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* out;
  int64_t ldo;
  bool accumulate;
  Shape shape;
  bool transpose_a = false;
};

// g through libxsmm's generated kernels (xsmm_gemm.hpp) where gemm_engine()
// says so and libxsmm takes the shape, else through the register tiles.
void gemm(const Gemm& g);
void gemm_tiles(const Gemm& g);

// Which implementation gemm() tries first: xsmm where hops was built with
// libxsmm and it serves this CPU, tiles otherwise. HOPS_CPU_GEMM=tiles or
// =xsmm (read once, at the first product) picks one; xsmm where unavailable
// is tiles.
enum class GemmEngine { tiles, xsmm };
GemmEngine gemm_engine();

// HOPS_CPU_GEMM=tiles (read once): the hand-written fp32 paths only, no
// libxsmm and no AMX tiles (amx.hpp), for tests and benchmarks.
bool gemm_forced_to_tiles();

// While alive, this thread's SSE/AVX arithmetic flushes subnormal results
// to zero and reads subnormal operands as zero (MXCSR FTZ | DAZ), as it was
// before afterwards. The chunked GDN's products meet subnormals on strongly
// decaying heads (decays near e^-87 times small keys, states decayed by
// e^G_last); on Intel cores each is a microcode assist of ~100 cycles, which
// made the products 3x slower there. Every worker of a call sets it, so the
// bytes stay independent of the thread count; a value changes by < 1.2e-38.
class FlushSubnormals {
 public:
  FlushSubnormals();
  ~FlushSubnormals();
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned saved_ = 0;
};

// out[c * ldo + r] = in[r * ldi + c] for r < rows, c < cols: packs the
// transposed operands that a GEMM reads as b.
void transpose(const float* in, int64_t ldi, int64_t rows, int64_t cols, float* out, int64_t ldo);

}  // namespace hops::cpu
