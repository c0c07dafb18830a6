// The relay's deadlines against real loopback sockets (relay_harness.hpp): one per direction,
// so that no wait in one direction outlives its bound because of another (issue 22, item 12),
// and a timeout of zero means none (item 4).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "relay_harness.hpp"

namespace handoff::proxy::test {
namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

class RelayDeadlines : public ::testing::Test {
 protected:
  relay_harness h;
};

std::chrono::microseconds process_cpu() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return std::chrono::seconds(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         std::chrono::microseconds(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// A client whose receive buffer is small and fixed (set before connect, so the kernel does not
// grow it): a response it does not read blocks the relay's write soon.
peer small_window_client(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int size = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    ::close(fd);
    return peer();
  }
  return peer(fd);
}

// Zero is "no deadline": before, each of these re-armed the watchdog at now for ever (a core
// spinning per connection) and every request was answered 408 or 504 at once.
TEST_F(RelayDeadlines, ZeroTimeoutsAreNoDeadlines) {
  h.options.header_timeout = clock_type::duration::zero();
  h.options.idle_timeout = clock_type::duration::zero();
  h.options.response_timeout = clock_type::duration::zero();
  h.start();
  auto client = h.client();
  const auto wall_start = clock_type::now();
  const auto cpu_start = process_cpu();
  // Each pause is a wait the relay must sit through without a deadline, and without spinning.
  client.send("GET /a HTTP/1.1\r\nHo");
  std::this_thread::sleep_for(milliseconds(300));
  client.send("st: h\r\n\r\n");
  auto up = h.accept_upstream();
  ASSERT_TRUE(up.valid());
  EXPECT_EQ(up.read_message(),
            "GET /a HTTP/1.1\r\nHost: h\r\n" +
                std::string("Forwarded: for=127.0.0.1;proto=http\r\nX-Forwarded-For: "
                            "127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"));
  std::this_thread::sleep_for(milliseconds(300));
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
  EXPECT_EQ(client.read_message(), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
  std::this_thread::sleep_for(milliseconds(300));  // idle between requests
  client.send("GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_NE(up.read_message().find("GET /b"), std::string::npos);
  up.send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
  EXPECT_EQ(client.read_message(), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
  const auto cpu = process_cpu() - cpu_start;
  const auto wall = clock_type::now() - wall_start;
  EXPECT_LT(cpu * 4, wall) << "the relay spun: " << cpu.count() << " us of CPU";
  h.stop();
  EXPECT_EQ(h.counters().request_timeout, 0u);
  EXPECT_EQ(h.counters().gateway_timeout, 0u);
}

// A client that trickles a chunked body and never reads the response: the response's write
// has a deadline of its own, which the body's reads do not push back. Before, each trickled
// chunk cleared the one client deadline and the blocked write lived for ever.
TEST_F(RelayDeadlines, TricklingClientThatNeverReadsIsClosed) {
  h.options.idle_timeout = milliseconds(300);
  h.options.header_timeout = milliseconds(200);  // bounds the lingering close too
  h.start();
  auto client = small_window_client(h.front_port());
  ASSERT_TRUE(client.valid());
  client.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
  auto up = h.accept_upstream();
  ASSERT_TRUE(up.valid());
  up.read_message(true);
  std::thread answer([&] {
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n");
    up.send(std::string(64 * 1024 * 1024, 'x'));  // ends when the relay closes its side
  });
  const auto start = clock_type::now();
  while (h.relays_finished() == 0 && clock_type::now() - start < std::chrono::seconds(5)) {
    client.send("1\r\na\r\n");  // the trickle: a byte every 50 ms, well within idle_timeout
    std::this_thread::sleep_for(milliseconds(50));
  }
  const auto took = clock_type::now() - start;
  up.close();
  answer.join();
  EXPECT_EQ(h.relays_finished(), 1);
  EXPECT_LT(took, std::chrono::seconds(3));
}

// An upstream that never reads: the first write of the request (its header and what came with
// it) has a deadline too. Before, it had none, and the client waited for ever.
TEST_F(RelayDeadlines, UpstreamThatNeverReadsTheRequestIs504) {
  h.options.response_timeout = milliseconds(300);
  // More than the relay's send buffer can grow to (tcp_wmem's 4 MiB) and the upstream's window.
  h.options.header_limit = 8 * 1024 * 1024;
  const int size = 4096;  // accepted upstream connections inherit the small window
  ::setsockopt(h.upstream_listener(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  h.start();
  auto client = h.client();
  std::thread request([&] {
    client.send("GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(6 * 1024 * 1024, 'b') +
                "\r\n\r\n");
  });
  auto up = h.accept_upstream();  // and never read
  ASSERT_TRUE(up.valid());
  request.join();
  EXPECT_EQ(client.read_until("\r\n\r\n"),
            "HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  h.stop();
  EXPECT_EQ(h.counters().gateway_timeout, 1u);
}

}  // namespace
}  // namespace handoff::proxy::test
