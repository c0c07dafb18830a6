// Internal: a plaintext connection's read of its next request, which waits for readiness the way
// nginx does, and still sees a FIN that came with the last bytes.
//
// Asio's own read (async_read_some) first tries recv(2) at once ("speculatively") unless its
// reactor has learned that the socket is empty; and Asio 1.81 learns that only from a read of
// nothing (the end of the stream). A keep-alive client sends its next request only after it has
// the response, so the speculative recv right after a response nearly always finds nothing
// (EAGAIN): one wasted system call per request. Asio's non-speculative wait (async_wait) costs
// an epoll_ctl(EPOLL_CTL_MOD) instead.
//
// This read is an operation of Asio's own reactor (the epoll reactor of the socket's io_context,
// which Asio 1.81 builds on Linux) that answers "exhausted" when the kernel says the socket has
// nothing left: the reactor then waits for the next edge-triggered EPOLLIN before it tries again.
// "Nothing left" is the kernel's word, not a guess from a short read: with TCP_INQ set, each
// recvmsg(2) reports the bytes still queued, and a FIN still to be read counts as one (the
// kernel's tcp_inq_hint does that on purpose). A short read alone would not do: a request and
// the FIN of a client that shut down right after it arrive before the read, one read returns
// the request, short, the FIN stays behind it, and no later epoll edge tells of it (nginx knows
// from EPOLLRDHUP in the event, which Asio neither asks for nor shows an operation). Without
// TCP_INQ (a unix socket) only a read of nothing is "exhausted", as in Asio's own read. Any byte
// that arrives after the read raises an edge, so nothing is left waiting unseen. Everything else
// is the reactor's: the queue of operations, cancellation by close(), the end of the io_context.
//
// One operation object per connection is reused for each read (one read at a time), so a read
// allocates nothing beyond the completion handler, which comes from Asio's recycling allocator.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/basic_stream_socket.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/version.hpp>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

namespace handoff::http {

namespace asio = boost::asio;

// What this relies on (reactor_op's status, epoll_reactor::start_op and its try_speculative_
// rule, the socket's reactor_data_) is Asio's inside, as of Boost 1.81: a build with another
// Boost stops here rather than at a confusing error, or worse, none.
#if BOOST_VERSION != 108100
#error "idle_read.hpp is written against Asio's internals in Boost 1.81: re-check them first"
#endif
#if !defined(BOOST_ASIO_HAS_EPOLL) || defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#error "idle_read.hpp needs Asio's epoll reactor"
#endif

// The connection's socket: Asio's, with access to its reactor registration for idle_read.
class reactor_socket : public asio::basic_stream_socket<asio::generic::stream_protocol,
                                                        asio::io_context::executor_type> {
 public:
  using base =
      asio::basic_stream_socket<asio::generic::stream_protocol, asio::io_context::executor_type>;
  using base::base;

  asio::detail::reactor::per_descriptor_data& reactor_data() noexcept {
    return impl_.get_implementation().reactor_data_;
  }
  // The reactor that every socket of this io_context is registered with (a service of it).
  asio::detail::reactor& reactor() {
    return asio::use_service<asio::detail::reactor>(
        asio::query(get_executor(), asio::execution::context));
  }
};

class idle_read : private asio::detail::reactor_op {
 public:
  using signature = void(boost::system::error_code, std::size_t);

  idle_read() : reactor_op(boost::system::error_code(), &do_perform, &do_complete) {}
  idle_read(const idle_read&) = delete;
  idle_read& operator=(const idle_read&) = delete;

  // Reads into `buffer` once the socket has bytes (at once when the reactor has not seen it
  // emptied since its last event). `reactor`: socket.reactor(), cached by the caller (looking up
  // a service takes a lock). One read at a time per object.
  template <class Token>
  auto async_read(reactor_socket& socket, asio::detail::reactor& reactor,
                  asio::mutable_buffer buffer, Token&& token) {
    return asio::async_initiate<Token, signature>(
        [this, &socket, &reactor, buffer](auto completion) {
          start(socket, reactor, buffer, std::move(completion));
        },
        token);
  }

 private:
  void start(reactor_socket& socket, asio::detail::reactor& reactor, asio::mutable_buffer buffer,
             asio::any_completion_handler<signature> completion) {
    handler_.swap(completion);  // not operator=: Asio 1.81's move assignment copies itself forever
    fd_ = socket.native_handle();
    if (!probed_) {  // once per connection: TCP says what is left after each read, else nothing
      probed_ = true;
      const int one = 1;
      inq_ = ::setsockopt(fd_, IPPROTO_TCP, TCP_INQ, &one, sizeof one) == 0;
    }
    buffer_ = buffer;
    ec_ = {};
    bytes_transferred_ = 0;
    cancellation_key_ = nullptr;
    // A closed socket has no reactor data: the reactor completes the read with bad_descriptor.
    reactor.start_op(asio::detail::reactor::read_op, fd_, socket.reactor_data(), this,
                     /*is_continuation=*/false, /*allow_speculative=*/true);
  }

  static status do_perform(reactor_op* base) {
    auto* self = static_cast<idle_read*>(base);
    iovec vec{self->buffer_.data(), self->buffer_.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr message{};
    message.msg_iov = &vec;
    message.msg_iovlen = 1;
    for (;;) {
      message.msg_control = self->inq_ ? control : nullptr;
      message.msg_controllen = self->inq_ ? sizeof control : 0;
      // MSG_DONTWAIT: this read never blocks, whether or not Asio has made the socket
      // non-blocking yet (it does so at the first operation of its own that would wait).
      const ssize_t n = ::recvmsg(self->fd_, &message, MSG_DONTWAIT);
      if (n > 0) {
        self->bytes_transferred_ = static_cast<std::size_t>(n);
        return left_in_queue(message) == 0 ? done_and_exhausted : done;
      }
      if (n == 0) {
        self->ec_ = asio::error::eof;
        return done_and_exhausted;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return not_done;
      self->ec_ = boost::system::error_code(errno, asio::error::get_system_category());
      return done;
    }
  }

  // What the kernel says is still queued after a read (TCP_INQ; a FIN counts as 1), or -1 when
  // it says nothing (not TCP): then more may be there, and the reactor tries again at once.
  static int left_in_queue(msghdr& message) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
      if (c->cmsg_level == IPPROTO_TCP && c->cmsg_type == TCP_CM_INQ) {
        int left = 0;
        std::memcpy(&left, CMSG_DATA(c), sizeof left);
        return left;
      }
    }
    return -1;
  }

  // owner null: the io_context is being destroyed with the read pending; the handler (and the
  // coroutine it holds) is destroyed without being called. Everything is taken off the object
  // first, since the handler may destroy the connection that holds it, or start the next read.
  static void do_complete(void* owner, asio::detail::operation* base,
                          const boost::system::error_code& /*result_ec*/, std::size_t) {
    auto* self = static_cast<idle_read*>(base);
    auto completion = std::move(self->handler_);
    const auto ec = self->ec_;
    const auto n = self->bytes_transferred_;
    if (owner) std::move(completion)(ec, n);
  }

  int fd_ = -1;
  bool probed_ = false;  // TCP_INQ tried on fd_
  bool inq_ = false;     // and set: each read reports what is left
  asio::mutable_buffer buffer_;
  asio::any_completion_handler<signature> handler_;
};

}  // namespace handoff::http
