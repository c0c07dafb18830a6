#include "check/tls.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <boost/asio/ip/address.hpp>
#include <cerrno>

namespace handoff::check {

namespace ssl = boost::asio::ssl;

result<std::shared_ptr<ssl::context>> make_tls_context(const tls_options& options) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  SSL_CTX* native = ctx->native_handle();
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1)
    return error::make(errc::unsupported, "TLS: cannot set the minimum version to 1.2");
  static constexpr unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (SSL_CTX_set_alpn_protos(native, alpn, sizeof alpn) != 0)  // 0 is success here
    return error::make(errc::unsupported, "TLS: cannot set ALPN http/1.1");
  // A client cache of OpenSSL's own would be one more lock per connection across threads; the
  // sessions to resume are kept by the connection slots instead.
  SSL_CTX_set_session_cache_mode(native, SSL_SESS_CACHE_OFF);
  boost::system::error_code ec;
  if (options.insecure) {
    ctx->set_verify_mode(ssl::verify_none);
    return ctx;
  }
  ctx->set_verify_mode(ssl::verify_peer);
  if (!options.ca_file.empty()) {
    ctx->load_verify_file(options.ca_file, ec);
    if (ec) {
      // OpenSSL's reason alone ("system lib") says less than errno when the file is missing.
      if (::access(options.ca_file.c_str(), R_OK) != 0)
        return error::from_errno(errno, "--cacert " + options.ca_file);
      return error::make(
          errc::invalid_message,
          "--cacert " + options.ca_file + ": no PEM certificate in it (" + ec.message() + ")");
    }
  } else {
    ctx->set_default_verify_paths(ec);
    if (ec)
      return error::make(errc::unsupported,
                         "TLS: cannot load the system's certificate store: " + ec.message());
  }
  return ctx;
}

void prepare_tls_connection(SSL* ssl, const std::string& host, const tls_options& options) {
  boost::system::error_code ec;
  (void)boost::asio::ip::make_address(host, ec);
  const bool literal = !ec;
  if (!literal) (void)SSL_set_tlsext_host_name(ssl, host.c_str());
  if (options.insecure) return;
  if (literal) {
    (void)X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
  } else {
    (void)SSL_set1_host(ssl, host.c_str());
  }
}

}  // namespace handoff::check
