// Helpers of the notify tests: a plain datagram socket that plays the simplest possible manager
// (raw bytes, fds and credentials as recvmsg gives them, no parsing), and a raw sender that
// bypasses handoff::notifier to hand the receiver whatever bytes and fds a test wants.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/fd.hpp"

namespace handoff::test {

struct unix_addr {
  sockaddr_un addr{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&addr); }
};

// "/path" or "@abstract" (a leading NUL byte in sun_path, unix(7)).
inline unix_addr make_addr(const std::string& where) {
  unix_addr a;
  a.addr.sun_family = AF_UNIX;
  const std::size_t n = std::min(where.size(), sizeof(a.addr.sun_path) - 1);
  std::memcpy(a.addr.sun_path, where.data(), n);
  const bool abstract = !where.empty() && where.front() == '@';
  if (abstract) a.addr.sun_path[0] = '\0';
  a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
  return a;
}

// Sends `bytes` with `fds` (SCM_RIGHTS, split over `cmsgs` control messages) from a fresh
// socket. Returns 0 or the errno of sendmsg.
inline int send_raw(const std::string& where, std::string_view bytes, std::span<const int> fds = {},
                    std::size_t cmsgs = 1) {
  const unique_fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return errno;
  const unix_addr a = make_addr(where);
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr*>(a.get());
  msg.msg_namelen = a.length;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<cmsghdr> control;
  if (!fds.empty()) {
    const std::size_t per = (fds.size() + cmsgs - 1) / cmsgs;
    std::size_t space = 0;
    for (std::size_t i = 0; i < fds.size(); i += per)
      space += CMSG_SPACE(sizeof(int) * std::min(per, fds.size() - i));
    control.resize((space + sizeof(cmsghdr) - 1) / sizeof(cmsghdr) + 1);
    msg.msg_control = control.data();
    msg.msg_controllen = space;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    for (std::size_t i = 0; i < fds.size(); i += per) {
      const std::size_t k = std::min(per, fds.size() - i);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * k);
      std::memcpy(CMSG_DATA(c), fds.data() + i, sizeof(int) * k);
      c = CMSG_NXTHDR(&msg, c);
    }
  }
  return ::sendmsg(sock.get(), &msg, MSG_NOSIGNAL) < 0 ? errno : 0;
}

struct raw_datagram {
  std::string bytes;
  std::vector<unique_fd> fds;
  std::optional<ucred> creds;
  int flags = 0;  // msg_flags
};

// A bound datagram socket read with plain recvmsg: the bytes exactly as they arrived.
class raw_datagram_socket {
 public:
  explicit raw_datagram_socket(const std::string& where, bool passcred = true) {
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const int on = 1;
    if (passcred) ::setsockopt(fd_.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    const unix_addr a = make_addr(where);
    if (::bind(fd_.get(), a.get(), a.length) != 0) fd_.reset();
  }
  bool ok() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }

  // The next datagram, waiting at most `timeout`; nullopt when none came.
  std::optional<raw_datagram> receive(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
    std::vector<char> buf(65536);
    std::vector<cmsghdr> control(
        (CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 253)) / sizeof(cmsghdr) + 1);
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size() * sizeof(cmsghdr);
    const ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return std::nullopt;
    raw_datagram d;
    d.bytes.assign(buf.data(), static_cast<std::size_t>(n));
    d.flags = msg.msg_flags;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_RIGHTS) {
        const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < k; ++i) {
          int fd = -1;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          d.fds.emplace_back(fd);
        }
      } else if (c->cmsg_type == SCM_CREDENTIALS) {
        ucred u{};
        std::memcpy(&u, CMSG_DATA(c), sizeof u);
        d.creds = u;
      }
    }
    return d;
  }

 private:
  unique_fd fd_;
};

// Runs `body` in a fork()ed child, which exits with its return value.
inline pid_t fork_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  return pid;
}

// Reaps `pid` within `timeout` (pidfd + poll); -1 when it did not end (it is killed then).
inline int reap(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return -1;
  pollfd p{pidfd.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) ::kill(pid, SIGKILL);
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Splits a datagram into its lines, as a field-by-field comparison wants them.
inline std::vector<std::string> lines_of(std::string_view bytes) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= bytes.size()) {
    auto end = bytes.find('\n', pos);
    if (end == std::string_view::npos) end = bytes.size();
    out.emplace_back(bytes.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

}  // namespace handoff::test
