// server::stats() and write_prometheus(): each counter moved by the event it counts, with a real
// client over loopback, and the exposition accepted by `promtool check metrics`.
#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <stdexcept>
#include <thread>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "prometheus.hpp"
#include "raw_client.hpp"

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
namespace bhttp = boost::beast::http;

asio::awaitable<response> stats_handler(request_context& ctx) {
  const std::string_view target = ctx.req().target();
  if (target == "/throw") throw std::runtime_error("handler bug");
  if (target == "/slow") {
    asio::steady_timer timer(ctx.executor(), 5s);
    co_await timer.async_wait(asio::use_awaitable);
  }
  response res{bhttp::status::ok, ctx.req().version()};
  res.body() = "ok";
  co_return res;
}

// Waits (bounded) for a condition that another thread makes true.
template <class F>
bool eventually(F f) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

class HttpStats : public testing::Test {
 protected:
  void start(server_options options) {
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    server_ = std::make_unique<server>(options, stats_handler);
    server_->add_listener(std::move(fd));
    server_->start();
  }
  static server_options short_limits() {
    server_options o;
    o.threads = 2;
    o.header_timeout = 300ms;
    o.body_timeout = 300ms;
    o.idle_timeout = 300ms;
    o.max_header_bytes = 2048;
    o.max_body_bytes = 1024;
    return o;
  }
  // Sends `bytes` on a new connection and returns the status of the answer; the server closes.
  int refused_with(const std::string& bytes) {
    raw_connection c(port_);
    EXPECT_TRUE(c.send_all(bytes));
    auto r = c.read_reply(5s);
    EXPECT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_TRUE(c.wait_closed(5s));
    return r.status;
  }
  std::uint16_t port_ = 0;
  std::unique_ptr<server> server_;
};

TEST_F(HttpStats, CountsRequestsConnectionsAndErrorsByClass) {
  start(short_limits());
  const server_stats zero = server_->stats();
  EXPECT_EQ(zero.connections_accepted, 0U);
  EXPECT_EQ(zero.requests, 0U);

  raw_connection c(port_);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(c.get("/").status, 200);
  server_stats s = server_->stats();
  EXPECT_EQ(s.connections_accepted, 1U);
  EXPECT_EQ(s.connections_open, 1U);
  EXPECT_EQ(s.requests, 3U);
  // A request leaves the in-flight count once its response is written, which may be after the
  // client has read it.
  EXPECT_TRUE(eventually([&] { return server_->stats().requests_in_flight == 0; }));

  EXPECT_EQ(refused_with("this is not http\r\n\r\n"), 400);
  EXPECT_EQ(refused_with("GET / HTTP/1.1\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n"), 431);
  EXPECT_EQ(
      refused_with("POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'b')),
      413);
  EXPECT_EQ(refused_with("GET /throw HTTP/1.1\r\nHost: x\r\n\r\n"), 500);
  {
    raw_connection silent(port_);  // sends nothing: closed at the header timeout
    ASSERT_TRUE(silent.valid());
    EXPECT_TRUE(silent.wait_closed(5s));
  }
  {
    raw_connection idle(port_);  // one request, then nothing: closed at the idle timeout
    ASSERT_EQ(idle.get("/").status, 200);
    EXPECT_TRUE(idle.wait_closed(5s));
  }
  EXPECT_TRUE(c.wait_closed(5s));  // idle too, since its third request

  s = server_->stats();
  EXPECT_EQ(s.connections_accepted, 7U);
  EXPECT_EQ(s.requests, 5U) << "3 + the one that threw (answered 500) + 1";
  EXPECT_EQ(s.bad_requests, 1U);
  EXPECT_EQ(s.header_fields_too_large, 1U);
  EXPECT_EQ(s.payload_too_large, 1U);
  EXPECT_EQ(s.handler_exceptions, 1U);
  EXPECT_EQ(s.timeouts, 1U);
  EXPECT_EQ(s.idle_closed, 2U);
  EXPECT_EQ(s.tls_handshake_failures, 0U);
  EXPECT_FALSE(s.draining);
  EXPECT_TRUE(eventually([&] { return server_->stats().connections_open == 0; }));

  std::string text;
  write_prometheus(text, server_->stats());
  EXPECT_EQ(test::metric(text, "handoff_http_requests_total"), 5) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_connections_accepted_total"), 7) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_errors_total{class=\"400\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_errors_total{class=\"413\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_errors_total{class=\"431\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_errors_total{class=\"500\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_errors_total{class=\"timeout\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_idle_closed_total"), 2) << text;
  EXPECT_EQ(test::metric(text, "handoff_http_draining"), 0) << text;
  if (!test::have_promtool()) GTEST_SKIP() << "no promtool (apt install prometheus)";
  const auto verdict = test::promtool_check(text);
  EXPECT_TRUE(verdict.accepted) << verdict.output << "\n" << text;
}

TEST_F(HttpStats, CountsHowTheDrainEndedEachConnection) {
  server_options o;
  o.threads = 2;
  o.drain_idle_grace = 2s;
  start(o);
  raw_connection idle(port_), busy(port_);
  ASSERT_EQ(idle.get("/").status, 200);
  ASSERT_EQ(busy.get("/").status, 200);
  drain_report report;
  std::thread drainer([&] { report = server_->drain(20s); });
  ASSERT_TRUE(eventually([&] { return server_->state() != server_state::ready; }));
  auto last = busy.get("/");  // within the grace: answered, with Connection: close
  EXPECT_EQ(last.status, 200);
  EXPECT_TRUE(last.close);
  EXPECT_TRUE(idle.wait_closed(10s));  // at the grace
  drainer.join();
  EXPECT_TRUE(report.clean());
  const server_stats s = server_->stats();
  EXPECT_TRUE(s.draining);
  EXPECT_EQ(s.requests, 3U);
  EXPECT_EQ(s.drain_closed_after_response, 1U);
  EXPECT_EQ(s.drain_closed_idle, 1U);
  EXPECT_EQ(s.drain_aborted_connections, 0U);
  EXPECT_EQ(s.idle_closed, 0U);
}

TEST_F(HttpStats, CountsWhatTheDeadlineAborted) {
  server_options o;
  o.threads = 1;
  start(o);
  raw_connection slow(port_);
  ASSERT_TRUE(slow.send_all("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return server_->requests_in_flight() == 1; }));
  const auto report = server_->drain(50ms);
  EXPECT_EQ(report.connections_aborted, 1U);
  const server_stats s = server_->stats();
  EXPECT_EQ(s.drain_aborted_connections, 1U);
  EXPECT_EQ(s.drain_aborted_requests, 1U);
  EXPECT_EQ(s.handler_exceptions, 0U) << "a handler cut at the deadline is not a handler bug";
  EXPECT_EQ(s.requests, 0U);
  std::string text;
  write_prometheus(text, s, "app_http");
  EXPECT_EQ(test::metric(text, "app_http_drain_connections_total{outcome=\"aborted\"}"), 1) << text;
  EXPECT_EQ(test::metric(text, "app_http_drain_requests_aborted_total"), 1) << text;
}

TEST(HttpStatsPrometheus, RefusesAPrefixThatIsNotAMetricName) {
  std::string text;
  EXPECT_THROW(write_prometheus(text, server_stats{}, "9lives"), std::invalid_argument);
  EXPECT_THROW(write_prometheus(text, server_stats{}, "my-app"), std::invalid_argument);
  EXPECT_THROW(write_prometheus(text, server_stats{}, ""), std::invalid_argument);
  EXPECT_TRUE(text.empty());
}

}  // namespace
}  // namespace handoff::http
