// The supervisor's state and its parts, shared by the files that each own one role:
//
//   setup.cpp      signals, sockets, pid file (once, before the first generation)
//   notify_socket.cpp   the app's NOTIFY_SOCKET (a file beside the control socket, or abstract)
//   generation.cpp the state machine of generations: start, ready, take over, retire, fail,
//                  stop, a process's exit
//   command_line_expand.cpp  $PORT and the other variables of ours in the app's arguments
//   reap.cpp       children's exits (waitid) and adopted main processes (pidfd)
//   notify_dispatch.cpp  a notification from the app, applied to its slot
//   timers.cpp     every timed check, each reporting its next deadline (timers.hpp)
//   control.cpp    control sessions and their transport (requests dispatched in supervisor.cpp)
//   status.cpp     `handoff status` as text and JSON
//   metrics.cpp    `GET /metrics` (--metrics; its transport is metrics_http.cpp)
//   proxy_link.cpp --proxy: each generation's private upstreams, and the front's steps
//   upstream_owner.cpp  --upstream port: a generation's port is listened on by it alone
//   fd_limits.cpp  RLIMIT_NOFILE raised at start, the app's given back; --max-connections
//   reexec.cpp     `handoff reexec`: exec the binary on disk with the same pid, and back
//   reexec_probe.cpp  its probe of that binary, a child the loop watches
//   state.cpp      the state that travels across that exec, to and from saved_state
//                  (state.hpp; its codec is state_codec.cpp, its bytes byte_text.hpp)
//   supervisor.cpp the loop itself
//
// Everything runs on one thread. The operating system is reached only through os_env (os.hpp)
// so that the unit tests can drive every transition without processes; setup() and the loop
// are the parts that need the real thing.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "handoff/fd.hpp"
#include "handoff/notify_receiver.hpp"
#include "supervisor/control.hpp"
#include "supervisor/fd_limits.hpp"
#include "supervisor/generation.hpp"
#include "supervisor/log.hpp"
#include "supervisor/metrics.hpp"
#include "supervisor/metrics_http.hpp"
#include "supervisor/options.hpp"
#include "supervisor/os.hpp"
#include "supervisor/proxy_link.hpp"
#include "supervisor/state.hpp"
#include "supervisor/timers.hpp"

namespace handoff::supervisor {

struct held_socket {
  unique_fd fd;
  std::string name;
  std::string where;    // its local address, for status
  ino_t inode = 0;      // of the socket, to find it in /proc/PID/fd
  int unserved_by = 0;  // a ready generation none of whose processes holds it (0: none)
};

struct stored_fd {
  unique_fd fd;
  std::string name;
};

class supervisor_core {
 public:
  supervisor_core(run_options options, os_env& os);
  ~supervisor_core();
  supervisor_core(const supervisor_core&) = delete;
  supervisor_core& operator=(const supervisor_core&) = delete;

  // setup.cpp: the real process's signals, sockets, notify socket, control socket, pid file.
  void setup();
  // reexec.cpp: instead of setup() in an image started by `handoff reexec`: takes the state
  // of the image before (HANDOFF_REEXEC_STATE), or execs that image back when it cannot.
  void restore();
  // supervisor.cpp: runs until finished(); returns the exit code.
  int loop();
  // reexec.cpp: exec the binary now at our path with our state (control request `id`, or
  // SIGUSR2 without one). Returns only when it did not happen; the answer is sent by then.
  void request_reexec(std::optional<std::uint64_t> id);

  // The state machine (generation.cpp).
  generation* pending();
  generation* serving();
  void start_generation(bool is_restart, std::optional<std::uint64_t> waiter);
  void on_exit(pid_t pid, const std::optional<exit_status>& status);
  // "" when a reload started; else why it was refused.
  std::string request_reload(std::optional<std::uint64_t> waiter);
  void begin_stop(const std::string& why);
  // SIGHUP: a reload, or if refused, RELOADING=1 and READY=1 to our manager all the same.
  void on_reload_signal();
  // Our own manager's watchdog (WATCHDOG_USEC of the supervisor): WATCHDOG=1 every half
  // interval while the loop runs. Zero: none.
  void set_own_watchdog(std::chrono::microseconds interval);
  bool finished() const;
  int exit_code() const;
  // The hook of a front proxy: a retired generation is told to stop once this says it has
  // nothing in flight (or --stop-timeout after it was retired). Without one: at once.
  void set_retire_condition(std::function<bool(const generation&)> may_stop) {
    may_stop_ = std::move(may_stop);
  }

  // notify_dispatch.cpp: one message from the app.
  void on_notify_message(notify_message& m);
  // timers.cpp: acts on every deadline reached and returns the next one.
  clock::time_point on_timers();
  // The number of transitions so far: the loop runs the timers again until it is stable.
  std::uint64_t transitions() const noexcept { return transitions_; }

  // status.cpp
  std::string status_text(bool json) const;
  // metrics.cpp: the text of GET /metrics.
  std::string metrics_text();
  const metrics_counts& metrics() const noexcept { return metrics_; }

  const std::list<generation>& generations() const noexcept { return generations_; }
  const run_options& options() const noexcept { return o_; }

 private:
  result<void> spawn_slot(generation& g, slot& s);
  void mark_ready(generation& g, slot& s, const char* how);
  void take_over(generation& g);
  void retire(generation& g);
  void fail_generation(generation& g, reload_failure why, const std::string& cause);
  void stop_generation(generation& g, int sig);
  void kill_slot(slot& s, int sig);
  void schedule_app_restart();
  void check_sockets_served(const generation& g);
  // upstream_owner.cpp, --upstream port: "" when every listener on the generation's ports is
  // one of its processes' (or no verdict); else what is wrong.
  std::string upstream_intruder(const generation& g);
  // Whether a ready generation may be routed to; fails it at --ready-timeout when not.
  bool upstream_is_ours(generation& g);
  void check_progress();
  std::string silence_hint(const slot& s) const;  // timers.cpp
  void remove_gone_generations();
  // Events of the real process (reap.cpp, notify_dispatch.cpp, supervisor.cpp).
  void check_ready_target() const;
  void on_signal();
  void reap();
  void on_pidfd(generation& g, slot& s);
  void on_notify();
  void on_control_request(std::uint64_t id, const std::string& line);
  void answer(std::uint64_t id, const std::string& text);

  run_options o_;
  os_env& os_;
  logger log_;
  // RLIMIT_NOFILE as raised at start (fd_limits.hpp); the app gets original_soft.
  open_files_limit nofile_;
  clock::time_point started_;
  std::vector<held_socket> sockets_;
  std::vector<stored_fd> fdstore_;
  // The TLS session-ticket keys memfd handed to every generation as handoff-tls-keys (invalid:
  // none), and when the next key is appended to it.
  unique_fd ticket_keys_;
  clock::time_point next_key_rotation_{};
  void open_signal_and_wake_fds();
  void setup_ticket_keys(unique_fd inherited);
  void rotate_ticket_keys(deadlines& due);
  std::optional<notify_receiver> notify_;
  control_sessions control_;
  std::optional<metrics_server> metrics_server_;  // --metrics
  metrics_counts metrics_;
  proxy::front_stats last_front_;  // the last snapshot of the front's counts, for /metrics
  unique_fd signal_fd_, wake_fd_;
  std::list<generation> generations_;
  std::function<bool(const generation&)> may_stop_;
  std::unique_ptr<proxy_link> proxy_;  // --proxy only
  std::uint64_t transitions_ = 0;
  std::chrono::microseconds own_watchdog_{0};
  clock::time_point next_ping_{};
  int next_id_ = 1;
  bool stopping_ = false;
  int final_generation_ = 0;  // the one serving when the stop began: its status is ours
  int app_failures_ = 0;
  std::optional<clock::time_point> next_start_;
  std::optional<exit_status> last_status_;
  int reloads_ = 0, reloads_failed_ = 0, restarts_ = 0;
  std::string last_reload_;
  std::string last_start_failure_;  // any generation's, the first one's and restarts' too
  bool pid_file_written_ = false;
  // reexec.cpp, state.cpp. self_exe_: this image's binary (O_PATH on /proc/self/exe), kept to
  // exec it back when the next image cannot take the state; self_path_: where it was found
  // at start, which a package upgrade replaces; self_argv_: our own argv (/proc/self/cmdline).
  void remember_self();
  // The front (--proxy), on duplicates of the public sockets: at setup, and in the image a
  // re-exec starts.
  void start_proxy();
  // The old image's half of a re-exec once the binary passed the probe: write the state, exec.
  // With --proxy http, first park the client connections (on_parked() goes on).
  // What the binary at the path answered the probe: its version and the state versions it
  // reads.
  struct probed_binary {
    std::string version;
    int min = 0, max = 0;
  };
  void exec_image(std::optional<std::uint64_t> id, const probed_binary& binary);
  void on_parked(const std::string& outcome);
  void refuse_reexec(std::optional<std::uint64_t> id, const std::string& why);
  // reexec_probe.cpp: the probe as a child the loop watches. start_reexec_probe() answers the
  // request itself when the probe cannot start (false); on_reexec_probe_exit() (from reap(),
  // true when `pid` was the probe) refuses the re-exec or goes on with after_probe().
  struct reexec_probe {
    std::optional<std::uint64_t> id;
    pid_t pid = 0;
    unique_fd out;  // the read end of its stdout and stderr (nonblocking); closed at its end
    std::string said;
    clock::time_point deadline{};
    bool killed = false, timed_out = false;
  };
  std::optional<reexec_probe> reexec_probe_;
  bool start_reexec_probe(std::optional<std::uint64_t> id);
  void on_reexec_probe_output();
  void reexec_probe_timers(deadlines& due);
  bool on_reexec_probe_exit(pid_t pid, const std::optional<exit_status>& status);
  int reexec_probe_fd() const noexcept;
  void after_probe(std::optional<std::uint64_t> id, const probed_binary& binary);
  // "" when `binary` reads state `version`; else why not.
  std::string state_version_refused(const probed_binary& binary, int version) const;
  // The version of the state this image would write now: the lowest that carries it
  // (state.hpp), so that a build before the front's handover still takes a state of direct
  // mode.
  int state_version_written() const { return save_state(std::nullopt).version; }
  // state.cpp: this supervisor as the typed state, and as its text.
  saved_state saved(std::optional<std::uint64_t> waiter) const;
  encoded_state save_state(std::optional<std::uint64_t> waiter) const;
  // Every fd that save_state names: the ones whose close-on-exec is cleared for the exec.
  std::vector<int> state_fds() const;
  // "" when a decoded state fits this supervisor (its front, its open fds); else why not.
  // Nothing of it is touched either way.
  std::string check_state(const saved_state& s) const;
  // Takes a state that passed check_state(); nothing in it can fail.
  void load_state(saved_state s);
  unique_fd self_exe_;
  std::string self_path_;
  std::vector<std::string> self_argv_;
  int reexecs_ = 0;
  bool restored_ = false;                       // by restore(): the generations are there already
  std::string last_reexec_;                     // "ok ..." or "error ...", for status
  std::optional<std::uint64_t> reexec_waiter_;  // to be answered once the loop runs again
  // --proxy http: a re-exec waiting for the client connections to park (front.hpp).
  struct pending_reexec {
    std::optional<std::uint64_t> id;
    probed_binary binary;  // as it answered the probe
  };
  std::optional<pending_reexec> reexec_pending_;
  // The client connections crossing the exec (handed over by the front, or read from the
  // state), and the private upstreams read from the state until the front is started again.
  std::vector<proxy::handed_client> handed_clients_;
  std::map<int, std::vector<proxy_link::saved_upstream>> restored_upstreams_;
  std::set<int> restored_drained_;
  proxy::front_stats restored_counts_;  // the front's totals in the image before
  pid_t last_ignored_sender_ = 0;
  // Main processes of ours that exited lately: their last words (STOPPING=1, STATUS=), read
  // after the exit was reaped, are dropped quietly rather than logged as from a stranger.
  std::array<pid_t, 16> recent_exits_{};
  std::size_t recent_exits_next_ = 0;
  void remember_exit(pid_t pid) noexcept;
  bool exited_recently(pid_t pid) const noexcept;
};

// Small helpers the parts share.
long long ms_since(clock::time_point t, clock::time_point now);
std::string signal_name(int sig);
std::string format_duration(std::chrono::milliseconds d);

}  // namespace handoff::supervisor
