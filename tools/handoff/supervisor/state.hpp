// The state that `handoff reexec` hands from one image of the supervisor to the next, across
// an exec with the same pid: its typed schema (saved_state), its versions, and its codec
// (state_codec.cpp). reexec.cpp writes and reads it; state.cpp maps supervisor_core to and
// from saved_state.
//
// Format: a memfd holding one line "handoff-state VERSION\n" and then one JSON object. Every
// fd it names is open in the new image at the same number (close-on-exec cleared for the exec
// only, set again at once by the reader), and no fd is named twice. A reader takes versions
// state_version_min to state_version; any other is refused, whole, before anything of it is
// used, and the image before is exec'd back with the same state (it wrote it, and it decoded
// it before its execve, so it reads it).
//
// decode_state() reads ALL of a state into a saved_state, checking every field's type and
// range, or refuses it with the path of the first bad field; nothing is adopted before that.
// Unknown keys are ignored (a build that adds one that matters bumps the version).
//
// Byte strings. Every string of the state is a byte string (an app's STATUS= and FDNAME=, a
// path, a control client's unread bytes: any byte but what their source forbids). One whose
// bytes are valid UTF-8 is a JSON string, as every version writes it; any other is written
// {"hex":"<two lowercase hex digits a byte>"} (version 4). Hex rather than another escape:
// it round-trips every byte string exactly, needs no JSON-level trick a strict parser refuses
// (lone \udcXX surrogates), and the bytes read ahead of a client already travel as hex. A
// \u00XX escape of each byte would have kept the JSON string form but changed the meaning of
// every non-ASCII UTF-8 string for the builds before, silently. A reader also takes JSON
// strings that are not UTF-8 (builds before version 4 wrote an app's bytes as they came).
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
// would take such a connection for an HTTP client, so only --proxy tcp writes 3. Version 4:
// byte strings that are not UTF-8 as {"hex":...} (above); the rest as in version 3 (a client
// carries the fields of version 3 exactly when "upstream" is there).
//
// The version written is the lowest that carries the state (encode_state): 1 without a front,
// 2 with --proxy http, 3 with --proxy tcp, and 4 only while some byte string is not UTF-8. So
// every build with `handoff reexec` reads a state of UTF-8 text in direct mode, and a build
// that cannot read what this one writes refuses it at the probe (it answers the versions it
// reads), before anything is touched.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/error.hpp"

namespace handoff::supervisor {

inline constexpr int state_version = 4;
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

// The schema. Times are CLOCK_MONOTONIC nanoseconds (0: none); fds are >= 0 unless said.
struct saved_state {
  struct exit_info {
    bool exited = false;
    int code = 0;
    int signal = 0;
    bool operator==(const exit_info&) const = default;
  };
  struct socket {
    int fd = -1;
    std::string name, where;
    std::uint64_t inode = 0;
    int unserved_by = 0;
    bool operator==(const socket&) const = default;
  };
  struct stored_fd {
    int fd = -1;
    std::string name;
    bool operator==(const stored_fd&) const = default;
  };
  struct ticket_keys {
    int fd = -1;
    std::int64_t next_rotation = 0;
    bool operator==(const ticket_keys&) const = default;
  };
  struct notify {
    int fd = -1;
    std::string address;
    bool operator==(const notify&) const = default;
  };
  struct session {
    std::uint64_t id = 0;
    int fd = -1;
    std::string buffer;  // read from the client, not yet a whole line
    bool answered = false;
    std::int64_t deadline = 0;
    bool operator==(const session&) const = default;
  };
  struct control {
    int fd = -1;
    std::string path;
    std::uint64_t dev = 0, ino = 0, next_id = 0;
    std::vector<session> sessions;
    bool operator==(const control&) const = default;
  };
  struct metrics_listener {
    int fd = -1;
    std::string where, path;
    bool operator==(const metrics_listener&) const = default;
  };
  struct core {
    std::int64_t started = 0;
    int next_id = 0, final_generation = 0, app_failures = 0;
    std::optional<std::int64_t> next_start;
    std::optional<exit_info> last_status;
    int reloads = 0, reloads_failed = 0, restarts = 0;
    std::string last_reload;
    bool pid_file_written = false;
    std::int64_t own_watchdog_us = 0;
    std::int64_t next_ping = 0;
    pid_t last_ignored_sender = 0;
    std::vector<pid_t> recent_exits;
    std::uint64_t recent_exits_next = 0;
    bool operator==(const core&) const = default;
  };
  struct metrics_counts {
    std::uint64_t reloads_ok = 0;
    std::vector<std::uint64_t> reloads_failed, reloads_refused;
    std::uint64_t app_restarts = 0, stop_escalations = 0;
    std::vector<std::uint64_t> notify_refused, ready_buckets;
    double ready_sum = 0;
    std::uint64_t ready_count = 0;
    std::optional<std::int64_t> last_reload_ok, first_ready;
    bool operator==(const metrics_counts&) const = default;
  };
  struct slot {
    pid_t pid = 0, pgid = 0;
    std::vector<pid_t> former;
    bool leader_reaped = false, ready = false, stopping = false, reloading = false;
    std::int64_t started = 0, ready_at = 0, last_watchdog = 0, ready_deadline = 0;
    bool watchdog_fired = false;
    std::int64_t restart_at = 0;
    std::int64_t watchdog_ms = 0;
    std::optional<exit_info> last_exit;
    std::string status_text;  // the app's STATUS=: any bytes but NUL and newline
    int restarts = 0, failures_in_a_row = 0;
    bool operator==(const slot&) const = default;
  };
  struct generation {
    int id = 0;
    std::string state;  // one of generation_state_names
    std::int64_t started = 0, ready_deadline = 0, settle_deadline = 0, stop_deadline = 0;
    std::int64_t retire_deadline = 0;
    bool stop_sent = false, killed = false, is_restart = false;
    std::string failure;
    std::vector<std::uint64_t> waiters;
    std::vector<slot> slots;
    bool operator==(const generation&) const = default;
  };
  struct upstream {
    int fd = -1;
    std::string path;
    int port = 0;
    bool operator==(const upstream&) const = default;
  };
  struct proxy_generation {
    int generation = 0;
    bool drained = false;
    std::vector<upstream> upstreams;
    bool operator==(const proxy_generation&) const = default;
  };
  struct tcp_relay {
    int upstream = -1;  // -1: none
    int generation = 0;
    bool client_done = false, upstream_done = false;
    bool operator==(const tcp_relay&) const = default;
  };
  struct client {
    int fd = -1;
    std::uint64_t listener = 0;  // index into `sockets`
    std::string buffered;        // written as hex in every version
    std::optional<tcp_relay> tcp;
    bool operator==(const client&) const = default;
  };
  struct proxy_counts {
    std::uint64_t requests = 0, bad_gateway = 0, unavailable = 0, rejected = 0, tunnels = 0,
                  accepted = 0, connect_failures = 0, tls_handshake_failures = 0;
    bool operator==(const proxy_counts&) const = default;
  };
  struct proxy {
    std::string mode;  // "http", "https", "tcp"
    std::vector<proxy_generation> generations;
    std::vector<client> clients;
    std::optional<proxy_counts> counts;
    bool operator==(const proxy&) const = default;
  };

  int version = 0;  // as read (decode_state); encode_state chooses its own
  std::string handoff;
  int reexecs = 0;
  // The soft RLIMIT_NOFILE the first image was started with (fd_limits.hpp): the next image
  // starts with the raised one and cannot know it otherwise. Absent in older builds' states.
  std::optional<std::uint64_t> nofile_soft;
  int self_exe = -1;
  std::string self_path;
  std::optional<std::uint64_t> waiter;
  std::vector<socket> sockets;
  std::vector<stored_fd> fdstore;
  std::optional<ticket_keys> keys;          // "ticket_keys"
  notify notify_socket;                     // "notify"
  std::optional<control> control_socket;    // "control"
  std::optional<metrics_listener> metrics;  // "metrics"
  core core_state;                          // "core"
  metrics_counts counts;                    // "metrics_counts"
  std::vector<generation> generations;
  std::optional<proxy> front;  // "proxy"

  bool operator==(const saved_state&) const = default;
};

inline constexpr const char* generation_state_names[] = {"starting", "settling", "serving",
                                                         "retiring", "draining", "failed"};

struct encoded_state {
  int version = 0;  // the lowest that carries it
  std::string text;
};
encoded_state encode_state(const saved_state& s);
// All of `text`, or why not ("state version 4: this binary reads versions 1 to 3", "the state
// is damaged: generations[0].slots[1].pid: not a number"). `max_version`: the highest version
// taken (state_version, or less for a test standing in for an older build).
result<saved_state> decode_state(std::string_view text, int max_version = state_version);
// Every fd the state names, each once.
std::vector<int> state_fds_of(const saved_state& s);

}  // namespace handoff::supervisor
