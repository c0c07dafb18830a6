#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

#include "handoff/http/tls_context.hpp"

namespace handoff::http {

namespace {

// OpenSSL's reason for the last failure of this thread, or `fallback` when it left none.
std::string openssl_reason(const char* fallback) {
  const unsigned long code = ERR_peek_last_error();
  ERR_clear_error();
  if (code == 0) return fallback;
  const char* reason = ERR_reason_error_string(code);
  return reason ? reason : fallback;
}

// A missing or unreadable file gets errno's text (OpenSSL's would only say "system lib").
void check_readable(const std::string& path, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::system_category(), std::string(what) + path);
  ::close(fd);
}

// ALPN: this server speaks HTTP/1.1 only. A client that offers protocols but not http/1.1
// (h2 alone) is refused with no_application_protocol, as RFC 7301 section 3.2 asks, rather than
// answered in a protocol it did not offer; a client that offers none is served.
int select_alpn(SSL*, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                unsigned int in_length, void*) {
  static constexpr unsigned char ours[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, out_length, ours, sizeof ours, in, in_length) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

std::shared_ptr<asio::ssl::context> make_tls_context(const tls_config& config) {
  const std::string& cert = config.certificate_chain_file;
  const std::string& key = config.private_key_file;
  if (cert.empty()) throw std::runtime_error("tls: no certificate chain file given");
  if (key.empty()) throw std::runtime_error("tls: no private key file given");
  check_readable(cert, "tls certificate ");
  check_readable(key, "tls key ");

  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* ctx = context->native_handle();
  ERR_clear_error();
  // The policy: TLS 1.2 and 1.3 only (older versions have no AEAD ciphers and are deprecated
  // by RFC 8996). For TLS 1.2, ECDHE key exchange (forward secrecy) with AES-GCM or
  // ChaCha20-Poly1305 only: no CBC (padding oracles), no RSA key transport, no SHA-1 MACs,
  // which is what current browsers and curl offer first anyway. TLS 1.3's suites are all AEAD
  // with forward secrecy: OpenSSL's default list stays. The client's order is honoured, since
  // every suite left is strong and the client knows whether it has AES in hardware.
  // Renegotiation is refused (a client could make the server do handshakes at will).
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1)
    throw std::runtime_error("tls: setting the protocol versions and ciphers: " +
                             openssl_reason("failed"));
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);

  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1)
    throw std::runtime_error("tls certificate " + cert + ": " +
                             openssl_reason("not a PEM certificate"));
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw std::runtime_error("tls key " + key + " (for certificate " + cert +
                             "): " + openssl_reason("not a PEM private key"));
  if (SSL_CTX_check_private_key(ctx) != 1)
    throw std::runtime_error("tls key " + key + " does not match certificate " + cert + ": " +
                             openssl_reason("mismatch"));
  return context;
}

}  // namespace handoff::http
