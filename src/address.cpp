#include "handoff/address.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "handoff/decimal.hpp"

namespace handoff {
namespace {

constexpr std::string_view expected_forms =
    "expected PORT, :PORT, HOST:PORT, [IPV6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, "
    "unix:/PATH or unix:@NAME, optionally with NAME= in front";

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool all_digits(std::string_view s) { return std::all_of(s.begin(), s.end(), is_digit); }

// Shows control bytes of user input in an error, so the message stays one readable line.
std::string printable(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out;
}

class parser {
 public:
  explicit parser(std::string_view text) : text_(text) {}

  result<address> parse() {
    address out;
    std::string_view rest = text_;
    if (rest.empty()) return fail("empty address");

    // NAME=: a prefix before the first '=' that cannot be part of an address.
    if (auto eq = rest.find('='); eq != std::string_view::npos) {
      std::string_view name = rest.substr(0, eq);
      if (name.find_first_of(":/[@") == std::string_view::npos) {
        if (!valid_socket_name(name))
          return fail("invalid name \"" + printable(name) +
                      "\" (1 to 255 printable characters, no ':')");
        out.name = std::string(name);
        rest.remove_prefix(eq + 1);
        if (rest.empty()) return fail("nothing after the name");
      }
    }

    if (consume(rest, "unix:")) {
      out.kind = transport::unix_stream;
      // unix:///run/a.sock is the URL spelling of unix:/run/a.sock.
      if (rest.size() > 2 && rest.substr(0, 3) == "///") rest.remove_prefix(2);
      return unix_target(out, rest);
    }
    if (consume(rest, "tcp://")) {
      out.kind = transport::tcp;
    } else if (consume(rest, "udp://")) {
      out.kind = transport::udp;
    } else if (auto scheme = rest.find("://"); scheme != std::string_view::npos) {
      return fail("unsupported scheme \"" + printable(rest.substr(0, scheme)) + "://\"");
    }
    return host_port(out, rest);
  }

 private:
  static bool consume(std::string_view& s, std::string_view prefix) {
    if (s.substr(0, prefix.size()) != prefix) return false;
    s.remove_prefix(prefix.size());
    return true;
  }

  error fail(const std::string& why) const {
    return error::make(errc::invalid_address, "address \"" + printable(text_) + "\": " + why +
                                                  " (" + std::string(expected_forms) + ")");
  }

  result<address> unix_target(address& out, std::string_view target) {
    if (target.empty() || target == "@") return fail("empty unix socket path");
    if (target.find('\0') != std::string_view::npos) return fail("NUL byte in the path");
    const bool abstract = target.front() == '@';
    // sun_path is 108 bytes: a path needs its terminating NUL, an abstract name its leading one.
    if (target.size() > 107)
      return fail(std::string(abstract ? "abstract name" : "path") + " longer than 107 bytes");
    out.host = std::string(target);
    return out;
  }

  result<address> host_port(address& out, std::string_view rest) {
    if (rest.empty()) return fail("missing port");
    std::string_view host, port;
    if (rest.front() == '[') {
      auto close = rest.find(']');
      if (close == std::string_view::npos) return fail("'[' without ']'");
      host = rest.substr(1, close - 1);
      std::string_view after = rest.substr(close + 1);
      if (after.empty() || after.front() != ':') return fail("missing :PORT after ]");
      port = after.substr(1);
      std::array<unsigned char, 16> buf{};
      if (host.empty() || ::inet_pton(AF_INET6, std::string(host).c_str(), buf.data()) != 1)
        return fail("\"" + printable(host) + "\" is not an IPv6 address");
    } else if (all_digits(rest)) {
      port = rest;  // "8080"
    } else {
      auto colon = rest.rfind(':');
      if (colon == std::string_view::npos) return fail("missing port");
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      if (host.find(':') != std::string_view::npos)
        return fail("IPv6 addresses need brackets, as in [::1]:8080");
      if (host == "*") host = {};  // nginx's spelling of every interface
      if (auto why = check_host(host); !why.empty()) return fail(why);
    }
    if (auto why = parse_port(port, out.port); !why.empty()) return fail(why);
    out.host = std::string(host);
    return out;
  }

  static std::string check_host(std::string_view host) {
    if (host.empty()) return {};
    const bool numeric =
        std::all_of(host.begin(), host.end(), [](char c) { return is_digit(c) || c == '.'; });
    if (numeric) {
      in_addr a{};
      if (::inet_pton(AF_INET, std::string(host).c_str(), &a) != 1)
        return "\"" + printable(host) + "\" is not an IPv4 address";
      return {};
    }
    // A DNS name (RFC 1123): letters, digits, '-', '.', labels of 1..63, at most 253 in all.
    if (host.size() > 253) return "host name longer than 253 characters";
    std::size_t label = 0;
    for (char c : host) {
      const auto u = static_cast<unsigned char>(c);
      if (c == '.') {
        if (label == 0) return "empty label in host name \"" + printable(host) + "\"";
        label = 0;
      } else if (std::isalnum(u) || c == '-' || c == '_') {
        if (++label > 63) return "host name label longer than 63 characters";
      } else {
        return "invalid character '" + printable(std::string_view(&c, 1)) + "' in host name \"" +
               printable(host) + "\"";
      }
    }
    return {};
  }

  static std::string parse_port(std::string_view port, std::uint16_t& out) {
    if (port.empty()) return "missing port";
    if (port.size() > 5 || !all_digits(port))
      return "port \"" + printable(port) + "\" is not a number from 0 to 65535";
    const auto value = parse_decimal<std::uint16_t>(port);
    if (!value) return "port " + std::string(port) + " is out of range (0 to 65535)";
    out = *value;
    return {};
  }

  std::string_view text_;
};

}  // namespace

bool valid_socket_name(std::string_view name) noexcept {
  // systemd's fdname_is_valid(): printable ASCII without ':', at most 255 characters.
  if (name.empty() || name.size() > 255) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c >= ' ' && c <= '~' && c != ':'; });
}

result<address> parse_address(std::string_view text) { return parser(text).parse(); }

std::string address::to_string() const {
  std::string out = name.empty() ? std::string() : name + "=";
  if (kind == transport::unix_stream) {
    // The parser reads unix:///p as /p, so a path that itself starts with // keeps its slashes
    // behind an explicit "//".
    return out + (host.rfind("//", 0) == 0 ? "unix://" : "unix:") + host;
  }
  out += kind == transport::udp ? "udp://" : "tcp://";
  out += host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return out + ":" + std::to_string(port);
}

}  // namespace handoff
