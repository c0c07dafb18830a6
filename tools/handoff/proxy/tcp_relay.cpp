#include "proxy/tcp_relay.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "handoff/fd.hpp"

namespace handoff::proxy {

namespace {

using namespace asio::experimental::awaitable_operators;
constexpr std::size_t chunk = 64 * 1024;

class tcp_relay final : public parking_lot::member {
 public:
  tcp_relay(stream& client, upstream_connection& upstream, std::size_t listener, parking_lot* lot,
            bool client_done, bool upstream_done)
      : client_(client),
        upstream_(upstream),
        listener_(listener),
        lot_(lot),
        gate_(client.get_executor(), asio::steady_timer::time_point::max()) {
    sides_[0].done = sides_[0].idle = client_done;
    sides_[1].done = sides_[1].idle = upstream_done;
  }

  // Both directions until both end; true when handed over (the sockets are no longer ours).
  asio::awaitable<bool> run() {
    if (lot_ != nullptr) ticket_ = lot_->join(this);
    co_await (pump(0) && pump(1));
    if (lot_ != nullptr) lot_->leave(ticket_);
    co_return handed_;
  }

  // ---- parking_lot::member (handover.hpp) ------------------------------------------------

  void parking_started() override { maybe_park(); }
  void resume() override {
    parked_ = false;
    gate_.cancel();
  }
  handed_client hand_over() override {
    handed_client h;
    h.listener = listener_;
    h.generation = upstream_.generation;
    h.client_done = sides_[0].done;
    h.upstream_done = sides_[1].done;
    boost::system::error_code ignored;
    h.fd.reset(client_.release(ignored));
    h.upstream.reset(upstream_.socket.release(ignored));
    handed_ = true;
    parked_ = false;
    gate_.cancel();
    return h;
  }

 private:
  struct side {
    bool idle = false;  // nothing of this direction is in user space or its pipe
    bool done = false;  // it ended (passed on as a half-close) or failed
  };

  // Both connections end: the other direction sees its socket shut (a direction held while
  // parking is woken to see it).
  void cut() {
    ::shutdown(client_.native_handle(), SHUT_RDWR);
    ::shutdown(upstream_.socket.native_handle(), SHUT_RDWR);
    cut_ = true;
    gate_.cancel();
  }

  bool holding() const { return lot_ != nullptr && lot_->parking() && !handed_; }

  // Both directions idle, at least one of them still open (a relay whose both ended is about
  // to end by itself): nothing of the stream is ours to lose, the relay parks.
  void maybe_park() {
    if (!holding() || parked_) return;
    if (!sides_[0].idle || !sides_[1].idle || (sides_[0].done && sides_[1].done)) return;
    parked_ = true;
    lot_->park(this);
  }

  // Direction 0: client to app; 1: app to client. Reads `from` into a pipe and empties the
  // pipe into `to` before reading again, so a full pipe never blocks the reading side, and a
  // direction that waits to read holds no byte.
  asio::awaitable<void> pump(int direction) {
    side& me = sides_[static_cast<std::size_t>(direction)];
    stream& from = direction == 0 ? client_ : upstream_.socket;
    stream& to = direction == 0 ? upstream_.socket : client_;
    if (me.done) co_return;
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
      cut();
      me.done = me.idle = true;
      co_return;
    }
    const unique_fd out(ends[0]), in(ends[1]);
    boost::system::error_code ec;
    for (;;) {
      // Parking: read nothing more, so that both directions become idle together.
      while (holding() && !cut_) {
        me.idle = true;
        maybe_park();
        co_await gate_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      if (handed_) co_return;
      me.idle = false;
      const ssize_t n = ::splice(from.native_handle(), nullptr, in.get(), nullptr, chunk,
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n == 0) {
        ::shutdown(to.native_handle(), SHUT_WR);
        me.done = me.idle = true;
        maybe_park();
        co_return;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) break;
        me.idle = true;
        maybe_park();
        co_await from.async_wait(asio::socket_base::wait_read,
                                 asio::redirect_error(asio::use_awaitable, ec));
        if (handed_) co_return;  // the wait ended by hand_over()'s release of the socket
        if (ec) break;
        continue;
      }
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
        break;
      }
      if (left > 0) break;
    }
    cut();
    me.done = me.idle = true;
  }

  stream& client_;
  upstream_connection& upstream_;
  std::size_t listener_;
  parking_lot* lot_;
  parking_lot::ticket ticket_{};
  std::array<side, 2> sides_{};
  bool parked_ = false, handed_ = false, cut_ = false;
  asio::steady_timer gate_;  // an idle direction waits on it while parking
};

}  // namespace

asio::awaitable<void> relay_tcp(stream client, upstream_router& r, std::size_t listener,
                                tcp_counters& counters, parking_lot* lot) {
  auto upstream = co_await r.acquire(listener, connection_source::pool_or_new);
  if (!upstream) {
    // No generation to take it: the client sees the connection closed, not reset.
    ++counters.unavailable;
    co_return;
  }
  ++counters.connections;
  co_await resume_tcp(std::move(client), std::move(*upstream), r, listener, false, false, lot);
}

asio::awaitable<void> resume_tcp(stream client, upstream_connection upstream, upstream_router& r,
                                 std::size_t listener, bool client_done, bool upstream_done,
                                 parking_lot* lot) {
  r.attach_client(upstream, client.native_handle());
  const int upstream_fd = upstream.socket.native_handle();  // released if handed over
  tcp_relay relay(client, upstream, listener, lot, client_done, upstream_done);
  const bool handed = co_await relay.run();
  // Handed over: the connection is the next image's; it leaves our counts without a drain
  // report, which would let the supervisor stop a generation whose relay carries on.
  if (handed)
    r.disown(upstream.generation, upstream_fd);
  else
    r.release(std::move(upstream), false);
}

}  // namespace handoff::proxy
