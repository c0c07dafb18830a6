// The OpenSSL 3 server context of handoff::http: one policy (TLS 1.2 and 1.3, AEAD ciphers
// with forward secrecy, ALPN http/1.1, no renegotiation) for every TLS listener of
// handoff::http::server and for the TLS front of `handoff run --proxy https`.
//
// A context is made whole by make_tls_context() and never changed afterwards: connections on
// any thread create their SSL objects from it concurrently, which OpenSSL allows for a context
// that is no longer modified. Rotating a certificate means making a new context; connections
// made from the old one keep it (each holds the shared_ptr) until they close. The
// session-ticket keys a context uses may change (the holder appends one): they sit behind a
// mutex of their own, not in the context.
//
// Including this header needs OpenSSL's headers (libssl-dev), unlike handoff/http/server.hpp.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <functional>
#include <memory>
#include <string>

#include "handoff/http/server.hpp"

namespace handoff::http {

// Where make_tls_context reports what it handles itself (unusable session-ticket keys).
using tls_log = std::function<void(const std::string&)>;

// Reads the certificate chain and key of `config`; throws std::runtime_error naming the file
// (unreadable, not PEM, or a key that does not match the certificate). With
// config.session_ticket_keys_fd, tickets are encrypted with the keys of that file (see
// handoff/ticket_keys.hpp), re-read whenever it grew; a malformed file is reported through
// `log` (when set) and the context keeps OpenSSL's own keys.
std::shared_ptr<asio::ssl::context> make_tls_context(const tls_config& config,
                                                     const tls_log& log = {});

}  // namespace handoff::http
