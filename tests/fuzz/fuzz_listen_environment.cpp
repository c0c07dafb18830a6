// Fuzz target for parse_listen_environment().
//
// Input: one flag byte, then the three values separated by '\n':
//   <flags>PID\nFDS\nNAMES
// Bit 0 of the flag byte sets LISTEN_PID, bit 1 LISTEN_FDS, bit 2 LISTEN_FDNAMES (so the digit
// '7' sets all three, '3' leaves LISTEN_FDNAMES unset); a value whose bit is clear is unset. The
// receiving process is pid 4242.
// Invariants: an error is errc::invalid_environment and names a LISTEN_ variable; a result for
// us has 0 <= count <= listen_fds_max and exactly one non-empty name per fd; a result not for
// us is empty; LISTEN_PID unset is never an error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "handoff/activation.hpp"

namespace {

void check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned flags = data[0];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string parts[3];
  std::size_t start = 0;
  for (int i = 0; i < 3; ++i) {
    if (start > rest.size()) break;
    const std::size_t end = i < 2 ? rest.find('\n', start) : std::string::npos;
    parts[i] = rest.substr(start, end == std::string::npos ? std::string::npos : end - start);
    start = end == std::string::npos ? rest.size() + 1 : end + 1;
  }
  handoff::listen_environment env;
  if ((flags & 1u) != 0) env.pid = parts[0];
  if ((flags & 2u) != 0) env.fds = parts[1];
  if ((flags & 4u) != 0) env.fdnames = parts[2];

  constexpr pid_t self = 4242;
  const auto plan = handoff::parse_listen_environment(env, self);
  if (!plan) {
    check(plan.error() == handoff::errc::invalid_environment);
    check(plan.error().message().find("LISTEN_") != std::string::npos);
    check(env.pid.has_value());
    return 0;
  }
  if (!plan->for_us) {
    check(plan->count == 0 && plan->names.empty());
    return 0;
  }
  check(env.pid.has_value());
  check(plan->count >= 0 && plan->count <= handoff::listen_fds_max);
  check(plan->names.size() == static_cast<std::size_t>(plan->count));
  for (const auto& name : plan->names) check(!name.empty());
  return 0;
}
