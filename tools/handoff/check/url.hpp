// The URL `handoff check` loads: http://HOST[:PORT][/PATH[?QUERY]]. Only plain http is
// supported (a restart measurement over TLS would measure the handshake more than the restart).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff::check {

struct url {
  std::string host;  // a name, an IPv4 literal, or an IPv6 literal without brackets
  std::uint16_t port = 80;
  std::string target;  // "/" when the URL has no path
  // "host:port" for the Host header (IPv6 in brackets; the port only when not 80).
  std::string host_header() const;
  // "host:port" for messages.
  std::string authority() const;
};

// errc::invalid_address with a message that quotes the input and says what is wrong, e.g.
//   URL "https://x/": only http:// is supported
result<url> parse_url(std::string_view text);

}  // namespace handoff::check
