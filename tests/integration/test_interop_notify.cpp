// Interop with the reference implementation of NOTIFY_SOCKET: what libsystemd (sd_notify,
// sd_pid_notify_with_fds, sd_notify_barrier, through the sd_notify_sender helper) and the
// systemd-notify tool send is read correctly by our receiver, and what our notifier sends is
// byte for byte what libsystemd sends for the same request.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "handoff/notify.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/spawn.hpp"
#include "notify_test_support.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;

const std::string sender = HANDOFF_SD_NOTIFY_SENDER;
const std::string systemd_notify = "/usr/bin/systemd-notify";

// The helper's first line: "pid <n>".
pid_t pid_from_output(const std::string& out) {
  if (out.rfind("pid ", 0) != 0) return -1;
  return static_cast<pid_t>(std::stol(out.substr(4)));
}

// Runs the helper (or any program) to completion with NOTIFY_SOCKET=where.
result<test::child_output> run_with_notify_socket(std::vector<std::string> argv,
                                                  const std::string& where) {
  spawn_options o;
  o.argv = std::move(argv);
  o.notify_socket = where;
  return test::run_and_capture(std::move(o), 20s);
}

// A child that keeps running while the test talks to it (e.g. it waits in a barrier), with its
// stdout collected when it is reaped.
class running_child {
 public:
  running_child(std::vector<std::string> argv, const std::string& where) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return;
    out_.reset(p[0]);
    const unique_fd write_end(p[1]);
    spawn_options o;
    o.argv = std::move(argv);
    o.notify_socket = where;
    o.stdout_fd = write_end.get();
    auto pid = spawn(o);
    if (pid) pid_ = *pid;
  }
  ~running_child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)wait_exit(pid_, 5s);
    }
  }
  running_child(const running_child&) = delete;
  running_child& operator=(const running_child&) = delete;

  pid_t pid() const { return pid_; }
  // Reaps the child (within `timeout`) and returns its status and stdout.
  result<test::child_output> finish(std::chrono::milliseconds timeout = 10s) {
    auto status = wait_exit(pid_, timeout);
    if (!status) return status.error();
    pid_ = -1;
    test::child_output r{*status, {}};
    char buf[4096];
    ssize_t n;
    while ((n = ::read(out_.get(), buf, sizeof buf)) > 0) r.out.append(buf, n);
    return r;
  }

 private:
  pid_t pid_ = -1;
  unique_fd out_;
};

// ---------------------------------------------------------------------------------------------
// libsystemd → our receiver

TEST(InteropNotify, LibsystemdMessagesReadByOurReceiverOnAPath) {
  test::temp_dir dir;
  auto rx = notify_receiver::open(dir / "notify.sock");
  ASSERT_TRUE(rx) << rx.error().message();
  auto run = run_with_notify_socket(
      {sender, "ready", "status", "hi there", "mainpid", "4242", "raw", "A=1\nB=x=y\n"},
      rx->address());
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->status.success()) << run->status.describe() << "\n" << run->out;
  const pid_t child = pid_from_output(run->out);
  ASSERT_GT(child, 0) << run->out;

  const std::vector<notify_fields> expected = {
      {{"READY", "1"}},
      {{"STATUS", "hi there"}},
      {{"MAINPID", "4242"}},
      {{"A", "1"}, {"B", "x=y"}},
  };
  for (const auto& fields : expected) {
    auto m = rx->receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->fields, fields);
    EXPECT_EQ(m->pid, child);
    EXPECT_EQ(m->uid, ::getuid());
    EXPECT_EQ(m->gid, ::getgid());
    EXPECT_TRUE(m->fds.empty());
  }
  auto none = rx->try_receive();
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

TEST(InteropNotify, LibsystemdMessagesReadByOurReceiverOnAnAbstractSocket) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx) << rx.error().message();
  auto run = run_with_notify_socket({sender, "ready"}, rx->address());
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->status.success()) << run->status.describe();
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_TRUE(m->has("READY"));
  EXPECT_EQ(m->pid, pid_from_output(run->out));
}

TEST(InteropNotify, LibsystemdReloadingCarriesItsMonotonicUsec) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const std::uint64_t before = monotonic_usec();
  auto run = run_with_notify_socket({sender, "reloading"}, rx->address());
  const std::uint64_t after = monotonic_usec();
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->status.success()) << run->status.describe();
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_TRUE(m->has("RELOADING"));
  const auto at = run->out.find("monotonic_usec ");
  ASSERT_NE(at, std::string::npos) << run->out;
  const std::string printed = run->out.substr(at + 15, run->out.find('\n', at) - at - 15);
  EXPECT_EQ(m->get("MONOTONIC_USEC"), printed);
  // Same clock as ours: the child's reading lies within our before/after.
  const std::uint64_t usec = std::stoull(printed);
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, after);
}

TEST(InteropNotify, LibsystemdFdstoreFdsArriveWithTheirName) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto baseline = test::count_open_fds();
  {
    auto run = run_with_notify_socket({sender, "fdstore", "db-primary"}, rx->address());
    ASSERT_TRUE(run) << run.error().message();
    ASSERT_TRUE(run->status.success()) << run->status.describe();
    auto m = rx->receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->fields, (notify_fields{{"FDSTORE", "1"}, {"FDNAME", "db-primary"}}));
    EXPECT_EQ(m->pid, pid_from_output(run->out));
    ASSERT_EQ(m->fds.size(), 2u);
    for (const auto& fd : m->fds) EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
    // fds[0]: the pipe's read end; the sender wrote before exiting, so data then EOF.
    char buf[64];
    ssize_t n = ::read(m->fds[0].get(), buf, sizeof buf);
    ASSERT_GT(n, 0);
    EXPECT_EQ(std::string(buf, n), "pipe:db-primary");
    EXPECT_EQ(::read(m->fds[0].get(), buf, sizeof buf), 0);
    // fds[1]: the memfd, which outlives its creator.
    n = ::pread(m->fds[1].get(), buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    EXPECT_EQ(std::string(buf, n), "memfd:db-primary");
  }
  EXPECT_EQ(test::count_open_fds(), baseline);
}

TEST(InteropNotify, LibsystemdBarrierIsAnswered) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  running_child child({sender, "status", "before", "barrier"}, rx->address());
  ASSERT_GT(child.pid(), 0);
  auto first = rx->receive(10s);
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_EQ(first->get("STATUS"), "before");
  auto barrier = rx->receive(10s);
  ASSERT_TRUE(barrier) << barrier.error().message();
  EXPECT_EQ(barrier->fields, (notify_fields{{"BARRIER", "1"}}));
  EXPECT_TRUE(barrier->fds.empty());
  EXPECT_EQ(barrier->pid, child.pid());
  // sd_notify_barrier(0, 5 s) returns 1 only once the fd is closed; unanswered it would fail
  // with ETIMEDOUT and the helper exit 1.
  auto done = child.finish(4s);
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_TRUE(done->status.success()) << done->status.describe() << "\n" << done->out;
  EXPECT_NE(done->out.find("barrier 1\n"), std::string::npos) << done->out;
}

// ---------------------------------------------------------------------------------------------
// systemd-notify (systemd 252) → our receiver. Observed behaviour of 252, pinned here:
// - the message goes out with SCM_CREDENTIALS naming systemd-notify's *parent* (it uses
//   sd_pid_notify(getppid(), ...), so that a short-lived helper's message is attributed to the
//   service's process; it works here because the tests run as root);
// - unless --no-block, a BARRIER=1 follows, sent under its own pid, and it waits for it;
// - --pid without a value adds MAINPID=<parent pid>; extra VAR=VALUE arguments pass as is.

class SystemdNotify : public testing::Test {
 protected:
  void SetUp() override {
    if (::access(systemd_notify.c_str(), X_OK) != 0) GTEST_SKIP() << "no " << systemd_notify;
  }
};

TEST_F(SystemdNotify, ReadyAndStatusThenBarrier) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  running_child child({systemd_notify, "--ready", "--status=hi there"}, rx->address());
  ASSERT_GT(child.pid(), 0);
  auto m = rx->receive(10s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->fields, (notify_fields{{"READY", "1"}, {"STATUS", "hi there"}}));
  EXPECT_EQ(m->pid, ::getpid()) << "systemd 252 sends in its parent's name";
  auto barrier = rx->receive(10s);
  ASSERT_TRUE(barrier) << barrier.error().message();
  EXPECT_TRUE(barrier->is_barrier());
  EXPECT_EQ(barrier->pid, child.pid());
  auto done = child.finish(4s);
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_TRUE(done->status.success()) << done->status.describe();
}

TEST_F(SystemdNotify, NoBlockSendsNoBarrier) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  auto run = run_with_notify_socket({systemd_notify, "--no-block", "--ready"}, rx->address());
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->status.success()) << run->status.describe();
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->fields, (notify_fields{{"READY", "1"}}));
  EXPECT_EQ(m->pid, ::getpid());
  auto none = rx->try_receive();
  ASSERT_TRUE(none) << none.error().message();
  EXPECT_FALSE(none->has_value());
}

TEST_F(SystemdNotify, PidAndExtraVariables) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  running_child child({systemd_notify, "--pid", "STATUS=upgrading", "X_CUSTOM=a=b"}, rx->address());
  ASSERT_GT(child.pid(), 0);
  auto m = rx->receive(10s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->get("MAINPID"), std::to_string(::getpid()));
  EXPECT_EQ(m->get("STATUS"), "upgrading");
  EXPECT_EQ(m->get("X_CUSTOM"), "a=b");
  EXPECT_EQ(m->pid, ::getpid());
  auto barrier = rx->receive(10s);
  ASSERT_TRUE(barrier) << barrier.error().message();
  EXPECT_TRUE(barrier->is_barrier());
  auto done = child.finish(4s);
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_TRUE(done->status.success()) << done->status.describe();
}

// ---------------------------------------------------------------------------------------------
// Our notifier's datagrams against libsystemd's, on a raw socket, for the same requests.

struct same_bytes_case {
  const char* name;
  std::vector<std::string> sender_args;  // what libsystemd is asked to send
  std::function<result<notify_outcome>(const notifier&, std::span<const int>)> ours;
};
void PrintTo(const same_bytes_case& c, std::ostream* os) { *os << c.name; }

class SameBytesAsLibsystemd : public testing::TestWithParam<same_bytes_case> {};

// The kind of each passed fd: a fifo or a regular file (memfd); a field by field comparison of
// the fds without caring for their numbers.
std::vector<std::string> kinds(const std::vector<unique_fd>& fds) {
  std::vector<std::string> out;
  for (const auto& fd : fds) {
    struct stat st {};
    ::fstat(fd.get(), &st);
    out.push_back(S_ISFIFO(st.st_mode) ? "fifo" : S_ISREG(st.st_mode) ? "file" : "other");
  }
  return out;
}

TEST_P(SameBytesAsLibsystemd, FieldByField) {
  test::temp_dir dir;
  const std::string path = dir / "raw.sock";
  test::raw_datagram_socket raw(path);
  ASSERT_TRUE(raw.ok());

  std::vector<std::string> argv = {sender};
  argv.insert(argv.end(), GetParam().sender_args.begin(), GetParam().sender_args.end());
  auto run = run_with_notify_socket(argv, path);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->status.success()) << run->status.describe();
  auto theirs = raw.receive();
  ASSERT_TRUE(theirs);

  // Ours, with the same kinds of fds as the helper passes: a pipe's read end and a memfd.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const unique_fd r(p[0]), w(p[1]);
  const unique_fd memfd(::memfd_create("ours", MFD_CLOEXEC));
  ASSERT_TRUE(memfd);
  const int fds[] = {r.get(), memfd.get()};
  auto sent = GetParam().ours(notifier(path), fds);
  ASSERT_TRUE(sent) << sent.error().message();
  auto ours = raw.receive();
  ASSERT_TRUE(ours);

  EXPECT_EQ(test::lines_of(ours->bytes), test::lines_of(theirs->bytes));
  EXPECT_EQ(ours->bytes, theirs->bytes);
  EXPECT_EQ(kinds(ours->fds), kinds(theirs->fds));
}

INSTANTIATE_TEST_SUITE_P(
    InteropNotify, SameBytesAsLibsystemd,
    testing::Values(
        same_bytes_case{"Ready", {"ready"}, [](const notifier& n, auto) { return n.ready(); }},
        same_bytes_case{"Status",
                        {"status", "x y: z"},
                        [](const notifier& n, auto) { return n.status("x y: z"); }},
        same_bytes_case{"Mainpid",
                        {"mainpid", "4242"},
                        [](const notifier& n, auto) { return n.mainpid(4242); }},
        same_bytes_case{"ReadyWithStatus",
                        {"raw", "READY=1\nSTATUS=up"},
                        [](const notifier& n, auto) { return n.ready("up"); }},
        same_bytes_case{"Stopping",
                        {"raw", "STOPPING=1"},
                        [](const notifier& n, auto) { return n.stopping(); }},
        same_bytes_case{"Watchdog",
                        {"raw", "WATCHDOG=1"},
                        [](const notifier& n, auto) { return n.watchdog(); }},
        same_bytes_case{
            "Fdstore",
            {"fdstore", "db"},
            [](const notifier& n, std::span<const int> fds) { return n.fdstore(fds, "db"); }}),
    [](const testing::TestParamInfo<same_bytes_case>& param) {
      return std::string(param.param.name);
    });

TEST(InteropNotify, ReloadingHasLibsystemdsShape) {
  test::temp_dir dir;
  const std::string path = dir / "raw.sock";
  test::raw_datagram_socket raw(path);
  ASSERT_TRUE(raw.ok());
  auto run = run_with_notify_socket({sender, "reloading"}, path);
  ASSERT_TRUE(run) << run.error().message();
  auto theirs = raw.receive();
  ASSERT_TRUE(theirs);
  ASSERT_TRUE(notifier(path).reloading());
  auto ours = raw.receive();
  ASSERT_TRUE(ours);
  const auto a = test::lines_of(ours->bytes), b = test::lines_of(theirs->bytes);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0], b[0]);
  EXPECT_EQ(a[1].substr(0, a[1].find('=')), b[1].substr(0, b[1].find('=')));
  // Both read CLOCK_MONOTONIC: ours was taken after theirs.
  EXPECT_GE(std::stoull(a[1].substr(a[1].find('=') + 1)),
            std::stoull(b[1].substr(b[1].find('=') + 1)));
}

TEST(InteropNotify, BarrierHasLibsystemdsShape) {
  test::temp_dir dir;
  const std::string path = dir / "raw.sock";
  test::raw_datagram_socket raw(path);
  ASSERT_TRUE(raw.ok());

  running_child child({sender, "barrier"}, path);
  ASSERT_GT(child.pid(), 0);
  auto theirs = raw.receive(10s);
  ASSERT_TRUE(theirs);
  const auto their_kinds = kinds(theirs->fds);
  const int their_mode =
      theirs->fds.empty() ? -1 : (::fcntl(theirs->fds[0].get(), F_GETFL) & O_ACCMODE);
  theirs->fds.clear();  // answer it
  auto done = child.finish(4s);
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_TRUE(done->status.success()) << done->status.describe();

  const notifier n(path);
  std::optional<result<notify_outcome>> outcome;
  std::thread app([&] { outcome.emplace(n.barrier(10s)); });
  auto ours = raw.receive(10s);
  std::vector<std::string> our_kinds;
  int our_mode = -1;
  if (ours) {
    our_kinds = kinds(ours->fds);
    if (!ours->fds.empty()) our_mode = ::fcntl(ours->fds[0].get(), F_GETFL) & O_ACCMODE;
    ours->fds.clear();
  }
  app.join();
  ASSERT_TRUE(ours);
  ASSERT_TRUE(outcome && *outcome) << (outcome ? outcome->error().message() : "no outcome");

  EXPECT_EQ(ours->bytes, theirs->bytes);
  EXPECT_EQ(ours->bytes, "BARRIER=1");
  EXPECT_EQ(our_kinds, their_kinds);
  EXPECT_EQ(our_kinds, std::vector<std::string>{"fifo"});
  EXPECT_EQ(our_mode, their_mode);
  EXPECT_EQ(our_mode, O_WRONLY);
}

}  // namespace
}  // namespace handoff
