// Judging a case's outputs against the float64 reference: relative L2 error
// within the dtype's tolerance, every element written, and the elements the op
// must leave alone (NaN in the reference) still holding their poison, bit for bit.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tensor.hpp"

namespace hops::conformance {

// DESIGN §4: f32 1e-5 (1e-4 for the chunked GDN), f16/bf16 1e-2 against the
// reference of the same rounded inputs.
double tolerance(DType dtype, bool chunked_gdn = false);

class Verdict {
 public:
  // Compares `out` with `expected` (same logical shape).
  void expect_close(std::string_view output, const Tensor& out, const Array64& expected,
                    double tolerance);
  // The slots of a state pool [S, ...] that no sequence uses keep every bit of
  // `before` (the pool's bits ahead of the call).
  void expect_slots_kept(std::string_view output, const std::vector<uint32_t>& before,
                         const Tensor& pool, const std::vector<bool>& used);
  // Records a failure unless `ok`.
  void expect(bool ok, std::string_view message);

  bool ok() const { return problems_.empty(); }
  // "rel_err=… [worst output]" followed by the problems, if any.
  std::string detail() const;

 private:
  double worst_error_ = 0;
  std::string worst_output_;
  std::vector<std::string> problems_;
};

// Which of `pool` slots the sequences use: state_indices (-1 none), or slot n
// for sequence n without them.
std::vector<bool> used_slots(int64_t pool, int64_t sequences,
                             const std::optional<std::vector<int64_t>>& state_indices);

}  // namespace hops::conformance
