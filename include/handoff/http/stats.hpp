// handoff::http::server_stats: what a server has done since it was constructed, for the app to
// publish (server::stats() takes the snapshot), and write_prometheus(), which writes one in the
// Prometheus text exposition format (version 0.0.4).
//
// Invariants: every field but the two gauges (connections_open, requests_in_flight) is a counter
// that only grows over the life of the server. A snapshot is taken without stopping the server:
// each field is exact, but fields are read one after another, so two of them may disagree by the
// requests that completed meanwhile (a scrape sees requests as they are). Counting costs the
// server a few relaxed increments of counters that belong to the thread serving the connection;
// nothing is allocated and no lock is taken.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace handoff::http {

struct server_stats {
  // Connections.
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_open = 0;  // gauge
  // Requests whose handler answered (its 5xx and a streamed response included), and requests
  // being read, handled or answered now.
  std::uint64_t requests = 0;
  std::uint64_t requests_in_flight = 0;  // gauge

  // Errors, by class. The server's own answers, each followed by closing the connection:
  // 400: bytes that are not HTTP/1.1, ambiguous framing, a bad Host, a chunk line or trailer
  // over its bound; and 501: a transfer coding the server does not decode.
  std::uint64_t bad_requests = 0;
  std::uint64_t payload_too_large = 0;        // 413: a body over max_body_bytes
  std::uint64_t header_fields_too_large = 0;  // 431: over max_header_bytes or max_header_fields
  // 500 (or a cut stream): the handler threw, or answered what cannot be sent (a body on a 204
  // or 304, a 1xx as its final answer).
  std::uint64_t handler_exceptions = 0;
  // Connections closed because a timeout passed: a request not read within header_timeout or
  // body_timeout (a new connection that sends nothing included), a response not written within
  // write_timeout.
  std::uint64_t timeouts = 0;
  std::uint64_t tls_handshake_failures = 0;  // garbage, a refused protocol, or a stalled handshake
  // Not an error: keep-alive connections closed after idle_timeout without a next request.
  std::uint64_t idle_closed = 0;

  // Draining (see server.hpp): how each connection open during the drain ended, apart from the
  // client closing it.
  bool draining = false;                          // drain() has begun
  std::uint64_t drain_closed_after_response = 0;  // a response said Connection: close
  std::uint64_t drain_closed_idle = 0;            // idle past drain_idle_grace
  std::uint64_t drain_aborted_connections = 0;    // still open at the deadline
  std::uint64_t drain_aborted_requests = 0;       // of those, with a request in flight
};

// Appends `stats` to `out` in the Prometheus text format, every metric named `prefix` + "_" +
// its name (for example handoff_http_requests_total), with # HELP and # TYPE lines. `prefix`
// must be a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*); std::invalid_argument otherwise.
// Serve it with Content-Type: text/plain; version=0.0.4; charset=utf-8 (prometheus_content_type).
void write_prometheus(std::string& out, const server_stats& stats,
                      std::string_view prefix = "handoff_http");
inline constexpr std::string_view prometheus_content_type =
    "text/plain; version=0.0.4; charset=utf-8";

}  // namespace handoff::http
