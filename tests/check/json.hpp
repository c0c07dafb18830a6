// Boost.JSON for the tests that read `handoff check --json` output (header-only: include
// <boost/json/src.hpp> in exactly one translation unit of the test binary).
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
