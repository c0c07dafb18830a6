// The supervisor's budget of file descriptors (RLIMIT_NOFILE).
//
// systemd starts services with a soft limit of 1024 (select(2) cannot watch an fd above 1023),
// and a hard limit far higher; programs that never call select() are expected to raise their
// own soft limit to the hard one (systemd.exec(5), LimitNOFILE=), as nginx's
// worker_rlimit_nofile and HAProxy's computed limit do. The supervisor and its front use
// poll(2) and epoll only, so they raise it at start; the app is handed the soft limit the
// supervisor was started with (spawn_options::open_files_soft_limit), since it may use select().
//
// Of that budget the front may use at most --max-connections client connections, about two fds
// each (the client's and the upstream one), and the rest is kept for the control socket, the
// metrics socket and the next generation (its private upstream sockets, pidfds, probes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace handoff::supervisor {

struct open_files_limit {
  std::uint64_t original_soft = 0;  // what we were started with: what the app gets
  std::uint64_t soft = 0;           // ours now
  std::uint64_t hard = 0;
  bool raised() const noexcept { return soft > original_soft; }
};

// Raises the soft RLIMIT_NOFILE to the hard one (to fs.nr_open when the hard one is unlimited).
// Never fails: a limit that cannot be raised stays as it is.
open_files_limit raise_open_files_limit();

// The fds kept out of the front's reach: 64, or a sixteenth of the limit when that is more.
std::uint64_t reserved_fds(std::uint64_t limit);
// The default of --max-connections: what is left after the reserve, two fds per connection.
std::uint64_t default_max_connections(std::uint64_t limit);
// The fds a number of client connections costs, the reserve included (to warn about a
// --max-connections that the limit cannot hold).
std::uint64_t fds_needed(std::uint64_t max_connections);

// The fds this process has open now (/proc/self/fd), nullopt when that cannot be read (out of
// fds, no /proc).
std::optional<std::uint64_t> open_fd_count();

}  // namespace handoff::supervisor
