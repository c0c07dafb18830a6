// The operating system as the supervisor's state machine sees it: start a process, signal one,
// learn which child exited, read the clock, tell our own manager. The real one (system_os)
// makes the system calls; the unit tests give the state machine a scripted one, so that every
// transition can be driven without processes (as cloudflare/tableflip's `env` does).
//
// Invariants of every implementation: spawn() returns only once the child runs the program;
// signal_slot() never signals a process group whose leader was reaped, and a process only
// through its pidfd when it has one (see generation.hpp); collect() reaps exactly the pid that
// peek_exited() returned.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/error.hpp"
#include "handoff/fd.hpp"
#include "handoff/notify.hpp"
#include "handoff/spawn.hpp"

namespace handoff::supervisor {

using clock = std::chrono::steady_clock;
struct slot;

// READY=1 (with STATUS=), RELOADING=1 (with MONOTONIC_USEC=), STOPPING=1, WATCHDOG=1.
enum class manager_event { ready, reloading, stopping, watchdog };

class os_env {
 public:
  virtual ~os_env() = default;
  virtual result<pid_t> spawn(const spawn_options& options) = 0;
  // A pidfd of a child just spawned (not reaped yet, so it is that child); invalid if none.
  virtual unique_fd open_pidfd(pid_t pid) = 0;
  // Sends `sig` to the slot's process group while its leader is unreaped, else (or when the
  // main process left the group) to the main process through its pidfd.
  virtual void signal_slot(const slot& s, int sig) = 0;
  // Sends `sig` to one process of a generation (forwarded signals: SIGUSR1 and the like).
  virtual void signal_process(const slot& s, int sig) = 0;
  // A child that has exited and is not reaped yet (it stays a zombie until collect()), or
  // nullopt when none.
  virtual std::optional<pid_t> peek_exited() = 0;
  // Reaps it; nullopt when it could not be reaped (already gone).
  virtual std::optional<exit_status> collect(pid_t pid) = 0;
  // The inodes of the sockets process `pid` holds (/proc/PID/fd), nullopt when unknown.
  virtual std::optional<std::vector<ino_t>> socket_inodes(pid_t pid) = 0;
  // --upstream port: the inodes of the sockets listening where a connect to 127.0.0.1:`port`
  // goes (upstream_owner.hpp); nullopt when unknown.
  virtual std::optional<std::vector<ino_t>> loopback_listeners(int port) {
    (void)port;
    return std::nullopt;
  }
  virtual clock::time_point now() = 0;
  // One notification to our own manager (systemd), if any; never fails the caller and never
  // waits (a manager whose queue is full loses it).
  virtual void notify_manager(manager_event event, std::string_view status = {}) = 0;
  // FDSTORE=1 + FDNAME=name with `fd` to our own manager, if any (systemd keeps it for our
  // next start); false when it could not be sent. Once, at setup: it may wait for room.
  virtual bool store_fd(int fd, std::string_view name) {
    (void)fd;
    (void)name;
    return false;
  }
  // Our manager's NOTIFY_SOCKET, for the next image of the supervisor (reexec.cpp).
  virtual std::optional<std::string> manager_socket() const { return std::nullopt; }
};

// The real system calls; notifications go to NOTIFY_SOCKET as found at construction.
class system_os final : public os_env {
 public:
  system_os();
  result<pid_t> spawn(const spawn_options& options) override;
  unique_fd open_pidfd(pid_t pid) override;
  void signal_slot(const slot& s, int sig) override;
  void signal_process(const slot& s, int sig) override;
  std::optional<pid_t> peek_exited() override;
  std::optional<exit_status> collect(pid_t pid) override;
  std::optional<std::vector<ino_t>> socket_inodes(pid_t pid) override;
  std::optional<std::vector<ino_t>> loopback_listeners(int port) override;
  clock::time_point now() override { return clock::now(); }
  void notify_manager(manager_event event, std::string_view status) override;
  bool store_fd(int fd, std::string_view name) override;
  std::optional<std::string> manager_socket() const override { return manager_; }
  // Notifications our manager's full queue made us drop (sends never wait).
  std::uint64_t dropped_notifications() const noexcept { return dropped_; }

 private:
  std::optional<std::string> manager_;  // NOTIFY_SOCKET: "/path" or "@abstract"
  unique_fd socket_;                    // nonblocking datagram socket, opened on first use
  std::uint64_t dropped_ = 0;
};

}  // namespace handoff::supervisor
