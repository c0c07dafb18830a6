// Opening listening sockets from addresses.
//
// TCP: SO_REUSEADDR (so a restart does not wait out TIME_WAIT), listen(2) with the backlog
// (default: the kernel's net.core.somaxconn). A wildcard host binds [::] dual-stack, or
// 0.0.0.0 where the kernel has no IPv6. UDP: bound, no listen. Unix paths: an existing socket
// file is replaced only when nothing answers on it (a stale file of a dead process); a path
// another live process listens on, or a file that is not a socket, is refused.
// Every fd is close-on-exec. Errors name the address and the errno text:
//   bind tcp://127.0.0.1:8080: Address already in use
#pragma once

#include <sys/types.h>

#include <optional>

#include "handoff/address.hpp"
#include "handoff/fd.hpp"

namespace handoff {

// IPV6_V6ONLY for IPv6 sockets. `dual_stack` (the default) also accepts IPv4 on [::].
enum class ipv6_only { dual_stack, v6_only, kernel_default };

struct listen_options {
  int backlog = 0;  // 0: net.core.somaxconn
  ipv6_only v6only = ipv6_only::dual_stack;
  std::optional<mode_t> unix_mode;  // chmod of a unix socket file after bind
  bool reuse_port = false;          // SO_REUSEPORT (TCP/UDP), off by default: closing
                                    // one of several such listeners resets the connections
                                    // in its accept queue
};

result<unique_fd> open_listener(const address& where, const listen_options& options = {});

// TCP_NODELAY on a TCP socket (systemd's NoDelay=). Set on a listening socket, Linux copies it
// to every connection accepted from it (tcp(7) options are inherited by accept(2)), so an app
// handed the listener answers without waiting for the client's delayed ACK.
result<void> set_nodelay(int fd);

// net.core.somaxconn, or SOMAXCONN when /proc cannot be read.
int kernel_somaxconn() noexcept;

}  // namespace handoff
