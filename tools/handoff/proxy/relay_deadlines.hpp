// The deadlines of one relayed connection: one per direction (client read, client write,
// upstream read, upstream write), so that a wait in one direction can neither lengthen nor
// clear the deadline of a wait in another (a client that trickles its body while it reads
// none of the response must not keep the response's write alive). The relay's watchdog
// (http_relay.cpp) sleeps until the nearest one and cancels the socket whose deadline passed.
//
// Invariants:
// - A duration of zero, like duration::max(), sets no deadline: "off", as systemd's and
//   HAProxy's "infinity" (every timeout option of handoff reads 0 so).
// - A direction's timed_out() stays true from its expiry until it is set again.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>

namespace handoff::proxy {

enum class direction : std::size_t { client_read, client_write, upstream_read, upstream_write };

class relay_deadlines {
 public:
  using clock_type = std::chrono::steady_clock;

  // When a wait of `d` from now ends (time_point::max() for none).
  static clock_type::time_point after(clock_type::duration d) {
    if (d <= clock_type::duration::zero() || d == clock_type::duration::max())
      return clock_type::time_point::max();
    return clock_type::now() + d;
  }

  // Arms `which` for a wait of `d` from now and clears its timed_out().
  void set(direction which, clock_type::duration d) {
    auto& s = slots_[index(which)];
    s.at = after(d);
    s.timed_out = false;
  }
  // The wait in `which` is over: no deadline (timed_out() keeps its value).
  void clear(direction which) { slots_[index(which)].at = clock_type::time_point::max(); }
  bool timed_out(direction which) const { return slots_[index(which)].timed_out; }
  // Marks `which` timed out now (the router closing ends an idle wait as its deadline would).
  void expire(direction which) {
    auto& s = slots_[index(which)];
    s.at = clock_type::time_point::max();
    s.timed_out = true;
  }

  clock_type::time_point nearest() const {
    auto at = clock_type::time_point::max();
    for (const auto& s : slots_) at = std::min(at, s.at);
    return at;
  }
  // Expires every deadline that `now` has passed; whether one of `a` or `b` did.
  bool expire_passed(clock_type::time_point now, direction a, direction b) {
    bool any = false;
    for (const auto which : {a, b}) {
      if (slots_[index(which)].at <= now) {
        expire(which);
        any = true;
      }
    }
    return any;
  }

  // The watchdog's longest sleep: the shortest timeout in use (zero ones are off), at most
  // `limit`, so that a deadline set while it sleeps is never much nearer than the one armed.
  template <class... Durations>
  static clock_type::duration tick(clock_type::duration limit, Durations... timeouts) {
    auto t = limit;
    for (const auto d : {clock_type::duration(timeouts)...})
      if (d > clock_type::duration::zero()) t = std::min(t, d);
    return t;
  }

 private:
  struct slot {
    clock_type::time_point at = clock_type::time_point::max();
    bool timed_out = false;
  };
  static std::size_t index(direction d) { return static_cast<std::size_t>(d); }
  std::array<slot, 4> slots_{};
};

}  // namespace handoff::proxy
