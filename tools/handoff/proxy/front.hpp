// The front of `handoff run --proxy http|https|tcp`: it accepts the clients on the public
// sockets (the supervisor's own sockets; in proxy mode the app never gets them) and relays each
// request (http, https) or connection (tcp) to the generation that serves. https terminates
// TLS here: each new client connection takes the TLS context current when it was accepted and
// keeps it to its end, so set_tls() (a rotated certificate) changes only connections to come.
//
// Threads: the front runs one io_context on a thread of its own. Its public methods may be
// called from one other thread (the supervisor's): they post to the io thread and return at
// once; what the front has to say comes back through event_fd() (readable when a retired
// generation has drained: take_drained()).
//
// Connections at most (--max-connections, HAProxy's maxconn): with max_connections client
// connections open, the front stops accepting, so that newcomers wait in the kernel's listen
// queue rather than take the fds the supervisor and the upstream connections need; it accepts
// again as soon as one closes. An accept that fails for want of fds or memory pauses that
// listener for accept_pause (the queued clients wait in the backlog), never a busy loop.
//
// Invariants: the front never closes or shuts down a public socket, only its own duplicates
// of them; every fd it opens is close-on-exec; a generation is lent connections only between
// serve() and retire()/forget() (upstream.hpp); after stop(), no client connection is accepted
// and every one still open closes after the request in flight (router::closing()).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "handoff/error.hpp"
#include "handoff/fd.hpp"
#include "proxy/handover.hpp"
#include "proxy/http_relay.hpp"
#include "proxy/upstream.hpp"

namespace handoff::proxy {

enum class proxy_mode { http, tcp };

struct front_options {
  proxy_mode mode = proxy_mode::http;
  relay_options relay;  // http only
  // https: the TLS context of new connections (null: plaintext). Never modified once given.
  std::shared_ptr<asio::ssl::context> tls;
  // How long a request (tcp: a connection) waits for a generation to serve when none does.
  std::chrono::milliseconds queue_timeout{std::chrono::seconds(5)};
  // Pooled upstream connections idle longer than this are closed (upstream.hpp).
  std::chrono::milliseconds upstream_idle_timeout{std::chrono::seconds(1)};
  // Upstream connections per generation; beyond it requests queue (0: no limit).
  std::size_t upstream_max_connections = 0;
  // Client connections open at most (0: no bound); connections handed over by a re-exec are
  // taken whatever their number.
  std::uint64_t max_connections = 0;
};

inline constexpr std::chrono::milliseconds accept_pause{100};

struct front_stats {
  std::vector<generation_stats> generations;
  std::uint64_t requests = 0;            // http: request headers accepted; tcp: connections relayed
  std::uint64_t bad_gateway = 0;         // 502
  std::uint64_t retried = 0;             // http: sent again after a pooled connection lost it
  std::uint64_t unavailable = 0;         // 503 (tcp: connections closed for want of a generation)
  std::uint64_t rejected = 0;            // 400, 408, 413, 431
  std::uint64_t tunnels = 0;             // Upgrade / CONNECT
  std::uint64_t client_connections = 0;  // open now
  std::uint64_t accepted = 0;            // client connections accepted so far
  std::uint64_t connect_failures = 0;    // upstream connects that failed (then tried again)
  std::uint64_t tls_handshake_failures = 0;  // https: connections that ended in the handshake
  std::uint64_t max_connections = 0;         // the bound (0: none)
  std::uint64_t limit_reached = 0;           // times accepting stopped at max_connections
  std::uint64_t accept_failures = 0;         // accepts that failed for want of fds or memory
};

class front {
 public:
  // `listeners`: the front's own duplicates of the public listening sockets, in the order of
  // the upstream lists given to serve(). Starts the io thread.
  static result<std::unique_ptr<front>> start(std::vector<unique_fd> listeners,
                                              front_options options);
  ~front();  // closes every client connection, joins the io thread
  front(const front&) = delete;
  front& operator=(const front&) = delete;

  // From now on every new request, and the next one on every client connection, goes to
  // `generation`, at upstreams[i] for clients of public socket i.
  void serve(int generation, std::vector<endpoint> upstreams);
  // No more requests to it; once none of ours is in flight there, our idle connections to it
  // are closed and it is reported drained.
  void retire(int generation);
  // It is gone: whatever is still relayed to it (tunnels, TCP relays) is cut.
  void forget(int generation);
  // The supervisor stops: no more accepting; open client connections end after their request.
  void stop();
  // https: connections accepted from now on use `tls` (a complete context, never modified
  // afterwards); those already open keep theirs.
  void set_tls(std::shared_ptr<asio::ssl::context> tls);
  // A snapshot, taken on the io thread (waits for it at most `timeout`; empty when it did
  // not answer).
  front_stats stats(std::chrono::milliseconds timeout = std::chrono::seconds(2)) const;

  // `handoff reexec` (handover.hpp): parks every relay at its next request boundary (tcp:
  // once both of its directions are idle);
  // new connections are still accepted (and parked at once) until every one is parked, then
  // accepting pauses. The outcome comes through event_fd(): take_park_result() gives "" (all
  // parked: hand_over() may follow) or why not after `bound` (then every relay carries on).
  void park(std::chrono::milliseconds bound);
  std::optional<std::string> take_park_result();
  // All parked: every client connection's socket and bytes read ahead; their relays end
  // without closing them. Waits for the io thread at most `timeout`.
  result<std::vector<handed_client>> hand_over(
      std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Serves `clients` as if just accepted, their buffered bytes first (the connections of the
  // image before, or ours back after a failed exec); ends parking and accepts again.
  void adopt(std::vector<handed_client> clients);
  // Parking ends (a re-exec given up): the parked relays carry on, accepting resumes.
  void end_park();
  // The counts of the image before (`handoff reexec`): stats() adds them to its own, so that
  // the totals go on rather than start again (client_connections and generations excepted).
  void add_to_counts(const front_stats& before);

  int event_fd() const noexcept;
  // Generations drained since the last call (reads the eventfd; then take_park_result()).
  std::vector<int> take_drained();

  struct impl;

 private:
  explicit front(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace handoff::proxy
