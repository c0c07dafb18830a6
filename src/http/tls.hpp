// Internal: the OpenSSL context of a TLS listener of handoff::http::server.
//
// One context per listener, made by add_listener() before any thread runs and never changed
// afterwards: connections on every thread create their SSL objects from it concurrently, which
// OpenSSL allows for a context that is no longer modified.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>

#include "handoff/http/server.hpp"

namespace handoff::http {

// Reads the certificate chain and key of `config`; throws std::runtime_error naming the file.
std::shared_ptr<asio::ssl::context> make_tls_context(const tls_config& config);

}  // namespace handoff::http
