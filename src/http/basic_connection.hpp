// Internal: basic_connection, the one template behind every connection of handoff::http::server
// (see connection.hpp for the model), shared by the files that implement it by role:
// connection.cpp (the request loop: reading, handling and writing, the path every request
// takes), connection_life.cpp (the watchdog, closing, draining, TLS and the answers the server
// gives itself) and request_checks.cpp (what a request's framing and a response must satisfy).
// Each .cpp instantiates the members it defines for both streams.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <optional>
#include <string>
#include <type_traits>

#include "connection.hpp"
#include "date.hpp"
#include "request_checks.hpp"

namespace handoff::http {

namespace bhttp = beast::http;
using boost::system::error_code;

using tls_stream = asio::ssl::stream<stream_socket>;
using request_parser_type = bhttp::request_parser<bhttp::string_body, field_allocator<char>>;
// A connection's read buffer: 8 KiB from field_allocator's cache, not from malloc, for a
// connection per request. Its max_size bounds what one request may hold unparsed (a header, a
// chunk line, a trailer section): see basic_connection's constructor.
using read_buffer = beast::basic_flat_buffer<field_allocator<char>>;
constexpr std::size_t read_chunk = 8192;

// Every response the server writes says when it was made (RFC 9110 6.6.1), unless its handler
// said so already. The field's block comes from field_allocator's cache, as the others'.
inline void add_date(fields& f) {
  if (f.find(bhttp::field::date) == f.end()) f.set(bhttp::field::date, http_date_now());
}

namespace detail {

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

}  // namespace detail

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
  // Before the first suspension on I/O: attach(), and the watchdog starts (once).
  void watch() {
    if (!attached_) attach();
    if (!watched_) start_watchdog();
  }
  void start_watchdog();
  void arm_watchdog();
  void on_watchdog();
  // Only a deadline nearer than the one the watchdog waits for needs it woken; a later one is
  // picked up when it wakes. This keeps timer operations off the path of most requests.
  void set_deadline(clock_type::time_point when) {
    deadline_ = when;
    if (watched_ && when < armed_) timer_.cancel();
  }
  // `timeout` from now; a timeout of 0 is off (server_options): no deadline.
  static clock_type::time_point after(milliseconds timeout) {
    return timeout.count() <= 0 ? clock_type::time_point::max() : clock_type::now() + timeout;
  }
  asio::awaitable<void> serve();
  // The server's own answer to a request it refuses, then the lingering close (linger()).
  asio::awaitable<void> refuse(beast::http::status status, unsigned version);
  asio::awaitable<void> linger();
  // Bytes before a request line that RFC 9112 2.2 lets a server skip: false when there were
  // too many of them (refused), else true; buffer_ may then be empty or hold a lone CR.
  bool skip_empty_lines();
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
  static response internal_error(unsigned version);  // 500, closing the connection
  void close();
  void count_timeout();  // the watchdog is closing the connection: say which timeout passed

  int fd_;                                   // -1 once closed
  asio::generic::stream_protocol protocol_;  // for attach()
  bool attached_ = false;                    // socket() holds fd_ (else it is closed)
  detail::raw_socket raw_;                   // synchronous reads and writes on fd_
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
  bool watched_ = false;               // the watchdog runs
  unsigned empty_lines_ = 0;           // skipped before the request being read (skip_empty_lines)
  chunk_extension_budget extensions_;  // of the chunked request being read
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

}  // namespace handoff::http
