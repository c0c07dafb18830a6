#include "supervisor/generation.hpp"

namespace handoff::supervisor {

const char* to_string(generation_state s) {
  switch (s) {
    case generation_state::starting:
      return "starting";
    case generation_state::settling:
      return "settling";
    case generation_state::serving:
      return "serving";
    case generation_state::draining:
      return "draining";
    case generation_state::failed:
      return "failed";
  }
  return "?";
}

std::string generation::pids() const {
  std::string out;
  for (const auto& s : slots) {
    if (!s.running()) continue;
    if (!out.empty()) out += ' ';
    out += std::to_string(s.pid);
  }
  return out.empty() ? "none" : out;
}

int exit_code_of(const exit_status& s) { return s.exited ? s.code : 128 + s.signal; }

}  // namespace handoff::supervisor
