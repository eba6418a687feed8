// moe_expert_mlp's forward on AMX bf16 tiles (moe_gemm_amx.hpp says what and
// why). The kernels sit between HOPS_AMX_BEGIN and HOPS_AMX_END (amx.hpp).
#include "moe_gemm_amx.hpp"

#include <cstdint>
#include <cstring>
#include <string_view>

#include "amx.hpp"
#include "checked_math.hpp"

namespace hops::cpu::moe::amx {

namespace {

// Every tile has 16 rows: 16 weight rows (A), 16 tokens (B, C).
using cpu::amx::kStepK;
using cpu::amx::kTileFloats;
using cpu::amx::kTileRows;

// The depth of a block of 32 weight rows copied as tiles (16 KB): it stays in
// L1 while all the chunk's tokens pass. Loaded in place instead, the rows'
// lines (4 KB apart at Hd = 2048) fall into one L1 set and evict each other.
constexpr int64_t kBlockK = 256;
// A chunk of tokens is packed at most this large: it stays in L2 (2 MB a core
// on the AMX Xeons) beside the 32 weight rows (128 KB at Hd = 2048) that pass
// over all of its tokens, so each weight byte comes from memory once a chunk.
constexpr int64_t kChunkBytes = int64_t{1} << 20;

int64_t padded_depth(int64_t depth) { return round_up(depth, kStepK); }

// Tokens per chunk: a multiple of 32 (two B tiles), packed rows within
// kChunkBytes, no more than a tile of rows needs. Depends on the shape and the
// tile size only; the bytes do not depend on it (each output is one chain
// over K).
int64_t chunk_tokens(int64_t Hd, int64_t tile_rows) {
  const int64_t fit = kChunkBytes / (padded_depth(Hd) * 2) / 32 * 32;
  return std::min(std::max<int64_t>(fit, 32), round_up(std::max<int64_t>(tile_rows, 1), 32));
}

}  // namespace

bool takes(const MoeExpertMlp& op) {
  return op.rows.dtype == DType::bf16 && op.gate_up_proj.dtype == DType::bf16 &&
         op.down_proj.dtype == DType::bf16 && op.out.dtype == DType::bf16 &&
         op.gate_up_proj.stride[2] == 1 && op.down_proj.stride[2] == 1 && cpu::amx::available();
}

namespace {

// A worker's scratch (floats, each part 64-byte aligned), for chunks of
// `chunk` tokens. bf16 pairs are stored as uint32.
struct Scratch {
  uint32_t* rows;   // [chunk / 16][Hdp / 2][16] the chunk's rows, VNNI pairs along Hd
  uint32_t* h;      // [chunk / 16][Ip / 2][16] h = silu(g) * u, VNNI pairs along I
  float* c;         // [4][16][16] the finished C tiles read back
  float* partial;   // [chunk / 32][4][16][16] C tiles between depth blocks
  uint16_t* panel;  // [kBlockK / 32][2][16][32] the A tiles of a depth block

  static int64_t parts(const MoeExpertMlp& op, int64_t chunk, int64_t* sizes) {
    const std::string_view name = op.kName;
    sizes[0] = round_up(scratch_size(name, chunk, padded_depth(op.Hd) / 2), 16);
    sizes[1] = round_up(scratch_size(name, chunk, padded_depth(op.I) / 2), 16);
    sizes[2] = 4 * kTileFloats;
    sizes[3] = scratch_size(name, chunk / 32, 4 * kTileFloats);
    sizes[4] = kBlockK / kStepK * 2 * kTileRows * kStepK / 2;
    return scratch_sum(name, sizes[0], sizes[1], sizes[2], sizes[3], sizes[4]);
  }
  Scratch(const MoeExpertMlp& op, int64_t chunk, float* base) {
    int64_t sizes[5];
    parts(op, chunk, sizes);
    rows = reinterpret_cast<uint32_t*>(base);
    h = rows + sizes[0];
    c = reinterpret_cast<float*>(h + sizes[1]);
    partial = c + sizes[2];
    panel = reinterpret_cast<uint16_t*>(partial + sizes[3]);
  }
};

}  // namespace

int64_t worker_floats(const MoeExpertMlp& op, int64_t tile_rows) {
  int64_t sizes[5];
  // + 16: the lease's floats aligned up to 64 bytes.
  return scratch_sum(op.kName, Scratch::parts(op, chunk_tokens(op.Hd, tile_rows), sizes), 16);
}

#if HOPS_AMX_BUILD
HOPS_AMX_BEGIN

namespace {

using cpu::amx::round_to_bf16;
using cpu::amx::TileConfig;
using cpu::amx::transpose16;

// A bf16 matrix [rows, depth], row r at data + r * step.
struct WeightRows {
  const uint16_t* data;
  int64_t step, rows, depth;
};

// Rows [r0, r0 + 16) x depth [k0, k0 + 32) of w as an A tile (16 x 64
// bytes), zero past w's edges.
void copy_weight_tile(const WeightRows& w, int64_t r0, int64_t k0, uint16_t* tile) {
  if (r0 + kTileRows <= w.rows && k0 + kStepK <= w.depth) {
    for (int64_t r = 0; r < kTileRows; ++r) {
      _mm512_storeu_si512(tile + r * kStepK, _mm512_loadu_si512(w.data + (r0 + r) * w.step + k0));
    }
    return;
  }
  std::memset(tile, 0, kTileRows * kStepK * 2);
  const int64_t rows = std::clamp<int64_t>(w.rows - r0, 0, kTileRows);
  const int64_t depth = std::min(kStepK, w.depth - k0);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(tile + r * kStepK, w.data + (r0 + r) * w.step + k0, depth * 2);
  }
}

// The cache lines of a depth block of 16 rows of a0 and 16 of a1 (those
// within the weights), a few at a time: weights come from memory, and the
// copy into tiles would otherwise wait on each row's misses in turn.
class NextBlock {
 public:
  NextBlock(const WeightRows& a0, int64_t r0, const WeightRows& a1, int64_t r1, int64_t k0)
      : a_{a0, a1}, r_{r0, r1}, k0_(k0) {
    const int64_t depth = std::clamp<int64_t>(a0.depth - k0, 0, kBlockK);
    lines_per_row_ = (depth * 2 + 63) / 64;
  }
  int64_t lines() const { return 2 * kTileRows * lines_per_row_; }
  void fetch(int64_t count) {
    for (; count > 0 && line_ < lines(); --count, ++line_) {
      const int64_t row = line_ / lines_per_row_, which = row / kTileRows;
      const int64_t r = r_[which] + row % kTileRows;
      if (r >= a_[which].rows) continue;
      const uint16_t* p = a_[which].data + r * a_[which].step + k0_;
      _mm_prefetch(reinterpret_cast<const char*>(p) + line_ % lines_per_row_ * 64, _MM_HINT_T1);
    }
  }

 private:
  WeightRows a_[2];
  int64_t r_[2], k0_, lines_per_row_ = 0, line_ = 0;
};

// The C tiles of 32 weight rows (rows [r0, r0 + 16) of a0 as A tile 4,
// [r1, r1 + 16) of a1 as tile 5) by the tokens of `blocks` 16-token blocks of
// b (VNNI pairs, [Kp / 2][16] a block; tiles 6, 7), two blocks at a time:
// tile 2a + j = A tile 4 + a by block nb + j. The depth runs in blocks of
// kBlockK, the sums waiting in s.partial between them, always from 0 up: the
// order of the sums depends on the depth alone. done(nb, two) reads the
// finished tiles from s.c.
template <class Done>
void weight_panel_product(const WeightRows& a0, int64_t r0, const WeightRows& a1, int64_t r1,
                          int64_t next_rows, const uint32_t* b, int64_t blocks, const Scratch& s,
                          Done done) {
  const int64_t Kp = padded_depth(a0.depth), block_step = Kp / 2 * kTileRows;
  constexpr int64_t kTileElements = kTileRows * kStepK;
  for (int64_t k0 = 0; k0 < Kp; k0 += kBlockK) {
    const int64_t k_end = std::min(Kp, k0 + kBlockK);
    for (int64_t k = k0; k < k_end; k += kStepK) {
      uint16_t* tiles = s.panel + (k - k0) / kStepK * 2 * kTileElements;
      copy_weight_tile(a0, r0, k, tiles);
      copy_weight_tile(a1, r1, k, tiles + kTileElements);
    }
    // The next depth block's weights, else the next 32 rows' first, fetched
    // into L2 a slice per pair of token blocks while these are multiplied.
    const bool rows_done = k0 + kBlockK >= Kp;
    NextBlock next(a0, r0 + (rows_done ? next_rows : 0), a1, r1 + (rows_done ? next_rows : 0),
                   rows_done ? 0 : k0 + kBlockK);
    const int64_t per_pair = (next.lines() + (blocks + 1) / 2 - 1) / ((blocks + 1) / 2);
    for (int64_t nb = 0; nb < blocks; nb += 2) {
      const bool two = nb + 1 < blocks;
      const uint32_t* b0 = b + nb * block_step;
      float* partial = s.partial + nb / 2 * 4 * kTileFloats;
      if (k0 == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        _tile_loadd(0, partial, 64);
        _tile_loadd(1, partial + kTileFloats, 64);
        _tile_loadd(2, partial + 2 * kTileFloats, 64);
        _tile_loadd(3, partial + 3 * kTileFloats, 64);
      }
      next.fetch(per_pair);
      // Each load right before its first product: a tile register is not
      // renamed, so a load waits for the products still reading it.
      for (int64_t k = k0; k < k_end; k += kStepK) {
        const uint16_t* tiles = s.panel + (k - k0) / kStepK * 2 * kTileElements;
        _tile_loadd(4, tiles, 64);
        _tile_loadd(6, b0 + k / 2 * kTileRows, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two) {
          _tile_loadd(7, b0 + block_step + k / 2 * kTileRows, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        _tile_loadd(5, tiles + kTileElements, 64);
        _tile_dpbf16ps(2, 5, 6);
        if (two) _tile_dpbf16ps(3, 5, 7);
      }
      float* target = k_end == Kp ? s.c : partial;
      _tile_stored(0, target, 64);
      _tile_stored(1, target + kTileFloats, 64);
      _tile_stored(2, target + 2 * kTileFloats, 64);
      _tile_stored(3, target + 3 * kTileFloats, 64);
      if (k_end == Kp) done(nb, two);
    }
  }
}

// Rows [first, first + count) of x (bf16) as the B operand: for each 16
// tokens, [Kp / 2][16] pairs (x[n][2p], x[n][2p + 1]), zero past count and
// past the depth. 16 tokens x 16 pairs at a time are a 32-bit transpose.
void pack_rows(const Tensor& x, int64_t first, int64_t count, int64_t depth, uint32_t* packed) {
  const int64_t pairs = padded_depth(depth) / 2, tokens = round_up(count, kTileRows);
  const int64_t step = x.stride[1];
  const bool contiguous = step == 1 && depth % 2 == 0;
  const int64_t whole = contiguous ? depth / 2 / kTileRows * kTileRows : 0;  // pairs transposed
  for (int64_t n0 = 0; n0 < tokens; n0 += kTileRows) {
    uint32_t* block = packed + n0 * pairs;
    const int64_t n_end = std::min(n0 + kTileRows, count);
    const auto* row0 =
        reinterpret_cast<const uint16_t*>(x.data<const bf16>() + x.offset(first + n0, 0));
    const bool full = n_end - n0 == kTileRows;
    for (int64_t p0 = 0; full && p0 < whole; p0 += kTileRows) {
      __m512 columns[16];
      transpose16(row0 + 2 * p0, x.stride[0] * 2, columns);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(block + (p0 + j) * kTileRows, columns[j]);
    }
    for (int64_t n = n0; n < n0 + kTileRows; ++n) {
      uint32_t* out = block + n % kTileRows;
      if (n >= count) {
        for (int64_t p = 0; p < pairs; ++p) out[p * kTileRows] = 0;
        continue;
      }
      const auto* row =
          reinterpret_cast<const uint16_t*>(x.data<const bf16>() + x.offset(first + n, 0));
      for (int64_t p = full ? whole : 0; p < pairs; ++p) {
        const uint32_t low = 2 * p < depth ? row[2 * p * step] : 0;
        const uint32_t high = 2 * p + 1 < depth ? row[(2 * p + 1) * step] : 0;
        out[p * kTileRows] = low | high << 16;
      }
    }
  }
}

// h for the I rows [i0, i0 + 16) of `blocks` (1 or 2) blocks of 16 tokens
// from token block nb: silu(g) * u from the C tiles (c: g's tiles 0-1, u's
// 2-3; h replaces g), rounded to bf16 into the VNNI pairs of h ([Ip / 2][16]
// per block): rows i and i + 1 of h interleaved are one 64-byte row there.
void swiglu_to_h(float* c, int64_t i0, int64_t nb, int64_t blocks, int64_t Ip, uint32_t* h) {
  for (int64_t b = 0; b < blocks; ++b) {
    float* __restrict g = c + b * kTileFloats;
    const float* __restrict u = c + (2 + b) * kTileFloats;
    for (int64_t k = 0; k < kTileFloats; ++k) g[k] = silu(g[k]) * u[k];  // vectorised
    uint32_t* block = h + (nb + b) * (Ip / 2) * kTileRows;
    for (int64_t r = 0; r < kTileRows; r += 2) {
      const __m512i even = round_to_bf16(_mm512_loadu_ps(g + r * kTileRows));
      const __m512i odd = round_to_bf16(_mm512_loadu_ps(g + (r + 1) * kTileRows));
      _mm512_storeu_si512(block + (i0 + r) / 2 * kTileRows,
                          _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
    }
  }
}

// (g; u)^T for the chunk's tokens, then h: 16 rows of g with the same 16
// rows of u at a time.
void gate_up_pass(const WeightRows& gate, const WeightRows& up, int64_t blocks, const Scratch& s,
                  int64_t Ip) {
  for (int64_t i0 = 0; i0 < gate.rows; i0 += kTileRows) {
    weight_panel_product(gate, i0, up, i0, kTileRows, s.rows, blocks, s, [&](int64_t nb, bool two) {
      swiglu_to_h(s.c, i0, nb, two ? 2 : 1, Ip, s.h);
    });
  }
}

// out^T = W_d h^T for the chunk's tokens, 32 rows of W_d at a time; each
// token's 32 outputs are written to its row of out. `count` tokens from row
// `first`.
void down_pass(const WeightRows& down, int64_t count, const Scratch& s, const Tensor& out,
               int64_t first) {
  const int64_t blocks = (count + kTileRows - 1) / kTileRows;
  for (int64_t d0 = 0; d0 < down.rows; d0 += 2 * kTileRows) {
    const int64_t width = std::min(2 * kTileRows, down.rows - d0);
    weight_panel_product(
        down, d0, down, d0 + kTileRows, 2 * kTileRows, s.h, blocks, s, [&](int64_t nb, bool two) {
          // Tile 2a + j: rows d0 + 16a of W_d, tokens of block nb + j; its
          // column n is 16 outputs of token n.
          for (int64_t j = 0; j < (two ? 2 : 1); ++j) {
            __m512 columns[2][16];
            transpose16(s.c + j * kTileFloats, 64, columns[0]);
            transpose16(s.c + (2 + j) * kTileFloats, 64, columns[1]);
            for (int64_t n = 0; n < kTileRows; ++n) {
              const int64_t token = (nb + j) * kTileRows + n;
              if (token >= count) break;
              bf16* row = out.data<bf16>() + out.offset(first + token, d0);
              for (int64_t a = 0; a < 2 && a * kTileRows < width; ++a) {
                const __m256i values = _mm512_cvtepi32_epi16(round_to_bf16(columns[a][n]));
                const int64_t part = std::min(kTileRows, width - a * kTileRows);
                if (out.stride[1] == 1) {
                  _mm256_mask_storeu_epi16(row + a * kTileRows,
                                           static_cast<__mmask16>((1u << part) - 1), values);
                } else {
                  alignas(32) uint16_t lanes[kTileRows];
                  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), values);
                  for (int64_t l = 0; l < part; ++l) {
                    row[(a * kTileRows + l) * out.stride[1]].bits = lanes[l];
                  }
                }
              }
            }
          }
        });
  }
}

}  // namespace

void expert_mlp_tile(const MoeExpertMlp& op, const RowTile& tile, float* scratch) {
  const int64_t chunk = chunk_tokens(op.Hd, tile.count), e = tile.expert, I = op.I, Hd = op.Hd;
  const auto misaligned = reinterpret_cast<uintptr_t>(scratch) % 64;
  const Scratch s(op, chunk, scratch + (misaligned ? (64 - misaligned) / sizeof(float) : 0));
  const Tensor &gu = op.gate_up_proj, &dn = op.down_proj;
  const auto* gu_data =
      reinterpret_cast<const uint16_t*>(gu.data<const bf16>() + gu.offset(e, 0, 0));
  const WeightRows gate{gu_data, gu.stride[1], I, Hd};
  const WeightRows up{gu_data + I * gu.stride[1], gu.stride[1], I, Hd};
  const WeightRows down{
      reinterpret_cast<const uint16_t*>(dn.data<const bf16>() + dn.offset(e, 0, 0)), dn.stride[1],
      Hd, I};
  const int64_t Ip = padded_depth(I), written = round_up(I, kTileRows);
  static const TileConfig config;
  _tile_loadconfig(&config);
  for (int64_t c0 = 0; c0 < tile.count; c0 += chunk) {
    const int64_t count = std::min(chunk, tile.count - c0);
    const int64_t blocks = (count + kTileRows - 1) / kTileRows;
    pack_rows(op.rows, tile.first + c0, count, Hd, s.rows);
    if (written < Ip) {  // h's pairs past I that no C tile writes: the down product's zero K tail
      for (int64_t b = 0; b < blocks; ++b) {
        uint32_t* block = s.h + b * (Ip / 2) * kTileRows;
        std::memset(block + written / 2 * kTileRows, 0, (Ip - written) / 2 * kTileRows * 4);
      }
    }
    gate_up_pass(gate, up, blocks, s, Ip);
    down_pass(down, count, s, op.out, tile.first + c0);
  }
  _tile_release();
}

HOPS_AMX_END
#else
void expert_mlp_tile(const MoeExpertMlp&, const RowTile&, float*) {}  // available() is false
#endif

}  // namespace hops::cpu::moe::amx
