// Addresses as users write them, parsed by one function.
//
//   8080  :8080            TCP on every interface (dual-stack [::] where IPv6 exists)
//   127.0.0.1:8080         TCP on one IPv4 address
//   [::1]:8080  [::]:8080  TCP on IPv6 (brackets are required)
//   localhost:8080         TCP on the first address the name resolves to
//   tcp://...  udp://HOST:PORT
//   unix:/run/app.sock     unix stream socket on a path (relative paths are allowed)
//   unix:@name             unix stream socket in the abstract namespace (unix(7))
//   http=:8080             any of the above with a name, as LISTEN_FDNAMES carries it
//
// Port 0 asks the kernel for a free port; local_address() reads back the bound one.
// Parsing does no I/O: host names are resolved when a listener is opened.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff {

enum class transport { tcp, udp, unix_stream };

struct address {
  std::string name;  // the optional NAME= prefix; empty when none was given
  transport kind = transport::tcp;
  // tcp/udp: "" (every interface), an IPv4 or IPv6 literal without brackets, or a host name.
  // unix: the path, or "@name" for the abstract namespace.
  std::string host;
  std::uint16_t port = 0;  // tcp/udp only

  bool is_unix() const noexcept { return kind == transport::unix_stream; }
  bool is_abstract() const noexcept { return is_unix() && !host.empty() && host.front() == '@'; }
  bool is_wildcard() const noexcept { return !is_unix() && host.empty(); }

  // The canonical text, which parse_address() reads back to an equal address:
  // "tcp://127.0.0.1:8080", "udp://[::1]:53", "unix:/run/a.sock", "tcp://:8080", with
  // "NAME=" in front when named.
  std::string to_string() const;

  bool operator==(const address&) const = default;
};

result<address> parse_address(std::string_view text);

// Whether `name` may be used as a socket name: what systemd accepts in LISTEN_FDNAMES and
// FDNAME= (fdname_is_valid: 1 to 255 printable ASCII characters, no ':'). In an address the
// name ends at the first '=', so it cannot contain one there.
bool valid_socket_name(std::string_view name) noexcept;

}  // namespace handoff
