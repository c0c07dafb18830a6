#include "supervisor/os.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "supervisor/generation.hpp"

namespace handoff::supervisor {

// Our manager's socket is taken out of the environment: the app reports to us, not to it.
system_os::system_os() : manager_(notifier::from_environment(/*unset=*/true)) {}

result<pid_t> system_os::spawn(const spawn_options& options) { return handoff::spawn(options); }

void system_os::signal_slot(const slot& s, int sig) {
  // The group only while its leader (or, after MAINPID=, the main process in it) is unreaped:
  // see generation.hpp. The main pid too if it left the group.
  if (s.pgid > 0) (void)::kill(-s.pgid, sig);
  if (s.pgid <= 0 || ::getpgid(s.pid) != s.pgid) (void)::kill(s.pid, sig);
}

void system_os::signal_process(const slot& s, int sig) { (void)::kill(s.pid, sig); }

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

void system_os::notify_manager(manager_event event, std::string_view status) {
  switch (event) {
    case manager_event::ready:
      (void)manager_.ready(status);
      break;
    case manager_event::reloading:
      (void)manager_.reloading();
      break;
    case manager_event::stopping:
      (void)manager_.stopping(status);
      break;
    case manager_event::watchdog:
      (void)manager_.watchdog();
      break;
  }
}

}  // namespace handoff::supervisor
