// What the relay makes of requests a client should not be able to steer (issue 22, items 8
// and 13), against real loopback sockets (relay_harness.hpp): forwarding fields the client
// wrote, an absolute-form target naming another host, HTTP/0.9, stray empty lines; and a
// response with a coding before chunked.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "proxy/http_framing.hpp"
#include "relay_harness.hpp"

namespace handoff::proxy::test {
namespace {

const std::string fwd =
    "Forwarded: for=127.0.0.1;proto=http\r\nX-Forwarded-For: 127.0.0.1\r\n"
    "X-Forwarded-Proto: http\r\n";

class RelayRequests : public ::testing::Test {
 protected:
  relay_harness h;
};

// X-Forwarded-Host, X-Real-IP and True-Client-IP would let a client choose the host or the
// address an app that trusts its proxy believes; the '_' spellings reach CGI/WSGI apps as the
// same header. Before, all of them passed through.
TEST_F(RelayRequests, ForwardingFieldsTheClientWroteAreRemovedOrMerged) {
  h.start();
  auto client = h.client();
  client.send(
      "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: evil\r\nX-Real-IP: 10.9.9.9\r\n"
      "True-Client-IP: 10.9.9.8\r\nX_Forwarded_For: 10.9.9.7\r\nx_forwarded_proto: https\r\n"
      "X_Real_IP: 10.9.9.6\r\nX-Forwarded-For: 10.0.0.1\r\nX_Forwarded_Host: evil\r\n"
      "X-Keep: 1\r\nX_Other_Thing: 2\r\n\r\n");
  auto up = h.accept_upstream();
  ASSERT_TRUE(up.valid());
  EXPECT_EQ(up.read_message(),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Keep: 1\r\nX_Other_Thing: 2\r\n"
            "Forwarded: for=127.0.0.1;proto=http\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"
            "X-Forwarded-Proto: http\r\n\r\n");
}

// With --no-forwarded-headers the front sets nothing, so it removes nothing either.
TEST_F(RelayRequests, WithoutForwardedHeadersTheClientsPassThrough) {
  h.options.forwarded = false;
  h.start();
  auto client = h.client();
  client.send("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: f\r\nX-Real-IP: 10.0.0.1\r\n\r\n");
  auto up = h.accept_upstream();
  EXPECT_EQ(up.read_message(),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: f\r\nX-Real-IP: 10.0.0.1\r\n\r\n");
}

// RFC 9112 3.2.2: the target's authority replaces Host. Before, both went on, and an app could
// route by one and build links from the other.
TEST_F(RelayRequests, AbsoluteFormTargetsAuthorityReplacesHost) {
  h.start();
  auto client = h.client();
  client.send(
      "GET http://real.example:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
      "GET HTTP://real.example HTTP/1.1\r\nHost: other\r\n\r\n"
      "OPTIONS http://real.example HTTP/1.1\r\nHost: other\r\n\r\n"
      "GET http://real.example?x HTTP/1.0\r\n\r\n");
  auto up = h.accept_upstream();
  ASSERT_TRUE(up.valid());
  EXPECT_EQ(up.read_message(), "GET /p?q=1 HTTP/1.1\r\nHost: real.example:8080\r\n" + fwd + "\r\n");
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(up.read_message(), "GET / HTTP/1.1\r\nHost: real.example\r\n" + fwd + "\r\n");
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(up.read_message(), "OPTIONS * HTTP/1.1\r\nHost: real.example\r\n" + fwd + "\r\n");
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(up.read_message(), "GET /?x HTTP/1.1\r\nHost: real.example\r\n" + fwd + "\r\n");
}

TEST_F(RelayRequests, AbsoluteFormWithUserinfoOrNoHostIs400) {
  h.start();
  for (const auto* target : {"http://user@h/", "http:///p", "http://"}) {
    SCOPED_TRACE(target);
    auto client = h.client();
    client.send("GET " + std::string(target) + " HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT_EQ(client.read_to_eof(),
              "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  }
  h.stop();
  EXPECT_EQ(h.router().acquired.load(), 0);
}

// RFC 9112 6.1: a transfer coding before the final chunked is valid; the relay re-frames the
// chunks and keeps the coding. Before, it was a 502.
TEST_F(RelayRequests, ResponseCodingBeforeChunkedIsRelayed) {
  h.start();
  auto client = h.client();
  client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  auto up = h.accept_upstream();
  up.read_message();
  up.send(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n");
  // (read_message() knows only a bare chunked)
  EXPECT_EQ(client.read_until("0\r\n\r\n"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  // An HTTP/1.0 client knows no Transfer-Encoding: that response cannot reach it (502).
  client.send("GET / HTTP/1.0\r\n\r\n");
  up.read_message();
  up.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_EQ(client.read_to_eof(),
            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  // chunked not last, or twice, still leaves the end of the body to interpretation.
  for (const auto* codings : {"chunked, gzip", "chunked, chunked"}) {
    SCOPED_TRACE(codings);
    auto c = h.client();
    c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    auto u = h.accept_upstream();
    u.read_message();
    u.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: " + std::string(codings) + "\r\n\r\n0\r\n\r\n");
    EXPECT_EQ(c.read_to_eof(),
              "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  }
}

// Before, an HTTP/0.9 request line waited for a header end that never comes: a 408 after the
// header timeout (10 s by default).
TEST_F(RelayRequests, Http09RequestIs400AtOnce) {
  h.options.header_timeout = std::chrono::seconds(30);
  h.start();
  auto client = h.client();
  const auto start = std::chrono::steady_clock::now();
  client.send("GET /\r\n");
  EXPECT_EQ(client.read_to_eof(),
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

// RFC 9112 2.2: a stray CRLF before a request line (one after a POST body, as old clients
// send) is ignored, up to a bound. Before, it was a 400.
TEST_F(RelayRequests, StrayEmptyLinesBeforeARequestAreIgnoredUpToABound) {
  h.start();
  auto client = h.client();
  client.send("\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab\r\n");
  auto up = h.accept_upstream();
  EXPECT_EQ(up.read_message(),
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n" + fwd + "\r\nab");
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(client.read_message(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  client.send("\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(up.read_message(), "GET /next HTTP/1.1\r\nHost: h\r\n" + fwd + "\r\n");
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(client.read_message(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  std::string many;
  for (int i = 0; i <= max_empty_lines; ++i) many += "\r\n";
  client.send(many + "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(client.read_to_eof(),
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

}  // namespace
}  // namespace handoff::proxy::test
