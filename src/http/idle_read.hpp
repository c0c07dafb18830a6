// Internal: a plaintext connection's read of its next request, which waits for readiness the way
// nginx does.
//
// Asio's own read (async_read_some) first tries recv(2) at once ("speculatively") unless its
// reactor has learned that the socket is empty; and Asio 1.81 learns that only from a read of
// nothing (the end of the stream). A keep-alive client sends its next request only after it has
// the response, so the speculative recv right after a response nearly always finds nothing
// (EAGAIN): one wasted system call per request, measured at 0.77 per request under wrk. Asio's
// non-speculative wait (async_wait) costs an epoll_ctl(EPOLL_CTL_MOD) instead.
//
// This read is an operation of Asio's own reactor (the epoll reactor of the socket's io_context,
// which Asio 1.81 builds on Linux) that answers "exhausted" when recv returns less than asked:
// the socket's queue was emptied, so the reactor waits for the next edge-triggered EPOLLIN
// before it tries again (nginx's rule: a short read clears `ready`). Any byte that arrives after
// that recv raises that event, so nothing can be left waiting unseen. Everything else is the
// reactor's: the queue of operations, cancellation by close(), the end of the io_context.
//
// One operation object per connection is reused for each read (one read at a time), so a read
// allocates nothing beyond the completion handler, which comes from Asio's recycling allocator.
#pragma once

#include <sys/socket.h>

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
    for (;;) {
      const ssize_t n = ::recv(self->fd_, self->buffer_.data(), self->buffer_.size(), 0);
      if (n > 0) {
        self->bytes_transferred_ = static_cast<std::size_t>(n);
        return self->bytes_transferred_ < self->buffer_.size() ? done_and_exhausted : done;
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
  asio::mutable_buffer buffer_;
  asio::any_completion_handler<signature> handler_;
};

}  // namespace handoff::http
