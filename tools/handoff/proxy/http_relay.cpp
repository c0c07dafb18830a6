#include "proxy/http_relay.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstring>
#include <memory>
#include <string_view>
#include <type_traits>
#include <vector>

#include "proxy/http_framing.hpp"
#include "proxy/relay_deadlines.hpp"
#include "proxy/retry.hpp"

namespace handoff::proxy {

namespace {

namespace beast = boost::beast;
using asio::redirect_error;
using asio::use_awaitable;
using clock_type = std::chrono::steady_clock;

constexpr std::size_t read_chunk = 16 * 1024;
constexpr auto linger_limit = std::chrono::seconds(2);
// The watchdog also notices router::closing() for idle connections at this pace.
constexpr auto max_tick = std::chrono::seconds(1);

// Room for one more read; a buffer full of an unfinished header or chunk line has none.
bool has_room(const beast::flat_buffer& b) { return b.max_size() - b.size() >= read_chunk; }

std::string_view view(const beast::flat_buffer& b) {
  const auto d = b.data();
  return {static_cast<const char*>(d.data()), d.size()};
}

std::string peer_address(const stream& s) {
  boost::system::error_code ec;
  const auto ep = s.remote_endpoint(ec);
  if (ec) return {};
  std::array<char, INET6_ADDRSTRLEN> text{};
  const auto* sa = ep.data();
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    if (::inet_ntop(AF_INET, &in->sin_addr, text.data(), text.size())) return text.data();
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (::inet_ntop(AF_INET6, &in6->sin6_addr, text.data(), text.size())) return text.data();
  }
  return {};  // a unix socket: no address to forward
}

using tls_stream = asio::ssl::stream<stream>;
template <class S>
constexpr bool is_tls = std::is_same_v<S, tls_stream>;

// The socket under a client stream: what cancel(), shutdown() and the addresses act on.
stream& socket_of(stream& s) { return s; }
stream& socket_of(tls_stream& s) { return s.next_layer(); }

// The end of what `from` sends: a TCP FIN, or a TLS close_notify (eof); a TLS peer that closed
// its TCP connection without close_notify (stream_truncated) has ended as well.
bool ended(const boost::system::error_code& ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
}

// What the relay answers itself. Bodies are empty, so the same text serves HEAD.
std::string_view canned(int status) {
  switch (status) {
    case 400:
      return "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n";
    case 408:
      return "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n";
    case 413:
      return "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n";
    case 431:
      return "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n";
    case 502:
      return "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n";
    case 503:
      return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n";
    default:
      return "HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n";
  }
}

// Why the request body could not be passed on (set by the body pump, read by the response
// side, which answers for it).
enum class body_failure { none, client_gone, refused, upstream_gone };

// Client is `stream` (plaintext) or `tls_stream` (--proxy https, whose handshake is the first
// phase of run()); the upstream side is plaintext either way.
template <class Client>
class http_connection final : public std::enable_shared_from_this<http_connection<Client>>,
                              public parking_lot::member {
 public:
  http_connection(Client client, std::shared_ptr<asio::ssl::context> tls, router& r,
                  std::size_t listener, const relay_options& o, relay_counters& c,
                  parking_lot* lot = nullptr, std::string_view buffered = {}, bool adopted = false)
      : lot_(lot),
        tls_(std::move(tls)),
        client_(std::move(client)),
        router_(r),
        listener_(listener),
        options_(o),
        counters_(c),
        address_(peer_address(socket_of(client_))),
        timer_(client_.get_executor()),
        task_done_(client_.get_executor()),
        gate_(client_.get_executor()),
        client_in_(std::max<std::size_t>(o.header_limit, buffered.size()) + read_chunk),
        upstream_in_(o.response_header_limit + read_chunk) {
    request_framing_.header_limit = o.header_limit;
    request_framing_.body_limit = o.body_limit;
    request_framing_.forwarded = o.forwarded;
    request_framing_.scheme = options_.scheme;
    request_framing_.client_address = address_;
    // Adopted from the image before (handover.hpp): its bytes come first, and it is a
    // keep-alive connection that has been served already, so it gets the idle timeout.
    if (!buffered.empty()) {
      const auto room = client_in_.prepare(buffered.size());
      std::memcpy(room.data(), buffered.data(), buffered.size());
      client_in_.commit(buffered.size());
    }
    if (adopted) served_ = 1;
    tick_ = relay_deadlines::tick(max_tick, o.header_timeout, o.idle_timeout, o.response_timeout);
    boost::system::error_code ec;
    const int family = socket_of(client_).local_endpoint(ec).protocol().family();
    if (!ec && (family == AF_INET || family == AF_INET6)) {
      // Responses leave as they are written, not when Nagle's algorithm lets them.
      const int one = 1;
      ::setsockopt(socket_of(client_).native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
  }

  // `self` keeps the connection alive for as long as the coroutine runs.
  asio::awaitable<void> run(std::shared_ptr<http_connection> self) {
    asio::co_spawn(client_.get_executor(), watchdog(self), asio::detached);
    if constexpr (is_tls<Client>) {
      // The handshake has the watchdog's deadline like any other wait: a client that sends
      // garbage fails it at once, one that stalls is cut at the deadline; either way only this
      // connection ends, and without a byte of HTTP or a close_notify.
      deadline(direction::client_read, options_.handshake_timeout);
      boost::system::error_code ec;
      co_await client_.async_handshake(asio::ssl::stream_base::server,
                                       redirect_error(use_awaitable, ec));
      deadlines_.clear(direction::client_read);
      if (ec) {
        ++counters_.tls_handshake_failures;
        socket_of(client_).close(ec);
        done_ = true;
        timer_.cancel();
        co_return;
      }
    }
    if (lot_ != nullptr) ticket_ = lot_->join(this);
    // GCC 12 miscompiles co_await in a loop or if condition: each result goes to a variable.
    for (;;) {
      const bool more = co_await serve_one();
      if (!more) break;
    }
    if (lot_ != nullptr) lot_->leave(ticket_);
    // Handed over: the socket is the next image's now; not a byte, not a FIN from us.
    if (!handed_) co_await close_client();
    done_ = true;
    timer_.cancel();
  }

  // ---- parking_lot::member (handover.hpp) --------------------------------------------------

  void parking_started() override {
    // Waiting for the next request or the rest of its header: that wait ends
    // (operation_aborted) and the relay parks. Anywhere else it parks when it reaches the next
    // request boundary.
    boost::system::error_code ignored;
    if (idle_ || header_wait_) socket_of(client_).cancel(ignored);
  }
  void resume() override {
    parked_ = false;
    gate_.cancel();
  }
  handed_client hand_over() override {
    handed_client h;
    if constexpr (!is_tls<Client>) {
      h.listener = listener_;
      h.buffered.assign(view(client_in_));
      client_in_.clear();
      boost::system::error_code ec;
      h.fd.reset(client_.release(ec));
    }
    handed_ = true;
    parked_ = false;
    gate_.cancel();
    return h;
  }

 private:
  // ---- deadlines -------------------------------------------------------------------------

  // Arms one direction's deadline (zero: none); the watchdog wakes for it if it is nearer than
  // the one it sleeps to.
  void deadline(direction which, clock_type::duration d) {
    deadlines_.set(which, d);
    if (deadlines_.nearest() < armed_) timer_.cancel();
  }

  // The parameter, copied into the frame, keeps the connection alive while this runs.
  asio::awaitable<void> watchdog(std::shared_ptr<http_connection> /*self*/) {
    boost::system::error_code ec;
    while (!done_) {
      // Waking at least every tick means a deadline set later is never nearer than the one
      // armed, so most requests touch no timer at all.
      armed_ = std::min(deadlines_.nearest(), clock_type::now() + tick_);
      timer_.expires_at(armed_);
      co_await timer_.async_wait(redirect_error(use_awaitable, ec));
      if (done_) break;
      const auto now = clock_type::now();
      // A socket's cancel() ends its waits in both directions: either one timing out ends
      // that side of the exchange, and the flags say which one it was.
      if (idle_ && router_.closing()) deadlines_.expire(direction::client_read);
      if (deadlines_.expire_passed(now, direction::client_read, direction::client_write) ||
          (idle_ && router_.closing()))
        socket_of(client_).cancel(ec);
      if (deadlines_.expire_passed(now, direction::upstream_read, direction::upstream_write) &&
          upstream_ != nullptr)
        upstream_->cancel(ec);
    }
  }

  // ---- one request -----------------------------------------------------------------------

  // A request boundary while the front parks its relays: wait to be resumed or handed over.
  // True when handed over.
  asio::awaitable<bool> park() {
    deadlines_.clear(direction::client_read);
    parked_ = true;
    lot_->park(this);
    boost::system::error_code ec;
    while (parked_) {
      gate_.expires_at(clock_type::time_point::max());
      co_await gate_.async_wait(redirect_error(use_awaitable, ec));
    }
    co_return handed_;
  }

  asio::awaitable<bool> serve_one() {
    boost::system::error_code ec;
    for (;;) {
      if (lot_ != nullptr && lot_->parking()) {
        const bool handed = co_await park();
        if (handed) co_return false;
      }
      if (client_in_.size() != 0) break;
      if (router_.closing()) co_return false;
      idle_ = true;
      deadline(direction::client_read,
               served_ == 0 ? options_.header_timeout : options_.idle_timeout);
      const auto n = co_await client_.async_read_some(client_in_.prepare(read_chunk),
                                                      redirect_error(use_awaitable, ec));
      idle_ = false;
      // Cut by parking_started(): nothing was read, the relay parks.
      if (ec == asio::error::operation_aborted && !deadlines_.timed_out(direction::client_read) &&
          lot_ != nullptr && lot_->parking())
        continue;
      if (ec) co_return false;  // the client closed, or stayed idle too long: nothing lost
      client_in_.commit(n);
      break;
    }

    deadline(direction::client_read, options_.header_timeout);
    request_out_.clear();
    request_.emplace(request_framing_, request_out_, request_fields_);
    for (;;) {
      const auto used = request_->feed(view(client_in_), ec);
      client_in_.consume(used);
      if (request_->is_header_done() && (!ec || ec == bhttp::error::need_more)) break;
      if (ec != bhttp::error::need_more) {
        co_await refuse(request_error(ec));
        co_return false;
      }
      if (!has_room(client_in_)) {
        co_await refuse(refusal::header_too_large);
        co_return false;
      }
      // The rest of a header still to come: none of it is used yet (the framer takes a header
      // only whole), so the relay can park here too, with the part it has.
      if (lot_ != nullptr && lot_->parking()) {
        const bool handed = co_await park();
        if (handed) co_return false;
        deadline(direction::client_read, options_.header_timeout);
      }
      header_wait_ = true;
      const auto n = co_await client_.async_read_some(client_in_.prepare(read_chunk),
                                                      redirect_error(use_awaitable, ec));
      header_wait_ = false;
      if (ec == asio::error::operation_aborted && !deadlines_.timed_out(direction::client_read) &&
          lot_ != nullptr && lot_->parking())
        continue;  // cut by parking_started(): parks above
      if (ec) {
        // A header cut by the deadline is answered; one cut by the client is not.
        if (deadlines_.timed_out(direction::client_read)) {
          ++counters_.request_timeout;
          co_await send_canned(408, false);
        }
        co_return false;
      }
      client_in_.commit(n);
    }
    deadlines_.clear(direction::client_read);  // the body pump sets its own
    ++counters_.requests;
    ++served_;
    const bool client_keep_alive = request_->keep_alive();

    auto acquired = co_await router_.acquire(listener_, connection_source::pool_or_new);
    if (!acquired) co_return co_await unavailable(client_keep_alive);
    auto outcome = co_await exchange(*acquired, client_keep_alive);
    if (outcome == exchange_outcome::send_again) {
      // Once, on a new connection (retry.hpp): exchange() never sends again what a new one lost.
      ++counters_.retried;
      acquired = co_await router_.acquire(listener_, connection_source::new_only);
      if (!acquired) co_return co_await unavailable(client_keep_alive);
      outcome = co_await exchange(*acquired, client_keep_alive);
    }
    co_return outcome == exchange_outcome::keep_open;
  }

  asio::awaitable<bool> unavailable(bool client_keep_alive) {
    ++counters_.unavailable;
    // With a body still to come the connection cannot be reused: its end is unknown to us
    // without reading it all.
    const bool keep = client_keep_alive && request_->is_done() && !router_.closing();
    co_await send_canned(503, keep);
    co_return keep;
  }

  enum class exchange_outcome { keep_open, close, send_again };

  // Sends the request on `conn` and its response back, or gives it up for another connection
  // when `conn` was a pooled one that lost it (retry.hpp).
  asio::awaitable<exchange_outcome> exchange(upstream_connection& conn, bool client_keep_alive) {
    boost::system::error_code ec;
    upstream_ = &conn.socket;
    upstream_in_.clear();
    failure_ = body_failure::none;
    response_sent_ = false;
    response_over_ = false;
    response_framing_ = {};
    response_framing_.header_limit = options_.response_header_limit;
    response_framing_.head = request_->head();
    response_framing_.connect = request_->connect();
    response_framing_.upgrade = request_->wants_upgrade();
    response_framing_.client_version = request_->http_version();

    record_ = {};
    record_.reused = conn.reused;
    // request_out_ is kept for a retry, unless the body pump takes it over.
    deadline(direction::upstream_write, options_.response_timeout);
    record_.accepted = co_await asio::async_write(*upstream_, asio::buffer(request_out_),
                                                  redirect_error(use_awaitable, ec));
    deadlines_.clear(direction::upstream_write);
    // A failed write still lets us read what the upstream said (it may have answered and
    // closed); the response side decides between that answer and a 502.
    if (ec) failure_ = body_failure::upstream_gone;
    if (!ec && !request_->is_done()) {
      request_out_.clear();
      record_.held = request_held::streamed;
      start_task(&http_connection::pump_body);
    }

    const auto outcome = co_await relay_response(client_keep_alive);
    co_await stop_task();
    upstream_ = nullptr;
    if (outcome == response_outcome::send_again) {
      router_.release(std::move(conn), false);
      co_return exchange_outcome::send_again;
    }
    const bool reusable = outcome == response_outcome::complete && request_->is_done() &&
                          failure_ == body_failure::none && response_->upstream_reusable() &&
                          upstream_in_.size() == 0;
    if (outcome == response_outcome::tunnel) {
      ++counters_.tunnels;
      co_await tunnel(conn);
      router_.release(std::move(conn), false);
      co_return exchange_outcome::close;
    }
    router_.release(std::move(conn), reusable);
    const bool keep = outcome == response_outcome::complete && response_->client_keep_alive() &&
                      request_->is_done() && failure_ == body_failure::none;
    co_return keep ? exchange_outcome::keep_open : exchange_outcome::close;
  }

  enum class response_outcome { complete, failed, tunnel, send_again };

  asio::awaitable<response_outcome> relay_response(bool client_keep_alive) {
    boost::system::error_code ec;
    response_out_.clear();
    response_.emplace(response_framing_, response_out_, response_fields_);
    bool need_read = true;
    for (;;) {
      if (need_read) {
        if (!has_room(upstream_in_)) co_return co_await fail_response(false);
        // The request could not be written within the deadline: the app is not reading it.
        if (deadlines_.timed_out(direction::upstream_write)) co_return co_await fail_response(true);
        deadline(direction::upstream_read, options_.response_timeout);
        const auto n = co_await upstream_->async_read_some(upstream_in_.prepare(read_chunk),
                                                           redirect_error(use_awaitable, ec));
        deadlines_.clear(direction::upstream_read);
        const bool timed_out = deadlines_.timed_out(direction::upstream_read) ||
                               deadlines_.timed_out(direction::upstream_write);
        if (ec == asio::error::eof && response_->is_header_done() && response_->need_eof() &&
            failure_ == body_failure::none) {
          response_->put_eof(ec);  // a body delimited by the upstream's close ends here
          if (!ec) {
            const bool written = co_await write_response_out();
            if (written) co_return response_outcome::complete;
            co_return response_outcome::failed;
          }
          co_return co_await fail_response(false);
        }
        // A pooled connection lost the request (retry.hpp); not when the client side failed.
        if (ec && record_.lost(request_->method(), ec) &&
            (failure_ == body_failure::none || failure_ == body_failure::upstream_gone))
          co_return response_outcome::send_again;
        if (ec) co_return co_await fail_response(timed_out);
        record_.answer_started = true;
        upstream_in_.commit(n);
      }
      if (!response_->is_header_done()) {
        response_->client_keep_alive(client_keep_alive && request_->is_done() &&
                                     failure_ == body_failure::none && !router_.closing());
      }
      const auto used = response_->feed(view(upstream_in_), ec);
      upstream_in_.consume(used);
      if (ec && ec != bhttp::error::need_more) co_return co_await fail_response(false);
      const bool interim = response_->is_header_done() && response_->interim();
      if (!response_out_.empty()) {
        const bool written = co_await write_response_out();
        if (!written) co_return response_outcome::failed;
        if (!interim) response_sent_ = true;
      }
      if (response_->is_done()) {
        if (response_->opens_tunnel()) co_return response_outcome::tunnel;
        if (!interim) co_return response_outcome::complete;
        // 1xx: the final response follows, perhaps already in the buffer.
        response_.emplace(response_framing_, response_out_, response_fields_);
        need_read = upstream_in_.size() == 0;
        continue;
      }
      need_read = true;
    }
  }

  asio::awaitable<bool> write_response_out() {
    boost::system::error_code ec;
    deadline(direction::client_write, options_.idle_timeout);
    co_await asio::async_write(client_, asio::buffer(response_out_),
                               redirect_error(use_awaitable, ec));
    response_out_.clear();
    deadlines_.clear(direction::client_write);
    if (ec) ++counters_.bad_gateway;  // the client went away or stopped reading mid-response
    co_return !ec;
  }

  // The response could not be completed: answer for the request if the client has no byte of
  // a response yet, else close (a partial response must not look complete).
  asio::awaitable<response_outcome> fail_response(bool timed_out) {
    co_await stop_task();
    if (response_sent_) {
      ++counters_.bad_gateway;
      co_return response_outcome::failed;
    }
    switch (failure_) {
      case body_failure::client_gone:
        break;
      case body_failure::refused:
        co_await refuse(body_refusal_);
        break;
      case body_failure::none:
      case body_failure::upstream_gone:
        if (timed_out) {
          ++counters_.gateway_timeout;
          co_await send_canned(504, false);
        } else {
          ++counters_.bad_gateway;
          co_await send_canned(502, false);
        }
        break;
    }
    co_return response_outcome::failed;
  }

  // ---- the request body, concurrently with the response ------------------------------------

  asio::awaitable<void> pump_body() {
    boost::system::error_code ec;
    while (!request_->is_done() && !response_over_) {
      if (!has_room(client_in_)) {
        body_refusal_ = refusal::bad_request;  // a chunk or trailer line longer than we take
        stop_upstream(body_failure::refused);
        co_return;
      }
      deadline(direction::client_read, options_.idle_timeout);
      const auto n = co_await client_.async_read_some(client_in_.prepare(read_chunk),
                                                      redirect_error(use_awaitable, ec));
      deadlines_.clear(direction::client_read);
      if (ec || response_over_) {
        if (!response_over_) stop_upstream(body_failure::client_gone);
        co_return;
      }
      client_in_.commit(n);
      const auto used = request_->feed(view(client_in_), ec);
      client_in_.consume(used);
      if (ec && ec != bhttp::error::need_more) {
        body_refusal_ = request_error(ec);
        stop_upstream(body_failure::refused);
        co_return;
      }
      if (!request_out_.empty()) {
        deadline(direction::upstream_write, options_.response_timeout);
        co_await asio::async_write(*upstream_, asio::buffer(request_out_),
                                   redirect_error(use_awaitable, ec));
        deadlines_.clear(direction::upstream_write);
        request_out_.clear();
        if (ec) {
          // The response side sees the upstream's end too; it may still read an answer.
          failure_ = body_failure::upstream_gone;
          co_return;
        }
      }
    }
  }

  // The request cannot be completed upstream: end the upstream connection so that the
  // response side stops waiting for an answer to it.
  void stop_upstream(body_failure why) {
    failure_ = why;
    boost::system::error_code ignored;
    if (upstream_ == nullptr) return;
    upstream_->shutdown(asio::socket_base::shutdown_both, ignored);
    upstream_->cancel(ignored);
  }

  // ---- tunnels ---------------------------------------------------------------------------

  asio::awaitable<void> tunnel(upstream_connection& conn) {
    tunnel_upstream_ = &conn.socket;
    start_task(&http_connection::tunnel_client_to_upstream);
    co_await copy(*tunnel_upstream_, upstream_in_, client_);
    co_await wait_task();
    tunnel_upstream_ = nullptr;
  }

  asio::awaitable<void> tunnel_client_to_upstream() {
    co_await copy(client_, client_in_, *tunnel_upstream_);
  }

  // Bytes from `from` to `to` (starting with what `buffer` holds already) until `from` ends;
  // then `to` is told no more comes (or, after an error, both are shut). A TLS client has no
  // half-close of its own: when the upstream ends, the client's reads are cancelled instead,
  // so that the other direction ends too and close_client() sends close_notify.
  template <class From, class To>
  static asio::awaitable<void> copy(From& from, beast::flat_buffer& buffer, To& to) {
    boost::system::error_code ec;
    for (;;) {
      if (buffer.size() > 0) {
        co_await asio::async_write(to, buffer.data(), redirect_error(use_awaitable, ec));
        buffer.consume(buffer.size());
        if (ec) break;
      }
      const auto n = co_await from.async_read_some(buffer.prepare(read_chunk),
                                                   redirect_error(use_awaitable, ec));
      if (ec) break;
      buffer.commit(n);
    }
    boost::system::error_code ignored;
    if (ended(ec)) {
      if constexpr (is_tls<To>)
        socket_of(to).cancel(ignored);
      else
        socket_of(to).shutdown(asio::socket_base::shutdown_send, ignored);
    } else if (is_tls<From> && ec == asio::error::operation_aborted) {
      // Cancelled by the other direction's end (above): the client's close comes after.
      socket_of(to).shutdown(asio::socket_base::shutdown_send, ignored);
    } else {
      socket_of(from).shutdown(asio::socket_base::shutdown_both, ignored);
      socket_of(to).shutdown(asio::socket_base::shutdown_both, ignored);
    }
  }

  // ---- a second coroutine per connection (request body, or one side of a tunnel) ----------

  void start_task(asio::awaitable<void> (http_connection::*task)()) {
    task_running_ = true;
    asio::co_spawn(client_.get_executor(), (this->*task)(),
                   [self = this->shared_from_this()](const std::exception_ptr&) {
                     self->task_running_ = false;
                     self->task_done_.cancel();
                   });
  }

  // The response is over (complete or not) while the request body is still coming: stop
  // reading it; the client connection closes after this exchange.
  asio::awaitable<void> stop_task() {
    response_over_ = true;
    if (task_running_) {
      // The pump waits either for the client's bytes or for the upstream to take them.
      boost::system::error_code ignored;
      socket_of(client_).cancel(ignored);
      if (upstream_ != nullptr) upstream_->cancel(ignored);
      co_await wait_task();
    }
  }

  asio::awaitable<void> wait_task() {
    boost::system::error_code ec;
    while (task_running_) {
      task_done_.expires_at(clock_type::time_point::max());
      co_await task_done_.async_wait(redirect_error(use_awaitable, ec));
    }
  }

  // ---- answers of our own ------------------------------------------------------------------

  asio::awaitable<void> refuse(refusal why) {
    switch (why) {
      case refusal::bad_request:
        ++counters_.bad_request;
        co_await send_canned(400, false);
        break;
      case refusal::header_too_large:
        ++counters_.header_too_large;
        co_await send_canned(431, false);
        break;
      case refusal::body_too_large:
        ++counters_.too_large;
        co_await send_canned(413, false);
        break;
    }
  }

  asio::awaitable<void> send_canned(int status, bool keep_alive) {
    auto& text = canned_;
    text.assign(canned(status));
    text.append(keep_alive ? "\r\n" : "Connection: close\r\n\r\n");
    boost::system::error_code ec;
    deadline(direction::client_write, options_.idle_timeout);
    co_await asio::async_write(client_, asio::buffer(text), redirect_error(use_awaitable, ec));
    deadlines_.clear(direction::client_write);
  }

  // Half-close, then read until the client closes too (bounded): closing with unread bytes
  // would reset the connection and could destroy the last response before the client read it.
  // TLS: close_notify first, after the last response, then the same bounded wait for the
  // client's own close_notify (async_shutdown reads until it comes, discarding anything else).
  asio::awaitable<void> close_client() {
    boost::system::error_code ec;
    const auto linger = relay_deadlines::tick(linger_limit, options_.header_timeout);
    if constexpr (is_tls<Client>) {
      deadline(direction::client_read, linger);
      co_await client_.async_shutdown(redirect_error(use_awaitable, ec));
    } else {
      client_.shutdown(asio::socket_base::shutdown_send, ec);
      if (!ec) {
        deadline(direction::client_read, linger);
        while (!ec) {
          client_in_.clear();
          const auto n = co_await client_.async_read_some(client_in_.prepare(read_chunk),
                                                          redirect_error(use_awaitable, ec));
          client_in_.commit(n);
        }
      }
    }
    socket_of(client_).close(ec);
  }

  parking_lot* lot_;  // null: never parked (https)
  parking_lot::ticket ticket_{};
  bool parked_ = false;
  bool handed_ = false;
  std::shared_ptr<asio::ssl::context> tls_;  // TLS: what client_'s SSL object was made from
  Client client_;
  router& router_;
  std::size_t listener_;
  const relay_options& options_;
  relay_counters& counters_;
  std::string address_;
  request_framing request_framing_;
  response_framing response_framing_;

  asio::steady_timer timer_;
  asio::steady_timer task_done_;
  asio::steady_timer gate_;  // a parked relay waits on it
  clock_type::duration tick_{};
  clock_type::time_point armed_ = clock_type::time_point::max();
  relay_deadlines deadlines_;
  bool idle_ = false;
  bool header_wait_ = false;  // reading the rest of a request header
  bool done_ = false;
  bool task_running_ = false;

  // Reused from one request to the next.
  beast::flat_buffer client_in_;
  beast::flat_buffer upstream_in_;
  std::string request_out_;
  std::string response_out_;
  std::string canned_;
  std::vector<field_ref> request_fields_;
  std::vector<field_ref> response_fields_;
  std::optional<request_framer> request_;
  std::optional<response_framer> response_;

  stream* upstream_ = nullptr;
  stream* tunnel_upstream_ = nullptr;
  body_failure failure_ = body_failure::none;
  refusal body_refusal_ = refusal::bad_request;
  exchange_record record_;  // for a retry (retry.hpp)
  bool response_sent_ = false;
  bool response_over_ = false;
  std::uint64_t served_ = 0;
};

}  // namespace

asio::awaitable<void> relay_http(stream client, router& r, std::size_t listener,
                                 const relay_options& options, relay_counters& counters,
                                 parking_lot* lot, std::string_view buffered, bool adopted) {
  auto connection = std::make_shared<http_connection<stream>>(
      std::move(client), nullptr, r, listener, options, counters, lot, buffered, adopted);
  auto* raw = connection.get();
  return raw->run(std::move(connection));
}

asio::awaitable<void> relay_https(stream client, std::shared_ptr<asio::ssl::context> tls, router& r,
                                  std::size_t listener, const relay_options& options,
                                  relay_counters& counters) {
  tls_stream s(std::move(client), *tls);
  auto connection = std::make_shared<http_connection<tls_stream>>(std::move(s), std::move(tls), r,
                                                                  listener, options, counters);
  auto* raw = connection.get();
  return raw->run(std::move(connection));
}

}  // namespace handoff::proxy
