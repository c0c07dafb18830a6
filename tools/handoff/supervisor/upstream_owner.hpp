// --upstream port: whose socket listens on a generation's port. The port was free when the
// supervisor picked it (bind, then close), and the app binds it itself, so any local process
// may have taken it first. A generation is routed to (taken over) only once every listening
// socket a connect to 127.0.0.1:PORT could reach is held by one of its own processes: found in
// /proc/net/tcp{,6} (the socket's inode) and in /proc/PID/fd of its processes.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string_view>
#include <vector>

namespace handoff::supervisor {

// The inodes of the listening sockets in a /proc/net/tcp (v6: tcp6) table that a connect to
// 127.0.0.1:`port` may reach: bound to that port on 127.0.0.1, 0.0.0.0, ::, or
// ::ffff:127.0.0.1.
std::vector<ino_t> loopback_listeners_in(std::string_view table, int port, bool v6);
// Both tables of this network namespace; nullopt when they cannot be read.
std::optional<std::vector<ino_t>> loopback_listeners(int port);

}  // namespace handoff::supervisor
