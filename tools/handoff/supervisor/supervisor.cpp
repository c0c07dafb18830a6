#include "supervisor/supervisor.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <stdexcept>

#include "handoff/activation.hpp"
#include "handoff/listeners.hpp"
#include "handoff/notify.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "supervisor/control.hpp"
#include "supervisor/generation.hpp"
#include "supervisor/log.hpp"

namespace handoff::supervisor {
namespace {

using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;

long long ms_since(clock::time_point t, clock::time_point now) {
  return std::chrono::duration_cast<ms>(now - t).count();
}

std::string describe(const std::optional<exit_status>& s) {
  return s ? s->describe() : "exited (status unknown: not a child of the supervisor)";
}

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string format_duration(ms d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

struct held_socket {
  unique_fd fd;
  std::string name;
  std::string where;  // its local address, for status
};

struct stored_fd {
  unique_fd fd;
  std::string name;
};

struct client {
  std::uint64_t id = 0;
  control_client conn;
};

class supervisor {
 public:
  explicit supervisor(run_options options)
      : o_(std::move(options)), log_(o_.name, o_.logs), started_(clock::now()) {}
  ~supervisor() {
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

  void setup();
  int loop();

 private:
  // Generations.
  generation* pending();
  generation* serving();
  void start_generation(bool is_restart, std::optional<std::uint64_t> waiter);
  result<void> spawn_slot(generation& g, slot& s);
  void mark_ready(generation& g, slot& s, const char* how);
  void take_over(generation& g);
  void fail_generation(generation& g, const std::string& cause);
  void stop_generation(generation& g, int sig);
  void kill_slot(slot& s, int sig);
  void schedule_app_restart();
  void check_progress();
  // Events.
  void on_signal();
  void reap();
  void on_exit(pid_t pid, const std::optional<exit_status>& status);
  void on_notify();
  void on_control_accept();
  void on_client(std::list<client>::iterator it);
  void on_timers(clock::time_point now);
  void on_pidfd(generation& g, slot& s);
  // Control.
  std::string request_reload(std::optional<std::uint64_t> waiter);
  void answer(std::uint64_t id, const std::string& text);
  std::string status_text(bool json) const;
  void begin_stop(const std::string& why);
  bool finished() const;

  run_options o_;
  logger log_;
  clock::time_point started_;
  std::vector<held_socket> sockets_;
  std::vector<stored_fd> fdstore_;
  std::optional<notify_receiver> notify_;
  std::optional<control_server> control_;
  unique_fd signal_fd_, wake_fd_;
  notifier manager_;  // our own manager (systemd), if any
  std::list<generation> generations_;
  std::list<client> clients_;
  std::uint64_t next_client_ = 1;
  int next_id_ = 1;
  bool stopping_ = false;
  int final_generation_ = 0;  // the one serving when the stop began: its status is ours
  int app_failures_ = 0;
  std::optional<clock::time_point> next_start_;
  std::optional<exit_status> last_status_;
  int reloads_ = 0, reloads_failed_ = 0, restarts_ = 0;
  std::string last_reload_;
  bool pid_file_written_ = false;
  pid_t last_ignored_sender_ = 0;
};

constexpr int forwarded_signals[] = {SIGUSR1, SIGUSR2, SIGWINCH, SIGQUIT};

void supervisor::setup() {
  // Signals go to the signalfd only. Blocked here, before anything else: spawn() gives each
  // child a clean mask and default dispositions.
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

  // Orphans of the app (a daemonizing child, a forked successor after MAINPID=) are re-parented
  // to us and reaped here rather than left to an init that may not reap (PR_SET_CHILD_SUBREAPER).
  if (::getpid() != 1) (void)::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

  manager_ = notifier::from_environment(/*unset=*/true);
  ::unsetenv("WATCHDOG_USEC");  // systemd's watchdog of this process is not the app's
  ::unsetenv("WATCHDOG_PID");

  if (o_.listen.empty()) {
    auto inherited = listen_fds(unset_environment::yes);
    if (!inherited) throw std::runtime_error(inherited.error().message());
    for (auto& s : *inherited) {
      held_socket h;
      h.where = s.info.describe();
      h.name = s.name;
      h.fd = std::move(s.fd);
      sockets_.push_back(std::move(h));
    }
  } else {
    // Each --listen takes an inherited socket of that name or address when systemd passed one
    // (socket_set), else opens it; inherited sockets no --listen asked for are closed.
    auto inherited = socket_set::from_environment(unset_environment::yes);
    if (!inherited) throw std::runtime_error(inherited.error().message());
    for (const auto& text : o_.listen) {
      auto where = parse_address(text);
      if (!where) throw std::runtime_error(where.error().message());
      auto fd = inherited->listen(*where);
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
  for (const auto& s : sockets_)
    log_.log("socket", fmt::format("holding {}{}", s.name.empty() ? "" : s.name + "=", s.where),
             {{"socket", s.name}, {"address", s.where}});
  if (sockets_.empty())
    log_.log("socket", "no sockets: neither --listen nor LISTEN_FDS; supervising the app anyway");

  auto n = notify_receiver::open_unique();
  if (!n) throw std::runtime_error(n.error().message());
  notify_.emplace(std::move(*n));

  if (!o_.control.empty()) {
    auto c = control_server::open(o_.control);
    if (!c) throw std::runtime_error("control socket: " + c.error().message());
    control_.emplace(std::move(*c));
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
  log_.log("supervisor",
           fmt::format("supervisor pid {} running {}; control {}", ::getpid(), o_.command.at(0),
                       o_.control.empty() ? "none" : o_.control),
           {{"pid", static_cast<long long>(::getpid())}, {"control", o_.control}});
}

generation* supervisor::pending() {
  for (auto& g : generations_)
    if (g.state == generation_state::starting || g.state == generation_state::settling) return &g;
  return nullptr;
}

generation* supervisor::serving() {
  for (auto& g : generations_)
    if (g.state == generation_state::serving) return &g;
  return nullptr;
}

result<void> supervisor::spawn_slot(generation& g, slot& s) {
  spawn_options so;
  so.argv = o_.command;
  for (const auto& h : sockets_) so.fds.push_back({h.fd.get(), h.name});
  for (const auto& f : fdstore_) so.fds.push_back({f.fd.get(), f.name});
  so.notify_socket = notify_->address();
  so.group = process_group::new_group;
  so.extra_environment.push_back("HANDOFF_GENERATION=" + std::to_string(g.id));
  if (o_.watchdog.count() > 0)
    so.extra_environment.push_back("WATCHDOG_USEC=" + std::to_string(o_.watchdog.count() * 1000));
  auto pid = spawn(so);
  if (!pid) return pid.error();
  const auto now = clock::now();
  s.pid = *pid;
  s.pgid = *pid;
  s.former.clear();
  s.pidfd.reset();
  s.ready = s.stopping = s.reloading = false;
  s.started = now;
  s.ready_deadline = now + o_.ready_timeout;
  s.watchdog = o_.watchdog;
  s.status_text.clear();
  if (o_.ready == ready_mode::tcp || o_.ready == ready_mode::http) {
    std::string target = o_.ready_target;
    if (o_.ready == ready_mode::tcp && target.empty()) {
      for (const auto& h : sockets_) {
        auto where = local_address(h.fd.get());
        if (where && where->kind == transport::tcp) {
          target = (where->host.empty()                          ? std::string("127.0.0.1")
                    : where->host.find(':') != std::string::npos ? "[" + where->host + "]"
                                                                 : where->host) +
                   ":" + std::to_string(where->port);
          break;
        }
      }
    }
    s.probe = start_probe(o_.ready == ready_mode::http ? "http" : "tcp", target, wake_fd_.get());
  }
  log_.log("started", fmt::format("generation {}: started pid {}", g.id, s.pid),
           {{"generation", g.id}, {"pid", static_cast<long long>(s.pid)}});
  return {};
}

void supervisor::start_generation(bool is_restart, std::optional<std::uint64_t> waiter) {
  generation& g = generations_.emplace_back();
  g.id = next_id_++;
  g.started = clock::now();
  g.is_restart = is_restart;
  g.slots.resize(static_cast<std::size_t>(o_.processes));
  if (waiter) g.waiters.push_back(*waiter);
  if (!is_restart && g.id > 1) (void)manager_.reloading();
  for (auto& s : g.slots) {
    if (auto r = spawn_slot(g, s); !r) {
      // The very first start failing to exec is a setup error (a typo in the command), not a
      // crash to retry; later ones (a binary being replaced during a deploy) are retried.
      if (g.id == 1) {
        for (auto& other : g.slots) kill_slot(other, SIGKILL);
        throw std::runtime_error(r.error().message());
      }
      fail_generation(g, r.error().message());
      return;
    }
  }
  check_progress();
}

void supervisor::mark_ready(generation& g, slot& s, const char* how) {
  const auto now = clock::now();
  s.ready = true;
  s.ready_at = now;
  s.last_watchdog = now;
  if (s.probe) s.probe->abandoned = true;
  s.probe.reset();
  log_.log("ready",
           fmt::format("generation {}: pid {} ready ({}, {} ms)", g.id, s.pid, how,
                       ms_since(s.started, now)),
           {{"generation", g.id},
            {"pid", static_cast<long long>(s.pid)},
            {"ms", ms_since(s.started, now)}});
}

void supervisor::take_over(generation& g) {
  const auto now = clock::now();
  generation* old = serving();
  g.state = generation_state::serving;
  app_failures_ = 0;
  const std::string text = fmt::format("generation {} took over: pid {} ready in {} ms", g.id,
                                       g.pids(), ms_since(g.started, now));
  log_.log("took_over", text, {{"generation", g.id}, {"ms", ms_since(g.started, now)}});
  if (!g.is_restart && g.id > 1) {
    ++reloads_;
    last_reload_ = "ok " + text;
  }
  for (const auto id : g.waiters) answer(id, "ok " + text + "\n");
  g.waiters.clear();
  if (old != nullptr) stop_generation(*old, o_.stop_signal);
  (void)manager_.ready("generation " + std::to_string(g.id) + " serving");
}

void supervisor::kill_slot(slot& s, int sig) {
  if (!s.running()) return;
  // The group only while its leader (or, after MAINPID=, the main process in it) is unreaped:
  // see generation.hpp. The main pid too if it left the group.
  // Exactly once per process: to many apps a second SIGTERM or SIGINT means "stop now".
  if (s.pgid > 0) (void)::kill(-s.pgid, sig);
  if (s.pgid <= 0 || ::getpgid(s.pid) != s.pgid) (void)::kill(s.pid, sig);
}

void supervisor::fail_generation(generation& g, const std::string& cause) {
  g.state = generation_state::failed;
  g.failure = cause;
  for (auto& s : g.slots) {
    kill_slot(s, SIGKILL);
    if (s.probe) s.probe->abandoned = true;
  }
  g.killed = true;
  generation* current = serving();
  std::string text = fmt::format("generation {} failed: {}", g.id, cause);
  if (current != nullptr)
    text += fmt::format("; generation {} (pid {}) keeps serving", current->id, current->pids());
  log_.log("start_failed", text, {{"generation", g.id}, {"cause", cause}});
  if (!g.is_restart && g.id > 1) {
    ++reloads_failed_;
    last_reload_ = "error " + text;
    // Our manager (systemd, Type=notify-reload) waits for READY=1 after RELOADING=1 either way.
    if (current != nullptr) (void)manager_.ready("reload failed: " + cause);
  }
  for (const auto id : g.waiters) answer(id, "error " + text + "\n");
  g.waiters.clear();
  if (current == nullptr && !stopping_) schedule_app_restart();
}

void supervisor::schedule_app_restart() {
  if (o_.restart == restart_policy::never || next_start_) return;
  const auto backoff =
      std::min<ms>(o_.backoff_max, o_.backoff_min * (1LL << std::min(app_failures_, 20)));
  ++app_failures_;
  next_start_ = clock::now() + backoff;
  log_.log("restart_scheduled",
           fmt::format("no generation serving: starting a new one in {} ms", backoff.count()),
           {{"ms", static_cast<long long>(backoff.count())}});
}

void supervisor::stop_generation(generation& g, int sig) {
  g.state = generation_state::draining;
  g.stop_sent = true;
  g.stop_deadline = clock::now() + o_.stop_timeout;
  for (auto& s : g.slots) {
    kill_slot(s, sig);
    if (s.probe) s.probe->abandoned = true;
    s.restart_at = {};
  }
  log_.log("stop_sent",
           fmt::format("generation {}: sent {} to pid {} (stop timeout {})", g.id, signal_name(sig),
                       g.pids(), format_duration(o_.stop_timeout)),
           {{"generation", g.id}, {"signal", signal_name(sig)}});
}

// After any event: a starting generation whose processes are all ready moves on.
void supervisor::check_progress() {
  generation* g = pending();
  if (g == nullptr || g->state != generation_state::starting || !g->all_ready()) return;
  // Settling protects an old generation that still serves; with none, there is nothing to wait for.
  if (o_.settle.count() > 0 && serving() != nullptr) {
    g->state = generation_state::settling;
    g->settle_deadline = clock::now() + o_.settle;
    log_.log("settling", fmt::format("generation {}: ready, settling for {} before taking over",
                                     g->id, format_duration(o_.settle)));
    return;
  }
  take_over(*g);
}

std::string supervisor::request_reload(std::optional<std::uint64_t> waiter) {
  if (stopping_) return "the supervisor is stopping";
  if (generation* p = pending())
    return fmt::format("a reload is already in progress: generation {} ({}) started {} ms ago",
                       p->id, to_string(p->state), ms_since(p->started, clock::now()));
  int draining = 0;
  for (const auto& g : generations_)
    if (g.state == generation_state::draining) ++draining;
  if (draining >= o_.max_draining)
    return fmt::format(
        "{} old generations are still draining (--max-draining {}); try again once they exit",
        draining, o_.max_draining);
  log_.log("reload", "reload requested");
  next_start_.reset();
  start_generation(false, waiter);
  return {};
}

void supervisor::begin_stop(const std::string& why) {
  if (stopping_) {
    log_.log("stop", why + " again: SIGKILL to every generation now");
    for (auto& g : generations_)
      for (auto& s : g.slots) kill_slot(s, SIGKILL);
    return;
  }
  stopping_ = true;
  if (generation* g = serving()) final_generation_ = g->id;
  next_start_.reset();
  log_.log("stop", why + ": stopping every generation");
  (void)manager_.stopping();
  for (auto& g : generations_) {
    for (const auto id : g.waiters)
      answer(id, fmt::format("error generation {} abandoned: the supervisor is stopping\n", g.id));
    g.waiters.clear();
    if (g.state != generation_state::draining && g.state != generation_state::failed)
      stop_generation(g, o_.stop_signal);
  }
}

bool supervisor::finished() const {
  for (const auto& g : generations_) {
    if (g.any_running()) return false;
    if (!stopping_ && g.state == generation_state::serving)
      for (const auto& s : g.slots)
        if (!s.running() && s.restart_at != clock::time_point{}) return false;
  }
  return stopping_ || !next_start_;
}

void supervisor::on_signal() {
  for (;;) {
    signalfd_siginfo info{};
    const ssize_t n = ::read(signal_fd_.get(), &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof info)) return;
    const int sig = static_cast<int>(info.ssi_signo);
    switch (sig) {
      case SIGCHLD:
        break;  // reaped below, all at once
      case SIGHUP:
        if (const auto refused = request_reload(std::nullopt); !refused.empty())
          log_.log("reload_refused", "SIGHUP: reload refused: " + refused);
        break;
      case SIGTERM:
      case SIGINT:
        begin_stop(signal_name(sig));
        break;
      default:
        if (generation* g = serving())
          for (auto& s : g->slots)
            if (s.running()) (void)::kill(s.pid, sig);
        log_.log("signal", fmt::format("forwarded {} to the serving generation", signal_name(sig)));
    }
  }
}

void supervisor::reap() {
  for (;;) {
    siginfo_t info{};
    // Peek first (WNOWAIT): while the child is a zombie its pid, and so its process group id,
    // cannot be reused, so killing what is left of its group is safe at this moment only.
    if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      return;  // ECHILD: none left
    }
    const pid_t pid = info.si_pid;
    if (pid == 0) return;
    for (auto& g : generations_)
      for (auto& s : g.slots)
        if (s.pid == pid && s.pgid > 0) (void)::kill(-s.pgid, SIGKILL);
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) <= 0) continue;
    exit_status es;
    if (WIFEXITED(status)) {
      es.exited = true;
      es.code = WEXITSTATUS(status);
    } else {
      es.signal = WTERMSIG(status);
    }
    on_exit(pid, es);
  }
}

void supervisor::on_exit(pid_t pid, const std::optional<exit_status>& status) {
  const auto now = clock::now();
  for (auto& g : generations_) {
    for (auto& s : g.slots) {
      if (std::find(s.former.begin(), s.former.end(), pid) != s.former.end()) {
        log_.log("exited",
                 fmt::format("generation {}: pid {} (handed over to pid {} by MAINPID=) {}", g.id,
                             pid, s.pid, describe(status)));
        return;
      }
      if (s.pid != pid) continue;
      const bool was_ready = s.ready;
      s.pid = 0;
      s.pgid = 0;
      s.pidfd.reset();
      s.ready = false;
      if (s.probe) s.probe->abandoned = true;
      s.probe.reset();
      s.last_exit = status;
      log_.log("exited", fmt::format("generation {}: pid {} {}", g.id, pid, describe(status)),
               {{"generation", g.id},
                {"pid", static_cast<long long>(pid)},
                {"status", describe(status)},
                {"code", static_cast<long long>(status ? exit_code_of(*status) : -1)}});
      switch (g.state) {
        case generation_state::starting:
          if (status) last_status_ = status;
          fail_generation(g, fmt::format("pid {} {} before it was ready", pid, describe(status)));
          break;
        case generation_state::settling:
          if (status) last_status_ = status;
          fail_generation(g, fmt::format("pid {} {} after it was ready, within the settle time",
                                         pid, describe(status)));
          break;
        case generation_state::serving: {
          if (status) last_status_ = status;
          if (stopping_) break;
          const bool success = status && status->success();
          const bool again = o_.restart == restart_policy::always ||
                             (o_.restart == restart_policy::on_failure && !success);
          if (!again) {
            log_.log("not_restarting",
                     fmt::format("generation {}: not restarting (--restart {})", g.id,
                                 o_.restart == restart_policy::never ? "never" : "on-failure"));
            break;
          }
          // A process that served a while before dying starts its backoff over.
          if (was_ready && now - s.ready_at >= 10s) s.failures_in_a_row = 0;
          const auto backoff = std::min<ms>(
              o_.backoff_max, o_.backoff_min * (1LL << std::min(s.failures_in_a_row, 20)));
          ++s.failures_in_a_row;
          s.restart_at = now + backoff;
          log_.log("restart_scheduled",
                   fmt::format("generation {}: died unasked; restarting its process in {} ms", g.id,
                               backoff.count()),
                   {{"generation", g.id}, {"ms", static_cast<long long>(backoff.count())}});
          break;
        }
        case generation_state::draining:
        case generation_state::failed:
          if (status && g.id == final_generation_) last_status_ = status;
          break;  // removed by on_timers once nothing of it runs
      }
      return;
    }
  }
}

void supervisor::on_pidfd(generation& g, slot& s) {
  (void)g;
  siginfo_t info{};
  // Our child (re-parented to us, as subreaper): reap() gets its status.
  if (::waitid(P_PID, static_cast<id_t>(s.pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == s.pid) {
    reap();
    return;
  }
  on_exit(s.pid, std::nullopt);
}

void supervisor::on_notify() {
  for (int budget = 0; budget < 64; ++budget) {
    auto got = notify_->try_receive();
    if (!got) {
      log_.log("notify_error", got.error().message());
      continue;
    }
    if (!*got) return;
    notify_message& m = **got;
    generation* owner = nullptr;
    slot* from = nullptr;
    const pid_t group = ::getpgid(m.pid);
    for (auto& g : generations_)
      for (auto& s : g.slots) {
        if (!s.running()) continue;
        const bool mine = s.pid == m.pid ||
                          std::find(s.former.begin(), s.former.end(), m.pid) != s.former.end() ||
                          (group > 0 && group == s.pgid);
        if (mine && from == nullptr) owner = &g, from = &s;
      }
    if (from == nullptr) {
      if (m.pid != last_ignored_sender_)
        log_.log("notify_ignored",
                 fmt::format("notify message from pid {}, not a process of any generation: "
                             "ignored",
                             m.pid));
      last_ignored_sender_ = m.pid;
      continue;
    }
    generation& g = *owner;
    slot& s = *from;
    if (auto text = m.get("STATUS")) s.status_text = std::string(*text);
    if (auto mp = m.get("MAINPID")) {
      long n = 0;
      const std::string v(*mp);
      const bool number = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos &&
                          v.size() < 10 && (n = std::stol(v)) > 1;
      if (!number || ::getpgid(static_cast<pid_t>(n)) != s.pgid) {
        log_.log("notify_ignored",
                 fmt::format("generation {}: MAINPID={} from pid {} refused: not a live process "
                             "of the generation's process group",
                             g.id, v, m.pid));
      } else if (n != s.pid) {
        unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(n), 0)));
        if (pidfd) {
          log_.log("mainpid", fmt::format("generation {}: main process {} -> {}", g.id, s.pid, n));
          s.former.push_back(s.pid);
          s.pid = static_cast<pid_t>(n);
          s.pidfd = std::move(pidfd);
        }
      }
    }
    if (m.has("RELOADING")) s.reloading = true;
    if (m.has("STOPPING")) s.stopping = true;
    if (m.has("WATCHDOG")) s.last_watchdog = clock::now();
    if (auto wd = m.get("WATCHDOG_USEC")) {
      const std::string v(*wd);
      if (!v.empty() && v.size() < 16 && v.find_first_not_of("0123456789") == std::string::npos)
        s.watchdog = std::chrono::duration_cast<ms>(std::chrono::microseconds(std::stoll(v)));
    }
    if (m.has("FDSTORE") && !m.fds.empty()) {
      std::string name(m.get("FDNAME").value_or("stored"));
      if (!valid_socket_name(name)) name = "stored";
      for (auto& fd : m.fds) {
        if (fdstore_.size() >= o_.fdstore_max) {
          log_.log("fdstore", fmt::format("fd store full ({}): fd from pid {} dropped",
                                          o_.fdstore_max, m.pid));
          break;
        }
        fdstore_.push_back({std::move(fd), name});
      }
      log_.log("fdstore", fmt::format("generation {}: pid {} stored fds as {:?} ({} in store)",
                                      g.id, m.pid, name, fdstore_.size()));
    }
    if (m.has("FDSTOREREMOVE")) {
      if (auto name = m.get("FDNAME"))
        std::erase_if(fdstore_, [&](const stored_fd& f) { return f.name == *name; });
    }
    if (m.has("READY")) {
      s.reloading = false;
      if (!s.ready && o_.ready == ready_mode::notify) mark_ready(g, s, "READY=1");
    }
  }
}

void supervisor::on_timers(clock::time_point now) {
  for (auto it = generations_.begin(); it != generations_.end();) {
    const bool over =
        it->state == generation_state::draining || it->state == generation_state::failed;
    if (!over || it->any_running()) {
      ++it;
      continue;
    }
    log_.log("gone",
             fmt::format("generation {}: {} ({} ms after its start)", it->id,
                         it->state == generation_state::failed ? "failed, all its processes gone"
                                                               : "stopped",
                         ms_since(it->started, now)),
             {{"generation", it->id}});
    it = generations_.erase(it);
  }
  if (next_start_ && now >= *next_start_ && !stopping_) {
    next_start_.reset();
    if (pending() == nullptr) start_generation(true, std::nullopt);
  }
  for (auto& g : generations_) {
    for (auto& s : g.slots) {
      if (s.running() && !s.ready) {
        const bool probe_done = s.probe && s.probe->done;
        const bool delay_done = o_.ready == ready_mode::delay && now >= s.started + o_.ready_delay;
        if ((g.state == generation_state::starting || g.state == generation_state::serving) &&
            (probe_done || delay_done)) {
          mark_ready(g, s, probe_done ? "probe answered" : "delay passed");
        } else if (now >= s.ready_deadline && g.state == generation_state::starting) {
          fail_generation(g, fmt::format("pid {} not ready within {} (--ready-timeout)", s.pid,
                                         format_duration(o_.ready_timeout)));
          break;
        } else if (now >= s.ready_deadline && g.state == generation_state::serving) {
          log_.log("ready_timeout", fmt::format("generation {}: restarted pid {} not ready within "
                                                "{}; killing it",
                                                g.id, s.pid, format_duration(o_.ready_timeout)));
          kill_slot(s, SIGKILL);
          s.ready_deadline = clock::time_point::max();
        }
      }
      if (s.running() && s.ready && s.watchdog.count() > 0 &&
          g.state == generation_state::serving && now >= s.last_watchdog + s.watchdog) {
        log_.log("watchdog", fmt::format("generation {}: pid {} silent for {} (watchdog); "
                                         "killing it",
                                         g.id, s.pid, format_duration(s.watchdog)));
        kill_slot(s, SIGKILL);
        s.last_watchdog = clock::time_point::max() - 24h;
      }
      if (!s.running() && g.state == generation_state::serving && !stopping_ &&
          s.restart_at != clock::time_point{} && now >= s.restart_at) {
        s.restart_at = {};
        ++s.restarts;
        ++restarts_;
        if (auto r = spawn_slot(g, s); !r) {
          log_.log("restart_failed", fmt::format("generation {}: {}", g.id, r.error().message()));
          ++s.failures_in_a_row;
          s.restart_at =
              now + std::min<ms>(o_.backoff_max,
                                 o_.backoff_min * (1LL << std::min(s.failures_in_a_row, 20)));
        }
      }
    }
    if (g.state == generation_state::settling && now >= g.settle_deadline) take_over(g);
    if ((g.state == generation_state::draining || g.state == generation_state::failed) &&
        g.stop_sent && !g.killed && now >= g.stop_deadline && g.any_running()) {
      log_.log("stop_timeout",
               fmt::format("generation {}: still running {} after {}: SIGKILL to pid {}", g.id,
                           signal_name(o_.stop_signal), format_duration(o_.stop_timeout), g.pids()),
               {{"generation", g.id}});
      for (auto& s : g.slots) kill_slot(s, SIGKILL);
      g.killed = true;
    }
  }
  check_progress();
  for (auto it = clients_.begin(); it != clients_.end();) {
    if (!it->conn.answered && now >= it->conn.deadline) {
      send_reply(it->conn.fd.get(), "error no request line within 5 s\n");
      it = clients_.erase(it);
    } else {
      ++it;
    }
  }
}

void supervisor::answer(std::uint64_t id, const std::string& text) {
  for (auto it = clients_.begin(); it != clients_.end(); ++it)
    if (it->id == id) {
      send_reply(it->conn.fd.get(), text);
      clients_.erase(it);
      return;
    }
}

void supervisor::on_control_accept() {
  for (int budget = 0; budget < 16; ++budget) {
    uid_t rejected = 0;
    auto fd = control_->accept(rejected);
    if (!fd) {
      log_.log("control_error", fd.error().message());
      return;
    }
    if (rejected != static_cast<uid_t>(-1)) {
      log_.log("control_refused", fmt::format("control connection of uid {} refused", rejected));
      continue;
    }
    if (!*fd) return;
    if (clients_.size() >= 64) {
      send_reply(fd->get(), "error too many control connections\n");
      continue;
    }
    client c;
    c.id = next_client_++;
    c.conn.fd = std::move(*fd);
    c.conn.deadline = clock::now() + 5s;
    clients_.push_back(std::move(c));
  }
}

void supervisor::on_client(std::list<client>::iterator it) {
  std::string problem;
  if (it->conn.answered) {
    // A waiting client only ever closes; anything it sends is ignored.
    char buf[256];
    const ssize_t n = ::recv(it->conn.fd.get(), buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) clients_.erase(it);
    return;
  }
  if (!read_request(it->conn, problem)) return;
  if (problem == "closed") {
    clients_.erase(it);
    return;
  }
  if (!problem.empty()) {
    send_reply(it->conn.fd.get(), "error " + problem + "\n");
    clients_.erase(it);
    return;
  }
  const std::string line = it->conn.buffer;
  bool printable = true;
  for (const char c : line)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
      printable = false;
  if (line == "reload") {
    it->conn.answered = true;
    const auto refused = request_reload(it->id);
    if (!refused.empty()) {
      log_.log("reload_refused", "reload refused: " + refused);
      answer(it->id, "error reload refused: " + refused + "\n");
    }
    return;
  }
  if (line == "status" || line == "status json") {
    send_reply(it->conn.fd.get(), status_text(line == "status json"));
    clients_.erase(it);
    return;
  }
  if (line == "stop") {
    it->conn.answered = true;
    send_reply(it->conn.fd.get(), "ok stopping\n");
    begin_stop("stop requested");
    return;  // the connection closes when the supervisor exits
  }
  std::string quoted;
  json_string(quoted, printable ? line : std::string("(not printable text)"));
  send_reply(it->conn.fd.get(), "error unknown command " + quoted +
                                    ": expected reload, status, status json or stop\n");
  clients_.erase(it);
}

std::string supervisor::status_text(bool json) const {
  const auto now = clock::now();
  if (!json) {
    std::string out = fmt::format(
        "{}: supervisor pid {}, up {} s, {} reloads ({} failed), {} "
        "restarts\n",
        o_.name, ::getpid(), ms_since(started_, now) / 1000, reloads_, reloads_failed_, restarts_);
    for (const auto& s : sockets_)
      out += fmt::format("socket {}{}\n", s.name.empty() ? "" : s.name + "=", s.where);
    for (const auto& g : generations_) {
      out += fmt::format("generation {} {}, up {} ms\n", g.id, to_string(g.state),
                         ms_since(g.started, now));
      for (const auto& s : g.slots) {
        if (s.running())
          out += fmt::format("  pid {} {}{}, up {} ms, {} restarts{}\n", s.pid,
                             s.ready ? "ready" : "not ready", s.reloading ? " (reloading)" : "",
                             ms_since(s.started, now), s.restarts,
                             s.status_text.empty() ? "" : ", status: " + s.status_text);
        else
          out += fmt::format("  (no process{}), {} restarts\n",
                             s.restart_at != clock::time_point{} ? ": restart pending" : "",
                             s.restarts);
      }
    }
    if (stopping_) out += "stopping\n";
    out += "last reload: " + (last_reload_.empty() ? std::string("none") : last_reload_) + "\n";
    return out;
  }
  std::string out = "{\"name\":";
  json_string(out, o_.name);
  out += fmt::format(
      ",\"pid\":{},\"uptime_ms\":{},\"reloads\":{},\"reloads_failed\":{},"
      "\"restarts\":{},\"stopping\":{},\"sockets\":[",
      ::getpid(), ms_since(started_, now), reloads_, reloads_failed_, restarts_,
      stopping_ ? "true" : "false");
  bool first = true;
  for (const auto& s : sockets_) {
    out += first ? "{\"name\":" : ",{\"name\":";
    first = false;
    json_string(out, s.name);
    out += ",\"address\":";
    json_string(out, s.where);
    out += "}";
  }
  out += "],\"generations\":[";
  first = true;
  for (const auto& g : generations_) {
    out += fmt::format("{}{{\"id\":{},\"state\":\"{}\",\"uptime_ms\":{},\"processes\":[",
                       first ? "" : ",", g.id, to_string(g.state), ms_since(g.started, now));
    first = false;
    bool first_slot = true;
    for (const auto& s : g.slots) {
      out += fmt::format("{}{{\"pid\":{},\"ready\":{},\"uptime_ms\":{},\"restarts\":{},\"status\":",
                         first_slot ? "" : ",", s.pid, s.ready ? "true" : "false",
                         s.running() ? ms_since(s.started, now) : 0, s.restarts);
      first_slot = false;
      json_string(out, s.status_text);
      out += "}";
    }
    out += "]}";
  }
  out += "],\"last_reload\":";
  json_string(out, last_reload_);
  out += "}\n";
  return out;
}

int supervisor::loop() {
  start_generation(false, std::nullopt);
  std::vector<pollfd> fds;
  std::vector<std::pair<generation*, slot*>> pidfd_owner;
  std::vector<std::list<client>::iterator> client_of;
  for (;;) {
    const auto now = clock::now();
    on_timers(now);
    if (finished()) break;
    // The next deadline.
    auto next = now + 1h;
    auto consider = [&](clock::time_point t) {
      if (t != clock::time_point{} && t < next) next = t;
    };
    if (next_start_) consider(*next_start_);
    for (const auto& g : generations_) {
      if (g.state == generation_state::settling) consider(g.settle_deadline);
      if ((g.state == generation_state::draining || g.state == generation_state::failed) &&
          !g.killed)
        consider(g.stop_deadline);
      // Only the deadlines on_timers() acts on in this state: a deadline left in the past
      // would turn the loop into a spin.
      const bool active =
          g.state == generation_state::starting || g.state == generation_state::serving;
      for (const auto& s : g.slots) {
        if (active && s.running() && !s.ready) {
          consider(s.ready_deadline);
          if (o_.ready == ready_mode::delay) consider(s.started + o_.ready_delay);
        }
        if (g.state != generation_state::serving) continue;
        if (s.running() && s.ready && s.watchdog.count() > 0)
          consider(s.last_watchdog + s.watchdog);
        if (!s.running()) consider(s.restart_at);
      }
    }
    for (const auto& c : clients_)
      if (!c.conn.answered) consider(c.conn.deadline);

    fds.clear();
    pidfd_owner.clear();
    client_of.clear();
    fds.push_back({signal_fd_.get(), POLLIN, 0});
    fds.push_back({notify_->fd(), POLLIN, 0});
    fds.push_back({wake_fd_.get(), POLLIN, 0});
    fds.push_back({control_ ? control_->fd() : -1, POLLIN, 0});
    for (auto& g : generations_)
      for (auto& s : g.slots)
        if (s.pidfd) {
          fds.push_back({s.pidfd.get(), POLLIN, 0});
          pidfd_owner.emplace_back(&g, &s);
        }
    const std::size_t first_client = fds.size();
    for (auto it = clients_.begin(); it != clients_.end(); ++it) {
      fds.push_back({it->conn.fd.get(), POLLIN, 0});
      client_of.push_back(it);
    }
    const auto wait = std::chrono::ceil<ms>(next - clock::now()).count();
    const int ready =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::clamp<long long>(wait, 0, 3'600'000)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    }
    if (fds[0].revents != 0) on_signal();
    // Children's exits after signals (a SIGTERM's stop must see the current states), before
    // notifications: a READY=1 from a process that has since died must not count.
    reap();
    if (fds[1].revents != 0) on_notify();
    if (fds[2].revents != 0) {
      std::uint64_t count = 0;
      (void)!::read(wake_fd_.get(), &count, sizeof count);
    }
    // Pidfds of adopted main processes; the owners may be gone by now, so look them up again.
    for (std::size_t i = 0; i < pidfd_owner.size(); ++i) {
      if (fds[4 + i].revents == 0) continue;
      for (auto& g : generations_)
        for (auto& s : g.slots)
          if (&s == pidfd_owner[i].second && s.pidfd && s.pidfd.get() == fds[4 + i].fd) {
            on_pidfd(g, s);
            goto next_pidfd;
          }
    next_pidfd:;
    }
    for (std::size_t i = 0; i < client_of.size(); ++i) {
      if (fds[first_client + i].revents == 0) continue;
      const std::uint64_t id = client_of[i]->id;
      for (auto it = clients_.begin(); it != clients_.end(); ++it)
        if (it->id == id) {
          on_client(it);
          break;
        }
    }
    if (fds[3].revents != 0 && control_) on_control_accept();
  }
  for (auto& c : clients_) send_reply(c.conn.fd.get(), "ok stopped\n");
  const int code = last_status_ ? exit_code_of(*last_status_) : 0;
  log_.log("exit", fmt::format("supervisor exiting with status {}", code),
           {{"code", static_cast<long long>(code)}});
  return code;
}

}  // namespace

int run(run_options options) {
  supervisor s(std::move(options));
  s.setup();
  return s.loop();
}

}  // namespace handoff::supervisor
