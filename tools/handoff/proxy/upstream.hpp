// The front's router (router.hpp): which generation serves, a pool of idle upstream connections
// per generation and public socket, and the requests of ours in flight per generation.
//
// Invariants (everything runs on the front's io thread):
// - New requests go to the serving generation only; a retired or forgotten one gets none.
// - A pooled connection is checked before it is lent (poll(2): readable or hung up means the
//   app closed it or said something unasked, so it is discarded, never written to). The check
//   is a moment: an app may still close it as the request is written, which the HTTP relay
//   retries under its rules (http_relay.hpp).
// - The pool is last in, first out: the connection given back last is lent first. An app that
//   serves fewer connections at a time than we hold (a thread per connection, or puma, whose
//   thread waits 0.2 s for the next request on the connection it just served) is most likely
//   still reading that one; the others may sit unserved behind its busy threads.
// - An idle connection older than pool_options::idle_timeout is closed, never lent: apps close
//   theirs on their own keep-alive timeout (gunicorn 2 s, Node and uvicorn 5 s), and a request
//   written as that close crosses it is lost unless it may be retried.
// - With pool_options::max_connections, a generation has at most that many upstream
//   connections (connecting, lent and idle); a request beyond it waits, first come first served,
//   for one given back (handed to it directly) or closed, at most queue_timeout (then 503),
//   as HAProxy's server maxconn queues.
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
#include <deque>
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
  std::size_t queued = 0;      // requests waiting under max_connections
};

struct pool_options {
  // How long a request waits for a generation to serve, or for a connection under
  // max_connections, before the 503.
  std::chrono::milliseconds queue_timeout{0};
  // An idle pooled connection older than this is closed, not lent (more than 0).
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(1)};
  // Upstream connections per generation (0: no limit).
  std::size_t max_connections = 0;
};

class upstream_router final : public router {
 public:
  upstream_router(asio::any_io_executor executor, std::function<void(int)> on_drained,
                  pool_options options = {})
      : executor_(std::move(executor)),
        on_drained_(std::move(on_drained)),
        options_(options),
        purge_timer_(executor_) {}

  asio::awaitable<std::optional<upstream_connection>> acquire(std::size_t listener,
                                                              connection_source source) override;
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
  using clock_type = std::chrono::steady_clock;
  struct lent_connection {
    std::size_t listener = 0;
    int client_fd = -1;
  };
  struct idle_connection {
    stream socket;
    clock_type::time_point since;  // given back then
  };
  // A request waiting for a connection under max_connections: woken (its timer cancelled)
  // with a connection given back for its listener, or with a slot to connect one.
  struct queued_request {
    asio::steady_timer* wake = nullptr;
    std::size_t listener = 0;
    std::optional<stream> handed;
    bool slot = false;
    bool queued = true;  // false once taken out of the queue by whoever woke it
  };
  struct generation_state {
    int id = 0;
    std::vector<endpoint> upstreams;
    std::vector<std::deque<idle_connection>> idle;  // per public socket, oldest first
    std::unordered_map<int, lent_connection> lent;
    std::list<queued_request*> queue;
    std::uint64_t in_flight = 0, requests = 0;
    std::size_t open = 0;        // connected: lent and idle
    std::size_t connecting = 0;  // connects in progress
    bool retired = false, forgotten = false, drained_reported = false;
  };

  generation_state* find(int id);
  // A connection of `g` for `listener` from its pool: the newest one still idle and younger
  // than idle_timeout; the older ones are closed on the way.
  std::optional<stream> take_idle(generation_state& g, std::size_t listener);
  // Under max_connections with none free for `listener`: an idle one of another public socket
  // is closed to make room. True when there is room for a new connection.
  bool room_for_new(generation_state& g, std::size_t listener);
  // A connection of `g` is closed (or failed to connect): the first queued request may
  // connect one.
  void slot_freed(generation_state& g);
  void close_idle(generation_state& g);
  void check_drained(int id);
  // Wakes every request waiting for a serving generation (serve(), stop()).
  void wake_waiting();
  // Wakes every request queued at `g` (retired, forgotten, stopping): they start again, at the
  // generation that serves then.
  static void wake_queue(generation_state& g);
  // Idle connections past idle_timeout are closed by a timer, armed while any is idle, so that
  // the app's threads and our fds are not held by connections nobody will use.
  void arm_purge();
  void purge_at(clock_type::time_point when);
  void purge();

  asio::any_io_executor executor_;
  std::function<void(int)> on_drained_;
  pool_options options_;
  asio::steady_timer purge_timer_;
  bool purge_armed_ = false;
  std::list<asio::steady_timer*> waiting_;  // one timer per request waiting for a generation
  std::map<int, generation_state> generations_;
  int serving_ = 0;
  bool closing_ = false;
  std::uint64_t connect_failures_ = 0;
};

}  // namespace handoff::proxy
