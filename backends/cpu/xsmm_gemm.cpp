#include "xsmm_gemm.hpp"

#if defined(HOPS_HAVE_LIBXSMM)
#include <dlfcn.h>
#include <libxsmm.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#endif

namespace hops::cpu::xsmm {

#if defined(HOPS_HAVE_LIBXSMM)

namespace {

// Rows per kernel call of a triangular shape: its depth (or columns) end at
// the block's last row, as the tiles' do at a tile's. 16 rows kept 5/8 of a
// 64-row square's work at full kernel speed; 32 kept 3/4 (measured slower).
constexpr int64_t kTriangleRows = 16;

// libxsmm is column-major: the row-major out = a b is out^T = b^T a^T, so
// its M, N, K are cols, rows, depth, its A is b and its B is a (transposed
// when a is stored transposed).
struct Key {
  int32_t m, n, k, lda, ldb, ldc;
  bool transpose_b, accumulate;
  bool operator==(const Key&) const = default;
};

struct Entry {
  Key key{};
  libxsmm_smmfunction kernel = nullptr;
  bool known = false;  // looked up (kernel null: declined)
};

// libxsmm's registry is thread-safe and measured ~20 ns a lookup here; a
// chunk makes ~20 calls of 5-60 us. A direct-mapped cache per thread in
// front of it takes neither a lock nor an atomic. The backward's triangular
// products are ~60 keys (a kernel per 16-row block): with 128 slots,
// gdn_chunk_bwd at T = 4096 took 1018 ms against 716 with 1024 (colliding
// keys go back to the registry on every call); 48 KB, touched sparsely.
constexpr size_t kCacheSlots = 1024;
thread_local std::array<Entry, kCacheSlots> cache;

size_t slot(const Key& key) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
  for (int64_t v :
       {int64_t{key.m}, int64_t{key.n}, int64_t{key.k}, int64_t{key.lda}, int64_t{key.ldb},
        int64_t{key.ldc}, int64_t{key.transpose_b}, int64_t{key.accumulate}}) {
    h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
  }
  return h % kCacheSlots;
}

libxsmm_smmfunction kernel_for(const Key& key) {
  Entry& entry = cache[slot(key)];
  if (entry.known && entry.key == key) return entry.kernel;
  const float alpha = 1.0f, beta = key.accumulate ? 1.0f : 0.0f;
  const int flags = key.transpose_b ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  const int prefetch = LIBXSMM_GEMM_PREFETCH_NONE;
  const libxsmm_blasint lda = key.lda, ldb = key.ldb, ldc = key.ldc;
  entry = {
      key,
      libxsmm_smmdispatch(key.m, key.n, key.k, &lda, &ldb, &ldc, &alpha, &beta, &flags, &prefetch),
      true};
  return entry.kernel;
}

bool fits(int64_t x) { return x >= 0 && x <= std::numeric_limits<int32_t>::max(); }

// Rows [row, row + rows) x columns [0, cols) of g's product over depth [first, last).
struct Block {
  int64_t row, rows, cols, first, last;
};

// The blocks of g: one for a full product, kTriangleRows rows each for a
// triangular one, each with the depth or columns its rows need.
template <class Visit>
bool for_each_block(const Gemm& g, Visit&& visit) {
  if (g.shape == Shape::full) return visit(Block{0, g.rows, g.cols, 0, g.depth});
  for (int64_t row = 0; row < g.rows; row += kTriangleRows) {
    const int64_t rows = std::min(kTriangleRows, g.rows - row);
    Block block{row, rows, g.cols, 0, g.depth};
    if (g.shape == Shape::lower_a) block.last = std::min(g.depth, row + rows);
    if (g.shape == Shape::upper_a) block.first = std::min(g.depth, row);
    if (g.shape == Shape::lower_out) block.cols = std::min(g.cols, round_up(row + rows, kPadding));
    if (!visit(block)) return false;
  }
  return true;
}

Key key_of(const Gemm& g, const Block& b) {
  return {static_cast<int32_t>(b.cols),
          static_cast<int32_t>(b.rows),
          static_cast<int32_t>(b.last - b.first),
          static_cast<int32_t>(g.ldb),
          static_cast<int32_t>(g.lda),
          static_cast<int32_t>(g.ldo),
          g.transpose_a,
          g.accumulate};
}

// An empty depth: out is zero, or unchanged when accumulating.
bool empty_depth(const Block& b) { return b.last <= b.first; }

}  // namespace

bool available() {
  static const bool usable = [] {
    libxsmm_init();
    // libxsmm_init looks for a BLAS with dlsym (hops links its stubs, so it
    // fails) and reads dlerror(); glibc keeps that message in a thread-local
    // slot until the thread's next dlerror(), which frees it. Without this
    // call the slot outlives the pool's workers' scans (LeakSanitizer reports
    // it under run.sh's use_tls=0).
    dlerror();  // NOLINT(concurrency-mt-unsafe): this thread's own slot
    return libxsmm_get_target_archid() >= LIBXSMM_X86_AVX;
  }();
  return usable;
}

bool gemm(const Gemm& g) {
  if (!available() || !fits(g.rows) || !fits(g.cols) || !fits(g.depth) || !fits(g.lda) ||
      !fits(g.ldb) || !fits(g.ldo)) {
    return false;
  }
  // Every block's kernel first: a shape declined half way would leave out
  // partly accumulated for the tiles to add to again.
  const bool all_known = for_each_block(g, [&](const Block& b) {
    return b.rows <= 0 || b.cols <= 0 || empty_depth(b) || kernel_for(key_of(g, b)) != nullptr;
  });
  if (!all_known) return false;
  for_each_block(g, [&](const Block& b) {
    if (b.rows <= 0 || b.cols <= 0) return true;
    float* out = g.out + b.row * g.ldo;
    if (empty_depth(b)) {
      for (int64_t r = 0; r < b.rows && !g.accumulate; ++r) {
        std::fill(out + r * g.ldo, out + r * g.ldo + b.cols, 0.0f);
      }
      return true;
    }
    const float* a = g.transpose_a ? g.a + b.first * g.lda + b.row : g.a + b.row * g.lda + b.first;
    kernel_for(key_of(g, b))(g.b + b.first * g.ldb, a, out);
    return true;
  });
  return true;
}

#else  // built without libxsmm

bool available() { return false; }
bool gemm(const Gemm&) { return false; }

#endif

}  // namespace hops::cpu::xsmm
