// The byte relay of `handoff run --proxy tcp`: one client connection, one upstream connection
// of the generation that served when the client came, bytes both ways until both sides are
// done, for any protocol over TCP (or a unix stream socket).
//
// Invariants: the upstream connection is taken once, when the client connects, and given back
// (never reused) when the relay ends; a half-close is passed on as a half-close; an error on
// either side, or forget() of the generation, shuts both connections down. Bytes move with
// splice(2) through a pipe per direction, so they are not copied through user space.
#pragma once

#include <cstdint>

#include "proxy/upstream.hpp"

namespace handoff::proxy {

struct tcp_counters {
  std::uint64_t connections = 0;  // relayed to an upstream
  std::uint64_t unavailable = 0;  // closed at once: no generation ready or reachable
};

// `client` must be non-blocking (as the front accepts it).
asio::awaitable<void> relay_tcp(stream client, upstream_router& r, std::size_t listener,
                                tcp_counters& counters);

}  // namespace handoff::proxy
