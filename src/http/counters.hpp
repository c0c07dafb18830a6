// Internal: the counters behind server::stats() (handoff/http/stats.hpp).
//
// One thread_counters per server thread, written only by that thread (its accept loops and the
// connections it serves), so an increment is a relaxed load and store of a line that thread
// alone writes: no locked instruction and no line bouncing between threads on the request path.
// stats() reads them from any thread with relaxed loads and sums them. What drain() counts
// (from the caller's thread) is in server::impl as ordinary atomics.
#pragma once

#include <atomic>
#include <cstdint>

namespace handoff::http {

using counter = std::atomic<std::uint64_t>;

// For the one thread that writes `c`.
inline void bump(counter& c) noexcept {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

struct alignas(64) thread_counters {
  counter connections_accepted{0};
  counter requests{0};
  counter bad_requests{0};
  counter payload_too_large{0};
  counter header_fields_too_large{0};
  counter handler_exceptions{0};
  counter timeouts{0};
  counter tls_handshake_failures{0};
  counter idle_closed{0};
  counter drain_closed_after_response{0};
  counter drain_closed_idle{0};
};

}  // namespace handoff::http
