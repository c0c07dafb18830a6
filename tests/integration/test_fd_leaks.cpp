// Leaks as users would notice them: /proc/self/fd counted before and after many spawns, waits
// and failures; what a child sees (exactly stdio and the fds handed on, even when this process
// holds inheritable fds); and no zombie left behind.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "handoff/activation.hpp"
#include "handoff/spawn.hpp"
#include "integration/fd_report_parse.hpp"
#include "test_support.hpp"

namespace handoff::test {
namespace {

using ::testing::ElementsAre;
using namespace std::chrono_literals;

const std::string fd_report_path = HANDOFF_FD_REPORT;

TEST(FdLeaks, ManySpawnsWithFdsLeaveTheFdCountUnchanged) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  const auto before = open_fds();
  for (int i = 0; i < 30; ++i) {
    spawn_options options;
    options.argv = {fd_report_path};
    options.fds = {{a.get(), "a"}, {b.get(), "b"}};
    auto out = run_and_capture(options);
    ASSERT_TRUE(out) << out.error().message();
    ASSERT_TRUE(out->status.success()) << out->status.describe();
  }
  EXPECT_EQ(open_fds(), before);
  EXPECT_TRUE(no_children_left());
}

TEST(FdLeaks, SpawnAndWaitLeaveNothingBehind) {
  const auto before = open_fds();
  for (int i = 0; i < 50; ++i) {
    spawn_options options;
    options.argv = {"true"};
    auto pid = spawn(options);
    ASSERT_TRUE(pid) << pid.error().message();
    auto status = wait_exit(*pid, 20s);
    ASSERT_TRUE(status) << status.error().message();
    EXPECT_TRUE(status->success());
  }
  EXPECT_EQ(open_fds(), before);
  EXPECT_TRUE(no_children_left());
}

TEST(FdLeaks, WaitTimeoutsLeaveNothingBehind) {
  spawn_options options;
  options.argv = {"sleep", "30"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  child_guard guard(*pid);
  const auto before = open_fds();
  for (int i = 0; i < 20; ++i) {
    auto status = wait_exit(*pid, 1ms);
    ASSERT_FALSE(status);
    EXPECT_TRUE(status.error() == errc::timed_out) << status.error().message();
  }
  EXPECT_EQ(open_fds(), before) << "a pidfd left open by a timed-out wait";
  ASSERT_EQ(::kill(*pid, SIGKILL), 0);
  ASSERT_TRUE(wait_exit(*pid, 20s));
  guard.release();
  EXPECT_EQ(open_fds(), before);
  EXPECT_TRUE(no_children_left());
}

TEST(FdLeaks, FailedExecsLeaveNothingBehind) {
  temp_dir dir;
  const std::string not_executable = dir / "data";
  std::ofstream(not_executable) << "data\n";
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  const auto before = open_fds();
  for (int i = 0; i < 20; ++i) {
    spawn_options missing;
    missing.argv = {"/no/such/file"};
    missing.fds = {{a.get(), "a"}};
    EXPECT_FALSE(spawn(missing));
    spawn_options denied;
    denied.argv = {not_executable};
    denied.fds = {{a.get(), "a"}, {b.get(), "b"}};
    EXPECT_FALSE(spawn(denied));
    spawn_options bad_dir;
    bad_dir.argv = {fd_report_path};
    bad_dir.working_directory = dir / "missing";
    EXPECT_FALSE(spawn(bad_dir));
    spawn_options bad_name;
    bad_name.argv = {fd_report_path};
    bad_name.fds = {{a.get(), "no:colons"}};
    EXPECT_FALSE(spawn(bad_name));
    spawn_options not_in_path;
    not_in_path.argv = {"handoff-test-no-such-program"};
    EXPECT_FALSE(spawn(not_in_path));
  }
  EXPECT_EQ(open_fds(), before);
  EXPECT_TRUE(no_children_left()) << "a child that failed to exec was not reaped";
}

TEST(FdLeaks, ChildSeesOnlyStdioAndThePassedFds) {
  // Inheritable fds in this process, as careless code (or a library) leaves them: none of
  // them may reach the child.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);  // NOLINT(android-cloexec-pipe)
  unique_fd pipe_read(p[0]), pipe_write(p[1]);
  unique_fd raw_socket(::socket(AF_INET, SOCK_STREAM, 0));  // NOLINT(android-cloexec-socket)
  unique_fd dev_null(::open("/dev/null", O_RDONLY));        // NOLINT(android-cloexec-open)
  unique_fd high(::fcntl(dev_null.get(), F_DUPFD, 900));
  ASSERT_TRUE(pipe_read && raw_socket && dev_null && high);
  for (int fd : {pipe_read.get(), pipe_write.get(), raw_socket.get(), high.get()})
    ASSERT_FALSE(has_cloexec(fd));

  int tcp_port = 0;
  auto tcp = inet_socket("127.0.0.1", SOCK_STREAM, &tcp_port);
  auto udp = inet_socket("127.0.0.1", SOCK_DGRAM);
  ASSERT_TRUE(tcp && udp);
  spawn_options options;
  options.argv = {fd_report_path};
  options.fds = {{tcp.get(), "tcp"}, {udp.get(), "udp"}};
  auto out = run_and_capture(options);
  ASSERT_TRUE(out) << out.error().message();
  auto r = parse_report(out->out);
  ASSERT_TRUE(r.complete) << out->out;
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4));

  options.fds.clear();
  out = run_and_capture(options);
  ASSERT_TRUE(out) << out.error().message();
  r = parse_report(out->out);
  ASSERT_TRUE(r.complete) << out->out;
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2));
}

TEST(FdLeaks, ReceiverOpensNothingForItself) {
  // fd_report's listen_fds() (with inspect_socket on each fd) adds no fd of its own: what it
  // lists is what it received.
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  spawn_options options;
  options.argv = {fd_report_path};
  for (int i = 0; i < 8; ++i) options.fds.push_back({i % 2 == 0 ? a.get() : b.get(), ""});
  auto out = run_and_capture(options);
  ASSERT_TRUE(out) << out.error().message();
  auto r = parse_report(out->out);
  ASSERT_TRUE(r.complete) << out->out;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.count, 8);
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
  for (const auto& o : r.open) {
    if (o.fd >= 3) {
      EXPECT_TRUE(o.cloexec) << "fd " << o.fd;
    }
  }
}

TEST(FdLeaks, ListenFdsErrorsLeaveTheFdCountUnchanged) {
  const auto before = open_fds();
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(listen_fds(listen_environment{"4242", "3x", std::nullopt}, 4242));
    EXPECT_FALSE(listen_fds(listen_environment{"4242", "1", "a:b"}, 4242));
    auto not_for_us = listen_fds(listen_environment{"4243", "1", "a"}, 4242);
    ASSERT_TRUE(not_for_us);
    EXPECT_TRUE(not_for_us->empty());
  }
  EXPECT_EQ(open_fds(), before);
}

}  // namespace
}  // namespace handoff::test
