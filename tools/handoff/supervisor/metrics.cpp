// The text of `GET /metrics` (metrics.hpp): the supervisor's counts and its state now, in the
// Prometheus text exposition format (every family with HELP and TYPE, `_total` counters, units
// in seconds).
#include "supervisor/metrics.hpp"

#include <fmt/core.h>

#include "supervisor/core.hpp"

namespace handoff::supervisor {

const char* to_string(reload_failure f) {
  switch (f) {
    case reload_failure::exited:
      return "exited";
    case reload_failure::settle:
      return "settle";
    case reload_failure::ready_timeout:
      return "ready_timeout";
    case reload_failure::spawn:
      return "spawn";
  }
  return "?";
}

const char* to_string(reload_refusal r) {
  switch (r) {
    case reload_refusal::in_progress:
      return "in_progress";
    case reload_refusal::draining:
      return "draining";
    case reload_refusal::stopping:
      return "stopping";
    case reload_refusal::certificate:
      return "certificate";
  }
  return "?";
}

const char* to_string(notify_refusal r) {
  switch (r) {
    case notify_refusal::unknown_sender:
      return "unknown_sender";
    case notify_refusal::mainpid:
      return "mainpid";
    case notify_refusal::malformed:
      return "malformed";
  }
  return "?";
}

void ready_histogram::observe(double seconds) noexcept {
  std::size_t i = 0;
  while (i < bounds.size() && seconds > bounds[i]) ++i;
  ++buckets[i];
  sum += seconds;
  ++count;
}

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

double seconds_between(clock::time_point from, clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

std::string supervisor_core::metrics_text() {
  const auto now = os_.now();
  const metrics_counts& m = metrics_;
  std::string out;
  out.reserve(8192);

  family(out, "handoff_reloads_total", "counter",
         "Reloads by outcome: ok, failed (cause: exited, settle, ready_timeout, spawn) or "
         "refused (cause: in_progress, draining, stopping, certificate).");
  out += fmt::format("handoff_reloads_total{{outcome=\"ok\"}} {}\n", m.reloads_ok);
  for (std::size_t i = 0; i < reload_failure_count; ++i)
    out += fmt::format("handoff_reloads_total{{outcome=\"failed\",cause=\"{}\"}} {}\n",
                       to_string(static_cast<reload_failure>(i)), m.reloads_failed[i]);
  for (std::size_t i = 0; i < reload_refusal_count; ++i)
    out += fmt::format("handoff_reloads_total{{outcome=\"refused\",cause=\"{}\"}} {}\n",
                       to_string(static_cast<reload_refusal>(i)), m.reloads_refused[i]);

  family(out, "handoff_app_restarts_total", "counter",
         "Processes and generations of the app restarted because they died unasked.");
  out += fmt::format("handoff_app_restarts_total {}\n", m.app_restarts);

  family(out, "handoff_generations", "gauge", "Generations of the app by state.");
  std::array<int, 6> by_state{};
  int old_ones = 0;
  for (const auto& g : generations_) {
    ++by_state[static_cast<std::size_t>(g.state)];
    if (g.state == generation_state::retiring || g.state == generation_state::draining) ++old_ones;
  }
  for (std::size_t i = 0; i < by_state.size(); ++i)
    out += fmt::format("handoff_generations{{state=\"{}\"}} {}\n",
                       to_string(static_cast<generation_state>(i)), by_state[i]);

  family(out, "handoff_draining_generations", "gauge",
         "Old generations still running after a reload (retiring or draining), counted against "
         "--max-draining.");
  out += fmt::format("handoff_draining_generations {}\n", old_ones);

  family(out, "handoff_last_reload_age_seconds", "gauge",
         "Seconds since the last successful reload (before any: since the first generation took "
         "over; 0 until then).");
  const auto since = m.last_reload_ok ? m.last_reload_ok : m.first_ready;
  out += fmt::format("handoff_last_reload_age_seconds {:.3f}\n",
                     since ? seconds_between(*since, now) : 0.0);

  family(out, "handoff_ready_seconds", "histogram",
         "Seconds from the start of a generation to its take-over (every start: the first, "
         "reloads, restarts).");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < ready_histogram::bounds.size(); ++i) {
    cumulative += m.time_to_ready.buckets[i];
    out += fmt::format("handoff_ready_seconds_bucket{{le=\"{}\"}} {}\n", ready_histogram::bounds[i],
                       cumulative);
  }
  out += fmt::format("handoff_ready_seconds_bucket{{le=\"+Inf\"}} {}\n", m.time_to_ready.count);
  out += fmt::format("handoff_ready_seconds_sum {:.6f}\n", m.time_to_ready.sum);
  out += fmt::format("handoff_ready_seconds_count {}\n", m.time_to_ready.count);

  family(out, "handoff_stop_escalations_total", "counter",
         "Old generations sent SIGKILL because they outlived --stop-timeout after the stop "
         "signal.");
  out += fmt::format("handoff_stop_escalations_total {}\n", m.stop_escalations);

  family(out, "handoff_notify_refused_total", "counter",
         "Notify messages refused: from a process of no generation (unknown_sender), a MAINPID= "
         "naming no live process of the generation (mainpid), unreadable (malformed).");
  for (std::size_t i = 0; i < notify_refusal_count; ++i)
    out += fmt::format("handoff_notify_refused_total{{reason=\"{}\"}} {}\n",
                       to_string(static_cast<notify_refusal>(i)), m.notify_refused[i]);

  family(out, "handoff_open_files_limit", "gauge",
         "The supervisor's RLIMIT_NOFILE (soft; raised to the hard limit at start).");
  out += fmt::format("handoff_open_files_limit {}\n", nofile_.soft);
  if (const auto open_fds = open_fd_count()) {
    family(out, "handoff_open_files", "gauge", "File descriptors the supervisor has open.");
    out += fmt::format("handoff_open_files {}\n", *open_fds);
  }

  if (proxy_) {
    // The front counts on its own thread; a snapshot that does not come within the bound
    // leaves the last one standing (counters never go back to zero).
    if (auto s = proxy_->stats(std::chrono::milliseconds(500)); s.accepted >= last_front_.accepted)
      last_front_ = std::move(s);
    const auto& f = last_front_;
    family(out, "handoff_proxy_requests_total", "counter",
           "--proxy: requests relayed (http: request heads accepted; tcp: connections).");
    out += fmt::format("handoff_proxy_requests_total {}\n", f.requests);
    family(out, "handoff_proxy_upstream_errors_total", "counter",
           "--proxy: connects to a generation's upstream that failed (then tried again).");
    out += fmt::format("handoff_proxy_upstream_errors_total {}\n", f.connect_failures);
    family(out, "handoff_proxy_retries_total", "counter",
           "--proxy http: requests sent again on a new connection after a pooled one ended "
           "before any byte of the answer.");
    out += fmt::format("handoff_proxy_retries_total {}\n", f.retried);
    family(out, "handoff_proxy_responses_total", "counter",
           "--proxy: answers made by the proxy itself, by status code: 502 (the app failed the "
           "request), 503 (no generation ready within --queue-timeout).");
    out += fmt::format("handoff_proxy_responses_total{{code=\"502\"}} {}\n", f.bad_gateway);
    out += fmt::format("handoff_proxy_responses_total{{code=\"503\"}} {}\n", f.unavailable);
    family(out, "handoff_proxy_client_connections", "gauge",
           "--proxy: client connections open now.");
    out += fmt::format("handoff_proxy_client_connections {}\n", f.client_connections);
    family(out, "handoff_proxy_max_connections", "gauge",
           "--proxy: client connections open at most (--max-connections); beyond, they wait in "
           "the kernel's listen queue.");
    out += fmt::format("handoff_proxy_max_connections {}\n", o_.proxy.max_connections.value_or(0));
    family(out, "handoff_proxy_accept_paused_total", "counter",
           "--proxy: times accepting paused, by reason: max_connections (the bound reached), "
           "out_of_fds (accept failed for want of fds or memory).");
    out += fmt::format("handoff_proxy_accept_paused_total{{reason=\"max_connections\"}} {}\n",
                       f.limit_reached);
    out += fmt::format("handoff_proxy_accept_paused_total{{reason=\"out_of_fds\"}} {}\n",
                       f.accept_failures);
  }
  return out;
}

}  // namespace handoff::supervisor
