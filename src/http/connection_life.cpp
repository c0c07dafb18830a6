// The life of a connection of handoff::http::server around its requests (basic_connection.hpp):
// the watchdog and its deadlines, closing, draining and aborting, the TLS handshake and
// close_notify, the answers the server gives itself, and a streaming handler's writes.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include "basic_connection.hpp"

namespace handoff::http {

using asio::redirect_error;
using asio::use_awaitable;

namespace {

// The lingering close after a refusal (linger()): how long, and how many bytes, at most. The
// time is the front's (tools/handoff/proxy); nginx's lingering_time is 30 s, but the answer
// is out already and a client that goes on sending for seconds is not reading it.
constexpr auto linger_time = std::chrono::seconds(2);
constexpr std::size_t linger_bytes = std::size_t{64} * 1024 * 1024;

}  // namespace

template <class Stream>
basic_connection<Stream>::basic_connection(server::impl& srv, io_executor executor, int fd,
                                           const asio::generic::stream_protocol& protocol,
                                           [[maybe_unused]] asio::ssl::context* tls, bool tcp)
    : connection(srv, executor),
      fd_(fd),
      protocol_(protocol),
      raw_(fd_),
      stream_(make_stream<Stream>(executor, tls)),
      timer_(executor_) {
  const auto& o = srv.options;
  // The shortest of the timeouts that are on; zero when all are off (no tick: the watchdog
  // then waits for a deadline only, such as a drain's).
  tick_ = clock_type::duration::zero();
  for (const auto t : {o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout}) {
    if (t.count() > 0 && (tick_ == clock_type::duration::zero() || t < tick_)) tick_ = t;
  }
  // What one request may hold unparsed in the read buffer: its header (Beast answers 431 past
  // max_header_bytes, which this leaves room for), one chunk line with its extensions, or the
  // trailer section. A larger chunk line or trailer ends the read with buffer_overflow: 400,
  // as the front does with its own buffer (tools/handoff/proxy). Bytes a client sends beyond
  // them never pile up here: Beast's parser hands body data on as it comes.
  buffer_.max_size(o.max_header_bytes + read_chunk);
  // Small responses must leave at once, not wait for Nagle's algorithm to batch them (`tcp`:
  // the connection did not get TCP_NODELAY from its listener, server.cpp).
  const int one = 1;
  if (tcp) ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

template <class Stream>
basic_connection<Stream>::~basic_connection() {
  if (open() && !attached_) ::close(fd_);  // a connection destroyed before it ended
}

// Hands the descriptor to the reactor, which every asynchronous operation needs. Asio then sets
// its own record of the descriptor's mode with one ioctl at the first operation (it is
// non-blocking already).
template <class Stream>
void basic_connection<Stream>::attach() {
  if (attached_ || !open()) return;
  error_code ec;
  socket().assign(protocol_, fd_, ec);
  if (ec) {  // the reactor refused it (out of memory): the connection ends
    ::close(fd_);
    fd_ = -1;
    return;
  }
  attached_ = true;
  if constexpr (!is_tls) reactor_ = &socket().reactor();
}

// A deadline matters only while the connection waits for its peer. A connection that never
// waits (a new one whose request is here at once and whose response the socket takes whole, as
// with a client that opens a connection per request) needs no watchdog: none is started, which
// spares it the timerfd update of a timer that would be the earliest. The watchdog is a chain
// of timer waits, not a coroutine: watch() is called from inside the connection's coroutine,
// and a coroutine spawned there would start at once, nested in it.
template <class Stream>
void basic_connection<Stream>::start_watchdog() {
  watched_ = true;
  arm_watchdog();
}

template <class Stream>
void basic_connection<Stream>::arm_watchdog() {
  // Wake at least every `tick` (the shortest timeout): a new phase's deadline then never lies
  // before the armed one, so set_deadline() need not cancel the timer per request.
  // Every timeout off: the deadline alone (a drain's, which cancels the wait when it comes).
  armed_ = tick_ == clock_type::duration::zero() ? deadline_
                                                 : std::min(deadline_, clock_type::now() + tick_);
  timer_.expires_at(armed_);
  timer_.async_wait([self = shared_from_this(), this](const error_code&) { on_watchdog(); });
}

template <class Stream>
void basic_connection<Stream>::on_watchdog() {
  if (!open()) return;
  if (clock_type::now() >= deadline_) {
    // An idle connection whose next request has arrived meanwhile is not idle: under load the
    // timer and the read can complete together, and the request must win.
    int pending = 0;
    if (idle_ && ::ioctl(fd_, FIONREAD, &pending) == 0 && pending > 0) {
      deadline_ = after(srv_.options.header_timeout);
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

// close(2) alone, as nginx does: the descriptor is this process's only one (close-on-exec from
// accept4, never duplicated), so it sends the FIN (or, with a request unread, the RST) that a
// shutdown(2) before it would. Attached, Asio's close also ends the pending read or write.
template <class Stream>
void basic_connection<Stream>::close() {
  if (!open()) return;
  if (attached_) {
    error_code ignored;
    socket().close(ignored);
    timer_.cancel();
  } else {
    ::close(fd_);
  }
  fd_ = -1;
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
    set_deadline(after(srv_.options.tls_handshake_timeout));
    error_code ec;
    co_await stream_.async_handshake(asio::ssl::stream_base::server,
                                     redirect_error(use_awaitable, ec));
    handshaken = !ec && open();
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
    if (handshaken && !aborted_ && open()) {
      set_deadline(after(srv_.options.tls_shutdown_timeout));
      watch();
      error_code ec;
      co_await stream_.async_shutdown(redirect_error(use_awaitable, ec));
    }
  }
  close();
  srv_.connection_closed(this);
}

// Every refusal closes the connection: what follows the refused request cannot be told apart
// from the rest of it.
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::refuse(bhttp::status status, unsigned version) {
  switch (status) {
    case bhttp::status::payload_too_large:
      bump(counters->payload_too_large);
      break;
    case bhttp::status::request_header_fields_too_large:
      bump(counters->header_fields_too_large);
      break;
    default:  // 400, and 501 for a transfer coding the server does not decode
      bump(counters->bad_requests);
      break;
  }
  response res{status, version == 10 ? 10u : 11u};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = bhttp::obsolete_reason(status);
  res.body() += '\n';
  res.keep_alive(false);
  res.prepare_payload();
  add_date(res);
  set_deadline(after(srv_.options.write_timeout));
  error_code ec;
  co_await write(res, false, ec);
  if (!ec) co_await linger();
}

// After a refusal the client may still be sending what the server will not read (the rest of a
// body over the limit, a header that never ends). close(2) with unread bytes sends a RST, and a
// client that is still writing then meets ECONNRESET before it reads the answer. As nginx's
// lingering close: end our side (FIN), read and discard until the client closes, then close,
// within linger_time and linger_bytes whatever the client does. TLS has no lingering read
// here: run()'s close_notify exchange follows (tls_shutdown_timeout), and a client that is
// still sending application data then may still meet a reset.
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::linger() {
  if constexpr (!is_tls) {
    if (!open() || aborted_ || ::shutdown(fd_, SHUT_WR) != 0) co_return;
    busy_ = false;  // the watchdog's close at the deadline is no timeout of a request
    set_deadline(clock_type::now() + linger_time);
    watch();
    std::size_t discarded = 0;
    error_code ec;
    while (!ec && open() && discarded < linger_bytes) {
      buffer_.clear();
      discarded += co_await read_when_ready(ec);
    }
  }
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_header(response_header header) {
  bhttp::response<bhttp::empty_body, fields> res(std::move(header));
  res.chunked(true);
  add_date(res);
  bhttp::response_serializer<bhttp::empty_body, fields> sr(res);
  set_deadline(after(srv_.options.write_timeout));
  watch();
  co_await bhttp::async_write_header(stream_, sr, use_awaitable);
  set_deadline(clock_type::time_point::max());
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_chunk(std::string_view data) {
  if (data.empty()) co_return;  // an empty chunk would end the body
  set_deadline(after(srv_.options.write_timeout));
  watch();
  co_await asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data.data(), data.size())),
                             use_awaitable);
  set_deadline(clock_type::time_point::max());
}

// Connections come from field_allocator's per-thread cache, as their read buffers do: a client
// that opens a connection per request costs no malloc.
std::shared_ptr<connection> make_connection(server::impl& srv, io_executor executor, int fd,
                                            const asio::generic::stream_protocol& protocol,
                                            const std::shared_ptr<asio::ssl::context>& tls,
                                            bool tcp) {
  if (tls)
    return std::allocate_shared<basic_connection<tls_stream>>(
        field_allocator<char>(), srv, executor, fd, protocol, tls.get(), tcp);
  return std::allocate_shared<basic_connection<stream_socket>>(
      field_allocator<char>(), srv, executor, fd, protocol, nullptr, tcp);
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

template class basic_connection<stream_socket>;
template class basic_connection<tls_stream>;

}  // namespace handoff::http
