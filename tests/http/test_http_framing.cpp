// What handoff::http::server refuses in a request's framing, how it closes after a refusal, what
// it makes of a handler's odd responses, and its timeouts of 0: each with raw bytes over
// loopback to a server in this process (RFC 9112, RFC 9110).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <boost/asio/use_awaitable.hpp>
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

// Answers "ok TARGET" (the body it received for /echo), or the odd responses a handler may
// make by mistake: /204, /304, /304-length (with the length of the 200 it stands for), and
// with a body they cannot carry, /204-body, /304-body, /100.
asio::awaitable<response> odd_handler(request_context& ctx) {
  const auto& req = ctx.req();
  const std::string_view target = req.target();
  response res{bhttp::status::ok, req.version()};
  if (target == "/204" || target == "/204-body") res.result(bhttp::status::no_content);
  if (target == "/304" || target == "/304-body" || target == "/304-length")
    res.result(bhttp::status::not_modified);
  if (target == "/100") res.result(bhttp::status::continue_);
  if (target == "/304-length") res.set(bhttp::field::content_length, "42");
  if (target == "/echo") {
    res.body() = req.body();
  } else if (res.result() == bhttp::status::ok || target.ends_with("-body") || target == "/100") {
    res.body() = "ok " + std::string(target);
  }
  co_return res;
}

class HttpFraming : public testing::Test {
 protected:
  void start(server_options options) {
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    server_ = std::make_unique<server>(options, odd_handler);
    server_->add_listener(std::move(fd));
    server_->start();
  }
  static server_options limits() {
    server_options o;
    o.threads = 1;
    o.header_timeout = 2s;
    o.body_timeout = 2s;
    o.idle_timeout = 2s;
    o.max_header_bytes = 4096;
    o.max_body_bytes = 1024;
    return o;
  }
  // Sends `bytes`, reads one answer and expects the connection closed after it.
  void expect_refused(const std::string& bytes, int status) {
    raw_connection c(port_);
    ASSERT_TRUE(c.valid());
    ASSERT_TRUE(c.send_all(bytes));
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, status) << r.head;
    // An HTTP/1.0 answer closes without saying so.
    EXPECT_TRUE(r.close || r.head.starts_with("HTTP/1.0")) << r.head;
    EXPECT_TRUE(c.wait_closed(5s));
  }
  void TearDown() override {
    if (server_) server_->drain(2s);
  }
  std::uint16_t port_ = 0;
  std::unique_ptr<server> server_;
};

struct framing_case {
  const char* name;
  std::string bytes;
  int status;  // the answer; then the connection closes
};

class HttpSmuggling : public HttpFraming, public testing::WithParamInterface<framing_case> {};

// The request is refused before any handler sees it, and what follows it is never served as a
// request of its own (each case carries a second request, "GET /smuggled", in its body).
TEST_P(HttpSmuggling, IsRefusedAndTheConnectionCloses) {
  start(limits());
  expect_refused(GetParam().bytes, GetParam().status);
  EXPECT_EQ(server_->stats().requests, 0u);
  EXPECT_EQ(server_->stats().bad_requests, 1u);
}

const std::string smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
const std::string chunked_smuggled = "5\r\nhello\r\n0\r\n\r\n" + smuggled;

INSTANTIATE_TEST_SUITE_P(
    Rfc9112, HttpSmuggling,
    testing::Values(
        // RFC 9112 6.3: chunked not the final coding: the length cannot be known, 400.
        framing_case{
            "UnknownCodingAlone",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n" + chunked_smuggled,
            400},
        framing_case{
            "IdentityIsNoCodingAnyMore",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n" + chunked_smuggled,
            400},
        framing_case{"ChunkedThenIdentityWithLength",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n"
                     "Content-Length: 5\r\n\r\nhello" +
                         smuggled,
                     400},
        framing_case{
            "GzipAlone",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + chunked_smuggled,
            400},
        framing_case{
            "EmptyCoding",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n" + chunked_smuggled, 400},
        // RFC 9112 6.1: chunked applied twice.
        framing_case{"ChunkedTwice",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" +
                         chunked_smuggled,
                     400},
        // RFC 9112 6.1: a coding the server does not decode, chunked last: 501.
        framing_case{"GzipThenChunked",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" +
                         chunked_smuggled,
                     501},
        framing_case{"GzipLineThenChunkedLine",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n" +
                         chunked_smuggled,
                     501},
        // RFC 9112 6.1 and 6.3: both framings, or chunked under HTTP/1.0.
        framing_case{"ContentLengthThenChunked",
                     "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n" +
                         chunked_smuggled,
                     400},
        framing_case{"ChunkedThenContentLength",
                     "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 5\r\n\r\n" +
                         chunked_smuggled,
                     400},
        framing_case{"ChunkedUnderHttp10",
                     "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_smuggled,
                     400},
        // RFC 9112 3.2: Host missing (HTTP/1.1), repeated, or not a host.
        framing_case{"NoHost", "GET / HTTP/1.1\r\n\r\n" + smuggled, 400},
        framing_case{"TwoHosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + smuggled, 400},
        framing_case{"TwoHostsHttp10", "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400},
        framing_case{"HostWithAPath", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n" + smuggled, 400},
        framing_case{"HostWithAnAt", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n" + smuggled, 400}),
    [](const auto& p) { return std::string(p.param.name); });

TEST_F(HttpFraming, ValidFramingsAreServed) {
  start(limits());
  raw_connection c(port_);
  const std::string requests[] = {
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
      "GET / HTTP/1.1\r\nHost:\r\n\r\n",  // a target without authority (RFC 9112 3.2)
      "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",  // HTTP/1.0 needs no Host
  };
  for (const auto& request : requests) {
    ASSERT_TRUE(c.send_all(request));
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << request;
    EXPECT_EQ(r.status, 200) << request;
  }
}

// RFC 9112 2.2: a CRLF before a request line, after a body the client framed itself (an old
// client's habit) or alone, is skipped, not answered 400.
TEST_F(HttpFraming, EmptyLinesBeforeARequestAreSkipped) {
  start(limits());
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 200);
  ASSERT_TRUE(c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\n"));
  r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.body, "abc");
  // The CR and the LF in separate reads, then the request: still one empty line.
  ASSERT_TRUE(c.send_all("\r"));
  std::this_thread::sleep_for(50ms);  // lets the server read the lone CR on its own (not needed
                                      // for the outcome: any split must give the same answer)
  ASSERT_TRUE(c.send_all("\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"));
  r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok /b");
  EXPECT_EQ(server_->stats().bad_requests, 0u);
}

TEST_F(HttpFraming, TooManyEmptyLinesGet400) {
  start(limits());
  std::string lines;
  for (int i = 0; i < 9; ++i) lines += "\r\n";
  expect_refused(lines + "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
}

// 100 KB of extensions on every chunk: Beast would hold each line whole in the read buffer,
// however long. Refused at the first line, with the connection's memory bounded by the read
// buffer (max_header_bytes + 8 KiB), and counted.
TEST_F(HttpFraming, LongChunkExtensionsGet400) {
  start(limits());
  const std::string ext = ";x=" + std::string(100 * 1024, 'e');
  std::string body;
  for (int i = 0; i < 4; ++i) body += "1" + ext + "\r\na\r\n";
  expect_refused(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body + "0\r\n\r\n",
      400);
  EXPECT_EQ(server_->stats().bad_requests, 1u);
  EXPECT_EQ(server_->stats().requests, 0u);
}

// Lines that each fit, but together more extensions than max_header_bytes of header would be.
TEST_F(HttpFraming, ExtensionsOfAllChunksCountTogether) {
  start(limits());
  const std::string ext = ";x=" + std::string(1000, 'e');
  std::string body;
  for (int i = 0; i < 8; ++i) body += "1" + ext + "\r\na\r\n";
  expect_refused(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body + "0\r\n\r\n",
      400);
  // A few small ones are fine.
  raw_connection c(port_);
  ASSERT_TRUE(
      c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                 "chunked\r\n\r\n2;a=b;c\r\nhi\r\n0\r\n\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.body, "hi");
}

TEST_F(HttpFraming, AnOverLongTrailerIsAnsweredAndCounted) {
  start(limits());
  std::string trailer;
  for (int i = 0; i < 200; ++i)
    trailer += "X-T" + std::to_string(i) + ": " + std::string(100, 't') + "\r\n";
  expect_refused(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2\r\nhi\r\n0\r\n" +
          trailer + "\r\n",
      400);
  EXPECT_EQ(server_->stats().bad_requests, 1u);
}

TEST_F(HttpFraming, FieldsBeyondMaxHeaderFieldsGet431) {
  auto options = limits();
  options.max_header_bytes = 16 * 1024;
  options.max_header_fields = 20;
  start(options);
  std::string fields;
  for (int i = 0; i < 20; ++i) fields += "a" + std::to_string(i) + ": 1\r\n";
  expect_refused("GET / HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n", 431);
  EXPECT_EQ(server_->stats().header_fields_too_large, 1u);
  // Trailer fields count too.
  std::string trailer;
  for (int i = 0; i < 19; ++i) trailer += "t" + std::to_string(i) + ": 1\r\n";
  expect_refused(
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + trailer + "\r\n",
      431);
  raw_connection c(port_);
  auto r = c.get("/");  // Host alone, and the server's own count of them
  EXPECT_EQ(r.status, 200);
}

// The default cap is above the front's (512, `handoff run --proxy http`) plus the fields a
// proxy adds (Forwarded, X-Forwarded-For, X-Forwarded-Proto): a request a front passed is not
// refused by the app behind it.
TEST_F(HttpFraming, TheDefaultFieldCapTakesWhatAFrontPasses) {
  auto options = limits();
  options.max_header_bytes = 16 * 1024;
  options.max_header_fields = server_options{}.max_header_fields;
  start(options);
  std::string fields;
  for (int i = 0; i < 511 + 3; ++i) fields += "a" + std::to_string(i) + ": 1\r\n";
  raw_connection c(port_);
  ASSERT_TRUE(c.send_all("GET / HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(r.status, 200) << r.head;
}

// After a refusal the client may still be sending: the server ends its side, discards what
// comes, and closes when the client does, so a client that writes its whole body before it
// reads (as many do) gets its answer instead of ECONNRESET on a write.
TEST_F(HttpFraming, AClientStillSendingAfterARefusalReadsTheAnswer) {
  start(limits());
  for (const bool header : {false, true}) {
    raw_connection c(port_);
    const std::string start =
        header ? "GET / HTTP/1.1\r\nHost: x\r\nX-Long: "  // a header that never ends: 431
               : "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n";  // 413
    ASSERT_TRUE(c.send_all(start));
    const std::string piece(64 * 1024, 'b');
    for (int i = 0; i < 120; ++i) ASSERT_TRUE(c.send_all(piece)) << "write " << i << ": " << errno;
    ASSERT_EQ(::shutdown(c.fd(), SHUT_WR), 0);
    auto r = c.read_reply(5s);
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, header ? 431 : 413);
    EXPECT_TRUE(c.wait_closed(5s));
  }
  EXPECT_EQ(server_->stats().payload_too_large, 1u);
  EXPECT_EQ(server_->stats().header_fields_too_large, 1u);
}

// A handler's response that cannot be sent as it is: 500, counted, and the server goes on.
TEST_F(HttpFraming, ResponsesThatCannotCarryABodyGet500) {
  start(limits());
  for (const char* target : {"/204-body", "/304-body", "/100"}) {
    raw_connection c(port_);
    auto r = c.get(target);
    ASSERT_EQ(r.result, outcome::ok) << target << ": " << to_string(r.result);
    EXPECT_EQ(r.status, 500) << target;
  }
  EXPECT_EQ(server_->stats().handler_exceptions, 3u);
  raw_connection c(port_);
  EXPECT_EQ(c.get("/").status, 200);
}

// RFC 9110 8.6: no Content-Length on a 204; on a 304 only the one its handler set.
TEST_F(HttpFraming, NoContentLengthWhereRfc9110ForbidsIt) {
  start(limits());
  raw_connection c(port_);
  auto r = c.get("/204");
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 204);
  EXPECT_EQ(r.head.find("Content-Length"), std::string::npos) << r.head;
  EXPECT_EQ(r.head.find("Transfer-Encoding"), std::string::npos) << r.head;
  r = c.get("/304");
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 304);
  EXPECT_EQ(r.head.find("Content-Length"), std::string::npos) << r.head;
  r = c.get("/304-length");
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.header("content-length"), "42");
  EXPECT_EQ(c.get("/").status, 200);  // the connection goes on
}

// RFC 9110 10.1.1: an HTTP/1.0 client is not sent 100 Continue; its body is read as it comes.
TEST_F(HttpFraming, NoContinueForHttp10) {
  start(limits());
  raw_connection c(port_);
  ASSERT_TRUE(
      c.send_all("POST /echo HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "abc");
}

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Timeouts of 0 are off: requests are served, and an idle keep-alive connection costs no CPU
// (a watchdog re-armed at `now` for ever would take a core).
TEST_F(HttpFraming, ZeroTimeoutsAreOff) {
  server_options o = limits();
  o.header_timeout = o.body_timeout = o.write_timeout = o.idle_timeout = 0ms;
  start(o);
  raw_connection c(port_);
  for (int i = 0; i < 3; ++i) {
    auto r = c.get("/");
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(r.status, 200);
  }
  // A request whose header comes in two pieces waits, with no deadline, for the rest.
  ASSERT_TRUE(c.send_all("GET /late HTTP/1.1\r\n"));
  const auto wall_start = std::chrono::steady_clock::now();
  const double cpu_start = cpu_seconds();
  std::this_thread::sleep_for(500ms);  // the measurement: what the idle server costs meanwhile
  const double cpu = cpu_seconds() - cpu_start;
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  EXPECT_LT(cpu, 0.2 * wall) << "cpu " << cpu << " s in " << wall << " s";
  ASSERT_TRUE(c.send_all("Host: x\r\n\r\n"));
  auto r = c.read_reply(5s);
  ASSERT_EQ(r.result, outcome::ok);
  EXPECT_EQ(r.body, "ok /late");
  EXPECT_EQ(server_->stats().timeouts, 0u);
}

}  // namespace
}  // namespace handoff::http
