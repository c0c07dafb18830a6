#include "check/outcome.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/http/error.hpp>

namespace handoff::check {

std::string_view to_string(outcome o) noexcept {
  switch (o) {
    case outcome::ok:
      return "ok";
    case outcome::status:
      return "status";
    case outcome::connect_refused:
      return "connect_refused";
    case outcome::connect_timeout:
      return "connect_timeout";
    case outcome::connect_error:
      return "connect_error";
    case outcome::reset_before_response:
      return "reset_before_response";
    case outcome::keepalive_race:
      return "keepalive_race";
    case outcome::closed_before_response:
      return "closed_before_response";
    case outcome::cut_mid_response:
      return "cut_mid_response";
    case outcome::bad_response:
      return "bad_response";
    case outcome::read_timeout:
      return "read_timeout";
    case outcome::tls_handshake_failed:
      return "tls_handshake_failed";
    case outcome::tls_verify_failed:
      return "tls_verify_failed";
    case outcome::tls_truncated:
      return "tls_truncated";
    case outcome::io_error:
      return "io_error";
  }
  return "?";
}

std::string_view describe(outcome o) noexcept {
  switch (o) {
    case outcome::ok:
      return "ok (2xx)";
    case outcome::status:
      return "other status";
    case outcome::connect_refused:
      return "connection refused";
    case outcome::connect_timeout:
      return "connect timeout";
    case outcome::connect_error:
      return "connect error";
    case outcome::reset_before_response:
      return "reset before response";
    case outcome::keepalive_race:
      return "EOF on reused keep-alive connection (race)";
    case outcome::closed_before_response:
      return "EOF on new connection before response";
    case outcome::cut_mid_response:
      return "reset or EOF mid-response";
    case outcome::bad_response:
      return "malformed response";
    case outcome::read_timeout:
      return "read timeout";
    case outcome::tls_handshake_failed:
      return "TLS handshake failed";
    case outcome::tls_verify_failed:
      return "TLS certificate verify failed";
    case outcome::tls_truncated:
      return "TLS EOF without close_notify (truncated)";
    case outcome::io_error:
      return "other I/O error";
  }
  return "?";
}

namespace {
bool is_http_parse_error(const boost::system::error_code& ec) {
  return ec.category() ==
         boost::beast::http::make_error_code(boost::beast::http::error::bad_version).category();
}

// Asio reports OpenSSL's packed error code (library and reason) in its ssl category.
bool is_verify_failure(const boost::system::error_code& ec) {
  return ec.category() == boost::asio::error::get_ssl_category() &&
         ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == SSL_R_CERTIFICATE_VERIFY_FAILED;
}
}  // namespace

outcome classify(const boost::system::error_code& ec, const failure_context& ctx) noexcept {
  namespace aerr = boost::asio::error;
  namespace herr = boost::beast::http;
  if (ctx.at == phase::connecting) {
    if (ctx.timed_out || ec == aerr::timed_out) return outcome::connect_timeout;
    if (ec == aerr::connection_refused) return outcome::connect_refused;
    return outcome::connect_error;
  }
  if (ctx.at == phase::handshaking)
    return is_verify_failure(ec) ? outcome::tls_verify_failed : outcome::tls_handshake_failed;
  if (ctx.timed_out) return outcome::read_timeout;
  if (ec == boost::asio::ssl::error::stream_truncated) return outcome::tls_truncated;
  const bool eof =
      ec == aerr::eof || ec == herr::error::end_of_stream || ec == herr::error::partial_message;
  const bool reset =
      ec == aerr::connection_reset || ec == aerr::broken_pipe || ec == aerr::connection_aborted;
  if (ctx.got_bytes) {
    if (eof || reset) return outcome::cut_mid_response;
    if (is_http_parse_error(ec)) return outcome::bad_response;
    return outcome::io_error;
  }
  if (reset) return outcome::reset_before_response;
  if (eof) return ctx.reused ? outcome::keepalive_race : outcome::closed_before_response;
  if (is_http_parse_error(ec)) return outcome::bad_response;
  return outcome::io_error;
}

}  // namespace handoff::check
