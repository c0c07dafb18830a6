// The sending side of NOTIFY_SOCKET, byte for byte what libsystemd's sd_pid_notify_with_fds and
// sd_notify_barrier send (sd_notify(3)); tests/integration/test_interop_notify.cpp compares them.
#include "handoff/notify.hpp"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "handoff/address.hpp"
#include "handoff/fd.hpp"
#include "handoff/notify_receiver.hpp"
#include "quote.hpp"
#include "sys.hpp"
#include "unix_address.hpp"

namespace handoff {
namespace {

constexpr const char* env_name = "NOTIFY_SOCKET";

std::string subject(const std::string& socket) { return "NOTIFY_SOCKET " + sys::quote(socket); }

// A message goes out whole or not at all: a NUL would cut it short in the manager's parser, and
// systemd drops datagrams longer than its buffer.
result<void> check_message(std::string_view message, std::size_t n_fds) {
  if (message.empty()) return error::make(errc::invalid_message, "notify message is empty");
  if (const auto at = message.find('\0'); at != std::string_view::npos)
    return error::make(errc::invalid_message, "notify message " + sys::quote(message) +
                                                  " contains a NUL byte at offset " +
                                                  std::to_string(at));
  if (message.size() > notify_message_max)
    return error::make(errc::invalid_message,
                       "notify message " + sys::quote(message) + " is " +
                           std::to_string(message.size()) + " bytes, more than the " +
                           std::to_string(notify_message_max) + " a manager reads");
  if (n_fds > notify_fds_max)
    return error::make(errc::invalid_message, "notify message " + sys::quote(message) + " with " +
                                                  std::to_string(n_fds) + " fds, more than the " +
                                                  std::to_string(notify_fds_max) +
                                                  " one message can carry");
  return {};
}

// A value that would start a second KEY=VALUE line if it held a newline.
result<void> check_value(std::string_view key, std::string_view value) {
  if (value.find('\n') != std::string_view::npos)
    return error::make(errc::invalid_message, std::string(key) + " text " + sys::quote(value) +
                                                  " contains a newline, which would start "
                                                  "another field");
  return {};
}

result<sys::unix_sockaddr> notify_address(const std::string& socket) {
  // sd_notify(3) accepts an absolute path or an abstract name; systemd 253+ also knows
  // "vsock:CID:PORT", which this library does not speak.
  if (socket.empty() || (socket.front() != '/' && socket.front() != '@'))
    return error::make(
        errc::invalid_environment,
        subject(socket) + ": not an absolute path or an abstract socket name (\"@name\")");
  auto addr = sys::make_unix_sockaddr(socket, env_name);
  if (!addr) return error::make(errc::invalid_environment, addr.error().message());
  return addr;
}

std::string decimal(std::int64_t n) { return std::to_string(n); }

// Sends one datagram to `socket`. Without `deadline` a full queue at the manager blocks, as
// sd_notify does; with it the wait ends there (EAGAIN).
result<void> send_datagram(const std::string& socket, std::string_view message,
                           std::span<const int> fds, std::optional<pid_t> pid,
                           std::optional<std::chrono::steady_clock::time_point> deadline) {
  auto addr = notify_address(socket);
  if (!addr) return addr.error();

  unique_fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return error::from_errno(errno, "socket for " + subject(socket));
  int flags = MSG_NOSIGNAL;
  if (deadline) {
    // A unix datagram sender waits for room in the receiver's queue (net.unix.max_dgram_qlen)
    // for SO_SNDTIMEO; 0 there would mean forever, so an expired deadline does not wait at all.
    const auto left =
        std::chrono::ceil<std::chrono::microseconds>(*deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      flags |= MSG_DONTWAIT;
    } else {
      const timeval tv{static_cast<time_t>(left.count() / 1000000),
                       static_cast<suseconds_t>(left.count() % 1000000)};
      if (::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return error::from_errno(errno, "setsockopt SO_SNDTIMEO for " + subject(socket));
    }
  }

  // Our own pid is what the kernel puts in SCM_CREDENTIALS anyway; another pid needs
  // CAP_SYS_ADMIN (unix(7)) and a live process (ESRCH otherwise).
  const bool send_creds = pid && *pid != ::getpid();
  const std::size_t rights_space = fds.empty() ? 0 : CMSG_SPACE(sizeof(int) * fds.size());
  const std::size_t creds_space = send_creds ? CMSG_SPACE(sizeof(ucred)) : 0;
  // cmsghdr alignment: a vector of cmsghdr, not of char.
  std::vector<cmsghdr> control((rights_space + creds_space + sizeof(cmsghdr) - 1) /
                               sizeof(cmsghdr));

  iovec iov{const_cast<char*>(message.data()), message.size()};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr*>(addr->get());
  msg.msg_namelen = addr->length;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (rights_space + creds_space > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = rights_space + creds_space;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (!fds.empty()) {
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
      c = CMSG_NXTHDR(&msg, c);
    }
    if (send_creds) {
      const ucred creds{*pid, ::getuid(), ::getgid()};
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_CREDENTIALS;
      c->cmsg_len = CMSG_LEN(sizeof(ucred));
      std::memcpy(CMSG_DATA(c), &creds, sizeof creds);
    }
  }
  // Unlike libsystemd, a refused pid is not retried with our own: the manager would attribute
  // the message to the wrong process.
  // EINTR after a partial SO_SNDTIMEO wait restarts the full timeout; the caller's deadline
  // check after the send bounds the total.
  if (sys::retry_eintr([&] { return ::sendmsg(sock.get(), &msg, flags); }) < 0)
    return error::from_errno(errno, "send to " + subject(socket) +
                                        (send_creds ? " as pid " + std::to_string(*pid) : ""));
  return {};
}

}  // namespace

std::uint64_t monotonic_usec() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

notifier notifier::from_environment(bool unset) {
  const char* value = ::getenv(env_name);
  if (value == nullptr) return notifier();
  notifier n{std::string(value)};
  if (unset) ::unsetenv(env_name);
  return n;
}

result<notify_outcome> notifier::send(std::string_view message, std::span<const int> fds,
                                      std::optional<pid_t> pid) const {
  // Checked with or without a manager: a malformed message is the caller's bug, and it should
  // show up in a test run without NOTIFY_SOCKET too.
  if (auto ok = check_message(message, fds.size()); !ok) return ok.error();
  if (!socket_) return notify_outcome::no_manager;
  if (auto sent = send_datagram(*socket_, message, fds, pid,
                                std::chrono::steady_clock::now() + notify_send_timeout);
      !sent)
    return sent.error();
  return notify_outcome::sent;
}

result<notify_outcome> notifier::ready(std::string_view status) const {
  if (status.empty()) return send("READY=1");
  if (auto ok = check_value("STATUS", status); !ok) return ok.error();
  return send("READY=1\nSTATUS=" + std::string(status));
}

result<notify_outcome> notifier::reloading() const {
  return send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
}

result<notify_outcome> notifier::stopping(std::string_view status) const {
  if (status.empty()) return send("STOPPING=1");
  if (auto ok = check_value("STATUS", status); !ok) return ok.error();
  return send("STOPPING=1\nSTATUS=" + std::string(status));
}

result<notify_outcome> notifier::status(std::string_view text) const {
  if (auto ok = check_value("STATUS", text); !ok) return ok.error();
  return send("STATUS=" + std::string(text));
}

result<notify_outcome> notifier::mainpid(pid_t pid) const {
  if (pid <= 0)
    return error::make(errc::invalid_message, "MAINPID=" + decimal(pid) + ": not a process id");
  return send("MAINPID=" + decimal(pid));
}

result<notify_outcome> notifier::watchdog() const { return send("WATCHDOG=1"); }

result<notify_outcome> notifier::watchdog_usec(std::chrono::microseconds interval) const {
  if (interval.count() < 0)
    return error::make(errc::invalid_message,
                       "WATCHDOG_USEC=" + decimal(interval.count()) + ": negative interval");
  return send("WATCHDOG_USEC=" + decimal(interval.count()));
}

result<notify_outcome> notifier::extend_timeout(std::chrono::microseconds extra) const {
  if (extra.count() < 0)
    return error::make(errc::invalid_message,
                       "EXTEND_TIMEOUT_USEC=" + decimal(extra.count()) + ": negative time");
  return send("EXTEND_TIMEOUT_USEC=" + decimal(extra.count()));
}

result<notify_outcome> notifier::errno_value(int err) const {
  if (err < 0)
    return error::make(errc::invalid_message, "ERRNO=" + decimal(err) + ": negative errno");
  return send("ERRNO=" + decimal(err));
}

result<notify_outcome> notifier::fdstore(std::span<const int> fds, std::string_view name) const {
  if (fds.empty()) return error::make(errc::invalid_message, "FDSTORE=1 without any fd");
  if (!valid_socket_name(name))
    return error::make(errc::invalid_message,
                       "FDNAME=" + sys::quote(name) +
                           ": not a valid fd name (1 to 255 printable ASCII characters, no ':')");
  return send("FDSTORE=1\nFDNAME=" + std::string(name), fds);
}

result<notify_outcome> notifier::barrier(std::chrono::milliseconds timeout) const {
  if (!socket_) return notify_outcome::no_manager;
  // One deadline for both waits: for room in the manager's queue, then for its answer.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const auto timed_out = [&](const std::string& what) {
    return error::make(errc::timed_out, "barrier on " + subject(*socket_) + ": " + what +
                                            " within " + std::to_string(timeout.count()) + " ms");
  };
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0)
    return error::from_errno(errno, "pipe2 for the barrier on " + subject(*socket_));
  unique_fd read_end(p[0]), write_end(p[1]);
  const int passed[] = {write_end.get()};
  if (auto sent = send_datagram(*socket_, "BARRIER=1", passed, std::nullopt, deadline); !sent) {
    if (sent.error().code() == std::errc::resource_unavailable_try_again)
      return timed_out("the manager's queue stayed full");
    return sent.error();
  }
  // The manager now holds the only other reference to the write end; when it closes it, the read
  // end reports POLLHUP (poll(2) reports it without being asked).
  write_end.reset();
  for (;;) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const int wait_ms = static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, INT_MAX));
    pollfd pfd{read_end.get(), 0, 0};
    const int r = ::poll(&pfd, 1, wait_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return error::from_errno(errno, "poll the barrier on " + subject(*socket_));
    if (r > 0) return notify_outcome::sent;
    if (std::chrono::steady_clock::now() >= deadline)
      return timed_out("the manager did not answer");
  }
}

}  // namespace handoff
