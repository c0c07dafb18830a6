// TLS listeners of handoff::http::server, with curl and `openssl s_client` as the clients: a
// keep-alive connection with ALPN http/1.1, bad clients (garbage, a stalled handshake) closed
// without disturbing a good one, certificate files that cannot be used, and a drain that ends a
// TLS connection with Connection: close and close_notify. The certificates are made by the
// `openssl` command into a temporary directory for each test.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <fstream>
#include <future>
#include <thread>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "raw_client.hpp"
#include "test_support.hpp"

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::raw_connection;
using test::temp_dir;
using testing::HasSubstr;
using testing::Not;
namespace bhttp = boost::beast::http;

// /slow?ms=N waits N ms (cancellable); anything else answers "ok <target>".
asio::awaitable<response> handler(request_context& ctx) {
  const std::string_view target = ctx.req().target();
  if (target.rfind("/slow?ms=", 0) == 0) {
    int ms = 0;
    std::from_chars(target.data() + 9, target.data() + target.size(), ms);
    asio::steady_timer timer(ctx.executor(), std::chrono::milliseconds(ms));
    co_await timer.async_wait(asio::use_awaitable);
  }
  response res{bhttp::status::ok, ctx.req().version()};
  res.body() = "ok " + std::string(target) + "\n";
  co_return res;
}

// Runs a command (stdout and stderr together) to its end, bounded.
test::child_output run(std::vector<std::string> argv) {
  spawn_options o;
  o.argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1"};
  o.argv.insert(o.argv.end(), argv.begin(), argv.end());
  auto r = test::run_and_capture(o, 20s);
  EXPECT_TRUE(r) << r.error().message();
  return r ? *r : test::child_output{};
}

// An `openssl s_client` that the test talks to through its stdin and stdout, one request at a
// time: a TLS client that stays connected while other things happen.
class s_client {
 public:
  s_client(std::uint16_t port, const std::string& ca) {
    int in[2], out[2];
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    unique_fd in_read(in[0]), out_write(out[1]);
    stdin_.reset(in[1]);
    stdout_.reset(out[0]);
    spawn_options o;
    // -ign_eof: the end of stdin does not end the connection, only the server does; the
    // verification must succeed against the test's own CA, and ALPN offers http/1.1.
    o.argv = {"openssl",
              "s_client",
              "-connect",
              "127.0.0.1:" + std::to_string(port),
              "-CAfile",
              ca,
              "-verify_return_error",
              "-alpn",
              "http/1.1",
              "-ign_eof"};
    o.stdin_fd = in_read.get();
    o.stdout_fd = out_write.get();
    o.stderr_fd = out_write.get();
    pid_ = spawn(o).value();
  }
  ~s_client() {
    if (pid_ > 0 && ::kill(pid_, SIGKILL) == 0) (void)wait_exit(pid_, 10s);
  }
  s_client(const s_client&) = delete;
  s_client& operator=(const s_client&) = delete;

  void send(std::string_view text) {
    while (!text.empty()) {
      const ssize_t n = ::write(stdin_.get(), text.data(), text.size());
      ASSERT_GT(n, 0);
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Reads until `marker` has appeared `count` times in all output so far (true), or EOF or the
  // timeout (false).
  bool read_until(std::string_view marker, int count = 1, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int seen = 0;
      for (auto at = output.find(marker); at != std::string::npos;
           at = output.find(marker, at + marker.size()))
        ++seen;
      if (seen >= count) return true;
      if (!read_some(deadline)) return false;
    }
  }
  // Reads to EOF and reaps the client: its exit status.
  exit_status finish(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (read_some(deadline)) {
    }
    auto status = wait_exit(pid_, 10s);
    EXPECT_TRUE(status) << status.error().message();
    pid_ = -1;
    return status ? *status : exit_status{};
  }
  std::string output;

 private:
  bool read_some(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{stdout_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    const ssize_t n = ::read(stdout_.get(), buf, sizeof buf);
    if (n <= 0) return false;
    output.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  unique_fd stdin_, stdout_;
  pid_t pid_ = -1;
};

// Waits for the peer to close `fd` (EOF or reset): true, or false at the timeout.
bool closed_by_peer(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return true;  // an alert may come first; then EOF
  }
}

const std::string request_a = "GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n";
const std::string request_b = "GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n";

class HttpTls : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    cert_ = dir_ / "cert.pem";
    key_ = dir_ / "key.pem";
    auto made =
        run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
             "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key_, "-out", cert_});
    ASSERT_TRUE(made.status.success()) << made.out;
  }
  void start(server_options options = {}) {
    options.threads = 2;
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    server_ = std::make_unique<server>(options, handler);
    server_->add_listener(std::move(fd), tls_config{cert_, key_});
    server_->start();
    ASSERT_EQ(server_->state(), server_state::ready);
  }
  std::string url(std::string_view path) const {
    return "https://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  template <class F>
  static bool eventually(F&& condition) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!condition()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }
  // What add_listener says of these files (empty: it accepted them).
  std::string add_listener_error(const std::string& cert, const std::string& key) {
    server s({}, handler);
    try {
      s.add_listener(open_listener(parse_address("127.0.0.1:0").value()).value(),
                     tls_config{cert, key});
    } catch (const std::exception& e) {
      return e.what();
    }
    return {};
  }

  temp_dir dir_;
  std::string cert_, key_;
  std::uint16_t port_ = 0;
  std::unique_ptr<server> server_;
};

TEST_F(HttpTls, CurlMakesKeepAliveRequestsOverOneConnectionWithAlpnHttp11) {
  start();
  // Three transfers in one curl: the later ones reuse the first one's connection
  // (num_connects 0), and the server verifies against the test's CA and names localhost.
  auto r = run({"curl", "-sS", "-v", "--stderr", "-", "--cacert", cert_, "-w",
                "connects=%{num_connects} version=%{http_version}\n", url("/one"), url("/two"),
                "https://localhost:" + std::to_string(port_) + "/three"});
  ASSERT_TRUE(r.status.success()) << r.status.describe() << "\n" << r.out;
  // (curl's log and the bodies interleave: each is looked for alone.)
  EXPECT_THAT(r.out, HasSubstr("ok /one\n"));
  EXPECT_THAT(r.out, HasSubstr("ok /two\n"));
  EXPECT_THAT(r.out, HasSubstr("ok /three\n"));
  EXPECT_THAT(r.out, HasSubstr("connects=1 version=1.1\n"));
  EXPECT_THAT(r.out, HasSubstr("connects=0 version=1.1\n"));
  EXPECT_THAT(r.out, HasSubstr("Re-using existing connection #0"));
  EXPECT_THAT(r.out, HasSubstr("ALPN: server accepted http/1.1"));
  // TLS 1.3 when both ends can: the server does not hold it back.
  EXPECT_THAT(r.out, HasSubstr("TLSv1.3"));
}

TEST_F(HttpTls, TlsBelow12IsRefusedAnd12IsServed) {
  start();
  auto old = run({"curl", "-sS", "--cacert", cert_, "--tlsv1.1", "--tls-max", "1.1", url("/")});
  EXPECT_FALSE(old.status.success()) << old.out;
  auto v12 = run({"curl", "-sS", "--cacert", cert_, "--tlsv1.2", "--tls-max", "1.2", url("/12")});
  EXPECT_TRUE(v12.status.success()) << v12.out;
  EXPECT_EQ(v12.out, "ok /12\n");
}

TEST_F(HttpTls, SClientSeesAlpnAndKeepAliveAndCloseNotify) {
  start();
  s_client c(port_, cert_);
  c.send(request_a);
  ASSERT_TRUE(c.read_until("ok /a\n")) << c.output;
  c.send("GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(c.read_until("ok /b\n")) << c.output;
  const auto status = c.finish();  // the server closes: Connection: close
  EXPECT_TRUE(status.success()) << status.describe() << "\n" << c.output;
  EXPECT_THAT(c.output, HasSubstr("ALPN protocol: http/1.1"));
  EXPECT_THAT(c.output, HasSubstr("Verify return code: 0 (ok)"));
  // close_notify arrived: s_client says "closed"; a bare FIN would be "unexpected eof".
  EXPECT_THAT(c.output, HasSubstr("closed"));
  EXPECT_THAT(c.output, Not(HasSubstr("unexpected eof")));
}

TEST_F(HttpTls, GarbageInsteadOfAClientHelloIsClosedAndAGoodConnectionGoesOn) {
  start();
  s_client good(port_, cert_);
  good.send(request_a);
  ASSERT_TRUE(good.read_until("ok /a\n")) << good.output;

  raw_connection bad(port_);
  ASSERT_TRUE(bad.valid());
  ASSERT_TRUE(bad.send_all("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));  // plaintext
  EXPECT_TRUE(closed_by_peer(bad.fd(), 10s));

  good.send(request_b);
  EXPECT_TRUE(good.read_until("ok /b\n")) << good.output;
  EXPECT_TRUE(eventually([&] { return server_->connections() == 1; }));
}

TEST_F(HttpTls, AClientThatStopsMidHandshakeIsClosedAtTheHandshakeTimeout) {
  server_options o;
  o.tls_handshake_timeout = 300ms;  // the header timeout (10 s) must not be what closes it
  start(o);
  s_client good(port_, cert_);
  good.send(request_a);
  ASSERT_TRUE(good.read_until("ok /a\n")) << good.output;

  raw_connection stalled(port_);
  ASSERT_TRUE(stalled.valid());
  // The first bytes of a TLS record holding a ClientHello, and then nothing.
  ASSERT_TRUE(stalled.send_all(std::string("\x16\x03\x01\x00\xc8\x01\x00\x00", 8)));
  EXPECT_TRUE(closed_by_peer(stalled.fd(), 5s));

  good.send(request_b);
  EXPECT_TRUE(good.read_until("ok /b\n")) << good.output;
  EXPECT_TRUE(eventually([&] { return server_->connections() == 1; }));
}

TEST_F(HttpTls, UnusableFilesFailAddListenerNamingTheFile) {
  const std::string other_key = dir_ / "other-key.pem";
  auto made = run({"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-out", other_key});
  ASSERT_TRUE(made.status.success()) << made.out;
  const std::string not_pem = dir_ / "not.pem";
  std::ofstream(not_pem) << "not a certificate\n";
  const std::string missing = dir_ / "missing.pem";

  EXPECT_EQ(add_listener_error(cert_, key_), "");
  EXPECT_THAT(add_listener_error(cert_, other_key),
              AllOf(HasSubstr(other_key), HasSubstr(cert_), HasSubstr("match")));
  EXPECT_THAT(add_listener_error(missing, key_),
              AllOf(HasSubstr(missing), HasSubstr("No such file")));
  EXPECT_THAT(add_listener_error(cert_, missing),
              AllOf(HasSubstr(missing), HasSubstr("No such file")));
  EXPECT_THAT(add_listener_error(not_pem, key_), HasSubstr(not_pem));
  EXPECT_THAT(add_listener_error(cert_, not_pem), HasSubstr(not_pem));
  EXPECT_THAT(add_listener_error(key_, cert_), HasSubstr(key_));  // swapped: no certificate
}

TEST_F(HttpTls, DrainAnswersTheNextRequestWithCloseThenCloseNotify) {
  server_options o;
  o.drain_idle_grace = 10s;
  start(o);
  s_client c(port_, cert_);
  c.send(request_a);
  ASSERT_TRUE(c.read_until("ok /a\n")) << c.output;
  auto done = std::async(std::launch::async, [this] { return server_->drain(10s); });
  ASSERT_TRUE(eventually([&] { return server_->state() == server_state::draining; }));
  c.send(request_b);
  ASSERT_TRUE(c.read_until("ok /b\n")) << c.output;
  const auto status = c.finish();
  EXPECT_TRUE(status.success()) << status.describe() << "\n" << c.output;
  const auto b = c.output.substr(c.output.rfind("HTTP/1.1 200"));
  EXPECT_THAT(b, HasSubstr("Connection: close"));
  EXPECT_THAT(c.output, HasSubstr("closed"));
  EXPECT_THAT(c.output, Not(HasSubstr("unexpected eof")));
  const auto report = done.get();
  EXPECT_TRUE(report.clean());
  // /b at least (/a counts too when its write completed after the drain began).
  EXPECT_GE(report.requests_completed, 1u);
}

TEST_F(HttpTls, DrainLetsARequestInFlightFinishForCurl) {
  start();
  spawn_options o;
  o.argv = {"curl", "-sS", "--cacert", cert_, "-D", "-", url("/slow?ms=1500")};
  std::future<result<test::child_output>> curl =
      std::async(std::launch::async, [o] { return test::run_and_capture(o, 20s); });
  ASSERT_TRUE(eventually([&] { return server_->requests_in_flight() == 1; }));
  const auto report = server_->drain(10s);
  auto r = curl.get();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(r->status.success()) << r->status.describe() << "\n" << r->out;
  EXPECT_THAT(r->out, HasSubstr("Connection: close"));
  EXPECT_THAT(r->out, HasSubstr("ok /slow?ms=1500"));
  EXPECT_TRUE(report.clean());
}

}  // namespace
}  // namespace handoff::http
