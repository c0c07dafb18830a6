// Deadlines, asked of the code that acts on them: a timed check is written
//
//   if (state_that_acts && due.reached(deadline)) act();
//
// so a deadline counts for the next wake-up only where the same code would act on it once it
// is reached. The loop cannot sleep past a deadline nobody looked at, nor spin on a deadline
// that is in the past but that nothing acts on.
#pragma once

#include <algorithm>
#include <chrono>

namespace handoff::supervisor {

using clock = std::chrono::steady_clock;

class deadlines {
 public:
  explicit deadlines(clock::time_point now) : now_(now) {}
  clock::time_point now() const noexcept { return now_; }
  // True when `t` has come: the caller acts now. Otherwise `t` is a candidate for the next
  // wake-up. The zero time point means "no deadline".
  bool reached(clock::time_point t) noexcept {
    if (t == clock::time_point{}) return false;
    if (now_ >= t) return true;
    next_ = std::min(next_, t);
    return false;
  }
  // The earliest deadline not yet reached, or time_point::max() when none.
  clock::time_point next() const noexcept { return next_; }

 private:
  clock::time_point now_;
  clock::time_point next_ = clock::time_point::max();
};

// The pause before the next try after `failures` failures in a row: min, 2 min, 4 min, ...,
// at most max. The one backoff of the supervisor (whole generations and single processes).
inline std::chrono::milliseconds backoff(std::chrono::milliseconds min,
                                         std::chrono::milliseconds max, int failures) {
  const int doublings = std::clamp(failures, 0, 20);
  if (min.count() <= 0) return std::chrono::milliseconds(0);
  if (min.count() > max.count() >> doublings) return max;
  return std::min<std::chrono::milliseconds>(max, min * (1LL << doublings));
}

}  // namespace handoff::supervisor
