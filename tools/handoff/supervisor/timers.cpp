// Every timed check of the supervisor, written so that each deadline is looked at by the code
// that acts on it (timers.hpp): the wake-up the loop sleeps until is the earliest of those.
#include <fmt/core.h>
#include <signal.h>

#include "supervisor/core.hpp"

namespace handoff::supervisor {

// --ready notify and not a single message from the process: most likely an app that does not
// speak the protocol at all (uvicorn, Node, puma without its gem), which would be killed and
// restarted for ever. Said once per failure, with the ways to start such an app.
std::string supervisor_core::silence_hint(const slot& s) const {
  if (o_.ready != ready_mode::notify || s.heard) return {};
  return fmt::format(
      ": nothing at all arrived on NOTIFY_SOCKET ({}) from it; if the app does not send READY=1 "
      "(sd_notify), start it with --ready delay:DURATION, --ready http:///PATH{}",
      notify_ ? notify_->address() : std::string("none"),
      o_.proxy.kind == proxy_kind::none
          ? " with --proxy http (the generation's own address is probed), or --ready "
            "http://HOST:PORT/PATH on a port the app opens itself"
          : " (probed on the generation's own address)");
}

clock::time_point supervisor_core::on_timers() {
  deadlines due(os_.now());
  // Pinged from here, the loop's own turn: a loop that is stuck stops the pings, and our
  // manager then restarts us.
  if (own_watchdog_.count() > 0 && due.reached(next_ping_)) {
    os_.notify_manager(manager_event::watchdog);
    next_ping_ = due.now() + own_watchdog_ / 2;
    (void)due.reached(next_ping_);
  }
  remove_gone_generations();
  rotate_ticket_keys(due);
  reexec_probe_timers(due);
  if (next_start_ && !stopping_ && due.reached(*next_start_)) {
    next_start_.reset();
    if (pending() == nullptr) {
      ++metrics_.app_restarts;
      start_generation(true, std::nullopt);
    }
  }
  for (auto& g : generations_) {
    const bool active =
        g.state == generation_state::starting || g.state == generation_state::serving;
    for (auto& s : g.slots) {
      if (active && s.running() && !s.ready) {
        const bool probe_done = s.probe && s.probe->done;
        const bool delay_done =
            o_.ready == ready_mode::delay && due.reached(s.started + o_.ready_delay);
        if (probe_done || delay_done) {
          mark_ready(g, s, probe_done ? "probe answered" : "delay passed");
        } else if (due.reached(s.ready_deadline)) {
          if (g.state == generation_state::starting) {
            fail_generation(g, reload_failure::ready_timeout,
                            fmt::format("pid {} not ready within {} (--ready-timeout){}", s.pid,
                                        format_duration(o_.ready_timeout), silence_hint(s)));
            break;
          }
          last_start_failure_ =
              fmt::format("generation {}: restarted pid {} not ready within {}{}; killing it", g.id,
                          s.pid, format_duration(o_.ready_timeout), silence_hint(s));
          log_.log("ready_timeout", last_start_failure_);
          kill_slot(s, SIGKILL);
          s.ready_deadline = clock::time_point::max();
        }
      }
      if (g.state != generation_state::serving) continue;
      if (s.running() && s.ready && s.watchdog.count() > 0 && !s.watchdog_fired &&
          due.reached(s.last_watchdog + s.watchdog)) {
        log_.log("watchdog", fmt::format("generation {}: pid {} silent for {} (watchdog); "
                                         "killing it",
                                         g.id, s.pid, format_duration(s.watchdog)));
        kill_slot(s, SIGKILL);
        s.watchdog_fired = true;
      }
      if (!s.running() && !stopping_ && due.reached(s.restart_at)) {
        s.restart_at = {};
        ++s.restarts;
        ++restarts_;
        ++metrics_.app_restarts;
        if (auto r = spawn_slot(g, s); !r) {
          log_.log("restart_failed", fmt::format("generation {}: {}", g.id, r.error().message()));
          ++s.failures_in_a_row;
          s.restart_at = due.now() + backoff(o_.backoff_min, o_.backoff_max, s.failures_in_a_row);
          (void)due.reached(s.restart_at);
        }
      }
    }
    if (g.state == generation_state::settling && due.reached(g.settle_deadline)) take_over(g);
    if (g.state == generation_state::retiring &&
        ((may_stop_ && may_stop_(g)) || due.reached(g.retire_deadline)))
      stop_generation(g, o_.stop_signal);
    if ((g.state == generation_state::draining || g.state == generation_state::failed) &&
        g.stop_sent && !g.killed && g.any_running() && due.reached(g.stop_deadline)) {
      log_.log("stop_timeout",
               fmt::format("generation {}: still running {} after {}: SIGKILL to pid {}", g.id,
                           signal_name(o_.stop_signal), format_duration(o_.stop_timeout), g.pids()),
               {{"generation", g.id}});
      for (auto& s : g.slots) kill_slot(s, SIGKILL);
      g.killed = true;
      ++metrics_.stop_escalations;
    }
  }
  check_progress();
  // A generation waiting for its port to be its own (upstream_owner.hpp) is looked at again.
  if (const generation* p = pending(); p != nullptr) (void)due.reached(p->upstream_recheck);
  control_.expire(due);
  if (metrics_server_) metrics_server_->expire(due);
  log_.report_suppressed(due);
  return due.next();
}

}  // namespace handoff::supervisor
