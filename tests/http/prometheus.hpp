// For the tests of handoff::http's counters: `promtool check metrics` (Debian's prometheus) on a
// scrape, and the value of one series in it.
#pragma once

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "test_support.hpp"

namespace handoff::test {

inline bool have_promtool() { return ::access("/usr/bin/promtool", X_OK) == 0; }

struct promtool_verdict {
  bool accepted = false;
  std::string output;
};

// `text` is the exposition alone (no HTTP head).
inline promtool_verdict promtool_check(const std::string& text) {
  temp_dir dir;
  const std::string file = dir / "scrape.txt";
  std::ofstream(file, std::ios::trunc) << text;
  spawn_options o;
  o.argv = {"/bin/sh", "-c", "promtool check metrics < \"$0\" 2>&1", file};
  auto r = run_and_capture(o, std::chrono::seconds(30));
  if (!r) return {false, r.error().message()};
  return {r->status.success(), r->out};
}

// The value of `series` (a name with its labels, as written), or -1 when it is not there.
inline double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

}  // namespace handoff::test
