// examples/example_server as a user runs it: a real process that takes its socket by
// LISTEN_FDS, reports READY=1, serves its routes, and drains on SIGTERM.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <optional>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "raw_client.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
using testing::HasSubstr;

class ExampleServer : public testing::Test {
 protected:
  void start(std::vector<std::string> extra_args = {}) {
    listener_ = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(listener_.get()).value().port;
    notify_.emplace(notify_receiver::open_unique().value());
    spawn_options o;
    o.argv = {HANDOFF_EXAMPLE_SERVER, "--version", "test", "--threads", "2"};
    o.argv.insert(o.argv.end(), extra_args.begin(), extra_args.end());
    o.fds = {{listener_.get(), "http"}};
    o.notify_socket = notify_->address();
    pid_ = spawn(o).value();
    for (;;) {
      auto m = notify_->receive(30s);
      ASSERT_TRUE(m) << m.error().message();
      if (m->pid == pid_ && m->has("READY")) {
        EXPECT_EQ(m->get("STATUS").value_or(""),
                  "serving on tcp://127.0.0.1:" + std::to_string(port_));
        break;
      }
    }
  }
  exit_status stop() {
    EXPECT_EQ(::kill(pid_, SIGTERM), 0);
    auto status = wait_exit(pid_, 30s);
    EXPECT_TRUE(status) << status.error().message();
    pid_ = -1;
    return status ? *status : exit_status{};
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)wait_exit(pid_, 10s);
    }
  }
  unique_fd listener_;
  std::uint16_t port_ = 0;
  std::optional<notify_receiver> notify_;
  pid_t pid_ = -1;
};

TEST_F(ExampleServer, Routes) {
  start();
  raw_connection c(port_);
  auto root = c.get("/");
  ASSERT_EQ(root.result, outcome::ok);
  EXPECT_EQ(root.body, "hello from pid " + std::to_string(pid_) + " version test\n");
  EXPECT_EQ(root.header("x-served-by"), std::to_string(pid_));
  auto health = c.get("/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ready\n");
  auto slow = c.get("/slow?ms=50");
  EXPECT_EQ(slow.status, 200);
  EXPECT_EQ(slow.body, "slept 50 ms\n");
  EXPECT_EQ(c.get("/slow?ms=abc").status, 400);
  EXPECT_EQ(c.get("/nowhere").status, 404);
  auto stream = c.get("/stream?seconds=1");
  ASSERT_EQ(stream.result, outcome::ok);
  EXPECT_EQ(stream.header("transfer-encoding"), "chunked");
  EXPECT_THAT(stream.body, HasSubstr("tick 0 from pid"));
  EXPECT_THAT(stream.body, HasSubstr("tick 9 from pid"));
  ASSERT_TRUE(
      c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/x-test\r\n"
                 "Content-Length: 11\r\n\r\nhello there"));
  auto echo = c.read_reply(10s);
  EXPECT_EQ(echo.body, "hello there");
  EXPECT_EQ(echo.header("content-type"), "text/x-test");
  EXPECT_TRUE(stop().success());
}

TEST_F(ExampleServer, ALongStreamFinishesDuringTheDrain) {
  start();
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET /stream?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto first = c.read_reply(10s);  // returns when the whole chunked body has arrived
  ASSERT_EQ(first.result, outcome::ok);
  EXPECT_THAT(first.body, HasSubstr("tick 9"));
  ASSERT_TRUE(c.send_all("GET /stream?seconds=2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  // SIGTERM while the second stream runs: it must complete, then the process exits cleanly.
  ASSERT_EQ(::kill(pid_, SIGTERM), 0);
  auto second = c.read_reply(20s);
  ASSERT_EQ(second.result, outcome::ok) << to_string(second.result);
  EXPECT_THAT(second.body, HasSubstr("tick 19"));
  auto status = wait_exit(pid_, 30s);
  pid_ = -1;
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success()) << status->describe();
}

TEST_F(ExampleServer, HealthAnswers503DuringTheHealthDelayWhileStillServing) {
  start({"--health-delay", "2s"});
  raw_connection c(port_);
  ASSERT_EQ(c.get("/health").status, 200);
  ASSERT_EQ(::kill(pid_, SIGTERM), 0);
  // STOPPING=1 tells us the drain has begun; the health check must fail from then on.
  for (;;) {
    auto m = notify_->receive(30s);
    ASSERT_TRUE(m) << m.error().message();
    if (m->pid == pid_ && m->has("STOPPING")) break;
  }
  raw_connection fresh(port_);
  auto health = fresh.get("/health");
  ASSERT_EQ(health.result, outcome::ok) << to_string(health.result);
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(health.body, "draining\n");
  auto status = wait_exit(pid_, 30s);
  pid_ = -1;
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success()) << status->describe();
}

TEST_F(ExampleServer, DrainDeadlineAbortsAndExitsNonZero) {
  start({"--drain-timeout", "200ms"});
  raw_connection c(port_);
  // Pipelined behind /health: once /health is answered, /slow is already in the server's
  // buffer and the connection is busy with it, so SIGTERM finds it in flight.
  ASSERT_TRUE(
      c.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(c.read_reply(10s).status, 200);
  const exit_status status = stop();
  EXPECT_TRUE(status.exited);
  EXPECT_EQ(status.code, 3) << "exit 3 tells the caller that requests were cut";
  EXPECT_NE(c.read_reply(5s).result, outcome::ok);
}

}  // namespace
}  // namespace handoff
