#include "supervisor/log.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <ctime>

#include "json_text.hpp"

namespace handoff::supervisor {

void json_string(std::string& out, std::string_view text) { cli::append_json_string(out, text); }

void logger::log(std::string_view event, std::string_view message, const log_fields& fields) const {
  std::string line;
  if (format_ == log_format::text) {
    line = fmt::format("handoff[{}]: {}\n", name_, message);
  } else {
    const auto now = std::chrono::system_clock::now();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
    const std::time_t secs = static_cast<std::time_t>(ms.count() / 1000);
    std::tm utc{};
    ::gmtime_r(&secs, &utc);
    char stamp[32];
    (void)std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
    line = fmt::format("{{\"time\":\"{}.{:03}Z\",\"name\":", stamp, ms.count() % 1000);
    json_string(line, name_);
    line += ",\"event\":";
    json_string(line, event);
    for (const auto& [key, value] : fields) {
      line += ',';
      json_string(line, key);
      line += ':';
      if (const auto* n = std::get_if<long long>(&value))
        line += std::to_string(*n);
      else
        json_string(line, std::get<std::string>(value));
    }
    line += ",\"message\":";
    json_string(line, message);
    line += "}\n";
  }
  // One write(2) per line, so lines of the supervisor and of the app do not interleave mid-line.
  std::string_view rest = line;
  while (!rest.empty()) {
    const ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace handoff::supervisor
