// When the HTTP relay (http_relay.hpp) sends a request a second time: a pooled upstream
// connection that the app closed as the request was written (its keep-alive timeout crossing our
// reuse) lost it, and the request goes again, once, on a new connection.
//
// The rule, as Go's Transport and HAProxy's `retry-on conn-failure empty-response` draw it:
// - Only a reused (pooled) connection's loss is retried: a new connection that ends before its
//   answer is an app that failed the request, and that is answered (502).
// - Only an end before any byte of the answer: EOF, ECONNRESET or EPIPE. A timeout is not one
//   (the app may be working on it), nor is anything after the first byte of a response.
// - "Taken" means accepted by the kernel: a write that returned bytes put them in the socket's
//   buffer, and nothing on our side can tell whether the app read them before it closed (an
//   RST proves only that something was unread; FIN after a read is the same as FIN before).
//   So a request of which the kernel took no byte (the first write failed: the peer was gone
//   already) goes again whatever its method; a request of which it took any byte goes again
//   only if it is idempotent (RFC 9110 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), for
//   running it twice is the same as running it once.
// - Only what we still hold is sent again: the header and the part of the body that came with
//   it (request_out_, bounded by the relay's header buffer). A body still arriving from the
//   client when the request left was streamed, not kept (memory per connection stays bounded,
//   and a large upload is not buffered for a retry that is rare), so such a request goes again
//   only when the kernel took nothing of it (then nothing of the body was read from the client).
#pragma once

#include <boost/asio/error.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>

namespace handoff::proxy {

// RFC 9110 9.2.2.
constexpr bool idempotent(boost::beast::http::verb method) noexcept {
  using boost::beast::http::verb;
  switch (method) {
    case verb::get:
    case verb::head:
    case verb::options:
    case verb::trace:
    case verb::put:
    case verb::delete_:
      return true;
    default:
      return false;
  }
}

// The upstream connection ended under the request (not a timeout, not our own cancel).
inline bool connection_ended(const boost::system::error_code& ec) noexcept {
  return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
         ec == boost::asio::error::broken_pipe;
}

enum class request_held { whole, streamed };  // what the relay still has of the request

// A request lost by a reused connection before any byte of its answer: may it go again?
// `accepted`: bytes of it the kernel took on that connection.
constexpr bool may_send_again(boost::beast::http::verb method, std::size_t accepted,
                              request_held held) noexcept {
  if (accepted == 0) return true;
  return held == request_held::whole && idempotent(method);
}

// What the relay notes of one exchange (one request on one upstream connection) for the rule.
struct exchange_record {
  bool reused = false;       // the connection came from the pool
  std::size_t accepted = 0;  // bytes of the request the kernel took on it
  request_held held = request_held::whole;
  bool answer_started = false;  // a byte of the answer came

  // The connection ended with `ec` under the request: may it go again on a new one?
  bool lost(boost::beast::http::verb method, const boost::system::error_code& ec) const noexcept {
    return reused && !answer_started && connection_ended(ec) &&
           may_send_again(method, accepted, held);
  }
};

}  // namespace handoff::proxy
