// Children's exits: every zombie is reaped here (ours, and orphans re-parented to us as a
// subreaper), and main processes adopted by MAINPID= are watched through their pidfd.
#include <signal.h>
#include <sys/wait.h>

#include "supervisor/core.hpp"

namespace handoff::supervisor {

void supervisor_core::reap() {
  while (const auto pid = os_.peek_exited()) {
    // The exited process is still a zombie: its group id cannot have been reused yet, so
    // what is left of its group (its own children) is killed now, never later.
    for (auto& g : generations_)
      for (auto& s : g.slots)
        if (s.pid == *pid && s.pgid > 0) kill_slot(s, SIGKILL);
    const auto status = os_.collect(*pid);
    if (on_reexec_probe_exit(*pid, status)) continue;  // the probe of `handoff reexec`
    if (!status) continue;
    on_exit(*pid, status);
  }
}

void supervisor_core::on_pidfd(generation& g, slot& s) {
  (void)g;
  siginfo_t info{};
  // Our child (re-parented to us, as subreaper): reap() gets its status.
  if (::waitid(P_PID, static_cast<id_t>(s.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == s.pid) {
    reap();
    return;
  }
  on_exit(s.pid, std::nullopt);
}

}  // namespace handoff::supervisor
