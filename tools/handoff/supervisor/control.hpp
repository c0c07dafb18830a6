// The control socket of `handoff run`: a unix stream socket, one request line per connection,
// a text (or JSON) reply, then the supervisor closes the connection.
//
//   reload        -> "ok generation 3 took over: pid 1234 ready in 118 ms"
//                    "error generation 3 failed: pid 1234 exited with status 1 before ready"
//                    (the reply comes when the reload has finished, either way)
//   status        -> several lines of text
//   status json   -> one JSON object
//   stop          -> "ok stopping"; the connection stays open until the supervisor exits
//   reexec        -> "ok re-executed handoff 0.1.0 as pid 812 (3 re-execs)", sent by the new
//                    image on the connection the old one accepted (it crosses the exec), or
//                    "error ... keeps running" (reexec.cpp)
// Anything else gets "error unknown command ..."; a line over 256 bytes or a peer that says
// nothing for 5 s is answered with an error and closed. At most control_sessions_max
// connections are open: a new one beyond that closes the oldest that has not sent its request. Only
// the supervisor's own user or root may connect (SO_PEERCRED); others get "error permission
// denied".
//
// Out of fds: the sessions keep one spare fd (/dev/null), closed to accept one connection when
// accept(2) says EMFILE (as libuv and nginx's reserve do), so a `handoff status` is answered
// even then; when accepting fails all the same, the listener is not polled for
// accept_backoff (poll is level-triggered: a listener that stays readable would spin the loop).
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "handoff/fd.hpp"
#include "supervisor/timers.hpp"

namespace handoff::supervisor {

inline constexpr std::size_t control_line_max = 256;
// Open connections at most; a new one past that closes the oldest idle one (never refused).
inline constexpr std::size_t control_sessions_max = 64;
// How long a listener whose accept failed (out of fds, out of memory) is left alone.
inline constexpr std::chrono::milliseconds accept_backoff{250};

// One accepted connection, until its request line is complete.
struct control_client {
  unique_fd fd;
  std::string buffer;
  std::chrono::steady_clock::time_point deadline;  // for the request line
  bool answered = false;                           // waiting for an event (reload, stop)
};

// The server side. The socket file is removed on destruction, only if it is still the one
// this supervisor created (same inode).
class control_server {
 public:
  static result<control_server> open(const std::string& path);
  // The server this process opened before an exec of itself (reexec.cpp): same fd, same file.
  static control_server adopt(unique_fd fd, std::string path, dev_t dev, ino_t ino) {
    return control_server(std::move(fd), std::move(path), dev, ino);
  }
  dev_t dev() const noexcept { return dev_; }
  ino_t ino() const noexcept { return ino_; }
  control_server(control_server&&) noexcept;
  control_server& operator=(control_server&&) noexcept;
  ~control_server();
  int fd() const noexcept { return fd_.get(); }
  const std::string& path() const noexcept { return path_; }
  // Accepts one waiting connection; an empty fd when none waits. Peers of another user are
  // answered and closed here (`rejected` is set to their uid).
  result<unique_fd> accept(uid_t& rejected);

 private:
  control_server(unique_fd fd, std::string path, dev_t dev, ino_t ino)
      : fd_(std::move(fd)), path_(std::move(path)), dev_(dev), ino_(ino) {}
  unique_fd fd_;
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

class logger;

// The supervisor's open control connections, each known by an id that stays valid across
// handlers: a handler that answers (and so closes) a session never invalidates what another
// handler holds, because nothing outside holds more than the id.
class control_sessions {
 public:
  control_sessions() = default;
  explicit control_sessions(control_server server);
  bool listening() const noexcept { return server_.has_value(); }
  const control_server* server() const noexcept { return server_ ? &*server_ : nullptr; }

  // The listener's pollfd (fd -1 without one, or while accepting is paused) and then one per
  // session, with its id.
  void poll_fds(std::vector<pollfd>& fds, std::vector<std::uint64_t>& ids) const;
  // Accepts the connections that wait (a bounded number per call).
  void accept(const logger& log, clock::time_point now);
  // Reads from session `id`. Returns its request line once complete; a session that closed,
  // sent too much, or (while waiting) anything at all is handled here and nullopt returned.
  std::optional<std::string> read(std::uint64_t id);
  // Sends `text` and closes the session (nothing when it is gone already).
  void answer(std::uint64_t id, const std::string& text);
  // Sends `text` and keeps the session open, waiting for an event (a reload's outcome).
  void reply_and_wait(std::uint64_t id, const std::string& text);
  void wait(std::uint64_t id);
  // Sessions that said nothing within their deadline are answered and closed; a pause of
  // accepting ends.
  void expire(deadlines& due);
  // At exit: every open session gets `text`.
  void answer_all(const std::string& text);
  std::size_t size() const noexcept { return sessions_.size(); }

  // Across an exec of the supervisor (state.cpp): the sessions as they are, and back.
  struct session {
    std::uint64_t id = 0;
    control_client conn;
  };
  const std::vector<session>& sessions() const noexcept { return sessions_; }
  std::uint64_t next_id() const noexcept { return next_id_; }
  void adopt(session s) { sessions_.push_back(std::move(s)); }
  void set_next_id(std::uint64_t id) noexcept { next_id_ = id; }

 private:
  session* find(std::uint64_t id);
  // Accepts one connection, with the spare fd when out of fds; an error when none could be.
  result<unique_fd> accept_one(uid_t& rejected);
  std::optional<control_server> server_;
  unique_fd spare_;                          // /dev/null, given up to accept when out of fds
  clock::time_point accept_paused_until_{};  // accepting paused until then (zero: not paused)
  std::vector<session> sessions_;
  std::uint64_t next_id_ = 1;
};

// Reads what is available; true once a full line is in `client.buffer` (without the newline)
// or the peer closed / sent too much (then `error` says why).
bool read_request(control_client& client, std::string& error);
// Best-effort nonblocking send of a reply (replies are small; a peer that does not read
// loses it).
void send_reply(int fd, const std::string& text);

// The client side: sends `request`, returns everything the supervisor answered until it
// closed the connection or `timeout` passed (then `complete` is false).
struct control_answer {
  std::string text;
  bool complete = false;  // the supervisor closed the connection (not a timeout)
};
result<control_answer> control_call(const std::string& path, const std::string& request,
                                    std::chrono::milliseconds timeout);

// Where the control socket goes by default: $XDG_RUNTIME_DIR/handoff/NAME.sock, else
// /run/handoff/NAME.sock.
std::string default_control_dir();
std::string default_control_path(const std::string& name);

}  // namespace handoff::supervisor
