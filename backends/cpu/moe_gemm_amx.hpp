// The expert MLP's forward on AMX bf16 tiles (moe_gemm_amx.cpp), for bf16
// operands on CPUs that have AMX-BF16 and where Linux lets the process use
// its tile registers; every other call takes moe_gemm.cpp's fp32 GEMM.
//
// The products run transposed as in moe_expert_mlp.cpp, out^T = W x^T: 16
// rows of the weights (K-contiguous, as transformers stores them) are
// directly the A operand of _tile_dpbf16ps, so the weights are never
// repacked as a whole: 32 rows x 256 of depth at a time are copied as they
// are into a 16 KB buffer that stays in L1 while every token of the chunk
// passes (loaded in place, rows 4 KB apart fall into one L1 set). The tile's
// rows are packed once into the VNNI B layout ([K/2][16 tokens][2] bf16 per
// 16 tokens), which is small, and the fp32 C tiles (16 weight rows x 16
// tokens) are read back transposed. The SwiGLU intermediate h = silu(g) * u
// is rounded to bf16 to be the B operand of the down product.
//
// Deterministic: each output element is one chain of _tile_dpbf16ps over K
// in steps of 32 from 0 (partial sums kept exactly in fp32 between depth
// blocks), whatever the tiling of the rows, the chunk or the thread.
#pragma once

#include "moe.hpp"

namespace hops::cpu::moe::amx {

// Whether the AMX path takes op: amx::available() (amx.hpp), and rows, both weights and out
// bf16 with the weights contiguous along their last dim.
bool takes(const MoeExpertMlp& op);

// Floats of one worker's scratch for tiles of up to `tile_rows` rows.
int64_t worker_floats(const MoeExpertMlp& op, int64_t tile_rows);

// out's rows of one tile (rows [tile.first, + tile.count) of expert
// tile.expert); `scratch`: worker_floats() floats of the worker's own.
void expert_mlp_tile(const MoeExpertMlp& op, const RowTile& tile, float* scratch);

}  // namespace hops::cpu::moe::amx
