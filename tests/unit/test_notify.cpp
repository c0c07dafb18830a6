// The sending side of NOTIFY_SOCKET: the exact bytes our notifier puts in each datagram, read
// back with plain recvmsg on a socket the test binds (not through our receiver), its checks of
// what it is asked to send, and its errors.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "handoff/notify.hpp"
#include "handoff/notify_receiver.hpp"
#include "notify_test_support.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using test::raw_datagram_socket;

// Sets or unsets NOTIFY_SOCKET for one test and restores it afterwards.
class scoped_notify_socket {
 public:
  explicit scoped_notify_socket(const char* value) {
    if (const char* old = ::getenv("NOTIFY_SOCKET")) old_ = old;
    if (value != nullptr)
      ::setenv("NOTIFY_SOCKET", value, 1);
    else
      ::unsetenv("NOTIFY_SOCKET");
  }
  ~scoped_notify_socket() {
    if (old_)
      ::setenv("NOTIFY_SOCKET", old_->c_str(), 1);
    else
      ::unsetenv("NOTIFY_SOCKET");
  }

 private:
  std::optional<std::string> old_;
};

// A raw socket at a fresh path in a temp dir: the simplest manager.
struct raw_manager {
  test::temp_dir dir;
  std::string path = dir / "notify.sock";
  raw_datagram_socket sock{path};
};

// Names the instances of a table-driven test after the `name` of their case.
struct case_name {
  template <class T>
  std::string operator()(const testing::TestParamInfo<T>& param) const {
    return param.param.name;
  }
};

std::uint64_t clock_monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

// ---------------------------------------------------------------------------------------------
// No manager

TEST(Notifier, WithoutNotifySocketEverySendIsNoManager) {
  scoped_notify_socket env(nullptr);
  const notifier n = notifier::from_environment();
  EXPECT_FALSE(n.has_manager());
  EXPECT_FALSE(n.socket());
  const int fd = 0;
  const std::vector<std::function<result<notify_outcome>()>> calls = {
      [&] { return n.ready(); },
      [&] { return n.ready("up"); },
      [&] { return n.reloading(); },
      [&] { return n.stopping(); },
      [&] { return n.status("x"); },
      [&] { return n.mainpid(1); },
      [&] { return n.watchdog(); },
      [&] { return n.watchdog_usec(1s); },
      [&] { return n.extend_timeout(1s); },
      [&] { return n.errno_value(5); },
      [&] { return n.fdstore(std::span<const int>(&fd, 1), "stdin"); },
      [&] { return n.send("X=1"); },
      [&] { return n.barrier(10ms); },
  };
  for (std::size_t i = 0; i < calls.size(); ++i) {
    auto r = calls[i]();
    ASSERT_TRUE(r) << "call " << i << ": " << r.error().message();
    EXPECT_EQ(*r, notify_outcome::no_manager) << "call " << i;
  }
  EXPECT_EQ(*notifier().ready(), notify_outcome::no_manager);
}

TEST(Notifier, FromEnvironmentKeepsOrUnsetsTheVariable) {
  scoped_notify_socket env("/run/example/notify");
  const notifier kept = notifier::from_environment();
  ASSERT_TRUE(kept.has_manager());
  EXPECT_EQ(*kept.socket(), "/run/example/notify");
  ASSERT_NE(::getenv("NOTIFY_SOCKET"), nullptr);

  const notifier taken = notifier::from_environment(true);
  EXPECT_EQ(taken.socket(), kept.socket());
  EXPECT_EQ(::getenv("NOTIFY_SOCKET"), nullptr);
  EXPECT_FALSE(notifier::from_environment().has_manager());
}

TEST(Notifier, FromEnvironmentSendsToTheNamedSocket) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  scoped_notify_socket env(m.path.c_str());
  ASSERT_TRUE(notifier::from_environment().ready());
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->bytes, "READY=1");
}

// ---------------------------------------------------------------------------------------------
// Invalid NOTIFY_SOCKET values and send errors

TEST(Notifier, InvalidNotifySocketIsAnErrorNamingTheValue) {
  const std::vector<std::string> bad = {
      "relative/notify.sock", "notify.sock", "vsock:2:1234", "", "@", "/" + std::string(200, 'p')};
  for (const std::string& value : bad) {
    scoped_notify_socket env(value.c_str());
    const notifier n = notifier::from_environment();
    ASSERT_TRUE(n.has_manager()) << value;
    auto r = n.ready();
    ASSERT_FALSE(r) << "\"" << value << "\" accepted";
    EXPECT_EQ(r.error(), errc::invalid_environment) << r.error().message();
    EXPECT_NE(r.error().message().find("NOTIFY_SOCKET \"" + value.substr(0, 60)), std::string::npos)
        << r.error().message();
    auto b = n.barrier(10ms);
    ASSERT_FALSE(b) << value;
    EXPECT_EQ(b.error(), errc::invalid_environment);
  }
}

TEST(Notifier, NobodyListeningIsAnErrorNamingThePath) {
  test::temp_dir dir;
  const std::string path = dir / "stale.sock";
  {
    raw_datagram_socket gone(path);
    ASSERT_TRUE(gone.ok());
  }  // the file stays, the socket not
  auto r = notifier(path).ready();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), std::errc::connection_refused);
  EXPECT_EQ(r.error().message(), "send to NOTIFY_SOCKET \"" + path + "\": Connection refused");

  auto missing = notifier(dir / "missing.sock").ready();
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), std::errc::no_such_file_or_directory);
  EXPECT_NE(missing.error().message().find("missing.sock"), std::string::npos);

  auto abstract = notifier("@handoff-test-nobody-" + std::to_string(::getpid())).ready();
  ASSERT_FALSE(abstract);
  EXPECT_EQ(abstract.error().code(), std::errc::connection_refused);
  EXPECT_NE(abstract.error().message().find("\"@handoff-test-nobody-"), std::string::npos);
}

TEST(Notifier, PidThatDoesNotExistIsAnErrorNamingIt) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // reaped: the pid names nobody now
  auto r = notifier(m.path).send("READY=1", {}, child);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("as pid " + std::to_string(child)), std::string::npos)
      << r.error().message();
  EXPECT_FALSE(m.sock.receive(0ms)) << "a message went out under our own pid instead";
}

TEST(Notifier, OwnPidSendsNoExplicitCredentials) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  ASSERT_TRUE(notifier(m.path).send("READY=1", {}, ::getpid()));
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->creds);
  EXPECT_EQ(d->creds->pid, ::getpid());
}

// ---------------------------------------------------------------------------------------------
// The exact datagrams

struct datagram_case {
  const char* name;
  std::function<result<notify_outcome>(const notifier&)> call;
  std::string expected;
};
void PrintTo(const datagram_case& c, std::ostream* os) { *os << c.name; }

class NotifierDatagram : public testing::TestWithParam<datagram_case> {};

TEST_P(NotifierDatagram, ExactBytes) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  auto r = GetParam().call(notifier(m.path));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, notify_outcome::sent);
  auto d = m.sock.receive();
  ASSERT_TRUE(d) << "nothing arrived";
  EXPECT_EQ(d->bytes, GetParam().expected);
  EXPECT_TRUE(d->fds.empty());
  ASSERT_TRUE(d->creds);
  EXPECT_EQ(d->creds->pid, ::getpid());
  EXPECT_FALSE(m.sock.receive(0ms)) << "more than one datagram";
}

INSTANTIATE_TEST_SUITE_P(
    Notifier, NotifierDatagram,
    testing::Values(
        datagram_case{"Ready", [](const notifier& n) { return n.ready(); }, "READY=1"},
        datagram_case{"ReadyWithStatus", [](const notifier& n) { return n.ready("serving"); },
                      "READY=1\nSTATUS=serving"},
        datagram_case{"Stopping", [](const notifier& n) { return n.stopping(); }, "STOPPING=1"},
        datagram_case{"StoppingWithStatus",
                      [](const notifier& n) { return n.stopping("draining 3"); },
                      "STOPPING=1\nSTATUS=draining 3"},
        datagram_case{"Status", [](const notifier& n) { return n.status("a = b; c"); },
                      "STATUS=a = b; c"},
        datagram_case{"EmptyStatus", [](const notifier& n) { return n.status(""); }, "STATUS="},
        datagram_case{"Mainpid", [](const notifier& n) { return n.mainpid(4242); }, "MAINPID=4242"},
        datagram_case{"Watchdog", [](const notifier& n) { return n.watchdog(); }, "WATCHDOG=1"},
        datagram_case{"WatchdogUsec", [](const notifier& n) { return n.watchdog_usec(30s); },
                      "WATCHDOG_USEC=30000000"},
        datagram_case{"ExtendTimeout", [](const notifier& n) { return n.extend_timeout(1500ms); },
                      "EXTEND_TIMEOUT_USEC=1500000"},
        datagram_case{"Errno", [](const notifier& n) { return n.errno_value(EIO); }, "ERRNO=5"},
        datagram_case{"SendAsIs", [](const notifier& n) { return n.send("X=1\nY=2\n"); },
                      "X=1\nY=2\n"},
        datagram_case{"MaxSize",
                      [](const notifier& n) {
                        return n.send("STATUS=" + std::string(notify_message_max - 7, 's'));
                      },
                      "STATUS=" + std::string(notify_message_max - 7, 's')}),
    case_name());

TEST(Notifier, ReloadingCarriesMonotonicUsecOfNow) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const std::uint64_t before = clock_monotonic_usec();
  ASSERT_TRUE(notifier(m.path).reloading());
  const std::uint64_t after = clock_monotonic_usec();
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  const auto lines = test::lines_of(d->bytes);
  ASSERT_EQ(lines.size(), 2u) << d->bytes;
  EXPECT_EQ(lines[0], "RELOADING=1");
  const std::string prefix = "MONOTONIC_USEC=";
  ASSERT_EQ(lines[1].rfind(prefix, 0), 0u) << lines[1];
  const std::string digits = lines[1].substr(prefix.size());
  ASSERT_FALSE(digits.empty());
  ASSERT_EQ(digits.find_first_not_of("0123456789"), std::string::npos) << digits;
  const std::uint64_t usec = std::stoull(digits);
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, after);
  EXPECT_LT(after - before, 2000000u) << "the bound is too loose to mean anything";
}

TEST(Notifier, MonotonicUsecIsClockMonotonic) {
  const std::uint64_t before = clock_monotonic_usec();
  const std::uint64_t ours = monotonic_usec();
  const std::uint64_t after = clock_monotonic_usec();
  EXPECT_GE(ours, before);
  EXPECT_LE(ours, after);
}

TEST(Notifier, FdstoreSendsNameAndFds) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const unique_fd r(p[0]), w(p[1]);
  const int fds[] = {r.get(), w.get()};
  auto sent = notifier(m.path).fdstore(fds, "web-1.sock");
  ASSERT_TRUE(sent) << sent.error().message();
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->bytes, "FDSTORE=1\nFDNAME=web-1.sock");
  ASSERT_EQ(d->fds.size(), 2u);
  ASSERT_EQ(::write(d->fds[1].get(), "z", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(r.get(), &c, 1), 1);
  EXPECT_EQ(c, 'z');
}

TEST(Notifier, BarrierSendsPipeWriteEndAndReturnsOnceClosed) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const notifier n(m.path);
  std::optional<result<notify_outcome>> outcome;
  std::thread app([&] { outcome.emplace(n.barrier(10s)); });
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->bytes, "BARRIER=1");
  ASSERT_EQ(d->fds.size(), 1u);
  struct stat st {};
  ASSERT_EQ(::fstat(d->fds[0].get(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(::fcntl(d->fds[0].get(), F_GETFL) & O_ACCMODE, O_WRONLY);
  d->fds.clear();  // the answer
  app.join();
  ASSERT_TRUE(outcome);
  ASSERT_TRUE(*outcome) << (*outcome).error().message();
  EXPECT_EQ(**outcome, notify_outcome::sent);
}

TEST(Notifier, BarrierNobodyAnswersTimesOut) {
  raw_manager m;  // bound, never read
  ASSERT_TRUE(m.sock.ok());
  const auto start = std::chrono::steady_clock::now();
  auto r = notifier(m.path).barrier(150ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::timed_out);
  EXPECT_NE(r.error().message().find(m.path), std::string::npos) << r.error().message();
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 3s);
}

TEST(Notifier, BarrierKeepsItsDeadlineWhenTheManagersQueueIsFull) {
  // A manager that stopped reading: its queue holds net.unix.max_dgram_qlen datagrams, after
  // which a sender waits for room. The barrier's deadline must cover that wait too.
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const unique_fd filler(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const auto addr = test::make_addr(m.path);
  int queued = 0;
  while (::sendto(filler.get(), "X=1", 3, MSG_DONTWAIT, addr.get(), addr.length) == 3) ++queued;
  ASSERT_EQ(errno, EAGAIN);
  ASSERT_GT(queued, 0);

  // In a child, so that a barrier that blocks for ever fails the test instead of hanging it.
  const std::string path = m.path;
  const pid_t child = test::fork_child([&] {
    const auto start = std::chrono::steady_clock::now();
    auto r = notifier(path).barrier(200ms);
    const auto took = std::chrono::steady_clock::now() - start;
    if (r || r.error() != errc::timed_out) return 1;
    if (r.error().message().find("queue") == std::string::npos) return 2;
    return took >= 200ms && took < 3s ? 0 : 3;
  });
  ASSERT_GT(child, 0);
  EXPECT_EQ(test::reap(child, 5s), 0);
  // The barrier never got in; only the filler's datagrams are there.
  for (int i = 0; i < queued; ++i) {
    auto d = m.sock.receive(0ms);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->bytes, "X=1");
  }
  EXPECT_FALSE(m.sock.receive(0ms));
}

TEST(Notifier, SendToAManagerThatStoppedReadingFailsAfterTheSendTimeout) {
  // sd_notify would block for ever here; a supervisor that notifies its own manager must not.
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const unique_fd filler(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const auto addr = test::make_addr(m.path);
  while (::sendto(filler.get(), "X=1", 3, MSG_DONTWAIT, addr.get(), addr.length) == 3) {
  }
  ASSERT_EQ(errno, EAGAIN);
  const std::string path = m.path;
  const pid_t child = test::fork_child([&] {
    const auto start = std::chrono::steady_clock::now();
    auto r = notifier(path).ready();
    const auto took = std::chrono::steady_clock::now() - start;
    if (r) return 1;
    if (!(r.error() == std::errc::resource_unavailable_try_again)) return 2;
    return took >= notify_send_timeout - 100ms && took < notify_send_timeout + 3s ? 0 : 3;
  });
  ASSERT_GT(child, 0);
  EXPECT_EQ(test::reap(child, notify_send_timeout + 10s), 0);
}

void ignore_signal(int) {}

TEST(Notifier, BarrierKeepsWaitingThroughSignals) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  struct sigaction sa {
  }, old{};
  sa.sa_handler = ignore_signal;  // no SA_RESTART: poll(2) fails with EINTR
  ASSERT_EQ(::sigaction(SIGALRM, &sa, &old), 0);
  itimerval every_20ms{{0, 20000}, {0, 20000}}, off{};
  ASSERT_EQ(::setitimer(ITIMER_REAL, &every_20ms, nullptr), 0);
  const auto start = std::chrono::steady_clock::now();
  auto r = notifier(m.path).barrier(200ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ::setitimer(ITIMER_REAL, &off, nullptr);
  ::sigaction(SIGALRM, &old, nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::timed_out) << r.error().message();
  EXPECT_GE(took, 200ms);
}

TEST(Notifier, BarrierLeaksNoFd) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const auto baseline = test::count_open_fds();
  auto r = notifier(m.path).barrier(10ms);
  EXPECT_FALSE(r);
  auto d = m.sock.receive();  // the in-flight write end, received and closed
  ASSERT_TRUE(d);
  d.reset();
  EXPECT_EQ(test::count_open_fds(), baseline);
}

// ---------------------------------------------------------------------------------------------
// What the notifier refuses to send, with or without a manager

struct refused_case {
  const char* name;
  std::function<result<notify_outcome>(const notifier&)> call;
  std::string expected;  // part of the message
};
void PrintTo(const refused_case& c, std::ostream* os) { *os << c.name; }

class NotifierRefuses : public testing::TestWithParam<refused_case> {};

TEST_P(NotifierRefuses, InvalidMessageAndNothingSent) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  for (const notifier& n : {notifier(m.path), notifier()}) {
    auto r = GetParam().call(n);
    ASSERT_FALSE(r) << (n.has_manager() ? "with" : "without") << " manager";
    EXPECT_EQ(r.error(), errc::invalid_message) << r.error().message();
    EXPECT_NE(r.error().message().find(GetParam().expected), std::string::npos)
        << r.error().message();
  }
  EXPECT_FALSE(m.sock.receive(0ms)) << "something was sent";
}

using namespace std::string_literals;
const int some_fd = 0;
const std::vector<int> too_many_fds(notify_fds_max + 1, 0);

INSTANTIATE_TEST_SUITE_P(
    Notifier, NotifierRefuses,
    testing::Values(
        refused_case{"Empty", [](const notifier& n) { return n.send(""); }, "empty"},
        refused_case{"Nul", [](const notifier& n) { return n.send("READY=1\0X=1"s); }, "NUL"},
        refused_case{"Oversized", [](const notifier& n) { return n.send(std::string(4097, 'x')); },
                     "4097 bytes"},
        refused_case{"TooManyFds",
                     [](const notifier& n) { return n.send("FDSTORE=1", too_many_fds); },
                     "254 fds"},
        refused_case{"StatusNewline", [](const notifier& n) { return n.status("ok\nMAINPID=1"); },
                     "newline"},
        refused_case{"ReadyStatusNewline", [](const notifier& n) { return n.ready("ok\nREADY=0"); },
                     "newline"},
        refused_case{"StoppingStatusNewline", [](const notifier& n) { return n.stopping("a\n"); },
                     "newline"},
        refused_case{"StatusNul", [](const notifier& n) { return n.status("a\0b"s); }, "NUL"},
        refused_case{"StatusOversized",
                     [](const notifier& n) { return n.status(std::string(4090, 's')); },
                     "4097 bytes"},
        refused_case{"MainpidZero", [](const notifier& n) { return n.mainpid(0); }, "MAINPID=0"},
        refused_case{"MainpidNegative", [](const notifier& n) { return n.mainpid(-5); },
                     "MAINPID=-5"},
        refused_case{"NegativeWatchdog", [](const notifier& n) { return n.watchdog_usec(-1us); },
                     "WATCHDOG_USEC"},
        refused_case{"NegativeExtend", [](const notifier& n) { return n.extend_timeout(-1us); },
                     "EXTEND_TIMEOUT_USEC"},
        refused_case{"NegativeErrno", [](const notifier& n) { return n.errno_value(-1); }, "ERRNO"},
        refused_case{"FdstoreWithoutFds", [](const notifier& n) { return n.fdstore({}, "name"); },
                     "without any fd"},
        refused_case{
            "FdnameEmpty",
            [](const notifier& n) { return n.fdstore(std::span<const int>(&some_fd, 1), ""); },
            "FDNAME"},
        refused_case{
            "FdnameColon",
            [](const notifier& n) { return n.fdstore(std::span<const int>(&some_fd, 1), "a:b"); },
            "\"a:b\""},
        refused_case{"FdnameNewline",
                     [](const notifier& n) {
                       return n.fdstore(std::span<const int>(&some_fd, 1), "a\nMAINPID=1");
                     },
                     "FDNAME"},
        refused_case{"FdnameTooLong",
                     [](const notifier& n) {
                       return n.fdstore(std::span<const int>(&some_fd, 1), std::string(256, 'n'));
                     },
                     "FDNAME"}),
    case_name());

TEST(Notifier, FdnameOfMaxLengthIsAccepted) {
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const std::string name(255, 'n');
  auto r = notifier(m.path).fdstore(std::span<const int>(&some_fd, 1), name);
  ASSERT_TRUE(r) << r.error().message();
  auto d = m.sock.receive();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->bytes, "FDSTORE=1\nFDNAME=" + name);
}

TEST(Notifier, SendsFromAForkedChildAfterFork) {
  // A child that inherited the notifier reports under its own pid (the kernel's credentials).
  raw_manager m;
  ASSERT_TRUE(m.sock.ok());
  const notifier n(m.path);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(n.status("child") ? 0 : 1);
  ASSERT_GT(child, 0);
  auto d = m.sock.receive();
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->bytes, "STATUS=child");
  ASSERT_TRUE(d->creds);
  EXPECT_EQ(d->creds->pid, child);
}

}  // namespace
}  // namespace handoff
