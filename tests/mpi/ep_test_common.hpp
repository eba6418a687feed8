// What the expert-parallel MPI tests share, whatever memory their tensors live
// in: the provider, the failure count, the case table, the whole problem every
// rank builds from one seed, the synthetic expert and the wrong-call runner.
// A tensor type here needs value(r, i), set_value(r, i, f) and index(i).
#pragma once

#include <dlfcn.h>
#include <hops/hops.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace ep_test {

inline const hops_api* api = nullptr;
inline int rank = 0, world = 1;
inline int failures = 0;

constexpr DLDataType kF32{kDLFloat, 32, 1}, kBF16{kDLBfloat, 16, 1};
constexpr DLDataType kI32{kDLInt, 32, 1}, kI64{kDLInt, 64, 1};

inline void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "rank %d: FAIL %s\n", rank, what.c_str());
  }
}

// MPI is up; loads the provider named on the command line, or aborts.
inline void load_api(int argc, char** argv) {
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  void* lib = dlopen(argc > 1 ? argv[1] : "libhops.so", RTLD_NOW | RTLD_LOCAL);
  auto get_api = lib ? reinterpret_cast<hops_get_api_fn>(dlsym(lib, "hops_get_api")) : nullptr;
  api = get_api ? get_api(HOPS_ABI_MAJOR) : nullptr;
  if (!api) {
    std::fprintf(stderr, "rank %d: cannot load %s: %s\n", rank, argc > 1 ? argv[1] : "libhops.so",
                 dlerror());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
}

template <class Fn>
Fn op(const char* name) {
  const hops_op_desc* desc = api->find_op(name);
  if (!desc) {
    std::fprintf(stderr, "rank %d: the provider has no %s\n", rank, name);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return reinterpret_cast<Fn>(desc->fn);
}

struct Case {
  std::string name;
  std::function<int64_t(int)> tokens;  // T of a rank
  int64_t E_per_rank, k, Hd;
  DLDataType dtype, ids;
  double drop;    // share of dropped slots
  bool to_rank0;  // every id names an expert of rank 0: the others receive nothing
  int64_t spare;  // rows beyond what arrives
};

// The whole problem, the same on every rank: tokens [Tall, Hd] and their k
// expert ids (-1: dropped) and weights, row-major; rank r owns tokens
// first[r] .. first[r + 1].
struct Gathered {
  int64_t E, El, Tall;
  std::vector<int64_t> T, first;
  std::vector<float> x, weights;
  std::vector<int64_t> ids;

  Gathered(const Case& c, uint64_t seed)
      : E(c.E_per_rank * world), El(c.E_per_rank), T(world), first(world + 1, 0) {
    for (int r = 0; r < world; ++r) T[r] = c.tokens(r), first[r + 1] = first[r] + T[r];
    Tall = first[world];
    const int64_t k = c.k, choices = c.to_rank0 ? El : E;
    std::mt19937_64 random(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    x.resize(Tall * c.Hd), ids.resize(Tall * k), weights.resize(Tall * k);
    for (float& v : x) v = uniform(random);
    for (int64_t t = 0; t < Tall; ++t) {
      std::vector<int64_t> picked;
      for (int64_t j = 0; j < k; ++j) {
        int64_t e;
        do {
          e = static_cast<int64_t>(random() % choices);
        } while (std::find(picked.begin(), picked.end(), e) != picked.end() &&
                 picked.size() < static_cast<size_t>(choices));
        picked.push_back(e);
        const bool drop = std::uniform_real_distribution<double>(0, 1)(random) < c.drop;
        ids[t * k + j] = drop ? -1 : e;
        weights[t * k + j] = std::uniform_real_distribution<float>(0, 1)(random);
      }
    }
  }

  // Where this rank's experts' rows start in the gathered dispatch, and how
  // many arrive here.
  template <class Tensor>
  void arrivals(const Tensor& counts_all, int64_t& expert_first, int64_t& arriving) const {
    expert_first = arriving = 0;
    for (int64_t e = 0; e < rank * El; ++e) expert_first += counts_all.index(e);
    for (int64_t e = rank * El; e < (rank + 1) * El; ++e) arriving += counts_all.index(e);
  }
};

// The synthetic experts first_expert.. over rows grouped by `counts`:
// out = row * (1 + e / 64), rounded to the row dtype.
template <class Tensor>
void apply_experts(const Tensor& rows, const Tensor& counts, int64_t experts, int64_t first_expert,
                   Tensor& out) {
  for (int64_t e = 0, first = 0; e < experts; first += counts.index(e), ++e) {
    const float scale = 1.0f + static_cast<float>(first_expert + e) / 64.0f;
    for (int64_t r = first; r < first + counts.index(e); ++r) {
      for (int64_t i = 0; i < rows.shape[1]; ++i) out.set_value(r, i, rows.value(r, i) * scale);
    }
  }
}

// The parameters of a wrong call before `spoil` changes them on some ranks.
struct WrongCall {
  int64_t T = 6, E = 2 * world, k = 2, Hd = 4, C = T * k * world;
  DLDataType x_dtype = kF32;
};

// Runs a wrong call on this rank: it must fail on every rank, within bound_s.
inline void expect_failure_within(const std::string& what, double bound_s,
                                  const std::function<hops_status()>& call) {
  const auto start = std::chrono::steady_clock::now();
  const hops_status status = call();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  check(status != HOPS_OK, what + ": expected an error on every rank, got HOPS_OK");
  check(seconds < bound_s, what + ": took " + std::to_string(seconds) + " s");
  if (rank == 0 && status != HOPS_OK) {
    std::printf("  %-44s %s: %s (%.2f s)\n", what.c_str(), api->status_name(status),
                api->last_error(), seconds);
  }
}

// The failures of all ranks, summed and reported by rank 0.
inline int report(const char* what, size_t cases) {
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("%s over %d ranks: %zu cases, %s\n", what, world, cases,
                total ? "FAILED" : "all passed");
  }
  return total;
}

}  // namespace ep_test
