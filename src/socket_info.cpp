#include "handoff/socket_info.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <cstring>

#include "unix_address.hpp"

namespace handoff {
namespace {

result<int> int_option(int fd, int level, int name, const char* what) {
  int value = 0;
  socklen_t length = sizeof value;
  if (::getsockopt(fd, level, name, &value, &length) != 0)
    return error::from_errno(errno,
                             std::string("getsockopt ") + what + " fd " + std::to_string(fd));
  return value;
}

std::string ip_text(int family, const void* raw) {
  std::array<char, INET6_ADDRSTRLEN> buf{};
  if (::inet_ntop(family, raw, buf.data(), buf.size()) == nullptr) return {};
  return buf.data();
}

// Compares two IP literals by value ("::1" and "0:0::1" are the same host).
bool same_ip(const std::string& a, const std::string& b) {
  std::array<unsigned char, 16> x{}, y{};
  for (int family : {AF_INET, AF_INET6}) {
    if (::inet_pton(family, a.c_str(), x.data()) == 1 &&
        ::inet_pton(family, b.c_str(), y.data()) == 1)
      return x == y;
  }
  return false;
}

bool is_any(const std::string& host) { return host == "0.0.0.0" || host == "::"; }
bool is_loopback(const std::string& host) { return host.rfind("127.", 0) == 0 || host == "::1"; }

}  // namespace

result<address> local_address(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0)
    return error::from_errno(errno, "getsockname fd " + std::to_string(fd));
  auto type = int_option(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE");
  if (!type) return type.error();
  address out;
  switch (storage.ss_family) {
    case AF_INET: {
      const auto& in = reinterpret_cast<const sockaddr_in&>(storage);
      out.host = ip_text(AF_INET, &in.sin_addr);
      out.port = ntohs(in.sin_port);
      out.kind = *type == SOCK_DGRAM ? transport::udp : transport::tcp;
      break;
    }
    case AF_INET6: {
      const auto& in6 = reinterpret_cast<const sockaddr_in6&>(storage);
      out.host = ip_text(AF_INET6, &in6.sin6_addr);
      out.port = ntohs(in6.sin6_port);
      out.kind = *type == SOCK_DGRAM ? transport::udp : transport::tcp;
      break;
    }
    case AF_UNIX:
      out.kind = transport::unix_stream;
      out.host = sys::unix_sockaddr_text(reinterpret_cast<const sockaddr_un&>(storage), length);
      break;
    default:
      return error::make(errc::unsupported, "fd " + std::to_string(fd) + ": socket family " +
                                                std::to_string(storage.ss_family));
  }
  return out;
}

result<socket_info> inspect_socket(int fd) {
  socket_info info;
  int domain = 0;
  socklen_t length = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0) {
    if (errno == ENOTSOCK) return info;  // a pipe, a file, a memfd: allowed, just not a socket
    return error::from_errno(errno, "inspect fd " + std::to_string(fd));
  }
  switch (domain) {
    case AF_INET:
      info.family = socket_family::ipv4;
      break;
    case AF_INET6:
      info.family = socket_family::ipv6;
      break;
    case AF_UNIX:
      info.family = socket_family::unix_domain;
      break;
    default:
      info.family = socket_family::other;
      return info;
  }
  auto type = int_option(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE");
  if (!type) return type.error();
  switch (*type) {
    case SOCK_STREAM:
      info.type = socket_type::stream;
      break;
    case SOCK_DGRAM:
      info.type = socket_type::datagram;
      break;
    case SOCK_SEQPACKET:
      info.type = socket_type::seqpacket;
      break;
    default:
      info.type = socket_type::other;
      break;
  }
  auto accepting = int_option(fd, SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN");
  if (!accepting) return accepting.error();
  info.listening = *accepting != 0;
  auto local = local_address(fd);
  if (!local) return local.error();
  info.local = std::move(*local);
  return info;
}

std::string socket_info::describe() const {
  if (!is_socket()) return "not a socket";
  if (family == socket_family::other) return "socket of another family";
  std::string out;
  if (family == socket_family::unix_domain) {
    out = type == socket_type::datagram    ? "unix-dgram"
          : type == socket_type::seqpacket ? "unix-seqpacket"
                                           : "unix-stream";
    out += " " + (local.host.empty() ? std::string("(unbound)") : local.host);
  } else {
    out = type == socket_type::datagram ? "udp" : type == socket_type::stream ? "tcp" : "ip";
    out += family == socket_family::ipv6 ? " [" + local.host + "]" : " " + local.host;
    out += ":" + std::to_string(local.port);
  }
  if (listening) out += " listening";
  return out;
}

bool socket_matches(const socket_info& info, const address& want) {
  if (!info.is_socket()) return false;
  if (want.is_unix()) {
    return info.family == socket_family::unix_domain && info.type == socket_type::stream &&
           info.local.host == want.host;
  }
  const bool ip = info.family == socket_family::ipv4 || info.family == socket_family::ipv6;
  const socket_type type =
      want.kind == transport::udp ? socket_type::datagram : socket_type::stream;
  if (!ip || info.type != type) return false;
  // Port 0 asks for a new port, which no inherited socket is: find those by name instead.
  if (want.port == 0 || want.port != info.local.port) return false;
  if (want.is_wildcard()) return is_any(info.local.host);
  if (want.host == "localhost") return is_loopback(info.local.host);
  return same_ip(want.host, info.local.host);
}

}  // namespace handoff
