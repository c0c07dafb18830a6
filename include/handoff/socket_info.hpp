// What an fd is: the kind of socket, whether it listens, and its local address.
//
// Used for inherited fds, which may be anything (a manager's fd store holds pipes and memfds
// too), so "not a socket" is a kind, not an error.
#pragma once

#include <string>

#include "handoff/address.hpp"
#include "handoff/error.hpp"

namespace handoff {

enum class socket_family { none, ipv4, ipv6, unix_domain, other };
enum class socket_type { none, stream, datagram, seqpacket, other };

struct socket_info {
  socket_family family = socket_family::none;  // none: the fd is not a socket
  socket_type type = socket_type::none;
  bool listening = false;  // SO_ACCEPTCONN
  // The local address as an address value (kind, host, port); for unix sockets the path or
  // "@name"; host "" for an unbound unix socket. Empty name.
  address local;

  bool is_socket() const noexcept { return family != socket_family::none; }
  // "tcp 127.0.0.1:8080 listening", "unix-stream /run/a.sock", "udp [::]:53", "not a socket"
  std::string describe() const;
};

// Reads the kind and local address of `fd` (getsockopt SO_DOMAIN/SO_TYPE/SO_ACCEPTCONN,
// getsockname). An fd that is not a socket gives family none; a closed fd is an error.
result<socket_info> inspect_socket(int fd);

// The bound address of a socket (after port 0, the port the kernel chose).
result<address> local_address(int fd);

// Whether the socket described by `info` serves `want`: same transport, same port, and the same
// host, where an empty (wildcard) host in `want` matches 0.0.0.0 and [::], and "localhost" any
// loopback address; other host names are not resolved. Port 0 matches nothing (it asks for a
// new port): inherited sockets of port-0 listeners are found by name.
bool socket_matches(const socket_info& info, const address& want);

}  // namespace handoff
