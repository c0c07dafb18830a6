// What a run means: totals by outcome, latency, a 100 ms timeline, and a window around each
// restart; and the three ways of showing it (terminal summary, JSON, SVG).
//
// A restart window starts when the restart command starts and ends when traffic is back to
// steady state: at the start of the first run of 5 consecutive steady 100 ms bins (0.5 s) that
// begins at or after the command exited, where a bin is steady when it has no failed request and
// at least half the ok responses per bin of the median of the 10 bins (1 s) before the
// restart. A window never reaches into the next restart's window nor past the end of the run;
// when traffic never settles it ends there. A request belongs to a window when it was in flight
// during it (it ended after the window's start and started before its end: requests held in a
// queue during a stall count for the restart even when they complete after it); the timeline
// places requests by the time of their outcome.
// "Steady state" is everything outside the windows. A connection the client opened belongs to
// the window it was opened in, a reconnect to the window in which the connection it replaces
// was lost (see load.hpp).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "check/histogram.hpp"
#include "check/load.hpp"
#include "check/outcome.hpp"

namespace handoff::check {

struct tally {
  std::uint64_t requests = 0;
  std::array<std::uint64_t, outcome_count> by_outcome{};
  std::map<int, std::uint64_t> status_codes;  // of outcome::status
  histogram latency;                          // every request, failed ones included

  void add(const request_record& r);
  std::uint64_t count(outcome o) const { return by_outcome[static_cast<std::size_t>(o)]; }
  std::uint64_t ok() const { return count(outcome::ok); }
  std::uint64_t failed() const { return requests - ok(); }
};

struct timeline_bin {
  std::uint32_t requests = 0, ok = 0, failed = 0;
  std::uint32_t latency_max_us = 0;
  std::uint64_t latency_sum_us = 0;
};

struct restart_window {
  restart_record restart;
  std::int64_t from_us = 0, to_us = 0;
  bool settled = false;          // traffic was back to steady state within the window
  double baseline_ok_per_s = 0;  // the pre-restart median, per second
  tally stats;
  std::uint64_t connections_opened = 0;  // opened during the window
  std::uint64_t reconnects = 0;          // of those, reconnects (keep-alive mode only)
};

struct run_summary {
  tally total;
  tally steady;       // outside every restart window
  tally in_restarts;  // inside any restart window (all windows together)
  std::vector<timeline_bin> timeline;
  std::int64_t bin_us = 100'000;
  std::vector<restart_window> windows;
  std::uint64_t connections_opened = 0;  // over the whole run
  std::uint64_t reconnects = 0;
};

run_summary analyze(const run_result& run, std::int64_t bin_us = 100'000);

struct report_context {
  const load_options& options;
  const run_result& run;
  const run_summary& summary;
};

std::string format_text(const report_context& r);
// One JSON object (Boost.JSON): the fields are listed in docs/check.md.
std::string format_json(const report_context& r);
std::string format_svg(const report_context& r);

}  // namespace handoff::check
