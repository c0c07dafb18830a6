// examples/example_server as a user runs it: a real process that takes its socket by
// LISTEN_FDS, reports READY=1, serves its routes, and drains on SIGTERM.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <utility>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "prometheus.hpp"
#include "raw_client.hpp"
#include "test_support.hpp"

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

TEST_F(ExampleServer, RealisticAnswersFiveHeaderFieldsAndOneKiB) {
  // bench/http_peers serves the same bytes from nginx and Go: this is the answer they copy.
  start();
  raw_connection c(port_);
  std::string expected;
  for (int row = 0; row < 32; ++row) {
    char line[40];
    std::snprintf(line, sizeof line, "row %02d abcdefghijklmnopqrstuvwx\n", row);
    expected += line;
  }
  ASSERT_EQ(expected.size(), 1024U);
  for (int i = 0; i < 2; ++i) {  // and again on the same connection
    auto r = c.get("/realistic");
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, expected);
    EXPECT_EQ(r.header("content-type"), "text/plain; charset=utf-8");
    EXPECT_EQ(r.header("cache-control"), "private, max-age=60");
    EXPECT_EQ(r.header("x-content-type-options"), "nosniff");
    EXPECT_EQ(r.header("x-frame-options"), "DENY");
    EXPECT_EQ(r.header("vary"), "Accept-Encoding");
    EXPECT_FALSE(r.close);
  }
  EXPECT_TRUE(stop().success());
}

TEST_F(ExampleServer, MetricsCountTheRequestsMadeAndPassPromtool) {
  start();
  raw_connection c(port_);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(c.get("/").status, 200);
  auto first = c.get("/metrics");
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(test::metric(first.body, "handoff_http_requests_total"), 5) << first.body;
  EXPECT_EQ(test::metric(first.body, "handoff_http_connections_accepted_total"), 1);
  EXPECT_EQ(test::metric(first.body, "handoff_http_connections_open"), 1);
  raw_connection d(port_);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(d.get("/").status, 200);
  {
    raw_connection garbage(port_);
    ASSERT_TRUE(garbage.send_all("not http\r\n\r\n"));
    EXPECT_EQ(garbage.read_reply(5s).status, 400);
  }
  auto second = c.get("/metrics");
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(test::metric(second.body, "handoff_http_requests_total"), 5 + 1 + 3) << second.body;
  EXPECT_EQ(test::metric(second.body, "handoff_http_connections_accepted_total"), 3);
  EXPECT_EQ(test::metric(second.body, "handoff_http_errors_total{class=\"400\"}"), 1);
  EXPECT_EQ(test::metric(second.body, "handoff_http_draining"), 0);
  if (test::have_promtool()) {
    const auto verdict = test::promtool_check(second.body);
    EXPECT_TRUE(verdict.accepted) << verdict.output << "\n" << second.body;
  }
  EXPECT_TRUE(stop().success());
  if (!test::have_promtool()) GTEST_SKIP() << "no promtool (apt install prometheus)";
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
  // example_server says STOPPING=1 just before server::drain() turns health to 503, so the
  // first probe may still see 200; within the 2 s delay it must see 503 on a new connection,
  // which is still accepted.
  const auto until = std::chrono::steady_clock::now() + 2s;
  test::reply health;
  do {
    raw_connection fresh(port_);
    health = fresh.get("/health");
    ASSERT_EQ(health.result, outcome::ok) << to_string(health.result);
  } while (health.status == 200 && std::chrono::steady_clock::now() < until);
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

// Runs example_server with the given sockets and arguments until READY=1; returns its pid
// and the READY's STATUS=, and collects its stderr up to that point in `log`.
struct started {
  pid_t pid = -1;
  std::string status, log;
  unique_fd log_fd;  // kept open: the server writes on to its stderr until it exits
  started() = default;
  started(started&& o) noexcept
      : pid(std::exchange(o.pid, -1)),
        status(std::move(o.status)),
        log(std::move(o.log)),
        log_fd(std::move(o.log_fd)) {}
  started& operator=(started&&) = delete;
  ~started() {  // a test that failed half-way leaves no server behind
    if (pid > 0 && ::kill(pid, SIGKILL) == 0) (void)wait_exit(pid, 10s);
  }
};
started start_with(notify_receiver& notify, std::vector<passed_fd> fds,
                   std::vector<std::string> args) {
  spawn_options o;
  o.argv = {HANDOFF_EXAMPLE_SERVER, "--threads", "1"};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.fds = std::move(fds);
  o.notify_socket = notify.address();
  int p[2];
  EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd read_end(p[0]), write_end(p[1]);
  o.stderr_fd = write_end.get();
  started s;
  s.pid = spawn(o).value();
  write_end.reset();
  for (;;) {
    auto m = notify.receive(30s);
    if (!m) {
      ADD_FAILURE() << m.error().message();
      return s;
    }
    if (m->pid == s.pid && m->has("READY")) {
      s.status = std::string(m->get("STATUS").value_or(""));
      break;
    }
  }
  // The "ready" line comes after READY=1 is sent; read up to it.
  char buf[4096];
  while (s.log.find(" ready\n") == std::string::npos) {
    pollfd pf{read_end.get(), POLLIN, 0};
    if (::poll(&pf, 1, 10'000) <= 0) break;
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n <= 0) break;
    s.log.append(buf, static_cast<std::size_t>(n));
  }
  s.log_fd = std::move(read_end);
  return s;
}

void stop_cleanly(started& s) {
  const pid_t pid = std::exchange(s.pid, -1);
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  auto status = wait_exit(pid, 30s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_TRUE(status->success()) << status->describe();
}

TEST(ExampleServerSockets, WithoutListenServesEveryInheritedSocketWhateverItsName) {
  // As `handoff run -l 'v6=[::1]:0' -l 'u=unix:PATH' -- example_server`: neither socket is
  // called "http", and neither is the default 127.0.0.1:8080. Both must be served, and the log
  // must say they were inherited; nothing may be opened beside them.
  test::temp_dir dir;
  auto v6 = open_listener(parse_address("[::1]:0").value());
  if (!v6) GTEST_SKIP() << "no IPv6 loopback: " << v6.error().message();
  const std::string path = dir / "app.sock";
  auto unix_socket = open_listener(parse_address("unix:" + path).value()).value();
  const std::string v6_at = local_address(v6->get()).value().to_string();
  auto notify = notify_receiver::open_unique().value();
  started s = start_with(notify, {{v6->get(), "v6"}, {unix_socket.get(), "u"}}, {});
  ASSERT_GT(s.pid, 0);
  // Only the server holds the sockets now: an unserved one would hang its client, not queue.
  v6->reset();
  unix_socket.reset();
  EXPECT_EQ(s.status, "serving on " + v6_at + " unix:" + path);
  EXPECT_THAT(s.log, HasSubstr("serving v6 on " + v6_at + " (inherited)"));
  EXPECT_THAT(s.log, HasSubstr("serving u on unix:" + path + " (inherited)"));
  EXPECT_THAT(s.log, testing::Not(HasSubstr("opened")));
  EXPECT_THAT(s.log, testing::Not(HasSubstr("8080")));
  for (const std::string& at : {v6_at, "unix:" + path}) {
    SCOPED_TRACE(at);
    auto where = parse_address(at).value();
    auto probe = open_listener(where);  // a unix path in use / a port in use: refused
    EXPECT_FALSE(probe) << "the socket at " << at << " is no longer held";
  }
  unique_fd c6(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  {
    sockaddr_in6 to{};
    to.sin6_family = AF_INET6;
    to.sin6_port = htons(parse_address(v6_at).value().port);
    to.sin6_addr = in6addr_loopback;
    ASSERT_EQ(::connect(c6.get(), reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  }
  raw_connection over_v6(std::move(c6));
  auto r6 = over_v6.get("/", 10s);
  ASSERT_EQ(r6.result, outcome::ok) << to_string(r6.result);
  EXPECT_EQ(r6.header("x-served-by"), std::to_string(s.pid));
  unique_fd cu(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  {
    sockaddr_un to{};
    to.sun_family = AF_UNIX;
    path.copy(to.sun_path, sizeof to.sun_path - 1);
    ASSERT_EQ(::connect(cu.get(), reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  }
  raw_connection over_unix(std::move(cu));
  auto ru = over_unix.get("/", 10s);
  ASSERT_EQ(ru.result, outcome::ok) << to_string(ru.result);
  EXPECT_EQ(ru.header("x-served-by"), std::to_string(s.pid));
  stop_cleanly(s);
}

TEST(ExampleServerSockets, ListenSaysWhichSocketsWereInheritedOpenedOrClosed) {
  auto kept = open_listener(parse_address("127.0.0.1:0").value()).value();
  auto extra = open_listener(parse_address("127.0.0.1:0").value()).value();
  const std::string kept_at = local_address(kept.get()).value().to_string();
  const std::string extra_at = local_address(extra.get()).value().to_string();
  auto notify = notify_receiver::open_unique().value();
  started s = start_with(notify, {{kept.get(), "web"}, {extra.get(), "spare"}},
                         {"--listen", "web=" + kept_at, "--listen", "new=127.0.0.1:0"});
  ASSERT_GT(s.pid, 0);
  EXPECT_THAT(s.log, HasSubstr("serving web on " + kept_at + " (inherited)"));
  EXPECT_THAT(s.log,
              testing::ContainsRegex("serving new on tcp://127\\.0\\.0\\.1:[0-9]+ \\(opened\\)"));
  EXPECT_THAT(s.log, HasSubstr("closing inherited spare (tcp " +
                               extra_at.substr(std::string("tcp://").size()) +
                               " listening): no --listen asks for it"));
  stop_cleanly(s);
}

// Runs `sh -c SCRIPT` (stdout and stderr together), bounded.
test::child_output shell(const std::string& script) {
  spawn_options o;
  o.argv = {"/bin/sh", "-c", "exec 2>&1; " + script};
  auto r = test::run_and_capture(o, 30s);
  EXPECT_TRUE(r) << r.error().message();
  return r ? *r : test::child_output{};
}

// A self-signed certificate for 127.0.0.1 in `dir`: cert.pem and key.pem.
void make_certificate(const test::temp_dir& dir) {
  auto r = shell(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 -keyout '" +
      dir / "key.pem" + "' -out '" + dir / "cert.pem" + "'");
  ASSERT_TRUE(r.status.success()) << r.out;
}

TEST(ExampleServerTls, ServesTlsOnTheSocketNamedHttpsAndPlaintextOnTheOthers) {
  test::temp_dir dir;
  make_certificate(dir);
  auto https = open_listener(parse_address("127.0.0.1:0").value()).value();
  auto plain = open_listener(parse_address("127.0.0.1:0").value()).value();
  const std::string https_at = local_address(https.get()).value().to_string();
  const auto https_port = local_address(https.get()).value().port;
  const auto plain_port = local_address(plain.get()).value().port;
  auto notify = notify_receiver::open_unique().value();
  started s = start_with(notify, {{https.get(), "https"}, {plain.get(), "http"}},
                         {"--tls-cert", dir / "cert.pem", "--tls-key", dir / "key.pem"});
  ASSERT_GT(s.pid, 0);
  EXPECT_THAT(s.log, HasSubstr("serving https on " + https_at + " (inherited, TLS)"));
  auto r = shell("curl -sS --cacert '" + dir / "cert.pem" +
                 "' https://127.0.0.1:" + std::to_string(https_port) + "/");
  EXPECT_TRUE(r.status.success()) << r.out;
  EXPECT_THAT(r.out, HasSubstr("hello from pid " + std::to_string(s.pid)));
  raw_connection c(plain_port);
  auto reply = c.get("/", 10s);
  ASSERT_EQ(reply.result, outcome::ok) << to_string(reply.result);
  EXPECT_THAT(reply.body, HasSubstr("hello from pid"));
  stop_cleanly(s);
}

TEST(ExampleServerTls, AKeyThatDoesNotMatchFailsTheStartNamingTheFile) {
  test::temp_dir dir;
  make_certificate(dir);
  const std::string other = dir / "other-key.pem";
  ASSERT_TRUE(
      shell("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '" + other + "'")
          .status.success());
  auto r = shell(std::string("'") + HANDOFF_EXAMPLE_SERVER +
                 "' --listen https=127.0.0.1:0 --tls-cert '" + dir / "cert.pem" + "' --tls-key '" +
                 other + "'");
  EXPECT_EQ(r.status.code_or_128_plus_signal(), 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("tls key " + other));
  EXPECT_THAT(r.out, HasSubstr("mismatch"));
  EXPECT_THAT(r.out, testing::Not(HasSubstr("ready")));
  // A socket named https without the files is refused too, rather than served in plaintext.
  auto bare = shell(std::string("'") + HANDOFF_EXAMPLE_SERVER + "' --listen https=127.0.0.1:0");
  EXPECT_EQ(bare.status.code_or_128_plus_signal(), 1) << bare.out;
  EXPECT_THAT(bare.out, HasSubstr("socket https needs --tls-cert and --tls-key"));
}

}  // namespace
}  // namespace handoff
