// The load generator of `handoff check`: N connections, each sending one request at a time, for
// a fixed duration, while restart commands run on a schedule. The connections are spread over
// `threads` engines, each an io_context on a thread of its own (a server at nginx's speed needs
// more than one core of client); their outcomes are merged into one run_result, as if one engine
// had run them all. The first engine alone runs the restart commands and the progress line.
//
// Invariants:
// - Every request that is started gets exactly one request_record (see outcome.hpp); a failed
//   request is never retried, and a connection that failed is closed and replaced by a new one.
// - In keep-alive mode a connection is reused until the server says `Connection: close` (not a
//   failure: the next request opens a new connection); in close mode every request opens its own.
// - A request's latency runs from the start of its attempt (including connect() and, over TLS,
//   the handshake when it needs a new connection) to the last byte of the response or the
//   failure. The connect timeout covers connect() and the handshake together.
// - https:// runs the same engine over Asio's ssl stream (the connection is a template on its
//   stream, so http:// pays nothing for TLS). Each connection slot makes a new SSL object per
//   connection; with `tls.resume` it offers the session of its previous connection, and the
//   handshakes and those the server resumed are counted.
// - After a failed connect a connection pauses 10 ms before its next attempt, so that a closed
//   port costs at most connections × 100 failures per second instead of a busy loop.
// - Timeouts are enforced by one 50 ms sweep over the connections, not a timer per request.
// - Restart commands run one at a time (/bin/sh -c, stdio inherited, in a process group of
//   their own); one that is due while another still runs starts when that one ends, and none
//   starts after the load ended. A command still running when the load ends gets
//   `reload_grace` to finish, then SIGTERM to its process group, then SIGKILL after another
//   `reload_grace`: it never extends the run by more than that, and it is recorded as stopped
//   (a failed command). The group is signalled only while its leader is unreaped, so its id
//   cannot have been reused.
// - Connections are counted when a connect succeeds. In keep-alive mode a connection opened by
//   a slot that had one before is a reconnect: its previous connection was closed (by the
//   server, a failure or a timeout), since the client never closes a healthy one. In close mode
//   every request opens a connection by design, so there are no reconnects to count.
//   A reconnect is dated by the loss of the connection it replaces, not by its connect: the
//   restart that cut a connection caused the reconnect, however long the new generation took to
//   listen (a connect that succeeds just after the traffic is steady again is still its own).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "check/outcome.hpp"
#include "check/tls.hpp"
#include "check/url.hpp"
#include "handoff/error.hpp"

namespace handoff::check {

enum class connection_mode { keepalive, close };

struct load_options {
  url target;
  std::chrono::milliseconds duration{10'000};
  unsigned connections = 32;
  double rate = 0;  // requests/s in total; 0: as fast as the server answers
  connection_mode mode = connection_mode::keepalive;
  std::string method = "GET";
  std::size_t body_size = 0;  // bytes of body sent with each request (POST)
  std::chrono::milliseconds connect_timeout{3'000};
  std::chrono::milliseconds timeout{10'000};            // for the whole response after the request
  std::string reload_command;                           // empty: none
  std::vector<std::chrono::milliseconds> reload_times;  // offsets from the start
  std::chrono::milliseconds reload_grace{5'000};        // see the invariants above
  bool progress = false;                                // one updating line on stderr
  unsigned threads = 1;  // engines; the connections and the rate are shared out among them
  tls_options tls;       // for https:// only
};

struct request_record {
  std::int64_t end_us = 0;       // when the outcome was known, from the start of the run
  std::uint32_t latency_us = 0;  // from the start of the attempt
  std::uint16_t status = 0;      // the HTTP status, 0 when there was no response
  outcome result = outcome::ok;
};

struct restart_record {
  std::int64_t start_us = 0;
  std::int64_t end_us = 0;  // when the command exited (or failed to start)
  bool finished = false;    // false: still running when the checker gave up waiting
  bool success = false;     // exited with status 0 (never when stopped)
  std::string status;       // "exited with status 0", "killed by signal 9 (Killed)", ...
  bool stopped = false;     // still running after the load and its grace: signalled by us
};

struct run_result {
  std::vector<request_record> requests;  // in the order of their outcome
  std::vector<restart_record> restarts;
  std::vector<std::pair<std::string, std::uint64_t>> served_by;  // X-Served-By -> responses
  // When each connection was opened, in order; a reconnect by when its predecessor was lost.
  std::vector<std::int64_t> opened_us;
  std::vector<std::int64_t> reconnect_us;  // those of them that were reconnects (keep-alive)
  std::int64_t load_us = 0;                // how long requests were started (the duration)
  std::int64_t elapsed_us = 0;             // until the last request and command ended
  std::string first_io_error;              // the message of the first io_error outcome, if any
  std::uint64_t tls_handshakes = 0;        // completed TLS handshakes (https:// only)
  std::uint64_t tls_resumed = 0;           // of those, the ones that resumed a session
};

// The request bytes for every request of a run (method, target, Host, keep-alive or close,
// a body of `body_size` bytes when asked).
std::string build_request(const load_options& options);

// Resolves the host and connects once (within the connect timeout) to the first address that
// answers: an unreachable target is an error ("connect 127.0.0.1:1: Connection refused"), not a
// run full of refused requests.
result<void> probe(const load_options& options);

// Runs the load against the first address that answers (as probe() finds it); errors only for
// what prevents a run (the name does not resolve, nothing answers, the TLS context cannot be
// made). probe() connects only: a server that fails the TLS handshake is measured, not refused.
result<run_result> run_load(const load_options& options);

}  // namespace handoff::check
