// The supervisor's pieces against floods and strangers, without processes: the log limiter,
// the fd budget of --max-connections, the names of stale upstream sockets, and the reading of
// /proc/net/tcp that finds who listens on an --upstream port.
#include <gtest/gtest.h>

#include <string>

#include "supervisor/fd_limits.hpp"
#include "supervisor/log_limiter.hpp"
#include "supervisor/proxy_link.hpp"
#include "supervisor/upstream_owner.hpp"

namespace handoff::supervisor {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

TEST(LogLimiter, ABurstIsWrittenThenOneLinePerRefillWithTheCountLeftOut) {
  log_limiter limit;
  const steady::time_point t0{1h};
  std::uint64_t suppressed = 0;
  for (std::uint32_t i = 0; i < log_burst; ++i)
    ASSERT_TRUE(limit.admit("control_error", "accept: EMFILE", t0, suppressed)) << i;
  // Another kind has a bucket of its own.
  EXPECT_TRUE(limit.admit("ready", "generation 2 ready", t0, suppressed));
  int written = 0;
  for (int i = 0; i < 100000; ++i)
    if (limit.admit("control_error", "accept: EMFILE", t0 + std::chrono::microseconds(i),
                    suppressed))
      ++written;
  EXPECT_EQ(written, 0);  // 0.1 s: no token earned yet
  // A token later: the next line is written, and says how many were left out.
  EXPECT_TRUE(limit.admit("control_error", "accept: EMFILE", t0 + log_refill, suppressed));
  EXPECT_EQ(suppressed, 100000U);
  EXPECT_FALSE(limit.admit("control_error", "accept: EMFILE (last)", t0 + log_refill, suppressed));
}

TEST(LogLimiter, ACountNoLaterLineCarriesIsReportedOnItsOwn) {
  log_limiter limit;
  const steady::time_point t0{1h};
  std::uint64_t suppressed = 0;
  for (std::uint32_t i = 0; i < log_burst + 5; ++i)
    (void)limit.admit("metrics", "line " + std::to_string(i), t0, suppressed);
  auto next = steady::time_point::max();
  EXPECT_TRUE(limit.take_reports(t0, next).empty());
  ASSERT_NE(next, steady::time_point::max());
  EXPECT_EQ(next, t0 + log_refill);
  next = steady::time_point::max();
  const auto reports = limit.take_reports(t0 + log_refill, next);
  ASSERT_EQ(reports.size(), 1U);
  EXPECT_EQ(reports[0].kind, "metrics");
  EXPECT_EQ(reports[0].suppressed, 5U);
  EXPECT_EQ(reports[0].last, "line " + std::to_string(log_burst + 4));
  EXPECT_EQ(next, steady::time_point::max());  // nothing left to report
}

TEST(FdLimits, MaxConnectionsKeepsAReserveAndTwoFdsPerConnection) {
  EXPECT_EQ(reserved_fds(256), 64U);
  EXPECT_EQ(default_max_connections(256), 96U);
  EXPECT_EQ(default_max_connections(1024), 480U);
  EXPECT_EQ(reserved_fds(1 << 20), (1U << 20) / 16);
  EXPECT_EQ(default_max_connections(1 << 20), ((1U << 20) - (1U << 16)) / 2);
  EXPECT_EQ(default_max_connections(10), 1U);
  EXPECT_LE(fds_needed(default_max_connections(1024)), 1024U);
  EXPECT_GT(fds_needed(1000), 1024U);
  const auto open = open_fd_count();
  ASSERT_TRUE(open);
  EXPECT_GE(*open, 3U);
}

TEST(StaleUpstreams, OnlyNamesOfTheAppsPattern) {
  pid_t pid = 0;
  EXPECT_TRUE(stale_upstream_name("web.1234.g2.0.sock", "web", pid));
  EXPECT_EQ(pid, 1234);
  EXPECT_TRUE(stale_upstream_name("my.app.77.g10.3.sock", "my.app", pid));
  EXPECT_EQ(pid, 77);
  for (const char* other :
       {"web.sock", "web.1234.sock", "web.1234.g2.sock", "web.1234.g2.0.sock.x",
        "webx.1234.g2.0.sock", "web.0.g1.0.sock", "web.12a4.g2.0.sock", "web..g2.0.sock",
        "web.1234.gx.0.sock", "other.1234.g2.0.sock", "web.99999999999.g1.0.sock"})
    EXPECT_FALSE(stale_upstream_name(other, "web", pid)) << other;
}

TEST(UpstreamOwner, ListenersAConnectTo127001CanReach) {
  // Port 8080 = 1F90; 127.0.0.1 and 0.0.0.0 listening (0A) count; an established (01) socket,
  // 127.0.0.2, and another port do not.
  const std::string v4 =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
      "timeout inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 "
      "111 1 0000000000000000 100 0 0 10 0\n"
      "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "222 1 0000000000000000 100 0 0 10 0\n"
      "   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 "
      "333 1 0000000000000000 20 4 30 10 -1\n"
      "   3: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 "
      "444 1 0000000000000000 100 0 0 10 0\n"
      "   4: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 "
      "555 1 0000000000000000 100 0 0 10 0\n";
  EXPECT_EQ(loopback_listeners_in(v4, 8080, false), (std::vector<ino_t>{111, 222}));
  const std::string v6 =
      "  sl  local_address                         remote_address                        st "
      "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
      "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000  1000        0 666 1 0000000000000000 100 0 0 10 0\n"
      "   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0\n"
      "   2: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000  1000        0 888 1 0000000000000000 100 0 0 10 0\n";
  // ::, ::ffff:127.0.0.1; not ::1 (a v4 connect never reaches it).
  EXPECT_EQ(loopback_listeners_in(v6, 8080, true), (std::vector<ino_t>{666, 777}));
}

}  // namespace
}  // namespace handoff::supervisor
