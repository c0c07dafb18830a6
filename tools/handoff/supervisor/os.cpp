#include "supervisor/os.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <span>

#include "supervisor/generation.hpp"
#include "supervisor/pidfd.hpp"
#include "supervisor/upstream_owner.hpp"

namespace handoff::supervisor {

// Our manager's socket is taken out of the environment: the app reports to us, not to it.
system_os::system_os() : manager_(notifier::from_environment(/*unset=*/true).socket()) {}

result<pid_t> system_os::spawn(const spawn_options& options) { return handoff::spawn(options); }

unique_fd system_os::open_pidfd(pid_t pid) { return unique_fd(::pidfd_open(pid, 0)); }

namespace {

// Through the pidfd: a pid may have been reused by now, a pidfd never names another process.
void signal_main(const slot& s, int sig) {
  if (s.pidfd) {
    (void)::pidfd_send_signal(s.pidfd.get(), sig, nullptr, 0);
    return;
  }
  // No pidfd (pidfd_open failed for a child not yet reaped): the pid is still that child's.
  if (s.pid > 0) (void)::kill(s.pid, sig);
}

}  // namespace

void system_os::signal_slot(const slot& s, int sig) {
  // The group only while its leader is unreaped (a zombie keeps the id taken); after that the
  // group id may come to name someone else's group (see generation.hpp). Exactly once per
  // process: the main process separately only when the group signal does not reach it.
  const bool group = s.pgid > 0 && !s.leader_reaped;
  if (group) (void)::kill(-s.pgid, sig);
  if (!group || (s.pid != s.pgid && ::getpgid(s.pid) != s.pgid)) signal_main(s, sig);
}

void system_os::signal_process(const slot& s, int sig) { signal_main(s, sig); }

std::optional<std::vector<ino_t>> system_os::socket_inodes(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return std::nullopt;
  std::vector<ino_t> found;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char target[64] = {};
    const std::string path = dir + "/" + e->d_name;
    const ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
    unsigned long long ino = 0;
    if (n > 0 && std::sscanf(target, "socket:[%llu]", &ino) == 1)
      found.push_back(static_cast<ino_t>(ino));
  }
  ::closedir(d);
  return found;
}

std::optional<std::vector<ino_t>> system_os::loopback_listeners(int port) {
  return supervisor::loopback_listeners(port);
}

std::optional<pid_t> system_os::peek_exited() {
  for (;;) {
    siginfo_t info{};
    // WNOWAIT: while the child is a zombie its pid, and so its process group id, cannot be
    // reused, so killing what is left of its group is safe at this moment only.
    if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      return std::nullopt;  // ECHILD: none left
    }
    if (info.si_pid == 0) return std::nullopt;
    return info.si_pid;
  }
}

std::optional<exit_status> system_os::collect(pid_t pid) {
  int status = 0;
  pid_t got = 0;
  do {
    got = ::waitpid(pid, &status, WNOHANG);
  } while (got < 0 && errno == EINTR);
  if (got <= 0) return std::nullopt;
  return exit_status::from_wait_status(status);
}

bool system_os::store_fd(int fd, std::string_view name) {
  if (!manager_) return false;
  auto sent = notifier(*manager_).fdstore(std::span<const int>(&fd, 1), name);
  return sent && *sent == notify_outcome::sent;
}

void system_os::notify_manager(manager_event event, std::string_view status) {
  if (!manager_) return;
  std::string message;
  switch (event) {
    case manager_event::ready:
      message = "READY=1";
      break;
    case manager_event::reloading:
      message = "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec());
      break;
    case manager_event::stopping:
      message = "STOPPING=1";
      break;
    case manager_event::watchdog:
      message = "WATCHDOG=1";
      break;
  }
  if (!status.empty()) {
    std::string line(status);
    std::replace(line.begin(), line.end(), '\n', ' ');  // one line: STATUS= ends at a newline
    message += "\nSTATUS=" + line;
  }
  // sd_notify(3)'s socket: a path, or '@' for the abstract namespace. notifier::send() waits up
  // to notify_send_timeout for room in the manager's queue; the loop must not, so the datagram
  // goes out here with MSG_DONTWAIT.
  const std::string& name = *manager_;
  sockaddr_un to{};
  to.sun_family = AF_UNIX;
  if (name.size() < 2 || name.size() >= sizeof to.sun_path || (name[0] != '/' && name[0] != '@'))
    return;
  std::memcpy(to.sun_path, name.data(), name.size());
  if (name[0] == '@') to.sun_path[0] = '\0';
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (!socket_) socket_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!socket_) return;
  ssize_t n = 0;
  do {
    n = ::sendto(socket_.get(), message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                 reinterpret_cast<const sockaddr*>(&to), length);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ++dropped_;
}

}  // namespace handoff::supervisor
