// The receiving side of the systemd socket-passing protocol (sd_listen_fds(3)).
//
// Order of the work matters: LISTEN_PID first (not for us: nothing is touched), then the count,
// then FD_CLOEXEC on every fd of the range, and only then the checks that can still fail (fds
// that are not open, the names). Whatever happens after the count is known, no received fd is
// left to leak into a process we start later (pingora#959).
#include "handoff/activation.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

#include "handoff/decimal.hpp"
#include "handoff/ticket_keys.hpp"

namespace handoff {
namespace {

constexpr const char* pid_var = "LISTEN_PID";
constexpr const char* fds_var = "LISTEN_FDS";
constexpr const char* names_var = "LISTEN_FDNAMES";

// VAR="value", with the value cut short and non-printable bytes escaped: it comes from the
// environment and may be anything.
std::string quoted(const char* var, const std::string& value) {
  constexpr std::size_t limit = 80;
  std::string out = std::string(var) + "=\"";
  for (std::size_t i = 0; i < value.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c > 0x7e) {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (value.size() > limit) out += "...";
  return out + "\"";
}

error invalid(const char* var, const std::string& value, const std::string& why) {
  return error::make(errc::invalid_environment, quoted(var, value) + ": " + why);
}

enum class number_status { ok, not_a_number, negative, too_large };

// A plain decimal number (handoff::parse_decimal: digits only, nothing before or after;
// libsystemd's safe_atoi also takes "+1", " 1" and "0x1", which a manager never writes and a
// bug does). The rest only tells a negative or too large number from garbage, for the message.
number_status parse_number(std::string_view text, std::int64_t max, std::int64_t& out) {
  if (auto value = handoff::parse_decimal<std::int64_t>(text, 0, max)) {
    out = *value;
    return number_status::ok;
  }
  const auto digits = [](std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (text.starts_with('-') && digits(text.substr(1))) return number_status::negative;
  if (digits(text)) return number_status::too_large;
  return number_status::not_a_number;
}

// LISTEN_PID: unset or another process means "not for us" (false); garbage is an error.
result<bool> parse_pid(const listen_environment& env, pid_t self) {
  if (!env.pid) return false;
  std::int64_t pid = 0;
  const auto status = parse_number(*env.pid, 0x7fffffff, pid);
  if (status != number_status::ok || pid == 0)
    return invalid(pid_var, *env.pid,
                   "not a process id (expected the pid of the receiving process)");
  return pid == self;
}

result<int> parse_count(const listen_environment& env) {
  if (!env.fds) return 0;  // LISTEN_PID without LISTEN_FDS: nothing passed, as in libsystemd
  std::int64_t count = 0;
  switch (parse_number(*env.fds, listen_fds_max, count)) {
    case number_status::ok:
      return static_cast<int>(count);
    case number_status::negative:
      return invalid(fds_var, *env.fds,
                     "negative (expected the count of fds passed from fd " +
                         std::to_string(listen_fds_start) + " on)");
    case number_status::too_large:
      return invalid(fds_var, *env.fds,
                     "more than " + std::to_string(listen_fds_max) + " fds (the most accepted)");
    case number_status::not_a_number:
      break;
  }
  return invalid(fds_var, *env.fds,
                 "not a number (expected the count of fds passed from fd " +
                     std::to_string(listen_fds_start) + " on)");
}

// One name per fd. systemd only splits on ':'; an empty field gets the default "unknown" here
// (libsystemd would hand out ""), and a different number of names than fds is an error.
result<std::vector<std::string>> parse_names(const listen_environment& env, int count) {
  std::vector<std::string> names;
  if (!env.fdnames) {
    names.assign(static_cast<std::size_t>(count), "unknown");
    return names;
  }
  const std::string& text = *env.fdnames;
  if (!text.empty() || count != 0) {
    std::size_t start = 0;
    for (;;) {
      const std::size_t colon = text.find(':', start);
      std::string name = text.substr(start, colon == std::string::npos ? colon : colon - start);
      names.push_back(name.empty() ? "unknown" : std::move(name));
      if (colon == std::string::npos) break;
      start = colon + 1;
      // A count mismatch is certain already; stop before an absurd input allocates too much.
      if (names.size() > static_cast<std::size_t>(count)) break;
    }
  }
  if (names.size() != static_cast<std::size_t>(count)) {
    // As split above: "" is one (empty) name, "a:" two.
    std::size_t fields = 1;
    for (char c : text) fields += c == ':' ? 1 : 0;
    return error::make(errc::invalid_environment,
                       quoted(names_var, text) + " has " + std::to_string(fields) +
                           (fields == 1 ? " name" : " names") + " but " +
                           (env.fds ? quoted(fds_var, *env.fds) : std::string(fds_var) + " unset") +
                           " passes " + std::to_string(count) + (count == 1 ? " fd" : " fds"));
  }
  return names;
}

void unset_listen_variables() {
  ::unsetenv(pid_var);
  ::unsetenv(fds_var);
  ::unsetenv(names_var);
}

}  // namespace

listen_environment listen_environment::from_process() {
  listen_environment env;
  if (const char* v = std::getenv(pid_var)) env.pid = v;
  if (const char* v = std::getenv(fds_var)) env.fds = v;
  if (const char* v = std::getenv(names_var)) env.fdnames = v;
  return env;
}

result<listen_plan> parse_listen_environment(const listen_environment& env, pid_t self) {
  listen_plan plan;
  auto for_us = parse_pid(env, self);
  if (!for_us) return for_us.error();
  if (!*for_us) return plan;
  plan.for_us = true;
  auto count = parse_count(env);
  if (!count) return count.error();
  auto names = parse_names(env, *count);
  if (!names) return names.error();
  plan.count = *count;
  plan.names = std::move(*names);
  return plan;
}

result<std::vector<inherited_socket>> listen_fds(const listen_environment& env, pid_t self) {
  std::vector<inherited_socket> sockets;
  auto for_us = parse_pid(env, self);
  if (!for_us) return for_us.error();
  if (!*for_us) return sockets;
  auto count = parse_count(env);
  if (!count) return count.error();

  // Close-on-exec before any other check, so an error below leaves nothing inheritable.
  int first_closed = -1;
  int closed = 0;
  for (int fd = listen_fds_start; fd < listen_fds_start + *count; ++fd) {
    auto made = set_cloexec(fd);
    if (made) continue;
    if (made.error().code() != std::errc::bad_file_descriptor) return made.error();
    if (first_closed < 0) first_closed = fd;
    ++closed;
  }
  if (closed > 0)
    return invalid(fds_var, *env.fds,
                   "fd " + std::to_string(first_closed) + " is not open (" +
                       std::to_string(closed) + " of the " + std::to_string(*count) +
                       " fds from fd " + std::to_string(listen_fds_start) + " on are missing)");

  auto names = parse_names(env, *count);
  if (!names) return names.error();

  std::vector<socket_info> infos;
  infos.reserve(static_cast<std::size_t>(*count));
  for (int i = 0; i < *count; ++i) {
    auto info = inspect_socket(listen_fds_start + i);
    if (!info) return info.error();
    infos.push_back(std::move(*info));
  }
  // Ownership is taken only now: on any error above, the fds stay open (and close-on-exec).
  sockets.reserve(infos.size());
  for (int i = 0; i < *count; ++i) {
    const auto at = static_cast<std::size_t>(i);
    sockets.push_back(inherited_socket{unique_fd(listen_fds_start + i), std::move((*names)[at]),
                                       std::move(infos[at])});
  }
  return sockets;
}

result<std::vector<inherited_socket>> listen_fds(unset_environment unset) {
  const auto env = listen_environment::from_process();
  auto sockets = listen_fds(env, ::getpid());
  // Also when the fds were not for us or the variables were malformed, as libsystemd does:
  // our own children must not take them for theirs.
  if (unset == unset_environment::yes) unset_listen_variables();
  return sockets;
}

result<socket_set> socket_set::from_environment(unset_environment unset) {
  auto sockets = listen_fds(unset);
  if (!sockets) return sockets.error();
  return socket_set(std::move(*sockets));
}

int socket_set::find(std::string_view name) const noexcept {
  for (const auto& s : sockets_)
    if (s.name == name) return s.fd.get();
  return -1;
}

int socket_set::find(const address& where) const noexcept {
  for (const auto& s : sockets_)
    if (s.info.is_socket() && socket_matches(s.info, where)) return s.fd.get();
  return -1;
}

unique_fd socket_set::take(std::string_view name) {
  for (auto it = sockets_.begin(); it != sockets_.end(); ++it)
    if (it->name == name) {
      unique_fd fd = std::move(it->fd);
      sockets_.erase(it);
      return fd;
    }
  return unique_fd();
}

result<int> socket_set::listen(const address& where, const listen_options& options) {
  // The keys memfd is not a listener, whatever a command line calls its socket.
  if (where.name == ticket_keys_name)
    return error::make(errc::invalid_address, "listen " + where.to_string() + ": the name " +
                                                  std::string(ticket_keys_name) +
                                                  " is reserved for the TLS session-ticket keys");
  if (!where.name.empty()) {
    if (const int fd = find(std::string_view(where.name)); fd >= 0) return fd;
  }
  if (const int fd = find(where); fd >= 0) return fd;
  auto fd = open_listener(where, options);
  if (!fd) return fd.error();
  auto info = inspect_socket(fd->get());
  if (!info) return info.error();
  sockets_.push_back(inherited_socket{std::move(*fd), where.name, std::move(*info)});
  return sockets_.back().fd.get();
}

result<int> socket_set::listen(std::string_view text, const listen_options& options) {
  auto where = parse_address(text);
  if (!where) return where.error();
  return listen(*where, options);
}

}  // namespace handoff
