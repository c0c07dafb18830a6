#include "supervisor/control.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "handoff/listeners.hpp"
#include "supervisor/log.hpp"

namespace handoff::supervisor {

using clock = std::chrono::steady_clock;

result<control_server> control_server::open(const std::string& path) {
  address where;
  where.kind = transport::unix_stream;
  where.host = path;
  listen_options options;
  options.unix_mode = 0600;
  options.backlog = 64;
  // open_listener refuses a path a live process listens on (another supervisor of that name)
  // and replaces only a stale socket file.
  auto fd = open_listener(where, options);
  if (!fd) return fd.error();
  // From here on the socket file is ours: an error must not leave it behind.
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    const error e = error::from_errno(errno, "stat " + path);
    return e;  // no file to remove
  }
  control_server server(std::move(*fd), path, st.st_dev, st.st_ino);  // removes it if dropped
  if (auto nb = set_nonblocking(server.fd()); !nb) return nb.error();
  return server;
}

control_server::control_server(control_server&& other) noexcept
    : fd_(std::move(other.fd_)), path_(std::move(other.path_)), dev_(other.dev_), ino_(other.ino_) {
  other.path_.clear();
}

control_server& control_server::operator=(control_server&& other) noexcept {
  if (this != &other) {
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    dev_ = other.dev_;
    ino_ = other.ino_;
    other.path_.clear();
  }
  return *this;
}

control_server::~control_server() {
  if (path_.empty()) return;
  struct stat st {};
  // Never unlink a path that is no longer the socket we created.
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
}

result<unique_fd> control_server::accept(uid_t& rejected) {
  rejected = static_cast<uid_t>(-1);
  for (;;) {
    unique_fd client(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return unique_fd();
      return error::from_errno(errno, "accept on " + path_);
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(client.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
      return error::from_errno(errno, "SO_PEERCRED on " + path_);
    if (cred.uid != 0 && cred.uid != ::geteuid()) {
      rejected = cred.uid;
      send_reply(client.get(), "error permission denied: uid " + std::to_string(cred.uid) +
                                   " is neither root nor the supervisor's user\n");
      return unique_fd();
    }
    return client;
  }
}

using namespace std::chrono_literals;

namespace {

unique_fd open_spare() { return unique_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

}  // namespace

control_sessions::control_sessions(control_server server)
    : server_(std::move(server)), spare_(open_spare()) {}

void control_sessions::poll_fds(std::vector<pollfd>& fds, std::vector<std::uint64_t>& ids) const {
  const bool paused = accept_paused_until_ != clock::time_point{};
  fds.push_back({server_ && !paused ? server_->fd() : -1, POLLIN, 0});
  for (const auto& s : sessions_) {
    fds.push_back({s.conn.fd.get(), POLLIN, 0});
    ids.push_back(s.id);
  }
}

control_sessions::session* control_sessions::find(std::uint64_t id) {
  for (auto& s : sessions_)
    if (s.id == id) return &s;
  return nullptr;
}

result<unique_fd> control_sessions::accept_one(uid_t& rejected) {
  auto fd = server_->accept(rejected);
  if (fd || !(fd.error() == std::errc::too_many_files_open) || !spare_) return fd;
  // Our last fd, given up for this connection (the request a person is waiting for); taken back
  // by expire() once one is free again. The front's thread may take it first: then this
  // connection waits like the others.
  spare_.reset();
  return server_->accept(rejected);
}

void control_sessions::accept(const logger& log, clock::time_point now) {
  if (!server_ || accept_paused_until_ != clock::time_point{}) return;
  for (int budget = 0; budget < 16; ++budget) {
    uid_t rejected = 0;
    auto fd = accept_one(rejected);
    if (!fd) {
      // Whatever the error, the listener stays readable: polled at once again, it would spin.
      accept_paused_until_ = now + accept_backoff;
      log.log("control_error", fmt::format("{}; not accepting for {} ms", fd.error().message(),
                                           accept_backoff.count()));
      return;
    }
    if (rejected != static_cast<uid_t>(-1)) {
      log.log("control_refused", fmt::format("control connection of uid {} refused", rejected));
      continue;
    }
    if (!*fd) return;
    if (sessions_.size() >= control_sessions_max) {
      // Never refuse the newcomer (it may be the reload or stop that matters): the oldest
      // connection that has not said anything yet makes room, else the oldest of all.
      auto victim = std::find_if(sessions_.begin(), sessions_.end(),
                                 [](const session& s) { return !s.conn.answered; });
      if (victim == sessions_.end()) victim = sessions_.begin();
      send_reply(victim->conn.fd.get(),
                 fmt::format("error closed: {} control connections open, this one the oldest\n",
                             control_sessions_max));
      log.log("control_dropped", fmt::format("{} control connections open: closed the oldest idle "
                                             "one",
                                             control_sessions_max));
      sessions_.erase(victim);
    }
    session c;
    c.id = next_id_++;
    c.conn.fd = std::move(*fd);
    c.conn.deadline = now + 5s;
    sessions_.push_back(std::move(c));
  }
}

std::optional<std::string> control_sessions::read(std::uint64_t id) {
  session* s = find(id);
  if (s == nullptr) return std::nullopt;
  if (s->conn.answered) {
    // A waiting client only ever closes; anything it sends is ignored.
    char buf[256];
    const ssize_t n = ::recv(s->conn.fd.get(), buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) answer(id, {});
    return std::nullopt;
  }
  std::string problem;
  if (!read_request(s->conn, problem)) return std::nullopt;
  if (problem == "closed") {
    answer(id, {});
    return std::nullopt;
  }
  if (!problem.empty()) {
    answer(id, "error " + problem + "\n");
    return std::nullopt;
  }
  return s->conn.buffer;
}

void control_sessions::answer(std::uint64_t id, const std::string& text) {
  auto it = std::find_if(sessions_.begin(), sessions_.end(),
                         [&](const session& s) { return s.id == id; });
  if (it == sessions_.end()) return;
  if (!text.empty()) send_reply(it->conn.fd.get(), text);
  sessions_.erase(it);
}

void control_sessions::reply_and_wait(std::uint64_t id, const std::string& text) {
  if (session* s = find(id)) {
    s->conn.answered = true;
    send_reply(s->conn.fd.get(), text);
  }
}

void control_sessions::wait(std::uint64_t id) {
  if (session* s = find(id)) s->conn.answered = true;
}

void control_sessions::expire(deadlines& due) {
  if (accept_paused_until_ != clock::time_point{} && due.reached(accept_paused_until_))
    accept_paused_until_ = {};
  if (server_ && !spare_) spare_ = open_spare();
  std::erase_if(sessions_, [&](session& s) {
    if (s.conn.answered || !due.reached(s.conn.deadline)) return false;
    send_reply(s.conn.fd.get(), "error no request line within 5 s\n");
    return true;
  });
}

void control_sessions::answer_all(const std::string& text) {
  for (auto& s : sessions_) send_reply(s.conn.fd.get(), text);
  sessions_.clear();
}

bool read_request(control_client& client, std::string& error) {
  char buf[512];
  for (;;) {
    const ssize_t n = ::recv(client.fd.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      error = "closed";
      return true;
    }
    client.buffer.append(buf, static_cast<std::size_t>(n));
    if (client.buffer.find('\n') != std::string::npos) break;
    if (client.buffer.size() > control_line_max) break;
  }
  const auto nl = client.buffer.find('\n');
  if (nl != std::string::npos && nl <= control_line_max) {
    client.buffer.resize(nl);
    if (!client.buffer.empty() && client.buffer.back() == '\r') client.buffer.pop_back();
    return true;
  }
  if (client.buffer.size() > control_line_max) {
    error = "request longer than " + std::to_string(control_line_max) + " bytes";
    return true;
  }
  return false;
}

void send_reply(int fd, const std::string& text) {
  std::size_t sent = 0;
  while (sent < text.size()) {
    const ssize_t n =
        ::send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    sent += static_cast<std::size_t>(n);
  }
}

result<control_answer> control_call(const std::string& path, const std::string& request,
                                    std::chrono::milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return error::from_errno(errno, "socket");
  sockaddr_un to{};
  to.sun_family = AF_UNIX;
  if (path.size() >= sizeof to.sun_path)
    return error::from_errno(ENAMETOOLONG, "control socket " + path);
  std::memcpy(to.sun_path, path.data(), path.size());
  // A full backlog makes connect(2) of a unix stream socket wait for room, for as long as
  // SO_SNDTIMEO says (unix(7)); without it, for ever.
  const auto total = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(total / 1'000'000);
  tv.tv_usec = static_cast<suseconds_t>(total % 1'000'000);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    return error::from_errno(errno, "SO_SNDTIMEO");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    if (errno == EAGAIN) return control_answer{};  // no answer within the timeout
    return error::from_errno(errno, "connect to the supervisor at " + path);
  }
  const std::string line = request + "\n";
  if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
    return error::from_errno(errno, "send to the supervisor at " + path);
  control_answer answer;
  char buf[4096];
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) return answer;
    pollfd p{fd.get(), POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return error::from_errno(errno, "poll");
    if (ready == 0) continue;
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      answer.complete = true;
      return answer;
    }
    answer.text.append(buf, static_cast<std::size_t>(n));
  }
}

std::string default_control_dir() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] == '/') return std::string(runtime) + "/handoff";
  return "/run/handoff";
}

std::string default_control_path(const std::string& name) {
  return default_control_dir() + "/" + name + ".sock";
}

}  // namespace handoff::supervisor
