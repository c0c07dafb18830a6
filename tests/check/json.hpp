// Boost.JSON for the tests that read `handoff check --json` output (its implementation comes
// with handoff_check_lib: tools/handoff/json_impl.cpp).
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

namespace handoff::test {

inline boost::json::value read_json_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return boost::json::parse(s.str());
}

inline std::int64_t json_int(const boost::json::value& v, std::string_view key) {
  return v.as_object().at(key).to_number<std::int64_t>();
}

}  // namespace handoff::test
