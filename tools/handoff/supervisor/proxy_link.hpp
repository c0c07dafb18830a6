// `handoff run --proxy`: the supervisor's side of the front (proxy/front.hpp). For each
// generation it makes a private upstream per public socket (a unix socket in the runtime
// directory, 127.0.0.1:0, or a free port the app binds: --upstream), tells the spawn what to
// pass, and relays the state machine's steps to the front: serve on take-over, retire when
// replaced (drained() says when the stop signal may go), forget when the generation is gone.
//
// Invariants: a generation's private sockets exist from prepare() to forget() and no longer
// (the unix socket files we made are unlinked then, and only those); the public sockets are
// never passed to the app in proxy mode; everything here runs on the supervisor's thread.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/error.hpp"
#include "handoff/fd.hpp"
#include "handoff/spawn.hpp"
#include "proxy/front.hpp"
#include "supervisor/log.hpp"
#include "supervisor/options.hpp"

namespace handoff::supervisor {

// Whether `file` is the name of a generation's unix upstream socket of app `app`
// (APP.PID.gN.I.sock, as prepare() makes them); `pid`: the supervisor's in the name.
bool stale_upstream_name(std::string_view file, std::string_view app, pid_t& pid);
// Removes from `dir` the upstream sockets of `app` whose supervisor is gone (SIGKILLed: nothing
// else removes them): a name of that pattern, a socket, of our user, whose pid names no
// process. Returns the paths removed.
std::vector<std::string> remove_stale_upstreams(const std::string& dir, const std::string& app);

struct public_socket {
  int fd = -1;  // the supervisor's; the front gets its own duplicate
  std::string name;
};

class proxy_link {
 public:
  // Starts the front on duplicates of `sockets`. `runtime_dir`: where the unix upstream sockets
  // go (beside the control socket). `ticket_keys`: the supervisor's handoff-tls-keys memfd
  // (--proxy https: every context of the front encrypts its session tickets with those keys),
  // or -1; it must outlive this object. `log`: the supervisor's, used on its thread only.
  // Throws std::runtime_error with the reason.
  proxy_link(const run_options& o, const std::vector<public_socket>& sockets,
             std::string runtime_dir, int ticket_keys, const logger& log);
  ~proxy_link();
  proxy_link(const proxy_link&) = delete;
  proxy_link& operator=(const proxy_link&) = delete;

  // Before the generation's processes start: its private upstreams.
  result<void> prepare(int generation);
  // What its processes get: the private sockets under the public names, or $PORT.
  void add_to_spawn(int generation, spawn_options& so) const;
  // --upstream port: the generation's ports (none in the other modes).
  std::vector<int> upstream_ports(int generation) const;
  // The generation's own address for --ready: "unix:PATH" or "127.0.0.1:PORT" (first socket).
  std::string probe_address(int generation) const;

  void serve(int generation);
  void retire(int generation);
  bool drained(int generation) const { return drained_.count(generation) != 0; }
  void forget(int generation);
  void stop();
  // --proxy https: reads the certificate and key again; new client connections use them,
  // open ones keep the context they began with. "" when done (or not https), else why not
  // (the files named), and the certificate in use stays.
  // The new context takes the same session-ticket keys, so a session made before resumes.
  std::string reload_tls();

  int event_fd() const noexcept { return front_->event_fd(); }
  void on_event();  // the front said something: drained generations

  proxy::front_stats stats(std::chrono::milliseconds timeout = std::chrono::seconds(2)) const {
    return front_->stats(timeout);
  }

  // `handoff reexec` (front.hpp, handover.hpp): park the relays, then hand the client
  // connections over, or take them (back) in.
  void park(std::chrono::milliseconds bound) { front_->park(bound); }
  std::optional<std::string> take_park_result() { return front_->take_park_result(); }
  result<std::vector<proxy::handed_client>> hand_over() { return front_->hand_over(); }
  void adopt(std::vector<proxy::handed_client> clients) { front_->adopt(std::move(clients)); }
  void end_park() { front_->end_park(); }
  void add_to_counts(const proxy::front_stats& before) { front_->add_to_counts(before); }

  // What of a generation's private upstreams crosses the exec (state.cpp): the listening
  // socket we hold (-1: none, --upstream port), the unix socket file we made, the port.
  struct saved_upstream {
    int fd = -1;
    std::string path;
    int port = 0;
  };
  std::map<int, std::vector<saved_upstream>> saved_upstreams() const;
  const std::set<int>& drained_generations() const noexcept { return drained_; }
  // In the image after the exec: a generation's upstreams as saved (their fds now ours), and
  // whether it had drained.
  void restore_generation(int generation, const std::vector<saved_upstream>& saved, bool drained);
  // The fds of every generation's private listening sockets.
  std::vector<int> upstream_fds() const;

 private:
  struct upstream {
    unique_fd fd;      // the private listening socket (fds modes)
    std::string path;  // the unix socket file we made, unlinked by forget()
    proxy::endpoint where;
    int port = 0;
  };
  std::shared_ptr<boost::asio::ssl::context> make_tls() const;
  std::vector<upstream>* find(int generation);
  const std::vector<upstream>* find(int generation) const;

  proxy_settings settings_;
  int ticket_keys_ = -1;
  const logger& log_;
  bool nonblocking_ = false;  // --nonblocking: the private sockets as the public ones would be
  bool nodelay_ = false;      // --nodelay: the same for fds:tcp
  std::vector<std::string> names_;
  std::string runtime_dir_, prefix_;
  std::unique_ptr<proxy::front> front_;
  std::map<int, std::vector<upstream>> generations_;
  std::set<int> drained_;
};

}  // namespace handoff::supervisor
