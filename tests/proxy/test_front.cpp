// The front (proxy/front.hpp) in-process, against real loopback sockets and a scripted
// upstream on a thread: pooled connections the app closed are never reused, a request a
// pooled connection lost goes again when it may, idle ones expire, the per-generation limit
// queues requests; a retired
// generation is reported drained once nothing is in flight, forget() cuts a TCP relay; a
// parked connection is handed over with its bytes read ahead and adopted by another front.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "handoff/fd.hpp"
#include "proxy/front.hpp"

namespace handoff::proxy {
namespace {

using namespace std::chrono_literals;

unique_fd tcp_listener(int& port) {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(fd.get(), 64), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

endpoint loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return {&a, sizeof a};
}

unique_fd connect_to(int port) {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

// Reads until `end` is in what was read, the peer closes, or 10 s pass.
std::string read_until(int fd, const std::string& end) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (out.find(end) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1) break;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// A client may be accepted before the serve() a test calls right after this has reached the
// front's thread (the accept loop takes what is queued as soon as it runs): as in production, it
// waits for a generation, here up to 10 s, unless a test wants the timeout itself.
// Pooled connections expire after a minute here, not the second of production: a test that
// expects its next request on the same upstream connection must not depend on the machine's
// load (those about expiry set their own).
std::unique_ptr<front> start_front(unique_fd public_socket, front_options o) {
  std::vector<unique_fd> listeners;
  listeners.push_back(std::move(public_socket));
  auto f = front::start(std::move(listeners), o);
  EXPECT_TRUE(f) << f.error().message();
  return std::move(*f);
}

std::unique_ptr<front> start_front(unique_fd public_socket, proxy_mode mode,
                                   std::chrono::milliseconds queue_timeout = 10s) {
  front_options o;
  o.mode = mode;
  o.queue_timeout = queue_timeout;
  o.upstream_idle_timeout = 60s;
  return start_front(std::move(public_socket), o);
}

bool wait_readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

// An app that answers one request per connection, keep-alive in words, then closes it: what an
// app's idle timeout (or its exit) does to the connections of our pool. The next request is
// sent once the app has closed (its FIN is in the front's socket): a request that reached the
// front between the app's answer and its close would meet the race that every pool has (the
// check passes, the app closes under the request), which this test is not about.
TEST(Front, APooledConnectionTheAppClosedIsNotReused) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  std::atomic<int> accepted{0};
  std::atomic<int> closed{0};
  std::thread app_thread([&] {
    for (int i = 0; i < 2; ++i) {
      if (!wait_readable(app.get(), 10s)) return;
      unique_fd c(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
      ++accepted;
      (void)read_until(c.get(), "\r\n\r\n");
      const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
      (void)::send(c.get(), answer.data(), answer.size(), MSG_NOSIGNAL);
      // Closed once the front has the response: the connection went back to the pool open.
      c.reset();
      ++closed;
      closed.notify_all();
    }
  });
  auto f = start_front(tcp_listener(public_port), proxy_mode::http);
  f->serve(1, {loopback(app_port)});
  unique_fd client = connect_to(public_port);
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(::send(client.get(), request.data(), request.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(request.size()));
    const std::string r = read_until(client.get(), "ok");
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0U) << "request " << i << ": " << r;
    closed.wait(i);  // until the app's close of this request's connection
  }
  app_thread.join();
  EXPECT_EQ(accepted, 2);
  const auto s = f->stats();
  EXPECT_EQ(s.bad_gateway, 0U);
  EXPECT_EQ(s.requests, 2U);
  EXPECT_EQ(s.accepted, 1U);
}

// ---- pooled upstream connections: retry, expiry, the per-generation limit -------------------

const std::string ok_answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

void send_all(int fd, const std::string& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
}

unique_fd accept_within(int listener, std::chrono::milliseconds timeout) {
  if (!wait_readable(listener, timeout)) return unique_fd();
  return unique_fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
}

// The app's keep-alive timeout crossing our reuse, made deterministic: the app reads the next
// request on the pooled connection and closes it without answering. The check before the lend
// passed (the connection was open), so only the retry saves the GET; the POST, which the app
// had in hand, is not sent again.
TEST(Front, ARequestAPooledConnectionLostGoesAgainIfItMay) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  auto f = start_front(tcp_listener(public_port), proxy_mode::http);
  f->serve(1, {loopback(app_port)});
  unique_fd client = connect_to(public_port);
  send_all(client.get(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  unique_fd first = accept_within(app.get(), 10s);
  ASSERT_TRUE(first);
  EXPECT_NE(read_until(first.get(), "\r\n\r\n").find("GET /1"), std::string::npos);
  send_all(first.get(), ok_answer);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);

  send_all(client.get(), "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(read_until(first.get(), "\r\n\r\n").find("GET /2"), std::string::npos);
  first.reset();
  unique_fd second = accept_within(app.get(), 10s);
  ASSERT_TRUE(second);
  EXPECT_NE(read_until(second.get(), "\r\n\r\n").find("GET /2"), std::string::npos);
  send_all(second.get(), ok_answer);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);

  send_all(client.get(), "POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz");
  EXPECT_NE(read_until(second.get(), "\r\n\r\nz").find("POST /3"), std::string::npos);
  second.reset();
  EXPECT_EQ(read_until(client.get(), "never").rfind("HTTP/1.1 502", 0), 0U);
  EXPECT_FALSE(wait_readable(app.get(), 0ms)) << "the POST was sent again";
  const auto s = f->stats();
  EXPECT_EQ(s.retried, 1U);
  EXPECT_EQ(s.bad_gateway, 1U);
}

// An idle pooled connection is closed once older than upstream_idle_timeout (before the
// app's own timeout can cross a request), and the next request opens a new one.
TEST(Front, AnIdlePooledConnectionPastItsExpiryIsClosedNotReused) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  front_options o;
  o.upstream_idle_timeout = 300ms;
  auto f = start_front(tcp_listener(public_port), o);
  f->serve(1, {loopback(app_port)});
  unique_fd client = connect_to(public_port);
  // Before the connection can be idle: a lower bound of its idle time, whatever the scheduling.
  const auto before_idle = std::chrono::steady_clock::now();
  send_all(client.get(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  unique_fd first = accept_within(app.get(), 10s);
  ASSERT_TRUE(first);
  (void)read_until(first.get(), "\r\n\r\n");
  send_all(first.get(), ok_answer);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  // The front closes it (the app sees the end), no sooner than the expiry.
  EXPECT_EQ(read_until(first.get(), "never"), "");
  EXPECT_GE(std::chrono::steady_clock::now() - before_idle, 300ms);
  send_all(client.get(), "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  unique_fd second = accept_within(app.get(), 10s);
  ASSERT_TRUE(second) << "the request went nowhere";
  (void)read_until(second.get(), "\r\n\r\n");
  send_all(second.get(), ok_answer);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  const auto s = f->stats();
  ASSERT_EQ(s.generations.size(), 1U);
  EXPECT_EQ(s.generations.front().upstream_connections, 1U);
  EXPECT_EQ(s.retried, 0U);
}

// Waits (bounded) until `ready` holds for the front's stats.
template <typename Ready>
bool stats_reach(front& f, Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready(f.stats())) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// With upstream_max_connections 1, a second request waits for the one connection rather than
// open another (an app with one thread would not read it), and gets it when it comes back.
TEST(Front, BeyondTheConnectionLimitARequestWaitsForAPooledOne) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  front_options o;
  o.upstream_max_connections = 1;
  o.upstream_idle_timeout = 60s;
  auto f = start_front(tcp_listener(public_port), o);
  f->serve(1, {loopback(app_port)});
  unique_fd one = connect_to(public_port), two = connect_to(public_port);
  send_all(one.get(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  unique_fd upstream = accept_within(app.get(), 10s);
  ASSERT_TRUE(upstream);
  EXPECT_NE(read_until(upstream.get(), "\r\n\r\n").find("GET /1"), std::string::npos);
  send_all(two.get(), "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(stats_reach(*f, [](const front_stats& s) {
    return !s.generations.empty() && s.generations.front().queued == 1;
  }));
  EXPECT_FALSE(wait_readable(app.get(), 0ms)) << "a second connection beyond the limit";
  send_all(upstream.get(), ok_answer);
  EXPECT_EQ(read_until(one.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  EXPECT_NE(read_until(upstream.get(), "\r\n\r\n").find("GET /2"), std::string::npos);
  send_all(upstream.get(), ok_answer);
  EXPECT_EQ(read_until(two.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  EXPECT_FALSE(wait_readable(app.get(), 0ms));
  EXPECT_EQ(f->stats().generations.front().queued, 0U);
}

// The wait is bounded by the queue timeout: then 503, as with no generation at all.
TEST(Front, ARequestQueuedBeyondTheLimitGets503AfterTheQueueTimeout) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  front_options o;
  o.upstream_max_connections = 1;
  o.queue_timeout = 200ms;
  auto f = start_front(tcp_listener(public_port), o);
  f->serve(1, {loopback(app_port)});
  unique_fd one = connect_to(public_port), two = connect_to(public_port);
  send_all(one.get(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  unique_fd upstream = accept_within(app.get(), 10s);
  ASSERT_TRUE(upstream);
  (void)read_until(upstream.get(), "\r\n\r\n");
  send_all(two.get(), "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(read_until(two.get(), "\r\n\r\n").rfind("HTTP/1.1 503", 0), 0U);
  EXPECT_FALSE(wait_readable(app.get(), 0ms));
  send_all(upstream.get(), ok_answer);
  EXPECT_EQ(read_until(one.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
}

TEST(Front, ARetiredGenerationIsDrainedOnceNothingIsInFlight) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  auto f = start_front(tcp_listener(public_port), proxy_mode::http);
  f->serve(1, {loopback(app_port)});
  // A request in flight at generation 1: the app has read nothing yet.
  unique_fd client = connect_to(public_port);
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(client.get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  ASSERT_TRUE(wait_readable(app.get(), 10s));
  unique_fd upstream(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
  (void)read_until(upstream.get(), "\r\n\r\n");
  f->serve(2, {loopback(app_port)});
  f->retire(1);
  EXPECT_FALSE(wait_readable(f->event_fd(), 300ms)) << "drained with a request in flight";
  EXPECT_EQ(f->stats().generations.front().in_flight, 1U);
  const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  ASSERT_EQ(::send(upstream.get(), answer.data(), answer.size(), MSG_NOSIGNAL), 40);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  ASSERT_TRUE(wait_readable(f->event_fd(), 10s));
  EXPECT_EQ(f->take_drained(), std::vector<int>{1});
  // Our idle connection to generation 1 was closed, not kept for it.
  EXPECT_EQ(read_until(upstream.get(), "never"), "");
}

TEST(Front, ForgetCutsATcpRelay) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  auto f = start_front(tcp_listener(public_port), proxy_mode::tcp);
  f->serve(1, {loopback(app_port)});
  unique_fd client = connect_to(public_port);
  ASSERT_TRUE(wait_readable(app.get(), 10s));
  unique_fd upstream(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_EQ(::send(client.get(), "ping", 4, MSG_NOSIGNAL), 4);
  EXPECT_EQ(read_until(upstream.get(), "ping"), "ping");
  ASSERT_EQ(::send(upstream.get(), "pong", 4, MSG_NOSIGNAL), 4);
  EXPECT_EQ(read_until(client.get(), "pong"), "pong");
  f->forget(1);
  // Both sides see the end, though neither closed.
  EXPECT_EQ(read_until(client.get(), "never"), "");
  EXPECT_EQ(read_until(upstream.get(), "never"), "");
}

// --max-connections: at the bound the front stops accepting (the newcomer waits in the
// kernel's listen queue, never accepted) and takes it as soon as one closes. HTTP: an idle
// client connection holds no upstream one, and its close ends its relay at once.
TEST(Front, AtMaxConnectionsNewcomersWaitInTheListenQueueUntilOneCloses) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  std::vector<unique_fd> listeners;
  listeners.push_back(tcp_listener(public_port));
  front_options o;
  o.mode = proxy_mode::http;
  o.max_connections = 2;
  auto started = front::start(std::move(listeners), o);
  ASSERT_TRUE(started) << started.error().message();
  auto f = std::move(*started);
  f->serve(1, {loopback(app_port)});
  // The front's counts, until `done` says they are what the test waits for (10 s at most).
  const auto stats_until = [&f](const std::function<bool(const front_stats&)>& done) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    auto s = f->stats();
    while (!done(s) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
      s = f->stats();
    }
    return s;
  };
  std::vector<unique_fd> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(connect_to(public_port));
  auto s = stats_until([](const front_stats& x) { return x.limit_reached >= 1; });
  EXPECT_EQ(s.client_connections, 2U);
  EXPECT_EQ(s.accepted, 2U);
  EXPECT_EQ(s.max_connections, 2U);
  EXPECT_GE(s.limit_reached, 1U);
  // The third sends its request while it waits: nothing of it reaches the app.
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(clients.back().get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  EXPECT_FALSE(wait_readable(app.get(), 300ms)) << "a request relayed past the bound";
  EXPECT_EQ(f->stats().accepted, 2U);
  clients.front().reset();
  ASSERT_TRUE(wait_readable(app.get(), 10s)) << "the waiting client was not taken once one closed";
  unique_fd upstream(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
  (void)read_until(upstream.get(), "\r\n\r\n");
  const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  ASSERT_EQ(::send(upstream.get(), answer.data(), answer.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(answer.size()));
  EXPECT_EQ(read_until(clients.back().get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  EXPECT_EQ(f->stats().accepted, 3U);
}

TEST(Front, NoGenerationServingIs503AfterTheQueueTimeout) {
  int public_port = 0;
  auto f = start_front(tcp_listener(public_port), proxy_mode::http, 200ms);
  unique_fd client = connect_to(public_port);
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(client.get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  const std::string r = read_until(client.get(), "never");
  EXPECT_EQ(r.rfind("HTTP/1.1 503", 0), 0U) << r;
  EXPECT_NE(r.find("Retry-After:"), std::string::npos) << r;
}

// With no generation serving (the first one starting, a crashed one restarting), a request
// waits for one, as a connection waits in the backlog in direct mode, rather than failing.
TEST(Front, ARequestWaitsForAGenerationToServe) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  auto f = start_front(tcp_listener(public_port), proxy_mode::http, 30s);
  for (int generation = 1; generation <= 2; ++generation) {
    unique_fd client = connect_to(public_port);
    const std::string request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(::send(client.get(), request.data(), request.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(request.size()));
    // The front has the request and nowhere to send it yet.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (f->stats().requests < static_cast<std::uint64_t>(generation) &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    ASSERT_EQ(f->stats().requests, static_cast<std::uint64_t>(generation));
    f->serve(generation, {loopback(app_port)});
    ASSERT_TRUE(wait_readable(app.get(), 10s));
    unique_fd upstream(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
    (void)read_until(upstream.get(), "\r\n\r\n");
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    ASSERT_EQ(::send(upstream.get(), answer.data(), answer.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(answer.size()));
    const std::string r = read_until(client.get(), "ok");
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0U) << "generation " << generation << ": " << r;
    // The generation crashes: the next request waits for its successor.
    f->forget(generation);
  }
  EXPECT_EQ(f->stats().unavailable, 0U);
}

// ---- handoff reexec: parking, handing over, adopting (handover.hpp) -------------------------

// Waits for the front's event and returns the park outcome ("" when every connection parked).
std::optional<std::string> park_outcome(front& f, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (auto r = f.take_park_result()) return r;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !wait_readable(f.event_fd(), left)) return std::nullopt;
    (void)f.take_drained();
  }
}

// Answers every request "ok" on each upstream connection (a thread each) until the front
// closes it; accepts until `stop`.
void serve_app(int listener, const std::atomic<bool>& stop) {
  const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  std::vector<std::thread> connections;
  while (!stop) {
    if (!wait_readable(listener, 50ms)) continue;
    connections.emplace_back(
        [&answer](unique_fd c) {
          std::string in;
          for (;;) {
            const auto end = in.find("\r\n\r\n");
            if (end != std::string::npos) {
              in.erase(0, end + 4);
              (void)::send(c.get(), answer.data(), answer.size(), MSG_NOSIGNAL);
              continue;
            }
            if (!wait_readable(c.get(), 10s)) return;
            char buf[4096];
            const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
            if (n <= 0) return;
            in.append(buf, static_cast<std::size_t>(n));
          }
        },
        unique_fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC)));
  }
  for (auto& t : connections) t.join();
}

TEST(Front, AParkedConnectionIsHandedOverWithItsBytesAndAdoptedByAnotherFront) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  std::atomic<bool> stop{false};
  std::thread app_thread(serve_app, app.get(), std::cref(stop));
  unique_fd public_socket = tcp_listener(public_port);
  auto second_copy = duplicate_fd(public_socket.get());
  ASSERT_TRUE(second_copy);
  auto f = start_front(std::move(public_socket), proxy_mode::http);
  f->serve(1, {loopback(app_port)});
  unique_fd client = connect_to(public_port);
  // A request, and half of the next one behind it.
  const std::string first = "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string half = "GET /2 HTTP/1.1\r\nHost: x\r\n";
  ASSERT_EQ(::send(client.get(), (first + half).data(), first.size() + half.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(first.size() + half.size()));
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  f->park(10s);
  EXPECT_EQ(park_outcome(*f, 10s), std::optional<std::string>(""));
  // Accepting paused: a client that comes now waits in the backlog for the next front.
  unique_fd late = connect_to(public_port);
  const std::string late_request = "GET /late HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(late.get(), late_request.data(), late_request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(late_request.size()));
  auto handed = f->hand_over();
  ASSERT_TRUE(handed) << handed.error().message();
  ASSERT_EQ(handed->size(), 1U);
  EXPECT_EQ(handed->front().buffered, half);
  EXPECT_EQ(handed->front().listener, 0U);
  f.reset();  // as the exec does: the connection is ours alone now
  auto next = start_front(std::move(*second_copy), proxy_mode::http);
  next->serve(1, {loopback(app_port)});
  next->adopt(std::move(*handed));
  EXPECT_EQ(read_until(late.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  ASSERT_EQ(::send(client.get(), "\r\n", 2, MSG_NOSIGNAL), 2);
  EXPECT_EQ(read_until(client.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  const auto s = next->stats();
  EXPECT_EQ(s.requests, 2U);
  EXPECT_EQ(s.bad_gateway, 0U);
  next.reset();  // closes our upstream connections: the app's threads end
  stop = true;
  app_thread.join();
}

TEST(Front, AParkThatTimesOutLetsEveryConnectionCarryOn) {
  int app_port = 0, public_port = 0;
  unique_fd app = tcp_listener(app_port);
  auto f = start_front(tcp_listener(public_port), proxy_mode::http);
  f->serve(1, {loopback(app_port)});
  // One connection idle (parks at once), one with a request the app does not answer yet.
  unique_fd idle = connect_to(public_port);
  unique_fd busy = connect_to(public_port);
  const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(busy.get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  ASSERT_TRUE(wait_readable(app.get(), 10s));
  unique_fd upstream(::accept4(app.get(), nullptr, nullptr, SOCK_CLOEXEC));
  (void)read_until(upstream.get(), "\r\n\r\n");
  f->park(200ms);
  const auto outcome = park_outcome(*f, 10s);
  ASSERT_TRUE(outcome);
  EXPECT_NE(outcome->find("1 of 2 client connections still inside a request"), std::string::npos)
      << *outcome;
  // Both carry on: the busy one gets its answer, the idle one is served on the same upstream.
  const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  ASSERT_EQ(::send(upstream.get(), answer.data(), answer.size(), MSG_NOSIGNAL), 40);
  EXPECT_EQ(read_until(busy.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
  ASSERT_EQ(::send(idle.get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  (void)read_until(upstream.get(), "\r\n\r\n");
  ASSERT_EQ(::send(upstream.get(), answer.data(), answer.size(), MSG_NOSIGNAL), 40);
  EXPECT_EQ(read_until(idle.get(), "ok").rfind("HTTP/1.1 200", 0), 0U);
}

}  // namespace
}  // namespace handoff::proxy
