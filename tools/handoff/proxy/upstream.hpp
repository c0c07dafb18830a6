// The front's router (router.hpp): which generation serves, a pool of idle upstream connections
// per generation and public socket, and the requests of ours in flight per generation.
//
// Invariants (everything runs on the front's io thread):
// - New requests go to the serving generation only; a retired or forgotten one gets none.
// - A pooled connection is checked before it is lent (poll(2): readable or hung up means the
//   app closed it or said something unasked, so it is discarded, never written to).
// - A generation's in-flight count covers connects in progress and lent connections; once it
//   is retired and that count is zero, its idle connections are closed and on_drained(id) is
//   called, once.
// - With no generation serving, a request waits for one (serve()) at most queue_timeout, as
//   a connection waits in the listen backlog in direct mode: a crashed app being restarted, or
//   a first generation not ready yet, delays requests rather than failing them.
// - forget() cuts what is still lent to a generation (shutdown(2) of our own connected sockets,
//   and of the client side of a TCP relay), so every relay of it ends; its entry goes once
//   the last connection came back.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <unordered_map>
#include <vector>

#include "proxy/router.hpp"

namespace handoff::proxy {

using endpoint = asio::generic::stream_protocol::endpoint;

struct generation_stats {
  int generation = 0;
  bool serving = false;
  bool retired = false;
  std::uint64_t in_flight = 0;
  std::size_t upstream_connections = 0;  // open: lent and idle
  std::size_t idle = 0;
  std::uint64_t requests = 0;  // connections lent to it so far
};

class upstream_router final : public router {
 public:
  upstream_router(asio::any_io_executor executor, std::function<void(int)> on_drained,
                  std::chrono::milliseconds queue_timeout = std::chrono::milliseconds(0))
      : executor_(std::move(executor)),
        on_drained_(std::move(on_drained)),
        queue_timeout_(queue_timeout) {}

  asio::awaitable<std::optional<upstream_connection>> acquire(std::size_t listener) override;
  void release(upstream_connection connection, bool reusable) override;
  bool closing() const override { return closing_; }

  // `upstreams[i]`: where the generation listens for clients of public socket i.
  void serve(int generation, std::vector<endpoint> upstreams);
  void retire(int generation);
  void forget(int generation);
  void stop();
  // A TCP relay's client socket, cut with its upstream connection by forget().
  void attach_client(upstream_connection& c, int client_fd);
  // `handoff reexec` (handover.hpp): a lent connection (`fd` while it was ours) leaves with its
  // relay for the next image: out of the counts, its socket not closed (released already), and no
  // drain is reported for it (the generation still has it, in the next image). adopt() is the other
  // end: a connection to `generation` lent as if just acquired; the generation is known from
  // then on even before serve() or retire() (which the next image calls after adopting).
  void disown(int generation, int fd);
  upstream_connection adopt(int generation, std::size_t listener, stream s);
  std::vector<generation_stats> stats() const;
  std::uint64_t connect_failures() const noexcept { return connect_failures_; }

 private:
  struct lent_connection {
    std::size_t listener = 0;
    int client_fd = -1;
  };
  struct generation_state {
    int id = 0;
    std::vector<endpoint> upstreams;
    std::vector<std::vector<stream>> idle;  // per public socket
    std::unordered_map<int, lent_connection> lent;
    std::uint64_t in_flight = 0, requests = 0;
    std::size_t open = 0;
    bool retired = false, forgotten = false, drained_reported = false;
  };

  generation_state* find(int id);
  void close_idle(generation_state& g);
  void check_drained(int id);
  // Wakes every request waiting for a serving generation (serve(), stop()).
  void wake_waiting();

  asio::any_io_executor executor_;
  std::function<void(int)> on_drained_;
  std::chrono::milliseconds queue_timeout_;
  std::list<asio::steady_timer*> waiting_;  // one timer per request waiting for a generation
  std::map<int, generation_state> generations_;
  int serving_ = 0;
  bool closing_ = false;
  std::uint64_t connect_failures_ = 0;
};

}  // namespace handoff::proxy
