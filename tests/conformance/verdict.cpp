#include "verdict.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

namespace hops::conformance {

double tolerance(DType dtype, bool chunked_gdn) {
  if (dtype != DType::f32) return 1e-2;
  return chunked_gdn ? 1e-4 : 1e-5;
}

void Verdict::expect_close(std::string_view output, const Tensor& out, const Array64& expected,
                           double tolerance) {
  if (out.shape() != expected.shape) {
    expect(false, fmt::format("{}: shape [{}] but the reference has [{}]", output,
                              fmt::join(out.shape(), ","), fmt::join(expected.shape, ",")));
    return;
  }
  const Array64 actual = out.read();
  const std::vector<uint32_t> bits = out.read_bits();
  const uint32_t poison = poison_bits(out.dtype());
  double diff2 = 0, ref2 = 0;
  int64_t not_finite = 0, poison_lost = 0;
  for (size_t i = 0; i < actual.data.size(); ++i) {
    const double want = expected.data[i];
    if (std::isnan(want)) {  // the op must not have touched this element
      poison_lost += bits[i] != poison;
      continue;
    }
    const double got = actual.data[i];
    if (!std::isfinite(got)) {
      ++not_finite;
      continue;
    }
    diff2 += (got - want) * (got - want);
    ref2 += want * want;
  }
  // An all-zero reference (e.g. a zero state) asks for exact zeros.
  const double error = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (error >= worst_error_) worst_error_ = error, worst_output_ = output;
  if (not_finite) {
    expect(false, fmt::format("{}: {} of {} elements not finite (unwritten or overflowed)", output,
                              not_finite, actual.numel()));
  }
  if (poison_lost) {
    expect(false,
           fmt::format("{}: {} elements of skipped sequences were written", output, poison_lost));
  }
  if (!(error <= tolerance)) {
    expect(false, fmt::format("{}: rel_err {:.3g} > {:.0e}", output, error, tolerance));
  }
}

void Verdict::expect_slots_kept(std::string_view output, const std::vector<uint32_t>& before,
                                const Tensor& pool, const std::vector<bool>& used) {
  const std::vector<uint32_t> after = pool.read_bits();
  const size_t per_slot = after.size() / used.size();
  for (size_t slot = 0; slot < used.size(); ++slot) {
    if (used[slot]) continue;
    const auto begin = static_cast<std::ptrdiff_t>(slot * per_slot);
    const auto end = begin + static_cast<std::ptrdiff_t>(per_slot);
    if (!std::equal(after.begin() + begin, after.begin() + end, before.begin() + begin)) {
      expect(false, fmt::format("{}: slot {} is used by no sequence but changed", output, slot));
    }
  }
}

void Verdict::expect(bool ok, std::string_view message) {
  if (!ok) problems_.emplace_back(message);
}

std::string Verdict::detail() const {
  std::string text = worst_output_.empty()
                         ? std::string()
                         : fmt::format("rel_err={:.2e} [{}]", worst_error_, worst_output_);
  for (const std::string& p : problems_) text += fmt::format("{}{}", text.empty() ? "" : "; ", p);
  return text;
}

std::vector<bool> used_slots(int64_t pool, int64_t sequences,
                             const std::optional<std::vector<int64_t>>& state_indices) {
  std::vector<bool> used(static_cast<size_t>(pool), false);
  for (int64_t n = 0; n < sequences; ++n) {
    const int64_t slot = state_indices ? (*state_indices)[static_cast<size_t>(n)] : n;
    if (slot >= 0) used[static_cast<size_t>(slot)] = true;
  }
  return used;
}

}  // namespace hops::conformance
