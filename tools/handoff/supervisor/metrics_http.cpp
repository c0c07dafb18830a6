#include "supervisor/metrics_http.hpp"

#include <fmt/core.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string_view>

#include "handoff/address.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"

namespace handoff::supervisor {

namespace {

const char* reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
  }
  return "Error";
}

// The end of the request head (the empty line), or npos while incomplete.
std::size_t head_end(const std::string& in) {
  const auto crlf = in.find("\r\n\r\n");
  const auto lf = in.find("\n\n");
  return std::min(crlf == std::string::npos ? crlf : crlf + 4,
                  lf == std::string::npos ? lf : lf + 2);
}

}  // namespace

int metrics_request_status(const std::string& head) {
  std::string_view line(head);
  line = line.substr(0, line.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) return 400;
  const auto sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return 400;
  const auto method = line.substr(0, sp1);
  const auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const auto version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return 400;
  for (const char c : line)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) return 400;
  if (target.substr(0, target.find('?')) != "/metrics") return 404;
  if (method != "GET") return 405;
  return 200;
}

result<metrics_server> metrics_server::open(const std::string& address_text) {
  auto where = parse_address(address_text);
  if (!where) return where.error();
  if (where->kind == transport::udp)
    return error::from_errno(EINVAL, "--metrics " + address_text +
                                         ": metrics are served over TCP or a unix stream socket");
  listen_options options;
  options.backlog = 64;
  options.unix_mode = 0600;  // chmod before listen(): no connect gets in under the umask's mode
  // open_listener refuses a unix path a live process listens on and replaces a stale one.
  auto fd = open_listener(*where, options);
  if (!fd) return fd.error();
  if (auto nb = set_nonblocking(fd->get()); !nb) return nb.error();
  std::string path;
  if (where->is_unix() && !where->is_abstract()) path = where->host;
  std::string text = where->to_string();
  if (!where->is_unix())
    if (auto bound = local_address(fd->get())) text = bound->to_string();  // port 0: the port
  metrics_server server(std::move(*fd), text, path);
  if (!path.empty()) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      const error e = error::from_errno(errno, "stat " + path);
      server.path_.clear();  // no file of ours to remove
      return e;
    }
    server.dev_ = st.st_dev;
    server.ino_ = st.st_ino;
  }
  return server;
}

metrics_server::metrics_server(unique_fd fd, std::string where, std::string path)
    : fd_(std::move(fd)), where_(std::move(where)), path_(std::move(path)) {}

metrics_server metrics_server::adopt(unique_fd fd, std::string where, std::string path) {
  metrics_server server(std::move(fd), std::move(where), std::move(path));
  struct stat st {};
  if (!server.path_.empty() && ::lstat(server.path_.c_str(), &st) == 0) {
    server.dev_ = st.st_dev;
    server.ino_ = st.st_ino;
  }
  return server;
}

metrics_server::metrics_server(metrics_server&& other) noexcept
    : fd_(std::move(other.fd_)),
      where_(std::move(other.where_)),
      path_(std::move(other.path_)),
      dev_(other.dev_),
      ino_(other.ino_),
      connections_(std::move(other.connections_)),
      next_id_(other.next_id_) {
  other.path_.clear();
}

metrics_server& metrics_server::operator=(metrics_server&& other) noexcept {
  if (this != &other) {
    fd_ = std::move(other.fd_);
    where_ = std::move(other.where_);
    path_ = std::move(other.path_);
    dev_ = other.dev_;
    ino_ = other.ino_;
    connections_ = std::move(other.connections_);
    next_id_ = other.next_id_;
    other.path_.clear();
  }
  return *this;
}

metrics_server::~metrics_server() {
  if (path_.empty()) return;
  struct stat st {};
  // Never unlink a path that is no longer the socket we created.
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
}

void metrics_server::poll_fds(std::vector<pollfd>& fds, std::vector<std::uint64_t>& ids) const {
  fds.push_back({accept_paused_until_ == clock::time_point{} ? fd_.get() : -1, POLLIN, 0});
  for (const auto& c : connections_) {
    fds.push_back({c.fd.get(), static_cast<short>(c.answering ? POLLOUT : POLLIN), 0});
    ids.push_back(c.id);
  }
}

void metrics_server::accept(clock::time_point now) {
  if (accept_paused_until_ != clock::time_point{}) return;
  for (int budget = 0; budget < 16; ++budget) {
    unique_fd fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // Out of fds (or any other failure): the connection waits in the backlog, and the
      // listener, still readable, is left alone a while rather than polled at once again.
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        accept_paused_until_ = now + metrics_accept_backoff;
      return;
    }
    // A newcomer is never refused (it may be the scraper): the oldest makes room; its
    // deadline is the nearest anyway.
    if (connections_.size() >= metrics_connections_max) connections_.erase(connections_.begin());
    connection c;
    c.id = next_id_++;
    c.fd = std::move(fd);
    c.deadline = now + metrics_timeout;
    connections_.push_back(std::move(c));
  }
}

void metrics_server::answer(connection& c, int status, std::string body) {
  c.answering = true;
  c.in.clear();
  c.in.shrink_to_fit();
  c.out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
      status, reason(status),
      status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8",
      body.size(), status == 405 ? "Allow: GET\r\n" : "");
  c.out += body;
}

bool metrics_server::flush(connection& c) {
  while (c.sent < c.out.size()) {
    const ssize_t n = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n <= 0) return true;
    c.sent += static_cast<std::size_t>(n);
  }
  // All sent: the FIN after it, so that a client reading to the end sees the end.
  (void)::shutdown(c.fd.get(), SHUT_WR);
  return true;
}

void metrics_server::on_ready(std::uint64_t id, const std::function<std::string()>& render) {
  const auto it = std::find_if(connections_.begin(), connections_.end(),
                               [id](const connection& c) { return c.id == id; });
  if (it == connections_.end()) return;
  connection& c = *it;
  if (!c.answering) {
    char buf[1024];
    for (;;) {
      const std::size_t room = metrics_request_max + 1 - c.in.size();
      const ssize_t n = ::recv(c.fd.get(), buf, std::min(sizeof buf, room), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) {  // closed (or failed) before its request was complete
        connections_.erase(it);
        return;
      }
      c.in.append(buf, static_cast<std::size_t>(n));
      if (head_end(c.in) != std::string::npos || c.in.size() > metrics_request_max) break;
    }
    const auto end = head_end(c.in);
    if (end == std::string::npos && c.in.size() <= metrics_request_max) return;  // wait
    if (end == std::string::npos || end > metrics_request_max) {
      answer(c, 431, "request head too large\n");
    } else {
      const int status = metrics_request_status(c.in);
      switch (status) {
        case 200:
          answer(c, 200, render());
          break;
        case 404:
          answer(c, 404, "not found: the metrics are at /metrics\n");
          break;
        case 405:
          answer(c, 405, "method not allowed: GET /metrics\n");
          break;
        default:
          answer(c, 400, "bad request: GET /metrics HTTP/1.1 expected\n");
      }
    }
  }
  if (flush(c)) connections_.erase(it);
}

void metrics_server::expire(deadlines& due) {
  if (accept_paused_until_ != clock::time_point{} && due.reached(accept_paused_until_))
    accept_paused_until_ = {};
  std::erase_if(connections_, [&](const connection& c) { return due.reached(c.deadline); });
}

}  // namespace handoff::supervisor
