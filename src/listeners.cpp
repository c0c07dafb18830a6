#include "handoff/listeners.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "sys.hpp"
#include "unix_address.hpp"

namespace handoff {
namespace {

struct ip_endpoint {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_UNSPEC;
};

ip_endpoint make_v4(const in_addr& host, std::uint16_t port) {
  ip_endpoint e;
  auto& in = reinterpret_cast<sockaddr_in&>(e.storage);
  in.sin_family = AF_INET;
  in.sin_addr = host;
  in.sin_port = htons(port);
  e.length = sizeof in;
  e.family = AF_INET;
  return e;
}

ip_endpoint make_v6(const in6_addr& host, std::uint16_t port) {
  ip_endpoint e;
  auto& in6 = reinterpret_cast<sockaddr_in6&>(e.storage);
  in6.sin6_family = AF_INET6;
  in6.sin6_addr = host;
  in6.sin6_port = htons(port);
  e.length = sizeof in6;
  e.family = AF_INET6;
  return e;
}

// Literals and names to an endpoint. A name is resolved once, here; of several results the
// first IPv4 one wins (as Go's net.Listen does for "localhost"), else the first.
result<ip_endpoint> resolve(const address& where) {
  in_addr v4{};
  in6_addr v6{};
  if (::inet_pton(AF_INET, where.host.c_str(), &v4) == 1) return make_v4(v4, where.port);
  if (::inet_pton(AF_INET6, where.host.c_str(), &v6) == 1) return make_v6(v6, where.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = where.kind == transport::udp ? SOCK_DGRAM : SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(where.host.c_str(), nullptr, &hints, &found); rc != 0)
    return error::make(errc::invalid_address,
                       "resolve " + where.to_string() + ": " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, ::freeaddrinfo);
  const addrinfo* pick = found;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  if (pick == nullptr)
    return error::make(errc::invalid_address, "resolve " + where.to_string() + ": no address");
  if (pick->ai_family == AF_INET)
    return make_v4(reinterpret_cast<const sockaddr_in*>(pick->ai_addr)->sin_addr, where.port);
  return make_v6(reinterpret_cast<const sockaddr_in6*>(pick->ai_addr)->sin6_addr, where.port);
}

result<void> set_option(int fd, int level, int name, int value, const char* what,
                        const address& where) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0)
    return error::from_errno(errno, std::string("setsockopt ") + what + " " + where.to_string());
  return {};
}

int backlog_of(const listen_options& options) {
  return options.backlog > 0 ? options.backlog : kernel_somaxconn();
}

result<unique_fd> open_ip(const address& where, const listen_options& options) {
  const bool stream = where.kind == transport::tcp;
  const int type = (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC;
  ip_endpoint endpoint;
  unique_fd fd;
  if (where.is_wildcard()) {
    // Every interface: [::] serves IPv4 too when dual-stack; a kernel without IPv6 gets 0.0.0.0.
    fd.reset(::socket(AF_INET6, type, 0));
    if (fd) {
      endpoint = make_v6(in6addr_any, where.port);
    } else if (errno == EAFNOSUPPORT) {
      endpoint = make_v4(in_addr{htonl(INADDR_ANY)}, where.port);
    } else {
      return error::from_errno(errno, "socket " + where.to_string());
    }
  } else {
    auto resolved = resolve(where);
    if (!resolved) return resolved.error();
    endpoint = *resolved;
  }
  if (!fd) fd.reset(::socket(endpoint.family, type, 0));
  if (!fd) return error::from_errno(errno, "socket " + where.to_string());

  if (stream) {
    // A restarted server must not wait out TIME_WAIT of its predecessor's connections.
    if (auto r = set_option(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", where); !r)
      return r.error();
  }
  if (options.reuse_port) {
    if (auto r = set_option(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT", where); !r)
      return r.error();
  }
  if (endpoint.family == AF_INET6 && options.v6only != ipv6_only::kernel_default) {
    const int on = options.v6only == ipv6_only::v6_only ? 1 : 0;
    if (auto r = set_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, on, "IPV6_V6ONLY", where); !r)
      return r.error();
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&endpoint.storage), endpoint.length) != 0)
    return error::from_errno(errno, "bind " + where.to_string());
  if (stream && ::listen(fd.get(), backlog_of(options)) != 0)
    return error::from_errno(errno, "listen " + where.to_string());
  return fd;
}

// After EADDRINUSE on a unix path: is the file a live listener, or left by a dead process?
// Only a socket file on which connect() is refused is stale (unix(7): ECONNREFUSED when
// nobody listens). Anything else is not ours to remove.
result<void> remove_if_stale(const address& where, const sys::unix_sockaddr& sa) {
  struct stat st {};
  if (::lstat(where.host.c_str(), &st) != 0)
    return error::from_errno(errno, "bind " + where.to_string());
  if (!S_ISSOCK(st.st_mode))
    return error::make(errc::invalid_address,
                       "bind " + where.to_string() + ": the path exists and is not a socket");
  unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) return error::from_errno(errno, "socket " + where.to_string());
  int rc = sys::retry_eintr([&] { return ::connect(probe.get(), sa.get(), sa.length); });
  if (rc == 0 || errno == EAGAIN || errno == EINPROGRESS)
    return error::from_errno(EADDRINUSE,
                             "bind " + where.to_string() + ": another process listens on it");
  if (errno != ECONNREFUSED)
    return error::from_errno(errno, "bind " + where.to_string() + ": probing the existing socket");
  if (::unlink(where.host.c_str()) != 0 && errno != ENOENT)
    return error::from_errno(errno, "remove stale socket " + where.to_string());
  return {};
}

// The socket file bind(2) created, removed again when a later step fails: a failed open leaves
// nothing behind. Only that file: its device and inode are noted right after bind, and a path
// that names something else by the time of the failure (replaced by another process) is left
// alone.
class created_socket_file {
 public:
  explicit created_socket_file(const address& where) : path_(where.host) {
    struct stat st {};
    if (where.is_abstract() || ::lstat(path_.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return;
    device_ = st.st_dev;
    inode_ = st.st_ino;
    armed_ = true;
  }
  created_socket_file(const created_socket_file&) = delete;
  created_socket_file& operator=(const created_socket_file&) = delete;
  ~created_socket_file() {
    if (!armed_) return;
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == device_ && st.st_ino == inode_)
      (void)::unlink(path_.c_str());
  }
  void keep() noexcept { armed_ = false; }

 private:
  std::string path_;
  dev_t device_ = 0;
  ino_t inode_ = 0;
  bool armed_ = false;
};

result<unique_fd> open_unix(const address& where, const listen_options& options) {
  auto sa = sys::make_unix_sockaddr(where.host, "address");
  if (!sa) return sa.error();
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return error::from_errno(errno, "socket " + where.to_string());
  if (::bind(fd.get(), sa->get(), sa->length) != 0) {
    if (errno != EADDRINUSE || where.is_abstract())
      return error::from_errno(errno, "bind " + where.to_string());
    if (auto r = remove_if_stale(where, *sa); !r) return r.error();
    if (::bind(fd.get(), sa->get(), sa->length) != 0)
      return error::from_errno(errno, "bind " + where.to_string());
  }
  created_socket_file created(where);
  // chmod before listen(): until then a connect() is refused anyway, so no client gets in
  // under the umask's mode.
  if (options.unix_mode && !where.is_abstract() &&
      ::chmod(where.host.c_str(), *options.unix_mode) != 0)
    return error::from_errno(errno, "chmod " + where.to_string());
  if (::listen(fd.get(), backlog_of(options)) != 0)
    return error::from_errno(errno, "listen " + where.to_string());
  created.keep();
  return fd;
}

}  // namespace

result<void> set_nodelay(int fd) {
  const int on = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0)
    return error::from_errno(errno, "setsockopt TCP_NODELAY on fd " + std::to_string(fd));
  return {};
}

int kernel_somaxconn() noexcept {
  int value = SOMAXCONN;
  if (std::FILE* f = std::fopen("/proc/sys/net/core/somaxconn", "re")) {
    int read = 0;
    if (std::fscanf(f, "%d", &read) == 1 && read > 0) value = read;
    (void)std::fclose(f);
  }
  return value;
}

result<unique_fd> open_listener(const address& where, const listen_options& options) {
  if (where.is_unix()) return open_unix(where, options);
  return open_ip(where, options);
}

}  // namespace handoff
