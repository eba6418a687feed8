#include "report.hpp"

#include <fmt/format.h>

namespace hops::conformance {

void Report::line(std::string_view tag, std::string_view name, std::string_view detail) {
  const std::scoped_lock lock(mutex_);
  if (tag == "PASS") ++passed_;
  if (tag == "FAIL") ++failed_;
  if (tag == "SKIP") ++skipped_;
  fmt::print("{} {}{}{}\n", tag, name, detail.empty() ? "" : "  ", detail);
  std::fflush(stdout);
}

void Report::pass(std::string_view name, std::string_view detail) { line("PASS", name, detail); }
void Report::fail(std::string_view name, std::string_view why) { line("FAIL", name, why); }
void Report::skip(std::string_view name, std::string_view why) { line("SKIP", name, why); }

void Report::check(bool ok, std::string_view name, std::string_view why) {
  if (ok) {
    pass(name);
  } else {
    fail(name, why);
  }
}

void Report::section(std::string_view title) { fmt::print("\n== {}\n", title); }

void Report::summary() const {
  fmt::print("\n{} passed, {} failed ({} skipped)\n", passed_, failed_, skipped_);
}

}  // namespace hops::conformance
