// The URL `handoff check` loads: http://HOST[:PORT][/PATH[?QUERY]] or https://... (TLS; the
// port defaults to 80 and 443). Other schemes are refused.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff::check {

struct url {
  bool tls = false;  // https://
  std::string host;  // a name, an IPv4 literal, or an IPv6 literal without brackets
  std::uint16_t port = 80;
  std::string target;  // "/" when the URL has no path
  // "host:port" for the Host header (IPv6 in brackets; the port only when not the scheme's).
  std::string host_header() const;
  // "host:port" for messages.
  std::string authority() const;
  // "http://" or "https://".
  const char* scheme() const { return tls ? "https://" : "http://"; }
  // The URL again, normalised: scheme, authority with the port, target.
  std::string text() const { return scheme() + authority() + target; }
};

// errc::invalid_address with a message that quotes the input and says what is wrong, e.g.
//   URL "ftp://x/": scheme "ftp" is not supported; only http:// and https:// are
result<url> parse_url(std::string_view text);

}  // namespace handoff::check
