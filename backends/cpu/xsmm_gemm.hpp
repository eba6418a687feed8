// small_gemm.hpp's products through libxsmm (Debian's libxsmm-dev, 1.17):
// code generated at run time for the CPU's ISA (AVX2, AVX-512) once per
// shape and kept, where hops was built with it (HOPS_WITH_LIBXSMM). gemm()
// in small_gemm.cpp takes this path first and its register tiles where it
// declines; HOPS_CPU_GEMM=tiles|xsmm picks one for tests and benchmarks.
#pragma once

#include "small_gemm.hpp"

namespace hops::cpu::xsmm {

// Built with libxsmm, and libxsmm generates AVX (or wider) code on this CPU.
bool available();

// g as libxsmm kernels, one per block of rows of a triangular shape (fixed by
// the shape alone, so the bytes do not depend on which thread runs it);
// false, with nothing written, where libxsmm declines a shape.
bool gemm(const Gemm& g);

}  // namespace hops::cpu::xsmm
