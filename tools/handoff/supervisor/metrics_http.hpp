// The transport of `handoff run --metrics ADDR`: a listening socket (TCP or a unix stream
// socket, by parse_address) served from the supervisor's own poll loop, never blocking it.
//
// Each connection gets one answer and is closed: `GET /metrics` (any query string) the metrics,
// any other path 404, another method 405, anything that is not an HTTP/1.x request line 400,
// a request head over metrics_request_max bytes 431. Bounds, so that no scraper can stall the
// loop or grow its memory: every socket is nonblocking; a connection has metrics_timeout from
// its accept to the end of its answer, then it is closed; at most metrics_connections_max are
// open (a newcomer beyond that closes the oldest); at most metrics_request_max bytes are read
// from one; an accept that fails (out of fds) leaves the listener unpolled for
// accept_backoff (poll is level-triggered: a readable listener would spin the loop); a unix
// socket is 0600 whatever the umask (the supervisor's user and root only, like the control
// socket). Invariants: every fd is close-on-exec (the app never inherits one); a unix socket
// file is removed at destruction only while it is still the one this server created.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "handoff/error.hpp"
#include "handoff/fd.hpp"
#include "supervisor/timers.hpp"

namespace handoff::supervisor {

inline constexpr std::size_t metrics_request_max = 4096;
inline constexpr std::size_t metrics_connections_max = 16;
inline constexpr std::chrono::seconds metrics_timeout{5};
inline constexpr std::chrono::milliseconds metrics_accept_backoff{250};

// What a request head asks for: the status of the answer (200 for the metrics).
int metrics_request_status(const std::string& head);

class metrics_server {
 public:
  // Opens `address_text` (every form of parse_address but udp). The error names the address.
  static result<metrics_server> open(const std::string& address_text);
  metrics_server(metrics_server&&) noexcept;
  metrics_server& operator=(metrics_server&&) noexcept;
  ~metrics_server();

  // Where it listens, as a user writes it ("tcp://127.0.0.1:9100", "unix:/run/m.sock").
  const std::string& where() const noexcept { return where_; }
  // Across an exec of the supervisor (state.cpp): the listener, and the unix socket file it
  // created ("" for TCP and abstract sockets). Open connections are not carried over.
  int listener_fd() const noexcept { return fd_.get(); }
  const std::string& created_path() const noexcept { return path_; }
  static metrics_server adopt(unique_fd fd, std::string where, std::string path);
  // The listener's pollfd (fd -1 while accepting is paused), then one per connection (POLLIN while
  // reading, POLLOUT while writing), with its id.
  void poll_fds(std::vector<pollfd>& fds, std::vector<std::uint64_t>& ids) const;
  // Accepts the connections that wait (a bounded number per call).
  void accept(clock::time_point now);
  // Connection `id` is readable or writable: reads its request, or sends more of its answer.
  // `render` makes the metrics text, called only for a complete GET /metrics.
  void on_ready(std::uint64_t id, const std::function<std::string()>& render);
  // Connections past their deadline are closed; a pause of accepting ends.
  void expire(deadlines& due);
  std::size_t size() const noexcept { return connections_.size(); }

 private:
  struct connection {
    std::uint64_t id = 0;
    unique_fd fd;
    std::string in, out;  // out: the answer, once the request is complete
    std::size_t sent = 0;
    bool answering = false;
    clock::time_point deadline{};
  };
  metrics_server(unique_fd fd, std::string where, std::string path);
  void answer(connection& c, int status, std::string body);
  // Sends what the socket takes; true when the connection is done (all sent, or failed).
  static bool flush(connection& c);

  unique_fd fd_;
  std::string where_;
  std::string path_;  // the unix socket file we created ("" for TCP and abstract sockets)
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  std::vector<connection> connections_;
  std::uint64_t next_id_ = 1;
  clock::time_point accept_paused_until_{};  // zero: not paused
};

}  // namespace handoff::supervisor
