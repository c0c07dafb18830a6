#include "check/url.hpp"

#include <charconv>

namespace handoff::check {

namespace {
error bad(std::string_view text, std::string_view why) {
  return error::make(errc::invalid_address,
                     "URL \"" + std::string(text) + "\": " + std::string(why));
}
}  // namespace

std::string url::authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string url::host_header() const {
  const bool v6 = host.find(':') != std::string::npos;
  std::string h = v6 ? "[" + host + "]" : host;
  if (port != (tls ? 443 : 80)) h += ":" + std::to_string(port);
  return h;
}

result<url> parse_url(std::string_view text) {
  const auto scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos)
    return bad(text, "expected http://HOST[:PORT][/PATH] or https://...");
  std::string scheme(text.substr(0, scheme_end));
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != "http" && scheme != "https")
    return bad(text, "scheme \"" + scheme + "\" is not supported; only http:// and https:// are");
  std::string_view rest = text.substr(scheme_end + 3);
  const auto path_at = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, path_at);
  std::string_view path =
      path_at == std::string_view::npos ? std::string_view{} : rest.substr(path_at);
  if (const auto hash = path.find('#'); hash != std::string_view::npos) path = path.substr(0, hash);
  if (authority.find('@') != std::string_view::npos)
    return bad(text, "user information is not supported");
  url u;
  u.tls = scheme == "https";
  u.port = u.tls ? 443 : 80;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return bad(text, "unterminated '[' in the host");
    u.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad(text, "unexpected text after ']'");
      port_text = after.substr(1);
      if (port_text.empty()) return bad(text, "empty port");
    }
  } else {
    const auto colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return bad(text, "empty port");
    }
  }
  if (u.host.empty()) return bad(text, "no host");
  for (char c : u.host) {
    if (static_cast<unsigned char>(c) <= ' ' || c == '/' || c == '[' || c == ']')
      return bad(text, "invalid character in the host");
  }
  if (!port_text.empty()) {
    unsigned port = 0;
    const auto [end, ec] =
        std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535)
      return bad(text, "port \"" + std::string(port_text) + "\" is not a number in 1..65535");
    u.port = static_cast<std::uint16_t>(port);
  }
  for (char c : path) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
      return bad(text, "spaces and control characters must be percent-encoded");
  }
  u.target = path.empty() ? "/" : std::string(path);
  if (u.target.front() == '?') u.target.insert(0, "/");
  return u;
}

}  // namespace handoff::check
