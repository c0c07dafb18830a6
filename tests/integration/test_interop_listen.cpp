// Interop with the reference implementation of the socket-passing protocol, both ways:
// - what spawn() hands on, read by libsystemd's sd_listen_fds_with_names() in a real child
//   (sd_listen_child), with the kinds as sd_is_socket_inet()/sd_is_socket_unix() see them;
// - what systemd's own systemd-socket-activate hands on, read by our listen_fds() (fd_report),
//   including sockets it passes through from us, which proves that libsystemd accepted the
//   LISTEN_PID our child wrote for itself between fork and exec.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "handoff/spawn.hpp"
#include "integration/fd_report_parse.hpp"
#include "test_support.hpp"

namespace handoff::test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

const std::string sd_listen_child_path = HANDOFF_SD_LISTEN_CHILD;
const std::string fd_report_path = HANDOFF_FD_REPORT;
const std::string socket_activate = "systemd-socket-activate";

child_report run_sd_listen_child(std::vector<passed_fd> fds, exit_status* status = nullptr) {
  spawn_options options;
  options.argv = {sd_listen_child_path};
  options.fds = std::move(fds);
  return run_report(options, status);
}

TEST(InteropLibsystemdReceives, NamedTcpUdpAndUnixSockets) {
  temp_dir dir;
  int tcp_port = 0, udp_port = 0;
  auto tcp = inet_socket("127.0.0.1", SOCK_STREAM, &tcp_port);
  auto udp = inet_socket("127.0.0.1", SOCK_DGRAM, &udp_port);
  const std::string path = dir / "ctl.sock";
  auto ctl = unix_socket(path);
  ASSERT_TRUE(tcp && udp && ctl);
  exit_status status;
  auto r =
      run_sd_listen_child({{tcp.get(), "web"}, {udp.get(), "dns"}, {ctl.get(), "ctl"}}, &status);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_TRUE(status.success()) << status.describe();
  ASSERT_TRUE(r.ok) << "sd_listen_fds_with_names: " << r.error;
  ASSERT_EQ(r.count, 3) << "libsystemd did not take LISTEN_PID=" << r.before["LISTEN_PID"]
                        << " for its pid " << r.pid;
  ASSERT_EQ(r.sockets.size(), 3u);

  EXPECT_EQ(r.sockets[0].name, "web");
  EXPECT_EQ(r.sockets[0].family, "ipv4");
  EXPECT_EQ(r.sockets[0].type, "stream");
  EXPECT_TRUE(r.sockets[0].listening);
  EXPECT_EQ(r.sockets[0].host, "127.0.0.1");
  EXPECT_EQ(r.sockets[0].port, tcp_port);
  EXPECT_TRUE(r.sockets[0].sd_match) << "sd_is_socket_inet() with the port";

  EXPECT_EQ(r.sockets[1].name, "dns");
  EXPECT_EQ(r.sockets[1].family, "ipv4");
  EXPECT_EQ(r.sockets[1].type, "datagram");
  EXPECT_FALSE(r.sockets[1].listening);
  EXPECT_EQ(r.sockets[1].port, udp_port);
  EXPECT_TRUE(r.sockets[1].sd_match);

  EXPECT_EQ(r.sockets[2].name, "ctl");
  EXPECT_EQ(r.sockets[2].family, "unix");
  EXPECT_EQ(r.sockets[2].type, "stream");
  EXPECT_TRUE(r.sockets[2].listening);
  EXPECT_EQ(r.sockets[2].host, path);
  EXPECT_TRUE(r.sockets[2].sd_match) << "sd_is_socket_unix() with the path";

  const std::string inos[] = {inode_of(tcp.get()), inode_of(udp.get()), inode_of(ctl.get())};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.sockets[i].fd, 3 + i);
    EXPECT_EQ(r.sockets[i].ino, inos[i]);
    EXPECT_TRUE(r.sockets[i].cloexec) << "libsystemd sets FD_CLOEXEC too";
  }
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_EQ(r.after["LISTEN_PID"], "-");
  EXPECT_EQ(r.after["LISTEN_FDS"], "-");
  EXPECT_EQ(r.after["LISTEN_FDNAMES"], "-");
}

TEST(InteropLibsystemdReceives, Ipv6Tcp) {
  if (!have_ipv6_loopback()) GTEST_SKIP() << "no IPv6 loopback here";
  int port = 0;
  auto tcp6 = inet_socket("::1", SOCK_STREAM, &port);
  ASSERT_TRUE(tcp6);
  auto r = run_sd_listen_child({{tcp6.get(), "web6"}});
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_EQ(r.sockets.size(), 1u) << r.error;
  EXPECT_EQ(r.sockets[0].name, "web6");
  EXPECT_EQ(r.sockets[0].family, "ipv6");
  EXPECT_EQ(r.sockets[0].type, "stream");
  EXPECT_TRUE(r.sockets[0].listening);
  EXPECT_EQ(r.sockets[0].host, "::1");
  EXPECT_EQ(r.sockets[0].port, port);
  EXPECT_TRUE(r.sockets[0].sd_match);
}

TEST(InteropLibsystemdReceives, UnnamedAndNonSocketFds) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd read_end(p[0]), write_end(p[1]);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  auto r = run_sd_listen_child({{read_end.get(), ""}, {a.get(), "pair"}});
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_EQ(r.sockets.size(), 2u) << r.error;
  EXPECT_EQ(r.sockets[0].name, "unknown") << "an empty name goes out as \"unknown\"";
  EXPECT_EQ(r.sockets[0].family, "none");
  EXPECT_EQ(r.sockets[1].family, "unix");
  EXPECT_EQ(r.sockets[1].type, "seqpacket");
}

TEST(InteropLibsystemdReceives, NothingPassedIsNothingReceived) {
  auto r = run_sd_listen_child({});
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.before["LISTEN_PID"], "-");
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2));
}

// A run of systemd-socket-activate with fd_report as the program it execs.
struct activation_run {
  pid_t pid = -1;
  std::string out, err;
  exit_status status;
  std::string failure;  // what went wrong in the harness; empty when nothing did
};

int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Starts systemd-socket-activate `args` -- fd_report, waits until it has logged "Listening on"
// `listening` times (it logs after listen(2): an event, not a guess), calls `trigger` (a
// connection or a datagram: the tool execs its program only on the first one), then reads
// fd_report's output to its end. `fds` are handed to the tool itself.
activation_run run_socket_activate(std::vector<std::string> args, int listening,
                                   const std::function<void()>& trigger,
                                   std::vector<passed_fd> fds = {}) {
  activation_run run;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    run.failure = "pipe2";
    return run;
  }
  unique_fd out_read(out[0]), out_write(out[1]), err_read(err[0]), err_write(err[1]);
  spawn_options options;
  options.argv = {socket_activate};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  options.argv.push_back("--");
  options.argv.push_back(fd_report_path);
  options.fds = std::move(fds);
  options.stdout_fd = out_write.get();
  options.stderr_fd = err_write.get();
  auto pid = spawn(options);
  out_write.reset();
  err_write.reset();
  if (!pid) {
    run.failure = pid.error().message();
    return run;
  }
  run.pid = *pid;
  child_guard guard(*pid);

  const auto deadline = std::chrono::steady_clock::now() + 10s;
  bool triggered = false, out_open = true, err_open = true;
  while (out_open || err_open) {
    if (!triggered && count_of(run.err, "Listening on") >= listening) {
      trigger();
      triggered = true;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      run.failure = "timed out; stderr so far: " + run.err;
      return run;
    }
    pollfd p[2] = {{out_open ? out_read.get() : -1, POLLIN, 0},
                   {err_open ? err_read.get() : -1, POLLIN, 0}};
    if (::poll(p, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) {
      run.failure = "poll";
      return run;
    }
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (p[i].revents == 0) continue;
      const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      (i == 0 ? run.out : run.err).append(buf, static_cast<std::size_t>(n));
    }
    if (!triggered && !err_open) break;  // the tool gave up before listening
  }
  auto status = wait_exit(*pid, 10s);
  if (!status) {
    run.failure = status.error().message();
    return run;
  }
  guard.release();
  run.status = *status;
  if (!triggered) run.failure = "never listened; stderr: " + run.err;
  return run;
}

// A port that was free a moment ago (systemd-socket-activate binds it itself).
int free_tcp_port(int type = SOCK_STREAM) {
  int port = 0;
  auto probe = inet_socket("127.0.0.1", type, &port);
  return probe ? port : 0;
}

void connect_to(const sockaddr* addr, socklen_t len, int family, std::vector<unique_fd>& keep) {
  unique_fd client(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  (void)::connect(client.get(), addr, len);
  keep.push_back(std::move(client));
}

void connect_unix(const std::string& path, std::vector<unique_fd>& keep) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof addr.sun_path - 1);
  connect_to(reinterpret_cast<sockaddr*>(&addr), sizeof addr, AF_UNIX, keep);
}

sockaddr_in loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

bool have_socket_activate() {
  spawn_options probe;
  probe.argv = {socket_activate, "--version"};
  int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  unique_fd null_out(null_fd);
  probe.stdout_fd = null_out.get();
  auto pid = spawn(probe);
  if (!pid) return false;
  auto status = wait_exit(*pid, 10s);
  return status && status->success();
}

class InteropSocketActivate : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_socket_activate())
      GTEST_SKIP() << socket_activate << " is not installed (Debian package systemd)";
  }
  temp_dir dir_;
  std::vector<unique_fd> clients_;
};

TEST_F(InteropSocketActivate, UnixAndTcpStreamsNamed) {
  const std::string path = dir_ / "a.sock";
  const int port = free_tcp_port();
  ASSERT_NE(port, 0);
  auto run =
      run_socket_activate({"-l", path, "-l", "127.0.0.1:" + std::to_string(port), "--fdname=a:b"},
                          2, [&] { connect_unix(path, clients_); });
  ASSERT_EQ(run.failure, "");
  EXPECT_TRUE(run.status.success()) << run.status.describe() << "\n" << run.err;
  auto r = parse_report(run.out);
  ASSERT_TRUE(r.complete) << run.out << run.err;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.pid, run.pid) << "the tool execs the program in its own process";
  EXPECT_EQ(r.before["LISTEN_PID"], std::to_string(run.pid));
  ASSERT_EQ(r.sockets.size(), 2u);

  EXPECT_EQ(r.sockets[0].fd, 3);
  EXPECT_EQ(r.sockets[0].name, "a");
  EXPECT_EQ(r.sockets[0].family, "unix");
  EXPECT_EQ(r.sockets[0].type, "stream");
  EXPECT_TRUE(r.sockets[0].listening);
  EXPECT_EQ(r.sockets[0].host, path);

  EXPECT_EQ(r.sockets[1].fd, 4);
  EXPECT_EQ(r.sockets[1].name, "b");
  EXPECT_EQ(r.sockets[1].family, "ipv4");
  EXPECT_EQ(r.sockets[1].type, "stream");
  EXPECT_TRUE(r.sockets[1].listening);
  EXPECT_EQ(r.sockets[1].host, "127.0.0.1");
  EXPECT_EQ(r.sockets[1].port, port);

  for (const auto& s : r.sockets) EXPECT_TRUE(s.cloexec) << "fd " << s.fd;
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(r.after["LISTEN_PID"], "-");
  EXPECT_EQ(r.after["LISTEN_FDS"], "-");
  EXPECT_EQ(r.after["LISTEN_FDNAMES"], "-");
}

TEST_F(InteropSocketActivate, DatagramSocketsWithOneNameForAll) {
  // --datagram makes every -l a datagram socket; a single --fdname is repeated for each fd.
  const std::string path = dir_ / "d.sock";
  const int port = free_tcp_port(SOCK_DGRAM);
  ASSERT_NE(port, 0);
  auto run = run_socket_activate(
      {"--datagram", "-l", "127.0.0.1:" + std::to_string(port), "-l", path, "--fdname=dgram"}, 2,
      [&] {
        unique_fd client(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        const sockaddr_in to = loopback(port);
        (void)::sendto(client.get(), "x", 1, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
      });
  ASSERT_EQ(run.failure, "");
  auto r = parse_report(run.out);
  ASSERT_TRUE(r.complete) << run.out << run.err;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.before["LISTEN_FDNAMES"], "dgram:dgram");
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].name, "dgram");
  EXPECT_EQ(r.sockets[0].family, "ipv4");
  EXPECT_EQ(r.sockets[0].type, "datagram");
  EXPECT_FALSE(r.sockets[0].listening);
  EXPECT_EQ(r.sockets[0].port, port);
  EXPECT_EQ(r.sockets[1].name, "dgram");
  EXPECT_EQ(r.sockets[1].family, "unix");
  EXPECT_EQ(r.sockets[1].type, "datagram");
  EXPECT_EQ(r.sockets[1].host, path);
}

TEST_F(InteropSocketActivate, WithoutNamesEveryFdIsUnknown) {
  const std::string path = dir_ / "n.sock";
  auto run = run_socket_activate({"-l", path}, 1, [&] { connect_unix(path, clients_); });
  ASSERT_EQ(run.failure, "");
  auto r = parse_report(run.out);
  ASSERT_TRUE(r.complete) << run.out << run.err;
  EXPECT_EQ(r.before["LISTEN_FDNAMES"], "-") << "the tool sets no LISTEN_FDNAMES then";
  ASSERT_EQ(r.sockets.size(), 1u) << r.error;
  EXPECT_EQ(r.sockets[0].name, "unknown");
}

TEST_F(InteropSocketActivate, PassesOurSocketsThroughToOurReceiver) {
  // spawn() -> systemd-socket-activate (libsystemd's sd_listen_fds() takes our fd 3, which
  // needs the LISTEN_PID our child wrote for itself) -> fd_report (our listen_fds()).
  int port = 0;
  auto ours = inet_socket("127.0.0.1", SOCK_STREAM, &port);
  ASSERT_TRUE(ours);
  const std::string path = dir_ / "t.sock";
  auto run = run_socket_activate({"-l", path, "--fdname=ours:theirs"}, 2,
                                 [&] {
                                   const sockaddr_in to = loopback(port);
                                   connect_to(reinterpret_cast<const sockaddr*>(&to), sizeof to,
                                              AF_INET, clients_);
                                 },
                                 {{ours.get(), "ignored-by-the-tool"}});
  ASSERT_EQ(run.failure, "");
  EXPECT_THAT(run.err, HasSubstr("Received 1 descriptors via the environment"));
  auto r = parse_report(run.out);
  ASSERT_TRUE(r.complete) << run.out << run.err;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].name, "ours");
  EXPECT_EQ(r.sockets[0].ino, inode_of(ours.get())) << "the very socket we handed on";
  EXPECT_EQ(r.sockets[0].port, port);
  EXPECT_TRUE(r.sockets[0].listening);
  EXPECT_EQ(r.sockets[1].name, "theirs");
  EXPECT_EQ(r.sockets[1].family, "unix");
  EXPECT_EQ(r.sockets[1].host, path);
}

}  // namespace
}  // namespace handoff::test
