// Receiving sockets by the systemd protocol (sd_listen_fds(3)), the app's side.
//
// A manager (systemd, systemd-socket-activate, `handoff run`, an upgrading parent) puts the
// sockets on fds 3, 4, ... and sets
//   LISTEN_PID=<the receiver's pid>  LISTEN_FDS=<count>  LISTEN_FDNAMES=<name>:<name>:...
// Rules, as sd_listen_fds_with_names() applies them:
// - LISTEN_PID unset or naming another process: the fds are not for us. That is an empty
//   result, not an error (a child that inherited its parent's environment by accident).
// - LISTEN_FDS must be a plain decimal count; names default to "unknown".
// Stricter than libsystemd: a count that is not a number, negative, absurdly large, or names fds
// that are not open, and a LISTEN_FDNAMES with another number of names, are errors.
// Every received fd is made close-on-exec at once, and the LISTEN_* variables are unset by
// default so that grandchildren do not take them by mistake.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/fd.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"

namespace handoff {

inline constexpr int listen_fds_start = 3;  // SD_LISTEN_FDS_START
// More fds than this in LISTEN_FDS is a mistake, not a configuration (systemd's own fd store
// caps at 4096 per unit).
inline constexpr int listen_fds_max = 65536;

// The three variables, as read from the environment (nullopt: unset). A seam for tests and
// fuzzing; listen_fds() reads the real environment.
struct listen_environment {
  std::optional<std::string> pid, fds, fdnames;
  static listen_environment from_process();
};

// What the variables say, before any fd is touched.
struct listen_plan {
  bool for_us = false;             // LISTEN_PID named this process
  int count = 0;                   // fds 3 .. 3+count-1
  std::vector<std::string> names;  // one per fd
};
result<listen_plan> parse_listen_environment(const listen_environment& env, pid_t self);

struct inherited_socket {
  unique_fd fd;
  std::string name;  // from LISTEN_FDNAMES, "unknown" when none was given
  socket_info info;  // kind, listening, local address (family none: not a socket)
};

enum class unset_environment { yes, no };

// Takes ownership of the inherited fds (sd_listen_fds_with_names with unset_environment=1).
result<std::vector<inherited_socket>> listen_fds(unset_environment unset = unset_environment::yes);
// The same, from given variables (the environment is not touched).
result<std::vector<inherited_socket>> listen_fds(const listen_environment& env, pid_t self);

// The sockets of a process: the inherited ones, looked up by name or address, and new ones
// opened when nothing matches: "the socket named http, or open :8080 if none was inherited".
class socket_set {
 public:
  socket_set() = default;
  explicit socket_set(std::vector<inherited_socket> inherited) : sockets_(std::move(inherited)) {}
  // Reads LISTEN_* (see listen_fds()).
  static result<socket_set> from_environment(unset_environment unset = unset_environment::yes);

  // The fd of the socket with that name, or -1. The set keeps ownership.
  int find(std::string_view name) const noexcept;
  // The fd of the socket bound to that address (see socket_matches()), or -1.
  int find(const address& where) const noexcept;

  // Removes the inherited fd with that name from the set and gives it to the caller (invalid
  // when there is none): for fds that are not sockets to serve, such as the TLS keys memfd.
  unique_fd take(std::string_view name);

  // The inherited socket named `where.name` (or, when unnamed or not found by name, bound to
  // `where`), else a new listener on `where`, which the set then holds under that name. The name
  // handoff-tls-keys (ticket_keys_name) is refused: it is reserved for a memfd.
  result<int> listen(const address& where, const listen_options& options = {});
  // Shorthand: parse_address(text), then listen().
  result<int> listen(std::string_view text, const listen_options& options = {});

  const std::vector<inherited_socket>& sockets() const noexcept { return sockets_; }
  std::vector<inherited_socket>& sockets() noexcept { return sockets_; }

 private:
  std::vector<inherited_socket> sockets_;
};

}  // namespace handoff
