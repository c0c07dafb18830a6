// The handing-on side of the systemd socket-passing protocol: fork, arrange the fds, exec.
//
// Everything the child needs is built before fork(): argv, envp (with a fixed-size
// "LISTEN_PID=" entry the child fills in), the resolved program path, the list of fds. Between
// fork and exec the child only makes async-signal-safe calls (signal-safety(7)): no allocation,
// no locks, no stdio, since another thread of the parent may have held the malloc lock at the
// moment of the fork.
#include "handoff/spawn.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <string_view>

#include "handoff/activation.hpp"
#include "handoff/address.hpp"
#include "sys.hpp"

extern char** environ;  // NOLINT: POSIX

namespace handoff {
namespace {

constexpr std::string_view listen_vars[] = {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"};

std::string_view key_of(std::string_view entry) { return entry.substr(0, entry.find('=')); }

bool is_listen_var(std::string_view key) {
  return std::find(std::begin(listen_vars), std::end(listen_vars), key) != std::end(listen_vars);
}

// Replaces the first entry with the same key (dropping any later duplicates) or appends.
void set_entry(std::vector<std::string>& env, std::string entry) {
  const std::string key(key_of(entry));
  auto same = [&](const std::string& e) { return key_of(e) == key; };
  auto first = std::find_if(env.begin(), env.end(), same);
  if (first == env.end()) {
    env.push_back(std::move(entry));
    return;
  }
  *first = std::move(entry);
  env.erase(std::remove_if(first + 1, env.end(), same), env.end());
}

// execvp(3)'s search, done in the parent so that the child only calls execve(2). An empty
// PATH element is the current directory; PATH unset is confstr(_CS_PATH)'s "/bin:/usr/bin".
result<std::string> resolve_program(const std::string& name) {
  if (name.empty()) return error::from_errno(ENOENT, "exec \"\"");
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  const std::string_view dirs = path != nullptr ? path : "/bin:/usr/bin";
  int err = ENOENT;
  std::size_t start = 0;
  for (;;) {
    const std::size_t colon = dirs.find(':', start);
    std::string dir(dirs.substr(start, colon == std::string_view::npos ? colon : colon - start));
    std::string candidate = dir.empty() ? std::string(".") : std::move(dir);
    candidate += '/';
    candidate += name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0) {
      if (S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0) return candidate;
      err = EACCES;  // as execvp: a file that is there but cannot run beats "not found"
    } else if (errno == EACCES) {
      err = EACCES;
    }
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  return error::from_errno(err, "exec " + name);
}

// What the child reports through the pipe when a step before exec fails.
enum class child_step : int {
  move_fd = 1,
  stdio,
  pass_fd,
  close_fds,
  setpgid,
  chdir,
  set_rlimit,
  exec
};
struct child_report {
  child_step step;
  int err;
  int detail;  // the fd concerned, when there is one
};

// Everything the child reads, prepared before fork.
struct child_plan {
  const char* program = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  char* pid_digits = nullptr;    // where LISTEN_PID's value goes (room for 20 digits), or null
  const int* sources = nullptr;  // the passed fds, in order
  int* moved = nullptr;          // scratch, one per source
  int count = 0;
  std::array<int, 3> stdio{-1, -1, -1};
  const char* working_directory = nullptr;
  bool new_group = false;
  int death_signal = 0;
  bool set_open_files = false;
  rlimit open_files{};  // the child's RLIMIT_NOFILE, when set_open_files
  pid_t parent = 0;
  int report_fd = -1;
};

// Async-signal-safe: decimal digits of a positive pid, NUL-terminated.
void format_pid(char* out, pid_t pid) {
  char digits[24];
  int n = 0;
  auto v = static_cast<unsigned long>(pid);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (int i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  out[n] = '\0';
}

[[noreturn]] void child_fail(int report_fd, child_step step, int err, int detail) {
  const child_report report{step, err, detail};
  const char* p = reinterpret_cast<const char*>(&report);
  std::size_t left = sizeof report;
  while (left > 0) {
    const ssize_t n = ::write(report_fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  ::_exit(127);
}

// Closes every fd from `low` on except `keep`; close_range(2), or one by one without it.
int close_from(unsigned low, unsigned keep) {
  auto close_span = [](unsigned lo, unsigned hi) -> int {
    if (lo > hi) return 0;
    if (::close_range(lo, hi, 0) == 0) return 0;
    if (errno != ENOSYS && errno != EINVAL) return -1;
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    const rlim_t top = std::min<rlim_t>(limit.rlim_cur, static_cast<rlim_t>(hi) + 1);
    for (rlim_t fd = lo; fd < top; ++fd) ::close(static_cast<int>(fd));
    return 0;
  };
  if (keep >= low && close_span(low, keep - 1) != 0) return -1;
  return close_span(std::max(low, keep + 1), ~0U);
}

// The child, from fork to exec. Signals are all blocked on entry (see spawn()).
[[noreturn]] void run_child(const child_plan& plan) noexcept {
  int report_fd = plan.report_fd;
  // Default dispositions: an ignored signal stays ignored across exec, and a handler of the
  // parent must never run in the child. Failures (SIGKILL, SIGSTOP, glibc's internal ones) are
  // expected and harmless.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);

  // Every source (stdio replacements, passed fds) and the report pipe first go above the target
  // range 0 .. 3+count-1, so that no dup2 below can clobber a source still to be used: passing
  // {4, 3} swaps them, and a source equal to its target gets a fresh, inheritable duplicate.
  const int first_free = listen_fds_start + plan.count;
  if (report_fd < first_free) {
    const int moved = ::fcntl(report_fd, F_DUPFD_CLOEXEC, first_free);
    if (moved < 0) child_fail(report_fd, child_step::move_fd, errno, report_fd);
    report_fd = moved;
  }
  std::array<int, 3> stdio_moved{-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    if (plan.stdio[i] < 0) continue;
    stdio_moved[i] = ::fcntl(plan.stdio[i], F_DUPFD_CLOEXEC, first_free);
    if (stdio_moved[i] < 0) child_fail(report_fd, child_step::move_fd, errno, plan.stdio[i]);
  }
  for (int i = 0; i < plan.count; ++i) {
    plan.moved[i] = ::fcntl(plan.sources[i], F_DUPFD_CLOEXEC, first_free);
    if (plan.moved[i] < 0) child_fail(report_fd, child_step::move_fd, errno, plan.sources[i]);
  }
  // dup2 gives the target a descriptor without FD_CLOEXEC: exactly these survive the exec.
  for (int i = 0; i < 3; ++i) {
    if (stdio_moved[i] >= 0 && sys::retry_eintr([&] { return ::dup2(stdio_moved[i], i); }) < 0)
      child_fail(report_fd, child_step::stdio, errno, i);
  }
  for (int i = 0; i < plan.count; ++i) {
    const int target = listen_fds_start + i;
    if (sys::retry_eintr([&] { return ::dup2(plan.moved[i], target); }) < 0)
      child_fail(report_fd, child_step::pass_fd, errno, plan.sources[i]);
  }
  // Everything else goes, also what the parent opened without close-on-exec.
  if (close_from(static_cast<unsigned>(first_free), static_cast<unsigned>(report_fd)) != 0)
    child_fail(report_fd, child_step::close_fds, errno, first_free);

  if (plan.new_group && ::setpgid(0, 0) != 0) child_fail(report_fd, child_step::setpgid, errno, 0);
  // The parent may have died before the prctl: then nobody would ever send the signal.
  if (plan.death_signal != 0 &&
      (::prctl(PR_SET_PDEATHSIG, plan.death_signal) != 0 || ::getppid() != plan.parent))
    ::_exit(128 + plan.death_signal);
  if (plan.working_directory != nullptr && ::chdir(plan.working_directory) != 0)
    child_fail(report_fd, child_step::chdir, errno, 0);
  if (plan.pid_digits != nullptr) format_pid(plan.pid_digits, ::getpid());
  // setrlimit is a plain system call (prlimit64), safe here. After close_from: a lower soft
  // limit leaves open fds above it open, but nothing of ours is left there to use.
  if (plan.set_open_files && ::setrlimit(RLIMIT_NOFILE, &plan.open_files) != 0)
    child_fail(report_fd, child_step::set_rlimit, errno, 0);

  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(plan.program, plan.argv, plan.envp);
  child_fail(report_fd, child_step::exec, errno, 0);
}

std::string describe_failure(const child_report& report, const std::string& program,
                             const spawn_options& options) {
  const std::string fd = std::to_string(report.detail);
  switch (report.step) {
    case child_step::move_fd:
      return "dup fd " + fd + " in the child of " + program;
    case child_step::stdio:
      return "dup2 onto fd " + fd + " in the child of " + program;
    case child_step::pass_fd:
      return "pass fd " + fd + " to " + program;
    case child_step::close_fds:
      return "close fds from " + fd + " in the child of " + program;
    case child_step::setpgid:
      return "setpgid in the child of " + program;
    case child_step::chdir:
      return "chdir " + options.working_directory.value_or("");
    case child_step::set_rlimit:
      return "setrlimit RLIMIT_NOFILE in the child of " + program;
    case child_step::exec:
      return "exec " + program;
  }
  return "spawn " + program;
}

}  // namespace

std::vector<std::string> child_environment(const spawn_options& options) {
  std::vector<std::string> env;
  if (options.environment) {
    env = *options.environment;
  } else {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  }
  // The LISTEN_* variables belong to spawn(): inherited ones describe fds this child does not
  // get, and extra_environment cannot override them either.
  env.erase(std::remove_if(env.begin(), env.end(),
                           [](const std::string& e) { return is_listen_var(key_of(e)); }),
            env.end());
  if (options.notify_socket) set_entry(env, "NOTIFY_SOCKET=" + *options.notify_socket);
  for (const auto& extra : options.extra_environment)
    if (!is_listen_var(key_of(extra))) set_entry(env, extra);
  if (!options.fds.empty()) {
    env.push_back("LISTEN_FDS=" + std::to_string(options.fds.size()));
    std::string names = "LISTEN_FDNAMES=";
    for (std::size_t i = 0; i < options.fds.size(); ++i) {
      if (i > 0) names += ':';
      names += options.fds[i].name.empty() ? "unknown" : options.fds[i].name;
    }
    env.push_back(std::move(names));
  }
  return env;
}

result<pid_t> spawn(const spawn_options& options) {
  if (options.argv.empty()) return error::from_errno(EINVAL, "spawn: no program (argv is empty)");
  const std::string& name = options.argv.front();
  if (options.fds.size() > static_cast<std::size_t>(listen_fds_max))
    return error::make(errc::invalid_environment,
                       "spawn " + name + ": " + std::to_string(options.fds.size()) +
                           " fds to pass, more than " + std::to_string(listen_fds_max));
  std::vector<int> sources;
  sources.reserve(options.fds.size());
  for (const auto& passed : options.fds) {
    if (!passed.name.empty() && !valid_socket_name(passed.name))
      return error::make(errc::invalid_environment,
                         "spawn " + name + ": fd name \"" + passed.name + "\" of fd " +
                             std::to_string(passed.fd) +
                             " is not valid (1 to 255 printable ASCII characters, no ':')");
    if (!fd_is_open(passed.fd))
      return error::from_errno(EBADF, "spawn " + name + ": fd " + std::to_string(passed.fd) +
                                          " to pass as \"" + passed.name + "\"");
    sources.push_back(passed.fd);
  }
  const std::array<int, 3> stdio{options.stdin_fd, options.stdout_fd, options.stderr_fd};
  for (int i = 0; i < 3; ++i) {
    if (stdio[i] != -1 && !fd_is_open(stdio[i]))
      return error::from_errno(EBADF, "spawn " + name + ": fd " + std::to_string(stdio[i]) +
                                          " for the child's fd " + std::to_string(i));
  }
  auto program = resolve_program(name);
  if (!program) return program.error();
  // Resolved here means relative to this process's directory, not to the child's new one.
  if (options.working_directory && program->front() != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return error::from_errno(errno, "getcwd");
    *program = std::string(cwd) + "/" + *program;
  }

  std::vector<char*> argv;
  argv.reserve(options.argv.size() + 1);
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  const std::vector<std::string> env = child_environment(options);
  // "LISTEN_PID=" and room for the 20 digits of any 64-bit number, written by the child.
  constexpr std::string_view pid_prefix = "LISTEN_PID=";
  std::array<char, pid_prefix.size() + 21> pid_entry{};
  std::copy(pid_prefix.begin(), pid_prefix.end(), pid_entry.begin());
  std::vector<char*> envp;
  envp.reserve(env.size() + 2);
  for (const auto& entry : env) envp.push_back(const_cast<char*>(entry.c_str()));
  if (!sources.empty()) envp.push_back(pid_entry.data());
  envp.push_back(nullptr);

  std::vector<int> moved(sources.size(), -1);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return error::from_errno(errno, "pipe2 for " + name);
  unique_fd report_read(pipe_fds[0]), report_write(pipe_fds[1]);

  child_plan plan;
  plan.program = program->c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.pid_digits = sources.empty() ? nullptr : pid_entry.data() + pid_prefix.size();
  plan.sources = sources.data();
  plan.moved = moved.data();
  plan.count = static_cast<int>(sources.size());
  plan.stdio = stdio;
  plan.working_directory = options.working_directory ? options.working_directory->c_str() : nullptr;
  plan.new_group = options.group == process_group::new_group;
  plan.death_signal = options.parent_death_signal;
  if (options.open_files_soft_limit) {
    rlimit current{};
    if (::getrlimit(RLIMIT_NOFILE, &current) != 0)
      return error::from_errno(errno, "getrlimit RLIMIT_NOFILE for " + name);
    plan.set_open_files = true;
    plan.open_files.rlim_max = current.rlim_max;
    plan.open_files.rlim_cur =
        std::min<rlim_t>(static_cast<rlim_t>(*options.open_files_soft_limit), current.rlim_max);
  }
  plan.parent = ::getpid();
  plan.report_fd = report_write.get();

  // With every signal blocked across fork, no handler of ours runs in the child before it has
  // reset the dispositions; the child unblocks them just before exec.
  sigset_t all, previous;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous);
  const pid_t pid = ::fork();
  if (pid == 0) run_child(plan);
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  report_write.reset();
  if (pid < 0) return error::from_errno(fork_errno, "fork for " + name);
  // Also from the parent, so the group exists whichever runs first (the child's own call then
  // fails harmlessly); EACCES once the child has exec'd is fine too.
  if (plan.new_group) (void)::setpgid(pid, pid);

  // EOF: the exec closed the close-on-exec pipe. Anything else is a report of what failed.
  child_report report{};
  std::size_t got = 0;
  while (got < sizeof report) {
    const ssize_t n =
        ::read(report_read.get(), reinterpret_cast<char*>(&report) + got, sizeof report - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got == 0) return pid;
  int status = 0;
  (void)sys::retry_eintr([&] { return ::waitpid(pid, &status, 0); });
  if (got != sizeof report)
    return error::make(errc::child_failed,
                       "spawn " + *program + ": the child failed before exec with a short report");
  return error::from_errno(report.err, describe_failure(report, *program, options));
}

std::string exit_status::describe() const {
  if (exited) return "exited with status " + std::to_string(code);
  std::string text = "killed by signal " + std::to_string(signal);
  if (const char* what = ::sigdescr_np(signal)) return text + " (" + what + ")";
  if (signal >= SIGRTMIN && signal <= SIGRTMAX)
    return text + " (real-time signal " + std::to_string(signal - SIGRTMIN) + ")";
  return text;
}

result<exit_status> wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  const std::string subject = "pid " + std::to_string(pid);
  if (pid <= 0) return error::from_errno(EINVAL, "wait for " + subject);
  // A pidfd turns "the process exited" into an fd event with a deadline (pidfd_open(2)).
  unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return error::from_errno(errno, "pidfd_open " + subject);

  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::max(timeout, std::chrono::milliseconds(0));
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
    pollfd p{pidfd.get(), POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::clamp<long long>(left, 0, INT_MAX)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return error::from_errno(errno, "poll pidfd of " + subject);
    }
    if (ready > 0) break;
    if (clock::now() >= deadline)
      return error::make(errc::timed_out, subject + " still running after " +
                                              std::to_string(timeout.count()) + " ms");
  }
  int status = 0;
  const pid_t reaped = sys::retry_eintr([&] { return ::waitpid(pid, &status, 0); });
  if (reaped < 0) return error::from_errno(errno, "waitpid " + subject);
  return exit_status::from_wait_status(status);
}

exit_status exit_status::from_wait_status(int status) noexcept {
  exit_status out;
  if (WIFEXITED(status)) {
    out.exited = true;
    out.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
  }
  return out;
}

exit_status exit_status::from_siginfo(int child_code, int child_status) noexcept {
  exit_status out;
  if (child_code == CLD_EXITED) {
    out.exited = true;
    out.code = child_status;
  } else {
    out.signal = child_status;  // CLD_KILLED, CLD_DUMPED
  }
  return out;
}

}  // namespace handoff
