// Setting the supervisor up, once, before the first generation: signals, the sockets it holds
// for the app, its notify and control sockets, its pid file.
#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "handoff/activation.hpp"
#include "handoff/decimal.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/ticket_keys.hpp"
#include "supervisor/core.hpp"
#include "supervisor/fd_limits.hpp"
#include "supervisor/notify_socket.hpp"

namespace handoff::supervisor {

long long ms_since(clock::time_point t, clock::time_point now) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
}

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string format_duration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

supervisor_core::supervisor_core(run_options options, os_env& os)
    : o_(std::move(options)), os_(os), log_(o_.name, o_.logs), started_(os_.now()) {
  log_.set_timestamps(o_.log_timestamps.value_or(!stderr_is_journal()));
}

supervisor_core::~supervisor_core() {
  if (pid_file_written_) {
    // Only our own pid file: another supervisor may have taken the path over since.
    std::string text;
    if (int fd = ::open(o_.pid_file.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
      char buf[32] = {};
      const ssize_t n = ::read(fd, buf, sizeof buf - 1);
      ::close(fd);
      if (n > 0) text.assign(buf, static_cast<std::size_t>(n));
    }
    if (text == std::to_string(::getpid()) + "\n") ::unlink(o_.pid_file.c_str());
  }
}

namespace {
// Forwarded to the serving generation; SIGUSR2 is blocked with them but means reexec.
constexpr int forwarded_signals[] = {SIGUSR1, SIGUSR2, SIGWINCH, SIGQUIT};
}  // namespace

namespace {

// LISTEN_FDS names fds 3.. that must be open when we start: checked before this process opens
// anything, or a closed fd 3 would be taken by our own signalfd and passed on as a "socket".
void check_inherited_fds_open() {
  const char* pid_text = std::getenv("LISTEN_PID");
  const char* fds_text = std::getenv("LISTEN_FDS");
  if (pid_text == nullptr || fds_text == nullptr) return;
  const auto pid = parse_decimal<pid_t>(pid_text, 1);
  if (!pid || *pid != ::getpid()) return;  // not for us: activation.hpp's rules decide
  const auto count = parse_decimal<int>(fds_text, 0, 4096);
  if (!count) return;
  for (int fd = 3; fd < 3 + *count; ++fd)
    if (::fcntl(fd, F_GETFD) < 0)
      throw std::runtime_error(
          fmt::format("LISTEN_FDS={}: fd {} is not open (the manager that "
                      "started us passed fewer fds than it announced)",
                      *count, fd));
}

// A signal ignored by whoever started us stays ignored across exec, and a blocked one stays
// blocked: with SIGCHLD ignored the kernel reaps our children itself and we lose their exits.
// Start from the defaults, as systemd does for its services.
void reset_signals() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) (void)::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  (void)::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// The same socket twice (LISTEN_FDNAMES=a:a), or one name for two sockets, is a mistake of the
// command line: the app could not tell them apart.
void check_unique(const std::vector<address>& wanted) {
  for (std::size_t i = 0; i < wanted.size(); ++i)
    for (std::size_t j = 0; j < i; ++j) {
      const address& a = wanted[i];
      const address& b = wanted[j];
      if (!a.name.empty() && a.name == b.name)
        throw std::runtime_error(
            fmt::format("--listen {} and --listen {}: the name \"{}\" is "
                        "given twice",
                        b.to_string(), a.to_string(), a.name));
      address a_bare = a, b_bare = b;
      a_bare.name.clear();
      b_bare.name.clear();
      const bool any_port = !a.is_unix() && a.port == 0;  // port 0: each gets its own
      if (a_bare == b_bare && !any_port)
        throw std::runtime_error(fmt::format("--listen {} and --listen {}: the same address twice",
                                             b.to_string(), a.to_string()));
    }
}

}  // namespace

// Without --proxy the generations share the supervisor's sockets: the kernel completes a
// connect to them by itself and the old generation may answer, so a probe there says nothing
// about the new one. Refused rather than trusted.
void supervisor_core::check_ready_target() const {
  if (o_.proxy.kind != proxy_kind::none) return;
  if (o_.ready != ready_mode::tcp && o_.ready != ready_mode::http) return;
  const std::string mode =
      o_.ready == ready_mode::tcp ? "--ready tcp" : "--ready " + o_.ready_target;
  const std::string why =
      ": the supervisor holds that socket, so the kernel (or the generation that serves) "
      "answers the probe, whatever the new generation does; use --ready notify, a port the app "
      "opens itself (an admin port), or --proxy, where each generation has an address of its "
      "own";
  std::string port_text;
  if (o_.ready == ready_mode::tcp) {
    if (o_.ready_target.empty()) {
      if (!sockets_.empty())
        throw std::runtime_error(mode + " probes the first public socket" + why);
      throw std::runtime_error("--ready tcp: no socket to probe (give tcp:HOST:PORT)");
    }
    port_text = o_.ready_target.substr(o_.ready_target.rfind(':') + 1);
  } else {
    std::string rest = o_.ready_target.substr(7);
    rest = rest.substr(0, rest.find('/'));
    const auto colon = rest.rfind(':');
    port_text = colon == std::string::npos || rest.back() == ']' ? "80" : rest.substr(colon + 1);
  }
  for (const auto& s : sockets_) {
    auto where = local_address(s.fd.get());
    if (where && where->kind == transport::tcp && std::to_string(where->port) == port_text)
      throw std::runtime_error(mode + " aims at " + s.where + why);
  }
}

// Keys inherited from systemd's fd store are the ones tickets out there were made with: kept
// when well-formed, whether or not --tls-ticket-keys asked for keys. New ones go to the fd
// store, so that a `systemctl restart` of the supervisor keeps sessions resumable. --proxy
// https holds keys without being asked: its front makes a new TLS context at every reload (the
// certificate is read again), and a user of HAProxy or nginx expects sessions to resume across
// a reload, which only keys kept outside the context give.
void supervisor_core::setup_ticket_keys(unique_fd inherited) {
  if (inherited) {
    if (auto keys = read_ticket_keys(inherited.get())) {
      ticket_keys_ = std::move(inherited);
      log_.log("tls_keys", fmt::format("holding the inherited {} ({} keys)",
                                       std::string(ticket_keys_name), keys->size()));
    } else {
      log_.log("tls_keys", "inherited " + keys.error().message() + "; making new keys");
    }
  }
  if (!ticket_keys_ && (o_.tls_ticket_keys || o_.proxy.kind == proxy_kind::https || inherited)) {
    auto made = create_ticket_keys();
    if (!made) throw std::runtime_error("--tls-ticket-keys: " + made.error().message());
    ticket_keys_ = std::move(*made);
    const bool stored = os_.store_fd(ticket_keys_.get(), ticket_keys_name);
    log_.log("tls_keys", fmt::format("holding new TLS session-ticket keys ({}){}",
                                     std::string(ticket_keys_name),
                                     stored ? ", kept in our manager's fd store" : ""));
  }
  if (!ticket_keys_) return;
  // The first rotation comes one period after the newest key was made (keys from the fd store
  // may be hours old already).
  std::chrono::milliseconds wait = o_.tls_ticket_key_rotation;
  if (auto keys = read_ticket_keys(ticket_keys_.get())) {
    const auto age =
        std::chrono::seconds(static_cast<std::int64_t>(std::time(nullptr)) - keys->back().created);
    wait = std::clamp<std::chrono::milliseconds>(
        o_.tls_ticket_key_rotation - age, std::chrono::milliseconds(0), o_.tls_ticket_key_rotation);
  }
  next_key_rotation_ = os_.now() + wait;
}

void supervisor_core::rotate_ticket_keys(deadlines& due) {
  if (!ticket_keys_ || !due.reached(next_key_rotation_)) return;
  next_key_rotation_ = due.now() + std::max<std::chrono::milliseconds>(
                                       o_.tls_ticket_key_rotation, std::chrono::milliseconds(1));
  (void)due.reached(next_key_rotation_);
  if (auto r = append_ticket_key(ticket_keys_.get()); !r) {
    log_.log("tls_keys", "rotating the session-ticket keys: " + r.error().message());
    return;
  }
  log_.log("tls_keys", fmt::format("new session-ticket key; the next in {}",
                                   format_duration(o_.tls_ticket_key_rotation)));
}

// Signals go to the signalfd only (blocked first); the wake eventfd; and orphans of the app (a
// daemonizing child, a forked successor after MAINPID=) re-parented to us and reaped here
// rather than left to an init that may not reap (PR_SET_CHILD_SUBREAPER). At setup, and again
// in the image a re-exec starts (reexec.cpp), where the mask survived the exec with any SIGCHLD
// still pending but is blocked again all the same, in case the image before blocked fewer.
void supervisor_core::open_signal_and_wake_fds() {
  sigset_t mask;
  sigemptyset(&mask);
  for (int sig : {SIGCHLD, SIGHUP, SIGTERM, SIGINT}) sigaddset(&mask, sig);
  for (int sig : forwarded_signals) sigaddset(&mask, sig);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
    throw std::runtime_error(std::string("sigprocmask: ") + std::strerror(errno));
  (void)::signal(SIGPIPE, SIG_IGN);
  signal_fd_.reset(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) throw std::runtime_error(std::string("signalfd: ") + std::strerror(errno));
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  if (::getpid() != 1) (void)::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

void supervisor_core::setup() {
  check_inherited_fds_open();
  reset_signals();
  nofile_ = raise_open_files_limit();
  log_.start_nonblocking();
  // Before anything else: spawn() gives each child a clean mask and default dispositions.
  open_signal_and_wake_fds();

  // systemd's watchdog of this process is ours to answer, not the app's (sd_watchdog_enabled(3):
  // WATCHDOG_PID, when set, must name us).
  if (const char* usec = std::getenv("WATCHDOG_USEC")) {
    const char* for_pid = std::getenv("WATCHDOG_PID");
    const auto pid = for_pid != nullptr ? parse_decimal<pid_t>(for_pid, 1) : ::getpid();
    const auto interval = parse_decimal<std::uint64_t>(usec, 1);
    if (!interval)
      log_.log("watchdog", fmt::format("WATCHDOG_USEC={:?} is not a number: no pings", usec));
    else if (pid == ::getpid())
      set_own_watchdog(std::chrono::microseconds(static_cast<std::int64_t>(std::min<std::uint64_t>(
          *interval,
          std::chrono::duration_cast<std::chrono::microseconds>(watchdog_max).count()))));
  }
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");

  unique_fd inherited_keys;
  if (o_.listen.empty()) {
    auto inherited = listen_fds(unset_environment::yes);
    if (!inherited) throw std::runtime_error(inherited.error().message());
    for (auto& s : *inherited) {
      if (s.name == ticket_keys_name) {  // the keys memfd from systemd's fd store: not a socket
        inherited_keys = std::move(s.fd);
        continue;
      }
      held_socket h;
      h.where = s.info.describe();
      h.name = s.name;
      h.fd = std::move(s.fd);
      sockets_.push_back(std::move(h));
    }
  } else {
    // Each --listen takes an inherited socket of that name or address when systemd passed one
    // (socket_set), else opens it; inherited sockets no --listen asked for are closed.
    // --backlog is for the ones opened here: an inherited one keeps its manager's (Backlog=).
    listen_options opening;
    opening.backlog = o_.backlog;
    std::vector<address> wanted;
    for (const auto& text : o_.listen) {
      auto where = parse_address(text);
      if (!where) throw std::runtime_error(where.error().message());
      wanted.push_back(std::move(*where));
    }
    check_unique(wanted);
    auto inherited = socket_set::from_environment(unset_environment::yes);
    if (!inherited) throw std::runtime_error(inherited.error().message());
    inherited_keys = inherited->take(ticket_keys_name);
    for (const auto& w : wanted) {
      const address* where = &w;
      auto fd = inherited->listen(*where, opening);
      if (!fd) throw std::runtime_error(fd.error().message());
      auto own = duplicate_fd(*fd);
      if (!own) throw std::runtime_error(own.error().message());
      held_socket h;
      h.name = where->name;
      auto info = inspect_socket(own->get());
      h.where = info ? info->describe() : where->to_string();
      h.fd = std::move(*own);
      sockets_.push_back(std::move(h));
    }
  }
  for (auto& s : sockets_) {
    struct stat st {};
    if (::fstat(s.fd.get(), &st) == 0) s.inode = st.st_ino;
    // systemd's NonBlocking=: the flag is on the open file description, so every generation
    // sees it (see docs/supervisor.md for why a blocking shared listener is a trap).
    if (o_.nonblocking) {
      if (auto r = set_nonblocking(s.fd.get()); !r)
        throw std::runtime_error("--nonblocking: " + r.error().message());
    }
    // systemd's NoDelay=, on inherited sockets too: the option of the socket, whoever opened it.
    if (o_.nodelay) {
      const auto where = local_address(s.fd.get());
      if (where && where->kind == transport::tcp)
        if (auto r = set_nodelay(s.fd.get()); !r)
          throw std::runtime_error("--nodelay: " + r.error().message());
    }
  }
  for (const auto& s : sockets_)
    log_.log("socket", fmt::format("holding {}{}", s.name.empty() ? "" : s.name + "=", s.where),
             {{"socket", s.name}, {"address", s.where}});
  if (sockets_.empty())
    log_.log("socket", "no sockets: neither --listen nor LISTEN_FDS; supervising the app anyway");
  check_ready_target();
  setup_ticket_keys(std::move(inherited_keys));

  // The control socket first: once it is ours, no live supervisor of this name holds the
  // notify socket beside it, and a file there is a dead one's.
  if (!o_.control.empty()) {
    auto c = control_server::open(o_.control);
    if (!c) throw std::runtime_error("control socket: " + c.error().message());
    control_ = control_sessions(std::move(*c));
  }
  auto n = open_notify_socket(o_.notify_socket, o_.control);
  if (!n) throw std::runtime_error(n.error().message());
  notify_.emplace(std::move(n->receiver));
  if (!n->note.empty()) log_.log("notify_socket", n->note);

  if (!o_.metrics.empty()) {
    auto m = metrics_server::open(o_.metrics);
    if (!m) throw std::runtime_error("--metrics: " + m.error().message());
    metrics_server_.emplace(std::move(*m));
    log_.log("metrics", "serving GET /metrics on " + metrics_server_->where(),
             {{"address", metrics_server_->where()}});
  }

  if (!o_.pid_file.empty()) {
    const int fd = ::open(o_.pid_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("pid file " + o_.pid_file + ": " + std::strerror(errno));
    const std::string text = std::to_string(::getpid()) + "\n";
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok) throw std::runtime_error("pid file " + o_.pid_file + ": short write");
    pid_file_written_ = true;
  }
  log_.log("open_files",
           nofile_.raised()
               ? fmt::format("open files: soft limit raised from {} to {} (the hard limit); the "
                             "app gets {}",
                             nofile_.original_soft, nofile_.soft, nofile_.original_soft)
               : fmt::format("open files: limit {}", nofile_.soft),
           {{"limit", static_cast<long long>(nofile_.soft)},
            {"app_limit", static_cast<long long>(nofile_.original_soft)}});
  if (o_.proxy.kind != proxy_kind::none) start_proxy();
  remember_self();
  log_.log("supervisor",
           fmt::format("supervisor pid {} running {}; control {}", ::getpid(), o_.command.at(0),
                       o_.control.empty() ? "none" : o_.control),
           {{"pid", static_cast<long long>(::getpid())}, {"control", o_.control}});
}

void supervisor_core::start_proxy() {
  // --max-connections: given, or what the fd limit holds with the reserve kept (fd_limits.hpp).
  // The same in an image a re-exec starts: its limit is ours.
  if (!o_.proxy.max_connections) {
    o_.proxy.max_connections = default_max_connections(nofile_.soft);
  } else if (fds_needed(*o_.proxy.max_connections) > nofile_.soft && !restored_) {
    log_.log("open_files",
             fmt::format("--max-connections {} needs about {} fds, more than the limit of {}: "
                         "past about {} connections, accepts fail for want of fds and wait",
                         *o_.proxy.max_connections, fds_needed(*o_.proxy.max_connections),
                         nofile_.soft, default_max_connections(nofile_.soft)));
  }
  std::vector<public_socket> pub;
  for (const auto& s : sockets_) pub.push_back({s.fd.get(), s.name});
  const auto slash = o_.control.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string(".")
                          : slash == 0               ? std::string("/")
                                                     : o_.control.substr(0, slash);
  // Started after the signal mask is set: the front's thread inherits it, so every signal
  // still reaches the signalfd.
  proxy_ = std::make_unique<proxy_link>(o_, pub, dir, ticket_keys_.get(), log_);
  may_stop_ = [this](const generation& g) { return proxy_->drained(g.id); };
  log_.log("proxy",
           fmt::format("proxy {}: accepting on the public sockets; each generation "
                       "listens on {}",
                       to_string(o_.proxy.kind),
                       o_.proxy.upstream == upstream_kind::fds_unix ? "a unix socket in " + dir
                       : o_.proxy.upstream == upstream_kind::fds_tcp
                           ? std::string("127.0.0.1:0 (LISTEN_FDS)")
                           : std::string("a free port in $PORT")));
}

}  // namespace handoff::supervisor
