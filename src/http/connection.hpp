// Internal: one HTTP/1.1 connection of handoff::http::server, and the server's shared state.
//
// Each server thread runs an io_context of its own, with its own accept loops; a connection
// stays on the io_context that accepted it, so everything of one connection (its coroutine,
// its watchdog, on_drain and abort posted by drain()) runs on one thread, and needs no strand.
// Its sockets and timers name the concrete io_context::executor_type, not the type-erased one.
//
// A connection is a coroutine. Its one timer is a watchdog: every phase
// (idle, header, body, write) sets deadline_, and the watchdog closes the socket once the
// deadline passes, which ends whatever read or write was pending. The watchdog sleeps until the
// deadline or for the shortest timeout, whichever is nearer, and re-checks; only a deadline
// nearer than that (a drain's grace) cancels the timer. A timeout of 0 is off: that phase has no
// deadline (time_point::max()) and does not count for the tick; with all of them off the
// watchdog sleeps until a deadline alone. After a refusal the connection lingers (reads and
// discards, bounded) before it closes: see basic_connection::linger().
//
// Plaintext and TLS: the connection is a template on its stream (basic_connection.hpp),
// instantiated for the plain socket and for an ssl::stream over it, so the plaintext path is the
// same code as without TLS (no per-operation branch or type erasure). What the server and
// request_context call lives in the base class `connection`: drain and abort, and a streaming
// handler's writes, where one virtual call is nothing beside the write. A TLS connection's
// handshake is one more phase of the watchdog (tls_handshake_timeout), and so is its close_notify
// exchange (tls_shutdown_timeout); each happens once per connection, so a nearer deadline there
// cancels the timer rather than shortening every connection's tick.
#pragma once

#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "counters.hpp"
#include "handoff/http/server.hpp"
#include "idle_read.hpp"

namespace handoff::http {

using clock_type = std::chrono::steady_clock;
using io_executor = asio::io_context::executor_type;
using stream_socket = reactor_socket;  // Asio's, with what idle_read needs (idle_read.hpp)
using stream_acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol, io_executor>;
using steady_timer =
    asio::basic_waitable_timer<clock_type, asio::wait_traits<clock_type>, io_executor>;

struct server::impl {
  impl(server_options o, handler h);

  server_options options;
  handler on_request;
  // One per thread, each run by its thread alone (concurrency hint 1).
  std::vector<std::unique_ptr<asio::io_context>> ios;
  std::vector<asio::executor_work_guard<io_executor>> work;
  std::vector<std::thread> threads;
  std::atomic<server_state> state{server_state::starting};
  std::atomic<clock_type::rep> drain_deadline{
      clock_type::time_point::max().time_since_epoch().count()};

  struct listener {
    unique_fd fd;
    std::shared_ptr<asio::ssl::context> tls;  // null: plaintext
  };
  std::vector<listener> listeners;
  struct accept_loop {
    explicit accept_loop(asio::io_context& io)
        : executor(io.get_executor()), acceptor(executor), throttle(executor) {}
    io_executor executor;  // the thread's io_context, where its connections live too
    stream_acceptor acceptor;
    steady_timer throttle;  // waited on while max_connections are open, or backing off
    bool stopped = false;   // set by drain(): the only way a loop ends
    std::string where;      // the listener's address, for messages
    std::shared_ptr<asio::ssl::context> tls;                        // null: plaintext
    asio::generic::stream_protocol protocol{AF_INET, IPPROTO_TCP};  // of the listener
    bool tcp = true;                      // else a unix socket (no TCP_NODELAY)
    bool nodelay_inherited = false;       // TCP_NODELAY set on the listener: connections have it
    thread_counters* counters = nullptr;  // the thread's
  };
  // Reports a trouble of kind `kind` once per server: an error that repeats every few hundred
  // milliseconds must not flood the log.
  void report_once(const std::string& kind, const std::string& message);
  std::mutex reported_mutex;
  std::vector<std::string> reported;  // kinds already reported; guarded by reported_mutex
  std::vector<std::unique_ptr<accept_loop>> accept_loops;

  std::mutex mutex;  // guards live and protects the wait for the last connection
  std::condition_variable changed;
  // The open connections, a list linked through connection::live_prev/live_next (no node to
  // allocate per connection); guarded by mutex.
  connection* live = nullptr;
  std::size_t accept_loops_running = 0;  // guarded by mutex
  std::atomic<std::size_t> open_connections{0};
  std::atomic<std::size_t> slots{0};  // open connections and accepts under way
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::size_t> completed_while_draining{0};
  // server::stats(): one set per thread (counters.hpp), and what drain() counts.
  std::unique_ptr<thread_counters[]> counters;
  std::atomic<std::uint64_t> drain_aborted_connections{0};
  std::atomic<std::uint64_t> drain_aborted_requests{0};

  bool draining() const noexcept {
    const auto s = state.load(std::memory_order_acquire);
    return s == server_state::draining || s == server_state::stopped;
  }
  clock_type::time_point deadline() const noexcept {
    return clock_type::time_point(clock_type::duration(drain_deadline.load()));
  }
  asio::awaitable<void> accept(accept_loop& loop);
  ~impl();
  void connection_opened(connection* c);
  void connection_closed(connection* c);
  void unlink(connection* c);  // from live
  // The open connections that still have an owner (every one but one ending just now).
  std::vector<std::shared_ptr<connection>> live_connections();  // with mutex held
};

// What the server and request_context see of a connection, plain or TLS.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(server::impl& srv, io_executor executor) : srv_(srv), executor_(executor) {}
  // A connection whose coroutine never ended (destroyed with its io_context) leaves the list.
  virtual ~connection() {
    if (linked) srv_.unlink(this);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  virtual asio::awaitable<void> run() = 0;
  // Called on the connection's io_context: the server began to drain / reached its deadline.
  virtual void on_drain() = 0;
  virtual void abort() = 0;

  // For request_context.
  virtual asio::awaitable<void> send_header(response_header header) = 0;
  virtual asio::awaitable<void> send_chunk(std::string_view data) = 0;
  server::impl& srv() const noexcept { return srv_; }
  io_executor executor() const noexcept { return executor_; }

  asio::cancellation_signal cancel;     // terminal: the drain deadline passed
  thread_counters* counters = nullptr;  // of the thread serving it; set before run()
  connection* live_prev = nullptr;      // server::impl::live; guarded by its mutex
  connection* live_next = nullptr;
  bool linked = false;  // in server::impl::live; written with its mutex held

 protected:
  // request_context's constructor is for its friend, this class, alone.
  request_context context_for(const request& req) { return request_context(*this, req); }
  server::impl& srv_;
  io_executor executor_;
};

// A connection on `fd` (accepted non-blocking, of `protocol`), served on `executor`: plaintext
// when `tls` is null, else TLS with that context. `tcp`: set TCP_NODELAY on it (a TCP
// connection whose listener could not pass it on; known from the listener: asking the socket
// costs a getsockname per connection). It owns `fd` once made; if it throws, the caller does.
std::shared_ptr<connection> make_connection(server::impl& srv, io_executor executor, int fd,
                                            const asio::generic::stream_protocol& protocol,
                                            const std::shared_ptr<asio::ssl::context>& tls,
                                            bool tcp);

}  // namespace handoff::http
