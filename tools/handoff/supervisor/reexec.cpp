// `handoff reexec`: the supervisor execs the binary now at its path, with the same pid, so that
// its manager's MainPID, its children's parent and every pidfd stay what they were. The state
// crosses in a memfd (state.hpp); the fds it names keep their numbers.
//
// Order of the old image: ask the binary at the path which state versions it reads (a child
// the loop watches, reexec_probe.cpp: a binary that is missing, not executable, exits at once
// or reads no version of ours is refused there, and this image keeps running); write the
// state and read it back as the new image will (a state this image cannot read is refused
// here); clear close-on-exec on exactly the fds it names; execve. A failed execve sets every
// flag back and answers the error. The new image decodes the whole state into a saved_state
// and checks it against itself before it uses any of it; if it cannot take it, it execs this
// image's binary back (an O_PATH fd on /proc/self/exe, kept across the exec) with the same
// state and the reason, which the old image, restored, logs and answers.
#include <fcntl.h>
#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "handoff/decimal.hpp"
#include "supervisor/core.hpp"
#include "supervisor/state.hpp"

extern char** environ;

namespace handoff::supervisor {

using namespace std::chrono_literals;

namespace {

// The env var that names the O_PATH fd of the image to come back to.
constexpr const char* env_self = "HANDOFF_REEXEC_SELF";

std::string read_all(int fd) {
  std::string out;
  char buf[65536];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    at += n;
  }
  return out;
}

std::vector<std::string> own_argv() {
  std::vector<std::string> argv;
  unique_fd fd(::open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC));
  if (!fd) return argv;
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  for (std::size_t at = 0; at < text.size();) {
    const auto end = text.find('\0', at);
    argv.push_back(text.substr(at, end - at));
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return argv;
}

// This process's environment without the variables of `drop` (names), plus `add`.
std::vector<std::string> environment_with(const std::vector<std::string>& drop,
                                          const std::vector<std::string>& add) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const auto name = entry.substr(0, entry.find('='));
    bool dropped = false;
    for (const auto& d : drop) dropped = dropped || name == d;
    for (const auto& a : add) dropped = dropped || a.substr(0, a.find('=')) == name;
    if (!dropped) env.emplace_back(entry);
  }
  env.insert(env.end(), add.begin(), add.end());
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (auto& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

void set_cloexec(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) (void)::fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC);
}

}  // namespace

void supervisor_core::remember_self() {
  self_exe_.reset(::open("/proc/self/exe", O_PATH | O_CLOEXEC));
  if (self_path_.empty()) {
    char buf[4096] = {};
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) self_path_.assign(buf, static_cast<std::size_t>(n));
  }
  self_argv_ = own_argv();
}

void supervisor_core::refuse_reexec(std::optional<std::uint64_t> id, const std::string& why) {
  last_reexec_ = "error " + why;
  log_.log("reexec_failed", "reexec: " + why, {{"cause", why}});
  if (id) answer(*id, "error " + why + "\n");
}

void supervisor_core::request_reexec(std::optional<std::uint64_t> id) {
  if (reexec_pending_)
    return refuse_reexec(id, "a re-exec is under way already (waiting for the requests in flight)");
  if (o_.proxy.kind == proxy_kind::https)
    return refuse_reexec(
        id,
        "not available with --proxy https: the TLS state of a client connection (keys, "
        "sequence numbers) lives in this process's OpenSSL objects and cannot cross an exec; "
        "restart the service instead (clients reconnect and resume their TLS sessions)");
  if (stopping_) return refuse_reexec(id, "the supervisor is stopping");
  if (self_path_.empty() || self_argv_.empty() || !self_exe_)
    return refuse_reexec(id, "the supervisor's own binary or argv is unknown (no /proc?)");
  if (reexec_probe_)
    return refuse_reexec(id,
                         "a re-exec is under way already (asking the binary at the path "
                         "which state versions it reads)");
  if (id) control_.wait(*id);  // answered once the probe has answered (reexec_probe.cpp)
  (void)start_reexec_probe(id);
}

void supervisor_core::after_probe(std::optional<std::uint64_t> id, const probed_binary& binary) {
  if (proxy_) {
    // The client connections cross at request boundaries (tcp: once the bytes read from
    // either side are written to the other): every relay finishes the request it is in
    // (bounded like a retired generation's drain) and parks; on_parked() goes on.
    reexec_pending_ = pending_reexec{id, binary};
    log_.log("reexec",
             fmt::format("reexec: parking the client connections at their next {} "
                         "(at most {})",
                         o_.proxy.kind == proxy_kind::tcp ? "idle moment" : "request boundary",
                         format_duration(o_.stop_timeout)));
    proxy_->park(o_.stop_timeout);
    return;
  }
  exec_image(id, binary);
}

void supervisor_core::on_parked(const std::string& outcome) {
  if (!reexec_pending_) {
    proxy_->end_park();
    return;
  }
  const auto p = *std::exchange(reexec_pending_, std::nullopt);
  if (!outcome.empty())
    return refuse_reexec(p.id,
                         fmt::format("--proxy {}: {}; every connection carries on and {} "
                                     "keeps running",
                                     to_string(o_.proxy.kind), outcome, HANDOFF_VERSION_TEXT));
  if (stopping_) {
    proxy_->end_park();
    return refuse_reexec(p.id, "the supervisor is stopping");
  }
  auto clients = proxy_->hand_over();
  if (!clients) {
    proxy_->end_park();
    return refuse_reexec(
        p.id, clients.error().message() + "; " + HANDOFF_VERSION_TEXT + " keeps running");
  }
  handed_clients_ = std::move(*clients);
  exec_image(p.id, p.binary);
}

void supervisor_core::exec_image(std::optional<std::uint64_t> id, const probed_binary& binary) {
  // Whatever fails from here on, the client connections handed over come back to our front.
  const auto refuse = [&](const std::string& why) {
    if (proxy_) proxy_->adopt(std::exchange(handed_clients_, {}));
    refuse_reexec(id, why);
  };
  unique_fd memfd(::memfd_create("handoff-state", MFD_CLOEXEC));
  if (!memfd) return refuse(fmt::format("memfd_create: {}", std::strerror(errno)));
  const auto encoded = save_state(id);
  const std::string& state = encoded.text;
  // Our own state read back as the next image will read it: a state that we could not read
  // would also be refused there, and then not even this image could take it back.
  if (auto own = decode_state(state); !own)
    return refuse(fmt::format("this image cannot read the state it wrote ({}); {} keeps running",
                              own.error().message(), HANDOFF_VERSION_TEXT));
  // The state may have changed since the probe (an app's STATUS= that is not UTF-8 makes it
  // version 4): the binary must still read it.
  if (const auto why = state_version_refused(binary, encoded.version); !why.empty())
    return refuse(fmt::format("{}; {} keeps running", why, HANDOFF_VERSION_TEXT));
  for (std::size_t sent = 0; sent < state.size();) {
    const ssize_t n = ::write(memfd.get(), state.data() + sent, state.size() - sent);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return refuse(fmt::format("writing the state: {}", std::strerror(errno)));
    sent += static_cast<std::size_t>(n);
  }
  std::size_t read_ahead = 0;
  for (const auto& c : handed_clients_) read_ahead += c.buffered.size();
  log_.log("reexec",
           fmt::format("re-executing {} ({}) as pid {}: {} generations, {} sockets, {}{} bytes "
                       "of state",
                       self_path_, binary.version, ::getpid(), generations_.size(), sockets_.size(),
                       proxy_ ? fmt::format("{} client connections ({} bytes read ahead), ",
                                            handed_clients_.size(), read_ahead)
                              : std::string(),
                       state.size()),
           {{"path", self_path_}, {"version", binary.version}});
  // The lines still buffered would be lost with this image: a short wait for stderr.
  for (int i = 0; i < 50 && log_.poll_fd() >= 0; ++i) {
    pollfd p{log_.poll_fd(), POLLOUT, 0};
    (void)::poll(&p, 1, 10);
    log_.flush();
  }
  auto fds = state_fds();
  fds.push_back(memfd.get());
  for (const int fd : fds) set_cloexec(fd, false);
  std::vector<std::string> argv = self_argv_;
  std::vector<std::string> add = {fmt::format("{}={}", env_state_fd, memfd.get()),
                                  fmt::format("{}={}", env_self, self_exe_.get())};
  if (auto manager = os_.manager_socket()) add.push_back("NOTIFY_SOCKET=" + *manager);
  auto env = environment_with({env_failed, env_read_max}, add);
  auto argv_p = pointers(argv);
  auto env_p = pointers(env);
  ::execve(self_path_.c_str(), argv_p.data(), env_p.data());
  const int err = errno;
  for (const int fd : fds) set_cloexec(fd, true);
  refuse(fmt::format("execve {}: {}; {} keeps running", self_path_, std::strerror(err),
                     HANDOFF_VERSION_TEXT));
}

void supervisor_core::restore() {
  // Raised already by the image before (limits survive execve): original_soft comes from the
  // state (load_state).
  nofile_ = raise_open_files_limit();
  const char* fd_text = std::getenv(env_state_fd);
  const char* self_text = std::getenv(env_self);
  const auto state_fd = parse_decimal<int>(fd_text != nullptr ? fd_text : "", 3);
  const auto self_fd = parse_decimal<int>(self_text != nullptr ? self_text : "", 3);
  if (!state_fd || !self_fd)
    throw std::runtime_error(fmt::format("reexec: {}={} and {}={} do not name fds", env_state_fd,
                                         fd_text != nullptr ? fd_text : "", env_self,
                                         self_text != nullptr ? self_text : ""));
  std::optional<std::string> came_back;
  if (const char* f = std::getenv(env_failed)) came_back = f;
  const std::string text = read_all(*state_fd);
  int max = state_version;
  // A test stands in for an older build this way (state.hpp).
  if (const char* m = std::getenv(env_read_max))
    if (auto v = parse_decimal<int>(m, 0)) max = std::min(max, *v);
  // All of it read, and held against this supervisor, before any of it is used.
  auto decoded = decode_state(text, max);
  std::string why = decoded ? check_state(*decoded) : decoded.error().message();
  if (!why.empty()) {
    if (came_back)
      throw std::runtime_error(
          fmt::format("reexec: came back after \"{}\" and cannot read its own state either: {}",
                      *came_back, why));
    // Nothing was touched yet: every fd is as the old image left it, so it can have it back.
    std::string self_path = "?";
    char buf[4096] = {};
    if (const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1); n > 0)
      self_path.assign(buf, static_cast<std::size_t>(n));
    std::vector<std::string> argv = own_argv();
    auto env = environment_with(
        {env_read_max}, {fmt::format("{}={} ({}) refused the state: {}", env_failed, self_path,
                                     HANDOFF_VERSION_TEXT, why)});
    auto argv_p = pointers(argv);
    auto env_p = pointers(env);
    ::syscall(SYS_execveat, *self_fd, "", argv_p.data(), env_p.data(), AT_EMPTY_PATH);
    throw std::runtime_error(
        fmt::format("reexec: the state was refused ({}) and the image before "
                    "could not be exec'd back: {}",
                    why, std::strerror(errno)));
  }
  for (const char* name : {env_state_fd, env_self, env_failed, env_read_max}) ::unsetenv(name);
  ::close(*state_fd);
  // The point of no return: from here on the fds of the state are ours.
  load_state(std::move(*decoded));
  // Ours alone again: no child of ours may inherit them.
  for (const int fd : state_fds()) set_cloexec(fd, true);
  remember_self();
  restored_ = true;

  log_.start_nonblocking();
  open_signal_and_wake_fds();

  std::size_t clients = 0;
  if (o_.proxy.kind != proxy_kind::none) {
    // A front of our own on the same public sockets, told what the one before knew: each
    // generation's upstreams, which one serves, which are retired. Its pools are empty:
    // connections to the serving generation are opened anew. The client connections come
    // first (the front does in order what it is told): an HTTP one, its bytes read ahead
    // first, waits for serve() like any request; a TCP one brings its upstream connection,
    // which a retired generation must count before retire() looks whether it has drained.
    start_proxy();
    for (const auto& [id, ups] : restored_upstreams_)
      proxy_->restore_generation(id, ups, restored_drained_.count(id) != 0);
    restored_upstreams_.clear();
    restored_drained_.clear();
    proxy_->add_to_counts(restored_counts_);
    clients = handed_clients_.size();
    proxy_->adopt(std::exchange(handed_clients_, {}));
    for (const auto& g : generations_) {
      if (g.state == generation_state::serving) proxy_->serve(g.id);
      if (g.state == generation_state::retiring || g.state == generation_state::draining)
        proxy_->retire(g.id);
    }
  }

  // Our children, not reaped (a SIGCHLD of the exec's moment waits in the mask), so each pid
  // still names its process: a pidfd opened now is the right one.
  int processes = 0;
  for (auto& g : generations_)
    for (auto& s : g.slots) {
      if (!s.running()) continue;
      ++processes;
      s.pidfd = os_.open_pidfd(s.pid);
      const bool probing = o_.ready == ready_mode::tcp || o_.ready == ready_mode::http;
      if (probing && !s.ready && g.state == generation_state::starting)
        s.probe = start_probe(o_.ready == ready_mode::http ? "http" : "tcp", o_.ready_target,
                              wake_fd_.get(), "");
    }
  std::string text_out;
  if (came_back) {
    last_reexec_ = "error " + *came_back;
    text_out = fmt::format("error {}; {} keeps running\n", *came_back, HANDOFF_VERSION_TEXT);
    log_.log("reexec_failed",
             fmt::format("reexec: {}; back to {}", *came_back, HANDOFF_VERSION_TEXT),
             {{"cause", *came_back}});
  } else {
    ++reexecs_;
    last_reexec_ = fmt::format("ok re-executed {} as pid {} ({} re-execs)", HANDOFF_VERSION_TEXT,
                               ::getpid(), reexecs_);
    text_out = last_reexec_ + "\n";
    log_.log(
        "reexec_done",
        fmt::format("re-executed: {} ({}), pid {}, {} generations and {} processes kept{}",
                    self_path_, HANDOFF_VERSION_TEXT, ::getpid(), generations_.size(), processes,
                    proxy_ ? fmt::format(", {} client connections adopted", clients) : ""),
        {{"version", std::string(HANDOFF_VERSION_TEXT)},
         {"reexecs", static_cast<long long>(reexecs_)}});
  }
  if (reexec_waiter_) answer(*reexec_waiter_, text_out);
  reexec_waiter_.reset();
}

}  // namespace handoff::supervisor
