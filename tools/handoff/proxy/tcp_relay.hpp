// The byte relay of `handoff run --proxy tcp`: one client connection, one upstream connection
// of the generation that served when the client came, bytes both ways until both sides are
// done, for any protocol over TCP (or a unix stream socket).
//
// Invariants: the upstream connection is taken once, when the client connects, and given back
// (never reused) when the relay ends; a half-close is passed on as a half-close; an error on
// either side, or forget() of the generation, shuts both connections down. Bytes move with
// splice(2) through a pipe per direction, so they are not copied through user space.
// While the front parks its relays (`handoff reexec`, handover.hpp), a direction whose pipe is
// empty reads nothing more; once both are so, the relay parks, and it may be handed over with
// both of its sockets, closing neither.
#pragma once

#include <cstdint>

#include "proxy/handover.hpp"
#include "proxy/upstream.hpp"

namespace handoff::proxy {

struct tcp_counters {
  std::uint64_t connections = 0;  // relayed to an upstream
  std::uint64_t unavailable = 0;  // closed at once: no generation ready or reachable
};

// `client` must be non-blocking (as the front accepts it). `lot`: null when never parked.
asio::awaitable<void> relay_tcp(stream client, upstream_router& r, std::size_t listener,
                                tcp_counters& counters, parking_lot* lot);

// A relay handed over by the image before (handover.hpp): `client` and `upstream` (already
// lent by r.adopt()) carry on where they stopped, the directions that ended stay ended.
asio::awaitable<void> resume_tcp(stream client, upstream_connection upstream, upstream_router& r,
                                 std::size_t listener, bool client_done, bool upstream_done,
                                 parking_lot* lot);

}  // namespace handoff::proxy
