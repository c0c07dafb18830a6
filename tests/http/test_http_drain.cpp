// Draining handoff::http::server in this process: each step of the drain, observed by a real
// client over loopback.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <future>
#include <thread>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "raw_client.hpp"

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
namespace bhttp = boost::beast::http;

// /slow?ms=N waits N ms (cancellable); anything else answers at once.
asio::awaitable<response> handler_with_slow(request_context& ctx) {
  const std::string_view target = ctx.req().target();
  if (target.rfind("/slow?ms=", 0) == 0) {
    int ms = 0;
    std::from_chars(target.data() + 9, target.data() + target.size(), ms);
    asio::steady_timer timer(ctx.executor(), std::chrono::milliseconds(ms));
    co_await timer.async_wait(asio::use_awaitable);
  }
  response res{bhttp::status::ok, ctx.req().version()};
  res.body() = "ok";
  co_return res;
}

class HttpDrain : public testing::Test {
 protected:
  void start(server_options options = {}) {
    options.threads = 2;
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    kept_ = fd.duplicate().value();  // as another process of the hand-off would hold it
    server_ = std::make_unique<server>(options, handler_with_slow);
    server_->add_listener(std::move(fd));
    server_->start();
    ASSERT_EQ(server_->state(), server_state::ready);
  }
  std::future<drain_report> drain_async(std::chrono::milliseconds timeout) {
    return std::async(std::launch::async, [this, timeout] { return server_->drain(timeout); });
  }
  // Bounded wait for a condition the server reaches by itself (its state or counters).
  template <class F>
  static bool eventually(F&& condition) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!condition()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }
  std::uint16_t port_ = 0;
  unique_fd kept_;
  std::unique_ptr<server> server_;
};

TEST_F(HttpDrain, NextRequestOnAnIdleKeepAliveConnectionIsServedWithClose) {
  server_options o;
  o.drain_idle_grace = 10s;
  start(o);
  raw_connection c(port_);
  ASSERT_EQ(c.get("/").result, outcome::ok);
  auto done = drain_async(10s);
  ASSERT_TRUE(eventually([&] { return server_->state() == server_state::draining; }));
  auto r = c.get("/after-drain-began");
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.close) << "a draining server must announce Connection: close";
  EXPECT_TRUE(c.wait_closed(5s));
  auto report = done.get();
  EXPECT_TRUE(report.clean());
  // The first request may count too: its response can reach the client before the server's
  // coroutine resumes after the write, when the drain has begun.
  EXPECT_GE(report.requests_completed, 1u);
  EXPECT_EQ(server_->state(), server_state::stopped);
}

TEST_F(HttpDrain, RequestsInFlightCompleteWithClose) {
  start();
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET /slow?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return server_->requests_in_flight() == 1; }));
  auto done = drain_async(10s);
  auto r = c.read_reply(10s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.close);
  auto report = done.get();
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(report.connections_at_start, 1u);
}

TEST_F(HttpDrain, TheDeadlineAbortsWhatRemainsAndReportsIt) {
  start();
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return server_->requests_in_flight() == 1; }));
  const auto report = server_->drain(200ms);
  EXPECT_FALSE(report.clean());
  EXPECT_EQ(report.connections_aborted, 1u);
  EXPECT_EQ(report.requests_aborted, 1u);
  auto r = c.read_reply(5s);
  EXPECT_NE(r.result, outcome::ok) << "an aborted request has no complete response";
  EXPECT_EQ(server_->connections(), 0u);
}

TEST_F(HttpDrain, IdleConnectionsAreClosedAfterTheGrace) {
  server_options o;
  o.drain_idle_grace = 200ms;
  start(o);
  raw_connection c(port_);
  ASSERT_EQ(c.get("/").result, outcome::ok);
  auto done = drain_async(10s);
  EXPECT_TRUE(c.wait_closed(5s));
  auto report = done.get();
  EXPECT_TRUE(report.clean()) << "closing an idle connection is not an abort";
}

TEST_F(HttpDrain, DuringTheHealthDelayItStillAccepts) {
  server_options o;
  o.health_delay = 500ms;
  start(o);
  auto done = drain_async(10s);
  ASSERT_TRUE(eventually([&] { return server_->state() == server_state::draining; }));
  raw_connection c(port_);  // a client that the load balancer has not yet taken away
  auto r = c.get("/");
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_TRUE(r.close);
  EXPECT_TRUE(done.get().clean());
}

TEST_F(HttpDrain, TheListeningSocketStaysOpenForOtherHolders) {
  start();
  ASSERT_TRUE(server_->drain(5s).clean());
  // The server closed its copies and never called shutdown(2): the socket still listens, and
  // whoever else holds it (here: this test) accepts the next client.
  // The client sends its request: the server deferred accepting (defer_accept) on this
  // socket, so the kernel hands over a connection once its first bytes are in.
  raw_connection c(port_);
  ASSERT_TRUE(c.valid()) << "refused after the drain: " << c.error();
  ASSERT_TRUE(c.send_all("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  pollfd ready{kept_.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&ready, 1, 5000), 1) << "no connection to accept";
  unique_fd accepted(::accept4(kept_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(accepted.valid());
}

TEST_F(HttpDrain, StateGoesReadyDrainingStopped) {
  start();
  EXPECT_TRUE(server_->ready());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return server_->requests_in_flight() == 1; }));
  auto done = drain_async(10s);
  ASSERT_TRUE(eventually([&] { return server_->state() == server_state::draining; }));
  EXPECT_FALSE(server_->ready());
  EXPECT_EQ(c.read_reply(10s).result, outcome::ok);
  EXPECT_TRUE(done.get().clean());
  EXPECT_STREQ(to_string(server_->state()), "stopped");
}

}  // namespace
}  // namespace handoff::http
