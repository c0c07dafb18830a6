// The one outcome of each request `handoff check` sends, and how an I/O error becomes one.
//
// Invariant: every request that was started ends in exactly one outcome; nothing is retried, so
// the counts are what a client that never retries would have seen. The classes tell apart the
// ways a restart loses requests: nobody listening (refused), a queue that was reset, the
// keep-alive race (the server closed an idle connection while our next request was on its way:
// EOF on a reused connection before any byte of the response), and cuts mid-response.
#pragma once

#include <array>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <string_view>

namespace handoff::check {

enum class outcome : std::uint8_t {
  ok,                      // a complete 2xx response
  status,                  // a complete response with another status (the code is kept)
  connect_refused,         // ECONNREFUSED: nobody listening
  connect_timeout,         // no connection within the connect timeout (dropped SYNs)
  connect_error,           // any other connect failure (e.g. EADDRNOTAVAIL)
  reset_before_response,   // ECONNRESET/EPIPE before any byte of the response
  keepalive_race,          // EOF on a reused keep-alive connection before any response byte
  closed_before_response,  // EOF on a new connection before any response byte
  cut_mid_response,        // reset or EOF after some bytes of the response
  bad_response,            // bytes that are not a valid HTTP response
  read_timeout,            // no complete response within the timeout
  tls_handshake_failed,    // the TLS handshake failed (not a TLS server, no common cipher, ...)
  tls_verify_failed,       // the server's certificate was not accepted (CA, name, expiry)
  tls_truncated,           // TLS: EOF without close_notify after the handshake (truncation)
  io_error,                // anything else (the message is reported once)
};

inline constexpr std::size_t outcome_count = static_cast<std::size_t>(outcome::io_error) + 1;

inline constexpr std::array<outcome, outcome_count> all_outcomes = {
    outcome::ok,
    outcome::status,
    outcome::connect_refused,
    outcome::connect_timeout,
    outcome::connect_error,
    outcome::reset_before_response,
    outcome::keepalive_race,
    outcome::closed_before_response,
    outcome::cut_mid_response,
    outcome::bad_response,
    outcome::read_timeout,
    outcome::tls_handshake_failed,
    outcome::tls_verify_failed,
    outcome::tls_truncated,
    outcome::io_error,
};

// A stable identifier, used as the JSON key: "connect_refused".
std::string_view to_string(outcome o) noexcept;
// The words for the terminal summary: "connection refused".
std::string_view describe(outcome o) noexcept;

inline bool failed(outcome o) noexcept { return o != outcome::ok; }

// Where a request was when its I/O failed.
enum class phase : std::uint8_t { connecting, handshaking, sending, reading };

struct failure_context {
  phase at = phase::reading;
  bool reused = false;     // the connection had completed a request before this one
  bool got_bytes = false;  // some bytes of the response had arrived
  bool timed_out = false;  // our own deadline closed the socket
};

// The outcome of a request whose operation ended with `ec` (not success). Every failure while
// handshaking is a TLS class (a timeout or a reset there too: the server did not complete TLS);
// a truncation after the handshake is tls_truncated whatever had arrived.
outcome classify(const boost::system::error_code& ec, const failure_context& ctx) noexcept;

}  // namespace handoff::check
