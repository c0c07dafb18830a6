#include "connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

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

}  // namespace

connection::connection(server::impl& srv, stream_socket socket)
    : srv_(srv), socket_(std::move(socket)), timer_(socket_.get_executor()) {
  const auto& o = srv.options;
  tick_ = std::min({o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout});
  // Small responses must leave at once, not wait for Nagle's algorithm to batch them.
  const int one = 1;
  if (socket_.local_endpoint().protocol().family() != AF_UNIX)
    ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void connection::set_deadline(clock_type::time_point when) {
  deadline_ = when;
  // Only a deadline nearer than the one the watchdog waits for needs it woken; a later one is
  // picked up when it wakes. This keeps timer operations off the path of most requests.
  if (when < armed_) timer_.cancel();
}

asio::awaitable<void> connection::watchdog() {
  auto self = shared_from_this();
  while (socket_.is_open()) {
    // Wake at least every `tick` (the shortest timeout): a new phase's deadline then never
    // lies before the armed one, so set_deadline() need not cancel the timer per request.
    armed_ = std::min(deadline_, clock_type::now() + tick_);
    timer_.expires_at(armed_);
    error_code ec;
    co_await timer_.async_wait(redirect_error(use_awaitable, ec));
    if (!socket_.is_open()) break;
    if (clock_type::now() >= deadline_) {
      // An idle connection whose next request has arrived meanwhile is not idle: under load the
      // timer and the read can complete together, and the request must win.
      int pending = 0;
      if (idle_ && ::ioctl(socket_.native_handle(), FIONREAD, &pending) == 0 && pending > 0) {
        deadline_ = clock_type::now() + srv_.options.header_timeout;
        continue;
      }
      close();  // ends the pending read or write of run() with an error
      break;
    }
  }
}

void connection::close() {
  error_code ignored;
  if (!socket_.is_open()) return;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  timer_.cancel();
}

void connection::on_drain() {
  // Only a connection that has served a request is cut short: a new one was opened to send
  // one, which is on its way (the header timeout still bounds it).
  if (idle_ && served_ > 0) {
    set_deadline(std::min(deadline_, clock_type::now() + srv_.options.drain_idle_grace));
  }
}

void connection::abort() {
  aborted_ = true;
  cancel.emit(asio::cancellation_type::terminal);
  close();
}

asio::awaitable<void> connection::run() {
  auto self = shared_from_this();
  asio::co_spawn(socket_.get_executor(), watchdog(), asio::detached);
  try {
    while (co_await serve_one()) {
    }
  } catch (const std::exception&) {
    // A failed write of a stream, or a bug in a handler that escaped call_handler: the
    // connection ends, the server goes on.
  }
  busy_ = false;
  close();
  srv_.connection_closed(this);
}

asio::awaitable<void> connection::send_error(bhttp::status status, unsigned version) {
  response res{status, version};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = std::string(bhttp::obsolete_reason(status)) + "\n";
  res.keep_alive(false);
  res.prepare_payload();
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  error_code ec;
  co_await bhttp::async_write(socket_, res, redirect_error(use_awaitable, ec));
}

asio::awaitable<response> connection::call_handler(request_context& ctx) {
  try {
    co_return co_await srv_.on_request(ctx);
  } catch (const std::exception&) {
    if (ctx.streaming()) throw;  // the header is out: nothing sensible can follow
  }
  response res{bhttp::status::internal_server_error, ctx.req().version()};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = "Internal Server Error\n";
  res.keep_alive(false);
  co_return res;
}

// Serves one request; false when the connection is to be closed.
asio::awaitable<bool> connection::serve_one() {
  error_code ec;
  const auto& opts = srv_.options;
  if (buffer_.size() == 0) {
    // Idle: wait for the first byte of the next request. While draining, only for the grace.
    idle_ = true;
    auto wait = served_ == 0 ? opts.header_timeout : opts.idle_timeout;
    if (srv_.draining() && served_ > 0) wait = std::min(wait, opts.drain_idle_grace);
    set_deadline(clock_type::now() + wait);
    // Reading (not just waiting for readability) lets Asio try the read at once: a keep-alive
    // client's next request is often already here, and this saves a trip through epoll.
    const std::size_t n = co_await socket_.async_read_some(buffer_.prepare(read_chunk),
                                                           redirect_error(use_awaitable, ec));
    idle_ = false;
    if (ec || !socket_.is_open()) co_return false;  // EOF: the client closed, nothing lost
    buffer_.commit(n);
  }

  busy_ = true;
  set_deadline(clock_type::now() + opts.header_timeout);
  bhttp::request_parser<bhttp::string_body, field_allocator<char>> parser;
  parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
  parser.body_limit(opts.max_body_bytes);
  co_await bhttp::async_read_header(socket_, buffer_, parser, redirect_error(use_awaitable, ec));
  if (ec) {
    if (ec == bhttp::error::header_limit) {
      co_await send_error(bhttp::status::request_header_fields_too_large, 11);
    } else if (ec == bhttp::error::body_limit) {  // a Content-Length over the limit
      co_await send_error(bhttp::status::payload_too_large, 11);
    } else if (is_malformed(ec)) {
      co_await send_error(bhttp::status::bad_request, 11);
    }
    co_return false;  // closed, timed out, or refused
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
      co_await bhttp::async_write(socket_, cont, redirect_error(use_awaitable, ec));
      if (ec) co_return false;
    }
  }
  set_deadline(clock_type::now() + opts.body_timeout);
  co_await bhttp::async_read(socket_, buffer_, parser, redirect_error(use_awaitable, ec));
  if (ec) {
    if (ec == bhttp::error::body_limit) {
      co_await send_error(bhttp::status::payload_too_large, parser.get().version());
    } else if (is_malformed(ec)) {
      co_await send_error(bhttp::status::bad_request, parser.get().version());
    }
    co_return false;
  }

  request req = parser.release();
  // The handler has as long as it needs (it may watch ctx.deadline()); the watchdog stays off.
  set_deadline(clock_type::time_point::max());
  request_context ctx(*this, req);
  response res = co_await call_handler(ctx);
  if (aborted_) co_return false;

  set_deadline(clock_type::now() + opts.write_timeout);
  bool keep_alive = req.keep_alive() && !srv_.draining();
  if (ctx.streaming()) {
    co_await asio::async_write(socket_, bhttp::make_chunk_last(),
                               redirect_error(use_awaitable, ec));
    // The stream's header could not know about a drain that began later; the idle grace of
    // the next round serves a request that is already on its way, with Connection: close.
    keep_alive = req.keep_alive();
  } else {
    res.keep_alive(keep_alive && res.keep_alive());
    keep_alive = res.keep_alive();
    res.prepare_payload();
    // A serializer of our own, on this coroutine's (recycled) frame: async_write of a message
    // would allocate one per response. Header and body leave in one gather write.
    bhttp::response_serializer<bhttp::string_body, fields> sr(res);
    if (req.method() == bhttp::verb::head) {
      co_await bhttp::async_write_header(socket_, sr, redirect_error(use_awaitable, ec));
    } else {
      co_await bhttp::async_write(socket_, sr, redirect_error(use_awaitable, ec));
    }
  }
  if (srv_.draining()) srv_.completed_while_draining.fetch_add(1);
  ++served_;
  busy_ = false;
  co_return !ec && keep_alive;
}

asio::awaitable<void> connection::send_header(response_header header) {
  bhttp::response<bhttp::empty_body, fields> res(std::move(header));
  res.chunked(true);
  bhttp::response_serializer<bhttp::empty_body, fields> sr(res);
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  co_await bhttp::async_write_header(socket_, sr, use_awaitable);
  set_deadline(clock_type::time_point::max());
}

asio::awaitable<void> connection::send_chunk(std::string_view data) {
  if (data.empty()) co_return;  // an empty chunk would end the body
  set_deadline(clock_type::now() + srv_.options.write_timeout);
  co_await asio::async_write(socket_, bhttp::make_chunk(asio::buffer(data.data(), data.size())),
                             use_awaitable);
  set_deadline(clock_type::time_point::max());
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
