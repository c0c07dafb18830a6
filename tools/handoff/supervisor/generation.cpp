// The state machine of generations (generation.hpp): every transition of a generation and of
// its processes happens here; the other parts only report events (an exit, a notification, a
// deadline) and call in.
#include "supervisor/generation.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <algorithm>
#include <stdexcept>

#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/ticket_keys.hpp"
#include "supervisor/command_line_expand.hpp"
#include "supervisor/core.hpp"

namespace handoff::supervisor {

using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;

const char* to_string(generation_state s) {
  switch (s) {
    case generation_state::starting:
      return "starting";
    case generation_state::settling:
      return "settling";
    case generation_state::serving:
      return "serving";
    case generation_state::retiring:
      return "retiring";
    case generation_state::draining:
      return "draining";
    case generation_state::failed:
      return "failed";
  }
  return "?";
}

std::string generation::pids() const {
  std::string out;
  for (const auto& s : slots) {
    if (!s.running()) continue;
    if (!out.empty()) out += ' ';
    out += std::to_string(s.pid);
  }
  return out.empty() ? "none" : out;
}

namespace {

std::string describe(const std::optional<exit_status>& s) {
  return s ? s->describe() : "exited (status unknown: not a child of the supervisor)";
}

}  // namespace

generation* supervisor_core::pending() {
  for (auto& g : generations_)
    if (g.state == generation_state::starting || g.state == generation_state::settling) return &g;
  return nullptr;
}

generation* supervisor_core::serving() {
  for (auto& g : generations_)
    if (g.state == generation_state::serving) return &g;
  return nullptr;
}

result<void> supervisor_core::spawn_slot(generation& g, slot& s) {
  spawn_options so;
  so.argv = o_.command;
  // In proxy mode the app gets its generation's private upstreams, never the public sockets.
  if (proxy_)
    proxy_->add_to_spawn(g.id, so);
  else
    for (const auto& h : sockets_) so.fds.push_back({h.fd.get(), h.name});
  for (const auto& f : fdstore_) so.fds.push_back({f.fd.get(), f.name});
  // --proxy https: TLS ends in the supervisor, and so do its keys (the app has no TLS socket).
  if (ticket_keys_ && o_.proxy.kind != proxy_kind::https)
    so.fds.push_back({ticket_keys_.get(), std::string(ticket_keys_name)});
  if (notify_) so.notify_socket = notify_->address();
  so.group = process_group::new_group;
  // A supervisor killed outright (SIGKILL) takes its children with it rather than leaving
  // them holding the ports; they get the stop signal, as on any stop.
  so.parent_death_signal = o_.stop_signal;
  // The soft limit we were started with, not the one we raised for ourselves (fd_limits.hpp).
  if (nofile_.raised()) so.open_files_soft_limit = nofile_.original_soft;
  so.extra_environment.push_back("HANDOFF_GENERATION=" + std::to_string(g.id));
  if (o_.watchdog.count() > 0)
    so.extra_environment.push_back(
        "WATCHDOG_USEC=" +
        std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(
                           std::min<std::chrono::milliseconds>(o_.watchdog, watchdog_max))
                           .count()));
  // $PORT and the others in the arguments, once every variable of ours is known.
  so.argv = expand_command_line(o_.command, so.extra_environment);
  auto pid = os_.spawn(so);
  if (!pid) return pid.error();
  ++transitions_;
  const auto now = os_.now();
  s.pid = *pid;
  s.pgid = *pid;
  s.former.clear();
  s.pidfd = os_.open_pidfd(*pid);
  s.leader_reaped = false;
  s.watchdog_fired = false;
  s.ready = s.stopping = s.reloading = s.heard = false;
  s.started = now;
  s.ready_deadline = now + o_.ready_timeout;
  s.watchdog = std::min<std::chrono::milliseconds>(o_.watchdog, watchdog_max);
  s.status_text.clear();
  if (o_.ready == ready_mode::tcp || o_.ready == ready_mode::http) {
    std::string target = o_.ready_target;
    std::string unix_path;
    if (proxy_) {
      // The generation's own address: only its processes can answer there.
      const std::string own = proxy_->probe_address(g.id);
      if (own.rfind("unix:", 0) == 0) unix_path = own.substr(5);
      if (o_.ready == ready_mode::tcp) {
        target = own;
      } else {
        const auto path_at = target.find('/', 7);
        target = "http://" + (unix_path.empty() ? own : std::string("localhost")) +
                 (path_at == std::string::npos ? std::string("/") : target.substr(path_at));
      }
    } else if (o_.ready == ready_mode::tcp && target.empty()) {
      for (const auto& h : sockets_) {
        auto where = local_address(h.fd.get());
        if (where && where->kind == transport::tcp) {
          target = (where->host.empty()                          ? std::string("127.0.0.1")
                    : where->host.find(':') != std::string::npos ? "[" + where->host + "]"
                                                                 : where->host) +
                   ":" + std::to_string(where->port);
          break;
        }
      }
    }
    s.probe = start_probe(o_.ready == ready_mode::http ? "http" : "tcp", target, wake_fd_.get(),
                          unix_path);
  }
  log_.log("started", fmt::format("generation {}: started pid {}", g.id, s.pid),
           {{"generation", g.id}, {"pid", static_cast<long long>(s.pid)}});
  return {};
}

void supervisor_core::start_generation(bool is_restart, std::optional<std::uint64_t> waiter) {
  generation& g = generations_.emplace_back();
  ++transitions_;
  g.id = next_id_++;
  g.started = os_.now();
  g.is_restart = is_restart;
  g.slots.resize(static_cast<std::size_t>(o_.processes));
  if (waiter) g.waiters.push_back(*waiter);
  if (!is_restart && g.id > 1) os_.notify_manager(manager_event::reloading);
  if (proxy_) {
    if (auto r = proxy_->prepare(g.id); !r) {
      if (g.id == 1) throw std::runtime_error(r.error().message());
      fail_generation(g, reload_failure::spawn, r.error().message());
      return;
    }
  }
  for (auto& s : g.slots) {
    if (auto r = spawn_slot(g, s); !r) {
      // The very first start failing to exec is a setup error (a typo in the command), not a
      // crash to retry; later ones (a binary being replaced during a deploy) are retried.
      if (g.id == 1) {
        for (auto& other : g.slots) kill_slot(other, SIGKILL);
        throw std::runtime_error(r.error().message());
      }
      fail_generation(g, reload_failure::spawn, r.error().message());
      return;
    }
  }
  check_progress();
}

void supervisor_core::mark_ready(generation& g, slot& s, const char* how) {
  const auto now = os_.now();
  ++transitions_;
  s.ready = true;
  s.ready_at = now;
  s.last_watchdog = now;
  if (s.probe) s.probe->abandoned = true;
  s.probe.reset();
  log_.log("ready",
           fmt::format("generation {}: pid {} ready ({}, {} ms)", g.id, s.pid, how,
                       ms_since(s.started, now)),
           {{"generation", g.id},
            {"pid", static_cast<long long>(s.pid)},
            {"ms", ms_since(s.started, now)}});
}

void supervisor_core::take_over(generation& g) {
  const auto now = os_.now();
  ++transitions_;
  generation* old = serving();
  g.state = generation_state::serving;
  app_failures_ = 0;
  const std::string text = fmt::format("generation {} took over: pid {} ready in {} ms", g.id,
                                       g.pids(), ms_since(g.started, now));
  log_.log("took_over", text, {{"generation", g.id}, {"ms", ms_since(g.started, now)}});
  metrics_.time_to_ready.observe(std::chrono::duration<double>(now - g.started).count());
  if (!metrics_.first_ready) metrics_.first_ready = now;
  if (!g.is_restart && g.id > 1) {
    ++reloads_;
    ++metrics_.reloads_ok;
    metrics_.last_reload_ok = now;
    last_reload_ = "ok " + text;
  }
  for (const auto id : g.waiters) answer(id, "ok " + text + "\n");
  g.waiters.clear();
  // Requests go to the new generation before the old one is retired: none finds no one.
  if (proxy_) proxy_->serve(g.id);
  if (old != nullptr) retire(*old);
  os_.notify_manager(manager_event::ready, "generation " + std::to_string(g.id) + " serving");
  check_sockets_served(g);
}

void supervisor_core::check_sockets_served(const generation& g) {
  // --proxy: the front accepts on the public sockets; the app never gets them.
  if (proxy_) return;
  std::vector<ino_t> held;
  for (const auto& s : g.slots) {
    if (!s.running()) continue;
    auto inodes = os_.socket_inodes(s.pid);
    if (!inodes) return;  // unknown (no /proc): no verdict rather than a false alarm
    held.insert(held.end(), inodes->begin(), inodes->end());
  }
  for (auto& h : sockets_) {
    h.unserved_by = 0;
    if (h.inode == 0 || std::find(held.begin(), held.end(), h.inode) != held.end()) continue;
    h.unserved_by = g.id;
    log_.log("socket_unserved",
             fmt::format("ERROR: generation {} (pid {}) holds no copy of socket {}{}: nobody "
                         "accepts its connections, clients will wait for ever; does the app "
                         "serve every socket in LISTEN_FDNAMES?",
                         g.id, g.pids(), h.name.empty() ? "" : h.name + "=", h.where),
             {{"generation", g.id}, {"socket", h.name}, {"address", h.where}});
  }
}

void supervisor_core::retire(generation& g) {
  ++transitions_;
  g.state = generation_state::retiring;
  g.retire_deadline = os_.now() + o_.stop_timeout;
  if (proxy_) proxy_->retire(g.id);
  // Without a front proxy nothing of ours is in flight: the stop signal goes out at once.
  if (!may_stop_ || may_stop_(g)) stop_generation(g, o_.stop_signal);
}

void supervisor_core::kill_slot(slot& s, int sig) {
  if (!s.running()) return;
  ++transitions_;
  // Exactly once per process: to many apps a second SIGTERM or SIGINT means "stop now".
  os_.signal_slot(s, sig);
}

void supervisor_core::fail_generation(generation& g, reload_failure why, const std::string& cause) {
  ++transitions_;
  g.state = generation_state::failed;
  g.failure = cause;
  for (auto& s : g.slots) {
    kill_slot(s, SIGKILL);
    if (s.probe) s.probe->abandoned = true;
  }
  g.killed = true;
  generation* current = serving();
  std::string text = fmt::format("generation {} failed: {}", g.id, cause);
  if (current != nullptr)
    text += fmt::format("; generation {} (pid {}) keeps serving", current->id, current->pids());
  log_.log("start_failed", text, {{"generation", g.id}, {"cause", cause}});
  last_start_failure_ = text;
  if (!g.is_restart && g.id > 1) {
    ++reloads_failed_;
    ++metrics_.reloads_failed[static_cast<std::size_t>(why)];
    last_reload_ = "error " + text;
    // Our manager (systemd, Type=notify-reload) waits for READY=1 after RELOADING=1 either way.
    if (current != nullptr) os_.notify_manager(manager_event::ready, "reload failed: " + cause);
  }
  for (const auto id : g.waiters) answer(id, "error " + text + "\n");
  g.waiters.clear();
  if (current == nullptr && !stopping_) schedule_app_restart();
}

void supervisor_core::schedule_app_restart() {
  if (o_.restart == restart_policy::never || next_start_) return;
  const auto pause = backoff(o_.backoff_min, o_.backoff_max, app_failures_);
  ++app_failures_;
  next_start_ = os_.now() + pause;
  log_.log("restart_scheduled",
           fmt::format("no generation serving: starting a new one in {} ms", pause.count()),
           {{"ms", static_cast<long long>(pause.count())}});
}

void supervisor_core::stop_generation(generation& g, int sig) {
  ++transitions_;
  g.state = generation_state::draining;
  g.stop_sent = true;
  g.stop_deadline = os_.now() + o_.stop_timeout;
  for (auto& s : g.slots) {
    kill_slot(s, sig);
    if (s.probe) s.probe->abandoned = true;
    s.restart_at = {};
  }
  if (!g.any_running()) {
    log_.log("stop_sent", fmt::format("generation {}: stopped (no process running)", g.id),
             {{"generation", g.id}});
    return;
  }
  log_.log("stop_sent",
           fmt::format("generation {}: sent {} to pid {} (stop timeout {})", g.id, signal_name(sig),
                       g.pids(), format_duration(o_.stop_timeout)),
           {{"generation", g.id}, {"signal", signal_name(sig)}});
}

// After any event: a starting generation whose processes are all ready moves on.
void supervisor_core::check_progress() {
  generation* g = pending();
  if (g == nullptr || g->state != generation_state::starting || !g->all_ready()) return;
  // --upstream port: a port someone else took would get the clients (upstream_owner.hpp).
  if (!upstream_is_ours(*g)) return;
  // Settling protects an old generation that still serves; with none, there is nothing to wait for.
  if (o_.settle.count() > 0 && serving() != nullptr) {
    ++transitions_;
    g->state = generation_state::settling;
    g->settle_deadline = os_.now() + o_.settle;
    log_.log("settling", fmt::format("generation {}: ready, settling for {} before taking over",
                                     g->id, format_duration(o_.settle)));
    return;
  }
  take_over(*g);
}

std::string supervisor_core::request_reload(std::optional<std::uint64_t> waiter) {
  const auto refuse = [this](reload_refusal why) {
    ++metrics_.reloads_refused[static_cast<std::size_t>(why)];
  };
  if (stopping_) {
    refuse(reload_refusal::stopping);
    return "the supervisor is stopping";
  }
  if (generation* p = pending()) {
    refuse(reload_refusal::in_progress);
    // With nothing serving, the starting generation is no reload: the first start, or a
    // restart after the app died. A reload now would have nothing to take over from.
    if (serving() == nullptr)
      return fmt::format(
          "generation {} ({}) is still starting, started {} ms ago: nothing serves yet, so "
          "there is nothing to reload; wait until it is ready (handoff status shows it "
          "serving, within --ready-timeout {}), then reload",
          p->id, p->id == 1 ? "the first" : "a restart of the app", ms_since(p->started, os_.now()),
          format_duration(o_.ready_timeout));
    return fmt::format("a reload is already in progress: generation {} ({}) started {} ms ago",
                       p->id, to_string(p->state), ms_since(p->started, os_.now()));
  }
  int draining = 0;
  for (const auto& g : generations_)
    if (g.state == generation_state::draining || g.state == generation_state::retiring) ++draining;
  if (draining >= o_.max_draining) {
    refuse(reload_refusal::draining);
    return fmt::format(
        "{} old generations are still draining (--max-draining {}); try again once they exit",
        draining, o_.max_draining);
  }
  if (proxy_) {
    // --proxy https: the certificate first, so that a reload that cannot read it changes
    // nothing at all (the app is not restarted either): one clear failure to fix and retry.
    if (const auto problem = proxy_->reload_tls(); !problem.empty()) {
      refuse(reload_refusal::certificate);
      return "--proxy https: " + problem + "; the certificate in use keeps serving";
    }
    if (o_.proxy.kind == proxy_kind::https)
      log_.log("certificate", "--proxy https: read " + o_.proxy.tls_certificate + " and " +
                                  o_.proxy.tls_key + " again; new connections use them");
  }
  log_.log("reload", "reload requested");
  next_start_.reset();
  start_generation(false, waiter);
  return {};
}

void supervisor_core::begin_stop(const std::string& why) {
  if (stopping_) {
    log_.log("stop", why + " again: SIGKILL to every generation now");
    for (auto& g : generations_)
      for (auto& s : g.slots) kill_slot(s, SIGKILL);
    return;
  }
  ++transitions_;
  stopping_ = true;
  if (generation* g = serving()) final_generation_ = g->id;
  next_start_.reset();
  log_.log("stop", why + ": stopping every generation");
  os_.notify_manager(manager_event::stopping);
  // The front stops accepting; the requests in flight at the serving generation finish there
  // (it is retired, so stopped once they did, or at --stop-timeout) rather than being cut.
  if (proxy_) proxy_->stop();
  for (auto& g : generations_) {
    for (const auto id : g.waiters)
      answer(id, fmt::format("error generation {} abandoned: the supervisor is stopping\n", g.id));
    g.waiters.clear();
    if (proxy_ && g.state == generation_state::serving)
      retire(g);
    else if (g.state != generation_state::draining && g.state != generation_state::failed &&
             g.state != generation_state::retiring)
      stop_generation(g, o_.stop_signal);
  }
}

bool supervisor_core::finished() const {
  for (const auto& g : generations_) {
    if (g.any_running()) return false;
    if (!stopping_ && g.state == generation_state::serving)
      for (const auto& s : g.slots)
        if (!s.running() && s.restart_at != clock::time_point{}) return false;
  }
  return stopping_ || !next_start_;
}

void supervisor_core::set_own_watchdog(std::chrono::microseconds interval) {
  own_watchdog_ = interval;
  next_ping_ = os_.now();  // the first ping at once
}

int supervisor_core::exit_code() const {
  return last_status_ ? last_status_->code_or_128_plus_signal() : 0;
}

void supervisor_core::on_exit(pid_t pid, const std::optional<exit_status>& status) {
  const auto now = os_.now();
  for (auto& g : generations_) {
    for (auto& s : g.slots) {
      if (std::find(s.former.begin(), s.former.end(), pid) != s.former.end()) {
        remember_exit(pid);
        if (pid == s.pgid) s.leader_reaped = true;
        log_.log("exited",
                 fmt::format("generation {}: pid {} (handed over to pid {} by MAINPID=) {}", g.id,
                             pid, s.pid, describe(status)));
        return;
      }
      if (s.pid != pid) continue;
      remember_exit(pid);
      ++transitions_;
      const bool was_ready = s.ready;
      s.pid = 0;
      s.pgid = 0;
      s.pidfd.reset();
      s.ready = false;
      if (s.probe) s.probe->abandoned = true;
      s.probe.reset();
      s.last_exit = status;
      log_.log("exited", fmt::format("generation {}: pid {} {}", g.id, pid, describe(status)),
               {{"generation", g.id},
                {"pid", static_cast<long long>(pid)},
                {"status", describe(status)},
                {"code", static_cast<long long>(status ? status->code_or_128_plus_signal() : -1)}});
      switch (g.state) {
        case generation_state::starting:
          if (status) last_status_ = status;
          fail_generation(g, reload_failure::exited,
                          fmt::format("pid {} {} before it was ready", pid, describe(status)));
          break;
        case generation_state::settling:
          if (status) last_status_ = status;
          fail_generation(g, reload_failure::settle,
                          fmt::format("pid {} {} after it was ready, within the settle time", pid,
                                      describe(status)));
          break;
        case generation_state::serving: {
          if (status) last_status_ = status;
          if (stopping_) break;
          const bool success = status && status->success();
          const bool again = o_.restart == restart_policy::always ||
                             (o_.restart == restart_policy::on_failure && !success);
          if (!again) {
            log_.log("not_restarting",
                     fmt::format("generation {}: not restarting (--restart {})", g.id,
                                 o_.restart == restart_policy::never ? "never" : "on-failure"));
            break;
          }
          // A process that served a while before dying starts its backoff over.
          if (was_ready && now - s.ready_at >= 10s) s.failures_in_a_row = 0;
          const auto pause = backoff(o_.backoff_min, o_.backoff_max, s.failures_in_a_row);
          ++s.failures_in_a_row;
          s.restart_at = now + pause;
          log_.log("restart_scheduled",
                   fmt::format("generation {}: died unasked; restarting its process in {} ms", g.id,
                               pause.count()),
                   {{"generation", g.id}, {"ms", static_cast<long long>(pause.count())}});
          break;
        }
        case generation_state::retiring:
        case generation_state::draining:
        case generation_state::failed:
          if (status && g.id == final_generation_) {
            last_status_ = status;
            // Death by the stop signal we sent is the stop done, not a failure (systemd
            // counts a main process's non-zero status as a failed stop).
            if (stopping_ && !status->exited && status->signal == o_.stop_signal)
              last_status_ = exit_status::from_wait_status(0);
          }
          break;  // removed by the timers once nothing of it runs
      }
      return;
    }
  }
}

void supervisor_core::remove_gone_generations() {
  const auto now = os_.now();
  for (auto it = generations_.begin(); it != generations_.end();) {
    const bool over = it->state == generation_state::draining ||
                      it->state == generation_state::retiring ||
                      it->state == generation_state::failed;
    if (!over || it->any_running()) {
      ++it;
      continue;
    }
    if (proxy_) proxy_->forget(it->id);
    log_.log("gone",
             fmt::format("generation {}: {} ({} ms after its start)", it->id,
                         it->state == generation_state::failed ? "failed, all its processes gone"
                                                               : "stopped",
                         ms_since(it->started, now)),
             {{"generation", it->id}});
    it = generations_.erase(it);
  }
}

}  // namespace handoff::supervisor
