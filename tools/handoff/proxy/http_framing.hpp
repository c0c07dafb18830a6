// The relay's HTTP/1.1 parsers (RFC 9112): one for a client's request, one for an upstream's
// response. Each is a Beast basic_parser that writes the message it parses, re-framed, into an
// output string the relay then sends on: the start line, the fields minus hop-by-hop ones, the
// framing the relay chose from what was parsed (Content-Length or chunked), and the body as it
// arrives. No byte is copied from input to output except field names and values, the target
// and body data, so two parsers can never disagree on where a message ends.
//
// Invariants:
// - A request whose framing is ambiguous is an error (request_error() says which answer it
//   gets) before anything of it is written to the output: Content-Length with
//   Transfer-Encoding, differing Content-Lengths (identical repeats are merged into one),
//   a Transfer-Encoding other than exactly "chunked", obsolete line folding, a missing or
//   repeated Host in HTTP/1.1, a target that fits no request-target form, a request line
//   without a version (HTTP/0.9, refused as soon as the line is whole), a version other than
//   1.x, more than max_empty_lines empty lines before the request line (fewer are skipped).
//   Beast itself refuses whitespace before the colon, bare CR or LF, control bytes in values,
//   bad chunk sizes and extensions.
// - A request's absolute-form target goes on in origin form, its authority as Host (RFC 9112
//   3.2.2). With forwarded headers on, no field the front sets or removes (set_by_front() in
//   the .cpp) passes as the client wrote it.
// - A response's Transfer-Encoding must end with one "chunked" (no Content-Length beside it);
//   the codings before it are passed on, the chunks re-framed.
// - Each header costs time linear in its size (give or take a log): per-field work is O(1)
//   or a lookup, never a scan of another field.
// - Field views point into the input buffer handed to feed(): feed() hands Beast a header only
//   once it is whole in that buffer (Beast alone would parse it piecemeal across calls), so the
//   views live until feed() returns.
// - One parser per message (Beast parsers cannot be reset): emplace a new one each time.
#pragma once

#include <bitset>
#include <boost/beast/http/basic_parser.hpp>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace handoff::proxy {

namespace bhttp = boost::beast::http;
using boost::system::error_code;
using beast_view = boost::beast::string_view;

// At most this many fields in a header (a request with more: 431; a response: 502); it bounds
// the per-field work of a header and the marks below.
constexpr std::size_t max_fields = 512;
// Which fields of a header a Connection field names (hop-by-hop: not passed on).
using named_fields = std::bitset<max_fields>;

// Empty lines (CRLF) taken before a request line; one more is a 400.
constexpr int max_empty_lines = 8;

// The codings of a message's Transfer-Encoding lines.
struct coding_count {
  int count = 0;    // tokens, over every line
  int chunked = 0;  // of which "chunked"
  bool last_chunked = false;
  bool invalid = false;  // an empty line, or a coding that is not a token
};

// What a refused request is answered with.
enum class refusal { bad_request, header_too_large, body_too_large };
refusal request_error(const error_code& ec);

// Whether a header is whole at the front of `input` (searched from `scanned`, which it
// advances): true also when a bare LF shows the bytes are not HTTP, for the parser to refuse.
bool header_ready(std::string_view input, std::size_t& scanned);

struct field_ref {
  bhttp::field name;
  std::string_view name_text;
  std::string_view value;
};

struct request_framing {
  std::uint32_t header_limit = 16 * 1024;
  std::optional<std::uint64_t> body_limit;  // none: any size
  bool forwarded = true;                    // Forwarded, X-Forwarded-For, X-Forwarded-Proto
  std::string_view scheme = "http";
  std::string_view client_address;  // "127.0.0.1", "::1"; empty when unknown (unix socket)
};

class request_framer final : public bhttp::basic_parser<true> {
 public:
  // `out` receives the re-framed request; `scratch` holds the fields of one header (both are
  // owned by the relay and reused from one request to the next).
  request_framer(const request_framing& options, std::string& out, std::vector<field_ref>& scratch);
  // put(), but the header only once it is whole in `input` (see the invariants).
  std::size_t feed(std::string_view input, error_code& ec);

  // After the header: what the relay needs to know of the request.
  bool head() const noexcept { return method_ == bhttp::verb::head; }
  bool connect() const noexcept { return method_ == bhttp::verb::connect; }
  bhttp::verb method() const noexcept { return method_; }
  // An Upgrade the relay passes on (Connection: upgrade and an Upgrade field, HTTP/1.1).
  bool wants_upgrade() const noexcept { return upgrade_ >= 0; }
  bool expects_continue() const noexcept { return expect_continue_; }
  int http_version() const noexcept { return version_; }

 private:
  void on_request_impl(bhttp::verb method, beast_view method_text, beast_view target, int version,
                       error_code& ec) override;
  void on_response_impl(int, beast_view, int, error_code&) override {}
  void on_field_impl(bhttp::field name, beast_view name_text, beast_view value,
                     error_code& ec) override;
  void on_header_impl(error_code& ec) override;
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast_view body, error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t size, beast_view extensions, error_code& ec) override;
  std::size_t on_chunk_body_impl(std::uint64_t remain, beast_view body, error_code& ec) override;
  void on_finish_impl(error_code& ec) override;

  const request_framing& options_;
  std::string& out_;
  std::vector<field_ref>& fields_;
  bhttp::verb method_ = bhttp::verb::unknown;
  std::string_view method_text_;
  std::string_view target_;
  std::string_view input_;
  std::size_t scanned_ = 0;
  int version_ = 11;
  int hosts_ = 0;
  coding_count codings_;
  int empty_lines_ = 0;
  std::size_t line_scanned_ = 0;  // of the request line, searched for its end
  bool request_line_seen_ = false;
  bool content_length_ = false;
  bool expect_continue_ = false;
  bool header_done_ = false;
  std::ptrdiff_t upgrade_ = -1;  // index of the Upgrade field passed on
  named_fields named_;
};

struct response_framing {
  std::uint32_t header_limit = 64 * 1024;
  bool head = false;        // the request was HEAD: no body follows, whatever the fields say
  bool connect = false;     // the request was CONNECT: a 2xx opens a tunnel
  bool upgrade = false;     // the request asked for an Upgrade: a 101 opens a tunnel
  int client_version = 11;  // 10: no chunked to the client, close-delimited instead
};

class response_framer final : public bhttp::basic_parser<false> {
 public:
  response_framer(const response_framing& options, std::string& out,
                  std::vector<field_ref>& scratch);
  // put(), but the header only once it is whole in `input` (see the invariants).
  std::size_t feed(std::string_view input, error_code& ec);

  // Set before the header is parsed: whether the client connection stays open after this
  // response (the header says Connection: close otherwise). A response that must be
  // close-delimited to the client clears it.
  void client_keep_alive(bool keep) noexcept { client_keep_alive_ = keep; }
  bool client_keep_alive() const noexcept { return client_keep_alive_; }
  int status() const noexcept { return status_; }
  bool interim() const noexcept { return status_ / 100 == 1 && status_ != 101; }
  // 101 to an Upgrade or 2xx to CONNECT: the connection becomes a byte tunnel after the header.
  bool opens_tunnel() const noexcept { return tunnel_; }
  // The upstream connection may carry another request after this response.
  bool upstream_reusable() const noexcept {
    return is_done() && keep_alive() && !need_eof() && !options_.connect;
  }

 private:
  void on_request_impl(bhttp::verb, beast_view, beast_view, int, error_code&) override {}
  void on_response_impl(int code, beast_view reason, int version, error_code& ec) override;
  void on_field_impl(bhttp::field name, beast_view name_text, beast_view value,
                     error_code& ec) override;
  void on_header_impl(error_code& ec) override;
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast_view body, error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t size, beast_view extensions, error_code& ec) override;
  std::size_t on_chunk_body_impl(std::uint64_t remain, beast_view body, error_code& ec) override;
  void on_finish_impl(error_code& ec) override;

  const response_framing& options_;
  std::string& out_;
  std::vector<field_ref>& fields_;
  std::size_t scanned_ = 0;
  int status_ = 0;
  std::string_view input_;  // the buffer of the current feed()
  std::string_view reason_;
  coding_count codings_;
  bool header_done_ = false;
  bool chunked_out_ = false;  // the body goes to the client chunked
  bool client_keep_alive_ = true;
  bool tunnel_ = false;
  named_fields named_;
};

}  // namespace handoff::proxy
