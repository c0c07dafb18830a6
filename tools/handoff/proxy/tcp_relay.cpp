#include "proxy/tcp_relay.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "handoff/fd.hpp"

namespace handoff::proxy {

namespace {

using namespace asio::experimental::awaitable_operators;
constexpr std::size_t chunk = 64 * 1024;

void cut(stream& a, stream& b) {
  ::shutdown(a.native_handle(), SHUT_RDWR);
  ::shutdown(b.native_handle(), SHUT_RDWR);
}

// One direction: `from` to `to` through a pipe, until `from` ends (passed on as a
// half-close) or fails (both connections are shut, which ends the other direction too).
asio::awaitable<void> pump(stream& from, stream& to) {
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
    cut(from, to);
    co_return;
  }
  const unique_fd out(ends[0]), in(ends[1]);
  boost::system::error_code ec;
  for (;;) {
    const ssize_t n = ::splice(from.native_handle(), nullptr, in.get(), nullptr, chunk,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n == 0) {
      ::shutdown(to.native_handle(), SHUT_WR);
      co_return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        co_await from.async_wait(asio::socket_base::wait_read,
                                 asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        continue;
      }
      break;
    }
    // The pipe is emptied before the next read, so a full pipe never blocks the reading side.
    auto left = static_cast<std::size_t>(n);
    while (left > 0) {
      const ssize_t m = ::splice(out.get(), nullptr, to.native_handle(), nullptr, left,
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        left -= static_cast<std::size_t>(m);
        continue;
      }
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno == EAGAIN) {
        co_await to.async_wait(asio::socket_base::wait_write,
                               asio::redirect_error(asio::use_awaitable, ec));
        if (!ec) continue;
      }
      cut(from, to);
      co_return;
    }
  }
  cut(from, to);
}

}  // namespace

asio::awaitable<void> relay_tcp(stream client, upstream_router& r, std::size_t listener,
                                tcp_counters& counters) {
  auto upstream = co_await r.acquire(listener);
  if (!upstream) {
    // No generation to take it: the client sees the connection closed, not reset.
    ++counters.unavailable;
    co_return;
  }
  ++counters.connections;
  r.attach_client(*upstream, client.native_handle());
  co_await (pump(client, upstream->socket) && pump(upstream->socket, client));
  r.release(std::move(*upstream), false);
}

}  // namespace handoff::proxy
