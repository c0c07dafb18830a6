#include "supervisor/probe.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <cstring>
#include <thread>

#include "check/url.hpp"
#include "handoff/address.hpp"

namespace handoff::supervisor {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

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

asio::awaitable<bool> http_get_ok(const check::url& url) {
  auto executor = co_await asio::this_coro::executor;
  asio::ip::tcp::resolver resolver(executor);
  beast::tcp_stream stream(executor);
  const auto found =
      co_await resolver.async_resolve(url.host, std::to_string(url.port), asio::use_awaitable);
  stream.expires_after(1s);
  co_await stream.async_connect(found, asio::use_awaitable);
  http::request<http::empty_body> request{http::verb::get, url.target, 11};
  request.set(http::field::host, url.host_header());
  request.set(http::field::user_agent, "handoff-ready-probe");
  request.set(http::field::connection, "close");
  stream.expires_after(2s);
  co_await http::async_write(stream, request, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  co_await http::async_read_header(stream, buffer, parser, asio::use_awaitable);
  const unsigned status = parser.get().result_int();
  co_return status >= 200 && status < 300;
}

// One GET; true on a 2xx answer. Any error (refused, reset, timeout, not HTTP) is a "not yet".
bool http_ok(const check::url& url) {
  asio::io_context io;
  bool ok = false;
  asio::co_spawn(io, http_get_ok(url),
                 [&](const std::exception_ptr& e, bool answer) { ok = e == nullptr && answer; });
  io.run();
  return ok;
}

// A connected unix stream socket, or an invalid fd (a unix connect does not wait).
unique_fd connect_unix(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return {};
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  unique_fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s || ::connect(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) return {};
  return s;
}

// One GET on a generation's unix socket (--proxy); true on a 2xx status line within 2 s.
bool http_ok_unix(const std::string& path, const std::string& target) {
  unique_fd fd = connect_unix(path);
  if (!fd) return false;
  const std::string request = "GET " + target +
                              " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: handoff-ready-probe\r\n"
                              "Connection: close\r\n\r\n";
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size()))
    return false;
  std::string head;
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  char buf[512];
  while (head.size() < 12) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
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

std::string ready_target_problem(const std::string& kind, const std::string& target) {
  if (kind == "http") {
    auto url = check::parse_url(target);
    return url ? std::string() : url.error().message();
  }
  auto where = parse_address(target);
  if (!where) return where.error().message();
  if (where->kind != transport::tcp || where->port == 0 || !where->name.empty())
    return "\"" + target + "\" is not HOST:PORT (a TCP address with a port)";
  return {};
}

bool valid_http_url(const std::string& url) { return ready_target_problem("http", url).empty(); }

std::shared_ptr<probe_state> start_probe(std::string kind, std::string target, int wake_fd,
                                         std::string unix_path) {
  auto state = std::make_shared<probe_state>();
  auto wake = duplicate_fd(wake_fd);
  if (wake) state->wake = std::move(*wake);
  std::thread([state, kind = std::move(kind), target = std::move(target),
               unix_path = std::move(unix_path)] {
    std::optional<check::url> url;
    std::optional<address> where;
    if (kind == "http") {
      if (auto u = check::parse_url(target)) url = std::move(*u);
    } else if (auto a = parse_address(target)) {
      where = std::move(*a);
    }
    const bool parsed = url.has_value() || where.has_value();
    // Polling is what these modes are: the app gives no event to wait for. Every 100 ms.
    while (parsed && !state->abandoned) {
      const bool ok = !unix_path.empty() ? (url ? http_ok_unix(unix_path, url->target)
                                                : connect_unix(unix_path).valid())
                      : url              ? http_ok(*url)
                            : connect_to(where->host.empty() ? "127.0.0.1" : where->host,
                                         std::to_string(where->port), 1s)
                                  .valid();
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
