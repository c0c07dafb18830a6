// The supervisor's log: one line per event on stderr, as text
//   2026-11-22T03:20:01.123Z handoff[web]: generation 2 ready: pid 1234 (118 ms)
// (the time only with timestamps on: by default, unless stderr is the journal, which stamps
// lines itself) or as JSON
//   {"time":"2026-11-22T03:20:01.123Z","name":"web","event":"ready","generation":2,...}
// The app's own stdout/stderr are not touched: children write to the same fds directly.
//
// Never blocks the supervisor: once start_nonblocking() ran, a line that cannot be written at
// once waits in a bounded buffer (log_buffer_max bytes) that the loop flushes when stderr is
// writable (poll_fd(), flush()); lines beyond the bound are dropped and counted, and the count
// is logged once writing works again.
//
// Repeated lines are limited per event (log_limiter.hpp): a flood of one kind of line (an
// accept that keeps failing, a stranger's notifications) costs at most one line per second
// once a burst is spent, each saying how many similar ones were left out.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "supervisor/log_limiter.hpp"
#include "supervisor/options.hpp"
#include "supervisor/timers.hpp"

namespace handoff::supervisor {

using log_value = std::variant<long long, std::string>;
using log_fields = std::vector<std::pair<std::string, log_value>>;

inline constexpr std::size_t log_buffer_max = 256 * 1024;

// Appends `text` to `out` as a JSON string literal (quotes included).
void json_string(std::string& out, std::string_view text);

// Whether stderr is the journal's stream (JOURNAL_STREAM names its device and inode).
bool stderr_is_journal();

class logger {
 public:
  logger(std::string name, log_format format) : name_(std::move(name)), format_(format) {}
  ~logger();
  logger(const logger&) = delete;
  logger& operator=(const logger&) = delete;
  void set_timestamps(bool on) noexcept { timestamps_ = on; }
  // From now on writes never wait: a socket is written with MSG_DONTWAIT, a pipe or terminal
  // through a nonblocking open file description of its own (/proc/self/fd/2), so the app's
  // stderr (the same pipe) keeps its flags. A regular file is written as is (never waits).
  void start_nonblocking();
  // `event` is a short machine name ("started", "ready", "exited", "reload_failed"); `message`
  // the sentence for a human; `fields` extra values for the JSON form.
  void log(std::string_view event, std::string_view message, const log_fields& fields = {}) const;
  // The fd to poll for POLLOUT while lines wait (-1 when none wait).
  int poll_fd() const noexcept;
  void flush() const;
  std::uint64_t dropped() const noexcept { return dropped_total_; }
  // The counts of lines left out by the limiter that no later line of their kind reported yet,
  // written once their kind may write again (at the latest one log_refill after the last).
  void report_suppressed(deadlines& due) const;

 private:
  std::string format(std::string_view event, std::string_view message,
                     const log_fields& fields) const;
  void write_line(std::string_view event, std::string_view message, const log_fields& fields) const;
  // Bytes written, or -1 when nothing could be (would block, or an error).
  long write_some(std::string_view text) const;
  std::string name_;
  log_format format_;
  bool timestamps_ = false;
  int fd_ = 2;
  bool own_fd_ = false;
  bool is_socket_ = false;
  bool nonblocking_ = false;
  mutable std::string pending_;
  mutable std::uint64_t dropped_ = 0, dropped_total_ = 0;
  mutable log_limiter limiter_;
};

}  // namespace handoff::supervisor
