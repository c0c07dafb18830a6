// upgrader: a process that replaces itself with a new version of its binary without dropping a
// connection (tableflip's lifecycle on the systemd protocols).
//
// Lifecycle: create() -> listen() ... -> ready() -> upgrade() | stop -> drain -> exit.
// Invariant: at any time there are one or more processes of the service: exactly one that is
// current (it may upgrade) and up to max_draining older ones finishing their connections. At
// most one process is not yet ready, and the current one hands over only once its successor
// said READY=1.
//
// upgrade() fork-execs the binary (by default the path this process was started from, so a
// deploy that replaced the file runs the new version) with the same arguments and every socket
// (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID; fds 3..). The successor reports READY=1 to a private
// notify socket of this process. Then this process tells its manager (systemd, `handoff run`),
// in one datagram from the service's current main process, MAINPID=<successor> and READY=1,
// waits on the barrier, and only then asks the app to drain and exit (exit_fd()). A successor
// that exits, crashes, or misses the deadline is killed and reaped; this process keeps serving
// and upgrade() returns why. Under systemd, RELOADING=1 with MONOTONIC_USEC= goes out first, so
// `systemctl reload` (ExecReload=kill -HUP $MAINPID) covers the whole upgrade, and
// NotifyAccess=main suffices: only the main process ever writes to the manager.
//
// TLS session-ticket keys (ticket_keys.hpp): an inherited memfd named handoff-tls-keys is not
// one of sockets(); it is kept and handed to the successor with the sockets, so every
// generation encrypts tickets with the same keys. hold_ticket_keys() makes one when none was
// inherited (and, under a manager, stores it there with FDSTORE=1, so that a restarted service
// gets it back); serve_signals() appends a new key every rotation period while this process is
// the current one.
//
// Environment between generations (besides LISTEN_* and NOTIFY_SOCKET):
//   HANDOFF_PARENT_PID        the generation that started this one
//   HANDOFF_MANAGER_SOCKET    the manager's NOTIFY_SOCKET, for after the hand-over
//   HANDOFF_DRAINING_PIDS     older generations that may still be draining (comma-separated)
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "handoff/activation.hpp"
#include "handoff/fd.hpp"
#include "handoff/notify.hpp"
#include "handoff/ticket_keys.hpp"

namespace handoff {

struct upgrader_options {
  // The program to run on upgrade; default: this process's executable path, read at create().
  std::optional<std::string> binary;
  // Its arguments (without argv[0]); default: this process's own, from /proc/self/cmdline.
  std::optional<std::vector<std::string>> arguments;
  std::chrono::milliseconds ready_timeout{60'000};
  // How many older generations may still be draining when an upgrade starts; one more is
  // refused, so that upgrades in a loop cannot pile up processes.
  unsigned max_draining = 2;
  // Written atomically (a temporary with a random name, created O_EXCL|O_NOFOLLOW, renamed over
  // it) with the pid of the current ready process; removed when the upgrader of the process it
  // names is destroyed (a clean exit), so it never names a dead process for long.
  std::optional<std::string> pid_file;
  // How often serve_signals() appends a new session-ticket key (when the process holds keys).
  std::chrono::seconds ticket_key_rotation = handoff::ticket_key_rotation;
};

class upgrader {
 public:
  // Reads LISTEN_* (the sockets of a manager or of the previous generation), NOTIFY_SOCKET and
  // the HANDOFF_* variables, and removes them all from the environment.
  static result<upgrader> create(upgrader_options options = {});

  upgrader(upgrader&&) noexcept = default;
  upgrader& operator=(upgrader&&) noexcept = default;
  // Removes the pid file if it still names this process.
  ~upgrader();

  // The inherited socket called `name`, else a new listener on `address`; the app never knows
  // which. The upgrader keeps the fd (it is handed to the next generation); the caller may
  // dup it.
  result<int> listen(std::string_view name, std::string_view address,
                     const listen_options& options = {});

  // Keeps an inherited socket as it is (its fd, as in sockets()), name and all: for an app that
  // serves whatever it was given. False when the set holds no such fd.
  bool claim(int fd);

  // This process serves now. Inherited sockets whose fd listen() did not return are closed
  // (whatever their name: a socket matched by address keeps its inherited name). Tells
  // the previous generation (which hands over to the manager), or else the manager itself
  // (READY=1), and writes the pid file.
  result<void> ready(std::string_view status = {});

  // Starts the successor and waits for it (see the top of this file). On success this process
  // should drain and exit: exit_fd() is readable and exit_requested() true.
  result<pid_t> upgrade();

  // Readable (an eventfd) once a successor has taken over.
  int exit_fd() const noexcept { return exit_event_.get(); }
  bool exit_requested() const noexcept { return replaced_; }

  // Readable (a pidfd) once the previous generation has exited; -1 in the first generation.
  int parent_exit_fd() const noexcept { return parent_.get(); }
  bool has_parent() const noexcept { return parent_pid_ > 0; }

  // The service's manager: where STATUS=, STOPPING=1 and the like go. After a successful
  // upgrade it is no longer this process's to talk to, and sends become no-ops.
  const notifier& manager() const noexcept { return replaced_ ? no_manager_ : manager_; }

  // Older generations that are alive and draining (checked now).
  std::size_t draining() const;

  // The seed's behaviour in one call: waits for SIGHUP, SIGTERM or SIGINT (which must be
  // blocked in every thread, see block_signals()). SIGHUP upgrades; a failed upgrade is reported
  // through `on_failure` and waiting goes on. Returns the signal that ended the wait: SIGHUP
  // after a successful upgrade, or SIGTERM/SIGINT.
  int serve_signals(const std::function<void(const error&)>& on_failure);
  // Blocks SIGHUP, SIGTERM and SIGINT in the calling thread (call before starting threads, which
  // inherit the mask), so that serve_signals() receives them.
  static void block_signals();

  const socket_set& sockets() const noexcept { return sockets_; }

  // The session-ticket keys memfd (inherited, or made by hold_ticket_keys()), or -1. The
  // upgrader keeps the fd; give it to handoff::http::tls_config::session_ticket_keys_fd.
  int ticket_keys() const noexcept { return ticket_keys_.get(); }
  // ticket_keys(), made first when none was inherited: a new memfd with one key, offered to the
  // manager (FDSTORE=1, FDNAME=handoff-tls-keys; systemd needs FileDescriptorStoreMax=) when
  // this process has one and no parent generation.
  result<int> hold_ticket_keys();
  // Appends a new key when the newest one is one rotation period old; the time of the next one.
  std::chrono::seconds rotate_ticket_keys_if_due();

 private:
  upgrader() = default;
  result<void> write_pid_file(pid_t pid) const;
  void remove_pid_file() const noexcept;

  // True in the one object that may remove the pid file: a moved-from upgrader never does.
  struct owner_flag {
    bool armed = true;
    owner_flag() = default;
    owner_flag(owner_flag&& o) noexcept : armed(std::exchange(o.armed, false)) {}
    owner_flag& operator=(owner_flag&& o) noexcept {
      armed = std::exchange(o.armed, false);
      return *this;
    }
    owner_flag(const owner_flag&) = delete;
    owner_flag& operator=(const owner_flag&) = delete;
    ~owner_flag() = default;
  };

  upgrader_options options_;
  std::string binary_;
  std::vector<std::string> arguments_;
  socket_set sockets_;
  unique_fd ticket_keys_;
  std::vector<int> claimed_;  // fds returned by listen(), kept by ready()
  notifier manager_, parent_notify_, no_manager_;
  pid_t parent_pid_ = 0;
  unique_fd parent_;                        // pidfd
  std::vector<pid_t> ancestors_;            // HANDOFF_DRAINING_PIDS and the parent
  std::vector<unique_fd> ancestor_pidfds_;  // to tell which are still alive
  unique_fd exit_event_;
  bool ready_ = false;
  bool replaced_ = false;
  bool upgrading_ = false;
  owner_flag pid_file_owner_;
};

}  // namespace handoff
