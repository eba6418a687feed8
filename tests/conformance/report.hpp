// The runner's output: one line per case (PASS / FAIL / SKIP) and the summary.
#pragma once

#include <mutex>
#include <string>
#include <string_view>

namespace hops::conformance {

class Report {
 public:
  void pass(std::string_view name, std::string_view detail = {});
  void fail(std::string_view name, std::string_view why);
  void skip(std::string_view name, std::string_view why);
  // pass(name) when ok, else fail(name, why).
  void check(bool ok, std::string_view name, std::string_view why);
  void section(std::string_view title);

  int failed() const { return failed_; }
  // "N passed, M failed" (and the skips).
  void summary() const;

 private:
  void line(std::string_view tag, std::string_view name, std::string_view detail);

  std::mutex mutex_;  // lines stay whole if a case reports from several threads
  int passed_ = 0, failed_ = 0, skipped_ = 0;
};

}  // namespace hops::conformance
