// The HTTP/1.1 relay of `handoff run --proxy http|https`: serves one client connection, sending
// each of its requests, re-framed, on an upstream connection the router lends for that request,
// and each response, re-framed, back (framing rules: http_framing.hpp). With https the client
// connection is TLS (handshake first, close_notify after the last response) and the upstream
// side stays plaintext.
//
// Invariants:
// - A request goes to at most two upstream connections, and to a second one only when the
//   first was a pooled (reused) connection that ended (EOF, ECONNRESET, EPIPE) before any byte
//   of the answer, and either the kernel took no byte of the request there (the first write
//   failed) or the request is idempotent (RFC 9110 9.2.2) and still whole in our hands (its
//   body, if any, came with its header rather than streamed after). The second is a new
//   connection, and its failure is answered. Accepted by the kernel counts as taken: we cannot
//   know whether the app read it (retry.hpp has the reasoning).
// - Requests on one client connection are answered in order, one at a time; bytes that arrive
//   ahead (pipelining) wait in the connection's buffer for the next request.
// - The client connection outlives upstream connections: an upstream that closes after a
//   complete response only ends that upstream connection. The client connection closes when it
//   asked to, when a request was refused (400, 413, 431, 408), when a response could not be
//   completed after part of it was sent, when the router is closing, and after a tunnel.
// - Every wait on a peer has a deadline (relay_options), one per direction (client read, client
//   write, upstream read, upstream write: relay_deadlines.hpp), enforced by one watchdog per
//   connection; a timeout of zero sets none ("off"). The exceptions are a tunnel (Upgrade,
//   CONNECT), which lasts as long as both ends keep it open, and a relay parked for a handover,
//   which the front ends (handover.hpp).
// - Runs on one thread with the router; counters are plain integers.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/handover.hpp"
#include "proxy/router.hpp"

namespace handoff::proxy {

struct relay_options {
  std::uint32_t header_limit = 16 * 1024;           // a larger request header: 431
  std::optional<std::uint64_t> body_limit;          // a larger request body: 413 (none: any)
  std::uint32_t response_header_limit = 64 * 1024;  // a larger response header: 502
  // Each timeout below: zero is none (the wait is not bounded), as systemd's "infinity".
  // From the first byte of a request to the end of its header: 408 and close.
  std::chrono::steady_clock::duration header_timeout = std::chrono::seconds(10);
  // A keep-alive client connection with no request, and each read of a request body and each
  // write of a response to the client: closed.
  std::chrono::steady_clock::duration idle_timeout = std::chrono::seconds(60);
  // Each wait on the upstream, for it to take bytes of the request or to send bytes of its
  // response: 504 if none was sent to the client yet.
  std::chrono::steady_clock::duration response_timeout = std::chrono::seconds(60);
  // https: from the accept to the end of the TLS handshake; the connection is closed then.
  std::chrono::steady_clock::duration handshake_timeout = std::chrono::seconds(10);
  bool forwarded = true;        // Forwarded, X-Forwarded-For, X-Forwarded-Proto
  std::string scheme = "http";  // proto= and X-Forwarded-Proto
};

struct relay_counters {
  std::uint64_t requests = 0;          // request headers accepted
  std::uint64_t bad_request = 0;       // 400 (malformed or ambiguous request)
  std::uint64_t too_large = 0;         // 413
  std::uint64_t header_too_large = 0;  // 431
  std::uint64_t request_timeout = 0;   // 408
  std::uint64_t bad_gateway = 0;       // 502, or a response cut after it began (client closed)
  std::uint64_t unavailable = 0;       // 503: no generation
  std::uint64_t gateway_timeout = 0;   // 504
  std::uint64_t retried = 0;           // sent again on a new connection (retry.hpp)
  std::uint64_t tunnels = 0;           // Upgrade / CONNECT tunnels opened
  std::uint64_t tls_handshake_failures = 0;  // https: refused, not TLS, or cut by the deadline
};

// Serves `client` until it closes (or must be closed). `options`, `r` and `counters` must
// outlive the returned awaitable's completion. `lot`: where the relay parks between requests
// when the front hands its connections over (handover.hpp); `buffered`: bytes already read from
// the client by the image before, served first; `adopted`: a connection of the image before.
asio::awaitable<void> relay_http(stream client, router& r, std::size_t listener,
                                 const relay_options& options, relay_counters& counters,
                                 parking_lot* lot = nullptr, std::string_view buffered = {},
                                 bool adopted = false);
// The same over TLS: the handshake on `client` with `tls` (which the connection keeps alive
// for as long as it lasts), then as above.
asio::awaitable<void> relay_https(stream client, std::shared_ptr<asio::ssl::context> tls, router& r,
                                  std::size_t listener, const relay_options& options,
                                  relay_counters& counters);

}  // namespace handoff::proxy
