#include "supervisor/log_limiter.hpp"

#include <algorithm>

namespace handoff::supervisor {

void log_limiter::refill(bucket& b, clock::time_point now) {
  if (b.updated == clock::time_point{}) {
    b.updated = now;
    return;
  }
  if (now <= b.updated) return;
  b.credit = std::min<clock::duration>(log_burst * log_refill, b.credit + (now - b.updated));
  b.updated = now;
}

bool log_limiter::admit(std::string_view kind, std::string_view text, clock::time_point now,
                        std::uint64_t& suppressed) {
  suppressed = 0;
  auto it = kinds_.find(kind);
  if (it == kinds_.end()) it = kinds_.emplace(std::string(kind), bucket{}).first;
  bucket& b = it->second;
  refill(b, now);
  if (b.credit < log_refill) {
    ++b.suppressed;
    b.last.assign(text);
    return false;
  }
  b.credit -= log_refill;
  suppressed = b.suppressed;
  b.suppressed = 0;
  b.last.clear();
  return true;
}

std::vector<log_limiter::report> log_limiter::take_reports(clock::time_point now,
                                                           clock::time_point& next) {
  std::vector<report> out;
  for (auto& [kind, b] : kinds_) {
    if (b.suppressed == 0) continue;
    refill(b, now);
    if (b.credit >= log_refill) {
      b.credit -= log_refill;
      out.push_back({kind, b.suppressed, std::move(b.last)});
      b.suppressed = 0;
      b.last.clear();
      continue;
    }
    next = std::min(next, now + (log_refill - b.credit));
  }
  return out;
}

}  // namespace handoff::supervisor
