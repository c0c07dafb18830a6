#include "supervisor/notify_socket.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

namespace handoff::supervisor {

std::string notify_socket_path(const std::string& control_path) {
  if (control_path.empty()) return {};
  // NOTIFY_SOCKET is absolute (sd_notify(3)): a child may change its working directory.
  std::error_code ec;
  std::string path = std::filesystem::absolute(control_path, ec).string();
  if (ec) return {};
  const std::string suffix = ".sock";
  // Not NAME.notify.sock: `handoff status` without --name finds the control socket as the only
  // *.sock file of its directory.
  if (path.size() > suffix.size() &&
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0)
    path.resize(path.size() - suffix.size());
  return path + ".notify";
}

namespace {

// A socket file at `path` that no one receives on (connect(2) refused: its receiver is gone)
// is removed; anything else is refused, never replaced.
result<void> remove_if_stale(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return error::from_errno(errno, "notify socket " + path);
  }
  if (!S_ISSOCK(st.st_mode))
    return error::make(errc::invalid_address,
                       "notify socket " + path + ": the path exists and is not a socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path)
    return error::make(errc::invalid_address, "notify socket " + path + ": path too long");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  unique_fd probe(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!probe) return error::from_errno(errno, "socket to probe " + path);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0)
    return error::from_errno(EADDRINUSE,
                             "notify socket " + path + ": another process receives on it");
  if (errno != ECONNREFUSED)
    return error::from_errno(errno, "notify socket " + path + ": probing the existing socket");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return error::from_errno(errno, "remove stale notify socket " + path);
  return {};
}

}  // namespace

result<opened_notify_socket> open_notify_socket(notify_socket_kind kind,
                                                const std::string& control_path) {
  std::string note;
  const std::string path = notify_socket_path(control_path);
  if (kind == notify_socket_kind::path && !path.empty()) {
    if (path.size() < sizeof(sockaddr_un::sun_path)) {
      if (auto r = remove_if_stale(path); !r) return r.error();
      auto n = notify_receiver::open(path);
      if (!n) return n.error();
      // Before the address is handed to anyone: only our own user may send (as the app runs).
      // Until then a stranger's datagram is refused anyway, by its sender's pid.
      if (::chmod(path.c_str(), 0600) != 0)
        return error::from_errno(errno, "chmod notify socket " + path);
      return opened_notify_socket{std::move(*n), std::move(note)};
    }
    note = path + " is longer than a unix socket path may be: an abstract socket instead";
  } else if (kind == notify_socket_kind::path) {
    note = "no control socket to put the notify socket beside: an abstract socket instead";
  }
  auto n = notify_receiver::open_unique();
  if (!n) return n.error();
  return opened_notify_socket{std::move(*n), std::move(note)};
}

}  // namespace handoff::supervisor
