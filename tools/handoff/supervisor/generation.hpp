// One generation of the app: the N processes started together for one start or reload, and
// where they are in their life.
//
//   starting -> settling (ready, --settle) -> serving -> retiring -> draining -> gone
//        \______________\________________________________________> failed (killed) -> gone
//
// retiring: replaced, still running, and not yet told to stop; it gets the stop signal once
// the retire condition holds (a front proxy: no request of ours in flight; without one, at
// once) or --stop-timeout after it was replaced, whichever comes first.
//
// Invariants (kept by generation.cpp): at most one generation is starting or settling; at
// most one is serving; each process (slot) is its own process group, so "kill the
// generation" is a kill(-pgid) per slot, and only while the slot's main process is not yet
// reaped (after that the group id could name someone else's group).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "handoff/fd.hpp"
#include "handoff/spawn.hpp"
#include "supervisor/os.hpp"
#include "supervisor/probe.hpp"

namespace handoff::supervisor {

// The longest watchdog interval: a longer one (WATCHDOG_USEC= up to 2^64-1 us) is cut to it,
// so that deadlines computed from it stay far from the clock's range.
inline constexpr std::chrono::milliseconds upstream_recheck_interval{100};

inline constexpr std::chrono::milliseconds watchdog_max = std::chrono::hours(24 * 366);

enum class generation_state { starting, settling, serving, retiring, draining, failed };
const char* to_string(generation_state s);

struct slot {
  pid_t pid = 0;               // the main process; 0 while waiting for a restart
  pid_t pgid = 0;              // its process group (the first pid of the slot's current run)
  std::vector<pid_t> former;   // earlier main pids (before MAINPID=), their exits are expected
  unique_fd pidfd;             // of the main process: every signal to it goes through this
  bool leader_reaped = false;  // the group's leader (a former main pid) is gone: the group id
                               // may name someone else's group, so it is never signalled
  bool ready = false;
  bool stopping = false;  // STOPPING=1 received
  bool reloading = false;
  bool heard = false;  // any notify message from this run (--ready notify: why not ready)
  clock::time_point started{}, ready_at{}, last_watchdog{};
  clock::time_point ready_deadline{};  // while not ready
  bool watchdog_fired = false;         // killed for silence: no further watchdog deadline
  clock::time_point restart_at{};      // while pid == 0
  std::chrono::milliseconds watchdog{0};
  std::shared_ptr<probe_state> probe;
  std::optional<exit_status> last_exit;
  std::string status_text;  // STATUS=
  int restarts = 0;
  int failures_in_a_row = 0;
  bool running() const noexcept { return pid > 0; }
};

struct generation {
  int id = 0;
  generation_state state = generation_state::starting;
  std::vector<slot> slots;
  clock::time_point started{}, ready_deadline{}, settle_deadline{}, stop_deadline{};
  clock::time_point retire_deadline{};  // while retiring: stop it then at the latest
  // --upstream port: ready, but its port not yet found listened on by it alone (upstream_owner):
  // when to look again (zero: not waiting for that).
  clock::time_point upstream_recheck{};
  bool stop_sent = false, killed = false;
  bool is_restart = false;             // started because the app died, not by a reload
  std::string failure;                 // why it failed
  std::vector<std::uint64_t> waiters;  // control clients waiting for the outcome of this start

  bool any_running() const {
    for (const auto& s : slots)
      if (s.running()) return true;
    return false;
  }
  bool all_ready() const {
    for (const auto& s : slots)
      if (!s.running() || !s.ready) return false;
    return true;
  }
  std::string pids() const;
};

}  // namespace handoff::supervisor
