// The state that `handoff reexec` hands from one image of the supervisor to the next, across
// an exec with the same pid (reexec.cpp writes and reads it, state.cpp maps it to and from
// supervisor_core).
//
// Format: a memfd holding one line "handoff-state VERSION\n" and then one JSON object. Every
// fd it names is open in the new image at the same number (close-on-exec cleared for the exec
// only, set again at once by the reader). A reader takes versions state_version_min to
// state_version; any other is refused, whole, before anything of it is used, and the image
// before is exec'd back with the same state (it wrote it, so it reads it).
//
// Version 1: sockets, FDSTORE fds, the notify and control sockets (with their control
// sessions), the --metrics listener, generations with their processes (pids, process groups,
// deadlines as CLOCK_MONOTONIC nanoseconds, which an exec does not change), counters.
// Version 2 adds "proxy" (--proxy http): each generation's private upstreams (the listening
// socket we hold, the unix socket file we made, the port), the client connections handed
// over at a request boundary, each with the bytes read from it ahead (hex), and the front's
// totals ("counts", optional). Version 3 (--proxy tcp) adds to each client connection its
// upstream connection to the app ("upstream": its fd), the generation it relays to, and which
// directions ended ("client_done", "upstream_done"); a build that reads only up to version 2
// would take such a connection for an HTTP client, so only --proxy tcp writes 3. A supervisor
// without a front still writes version 1, which every build with `handoff reexec` reads.
#pragma once

namespace handoff::supervisor {

inline constexpr int state_version = 3;
inline constexpr int state_version_min = 1;
inline constexpr const char* state_header = "handoff-state ";

// The environment of the new image: the state's fd; and, when it is the old image coming back,
// why the new one refused.
inline constexpr const char* env_state_fd = "HANDOFF_REEXEC_STATE";
inline constexpr const char* env_failed = "HANDOFF_REEXEC_FAILED";
// Set by a supervisor that asks a binary which state versions it reads, before it execs it:
// the binary prints one line "handoff-reexec state MIN MAX VERSION" and exits 0 (main.cpp).
inline constexpr const char* env_probe = "HANDOFF_REEXEC_PROBE";
// For tests: a reader that takes state versions up to this one only (as an older build would).
inline constexpr const char* env_read_max = "HANDOFF_STATE_VERSION_MAX";

}  // namespace handoff::supervisor
