#include "handoff/upgrader.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <span>
#include <string_view>

#include "handoff/decimal.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/spawn.hpp"
#include "sys.hpp"

namespace handoff {
namespace {

constexpr const char* parent_var = "HANDOFF_PARENT_PID";
constexpr const char* manager_var = "HANDOFF_MANAGER_SOCKET";
constexpr const char* draining_var = "HANDOFF_DRAINING_PIDS";

using clock_type = std::chrono::steady_clock;

unique_fd open_pidfd(pid_t pid) {
  return unique_fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

// A pidfd is readable once its process has exited.
bool has_exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

std::optional<pid_t> parse_pid(std::string_view text) {
  return parse_decimal<pid_t>(text, 1, 4'194'304);  // pid_max's ceiling
}

std::optional<std::string> take_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  std::string copy = value;
  ::unsetenv(name);
  return copy;
}

result<std::string> own_executable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) return error::from_errno(errno, "readlink /proc/self/exe");
  std::string path(buf, static_cast<std::size_t>(n));
  // A binary replaced by rename(2) since this process started reads as "PATH (deleted)": the
  // path is what we want, since it now names the new version.
  constexpr std::string_view deleted = " (deleted)";
  if (path.size() > deleted.size() && path.ends_with(deleted))
    path.resize(path.size() - deleted.size());
  return path;
}

// A small file read whole. open(2) with O_CLOEXEC, not a stream: the HTTP threads of the app may
// be starting a process at this very moment, and must not hand it this fd.
result<std::string> read_file(const std::string& path) {
  unique_fd fd(sys::retry_eintr([&] { return ::open(path.c_str(), O_RDONLY | O_CLOEXEC); }));
  if (!fd) return error::from_errno(errno, "open " + path);
  std::string all;
  char buf[4096];
  for (;;) {
    const ssize_t n = sys::retry_eintr([&] { return ::read(fd.get(), buf, sizeof buf); });
    if (n < 0) return error::from_errno(errno, "read " + path);
    if (n == 0) return all;
    all.append(buf, static_cast<std::size_t>(n));
  }
}

result<void> write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = sys::retry_eintr([&] { return ::write(fd, data.data(), data.size()); });
    if (n < 0) return error::from_errno(errno, "write " + path);
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

// A name nobody can guess ahead (and so plant a symlink or a file at): 64 random bits.
result<std::string> random_suffix() {
  std::uint64_t bits = 0;
  auto* at = reinterpret_cast<unsigned char*>(&bits);
  std::size_t got = 0;
  while (got < sizeof bits) {
    const ssize_t n = ::getrandom(at + got, sizeof bits - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return error::from_errno(errno, "getrandom");
    got += static_cast<std::size_t>(n);
  }
  char text[17];
  (void)std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(bits));
  return std::string(text);
}

result<std::vector<std::string>> own_arguments() {
  auto read = read_file("/proc/self/cmdline");
  if (!read) return read.error();
  const std::string& all = *read;
  std::vector<std::string> args;
  std::size_t start = 0;
  while (start < all.size()) {
    const std::size_t end = all.find('\0', start);
    args.emplace_back(all.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (!args.empty()) args.erase(args.begin());  // argv[0]: replaced by the binary's path
  return args;
}

}  // namespace

result<upgrader> upgrader::create(upgrader_options options) {
  upgrader u;
  u.options_ = std::move(options);
  if (u.options_.binary) {
    u.binary_ = *u.options_.binary;
  } else {
    auto exe = own_executable();
    if (!exe) return exe.error();
    u.binary_ = std::move(*exe);
  }
  if (u.options_.arguments) {
    u.arguments_ = *u.options_.arguments;
  } else {
    auto args = own_arguments();
    if (!args) return args.error();
    u.arguments_ = std::move(*args);
  }

  // Who started us: a previous generation (it set HANDOFF_PARENT_PID to itself and
  // NOTIFY_SOCKET to its private socket) or a manager (NOTIFY_SOCKET is the manager's).
  const auto parent = take_env(parent_var);
  const auto manager = take_env(manager_var);
  const auto draining = take_env(draining_var);
  const auto notify = take_env("NOTIFY_SOCKET");
  const auto parent_pid = parent ? parse_pid(*parent) : std::nullopt;
  if (parent_pid && *parent_pid == ::getppid()) {
    u.parent_pid_ = *parent_pid;
    if (notify) u.parent_notify_ = notifier(*notify);
    if (manager) u.manager_ = notifier(*manager);
    u.parent_ = open_pidfd(u.parent_pid_);
  } else if (parent) {
    // The generation that started us is already gone: nobody waits for our READY=1 but the
    // manager, which it named.
    if (manager) u.manager_ = notifier(*manager);
  } else if (notify) {
    u.manager_ = notifier(*notify);
  }
  if (draining) {
    std::string_view rest = *draining;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      if (auto pid = parse_pid(rest.substr(0, comma))) u.ancestors_.push_back(*pid);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  // The parent lists itself among the draining ones; count every process once.
  if (u.parent_pid_ > 0) u.ancestors_.push_back(u.parent_pid_);
  std::sort(u.ancestors_.begin(), u.ancestors_.end());
  u.ancestors_.erase(std::unique(u.ancestors_.begin(), u.ancestors_.end()), u.ancestors_.end());
  u.ancestors_.erase(std::remove(u.ancestors_.begin(), u.ancestors_.end(), ::getpid()),
                     u.ancestors_.end());
  for (pid_t pid : u.ancestors_) {
    // Invalid (ESRCH) when that one has finished already; kept, so the vectors stay aligned.
    u.ancestor_pidfds_.push_back(open_pidfd(pid));
  }

  auto sockets = socket_set::from_environment();
  if (!sockets) return sockets.error();
  u.sockets_ = std::move(*sockets);
  // Not a socket to serve or to close at ready(): kept apart, and handed on.
  u.ticket_keys_ = u.sockets_.take(ticket_keys_name);
  u.exit_event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!u.exit_event_) return error::from_errno(errno, "eventfd");
  return u;
}

result<int> upgrader::listen(std::string_view name, std::string_view address,
                             const listen_options& options) {
  auto where = parse_address(address);
  if (!where) return where.error();
  if (!name.empty()) where->name = std::string(name);
  auto fd = sockets_.listen(*where, options);
  // Claimed by fd, not by name: a socket found by its address keeps the name it came with (an
  // unnamed one is "unknown", a systemd socket has its FileDescriptorName=), and must not be
  // taken for unclaimed because that name is not the one asked for.
  if (fd) claimed_.push_back(*fd);
  return fd;
}

bool upgrader::claim(int fd) {
  const auto& all = sockets_.sockets();
  if (std::none_of(all.begin(), all.end(),
                   [&](const inherited_socket& s) { return s.fd.get() == fd; }))
    return false;
  claimed_.push_back(fd);
  return true;
}

result<void> upgrader::ready(std::string_view status) {
  // Sockets the previous version had and this one does not want: close them now, or they would
  // linger here and be handed on forever.
  auto& all = sockets_.sockets();
  all.erase(std::remove_if(all.begin(), all.end(),
                           [&](const inherited_socket& s) {
                             return std::find(claimed_.begin(), claimed_.end(), s.fd.get()) ==
                                    claimed_.end();
                           }),
            all.end());
  if (ready_) return {};
  ready_ = true;
  if (parent_pid_ > 0) {
    // The parent is the manager's main process: it relays MAINPID= and READY=1 and writes the
    // pid file once it has seen this.
    auto r = parent_notify_.ready(status);
    if (!r) return r.error();
    return {};
  }
  auto r = manager_.ready(status);
  if (!r) return r.error();
  return write_pid_file(::getpid());
}

std::size_t upgrader::draining() const {
  return static_cast<std::size_t>(
      std::count_if(ancestor_pidfds_.begin(), ancestor_pidfds_.end(),
                    [](const unique_fd& fd) { return fd.valid() && !has_exited(fd.get()); }));
}

result<pid_t> upgrader::upgrade() {
  auto refuse = [](const std::string& why) -> error {
    return error::make(errc::unsupported, "upgrade refused: " + why);
  };
  if (!ready_) return refuse("this process has not called ready()");
  if (replaced_) return refuse("this process was replaced already and is draining");
  if (upgrading_) return refuse("an upgrade is already running");
  const std::size_t old = draining();
  if (old >= options_.max_draining)
    return refuse(std::to_string(old) + " older generations are still draining (at most " +
                  std::to_string(options_.max_draining) + ")");
  upgrading_ = true;
  struct reset_flag {
    bool& flag;
    ~reset_flag() { flag = false; }
  } reset{upgrading_};

  (void)manager_.reloading();
  (void)manager_.status("upgrading: starting " + binary_);

  // Tells the manager that the reload ended with the old process still in charge.
  auto fail = [&](pid_t child, const std::string& why) -> error {
    if (child > 0) {
      ::kill(child, SIGKILL);
      (void)wait_exit(child, std::chrono::seconds(5));
    }
    const std::string text = "upgrade failed: " + why;
    (void)manager_.send("READY=1\nSTATUS=" + text);
    return error::make(errc::child_failed, text);
  };

  auto receiver = notify_receiver::open_unique();
  if (!receiver) return fail(0, receiver.error().message());

  spawn_options spawn_with;
  spawn_with.argv.push_back(binary_);
  spawn_with.argv.insert(spawn_with.argv.end(), arguments_.begin(), arguments_.end());
  for (const auto& s : sockets_.sockets()) spawn_with.fds.push_back({s.fd.get(), s.name});
  if (ticket_keys_) spawn_with.fds.push_back({ticket_keys_.get(), std::string(ticket_keys_name)});
  spawn_with.notify_socket = receiver->address();
  std::string draining_pids;
  for (std::size_t i = 0; i < ancestors_.size(); ++i) {
    if (!ancestor_pidfds_[i].valid() || has_exited(ancestor_pidfds_[i].get())) continue;
    draining_pids += std::to_string(ancestors_[i]) + ",";
  }
  draining_pids += std::to_string(::getpid());
  spawn_with.extra_environment = {std::string(parent_var) + "=" + std::to_string(::getpid()),
                                  std::string(draining_var) + "=" + draining_pids};
  if (manager_.socket())
    spawn_with.extra_environment.push_back(std::string(manager_var) + "=" + *manager_.socket());
  auto child = spawn(spawn_with);
  if (!child) return fail(0, child.error().message());
  const pid_t pid = *child;
  unique_fd child_fd = open_pidfd(pid);
  if (!child_fd) return fail(pid, "pidfd_open: " + std::string(std::strerror(errno)));

  const auto deadline = clock_type::now() + options_.ready_timeout;
  bool is_ready = false;
  while (!is_ready) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0)
      return fail(pid, "pid " + std::to_string(pid) + " was not ready within " +
                           std::to_string(options_.ready_timeout.count()) + " ms");
    pollfd fds[2] = {{receiver->fd(), POLLIN, 0}, {child_fd.get(), POLLIN, 0}};
    const int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 1'000'000)));
    if (n < 0 && errno != EINTR) return fail(pid, "poll: " + std::string(std::strerror(errno)));
    // Messages first: a READY=1 that arrived before an exit still counts as seen.
    for (;;) {
      auto message = receiver->try_receive();
      if (!message) continue;  // a bad datagram: consumed, reported nowhere, ignored
      if (!*message) break;
      if ((*message)->pid == pid && (*message)->has("READY")) is_ready = true;
    }
    if (has_exited(child_fd.get())) {
      auto status = wait_exit(pid, std::chrono::seconds(1));
      const std::string how = status ? status->describe() : status.error().message();
      return fail(0, "pid " + std::to_string(pid) + " " + how +
                         (is_ready ? " right after READY=1" : " before it was ready"));
    }
  }

  // The successor serves. Hand the service over while we are still its main process, and wait
  // until the manager has processed that: then our exit is not the service's death.
  (void)manager_.send("MAINPID=" + std::to_string(pid) + "\nREADY=1\nSTATUS=upgraded to pid " +
                      std::to_string(pid));
  (void)manager_.barrier();
  (void)write_pid_file(pid);
  replaced_ = true;
  const std::uint64_t one = 1;
  (void)!::write(exit_event_.get(), &one, sizeof one);
  return pid;
}

result<void> upgrader::write_pid_file(pid_t pid) const {
  if (!options_.pid_file) return {};
  // rename(2) replaces the file atomically: a reader sees the old pid or the new one. The
  // temporary beside it has a random name and is created exclusively, never through a symlink:
  // nothing another user placed there is followed or overwritten.
  const std::string& path = *options_.pid_file;
  auto suffix = random_suffix();
  if (!suffix) return suffix.error();
  const std::string temporary = path + ".tmp." + *suffix;
  unique_fd fd(sys::retry_eintr([&] {
    return ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  }));
  if (!fd) return error::from_errno(errno, "create " + temporary);
  struct remove_unless_renamed {
    const std::string& path;
    bool renamed = false;
    ~remove_unless_renamed() {
      if (!renamed) (void)::unlink(path.c_str());
    }
  } cleanup{temporary};
  if (auto w = write_all(fd.get(), std::to_string(pid) + "\n", temporary); !w) return w.error();
  if (::close(fd.release()) != 0) return error::from_errno(errno, "close " + temporary);
  if (::rename(temporary.c_str(), path.c_str()) != 0)
    return error::from_errno(errno, "rename " + temporary + " to " + path);
  cleanup.renamed = true;
  return {};
}

void upgrader::remove_pid_file() const noexcept {
  // Only a pid file that still names this process: after a hand-over it names the successor,
  // which removes it in turn when it exits.
  if (!options_.pid_file || replaced_ || !pid_file_owner_.armed) return;
  try {
    auto content = read_file(*options_.pid_file);
    if (!content) return;
    const std::string_view text(*content);
    if (parse_pid(text.substr(0, text.find('\n'))) == ::getpid())
      (void)::unlink(options_.pid_file->c_str());
  } catch (...) {
    // Out of memory while exiting: the file stays, as after a crash.
  }
}

upgrader::~upgrader() { remove_pid_file(); }

result<int> upgrader::hold_ticket_keys() {
  if (ticket_keys_) return ticket_keys_.get();
  auto made = create_ticket_keys();
  if (!made) return made.error();
  ticket_keys_ = std::move(*made);
  // The manager's fd store outlives this process: after a restart the keys come back by
  // LISTEN_FDS and tickets issued before still resume. A child generation leaves that to the
  // first one (only the main process may talk to the manager).
  if (parent_pid_ == 0 && manager_.has_manager()) {
    const int fd = ticket_keys_.get();
    (void)manager_.fdstore(std::span<const int>(&fd, 1), ticket_keys_name);
  }
  return ticket_keys_.get();
}

std::chrono::seconds upgrader::rotate_ticket_keys_if_due() {
  const auto period = std::max(options_.ticket_key_rotation, std::chrono::seconds(1));
  if (!ticket_keys_ || replaced_) return period;
  auto keys = read_ticket_keys(ticket_keys_.get());
  if (!keys) return period;  // not ours to repair; the server reading it says why
  const auto now = static_cast<std::int64_t>(std::time(nullptr));
  const auto age = std::chrono::seconds(now - keys->back().created);
  if (age < period) return period - age;
  if (!append_ticket_key(ticket_keys_.get())) return period;
  return period;
}

void upgrader::block_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int upgrader::serve_signals(const std::function<void(const error&)>& on_failure) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&set, s);
  for (;;) {
    // With keys to rotate, the wait ends at the next rotation too.
    const auto next = rotate_ticket_keys_if_due();
    int sig = 0;
    if (ticket_keys_) {
      timespec wait{};
      wait.tv_sec = static_cast<time_t>(next.count());
      sig = ::sigtimedwait(&set, nullptr, &wait);
      if (sig < 0) continue;  // the timeout (EAGAIN) or EINTR: rotate if due, wait again
    } else if (::sigwait(&set, &sig) != 0) {
      continue;
    }
    if (sig != SIGHUP) return sig;
    auto r = upgrade();
    if (r) return sig;
    if (on_failure) on_failure(r.error());
  }
}

}  // namespace handoff
