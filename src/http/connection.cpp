#include "connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

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
// A connection's read buffer: 8 KiB from field_allocator's cache, not from malloc, for a
// connection per request.
using read_buffer = beast::basic_flat_buffer<field_allocator<char>>;

namespace {

// The connection's descriptor as Beast's synchronous reads and writes see it: recv and send on
// the non-blocking socket, would_block when it has nothing (or no room). A connection that
// never has to wait is served through this alone, without registering with the reactor: no
// epoll_ctl to add and remove it, no ioctl; the reactor learns of it at its first wait
// (attach()), and this goes on working beside it (the same non-blocking descriptor).
class raw_socket {
 public:
  // The connection's own descriptor, by reference: once it is closed (-1), a read or write here
  // fails with EBADF rather than reach a descriptor that reused the number.
  explicit raw_socket(const int& fd) noexcept : fd_(fd) {}

  template <class MutableBufferSequence>
  std::size_t read_some(const MutableBufferSequence& buffers, error_code& ec) {
    return transfer<false>(buffers, ec);
  }
  template <class ConstBufferSequence>
  std::size_t write_some(const ConstBufferSequence& buffers, error_code& ec) {
    return transfer<true>(buffers, ec);
  }
  // The throwing forms, which Beast's stream concepts ask for.
  template <class MutableBufferSequence>
  std::size_t read_some(const MutableBufferSequence& buffers) {
    error_code ec;
    const std::size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class ConstBufferSequence>
  std::size_t write_some(const ConstBufferSequence& buffers) {
    error_code ec;
    const std::size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  static constexpr std::size_t max_iov = 16;
  // One buffer (as a rule): recv(2) or send(2), which spare the kernel the import of an iovec
  // array; several: recvmsg(2) or sendmsg(2). A read of nothing at the end of the stream is eof.
  template <bool Write, class Buffers>
  std::size_t transfer(const Buffers& buffers, error_code& ec) {
    iovec iov[max_iov];
    std::size_t count = 0;
    for (auto it = asio::buffer_sequence_begin(buffers);
         it != asio::buffer_sequence_end(buffers) && count < max_iov; ++it) {
      const auto b = *it;
      if (b.size() == 0) continue;
      iov[count].iov_base = const_cast<void*>(static_cast<const void*>(b.data()));
      iov[count].iov_len = b.size();
      ++count;
    }
    ec = {};
    if (count == 0) return 0;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    ssize_t n = 0;
    if constexpr (Write) {
      n = count == 1 ? ::send(fd_, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                     : ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    } else {
      n = count == 1 ? ::recv(fd_, iov[0].iov_base, iov[0].iov_len, 0) : ::recvmsg(fd_, &msg, 0);
      if (n == 0) ec = asio::error::eof;
    }
    if (n < 0) {
      ec = error_code(errno, asio::error::get_system_category());
      return 0;
    }
    return static_cast<std::size_t>(n);
  }
  const int& fd_;
};

}  // namespace

// One connection over `Stream`: stream_socket (plaintext) or tls_stream.
template <class Stream>
class basic_connection final : public connection {
 public:
  static constexpr bool is_tls = std::is_same_v<Stream, tls_stream>;

  basic_connection(server::impl& srv, io_executor executor, int fd,
                   const asio::generic::stream_protocol& protocol, asio::ssl::context* tls,
                   bool tcp);
  ~basic_connection() override;

  asio::awaitable<void> run() override;
  void on_drain() override;
  void abort() override;
  asio::awaitable<void> send_header(response_header header) override;
  asio::awaitable<void> send_chunk(std::string_view data) override;

 private:
  stream_socket& socket() noexcept { return beast::get_lowest_layer(stream_); }
  bool open() const noexcept { return fd_ >= 0; }
  void attach();  // the reactor takes the descriptor (once)
  void watch();   // before the first suspension on I/O: attach(), and the watchdog starts (once)
  void arm_watchdog();
  void on_watchdog();
  void set_deadline(clock_type::time_point when);
  asio::awaitable<void> serve();
  asio::awaitable<void> send_error(beast::http::status status, unsigned version);
  template <bool Whole>
  asio::awaitable<void> read_async(request_parser_type& parser, error_code& ec);
  enum class write_state { done, in_pending, not_copied };  // what write_now left to write
  write_state write_now(response& res, bool header_only, error_code& ec);
  asio::awaitable<void> write_pending(error_code& ec);
  asio::awaitable<void> write_serialized(response& res, bool header_only, error_code& ec);
  // Writes `res` (its header alone when `header_only`): at once as a rule, else what is left.
  asio::awaitable<void> write(response& res, bool header_only, error_code& ec);
  asio::awaitable<void> send_continue(unsigned version, error_code& ec);
  asio::awaitable<response> call_handler(request_context& ctx);
  void close();
  void count_timeout();  // the watchdog is closing the connection: say which timeout passed

  int fd_;                                   // -1 once closed
  asio::generic::stream_protocol protocol_;  // for attach()
  bool attached_ = false;                    // socket() holds fd_ (else it is closed)
  raw_socket raw_;                           // synchronous reads and writes on fd_
  Stream stream_;
  steady_timer timer_;
  clock_type::time_point deadline_ = clock_type::time_point::max();
  clock_type::time_point armed_ = clock_type::time_point::max();  // what the watchdog waits for
  clock_type::duration tick_;                                     // the watchdog's longest sleep
  read_buffer buffer_;
  // The request being read and served. A member, not on serve()'s frame: that frame stays
  // within what Asio recycles (about 1 KiB), so a connection per request allocates none.
  std::optional<request_parser_type> parser_;
  std::string pending_;       // the part of a response the socket did not take at once
  bool idle_ = false;         // waiting for the first byte of the next request
  unsigned long served_ = 0;  // requests answered on this connection
  bool busy_ = false;         // a request is being read, handled or answered
  bool aborted_ = false;
  bool watched_ = false;  // the watchdog runs
  // Plaintext: every read that waits (idle_read.hpp), on the reactor socket() is registered with.
  idle_read idle_read_;
  asio::detail::reactor* reactor_ = nullptr;  // set by attach()
  // Reads into buffer_ once the socket has bytes (plaintext).
  asio::awaitable<std::size_t> read_when_ready(error_code& ec);
};

template <class Stream>
Stream make_stream(io_executor executor, [[maybe_unused]] asio::ssl::context* tls) {
  if constexpr (std::is_same_v<Stream, tls_stream>) {
    return Stream(stream_socket(executor), *tls);
  } else {
    return stream_socket(executor);
  }
}

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
  tick_ = std::min({o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout});
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
  attach();
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
  if (!open()) return;
  if (clock_type::now() >= deadline_) {
    // An idle connection whose next request has arrived meanwhile is not idle: under load the
    // timer and the read can complete together, and the request must win.
    int pending = 0;
    if (idle_ && ::ioctl(fd_, FIONREAD, &pending) == 0 && pending > 0) {
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
    set_deadline(clock_type::now() + srv_.options.tls_handshake_timeout);
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
  co_await write(res, false, ec);
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
      const std::size_t n = co_await read_when_ready(ec);
      buffer_.commit(n);
      // The client's FIN is Beast's to interpret (end of stream, or a partial message): the
      // synchronous read below meets it again.
      if (ec && ec != asio::error::eof) co_return;
      if constexpr (Whole) {
        bhttp::read(raw_, buffer_, parser, ec);
      } else {
        bhttp::read_header(raw_, buffer_, parser, ec);
      }
    }
  }
}

// Not a coroutine (the read's own awaitable is returned): no frame of its own per read.
template <class Stream>
asio::awaitable<std::size_t> basic_connection<Stream>::read_when_ready(error_code& ec) {
  // Closed, or refused by the reactor: Asio's read says so (bad_descriptor).
  if (!attached_)
    return stream_.async_read_some(buffer_.prepare(read_chunk), redirect_error(use_awaitable, ec));
  return idle_read_.async_read(socket(), *reactor_, buffer_.prepare(read_chunk),
                               redirect_error(use_awaitable, ec));
}

// Writing a response, plaintext: at once, as a rule, with no suspension. The serializer's
// header and a body up to copy_limit are copied into one per-thread buffer and sent with one
// send(2) on the non-blocking socket (Beast's gather write would hand the kernel a dozen small
// pieces); what the socket does not take at once is kept by the connection (pending_) and
// written by write_pending. A larger body, or TLS, goes through Beast's serializer as it is
// (write_serialized).
namespace {

constexpr std::size_t copy_limit = std::size_t{64} * 1024;

std::string& thread_output() {
  static thread_local std::string out;
  return out;
}

// The status line and header fields as Beast's serializer writes them ("HTTP/1.1 200 OK",
// then each field "Name: value" as stored, each line ending in CRLF, then an empty line),
// appended directly: Beast's serializer yields them through a view of a dozen buffers whose
// iterators cost a fifth of the server's own CPU time per keep-alive request.
void append_head(std::string& out, const response& res) {
  const unsigned version = res.version();
  const unsigned code = res.result_int();
  char line[] = "HTTP/1.1 200 ";
  line[5] = static_cast<char>('0' + version / 10 % 10);
  line[7] = static_cast<char>('0' + version % 10);
  line[9] = static_cast<char>('0' + code / 100 % 10);
  line[10] = static_cast<char>('0' + code / 10 % 10);
  line[11] = static_cast<char>('0' + code % 10);
  out.append(line, sizeof line - 1);
  const auto reason = res.reason();
  out.append(reason.data(), reason.size());
  out.append("\r\n", 2);
  for (const auto& field : res) {
    const auto name = field.name_string();
    const auto value = field.value();
    out.append(name.data(), name.size());
    out.append(": ", 2);
    out.append(value.data(), value.size());
    out.append("\r\n", 2);
  }
  out.append("\r\n", 2);
}

}  // namespace

template <class Stream>
typename basic_connection<Stream>::write_state basic_connection<Stream>::write_now(response& res,
                                                                                   bool header_only,
                                                                                   error_code& ec) {
  if constexpr (is_tls) {
    return write_state::not_copied;
  } else {
    if (res.body().size() > copy_limit || res.chunked()) return write_state::not_copied;
    std::string& out = thread_output();
    out.clear();
    append_head(out, res);
    if (!header_only) out.append(res.body().data(), res.body().size());
    const std::size_t sent = raw_.write_some(asio::buffer(out), ec);
    if (ec && ec != asio::error::would_block) return write_state::done;
    ec = {};
    if (sent == out.size()) return write_state::done;
    pending_.assign(out, sent);
    return write_state::in_pending;
  }
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::write_pending(error_code& ec) {
  watch();
  co_await asio::async_write(stream_, asio::buffer(pending_), redirect_error(use_awaitable, ec));
  pending_ = std::string();  // a slow client's leftover is not kept while the connection idles
}

// A body beyond copy_limit, or TLS: Beast's serializer, which lives on this coroutine's frame
// (made only for such responses). Plaintext: what the socket takes at once first.
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::write_serialized(response& res, bool header_only,
                                                                 error_code& ec) {
  bhttp::response_serializer<response_body, fields> sr(res);
  if constexpr (!is_tls) {
    if (header_only) {
      bhttp::write_header(raw_, sr, ec);
    } else {
      bhttp::write(raw_, sr, ec);
    }
    if (ec != asio::error::would_block) co_return;
    ec = {};
  }
  watch();
  if (header_only) {
    co_await bhttp::async_write_header(stream_, sr, redirect_error(use_awaitable, ec));
  } else {
    co_await bhttp::async_write(stream_, sr, redirect_error(use_awaitable, ec));
  }
}

template <class Stream>
asio::awaitable<void> basic_connection<Stream>::write(response& res, bool header_only,
                                                      error_code& ec) {
  const auto state = write_now(res, header_only, ec);
  if (state == write_state::in_pending) {
    co_await write_pending(ec);
  } else if (state == write_state::not_copied) {
    co_await write_serialized(res, header_only, ec);
  }
}

// The client waits for this before it sends the body (RFC 9110 10.1.1).
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::send_continue(unsigned version, error_code& ec) {
  response cont{bhttp::status::continue_, version};
  watch();
  co_await bhttp::async_write(stream_, cont, redirect_error(use_awaitable, ec));
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
      // A new connection's request is as a rule here already (defer_accept, or a client that
      // sent it with its connect): plaintext, it is read at once, without a trip through the
      // reactor. Otherwise, plaintext, the reactor's read that tries the socket only when epoll
      // said it has bytes since the last read emptied it (idle_read.hpp): a keep-alive client's
      // next request is rarely here the moment the previous response has left. TLS: Asio's
      // read, which tries at once; the other connections' ready work goes first (a yield),
      // which gives the client that time.
      std::size_t n = 0;
      if constexpr (!is_tls) {
        if (served_ == 0) {
          n = raw_.read_some(buffer_.prepare(read_chunk), ec);
          if (ec == asio::error::would_block) ec = {};
        }
      }
      if (n == 0 && !ec) {
        watch();
        if constexpr (is_tls) {
          if (served_ > 0) co_await asio::post(executor_, use_awaitable);
          n = co_await stream_.async_read_some(buffer_.prepare(read_chunk),
                                               redirect_error(use_awaitable, ec));
        } else {
          n = co_await read_when_ready(ec);
        }
      }
      idle_ = false;
      if (ec || !open()) co_return;  // EOF: the client closed, nothing lost
      buffer_.commit(n);
    }

    busy_ = true;
    set_deadline(clock_type::now() + opts.header_timeout);
    auto& parser = parser_.emplace();
    parser.header_limit(static_cast<std::uint32_t>(opts.max_header_bytes));
    parser.body_limit(opts.max_body_bytes);
    // As a rule the whole request is here already: parsed at once, without suspending.
    if constexpr (is_tls) {
      ec = asio::error::would_block;
    } else {
      bhttp::read_header(raw_, buffer_, parser, ec);
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

    if (beast::iequals(parser.get()[bhttp::field::expect], "100-continue")) {
      co_await send_continue(parser.get().version(), ec);
      if (ec) co_return;
    }
    set_deadline(clock_type::now() + opts.body_timeout);
    if constexpr (is_tls) {
      ec = asio::error::would_block;
    } else {
      bhttp::read(raw_, buffer_, parser, ec);
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

    // The parser keeps the request until the next one (it is not moved onto this frame).
    const request& req = parser.get();
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
      // Header and body leave together in one send, as a rule without suspending (write_now);
      // the rare rest in coroutines of their own, whose frames this one does not carry.
      const bool head = req.method() == bhttp::verb::head;
      const auto state = write_now(res, head, ec);
      if (state == write_state::in_pending) {
        co_await write_pending(ec);
      } else if (state == write_state::not_copied) {
        co_await write_serialized(res, head, ec);
      }
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

}  // namespace handoff::http
