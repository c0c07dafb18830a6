#include "connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>
#include <type_traits>

#include "date.hpp"

namespace handoff::http {

namespace bhttp = beast::http;
using asio::redirect_error;
using asio::use_awaitable;
using boost::system::error_code;

namespace {

// A parse error of Beast's (the client sent bytes that are not HTTP), as opposed to the client
// closing or the watchdog ending the read: only those get a 400.
constexpr std::size_t read_chunk = 8192;

bool is_malformed(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
         ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
}

// Every response the server writes says when it was made (RFC 9110 6.6.1), unless its handler
// said so already. The field's block comes from field_allocator's cache, as the others'.
void add_date(fields& f) {
  if (f.find(bhttp::field::date) == f.end()) f.set(bhttp::field::date, http_date_now());
}

}  // namespace

using tls_stream = asio::ssl::stream<stream_socket>;
using request_parser_type = bhttp::request_parser<bhttp::string_body, field_allocator<char>>;

// One connection over `Stream`: stream_socket (plaintext) or tls_stream.
template <class Stream>
class basic_connection final : public connection {
 public:
  static constexpr bool is_tls = std::is_same_v<Stream, tls_stream>;

  basic_connection(server::impl& srv, stream_socket socket, asio::ssl::context* tls, bool tcp);

  asio::awaitable<void> run() override;
  void on_drain() override;
  void abort() override;
  asio::awaitable<void> send_header(response_header header) override;
  asio::awaitable<void> send_chunk(std::string_view data) override;

 private:
  stream_socket& socket() noexcept { return beast::get_lowest_layer(stream_); }
  void watch();  // before the first suspension on I/O: the watchdog starts (once)
  void arm_watchdog();
  void on_watchdog();
  void set_deadline(clock_type::time_point when);
  asio::awaitable<void> serve();
  asio::awaitable<void> send_error(beast::http::status status, unsigned version);
  template <bool Whole>
  asio::awaitable<void> read_async(request_parser_type& parser, error_code& ec);
  enum class write_state { done, in_pending, in_serializer };  // what write_now left to write
  template <class Serializer>
  write_state write_now(Serializer& sr, bool header_only, std::size_t body_size, error_code& ec);
  template <class Serializer>
  asio::awaitable<void> write_rest(Serializer& sr, bool header_only, write_state state,
                                   error_code& ec);
  asio::awaitable<response> call_handler(request_context& ctx);
  void close();
  void count_timeout();  // the watchdog is closing the connection: say which timeout passed

  Stream stream_;
  steady_timer timer_;
  clock_type::time_point deadline_ = clock_type::time_point::max();
  clock_type::time_point armed_ = clock_type::time_point::max();  // what the watchdog waits for
  clock_type::duration tick_;                                     // the watchdog's longest sleep
  beast::flat_buffer buffer_;
  std::string pending_;       // the part of a response the socket did not take at once
  bool idle_ = false;         // waiting for the first byte of the next request
  unsigned long served_ = 0;  // requests answered on this connection
  bool busy_ = false;         // a request is being read, handled or answered
  bool aborted_ = false;
  bool watched_ = false;  // the watchdog runs
};

template <class Stream>
Stream make_stream(stream_socket socket, [[maybe_unused]] asio::ssl::context* tls) {
  if constexpr (std::is_same_v<Stream, tls_stream>) {
    return Stream(std::move(socket), *tls);
  } else {
    return socket;
  }
}

template <class Stream>
basic_connection<Stream>::basic_connection(server::impl& srv, stream_socket sock,
                                           [[maybe_unused]] asio::ssl::context* tls, bool tcp)
    : connection(srv, sock.get_executor()),
      stream_(make_stream<Stream>(std::move(sock), tls)),
      timer_(executor_) {
  const auto& o = srv.options;
  tick_ = std::min({o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout});
  // Small responses must leave at once, not wait for Nagle's algorithm to batch them (`tcp`:
  // the connection did not get TCP_NODELAY from its listener, server.cpp).
  const int one = 1;
  if (tcp) ::setsockopt(socket().native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // Plaintext: Beast's synchronous reads and writes on a non-blocking socket take what is
  // waiting and send what fits without a trip through the reactor (see read_async and write).
  if constexpr (!is_tls) {
    error_code ignored;
    socket().non_blocking(true, ignored);
  }
}

template <class Stream>
void basic_connection<Stream>::set_deadline(clock_type::time_point when) {
  deadline_ = when;
  // Only a deadline nearer than the one the watchdog waits for needs it woken; a later one is
  // picked up when it wakes. This keeps timer operations off the path of most requests.
  if (watched_ && when < armed_) timer_.cancel();
}

// A deadline matters only while the connection waits for its peer. A connection that never
// waits (a new one whose request is here at once and whose response the socket takes whole, as
// with a client that opens a connection per request) needs no watchdog: none is started, which
// spares it the timerfd update of a timer that would be the earliest. The watchdog is a chain
// of timer waits, not a coroutine: watch() is called from inside the connection's coroutine,
// and a coroutine spawned there would start at once, nested in it.
template <class Stream>
void basic_connection<Stream>::watch() {
  if (watched_) return;
  watched_ = true;
  arm_watchdog();
}

template <class Stream>
void basic_connection<Stream>::arm_watchdog() {
  // Wake at least every `tick` (the shortest timeout): a new phase's deadline then never lies
  // before the armed one, so set_deadline() need not cancel the timer per request.
  armed_ = std::min(deadline_, clock_type::now() + tick_);
  timer_.expires_at(armed_);
  timer_.async_wait([self = shared_from_this(), this](const error_code&) { on_watchdog(); });
}

template <class Stream>
void basic_connection<Stream>::on_watchdog() {
  if (!socket().is_open()) return;
  if (clock_type::now() >= deadline_) {
    // An idle connection whose next request has arrived meanwhile is not idle: under load the
    // timer and the read can complete together, and the request must win.
    int pending = 0;
    if (idle_ && ::ioctl(socket().native_handle(), FIONREAD, &pending) == 0 && pending > 0) {
      deadline_ = clock_type::now() + srv_.options.header_timeout;
    } else {
      count_timeout();
      close();  // ends the pending read or write of run() with an error
      return;
    }
  }
  arm_watchdog();
}

template <class Stream>
void basic_connection<Stream>::count_timeout() {
  if (idle_ && served_ > 0) {
    bump(srv_.draining() ? counters->drain_closed_idle : counters->idle_closed);
  } else if (idle_ || busy_) {  // not the TLS close_notify wait, which many clients ignore
    bump(counters->timeouts);
  }
}

template <class Stream>
void basic_connection<Stream>::close() {
  error_code ignored;
  if (!socket().is_open()) return;
  socket().shutdown(asio::socket_base::shutdown_both, ignored);
  socket().close(ignored);
  timer_.cancel();
}

template <class Stream>
void basic_connection<Stream>::on_drain() {
  // Only a connection that has served a request is cut short: a new one was opened to send
  // one, which is on its way (the header timeout still bounds it).
  if (idle_ && served_ > 0) {
    set_deadline(std::min(deadline_, clock_type::now() + srv_.options.drain_idle_grace));
  }
}

template <class Stream>
void basic_connection<Stream>::abort() {
  aborted_ = true;
  cancel.emit(asio::cancellation_type::terminal);
  close();
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::run() {
  auto self = shared_from_this();
  bool handshaken = true;
  if constexpr (is_tls) {
    watch();
    // Garbage instead of a ClientHello fails here; a client that stalls is closed by the
    // watchdog at the deadline. Either way only this connection ends.
    set_deadline(clock_type::now() + srv_.options.tls_handshake_timeout);
    error_code ec;
    co_await stream_.async_handshake(asio::ssl::stream_base::server,
                                     redirect_error(use_awaitable, ec));
    handshaken = !ec && socket().is_open();
    if (!handshaken) bump(counters->tls_handshake_failures);
  }
  try {
    if (handshaken) co_await serve();
  } catch (const std::exception&) {
    // A failed write of a stream, or a bug in a handler that escaped call_handler: the
    // connection ends, the server goes on.
  }
  busy_ = false;
  if constexpr (is_tls) {
    // close_notify tells the client that the response it has is the whole of it (no
    // truncation). The client's own close_notify, or its FIN, is waited for only briefly: a
    // draining server must not be held open by a client that keeps the connection.
    if (handshaken && !aborted_ && socket().is_open()) {
      set_deadline(clock_type::now() + srv_.options.tls_shutdown_timeout);
      watch();
      error_code ec;
      co_await stream_.async_shutdown(redirect_error(use_awaitable, ec));
    }
  }
  close();
  srv_.connection_closed(this);
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_error(bhttp::status status, unsigned version) {
  if (status == bhttp::status::bad_request) bump(counters->bad_requests);
  if (status == bhttp::status::payload_too_large) bump(counters->payload_too_large);
  if (status == bhttp::status::request_header_fields_too_large)
    bump(counters->header_fields_too_large);
  response res{status, version};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = bhttp::obsolete_reason(status);
  res.body() += '\n';
  res.keep_alive(false);
  res.prepare_payload();
  add_date(res);
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  error_code ec;
  bhttp::response_serializer<response_body, fields> sr(res);
  const auto state = write_now(sr, false, res.body().size(), ec);
  if (state != write_state::done) co_await write_rest(sr, false, state, ec);
}

// The part of a request that is not here yet. Plaintext: Beast's synchronous read (on the
// non-blocking socket) parses what is in buffer_ and reads what is waiting; it stops with
// would_block when the rest is still on its way, which is then awaited here, and the parse goes
// on where it stopped (the parser and buffer_ hold its state). Beast's own EOF, limit and error
// handling thus stay exactly those of its asynchronous read. TLS: Beast's asynchronous read.
template <class Stream>
template <bool Whole>
asio::awaitable<void> basic_connection<Stream>::read_async(request_parser_type& parser,
                                                           error_code& ec) {
  if constexpr (is_tls) {
    if constexpr (Whole) {
      co_await bhttp::async_read(stream_, buffer_, parser, redirect_error(use_awaitable, ec));
    } else {
      co_await bhttp::async_read_header(stream_, buffer_, parser,
                                        redirect_error(use_awaitable, ec));
    }
  } else {
    watch();
    while (ec == asio::error::would_block) {
      ec = {};
      const std::size_t n = co_await stream_.async_read_some(buffer_.prepare(read_chunk),
                                                             redirect_error(use_awaitable, ec));
      buffer_.commit(n);
      // The client's FIN is Beast's to interpret (end of stream, or a partial message): the
      // synchronous read below meets it again.
      if (ec && ec != asio::error::eof) co_return;
      if constexpr (Whole) {
        bhttp::read(socket(), buffer_, parser, ec);
      } else {
        bhttp::read_header(socket(), buffer_, parser, ec);
      }
    }
  }
}

// Writing a response, plaintext: at once, as a rule, with no suspension. The serializer's
// header and a body up to copy_limit are copied into one per-thread buffer and sent with one
// send(2) on the non-blocking socket (Beast's gather write would hand the kernel a dozen small
// pieces); what the socket does not take at once is kept by the connection (pending_) and
// written by write_rest. A larger body, or TLS, goes through Beast's serializer as it is.
namespace {

constexpr std::size_t copy_limit = std::size_t{64} * 1024;

std::string& thread_output() {
  static thread_local std::string out;
  return out;
}

}  // namespace

template <class Stream>
template <class Serializer>
typename basic_connection<Stream>::write_state basic_connection<Stream>::write_now(
    Serializer& sr, bool header_only, std::size_t body_size, error_code& ec) {
  if constexpr (is_tls) {
    return write_state::in_serializer;
  } else {
    if (body_size > copy_limit) {
      if (header_only) {
        bhttp::write_header(socket(), sr, ec);
      } else {
        bhttp::write(socket(), sr, ec);
      }
      if (ec != asio::error::would_block) return write_state::done;
      ec = {};
      return write_state::in_serializer;
    }
    std::string& out = thread_output();
    out.clear();
    sr.split(header_only);
    while (!ec && !(header_only ? sr.is_header_done() : sr.is_done())) {
      std::size_t n = 0;
      sr.next(ec, [&](error_code&, const auto& buffers) {
        for (const auto b : beast::buffers_range_ref(buffers))
          out.append(static_cast<const char*>(b.data()), b.size());
        n = beast::buffer_bytes(buffers);
      });
      if (!ec) sr.consume(n);
    }
    if (ec) return write_state::done;
    const std::size_t sent = socket().send(asio::buffer(out), 0, ec);
    if (ec && ec != asio::error::would_block) return write_state::done;
    ec = {};
    if (sent == out.size()) return write_state::done;
    pending_.assign(out, sent);
    return write_state::in_pending;
  }
}

template <class Stream>
template <class Serializer>
asio::awaitable<void> basic_connection<Stream>::write_rest(Serializer& sr, bool header_only,
                                                           write_state state, error_code& ec) {
  watch();
  if (state == write_state::in_pending) {
    co_await asio::async_write(stream_, asio::buffer(pending_), redirect_error(use_awaitable, ec));
    pending_ = std::string();  // a slow client's leftover is not kept while the connection idles
  } else if (header_only) {
    co_await bhttp::async_write_header(stream_, sr, redirect_error(use_awaitable, ec));
  } else {
    co_await bhttp::async_write(stream_, sr, redirect_error(use_awaitable, ec));
  }
}

template <class Stream>
asio::awaitable<response> basic_connection<Stream>::call_handler(request_context& ctx) {
  try {
    co_return co_await srv_.on_request(ctx);
  } catch (const std::exception&) {
    if (!aborted_) bump(counters->handler_exceptions);  // not a handler cut at the deadline
    if (ctx.streaming()) throw;  // the header is out: nothing sensible can follow
  }
  response res{bhttp::status::internal_server_error, ctx.req().version()};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = "Internal Server Error\n";
  res.keep_alive(false);
  co_return res;
}

// Serves requests until the connection is to be closed. One loop in one coroutine, not a
// coroutine per request: its frame (parser, request, response, serializer: several KiB) is made
// once per connection, where a frame per request would be beyond what Asio recycles (about 1 KiB)
// and cost a malloc and free each time.
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::serve() {
  const auto& opts = srv_.options;
  for (;;) {
    error_code ec;
    if (buffer_.size() == 0) {
      // Idle: wait for the first byte of the next request. While draining, only for the grace.
      idle_ = true;
      auto wait = served_ == 0 ? opts.header_timeout : opts.idle_timeout;
      if (srv_.draining() && served_ > 0) wait = std::min(wait, opts.drain_idle_grace);
      set_deadline(clock_type::now() + wait);
      // Reading (not just waiting for readability) lets Asio try the read at once: a keep-alive
      // client's next request is often already here, and this saves a trip through epoll. It is
      // rarely here yet the moment the previous response has left: the other connections' work
      // that is ready goes first, which gives the client that time.
      std::size_t n = 0;
      if constexpr (!is_tls) {
        // A new connection's request is as a rule here already (the client sent it with its
        // connect): taken at once, without a trip through the reactor.
        if (served_ == 0) {
          n = socket().read_some(buffer_.prepare(read_chunk), ec);
          if (ec == asio::error::would_block) ec = {};
        }
      }
      if (n == 0 && !ec) {
        watch();
        if (served_ > 0) co_await asio::post(executor_, use_awaitable);
        n = co_await stream_.async_read_some(buffer_.prepare(read_chunk),
                                             redirect_error(use_awaitable, ec));
      }
      idle_ = false;
      if (ec || !socket().is_open()) co_return;  // EOF: the client closed, nothing lost
      buffer_.commit(n);
    }

    busy_ = true;
    set_deadline(clock_type::now() + opts.header_timeout);
    request_parser_type parser;
    parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
    parser.body_limit(opts.max_body_bytes);
    // As a rule the whole request is here already: parsed at once, without suspending.
    if constexpr (is_tls) {
      ec = asio::error::would_block;
    } else {
      bhttp::read_header(socket(), buffer_, parser, ec);
    }
    if (ec == asio::error::would_block) co_await read_async<false>(parser, ec);
    if (ec) {
      if (ec == bhttp::error::header_limit) {
        co_await send_error(bhttp::status::request_header_fields_too_large, 11);
      } else if (ec == bhttp::error::body_limit) {  // a Content-Length over the limit
        co_await send_error(bhttp::status::payload_too_large, 11);
      } else if (is_malformed(ec)) {
        co_await send_error(bhttp::status::bad_request, 11);
      }
      co_return;  // closed, timed out, or refused
    }

    srv_.in_flight.fetch_add(1);
    struct in_flight_guard {
      server::impl& srv;
      ~in_flight_guard() {
        srv.in_flight.fetch_sub(1);
        srv.changed.notify_all();
      }
    } guard{srv_};

    {
      const auto& head = parser.get();
      if (beast::iequals(head[bhttp::field::expect], "100-continue")) {
        // The client waits for this before it sends the body (RFC 9110 10.1.1).
        response cont{bhttp::status::continue_, head.version()};
        watch();
        co_await bhttp::async_write(stream_, cont, redirect_error(use_awaitable, ec));
        if (ec) co_return;
      }
    }
    set_deadline(clock_type::now() + opts.body_timeout);
    if constexpr (is_tls) {
      ec = asio::error::would_block;
    } else {
      bhttp::read(socket(), buffer_, parser, ec);
    }
    if (ec == asio::error::would_block) co_await read_async<true>(parser, ec);
    if (ec) {
      if (ec == bhttp::error::body_limit) {
        co_await send_error(bhttp::status::payload_too_large, parser.get().version());
      } else if (is_malformed(ec)) {
        co_await send_error(bhttp::status::bad_request, parser.get().version());
      }
      co_return;
    }

    request req = parser.release();
    // The handler has as long as it needs (it may watch ctx.deadline()); the watchdog stays off.
    set_deadline(clock_type::time_point::max());
    request_context ctx = context_for(req);
    response res = co_await call_handler(ctx);
    if (aborted_) co_return;
    // Counted before the response leaves: a client that has its answer finds it counted.
    bump(counters->requests);

    set_deadline(clock_type::now() + opts.write_timeout);
    bool keep_alive = req.keep_alive() && !srv_.draining();
    if (ctx.streaming()) {
      watch();
      co_await asio::async_write(stream_, bhttp::make_chunk_last(),
                                 redirect_error(use_awaitable, ec));
      // The stream's header could not know about a drain that began later; the idle grace of
      // the next round serves a request that is already on its way, with Connection: close.
      keep_alive = req.keep_alive();
    } else {
      res.keep_alive(keep_alive && res.keep_alive());
      keep_alive = res.keep_alive();
      if (!keep_alive && req.keep_alive() && srv_.draining())
        bump(counters->drain_closed_after_response);
      res.prepare_payload();
      add_date(res);
      // A serializer of our own, on this coroutine's frame: async_write of a message would
      // allocate one per response. Header and body leave together (see write_now).
      bhttp::response_serializer<response_body, fields> sr(res);
      const bool head = req.method() == bhttp::verb::head;
      const auto state = write_now(sr, head, res.body().size(), ec);
      if (state != write_state::done) co_await write_rest(sr, head, state, ec);
    }
    if (srv_.draining()) srv_.completed_while_draining.fetch_add(1);
    ++served_;
    busy_ = false;
    if (ec || !keep_alive) co_return;
  }
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_header(response_header header) {
  bhttp::response<bhttp::empty_body, fields> res(std::move(header));
  res.chunked(true);
  add_date(res);
  bhttp::response_serializer<bhttp::empty_body, fields> sr(res);
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  watch();
  co_await bhttp::async_write_header(stream_, sr, use_awaitable);
  set_deadline(clock_type::time_point::max());
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_chunk(std::string_view data) {
  if (data.empty()) co_return;  // an empty chunk would end the body
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  watch();
  co_await asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data.data(), data.size())),
                             use_awaitable);
  set_deadline(clock_type::time_point::max());
}

std::shared_ptr<connection> make_connection(server::impl& srv, stream_socket socket,
                                            const std::shared_ptr<asio::ssl::context>& tls,
                                            bool tcp) {
  if (tls)
    return std::make_shared<basic_connection<tls_stream>>(srv, std::move(socket), tls.get(), tcp);
  return std::make_shared<basic_connection<stream_socket>>(srv, std::move(socket), nullptr, tcp);
}

bool request_context::draining() const noexcept { return conn_.srv().draining(); }
std::chrono::steady_clock::time_point request_context::deadline() const noexcept {
  return conn_.srv().deadline();
}
asio::any_io_executor request_context::executor() const { return conn_.executor(); }
asio::awaitable<void> request_context::send_header(response_header header) {
  streaming_ = true;
  co_await conn_.send_header(std::move(header));
}
asio::awaitable<void> request_context::send_chunk(std::string_view data) {
  co_await conn_.send_chunk(data);
}

}  // namespace handoff::http
