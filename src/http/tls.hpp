// Internal: the OpenSSL context of a TLS listener of handoff::http::server.
//
// One context per listener, made by add_listener() before any thread runs and never changed
// afterwards: connections on every thread create their SSL objects from it concurrently, which
// OpenSSL allows for a context that is no longer modified. The session-ticket keys it uses may
// change (the holder appends one): they sit behind a mutex of their own, not in the context.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <functional>
#include <memory>
#include <string>

#include "handoff/http/server.hpp"

namespace handoff::http {

// Where make_tls_context reports what it handles itself (unusable session-ticket keys).
using tls_log = std::function<void(const std::string&)>;

// Reads the certificate chain and key of `config`; throws std::runtime_error naming the file.
// With config.session_ticket_keys_fd, tickets are encrypted with the keys of that file (see
// handoff/ticket_keys.hpp), re-read whenever it grew; a malformed file is reported through
// `log` and the context keeps OpenSSL's own keys.
std::shared_ptr<asio::ssl::context> make_tls_context(const tls_config& config, const tls_log& log);

}  // namespace handoff::http
