// Setting the supervisor up, once, before the first generation: signals, the sockets it holds
// for the app, its notify and control sockets, its pid file.
#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include "handoff/activation.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "supervisor/core.hpp"

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
    : o_(std::move(options)), os_(os), log_(o_.name, o_.logs), started_(os_.now()) {}

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
constexpr int forwarded_signals[] = {SIGUSR1, SIGUSR2, SIGWINCH, SIGQUIT};
}  // namespace

void supervisor_core::setup() {
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
    control_ = control_sessions(std::move(*c));
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

}  // namespace handoff::supervisor
