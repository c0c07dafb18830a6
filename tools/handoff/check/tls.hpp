// The TLS client side of `handoff check https://...`: the one context every connection of a run
// shares (OpenSSL 3 through Asio's ssl streams), and the per-connection settings (SNI, the name
// or address the certificate must carry, a session to resume).
//
// Invariants:
// - The context offers ALPN http/1.1 and TLS 1.2 or 1.3 only. It verifies the server's chain
//   against --cacert, or the system's store when none is given; --insecure alone turns
//   verification off (then neither the chain nor the name is checked).
// - SNI is sent for a host name, never for an address literal (RFC 6066 3); the certificate
//   must match the URL's host (a DNS name, or an IP address SAN for a literal).
// - A session is resumed only when --tls-resume asks for it: each connection slot keeps the
//   last resumable session it was given and offers it on its next connection.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "handoff/error.hpp"

namespace handoff::check {

struct tls_options {
  std::string ca_file;  // PEM file of trusted certificates; empty: the system's store
  bool insecure = false;
  bool resume = false;  // offer the previous connection's session when reconnecting
};

// The shared client context; errors name the file ("--cacert /x/ca.pem: No such file ...").
result<std::shared_ptr<boost::asio::ssl::context>> make_tls_context(const tls_options& options);

// Sets SNI and the expected host on a new connection's SSL object (before its handshake).
void prepare_tls_connection(SSL* ssl, const std::string& host, const tls_options& options);

struct session_deleter {
  void operator()(SSL_SESSION* s) const noexcept { SSL_SESSION_free(s); }
};
using tls_session = std::unique_ptr<SSL_SESSION, session_deleter>;

}  // namespace handoff::check
