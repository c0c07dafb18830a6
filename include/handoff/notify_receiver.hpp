// Notify, the receiving side: what systemd and `handoff run` do with NOTIFY_SOCKET.
//
// A unix datagram socket with SO_PASSCRED, so every message carries the sender's pid, uid and
// gid as the kernel saw them (a manager checks the pid against the processes it started).
// A message is at most notify_message_max bytes of newline-separated KEY=VALUE lines.
// Passed fds arrive close-on-exec (MSG_CMSG_CLOEXEC) and are accepted only with FDSTORE=1 or
// BARRIER=1. A barrier is answered by closing its fd once the message is received: everything
// sent before it has been read by then.
// A bad datagram (oversized, truncated, not KEY=VALUE, fds where none belong, no credentials)
// is consumed, its fds closed, and reported as an error; the receiver stays usable.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "handoff/fd.hpp"

namespace handoff {

// systemd reads notifications into a buffer of this size (NOTIFY_BUFFER_MAX = PIPE_BUF).
inline constexpr std::size_t notify_message_max = 4096;
// And accepts at most this many fds in one message (systemd: 768, SCM_MAX_FD is 253).
inline constexpr std::size_t notify_fds_max = 253;

using notify_fields = std::vector<std::pair<std::string, std::string>>;

// Parses "KEY=VALUE\nKEY=VALUE\n". Keys are non-empty [A-Z0-9_]; empty lines are skipped; a
// NUL byte, a line without '=', or a bad key is errc::invalid_message quoting the line.
result<notify_fields> parse_notify_message(std::string_view datagram);

struct notify_message {
  pid_t pid = 0;  // the sender, from SCM_CREDENTIALS
  uid_t uid = 0;
  gid_t gid = 0;
  notify_fields fields;
  std::vector<unique_fd> fds;  // FDSTORE=1 only; a barrier's fd is already closed

  // The value of the last line with this key (systemd lets a later line win).
  std::optional<std::string_view> get(std::string_view key) const;
  bool has(std::string_view key, std::string_view value = "1") const;
  bool is_barrier() const { return has("BARRIER"); }
};

class notify_receiver {
 public:
  // Binds a datagram socket at `where` ("/path", or "@name" for the abstract namespace). A path
  // that exists is refused, never replaced; the receiver removes the file it created when
  // destroyed.
  static result<notify_receiver> open(std::string where);
  // An abstract socket with a kernel-chosen unique name (autobind), nothing in the file system.
  static result<notify_receiver> open_unique();
  // Takes over a receiver's socket that this process held before an exec of itself (its fd and
  // address() as they were). A path was bound by this same process (the pid survives exec), so
  // its file is removed on destruction as open()'s would be; an abstract name leaves nothing.
  static notify_receiver adopt(unique_fd fd, std::string address);

  notify_receiver(notify_receiver&&) noexcept;
  notify_receiver& operator=(notify_receiver&&) noexcept;
  ~notify_receiver();

  // What to put in a child's NOTIFY_SOCKET.
  const std::string& address() const noexcept { return address_; }
  // Nonblocking; readable when a message waits. For an event loop.
  int fd() const noexcept { return fd_.get(); }

  // The next message if one waits (nullopt when none), or the error of a bad one.
  result<std::optional<notify_message>> try_receive();
  // Waits up to `timeout` for the next message; errc::timed_out when none came.
  result<notify_message> receive(std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  notify_receiver(unique_fd fd, std::string address, std::string created_path);
  unique_fd fd_;
  std::string address_;
  std::string created_path_;  // unlinked on destruction; empty for abstract sockets
};

}  // namespace handoff
