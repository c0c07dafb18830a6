// The supervisor's log: one line per event on stderr, as text
//   handoff[web]: generation 2 ready: pid 1234 (118 ms)
// or as JSON
//   {"time":"2026-11-22T03:20:01.123Z","name":"web","event":"ready","generation":2,...}
// The app's own stdout/stderr are not touched: children write to the same fds directly.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "supervisor/options.hpp"

namespace handoff::supervisor {

using log_value = std::variant<long long, std::string>;
using log_fields = std::vector<std::pair<std::string, log_value>>;

// Appends `text` to `out` as a JSON string literal (quotes included).
void json_string(std::string& out, std::string_view text);

class logger {
 public:
  logger(std::string name, log_format format) : name_(std::move(name)), format_(format) {}
  // `event` is a short machine name ("started", "ready", "exited", "reload_failed"); `message`
  // the sentence for a human; `fields` extra values for the JSON form.
  void log(std::string_view event, std::string_view message, const log_fields& fields = {}) const;

 private:
  std::string name_;
  log_format format_;
};

}  // namespace handoff::supervisor
