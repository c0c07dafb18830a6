#include "supervisor/probe.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace handoff::supervisor {
namespace {

using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct url_parts {
  std::string host, port = "80", path = "/";
};

bool parse_url(const std::string& url, url_parts& out) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) return false;
  std::string rest = url.substr(scheme.size());
  const auto slash = rest.find('/');
  if (slash != std::string::npos) {
    out.path = rest.substr(slash);
    rest.resize(slash);
  }
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string::npos) return false;
    out.host = rest.substr(1, close - 1);
    rest.erase(0, close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      out.port = rest.substr(1);
    }
  } else {
    const auto colon = rest.rfind(':');
    out.host = rest.substr(0, colon);
    if (colon != std::string::npos) out.port = rest.substr(colon + 1);
  }
  return !out.host.empty() && !out.port.empty() &&
         out.port.find_first_not_of("0123456789") == std::string::npos;
}

bool split_host_port(const std::string& target, std::string& host, std::string& port) {
  url_parts parts;
  if (!parse_url("http://" + target, parts)) return false;
  host = parts.host;
  port = parts.port;
  return true;
}

// A connected socket within `timeout`, or an invalid fd.
unique_fd connect_to(const std::string& host, const std::string& port,
                     std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return {};
  unique_fd fd;
  for (addrinfo* a = found; a != nullptr && !fd; a = a->ai_next) {
    unique_fd s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) continue;
    if (::connect(s.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) continue;
      pollfd p{s.get(), POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) continue;
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) continue;
    }
    fd = std::move(s);
  }
  ::freeaddrinfo(found);
  return fd;
}

bool http_ok(const url_parts& url) {
  unique_fd fd = connect_to(url.host, url.port, 1s);
  if (!fd) return false;
  const std::string request = "GET " + url.path + " HTTP/1.1\r\nHost: " + url.host +
                              "\r\nUser-Agent: handoff-ready-probe\r\nConnection: close\r\n\r\n";
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size()))
    return false;
  std::string head;
  const auto deadline = clock::now() + 2s;
  char buf[512];
  while (head.size() < 12) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) return false;
    head.append(buf, static_cast<std::size_t>(n));
  }
  return head.rfind("HTTP/1.", 0) == 0 && head[9] == '2';
}

}  // namespace

bool valid_http_url(const std::string& url) {
  url_parts parts;
  return parse_url(url, parts);
}

std::shared_ptr<probe_state> start_probe(std::string kind, std::string target, int wake_fd) {
  auto state = std::make_shared<probe_state>();
  auto wake = duplicate_fd(wake_fd);
  if (wake) state->wake = std::move(*wake);
  std::thread([state, kind = std::move(kind), target = std::move(target)] {
    url_parts url;
    std::string host, port;
    const bool parsed =
        kind == "http" ? parse_url(target, url) : split_host_port(target, host, port);
    // Polling is what these modes are: the app gives no event to wait for. Every 100 ms.
    while (parsed && !state->abandoned) {
      const bool ok = kind == "http" ? http_ok(url) : connect_to(host, port, 1s).valid();
      if (ok) {
        state->done = true;
        const std::uint64_t one = 1;
        if (state->wake) (void)!::write(state->wake.get(), &one, sizeof one);
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
  }).detach();
  return state;
}

}  // namespace handoff::supervisor
