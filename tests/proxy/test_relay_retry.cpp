// The HTTP relay's retry (proxy/retry.hpp) against real loopback sockets (relay_harness.hpp):
// a pooled upstream connection the app closes as the next request is written. The harness's
// router lends a pooled connection without checking it, so each test closes the upstream side
// exactly where it wants the race to fall: before the write (the kernel takes nothing), or
// after the app read the request (the kernel took all of it).
#include <gtest/gtest.h>
#include <poll.h>

#include <string>

#include "relay_harness.hpp"

namespace handoff::proxy::test {
namespace {

const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const std::string bad_gateway =
    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

class RelayRetry : public ::testing::Test {
 protected:
  // One request answered on a new upstream connection, which goes back to the pool.
  peer first_exchange(peer& client) {
    client.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
    peer up = h.accept_upstream();
    EXPECT_TRUE(up.valid());
    up.read_message();
    up.send(ok);
    EXPECT_EQ(client.read_message(), ok);
    EXPECT_EQ(h.router().releases(1), std::vector<bool>{true});
    return up;
  }
  relay_harness h;
};

// The app read the request and closed without a word (its keep-alive timeout fired as the
// request came): a GET goes again, on a new connection, and the client sees only the 200.
TEST_F(RelayRetry, AnIdempotentRequestAPooledConnectionLostGoesAgainOnANewOne) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_NE(up.read_message().find("GET /2 "), std::string::npos);
  up.close();
  peer fresh = h.accept_upstream();
  ASSERT_TRUE(fresh.valid());
  EXPECT_NE(fresh.read_message().find("GET /2 "), std::string::npos);
  fresh.send(ok);
  EXPECT_EQ(client.read_message(), ok);
  h.stop();
  EXPECT_EQ(h.counters().retried, 1u);
  EXPECT_EQ(h.counters().bad_gateway, 0u);
  EXPECT_EQ(h.router().new_only.load(), 1);
}

// The same with a reset (the app closed with the request unread in its buffer): ECONNRESET.
TEST_F(RelayRetry, AResetBeforeTheAnswerIsRetriedToo) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("DELETE /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_NE(up.read_until("\r\n\r\n").find("DELETE /2 "), std::string::npos);
  up.reset();
  peer fresh = h.accept_upstream();
  ASSERT_TRUE(fresh.valid());
  EXPECT_NE(fresh.read_message().find("DELETE /2 "), std::string::npos);
  fresh.send(ok);
  EXPECT_EQ(client.read_message(), ok);
  h.stop();
  EXPECT_EQ(h.counters().retried, 1u);
}

// A POST the app may have run: the kernel took its bytes, and whether the app read them
// nobody on our side can tell. Not sent again: 502.
TEST_F(RelayRetry, APostWhoseBytesWereTakenIsNotSentAgain) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_NE(up.read_message().find("POST /2 "), std::string::npos);
  up.close();
  EXPECT_EQ(client.read_to_eof(), bad_gateway);
  h.stop();
  EXPECT_EQ(h.counters().retried, 0u);
  EXPECT_EQ(h.counters().bad_gateway, 1u);
  EXPECT_EQ(h.router().new_only.load(), 0);
  EXPECT_FALSE(h.upstream_pending(0));
}

// A POST of which the kernel took nothing: the pooled connection was reset before the write
// (the write fails at once), so the app cannot have seen a byte of it. It goes again.
TEST_F(RelayRetry, APostNoByteOfWhichWasTakenGoesAgain) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  up.reset();
  // The reset has reached the pooled connection (it reports an error), before the request.
  pollfd p{h.router().last_idle_fd.load(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  ASSERT_NE(p.revents & (POLLERR | POLLHUP), 0);
  client.send("POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
  peer fresh = h.accept_upstream();
  ASSERT_TRUE(fresh.valid());
  EXPECT_EQ(fresh.read_until("abc").find("POST /2 "), 0u);
  fresh.send(ok);
  EXPECT_EQ(client.read_message(), ok);
  h.stop();
  EXPECT_EQ(h.counters().retried, 1u);
}

// An idempotent request whose body was still streaming from the client when the pooled
// connection went: the body read so far is gone (it was passed on, not kept), so it cannot be
// sent again whole: 502.
TEST_F(RelayRetry, AStreamedBodyIsNotSentAgain) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("PUT /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc");
  EXPECT_NE(up.read_until("abc").find("PUT /2 "), std::string::npos);
  up.close();
  EXPECT_EQ(client.read_to_eof(), bad_gateway);
  h.stop();
  EXPECT_EQ(h.counters().retried, 0u);
  EXPECT_EQ(h.router().new_only.load(), 0);
}

// Once: the new connection failing too is answered, not retried again.
TEST_F(RelayRetry, ANewConnectionThatFailsIsAnswered) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  up.read_message();
  up.close();
  peer fresh = h.accept_upstream();
  ASSERT_TRUE(fresh.valid());
  fresh.read_message();
  fresh.close();
  EXPECT_EQ(client.read_to_eof(), bad_gateway);
  h.stop();
  EXPECT_EQ(h.counters().retried, 1u);
  EXPECT_EQ(h.router().new_only.load(), 1);
  EXPECT_EQ(h.router().acquired.load(), 3);
}

// A byte of the answer came: the app was answering, nothing goes again.
TEST_F(RelayRetry, NothingGoesAgainOnceTheAnswerBegan) {
  h.start();
  auto client = h.client();
  peer up = first_exchange(client);
  client.send("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  up.read_message();
  up.send("HTTP/1.1 200 OK\r\nContent-");
  up.close();
  EXPECT_EQ(client.read_to_eof(), bad_gateway);
  h.stop();
  EXPECT_EQ(h.counters().retried, 0u);
  EXPECT_EQ(h.router().new_only.load(), 0);
}

}  // namespace
}  // namespace handoff::proxy::test
