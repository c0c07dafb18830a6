// The request loop of a connection of handoff::http::server (basic_connection.hpp): reading a
// request, handing it to the handler, writing the response. Every request takes this path, and
// a keep-alive request in steady state takes it without an allocation or a system call beyond
// its read and its write (tests/http/test_http_allocations.cpp).
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include "basic_connection.hpp"

namespace handoff::http {

using asio::redirect_error;
using asio::use_awaitable;

namespace {

// A parse error of Beast's (the client sent bytes that are not HTTP, or a chunk line or
// trailer that does not fit the read buffer), as opposed to the client closing or the watchdog
// ending the read: only those get a 400.
bool is_malformed(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
         ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
}

// Empty lines a client may send before a request line (RFC 9112 2.2: a server SHOULD ignore at
// least one; HAProxy and nginx do), whether after a body it framed itself or as keep-alive
// noise. More than this before one request is no client's habit: 400.
constexpr unsigned max_empty_lines = 8;

}  // namespace

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
  // Never more than the buffer's max_size allows (Beast's read stops with buffer_overflow before
  // the buffer is full, so there is room for a byte at least).
  const auto room = buffer_.prepare(std::min(read_chunk, buffer_.max_size() - buffer_.size()));
  // Closed, or refused by the reactor: Asio's read says so (bad_descriptor).
  if (!attached_) return stream_.async_read_some(room, redirect_error(use_awaitable, ec));
  return idle_read_.async_read(socket(), *reactor_, room, redirect_error(use_awaitable, ec));
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

// The client waits for this before it sends the body (RFC 9110 10.1.1); an HTTP/1.0 client does
// not know it, and is not sent one.
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
  co_return internal_error(ctx.req().version());
}

template <class Stream>
response basic_connection<Stream>::internal_error(unsigned version) {
  response res{bhttp::status::internal_server_error, version};
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = "Internal Server Error\n";
  res.keep_alive(false);
  return res;
}

template <class Stream>
bool basic_connection<Stream>::skip_empty_lines() {
  const auto* bytes = static_cast<const char*>(buffer_.data().data());
  const std::size_t size = buffer_.size();
  std::size_t skipped = 0;
  while (skipped + 1 < size && bytes[skipped] == '\r' && bytes[skipped + 1] == '\n') {
    skipped += 2;
    if (++empty_lines_ > max_empty_lines) return false;
  }
  buffer_.consume(skipped);
  return true;
}

namespace {

bhttp::status status_of(request_verdict verdict) {
  switch (verdict) {
    case request_verdict::too_many_fields:
      return bhttp::status::request_header_fields_too_large;
    case request_verdict::not_implemented:
      return bhttp::status::not_implemented;
    default:
      return bhttp::status::bad_request;
  }
}

// A request's bytes start with CR: empty lines to skip, or a lone CR that waits for its LF.
bool starts_with_cr(const read_buffer& b) {
  return b.size() > 0 && *static_cast<const char*>(b.data().data()) == '\r';
}

}  // namespace

// Serves requests until the connection is to be closed. One loop in one coroutine, not a
// coroutine per request: its frame (parser, request, response, serializer: several KiB) is made
// once per connection, where a frame per request would be beyond what Asio recycles (about 1 KiB)
// and cost a malloc and free each time.
template <class Stream>
asio::awaitable<void> basic_connection<Stream>::serve() {
  const auto& opts = srv_.options;
  // A refusal leaves the loop with its answer here, given after it at one place (a co_await per
  // refusal would each take room in this frame).
  auto refusal = bhttp::status::unknown;
  unsigned version = 11;
  for (;;) {
    error_code ec;
    if (buffer_.size() == 0 || (buffer_.size() == 1 && starts_with_cr(buffer_))) {
      // Idle: wait for the first byte of the next request. While draining, only for the grace.
      idle_ = true;
      const auto now = clock_type::now();
      const auto wait = served_ == 0 ? opts.header_timeout : opts.idle_timeout;
      auto deadline = wait.count() > 0 ? now + wait : clock_type::time_point::max();
      if (srv_.draining() && served_ > 0)
        deadline = std::min(deadline, now + opts.drain_idle_grace);
      set_deadline(deadline);
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
    if (starts_with_cr(buffer_)) {
      if (!skip_empty_lines()) {
        refusal = bhttp::status::bad_request;
        break;
      }
      if (buffer_.size() == 0 || (buffer_.size() == 1 && starts_with_cr(buffer_))) continue;
    }

    busy_ = true;
    set_deadline(after(opts.header_timeout));
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
      if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
        refusal = bhttp::status::request_header_fields_too_large;
      } else if (ec == bhttp::error::body_limit) {  // a Content-Length over the limit
        refusal = bhttp::status::payload_too_large;
      } else if (is_malformed(ec)) {
        refusal = bhttp::status::bad_request;
      }
      break;  // closed, timed out, or refused
    }
    version = parser.get().version();
    if (const auto verdict = check_request_header(parser.get(), opts.max_header_fields);
        verdict != request_verdict::ok) {
      refusal = status_of(verdict);
      break;
    }
    empty_lines_ = 0;

    srv_.in_flight.fetch_add(1);
    struct in_flight_guard {
      server::impl& srv;
      ~in_flight_guard() {
        srv.in_flight.fetch_sub(1);
        srv.changed.notify_all();
      }
    } guard{srv_};

    if (version >= 11 && beast::iequals(parser.get()[bhttp::field::expect], "100-continue")) {
      co_await send_continue(version, ec);
      if (ec) co_return;
    }
    if (parser.chunked()) {
      extensions_.left = opts.max_header_bytes;
      parser.on_chunk_header(extensions_);
    }
    set_deadline(after(opts.body_timeout));
    if constexpr (is_tls) {
      ec = asio::error::would_block;
    } else {
      bhttp::read(raw_, buffer_, parser, ec);
    }
    if (ec == asio::error::would_block) co_await read_async<true>(parser, ec);
    if (ec) {
      if (ec == bhttp::error::body_limit) {
        refusal = bhttp::status::payload_too_large;
      } else if (is_malformed(ec)) {  // a chunk line or a trailer too long included
        refusal = bhttp::status::bad_request;
      }
      break;
    }
    if (parser.chunked() && !within_field_limit(parser.get(), opts.max_header_fields)) {
      refusal = bhttp::status::request_header_fields_too_large;
      break;
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

    set_deadline(after(opts.write_timeout));
    bool keep_alive = req.keep_alive() && !srv_.draining();
    if (ctx.streaming()) {
      watch();
      co_await asio::async_write(stream_, bhttp::make_chunk_last(),
                                 redirect_error(use_awaitable, ec));
      // The stream's header could not know about a drain that began later; the idle grace of
      // the next round serves a request that is already on its way, with Connection: close.
      keep_alive = req.keep_alive();
    } else {
      if (!prepare_response(res)) {
        // A response the handler cannot have meant (a 1xx as its answer, a body on a 204 or
        // 304): a 500, as for a handler that throws.
        bump(counters->handler_exceptions);
        res = internal_error(req.version());
        res.prepare_payload();
      }
      res.keep_alive(keep_alive && res.keep_alive());
      keep_alive = res.keep_alive();
      if (!keep_alive && req.keep_alive() && srv_.draining())
        bump(counters->drain_closed_after_response);
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
  if (refusal != bhttp::status::unknown) co_await refuse(refusal, version);
}

template class basic_connection<stream_socket>;
template class basic_connection<tls_stream>;

}  // namespace handoff::http