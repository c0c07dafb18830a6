// `handoff run --metrics ADDR`: what the supervisor counts, and the text it serves on
// `GET /metrics` (the Prometheus text exposition format, version 0.0.4).
//
// The counts live in supervisor_core (metrics_counts) and are moved only by the state machine
// (generation.cpp, timers.cpp, notify_dispatch.cpp); the text is made from them and from the
// state at the moment of the scrape (supervisor_core::metrics_text, metrics.cpp). The transport
// is metrics_http.hpp. Invariant: every series of a counter is written at every scrape, zeros
// included, and a counter never goes down while the supervisor runs.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "supervisor/os.hpp"

namespace handoff::supervisor {

// Why a reload failed: the `cause` label of handoff_reloads_total{outcome="failed"}.
enum class reload_failure {
  exited,         // a process exited or was killed before it was ready
  settle,         // a process died within --settle
  ready_timeout,  // not ready within --ready-timeout
  spawn,          // could not be started (exec failed, no private upstream)
};
inline constexpr std::size_t reload_failure_count = 4;
const char* to_string(reload_failure f);

// Why a reload was refused: the `cause` label of handoff_reloads_total{outcome="refused"}.
enum class reload_refusal { in_progress, draining, stopping, certificate };
inline constexpr std::size_t reload_refusal_count = 4;
const char* to_string(reload_refusal r);

// Why a notify message was refused: the `reason` label of handoff_notify_refused_total.
enum class notify_refusal {
  unknown_sender,  // not a process of any generation
  mainpid,         // MAINPID= naming no live process of the generation's group
  malformed,       // a datagram the receiver could not read
};
inline constexpr std::size_t notify_refusal_count = 3;
const char* to_string(notify_refusal r);

// Seconds from a generation's start to its take-over, Prometheus-style cumulative on output.
struct ready_histogram {
  static constexpr std::array<double, 12> bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                    0.5,   1,    2.5,   5,    10,  30};
  std::array<std::uint64_t, bounds.size() + 1> buckets{};  // the last one: above every bound
  double sum = 0;
  std::uint64_t count = 0;
  void observe(double seconds) noexcept;
};

struct metrics_counts {
  std::uint64_t reloads_ok = 0;
  std::array<std::uint64_t, reload_failure_count> reloads_failed{};
  std::array<std::uint64_t, reload_refusal_count> reloads_refused{};
  std::uint64_t app_restarts = 0;      // processes and whole generations restarted unasked
  std::uint64_t stop_escalations = 0;  // generations sent SIGKILL at --stop-timeout
  std::array<std::uint64_t, notify_refusal_count> notify_refused{};
  ready_histogram time_to_ready;
  std::optional<clock::time_point> last_reload_ok;  // the last successful reload
  std::optional<clock::time_point> first_ready;     // the first take-over of all
};

}  // namespace handoff::supervisor
