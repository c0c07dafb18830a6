// Repeated log lines, limited per kind (the event name of the line): a token bucket per kind,
// log_burst lines at once and then one per log_refill, as the kernel's printk_ratelimit and
// journald's RateLimitBurst= do. The rate is set above what the supervisor's own transitions
// reach (a reload every 100 ms writes each of its kinds ten times a second), so that only a
// flood is cut: what was 170,000 lines a second of one kind becomes ten. A line beyond the
// bucket is not written but counted; the next line of its kind that is written says how many
// were left out ("... (N similar messages suppressed)"), and when none comes, the count is
// written on its own once the kind's bucket has a token again (take_reports()), so no count is
// lost and a flood costs at most one line per kind per log_refill.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace handoff::supervisor {

inline constexpr std::uint32_t log_burst = 200;
inline constexpr std::chrono::milliseconds log_refill{100};

class log_limiter {
 public:
  using clock = std::chrono::steady_clock;

  // Whether a line of `kind` is written now. When it is, `suppressed` is how many of its kind
  // were left out since the last one written (0 mostly); `last` (a suppressed line's text) is
  // kept for a report on its own.
  bool admit(std::string_view kind, std::string_view text, clock::time_point now,
             std::uint64_t& suppressed);

  struct report {
    std::string kind;
    std::uint64_t suppressed = 0;
    std::string last;  // the text of the last line left out
  };
  // The counts of kinds with lines left out whose bucket has a token again (it is spent on the
  // report); `next` is lowered to when the next such report is due (unchanged when none is).
  std::vector<report> take_reports(clock::time_point now, clock::time_point& next);

 private:
  // The bucket as time earned (integer, so no rounding loses a token): a line costs log_refill,
  // and at most log_burst lines' worth is kept.
  struct bucket {
    clock::duration credit = log_burst * log_refill;
    clock::time_point updated{};
    std::uint64_t suppressed = 0;
    std::string last;
  };
  static void refill(bucket& b, clock::time_point now);
  std::map<std::string, bucket, std::less<>> kinds_;
};

}  // namespace handoff::supervisor
