// handoff::http::server: an HTTP/1.1 server on Boost.Beast that drains without failing a request.
//
// Lifecycle: construct with a handler, add listeners (inherited or opened by handoff::core),
// start(), then drain() once. States: starting -> ready -> draining -> stopped.
//
// Draining, in order:
//  1. state() becomes draining at once, so a health endpoint answers 503; during the optional
//     health_delay the server still accepts (load balancers must notice before the door shuts).
//  2. Stop accepting: the server closes its own copies of the listening sockets. It never calls
//     shutdown(2) on them: another process (the next generation) may be accepting from them, and
//     connections queued there are that process's to serve.
//  3. Requests in flight complete; their responses carry Connection: close.
//  4. Idle keep-alive connections are not closed under a client that may be sending: the next
//     request on each is served with Connection: close; one that stays idle for drain_idle_grace
//     is closed.
//  5. At the deadline, what remains is aborted (handlers see cancellation) and counted.
//
// TLS: a listener added with a tls_config speaks HTTP/1.1 over TLS 1.2 or 1.3 (OpenSSL 3),
// others plaintext; one server may have both. Each TLS connection first completes its handshake
// (bounded by tls_handshake_timeout), announces ALPN http/1.1, and drains like a plaintext one:
// its last response says Connection: close, then the server sends close_notify and waits up to
// tls_shutdown_timeout for the client's before closing. The files are read once, by
// add_listener: a process that must pick up a renewed certificate is restarted (a new
// generation reads them again).
//
// Threads: each of the `threads` runs an io_context of its own and accepts on it; a connection
// is served by the thread that accepted it, so a handler never runs concurrently with itself for
// one connection, and handlers of connections on different threads run in parallel.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "handoff/fd.hpp"
#include "handoff/http/field_allocator.hpp"
#include "handoff/http/stats.hpp"

namespace handoff::http {

namespace asio = boost::asio;
namespace beast = boost::beast;

// Beast's messages, with header fields on field_allocator: a keep-alive connection in steady
// state allocates nothing per request. Use these names (not Beast's defaults, whose fields use
// std::allocator and do not convert): a handler returns `response`, a stream starts with a
// `response_header`.
//
// A response's body is a `body_string`: a std::basic_string whose memory comes from
// field_allocator's cache too, so that a handler that sets a body (up to 4 KiB) allocates
// nothing either. Assign it anything a std::string_view can view (a std::string, a literal, a
// string_view of a prepared body): `res.body() = prepared;` copies the bytes into a recycled
// block. Append with += as to a std::string; to get a std::string back, construct one from a
// string_view of it. The request's body is a plain std::string.
using fields = beast::http::basic_fields<field_allocator<char>>;
using body_string = std::basic_string<char, std::char_traits<char>, field_allocator<char>>;
using response_body =
    beast::http::basic_string_body<char, std::char_traits<char>, field_allocator<char>>;
using request = beast::http::request<beast::http::string_body, fields>;
using response = beast::http::response<response_body, fields>;
using response_header = beast::http::response_header<fields>;
using std::chrono::milliseconds;

enum class server_state { starting, ready, draining, stopped };
const char* to_string(server_state state) noexcept;

// Every timeout here is off when 0: no deadline at all for that phase (as systemd's and
// HAProxy's "infinity"), the same everywhere in handoff. A refusal (400, 413, 431, 501) is
// answered, then the connection closes: the server stops reading requests, ends its side
// (FIN), and reads and discards what the client still sends for up to 2 s (TLS: the
// close_notify exchange, tls_shutdown_timeout), so that the client reads the answer rather
// than a reset (plaintext; TLS connections have only the close_notify exchange).
struct server_options {
  unsigned threads = 0;                 // 0: one per core
  milliseconds header_timeout{10'000};  // first byte of a request to the end of its headers; 0: off
  milliseconds body_timeout{30'000};    // reading the body; 0: off
  milliseconds write_timeout{30'000};   // writing a response (each chunk of a stream); 0: off
  milliseconds idle_timeout{60'000};  // keep-alive connection waiting for its next request; 0: off
  // Beyond: 431. The header's bytes (request line included). It also bounds what else one
  // request may make the server hold at once: a chunk line with its extensions, and the
  // trailer section, must each fit in max_header_bytes plus 8 KiB (else 400); and the
  // extensions of all the chunks of one request together in max_header_bytes (else 400).
  std::size_t max_header_bytes = std::size_t{16} * 1024;
  // Beyond: 431. The number of header fields (trailer fields included), whatever their size:
  // a handler that looks fields up, and the server's own checks, do work that grows with it.
  // Twice the cap of `handoff run --proxy http` (512), so that a request a proxy passed, with
  // the fields it adds (Forwarded, X-Forwarded-*), is never refused here.
  std::size_t max_header_fields = 1024;
  std::size_t max_body_bytes = std::size_t{1024} * 1024;  // beyond: 413
  std::size_t max_connections = 10'000;  // beyond: new ones wait in the kernel's accept queue
  milliseconds health_delay{0};          // drain step 1: 503 on health while still accepting
  // Drain step 4: how long an idle connection is kept (a grace, not a timeout: 0 closes idle
  // connections at once).
  milliseconds drain_idle_grace{1'000};
  // TCP listeners: the kernel hands over a new connection once its first bytes have arrived
  // (TCP_DEFER_ACCEPT, nginx's `deferred`), so that it is served at once, without a wait in the
  // reactor: a client that opens a connection per request costs about a third less CPU. A
  // client that connects and stays silent is handed over after this long all the same (then
  // header_timeout applies). Set on a listener that has none (every holder of the socket gets
  // it; a socket unit's DeferAcceptSec= is kept); 0: the listener is left as it is.
  std::chrono::seconds defer_accept{1};
  // Where the server reports trouble it handles itself, once per kind (accept failing with
  // EMFILE, ENFILE, EINVAL after another holder shut the socket down, ...): the accept loop
  // backs off (accept_backoff_min, doubling up to accept_backoff_max) and retries until the
  // server drains. Default (empty): one line on stderr.
  std::function<void(std::string_view)> log;
  milliseconds accept_backoff_min{10};
  milliseconds accept_backoff_max{1'000};
  // TLS listeners only: accepting to the end of the handshake (a client that stalls in it is
  // closed), and how long the close_notify exchange at the end of a connection may take (0:
  // off, as the timeouts above: a client that never sends its close_notify, nor closes, then
  // keeps its connection).
  milliseconds tls_handshake_timeout{10'000};
  milliseconds tls_shutdown_timeout{1'000};
};

// TLS on a listener: PEM files, read when the listener is added.
struct tls_config {
  std::string certificate_chain_file;  // the server's certificate first, then intermediates
  std::string private_key_file;        // unencrypted; must match the certificate
  // The session-ticket keys memfd handed down by LISTEN_FDS as handoff-tls-keys (see
  // handoff/ticket_keys.hpp; upgrader::ticket_keys() or socket_set::take()), or -1. The
  // server reads a duplicate; the caller keeps this fd. With it, a client resumes its session
  // in the next generation too; without it, or when the file is malformed (said once through
  // server_options::log), the process makes keys of its own and resumption ends at a restart.
  int session_ticket_keys_fd = -1;
};

// What a drain did.
struct drain_report {
  std::size_t connections_at_start = 0;  // open when accepting stopped
  std::size_t requests_completed = 0;    // requests answered during the drain
  std::size_t connections_aborted = 0;   // still open at the deadline
  std::size_t requests_aborted = 0;      // of those, the ones with a request in flight
  bool clean() const noexcept { return connections_aborted == 0; }
};

class connection;

// What a handler sees of its request.
class request_context {
 public:
  const request& req() const noexcept { return req_; }
  // True once the server drains: long work should wrap up (the response will close the
  // connection either way).
  bool draining() const noexcept;
  // The time by which the handler must be done: the drain deadline while draining, else max().
  // Past it, the handler's pending operations are cancelled (operation_aborted).
  std::chrono::steady_clock::time_point deadline() const noexcept;
  asio::any_io_executor executor() const;

  // Streaming: send the header (the body is then chunked), then chunks. The handler's returned
  // response is ignored once the header was sent. Each write honours write_timeout; a write
  // that fails (client gone, timeout, abort) throws boost::system::system_error.
  asio::awaitable<void> send_header(response_header header);
  asio::awaitable<void> send_chunk(std::string_view data);
  bool streaming() const noexcept { return streaming_; }

 private:
  friend class connection;
  request_context(connection& conn, const request& req) : conn_(conn), req_(req) {}
  connection& conn_;
  const request& req_;
  bool streaming_ = false;
};

// A function from request to response. Exceptions become 500 (and close the connection).
using handler = std::function<asio::awaitable<response>(request_context&)>;

class server {
 public:
  server(server_options options, handler on_request);
  ~server();  // drains with a zero deadline if still running
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // A listening TCP or unix stream socket; the server owns this fd (dup one you keep).
  void add_listener(unique_fd fd);
  // The same, serving TLS with the certificate and key of `tls` (see the top of this file).
  // Throws std::runtime_error naming the file when a file cannot be read, is not PEM, or the
  // key does not match the certificate (std::system_error, with errno, when it cannot be
  // opened); the server is then unchanged.
  void add_listener(unique_fd fd, const tls_config& tls);
  // Runs the threads and accepts; the state becomes ready. Throws std::system_error, before
  // any thread runs, when a listener is not a socket (naming the fd and the errno text).
  void start();
  server_state state() const noexcept;
  bool ready() const noexcept { return state() == server_state::ready; }

  // Drains (see the top of this file) and stops the threads; blocks until done. `timeout`
  // counts from the end of the health delay. Call from a thread of your own, once.
  drain_report drain(milliseconds timeout = milliseconds(30'000));

  // Currently open connections and requests in flight (for tests and status).
  std::size_t connections() const noexcept;
  std::size_t requests_in_flight() const noexcept;
  // Counters since construction, for the app to publish (see handoff/http/stats.hpp); safe to
  // call from any thread, handlers included, at any time.
  server_stats stats() const noexcept;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace handoff::http
