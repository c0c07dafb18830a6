// The protections of handoff::http::server, each with a real client over loopback: the server
// runs in this process on 127.0.0.1:0 with short limits.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/write.hpp>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

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

asio::awaitable<response> test_handler(request_context& ctx) {
  const auto& req = ctx.req();
  const std::string_view target = req.target();
  response res{bhttp::status::ok, req.version()};
  if (target == "/throw") throw std::runtime_error("handler bug");
  if (target == "/slow") {
    asio::steady_timer timer(ctx.executor(), 300ms);
    co_await timer.async_wait(asio::use_awaitable);
  }
  res.body() = target == "/echo" ? req.body() : "ok " + std::string(target);
  co_return res;
}

class HttpLimits : public testing::Test {
 protected:
  // Serves `on_request` with `options` on `fd` (default: a new listener on 127.0.0.1).
  // listener_ is the same socket, kept by the test: the server closes its own copies.
  void start(server_options options, unique_fd fd = {}, handler on_request = test_handler) {
    if (!fd) fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    listener_ = fd.duplicate().value();
    server_ = std::make_unique<server>(options, std::move(on_request));
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
  // Another client is served normally: a misbehaving one costs nobody else.
  void expect_others_served() {
    raw_connection other(port_);
    ASSERT_TRUE(other.valid());
    auto r = other.get("/");
    EXPECT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, 200);
  }
  void TearDown() override {
    if (server_) {
      auto report = server_->drain(2s);
      EXPECT_EQ(server_->state(), server_state::stopped);
      (void)report;
    }
  }
  std::uint16_t port_ = 0;
  unique_fd listener_;
  std::unique_ptr<server> server_;
};

TEST_F(HttpLimits, ServesKeepAliveRequests) {
  start(short_limits());
  raw_connection c(port_);
  for (int i = 0; i < 5; ++i) {
    auto r = c.get("/n" + std::to_string(i));
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "ok /n" + std::to_string(i));
    EXPECT_FALSE(r.close);
  }
}

// The server's end of a connection, found in this process by its addresses: born close-on-exec
// (a child the app starts must not hold its clients' connections open) and with TCP_NODELAY
// (a small response must not wait for the ACK of the one before: pipelined requests), which
// the server sets once on the listener for the connections to inherit.
TEST_F(HttpLimits, ConnectionsAreCloseOnExecAndSendWithoutDelay) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_EQ(c.get("/").result, outcome::ok);
  sockaddr_storage client{};
  socklen_t client_length = sizeof client;
  ASSERT_EQ(::getsockname(c.fd(), reinterpret_cast<sockaddr*>(&client), &client_length), 0);
  int found = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::stoi(entry.path().filename().string());
    sockaddr_storage peer{};
    socklen_t length = sizeof peer;
    if (fd == c.fd() || ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0 ||
        length != client_length || std::memcmp(&peer, &client, length) != 0)
      continue;
    ++found;
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    int nodelay = 0;
    socklen_t size = sizeof nodelay;
    ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &size), 0);
    EXPECT_EQ(nodelay, 1);
  }
  EXPECT_EQ(found, 1) << "the server's end of the connection";
}

int defer_accept_of(int fd) {
  int seconds = -1;
  socklen_t size = sizeof seconds;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, &size) == 0 ? seconds : -1;
}

// defer_accept (on by default): a connection is handed to the server once its request is in,
// so a client that connected first and says nothing is not accepted while one that sent its
// request is, and is served; the silent one is served when it speaks.
TEST_F(HttpLimits, AConnectionIsAcceptedOnceItsRequestIsIn) {
  auto options = short_limits();
  // Longer than this test can take, however slow the machine: the silent client is accepted
  // only once it speaks.
  options.defer_accept = 60s;
  start(options);
  EXPECT_GE(defer_accept_of(listener_.get()), 60);
  raw_connection silent(port_);
  ASSERT_TRUE(silent.valid());
  raw_connection speaking(port_);
  ASSERT_EQ(speaking.get("/second").result, outcome::ok);
  EXPECT_EQ(server_->stats().connections_accepted, 1u) << "the silent client was accepted";
  auto r = silent.get("/first");
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.body, "ok /first");
  EXPECT_EQ(server_->stats().connections_accepted, 2u);
}

// A client that connects and never speaks is still handed over after defer_accept, and closed
// after the header timeout like any other.
TEST_F(HttpLimits, ASilentConnectionIsClosedAfterDeferAcceptAndTheHeaderTimeout) {
  start(short_limits());
  raw_connection silent(port_);
  ASSERT_TRUE(silent.valid());
  EXPECT_TRUE(silent.wait_closed(10s));
}

// 0 leaves the listener as it is, and a socket that came with its own deferral (a socket
// unit's DeferAcceptSec=) keeps it.
TEST_F(HttpLimits, DeferAcceptOffOrSetAlreadyLeavesTheListenerAlone) {
  for (const int preset : {0, 7}) {
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    ASSERT_EQ(::setsockopt(fd.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, &preset, sizeof preset), 0);
    auto options = short_limits();
    if (preset == 0) options.defer_accept = 0s;
    start(options, std::move(fd));
    const int kept = defer_accept_of(listener_.get());
    // The kernel keeps the deferral as a count of SYN-ACK retransmissions and gives it back in
    // seconds rounded up to one of theirs: 7 s reads back as 7 or more.
    if (preset == 0) {
      EXPECT_EQ(kept, 0);
    } else {
      EXPECT_GE(kept, preset);
    }
    (void)server_->drain(2s);
    server_.reset();
  }
}

TEST_F(HttpLimits, SlowlorisIsClosedAfterTheHeaderTimeout) {
  start(short_limits());
  raw_connection slow(port_);
  ASSERT_TRUE(slow.send_all("GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "));
  expect_others_served();
  EXPECT_TRUE(slow.wait_closed(5s)) << "a header that never ends must not hold the connection";
}

TEST_F(HttpLimits, SilentConnectionIsClosedAfterTheIdleTimeout) {
  start(short_limits());
  raw_connection idle(port_);
  ASSERT_EQ(idle.get("/").result, outcome::ok);
  EXPECT_TRUE(idle.wait_closed(5s));
}

TEST_F(HttpLimits, OversizeHeaderGets431) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(
      c.send_all("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 431);
  EXPECT_TRUE(r.close);
  EXPECT_TRUE(c.wait_closed(5s));
  expect_others_served();
}

TEST_F(HttpLimits, OversizeBodyGets413) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                         std::string(5000, 'b')));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 413);
  expect_others_served();
}

TEST_F(HttpLimits, BodyThatNeverArrivesTimesOut) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"));
  EXPECT_TRUE(c.wait_closed(5s));
}

TEST_F(HttpLimits, EchoesABody) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.body, "hello");
}

TEST_F(HttpLimits, ExpectContinueGets100First) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"));
  auto cont = c.read_reply(5s);
  ASSERT_EQ(cont.result, outcome::ok);
  EXPECT_EQ(cont.status, 100);
  ASSERT_TRUE(c.send_all("abc"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.body, "abc");
}

struct garbage_case {
  const char* name;
  std::string bytes;
};

class HttpGarbage : public HttpLimits, public testing::WithParamInterface<garbage_case> {};

TEST_P(HttpGarbage, Gets400AndTheConnectionCloses) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all(GetParam().bytes));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(c.wait_closed(5s));
  expect_others_served();
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, HttpGarbage,
    testing::Values(
        garbage_case{"NotHttp", "this is not http at all\r\n\r\n"},
        garbage_case{"BadVersion", "GET / HTTP/9.x\r\n\r\n"},
        garbage_case{"BinaryMethod", std::string("G\0T / HTTP/1.1\r\n\r\n", 18)},
        garbage_case{"BadContentLength", "POST / HTTP/1.1\r\nContent-Length: xyz\r\n\r\n"},
        garbage_case{"TwoContentLengths",
                     "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"},
        garbage_case{"BadChunk", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
        garbage_case{"HeaderWithoutColon", "GET / HTTP/1.1\r\nNoColonHere\r\n\r\n"}),
    [](const auto& p) { return std::string(p.param.name); });

TEST_F(HttpLimits, HandlerExceptionGets500AndServerGoesOn) {
  start(short_limits());
  raw_connection c(port_);
  auto r = c.get("/throw");
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 500);
  EXPECT_TRUE(r.close);
  expect_others_served();
}

TEST_F(HttpLimits, HeadHasNoBody) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("HEAD /abc HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r = c.read_reply(5s, /*head_request=*/true);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.header("content-length"), "7");  // of "ok /abc", which is not sent
  // The next request on the same connection parses: no stray body bytes were sent.
  auto next = c.get("/next");
  ASSERT_EQ(next.result, outcome::ok);
  EXPECT_EQ(next.body, "ok /next");
}

TEST_F(HttpLimits, PipelinedRequestsAreAnsweredInOrder) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(c.read_reply(5s).body, "ok /a");
  EXPECT_EQ(c.read_reply(5s).body, "ok /b");
}

// A batch larger than the read buffer (8 KiB), sent to a connection that is waiting: its first
// 8 KiB are exactly 128 whole requests, so the server has answered them all with its buffer empty
// when the rest is still in the socket, and no new byte will come to wake it. A read path that
// took the full read for an emptied socket (and waited for epoll's next edge) would stop there.
TEST_F(HttpLimits, ABatchLargerThanTheReadBufferReachesAnIdleConnection) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_EQ(c.get("/first").result, outcome::ok);
  std::string batch;
  constexpr int count = 200;
  for (int i = 0; i < count; ++i) {
    std::string request = "GET /p" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    request.append(64 - request.size() - 4, 'a');  // every request exactly 64 bytes
    batch += request + "\r\n\r\n";
  }
  ASSERT_TRUE(c.send_all(batch));
  for (int i = 0; i < count; ++i) {
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << "reply " << i << ": " << to_string(r.result);
    ASSERT_EQ(r.body, "ok /p" + std::to_string(i));
  }
}

// Requests that arrive in pieces, each sent as soon as the last was: whatever moment a piece
// meets (the connection between two reads, a read that emptied the socket, a half-parsed
// header), it is read, and every request is answered.
TEST_F(HttpLimits, RequestsInPiecesAreReadWhereverThePiecesFall) {
  start(short_limits());
  raw_connection c(port_);
  for (int i = 0; i < 300; ++i) {
    const std::string target = "/r" + std::to_string(i);
    ASSERT_TRUE(c.send_all("GET " + target));
    ASSERT_TRUE(c.send_all(" HTTP/1.1\r\nHost:"));
    ASSERT_TRUE(c.send_all(" x\r\n\r\n"));
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << "request " << i << ": " << to_string(r.result);
    ASSERT_EQ(r.body, "ok " + target);
  }
}

// A client that sends its last request and shuts down its side at once: the request and the end
// of the stream reach the server together, and one read takes the request and leaves the end
// behind it. That read came up short, yet the socket is not empty: the server still has the end
// to read, and it closes the connection once it has answered, not at the idle timeout. On a
// connection served before (waiting on the reactor), as on a new one.
TEST_F(HttpLimits, AClientThatShutsDownAfterItsLastRequestIsClosedOnceAnswered) {
  auto options = short_limits();
  options.idle_timeout = 60s;  // far beyond the wait below: the close must come from the FIN
  start(options);
  for (const bool served_before : {false, true}) {
    raw_connection c(port_);
    if (served_before) {
      ASSERT_EQ(c.get("/first").result, outcome::ok);
    }
    ASSERT_TRUE(c.send_all("GET /last HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_EQ(::shutdown(c.fd(), SHUT_WR), 0);
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.body, "ok /last");
    EXPECT_TRUE(c.wait_closed(5s)) << (served_before ? "served before" : "new connection");
  }
}

TEST_F(HttpLimits, Http10ClosesUnlessKeepAlive) {
  start(short_limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET / HTTP/1.0\r\n\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_TRUE(c.wait_closed(5s));
}

TEST_F(HttpLimits, ConnectionsBeyondTheLimitWaitInTheQueue) {
  auto options = short_limits();
  options.max_connections = 2;
  options.idle_timeout = 10s;
  start(options);
  raw_connection a(port_), b(port_);
  ASSERT_EQ(a.get("/").result, outcome::ok);
  ASSERT_EQ(b.get("/").result, outcome::ok);
  // The third connection is accepted by the kernel, not refused, and waits.
  raw_connection third(port_);
  ASSERT_TRUE(third.valid()) << "refused: " << third.error();
  ASSERT_TRUE(third.send_all("GET /third HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(third.read_reply(200ms).result, outcome::timed_out) << "served beyond the limit";
  a.close();  // a slot frees up: the waiting connection is taken and served
  auto r = third.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.body, "ok /third");
}

// What a handler answers to /shaped?N: responses whose bytes are easy to get wrong (a reason
// of its own, an unknown status, repeated fields, HTTP/1.0). It sets Date itself, so the
// server adds none and the bytes are known in advance.
response shaped(unsigned version, int n) {
  response res{bhttp::status::ok, version};
  res.set(bhttp::field::date, "Tue, 01 Dec 2026 18:00:00 GMT");
  res.set(bhttp::field::content_type, "text/plain");
  res.body() = "shaped " + std::to_string(n) + "\n";
  switch (n) {
    case 1:
      res.result(bhttp::status::not_found);
      res.reason("Gone Fishing");
      break;
    case 2:
      res.result(299);  // no reason phrase known
      break;
    case 3:
      res.insert(bhttp::field::set_cookie, "a=1");
      res.insert(bhttp::field::set_cookie, "b=2");
      res.set("X-Custom-Field", "value with  spaces");
      break;
    default:
      break;
  }
  return res;
}

asio::awaitable<response> shaped_handler(request_context& ctx) {
  const std::string_view target = ctx.req().target();
  co_return shaped(ctx.req().version(), target.back() - '0');
}

// The server writes the status line and the fields itself (one buffer, one send): the bytes
// must be exactly those of Beast's serializer for the same response, after what the server
// does to every response (keep-alive as the request asked, Content-Length).
class HttpWrite : public HttpLimits {};

TEST_F(HttpWrite, ResponsesAreTheBytesBeastWrites) {
  server_options options;
  options.threads = 1;
  start(options, {}, shaped_handler);
  for (const unsigned version : {11u, 10u}) {
    for (int n = 0; n <= 3; ++n) {
      raw_connection c(port_);
      ASSERT_TRUE(c.send_all("GET /shaped?" + std::to_string(n) + " HTTP/1." +
                             std::to_string(version % 10) + "\r\nHost: x\r\n\r\n"));
      const auto r = c.read_reply(5s);
      ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
      response expected = shaped(version, n);
      expected.keep_alive(version == 11 && expected.keep_alive());
      expected.prepare_payload();
      std::ostringstream beast;
      beast << expected;
      EXPECT_EQ(r.head + "\r\n" + r.body, beast.str())
          << "HTTP/1." << version % 10 << " case " << n;
    }
  }
}

}  // namespace
}  // namespace handoff::http
