// Handing sockets on: starting a child that receives them by the systemd protocol.
//
// The child gets fds[i] on fd 3+i (in order), LISTEN_FDS=<n>, LISTEN_FDNAMES=<names joined by
// ':'>, and LISTEN_PID=<its own pid>. The pid is only known after fork(), so it is written into
// a buffer prepared before the fork, with no allocation between fork and exec (only
// async-signal-safe calls there). Source fds that sit inside the target range are moved out of
// the way first; every other fd of the parent is closed in the child (close_range), so the
// child sees stdio, the handed-on fds, and nothing else. An exec failure is reported to the
// caller through a close-on-exec pipe, never swallowed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "handoff/fd.hpp"

namespace handoff {

struct passed_fd {
  int fd = -1;       // in the parent; it stays open there
  std::string name;  // for LISTEN_FDNAMES; must be valid_socket_name(), or empty for "unknown"
};

enum class process_group { inherit, new_group };

struct spawn_options {
  // argv[0] is the program: a path, or a name looked up in PATH (in the parent, before fork).
  std::vector<std::string> argv;
  std::vector<passed_fd> fds;
  // The child's environment: nullopt means this process's environment. LISTEN_PID, LISTEN_FDS
  // and LISTEN_FDNAMES are always removed from it and set anew when fds are passed.
  std::optional<std::vector<std::string>> environment;
  std::vector<std::string> extra_environment;  // "KEY=VALUE", replacing KEY if present
  std::optional<std::string> notify_socket;    // sets NOTIFY_SOCKET
  process_group group = process_group::inherit;
  std::optional<std::string> working_directory;
  // Replacements for the child's stdin/stdout/stderr (-1: inherit this process's).
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
  // Signal the child gets when the thread that spawned it ends (PR_SET_PDEATHSIG), 0 for none.
  // Set in the child before exec; a parent that died already by then gets the child the
  // signal at once. Only the child itself is covered: a process it hands its place to (a
  // fork, MAINPID=) needs its own.
  int parent_death_signal = 0;
  // The child's soft RLIMIT_NOFILE (its hard limit stays this process's), set just before exec;
  // nullopt: inherited. A parent that raised its own soft limit (it never uses select(2)) gives
  // a child the one it was started with, as systemd gives services 1024: select() in the child
  // fails on any fd above 1023.
  std::optional<std::uint64_t> open_files_soft_limit;
};

// The child runs the program by the time this returns (exec succeeded); the caller reaps it.
// The child starts with every signal unblocked and at its default disposition.
result<pid_t> spawn(const spawn_options& options);

// Builds the environment a child gets (without LISTEN_PID, which only the child can write).
// Exposed for tests and for callers that exec themselves.
std::vector<std::string> child_environment(const spawn_options& options);

// How a child ended.
struct exit_status {
  bool exited = false;  // true: exit code in `code`; false: killed by `signal`
  int code = 0;
  int signal = 0;
  bool success() const noexcept { return exited && code == 0; }
  // "exited with status 1", "killed by signal 9 (Killed)"
  std::string describe() const;
  // The shell's convention for one number: the exit code, or 128+N when killed by signal N.
  int code_or_128_plus_signal() const noexcept { return exited ? code : 128 + signal; }
  // From a waitpid(2) status word, or from waitid(2)'s si_code/si_status.
  static exit_status from_wait_status(int status) noexcept;
  static exit_status from_siginfo(int child_code, int child_status) noexcept;
};

// Reaps `pid`, waiting at most `timeout` (pidfd_open + poll: an event, not a sleep loop).
// errc::timed_out when it is still running; the child is then left alone.
result<exit_status> wait_exit(pid_t pid,
                              std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace handoff
