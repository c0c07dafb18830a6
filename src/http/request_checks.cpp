#include "request_checks.hpp"

#include <boost/beast/http/error.hpp>
#include <string_view>

namespace handoff::http {

namespace bhttp = beast::http;

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// uri-host [ ":" port ] (RFC 9112 3.2, RFC 3986 3.2.2): the characters of a reg-name, an IPv4
// address or an IP-literal, and the port's. Empty is valid: a target without an authority.
bool valid_host(std::string_view host) {
  for (const char c : host) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z')) continue;
    if (std::string_view("-._~%!$&'()*+,;=:[]").find(c) == std::string_view::npos) return false;
  }
  return true;
}

// The transfer codings of every Transfer-Encoding line, in order (RFC 9112 6.1).
struct codings {
  unsigned count = 0;
  bool chunked_last = false;   // the final coding is chunked
  bool chunked_early = false;  // chunked before the final coding: applied twice, or not last
  bool other = false;          // a coding other than chunked, which the server does not decode

  void add(std::string_view list) {
    bool any = false;
    for (;;) {
      const auto comma = list.find(',');
      const auto token = trim(list.substr(0, comma));
      if (!token.empty()) {  // empty list elements are allowed (RFC 9110 5.6.1)
        any = true;
        add_token(token);
      }
      if (comma == std::string_view::npos) break;
      list.remove_prefix(comma + 1);
    }
    if (!any) add_token({});  // a line with no coding at all: none we know
  }
  void add_token(std::string_view token) {
    if (chunked_last) chunked_early = true;
    ++count;
    chunked_last = beast::iequals(token, "chunked");
    if (!chunked_last) other = true;
  }
};

}  // namespace

request_verdict check_request_header(const request& req, std::size_t max_fields) {
  std::size_t count = 0;
  unsigned hosts = 0;
  bool content_length = false;
  std::string_view host;
  codings te;
  for (const auto& f : req) {
    ++count;
    switch (f.name()) {
      case bhttp::field::host:
        ++hosts;
        host = f.value();
        break;
      case bhttp::field::content_length:
        content_length = true;
        break;
      case bhttp::field::transfer_encoding:
        te.add(f.value());
        break;
      default:
        break;
    }
  }
  if (count > max_fields) return request_verdict::too_many_fields;
  // RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for any request with more than
  // one, or with an invalid one.
  if (hosts > 1 || (hosts == 0 && req.version() >= 11)) return request_verdict::bad_request;
  if (!valid_host(trim(host))) return request_verdict::bad_request;
  if (te.count == 0) return request_verdict::ok;
  // RFC 9112 6.1 and 6.3: Transfer-Encoding with Content-Length is a smuggling attempt, and
  // under HTTP/1.0 faulty framing: both 400. Chunked not final (identity, "xchunked", gzip
  // alone, "chunked, identity") leaves the body's length unknown: 400 (a MUST of 6.3, which
  // comes before the SHOULD of 501 for an unknown coding). Chunked twice is forbidden (6.1).
  // What remains is chunked, last, after codings the server does not decode: 501 (6.1).
  if (content_length || req.version() < 11) return request_verdict::bad_request;
  if (!te.chunked_last || te.chunked_early) return request_verdict::bad_request;
  if (te.other) return request_verdict::not_implemented;
  return request_verdict::ok;
}

bool within_field_limit(const request& req, std::size_t max_fields) {
  std::size_t count = 0;
  for (auto it = req.begin(); it != req.end(); ++it) {
    if (++count > max_fields) return false;
  }
  return true;
}

void chunk_extension_budget::operator()(std::uint64_t, boost::beast::string_view extensions,
                                        boost::system::error_code& ec) {
  if (extensions.size() > left) {
    ec = bhttp::error::bad_chunk_extension;
    return;
  }
  left -= extensions.size();
}

bool prepare_response(response& res) {
  const unsigned code = res.result_int();
  if (code >= 200 && code != 204 && code != 304) {
    res.prepare_payload();  // cannot throw for these
    return true;
  }
  if (code < 200 || !res.body().empty()) return false;
  res.erase(bhttp::field::transfer_encoding);
  if (code == 204) res.erase(bhttp::field::content_length);
  return true;
}

}  // namespace handoff::http
