// Notify, the sending side (sd_notify(3), sd_pid_notify_with_fds(3)): an app tells its manager
// (systemd, `handoff run`, an upgrading parent) about its state.
//
// NOTIFY_SOCKET names a unix datagram socket: an absolute path, or "@name" for the abstract
// namespace. Each message is one datagram of newline-separated KEY=VALUE lines. Without
// NOTIFY_SOCKET there is nobody to tell: sending is a no-op reported as
// notify_outcome::no_manager, not an error. A malformed message (empty, a NUL byte, over
// notify_message_max bytes, a newline inside STATUS=) is errc::invalid_message with or without
// a manager, so that it shows up in a test run too.
//
//   READY=1                      started (or reloaded); the manager may now route traffic
//   RELOADING=1 MONOTONIC_USEC=  reloading; the CLOCK_MONOTONIC time in the same datagram
//                                (systemd 253+ Type=notify-reload waits for it)
//   STOPPING=1                   shutting down
//   STATUS=<text>                free text for `systemctl status` / `handoff status`
//   MAINPID=<pid>                the service's main process is now <pid> (after an upgrade)
//   WATCHDOG=1  WATCHDOG_USEC=   keep-alive ping, or a new watchdog interval
//   EXTEND_TIMEOUT_USEC=<us>     ask for more time for the current start/stop/reload
//   ERRNO=<n>                    the errno of a failure
//   FDSTORE=1 FDNAME=<name>      keep these fds (SCM_RIGHTS) for my next start
//   BARRIER=1                    with a pipe's write end: the manager closes it once it has
//                                processed everything sent before (see barrier())
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff {

// How long a send waits for room in the manager's queue (net.unix.max_dgram_qlen datagrams).
inline constexpr std::chrono::milliseconds notify_send_timeout{5000};

// Whether a send reached a manager: sent, or nobody to tell (no NOTIFY_SOCKET).
enum class notify_outcome { sent, no_manager };

class notifier {
 public:
  // No manager: every send is a no-op that returns no_manager.
  notifier() = default;
  // Sends to this socket ("/path" or "@abstract"). An invalid name fails on the first send.
  explicit notifier(std::string socket) : socket_(std::move(socket)) {}
  // From NOTIFY_SOCKET; with unset = true the variable is removed (sd_notify's
  // unset_environment), so children do not report in this process's name.
  static notifier from_environment(bool unset = false);

  bool has_manager() const noexcept { return socket_.has_value(); }
  const std::optional<std::string>& socket() const noexcept { return socket_; }

  // Sends `message` as is. `fds` travel with it (SCM_RIGHTS); `pid`, when given and not our
  // own, is sent as the sender in SCM_CREDENTIALS (sd_pid_notify: needs privileges). A manager
  // whose queue stays full (it does not read) fails the send after notify_send_timeout
  // (errno EAGAIN), where sd_notify would block for ever.
  result<notify_outcome> send(std::string_view message, std::span<const int> fds = {},
                              std::optional<pid_t> pid = std::nullopt) const;

  result<notify_outcome> ready(std::string_view status = {}) const;
  result<notify_outcome> reloading() const;  // with MONOTONIC_USEC=
  result<notify_outcome> stopping(std::string_view status = {}) const;
  result<notify_outcome> status(std::string_view text) const;
  result<notify_outcome> mainpid(pid_t pid) const;
  result<notify_outcome> watchdog() const;
  result<notify_outcome> watchdog_usec(std::chrono::microseconds interval) const;
  result<notify_outcome> extend_timeout(std::chrono::microseconds extra) const;
  result<notify_outcome> errno_value(int err) const;
  // FDSTORE=1 with FDNAME=<name>; name must be valid_socket_name().
  result<notify_outcome> fdstore(std::span<const int> fds, std::string_view name) const;

  // BARRIER=1: returns once the manager has processed every message sent before, or
  // errc::timed_out. Use before exiting right after a notification (e.g. MAINPID= handed on).
  result<notify_outcome> barrier(std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;

 private:
  std::optional<std::string> socket_;
};

// CLOCK_MONOTONIC now, in microseconds (what MONOTONIC_USEC= carries).
std::uint64_t monotonic_usec() noexcept;

}  // namespace handoff
