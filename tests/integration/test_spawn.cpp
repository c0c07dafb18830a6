// spawn() and wait_exit() with real children: fd_report receives what we hand on and says what
// it got (fds, names, kinds, LISTEN_PID, close-on-exec, environment, signals, group, cwd).
// Also the receiving side in a real child: fd_report's listen_fds() on good and bad variables.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "handoff/activation.hpp"
#include "handoff/spawn.hpp"
#include "integration/fd_report_parse.hpp"
#include "test_support.hpp"

namespace handoff::test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using namespace std::chrono_literals;

const std::string fd_report_path = HANDOFF_FD_REPORT;

spawn_options report_options(std::vector<passed_fd> fds = {}) {
  spawn_options options;
  options.argv = {fd_report_path};
  options.fds = std::move(fds);
  return options;
}

// An environment variable of this process, restored afterwards.
class scoped_env {
 public:
  scoped_env(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~scoped_env() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(Spawn, HandsOnNamedSocketsFromFdThree) {
  temp_dir dir;
  int tcp_port = 0, udp_port = 0;
  auto tcp = inet_socket("127.0.0.1", SOCK_STREAM, &tcp_port);
  auto udp = inet_socket("127.0.0.1", SOCK_DGRAM, &udp_port);
  const std::string path = dir / "ctl.sock";
  auto ctl = unix_socket(path);
  ASSERT_TRUE(tcp && udp && ctl);

  exit_status status;
  auto r = run_report(report_options({{tcp.get(), "http"}, {udp.get(), "dns"}, {ctl.get(), "ctl"}}),
                      &status);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_TRUE(status.success()) << status.describe();
  ASSERT_TRUE(r.ok) << r.error;
  // What the child found: LISTEN_PID was its own pid, written after the fork.
  EXPECT_EQ(r.before["LISTEN_PID"], std::to_string(r.pid));
  EXPECT_EQ(r.before["LISTEN_FDS"], "3");
  EXPECT_EQ(r.before["LISTEN_FDNAMES"], "http:dns:ctl");
  ASSERT_EQ(r.sockets.size(), 3u);

  const auto& http = r.sockets[0];
  EXPECT_EQ(http.fd, 3);
  EXPECT_EQ(http.name, "http");
  EXPECT_EQ(http.family, "ipv4");
  EXPECT_EQ(http.type, "stream");
  EXPECT_TRUE(http.listening);
  EXPECT_EQ(http.host, "127.0.0.1");
  EXPECT_EQ(http.port, tcp_port);
  EXPECT_EQ(http.ino, inode_of(tcp.get()));
  EXPECT_TRUE(http.cloexec) << "the receiver must make its fds close-on-exec";

  const auto& dns = r.sockets[1];
  EXPECT_EQ(dns.fd, 4);
  EXPECT_EQ(dns.name, "dns");
  EXPECT_EQ(dns.family, "ipv4");
  EXPECT_EQ(dns.type, "datagram");
  EXPECT_FALSE(dns.listening);
  EXPECT_EQ(dns.port, udp_port);
  EXPECT_EQ(dns.ino, inode_of(udp.get()));
  EXPECT_TRUE(dns.cloexec);

  const auto& unix_ctl = r.sockets[2];
  EXPECT_EQ(unix_ctl.fd, 5);
  EXPECT_EQ(unix_ctl.name, "ctl");
  EXPECT_EQ(unix_ctl.family, "unix");
  EXPECT_EQ(unix_ctl.type, "stream");
  EXPECT_TRUE(unix_ctl.listening);
  EXPECT_EQ(unix_ctl.host, path);
  EXPECT_EQ(unix_ctl.ino, inode_of(ctl.get()));
  EXPECT_TRUE(unix_ctl.cloexec);

  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_EQ(r.after["LISTEN_PID"], "-") << "listen_fds() unsets LISTEN_* by default";
  EXPECT_EQ(r.after["LISTEN_FDS"], "-");
  EXPECT_EQ(r.after["LISTEN_FDNAMES"], "-");
  // The parent keeps its fds, still close-on-exec.
  for (int fd : {tcp.get(), udp.get(), ctl.get()}) {
    EXPECT_TRUE(fd_is_open(fd));
    EXPECT_TRUE(has_cloexec(fd));
  }
}

TEST(Spawn, EmptyNameIsSentAsUnknown) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  auto r = run_report(report_options({{a.get(), ""}, {b.get(), "b"}}));
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.before["LISTEN_FDNAMES"], "unknown:b");
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].name, "unknown");
  EXPECT_EQ(r.sockets[1].name, "b");
}

TEST(Spawn, NonSocketFdsArePassedToo) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd read_end(p[0]), write_end(p[1]);
  auto r = run_report(report_options({{read_end.get(), "fifo"}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 1u);
  EXPECT_EQ(r.sockets[0].family, "none");
  EXPECT_EQ(r.sockets[0].ino, inode_of(read_end.get()));
}

TEST(Spawn, RejectsInvalidNamesBeforeForking) {
  unique_fd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  for (const std::string& name :
       {std::string("a:b"), std::string(256, 'x'), std::string("tab\there"),
        std::string("new\nline"), std::string("caf\xc3\xa9")}) {
    auto pid = spawn(report_options({{sock.get(), name}}));
    ASSERT_FALSE(pid) << "accepted the name \"" << name << "\"";
    EXPECT_TRUE(pid.error() == errc::invalid_environment) << pid.error().message();
    EXPECT_THAT(pid.error().message(), HasSubstr("fd name"));
    EXPECT_TRUE(no_children_left()) << "forked although the name is invalid";
  }
  // The longest valid name passes.
  auto r = run_report(report_options({{sock.get(), std::string(255, 'x')}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_EQ(r.sockets.size(), 1u);
  EXPECT_EQ(r.sockets[0].name, std::string(255, 'x'));
  // '=' is allowed, as systemd's fdname_is_valid() allows it.
  auto eq = run_report(report_options({{sock.get(), "a=b"}}));
  ASSERT_TRUE(eq.complete) << eq.error;
  EXPECT_EQ(eq.sockets.at(0).name, "a=b");
}

TEST(Spawn, RejectsFdsThatAreNotOpen) {
  unique_fd closed(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int number = closed.get();
  closed.reset();
  auto pid = spawn(report_options({{number, "gone"}}));
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().code(), std::errc::bad_file_descriptor) << pid.error().message();
  EXPECT_THAT(pid.error().message(), HasSubstr("fd " + std::to_string(number)));
  spawn_options bad_stdout = report_options();
  bad_stdout.stdout_fd = number;
  pid = spawn(bad_stdout);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().code(), std::errc::bad_file_descriptor) << pid.error().message();
  EXPECT_TRUE(no_children_left());
}

// Sockets that sit on the target numbers 3.. themselves: spawn must not clobber a source it
// still needs when it dup2()s another onto it.
class SpawnClobbering : public ::testing::Test {
 protected:
  // `n` listening unix-domain socket pairs' first ends, lifted above the target range.
  void make(int n) {
    for (int i = 0; i < n; ++i) {
      int pair[2];
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
      ::close(pair[1]);
      sockets_.push_back(lifted(unique_fd(pair[0])));
      ASSERT_TRUE(sockets_.back());
    }
  }
  // Puts sockets_[i] on fd `target`.
  void place(int i, int target) {
    leases_.push_back(std::make_unique<fd_lease>(sockets_.at(i).get(), target));
    ASSERT_TRUE(leases_.back()->ok()) << "could not place a socket on fd " << target;
  }
  std::string ino(int i) { return inode_of(sockets_.at(i).get()); }

  std::vector<unique_fd> sockets_;
  std::vector<std::unique_ptr<fd_lease>> leases_;
};

TEST_F(SpawnClobbering, SwapsFdsThreeAndFour) {
  make(2);
  place(0, 3);  // A on 3
  place(1, 4);  // B on 4
  auto r = run_report(report_options({{4, "b"}, {3, "a"}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].fd, 3);
  EXPECT_EQ(r.sockets[0].name, "b");
  EXPECT_EQ(r.sockets[0].ino, ino(1)) << "fd 3 must be the parent's fd 4";
  EXPECT_EQ(r.sockets[1].fd, 4);
  EXPECT_EQ(r.sockets[1].name, "a");
  EXPECT_EQ(r.sockets[1].ino, ino(0)) << "fd 4 must be the parent's fd 3";
  // The parent's fds are untouched.
  EXPECT_EQ(inode_of(3), ino(0));
  EXPECT_EQ(inode_of(4), ino(1));
  EXPECT_TRUE(has_cloexec(3) && has_cloexec(4));
}

TEST_F(SpawnClobbering, SourceEqualToTargetSurvivesTheExec) {
  make(2);
  place(0, 3);
  place(1, 4);
  ASSERT_TRUE(has_cloexec(3) && has_cloexec(4));
  auto r = run_report(report_options({{3, "three"}, {4, "four"}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].ino, ino(0));
  EXPECT_EQ(r.sockets[1].ino, ino(1));
  EXPECT_TRUE(has_cloexec(3) && has_cloexec(4)) << "the parent's flags must not change";
}

TEST_F(SpawnClobbering, RotatesThreeFds) {
  make(3);
  place(0, 3);
  place(1, 4);
  place(2, 5);
  auto r = run_report(report_options({{5, "c"}, {3, "a"}, {4, "b"}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_EQ(r.sockets.size(), 3u);
  EXPECT_EQ(r.sockets[0].ino, ino(2));
  EXPECT_EQ(r.sockets[1].ino, ino(0));
  EXPECT_EQ(r.sockets[2].ino, ino(1));
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4, 5));
}

TEST_F(SpawnClobbering, TwentyFdsReversed) {
  constexpr int n = 20;
  make(n);
  std::vector<passed_fd> fds;
  for (int i = 0; i < n; ++i) place(i, 3 + i);
  for (int i = 0; i < n; ++i) fds.push_back({3 + n - 1 - i, "s" + std::to_string(n - 1 - i)});
  auto r = run_report(report_options(fds));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), static_cast<std::size_t>(n));
  std::vector<int> expected_open{0, 1, 2};
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(r.sockets[i].fd, 3 + i);
    EXPECT_EQ(r.sockets[i].name, "s" + std::to_string(n - 1 - i));
    EXPECT_EQ(r.sockets[i].ino, ino(n - 1 - i)) << "child fd " << 3 + i;
    EXPECT_TRUE(r.sockets[i].cloexec);
    expected_open.push_back(3 + i);
  }
  EXPECT_EQ(r.open_fd_numbers(), expected_open);
}

TEST_F(SpawnClobbering, SameFdTwice) {
  make(1);
  auto r = run_report(report_options({{sockets_[0].get(), "x"}, {sockets_[0].get(), "y"}}));
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_EQ(r.sockets.size(), 2u);
  EXPECT_EQ(r.sockets[0].ino, ino(0));
  EXPECT_EQ(r.sockets[1].ino, ino(0));
  EXPECT_EQ(r.sockets[1].name, "y");
}

TEST_F(SpawnClobbering, StdioFdsAsSources) {
  // The parent's own 0, 1 and 2 handed on as sockets 3, 4, 5 of the child, while the child's
  // stdin is replaced by a socket and its stdout by run_and_capture's pipe.
  for (int fd = 0; fd <= 2; ++fd)
    if (!fd_is_open(fd)) GTEST_SKIP() << "fd " << fd << " of the test process is closed";
  make(1);
  const std::string in0 = inode_of(0), in1 = inode_of(1), in2 = inode_of(2);
  auto options = report_options({{0, "zero"}, {1, "one"}, {2, "two"}});
  options.stdin_fd = sockets_[0].get();
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 3u);
  EXPECT_EQ(r.sockets[0].ino, in0);
  EXPECT_EQ(r.sockets[1].ino, in1);
  EXPECT_EQ(r.sockets[2].ino, in2);
  ASSERT_NE(r.find_open(0), nullptr);
  EXPECT_EQ(r.find_open(0)->ino, ino(0)) << "stdin_fd goes onto the child's fd 0";
  ASSERT_NE(r.find_open(2), nullptr);
  EXPECT_EQ(r.find_open(2)->ino, in2) << "stderr is inherited";
  EXPECT_FALSE(r.find_open(0)->cloexec);
}

TEST_F(SpawnClobbering, StdioReplacementsFromTheTargetRange) {
  // stdin_fd and stderr_fd are numbers that passed fds land on: they must still reach 0 and 2.
  make(3);
  place(0, 3);
  place(1, 4);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd read_end(p[0]), write_end(p[1]);
  fd_lease pipe_on_five(write_end.get(), 5);
  ASSERT_TRUE(pipe_on_five.ok());
  auto options = report_options({{4, "b"}, {3, "a"}, {sockets_[2].get(), "c"}});
  options.stdin_fd = 3;   // socket A goes to the child's 0 (and to its 4)
  options.stderr_fd = 5;  // the pipe goes to the child's 2, while socket C lands on 5
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.sockets.size(), 3u);
  EXPECT_EQ(r.sockets[0].ino, ino(1));
  EXPECT_EQ(r.sockets[1].ino, ino(0));
  EXPECT_EQ(r.sockets[2].ino, ino(2));
  ASSERT_TRUE(r.find_open(0) && r.find_open(2));
  EXPECT_EQ(r.find_open(0)->ino, ino(0));
  EXPECT_EQ(r.find_open(2)->ino, inode_of(read_end.get()));
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2, 3, 4, 5));
}

TEST(SpawnErrors, MissingFile) {
  spawn_options options;
  options.argv = {"/no/such/file"};
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "exec /no/such/file: No such file or directory");
  EXPECT_EQ(pid.error().code(), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(no_children_left());
}

TEST(SpawnErrors, NameNotInPath) {
  spawn_options options;
  options.argv = {"handoff-test-no-such-program"};
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "exec handoff-test-no-such-program: No such file or directory");
  EXPECT_TRUE(no_children_left());
}

TEST(SpawnErrors, FileNotExecutable) {
  temp_dir dir;
  const std::string path = dir / "not-executable";
  std::ofstream(path) << "#!/bin/sh\nexit 0\n";
  ::chmod(path.c_str(), 0644);
  spawn_options options;
  options.argv = {path};
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "exec " + path + ": Permission denied");
  EXPECT_TRUE(no_children_left()) << "the failed child must be reaped";
  options.argv = {dir.path().string()};  // a directory
  pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().code(), std::errc::permission_denied) << pid.error().message();
  EXPECT_TRUE(no_children_left());
}

TEST(SpawnErrors, MissingInterpreter) {
  temp_dir dir;
  const std::string path = dir / "script";
  std::ofstream(path) << "#!/no/such/interpreter\n";
  ::chmod(path.c_str(), 0755);
  spawn_options options;
  options.argv = {path};
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "exec " + path + ": No such file or directory");
  EXPECT_TRUE(no_children_left());
}

TEST(SpawnErrors, MissingWorkingDirectory) {
  spawn_options options = report_options();
  options.working_directory = "/no/such/dir";
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "chdir /no/such/dir: No such file or directory");
  EXPECT_TRUE(no_children_left());
}

TEST(SpawnErrors, EmptyArgv) {
  auto pid = spawn(spawn_options{});
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().code(), std::errc::invalid_argument);
}

TEST(SpawnPath, LooksTheProgramUpInPathSkippingWhatCannotRun) {
  temp_dir dir;
  std::filesystem::create_directory(dir / "first");
  std::filesystem::create_directory(dir / "second");
  std::ofstream(dir / "first/fdrep") << "not a program\n";  // same name, not executable
  std::filesystem::create_symlink(fd_report_path, dir / "second/fdrep");
  const char* old = std::getenv("PATH");
  scoped_env path("PATH", dir / "first" + ":" + (dir / "second") + ":" + (old ? old : ""));
  spawn_options options;
  options.argv = {"fdrep"};
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_TRUE(r.ok);

  // Only the one that cannot run: the error is the reason it cannot, as execvp(3) reports.
  scoped_env only_first("PATH", dir / "first");
  auto pid = spawn(options);
  ASSERT_FALSE(pid);
  EXPECT_EQ(pid.error().message(), "exec fdrep: Permission denied");
}

TEST(SpawnPath, RunsSystemPrograms) {
  spawn_options options;
  options.argv = {"sh", "-c", "exit 7"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  auto status = wait_exit(*pid, 20s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_TRUE(status->exited);
  EXPECT_EQ(status->code, 7);
  EXPECT_FALSE(status->success());
  EXPECT_EQ(status->describe(), "exited with status 7");
}

// A parent that raised its own soft RLIMIT_NOFILE hands the child the one it asks for (the
// supervisor: the soft limit it was started with); the hard limit stays the parent's.
TEST(SpawnLimits, TheChildGetsTheSoftOpenFilesLimitAsked) {
  rlimit mine{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &mine), 0);
  ASSERT_GE(mine.rlim_cur, 100U);
  spawn_options options;
  // The shell's exit status says what it saw: 0 when its soft limit is 100 and its hard one ours.
  options.argv = {"sh", "-c", "test \"$(ulimit -Sn)\" = 100 && test \"$(ulimit -Hn)\" = \"$1\"",
                  "sh",
                  mine.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(mine.rlim_max)};
  options.open_files_soft_limit = 100;
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  auto status = wait_exit(*pid, 20s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_TRUE(status->success()) << status->describe();
  // Ours is untouched.
  rlimit after{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &after), 0);
  EXPECT_EQ(after.rlim_cur, mine.rlim_cur);
}

TEST(SpawnEnvironment, ChildEnvironmentReplacesAndRemoves) {
  spawn_options options;
  options.environment = std::vector<std::string>{"A=1",
                                                 "B=2",
                                                 "LISTEN_PID=1",
                                                 "LISTEN_FDS=9",
                                                 "LISTEN_FDNAMES=zz",
                                                 "NOTIFY_SOCKET=/old",
                                                 "B=duplicate",
                                                 "EMPTY="};
  options.extra_environment = {"B=3", "C=4", "LISTEN_FDS=7", "EMPTY=now"};
  options.notify_socket = "/run/n.sock";
  EXPECT_THAT(child_environment(options),
              ElementsAre("A=1", "B=3", "NOTIFY_SOCKET=/run/n.sock", "EMPTY=now", "C=4"));
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  options.fds = {{a.get(), "x"}, {b.get(), ""}};
  EXPECT_THAT(child_environment(options),
              ElementsAre("A=1", "B=3", "NOTIFY_SOCKET=/run/n.sock", "EMPTY=now", "C=4",
                          "LISTEN_FDS=2", "LISTEN_FDNAMES=x:unknown"));
}

TEST(SpawnEnvironment, TheChildGetsExactlyThatEnvironment) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  unique_fd a(pair[0]), b(pair[1]);
  auto options = report_options({{a.get(), "x"}});
  options.environment = std::vector<std::string>{"A=1", "B=2", "LISTEN_FDS=9"};
  options.extra_environment = {"B=3"};
  options.notify_socket = "@notify";
  options.argv.push_back("--keep-env");
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_THAT(r.env,
              UnorderedElementsAre("A=1", "B=3", "NOTIFY_SOCKET=@notify", "LISTEN_FDS=1",
                                   "LISTEN_FDNAMES=x", "LISTEN_PID=" + std::to_string(r.pid)));
}

TEST(SpawnEnvironment, InheritsThisProcessEnvironmentButNotItsListenVariables) {
  scoped_env marker("HANDOFF_TEST_MARKER", "here");
  scoped_env pid("LISTEN_PID", std::to_string(::getpid()));
  scoped_env fds("LISTEN_FDS", "5");
  scoped_env names("LISTEN_FDNAMES", "a:b:c:d:e");
  auto r = run_report(report_options());
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.env_value("HANDOFF_TEST_MARKER"), "here");
  EXPECT_EQ(r.before["LISTEN_PID"], "-");
  EXPECT_EQ(r.before["LISTEN_FDS"], "-");
  EXPECT_EQ(r.before["LISTEN_FDNAMES"], "-");
  EXPECT_THAT(r.open_fd_numbers(), ElementsAre(0, 1, 2));
}

// Blocks and ignores signals in this process for the test's duration.
class signal_state_guard {
 public:
  signal_state_guard() {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    ::pthread_sigmask(SIG_BLOCK, &block, &old_mask_);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGINT, &ignore, &old_int_);
    ::sigaction(SIGHUP, &ignore, &old_hup_);
  }
  ~signal_state_guard() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGHUP, &old_hup_, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  signal_state_guard(const signal_state_guard&) = delete;
  signal_state_guard& operator=(const signal_state_guard&) = delete;

 private:
  sigset_t old_mask_;
  struct sigaction old_int_ {
  }, old_hup_{};
};

TEST(SpawnSignals, TheChildStartsWithNothingBlockedOrIgnored) {
  signal_state_guard guard;
  auto r = run_report(report_options());
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.signals_blocked, "0000000000000000");
  EXPECT_EQ(r.signals_ignored, "0000000000000000");
}

TEST(SpawnSignals, ChildDiesOfSigtermThatTheParentBlocks) {
  signal_state_guard guard;
  spawn_options options;
  options.argv = {"sleep", "30"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  child_guard guard_child(*pid);
  // spawn() returns after the exec: SIGTERM now meets sleep's own (default) disposition.
  ASSERT_EQ(::kill(*pid, SIGTERM), 0);
  auto status = wait_exit(*pid, 10s);
  ASSERT_TRUE(status) << status.error().message();
  guard_child.release();
  EXPECT_FALSE(status->exited);
  EXPECT_EQ(status->signal, SIGTERM);
  EXPECT_EQ(status->describe(), "killed by signal 15 (Terminated)");
}

TEST(SpawnSignals, ChildDiesOfSigintThatTheParentIgnores) {
  signal_state_guard guard;
  spawn_options options;
  options.argv = {"sleep", "30"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  child_guard guard_child(*pid);
  ASSERT_EQ(::kill(*pid, SIGINT), 0);
  auto status = wait_exit(*pid, 10s);
  ASSERT_TRUE(status) << status.error().message();
  guard_child.release();
  EXPECT_EQ(status->signal, SIGINT);
}

TEST(SpawnProcessGroup, NewGroupLedByTheChild) {
  auto options = report_options();
  options.group = process_group::new_group;
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.pgid, r.pid);
}

TEST(SpawnProcessGroup, InheritedByDefault) {
  auto r = run_report(report_options());
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.pgid, ::getpgrp());
  EXPECT_NE(r.pgid, r.pid);
}

TEST(SpawnWorkingDirectory, ChangesIntoIt) {
  temp_dir dir;
  auto options = report_options();
  options.working_directory = dir.path().string();
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.cwd, std::filesystem::canonical(dir.path()).string());
}

TEST(SpawnWorkingDirectory, RelativeProgramIsFoundFromOurDirectory) {
  temp_dir here, there;
  std::filesystem::create_symlink(fd_report_path, here / "fdrep");
  const auto old = std::filesystem::current_path();
  std::filesystem::current_path(here.path());
  auto options = report_options();
  options.argv = {"./fdrep"};
  options.working_directory = there.path().string();
  auto r = run_report(options);
  std::filesystem::current_path(old);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_EQ(r.cwd, std::filesystem::canonical(there.path()).string());
}

TEST(WaitExit, TimesOutAndLeavesTheChildAlone) {
  spawn_options options;
  options.argv = {"sleep", "30"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  child_guard guard_child(*pid);
  const auto start = std::chrono::steady_clock::now();
  auto status = wait_exit(*pid, 50ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(status);
  EXPECT_TRUE(status.error() == errc::timed_out) << status.error().message();
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 10s);
  int raw = 0;
  EXPECT_EQ(::waitpid(*pid, &raw, WNOHANG), 0) << "still running, not reaped";
  status = wait_exit(*pid, 0ms);
  EXPECT_FALSE(status) << "a zero timeout only looks";
  ASSERT_EQ(::kill(*pid, SIGKILL), 0);
  status = wait_exit(*pid, 20s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(status->signal, SIGKILL);
  guard_child.release();
  EXPECT_EQ(status->describe(), "killed by signal 9 (Killed)");
  EXPECT_TRUE(no_children_left());
}

TEST(WaitExit, ErrorsForWhatIsNotAChild) {
  EXPECT_FALSE(wait_exit(0, 10ms));
  EXPECT_FALSE(wait_exit(-1, 10ms));
  spawn_options options;
  options.argv = {"true"};
  auto pid = spawn(options);
  ASSERT_TRUE(pid) << pid.error().message();
  auto status = wait_exit(*pid, 20s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_TRUE(status->success());
  auto again = wait_exit(*pid, 10ms);
  EXPECT_FALSE(again) << "the child was reaped already";
}

TEST(ExitStatus, Describe) {
  EXPECT_EQ((exit_status{true, 0, 0}).describe(), "exited with status 0");
  EXPECT_EQ((exit_status{true, 127, 0}).describe(), "exited with status 127");
  EXPECT_EQ((exit_status{false, 0, SIGSEGV}).describe(),
            "killed by signal 11 (Segmentation fault)");
  EXPECT_THAT((exit_status{false, 0, SIGRTMIN + 2}).describe(),
              HasSubstr("killed by signal " + std::to_string(SIGRTMIN + 2)));
}

// The receiving side in a real child, with LISTEN_* that a shell rewrites before it execs
// fd_report (so LISTEN_PID can name the receiver, as it must, and the rest can be wrong).
child_report run_shell_report(const std::string& exports, std::vector<passed_fd> fds,
                              exit_status* status) {
  spawn_options options;
  options.argv = {"/bin/sh", "-c", exports + "; exec \"$0\"", fd_report_path};
  options.fds = std::move(fds);
  return run_report(options, status);
}

class Receiver : public ::testing::Test {
 protected:
  void SetUp() override {
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    a_.reset(pair[0]);
    b_.reset(pair[1]);
  }
  unique_fd a_, b_;
};

TEST_F(Receiver, MakesFdsCloseOnExecEvenWhenTheNamesAreWrong) {
  exit_status status;
  auto r = run_shell_report("export LISTEN_PID=$$ LISTEN_FDNAMES=one",
                            {{a_.get(), "a"}, {b_.get(), "b"}}, &status);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(status.code, 1);
  EXPECT_EQ(r.error, "LISTEN_FDNAMES=\"one\" has 1 name but LISTEN_FDS=\"2\" passes 2 fds");
  for (int fd : {3, 4}) {
    ASSERT_NE(r.find_open(fd), nullptr) << fd;
    EXPECT_TRUE(r.find_open(fd)->cloexec) << "fd " << fd << " would leak into our children";
  }
  EXPECT_EQ(r.after["LISTEN_PID"], "-");
  EXPECT_EQ(r.after["LISTEN_FDS"], "-");
  EXPECT_EQ(r.after["LISTEN_FDNAMES"], "-");
}

TEST_F(Receiver, ReportsAMissingFdAfterMakingTheOthersCloseOnExec) {
  exit_status status;
  auto r = run_shell_report("export LISTEN_PID=$$ LISTEN_FDS=3 LISTEN_FDNAMES=a:b:c",
                            {{a_.get(), "a"}, {b_.get(), "b"}}, &status);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.error, HasSubstr("LISTEN_FDS=\"3\": fd 5 is not open"));
  EXPECT_TRUE(r.find_open(3) && r.find_open(3)->cloexec);
  EXPECT_TRUE(r.find_open(4) && r.find_open(4)->cloexec);
}

TEST_F(Receiver, LeavesFdsForAnotherProcessAlone) {
  exit_status status;
  auto r = run_shell_report("export LISTEN_PID=1", {{a_.get(), "a"}, {b_.get(), "b"}}, &status);
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.count, 0);
  EXPECT_TRUE(status.success());
  // Not ours: not taken, not touched (as libsystemd), but the variables are gone.
  ASSERT_TRUE(r.find_open(3) && r.find_open(4));
  EXPECT_FALSE(r.find_open(3)->cloexec);
  EXPECT_EQ(r.after["LISTEN_PID"], "-");
}

TEST_F(Receiver, RejectsAMalformedCount) {
  exit_status status;
  auto r = run_shell_report("export LISTEN_PID=$$ LISTEN_FDS=2x", {{a_.get(), "a"}}, &status);
  ASSERT_TRUE(r.complete) << r.error;
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "LISTEN_FDS=\"2x\": not a number (expected the count of fds passed from fd 3 on)");
  EXPECT_EQ(status.code, 1);
}

TEST_F(Receiver, KeepsTheVariablesWhenAsked) {
  auto options = report_options({{a_.get(), "a"}});
  options.argv.push_back("--keep-env");
  auto r = run_report(options);
  ASSERT_TRUE(r.complete) << r.error;
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.after["LISTEN_PID"], std::to_string(r.pid));
  EXPECT_EQ(r.after["LISTEN_FDS"], "1");
  EXPECT_EQ(r.after["LISTEN_FDNAMES"], "a");
}

}  // namespace
}  // namespace handoff::test
