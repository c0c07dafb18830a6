#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "handoff/fd.hpp"
#include "handoff/http/tls_context.hpp"
#include "handoff/ticket_keys.hpp"

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

// The session-ticket keys of a context: the file they come from, and the last two keys read
// (the newest encrypts, both decrypt). Tickets are made and opened on every server thread.
struct ticket_keys_state {
  unique_fd fd;
  tls_log log;
  std::mutex mutex;
  std::vector<ticket_key> keys;  // oldest first, at most 2
  off_t size = 0;                // of the file when `keys` were read
  bool reported = false;

  void keep(std::vector<ticket_key> all) {
    if (all.size() > 2) all.erase(all.begin(), all.end() - 2);
    keys = std::move(all);
  }

  // The holder appends a key now and then: read again when the file grew. A file that went bad
  // since keeps the keys read before (tickets made with them must still open).
  void refresh() {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || st.st_size == size) return;
    auto all = read_ticket_keys(fd.get());
    if (!all) {
      if (!reported && log)
        log("tls: session-ticket keys (fd " + std::to_string(fd.get()) +
            "): " + all.error().message() + "; keeping the keys read before");
      reported = true;
      return;
    }
    size = st.st_size;
    keep(std::move(*all));
  }
};

void free_ticket_keys_state(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<ticket_keys_state*>(ptr);
}

int ticket_keys_index() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_ticket_keys_state);
  return index;
}

// SSL_CTX_set_tlsext_ticket_key_evp_cb(3): AES-256-CBC and HMAC-SHA256, the ticket protection
// RFC 5077 suggests and OpenSSL's own keys use. 1: done; 2: opened with an older key, so the
// client is given a new ticket; 0: no such key (a full handshake); -1: failure.
int ticket_key_callback(SSL* ssl, unsigned char* key_name, unsigned char* iv,
                        EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt) {
  auto* state = static_cast<ticket_keys_state*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticket_keys_index()));
  if (state == nullptr) return -1;
  ticket_key key;
  bool newest = true;
  {
    std::lock_guard lock(state->mutex);
    state->refresh();
    if (state->keys.empty()) return encrypt ? -1 : 0;
    if (encrypt) {
      key = state->keys.back();
    } else {
      const auto found =
          std::find_if(state->keys.begin(), state->keys.end(), [&](const ticket_key& k) {
            return std::memcmp(k.name.data(), key_name, k.name.size()) == 0;
          });
      if (found == state->keys.end()) return 0;
      key = *found;
      newest = found + 1 == state->keys.end();
    }
  }
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac.data(), key.hmac.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  if (encrypt) {
    std::memcpy(key_name, key.name.data(), key.name.size());
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) return -1;
    if (EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv) != 1) return -1;
    if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
    return 1;
  }
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  if (EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv) != 1) return -1;
  return newest ? 1 : 2;
}

// The keys of `fd` for this context, or a line in the log and OpenSSL's own keys.
void use_ticket_keys(SSL_CTX* ctx, int fd, const tls_log& log) {
  auto own = [&](const std::string& why) {
    if (log)
      log("tls: session-ticket keys (" + std::string(ticket_keys_name) + ", fd " +
          std::to_string(fd) + "): " + why +
          "; this process makes its own keys (sessions will not resume in another generation)");
  };
  auto copy = duplicate_fd(fd);
  if (!copy) return own(copy.error().message());
  auto state = std::make_unique<ticket_keys_state>();
  state->fd = std::move(*copy);
  state->log = log;
  struct stat st {};
  if (::fstat(state->fd.get(), &st) != 0) return own(std::string("fstat: ") + std::strerror(errno));
  auto keys = read_ticket_keys(state->fd.get());
  if (!keys) return own(keys.error().message());
  state->size = st.st_size;
  state->keep(std::move(*keys));
  if (SSL_CTX_set_ex_data(ctx, ticket_keys_index(), state.get()) != 1)
    return own("SSL_CTX_set_ex_data: " + openssl_reason("failed"));
  (void)state.release();  // the context's now: free_ticket_keys_state deletes it with it
  if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_callback) != 1)
    throw std::runtime_error("tls: SSL_CTX_set_tlsext_ticket_key_evp_cb: " +
                             openssl_reason("failed"));
}

}  // namespace

std::shared_ptr<asio::ssl::context> make_tls_context(const tls_config& config, const tls_log& log) {
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
  if (config.session_ticket_keys_fd >= 0) use_ticket_keys(ctx, config.session_ticket_keys_fd, log);
  return context;
}

}  // namespace handoff::http
