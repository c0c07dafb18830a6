// The loop: one poll over every source of events, then the timers; and the two kinds of
// request from outside (signals, control sessions), dispatched to the state machine.
#include "supervisor/supervisor.hpp"

#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "supervisor/core.hpp"

namespace handoff::supervisor {

using ms = std::chrono::milliseconds;

void supervisor_core::on_signal() {
  for (;;) {
    signalfd_siginfo info{};
    const ssize_t n = ::read(signal_fd_.get(), &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof info)) return;
    const int sig = static_cast<int>(info.ssi_signo);
    switch (sig) {
      case SIGCHLD:
        break;  // reaped below, all at once
      case SIGHUP:
        on_reload_signal();
        break;
      case SIGTERM:
      case SIGINT:
        begin_stop(signal_name(sig));
        break;
      case SIGUSR2:
        log_.log("reexec", "SIGUSR2: re-executing");
        request_reexec(std::nullopt);
        break;
      default:
        if (generation* g = serving())
          for (auto& s : g->slots)
            if (s.running()) os_.signal_process(s, sig);
        log_.log("signal", fmt::format("forwarded {} to the serving generation", signal_name(sig)));
    }
  }
}

void supervisor_core::on_reload_signal() {
  const auto refused = request_reload(std::nullopt);
  if (refused.empty()) return;
  log_.log("reload_refused", "SIGHUP: reload refused: " + refused);
  // Our manager (systemd, Type=notify-reload) sent the SIGHUP and now waits for RELOADING=1
  // and then READY=1: a refused reload is a reload that is over at once.
  if (stopping_) return;
  os_.notify_manager(manager_event::reloading);
  os_.notify_manager(manager_event::ready, "reload refused: " + refused);
}

void supervisor_core::answer(std::uint64_t id, const std::string& text) {
  control_.answer(id, text);
}

void supervisor_core::on_control_request(std::uint64_t id, const std::string& line) {
  bool printable = true;
  for (const char c : line)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
      printable = false;
  if (line == "reload") {
    control_.wait(id);
    const auto refused = request_reload(id);
    if (!refused.empty()) {
      log_.log("reload_refused", "reload refused: " + refused);
      answer(id, "error reload refused: " + refused + "\n");
    }
    return;
  }
  if (line == "status" || line == "status json") {
    answer(id, status_text(line == "status json"));
    return;
  }
  if (line == "reexec") {
    request_reexec(id);
    return;
  }
  if (line == "stop") {
    // The connection closes when the supervisor exits.
    control_.reply_and_wait(id, "ok stopping\n");
    begin_stop("stop requested");
    return;
  }
  std::string quoted;
  json_string(quoted, printable ? line : std::string("(not printable text)"));
  answer(id, "error unknown command " + quoted +
                 ": expected reload, status, status json, reexec or "
                 "stop\n");
}

int supervisor_core::loop() {
  if (!restored_) start_generation(false, std::nullopt);
  std::vector<pollfd> fds;
  // Only ids are kept across the handlers of one round: any handler may end any session or
  // generation, so nothing that points into them survives from before poll().
  std::vector<std::pair<int, pid_t>> pidfd_owner;  // generation id, main pid
  std::vector<std::uint64_t> session_ids, metrics_ids;
  for (;;) {
    // Timers until nothing more changes: an action of one (a take-over) may set the deadline
    // of another (the old generation's stop timeout).
    clock::time_point next{};
    for (int round = 0; round < 16; ++round) {
      const auto before = transitions_;
      next = on_timers();
      if (transitions_ == before) break;
    }
    if (finished()) break;

    fds.clear();
    pidfd_owner.clear();
    session_ids.clear();
    metrics_ids.clear();
    fds.push_back({signal_fd_.get(), POLLIN, 0});
    fds.push_back({notify_->fd(), POLLIN, 0});
    fds.push_back({wake_fd_.get(), POLLIN, 0});
    fds.push_back({log_.poll_fd(), POLLOUT, 0});
    for (auto& g : generations_)
      for (auto& s : g.slots)
        if (s.pidfd) {
          fds.push_back({s.pidfd.get(), POLLIN, 0});
          pidfd_owner.emplace_back(g.id, s.pid);
        }
    const std::size_t first_control = fds.size();
    control_.poll_fds(fds, session_ids);
    const std::size_t proxy_at = fds.size();
    if (proxy_) fds.push_back({proxy_->event_fd(), POLLIN, 0});
    const std::size_t first_metrics = fds.size();
    if (metrics_server_) metrics_server_->poll_fds(fds, metrics_ids);
    const std::size_t probe_at = fds.size();  // `handoff reexec`'s probe (reexec_probe.cpp)
    fds.push_back({reexec_probe_fd(), POLLIN, 0});
    const auto wait = next == clock::time_point::max()
                          ? 3'600'000LL
                          : std::chrono::ceil<ms>(next - os_.now()).count();
    const int ready =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::clamp<long long>(wait, 0, 3'600'000)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    }
    if (fds[0].revents != 0) on_signal();
    // Children's exits after signals (a SIGTERM's stop must see the current states), before
    // notifications: a READY=1 from a process that has since died must not count.
    reap();
    if (fds[1].revents != 0) on_notify();
    if (fds[2].revents != 0) {
      std::uint64_t count = 0;
      (void)!::read(wake_fd_.get(), &count, sizeof count);
    }
    if (fds[3].revents != 0) log_.flush();
    if (fds[probe_at].revents != 0) on_reexec_probe_output();
    // Pidfds of adopted main processes; the owners may be gone by now, so look them up again.
    for (std::size_t i = 0; i < pidfd_owner.size(); ++i) {
      if (fds[4 + i].revents == 0) continue;
      for (auto& g : generations_) {
        if (g.id != pidfd_owner[i].first) continue;
        for (auto& s : g.slots)
          if (s.pid == pidfd_owner[i].second && s.pidfd) {
            on_pidfd(g, s);
            break;
          }
        break;
      }
    }
    // A generation drained: the timers, run first thing next round, send its stop signal.
    if (proxy_ && fds[proxy_at].revents != 0) {
      proxy_->on_event();
      // A re-exec waiting for the client connections to park.
      if (auto parked = proxy_->take_park_result()) on_parked(*parked);
    }
    for (std::size_t i = 0; i < session_ids.size(); ++i) {
      if (fds[first_control + 1 + i].revents == 0) continue;
      if (auto line = control_.read(session_ids[i])) on_control_request(session_ids[i], *line);
    }
    if (fds[first_control].revents != 0) control_.accept(log_, os_.now());
    if (metrics_server_) {
      for (std::size_t i = 0; i < metrics_ids.size(); ++i)
        if (fds[first_metrics + 1 + i].revents != 0)
          metrics_server_->on_ready(metrics_ids[i], [this] { return metrics_text(); });
      if (fds[first_metrics].revents != 0) metrics_server_->accept(os_.now());
    }
  }
  control_.answer_all("ok stopped\n");
  const int code = exit_code();
  log_.log("exit", fmt::format("supervisor exiting with status {}", code),
           {{"code", static_cast<long long>(code)}});
  return code;
}

int run(run_options options) {
  system_os os;
  supervisor_core s(std::move(options), os);
  // An image started by `handoff reexec` takes the state of the one before instead.
  if (std::getenv("HANDOFF_REEXEC_STATE") != nullptr)
    s.restore();
  else
    s.setup();
  return s.loop();
}

}  // namespace handoff::supervisor
