// The receiving side of NOTIFY_SOCKET: the parser, and notify_receiver against our notifier,
// fork()ed children and raw datagrams a misbehaving peer could send.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "handoff/notify.hpp"
#include "handoff/notify_receiver.hpp"
#include "notify_test_support.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using test::count_open_fds;
using test::fork_child;
using test::reap;
using test::send_raw;

std::string unique_abstract_name() {
  static std::atomic<int> counter{0};
  return "@handoff-test-notify-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

// A pipe whose ends are closed on destruction.
struct test_pipe {
  unique_fd read_end, write_end;
  test_pipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) == 0) read_end.reset(p[0]), write_end.reset(p[1]);
  }
};

// Names the instances of a table-driven test after the `name` of their case.
struct case_name {
  template <class T>
  std::string operator()(const testing::TestParamInfo<T>& param) const {
    return param.param.name;
  }
};

bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

// ---------------------------------------------------------------------------------------------
// parse_notify_message

struct parse_ok_case {
  const char* name;
  std::string input;
  notify_fields expected;
};
void PrintTo(const parse_ok_case& c, std::ostream* os) { *os << c.name; }

class ParseValid : public testing::TestWithParam<parse_ok_case> {};

TEST_P(ParseValid, Fields) {
  auto fields = parse_notify_message(GetParam().input);
  ASSERT_TRUE(fields) << fields.error().message();
  EXPECT_EQ(*fields, GetParam().expected);
}

INSTANTIATE_TEST_SUITE_P(
    NotifyMessage, ParseValid,
    testing::Values(
        parse_ok_case{"Empty", "", {}}, parse_ok_case{"OnlyNewlines", "\n\n\n", {}},
        parse_ok_case{"Ready", "READY=1", {{"READY", "1"}}},
        parse_ok_case{"TrailingNewline", "READY=1\n", {{"READY", "1"}}},
        parse_ok_case{"Several",
                      "READY=1\nSTATUS=up and running\nMAINPID=42",
                      {{"READY", "1"}, {"STATUS", "up and running"}, {"MAINPID", "42"}}},
        parse_ok_case{
            "EmptyLinesSkipped", "\nREADY=1\n\n\nSTATUS=x\n", {{"READY", "1"}, {"STATUS", "x"}}},
        parse_ok_case{"EmptyValue", "STATUS=", {{"STATUS", ""}}},
        parse_ok_case{"EqualsInValue", "STATUS=a=b=c", {{"STATUS", "a=b=c"}}},
        parse_ok_case{
            "DigitsAndUnderscore", "X_1=2\n_=3\n9=4", {{"X_1", "2"}, {"_", "3"}, {"9", "4"}}},
        parse_ok_case{
            "DuplicatesKeptInOrder", "STATUS=a\nSTATUS=b", {{"STATUS", "a"}, {"STATUS", "b"}}},
        parse_ok_case{
            "Utf8AndControlInValue", "STATUS=caf\xc3\xa9\t\r", {{"STATUS", "caf\xc3\xa9\t\r"}}}),
    case_name());

struct parse_bad_case {
  const char* name;
  std::string input;
  std::string quoted;  // what the error must quote
};
void PrintTo(const parse_bad_case& c, std::ostream* os) { *os << c.name; }

class ParseMalformed : public testing::TestWithParam<parse_bad_case> {};

TEST_P(ParseMalformed, IsInvalidMessageQuotingTheLine) {
  auto fields = parse_notify_message(GetParam().input);
  ASSERT_FALSE(fields);
  EXPECT_EQ(fields.error(), errc::invalid_message);
  EXPECT_NE(fields.error().message().find(GetParam().quoted), std::string::npos)
      << fields.error().message();
}

using namespace std::string_literals;

INSTANTIATE_TEST_SUITE_P(
    NotifyMessage, ParseMalformed,
    testing::Values(parse_bad_case{"NoEquals", "READY", "\"READY\""},
                    parse_bad_case{"NoEqualsAfterGoodLine", "READY=1\nGARBAGE\nSTATUS=x",
                                   "\"GARBAGE\""},
                    parse_bad_case{"EmptyKey", "=1", "\"=1\""},
                    parse_bad_case{"LowercaseKey", "ready=1", "\"ready=1\""},
                    parse_bad_case{"SpaceInKey", "READY =1", "\"READY =1\""},
                    parse_bad_case{"DashInKey", "MAIN-PID=1", "\"MAIN-PID=1\""},
                    parse_bad_case{"NulInValue", "READY=1\nSTATUS=a\0b\nX=1"s, "\"STATUS=a\\0b\""},
                    parse_bad_case{"NulAtEnd", "READY=1\0"s, "\"READY=1\\0\""},
                    parse_bad_case{"NulAlone", "\0"s, "\"\\0\""},
                    parse_bad_case{"ControlInKey", "A\x01=1", "\"A\\x01=1\""},
                    parse_bad_case{"LongLineCut", "X" + std::string(1000, 'y'), "\"Xyyy"},
                    parse_bad_case{"CarriageReturnInKey", "READY\r=1", "\"READY\\r=1\""}),
    case_name());

TEST(NotifyMessage, ErrorCutsLongLines) {
  auto fields = parse_notify_message(std::string(5000, 'x'));
  ASSERT_FALSE(fields);
  EXPECT_LT(fields.error().message().size(), 200u) << fields.error().message();
  EXPECT_NE(fields.error().message().find("..."), std::string::npos);
}

TEST(NotifyMessage, GetReturnsLastValueAndHasCompares) {
  notify_message m;
  m.fields = {{"STATUS", "a"}, {"READY", "1"}, {"STATUS", "b"}, {"EMPTY", ""}};
  EXPECT_EQ(m.get("STATUS"), "b");
  EXPECT_EQ(m.get("EMPTY"), "");
  EXPECT_EQ(m.get("MISSING"), std::nullopt);
  EXPECT_TRUE(m.has("READY"));
  EXPECT_TRUE(m.has("STATUS", "b"));
  EXPECT_FALSE(m.has("STATUS", "a"));
  EXPECT_FALSE(m.has("MISSING"));
  EXPECT_FALSE(m.is_barrier());
  m.fields.emplace_back("BARRIER", "1");
  EXPECT_TRUE(m.is_barrier());
}

// ---------------------------------------------------------------------------------------------
// open, open_unique, lifetime of the path

TEST(NotifyReceiver, PathRoundTripWithOurCredentials) {
  test::temp_dir dir;
  const std::string path = dir / "notify.sock";
  auto rx = notify_receiver::open(path);
  ASSERT_TRUE(rx) << rx.error().message();
  EXPECT_EQ(rx->address(), path);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));

  auto sent = notifier(rx->address()).ready("serving");
  ASSERT_TRUE(sent) << sent.error().message();
  EXPECT_EQ(*sent, notify_outcome::sent);
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->fields, (notify_fields{{"READY", "1"}, {"STATUS", "serving"}}));
  EXPECT_EQ(m->pid, ::getpid());
  EXPECT_EQ(m->uid, ::getuid());
  EXPECT_EQ(m->gid, ::getgid());
  EXPECT_TRUE(m->fds.empty());
}

// What an exec of ourselves hands on (the supervisor's `handoff reexec`): the adopting image is
// the process that bound the path, so the file goes with its receiver, as with open()'s.
TEST(NotifyReceiver, AnAdoptedPathStillWorksAndIsRemovedWithItsReceiver) {
  test::temp_dir dir;
  const std::string path = dir / "notify.sock";
  auto before = notify_receiver::open(path);  // the image before the exec, still alive here
  ASSERT_TRUE(before) << before.error().message();
  unique_fd fd(::fcntl(before->fd(), F_DUPFD_CLOEXEC, 3));
  ASSERT_TRUE(fd);
  {
    auto adopted = notify_receiver::adopt(std::move(fd), path);
    auto sent = notifier(adopted.address()).ready();
    ASSERT_TRUE(sent) << sent.error().message();
    auto m = adopted.receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_TRUE(m->has("READY"));
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(NotifyReceiver, AbstractRoundTrip) {
  const std::string name = unique_abstract_name();
  auto rx = notify_receiver::open(name);
  ASSERT_TRUE(rx) << rx.error().message();
  EXPECT_EQ(rx->address(), name);
  ASSERT_TRUE(notifier(name).status("abstract"));
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->get("STATUS"), "abstract");
  EXPECT_EQ(m->pid, ::getpid());
}

TEST(NotifyReceiver, OpenUniqueIsAbstractAndDistinct) {
  auto a = notify_receiver::open_unique();
  auto b = notify_receiver::open_unique();
  ASSERT_TRUE(a) << a.error().message();
  ASSERT_TRUE(b) << b.error().message();
  ASSERT_GE(a->address().size(), 2u);
  EXPECT_EQ(a->address().front(), '@');
  EXPECT_NE(a->address(), b->address());

  ASSERT_TRUE(notifier(a->address()).send("X=a"));
  ASSERT_TRUE(notifier(b->address()).send("X=b"));
  auto ma = a->receive(5s);
  auto mb = b->receive(5s);
  ASSERT_TRUE(ma) << ma.error().message();
  ASSERT_TRUE(mb) << mb.error().message();
  EXPECT_EQ(ma->get("X"), "a");
  EXPECT_EQ(mb->get("X"), "b");
}

TEST(NotifyReceiver, SocketIsNonblockingAndCloexec) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  EXPECT_TRUE(is_cloexec(rx->fd()));
  EXPECT_NE(::fcntl(rx->fd(), F_GETFL) & O_NONBLOCK, 0);
}

TEST(NotifyReceiver, ExistingPathIsRefusedAndKept) {
  test::temp_dir dir;
  const std::string path = dir / "taken";
  { const unique_fd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)); }
  auto rx = notify_receiver::open(path);
  ASSERT_FALSE(rx);
  EXPECT_EQ(rx.error().code(), std::errc::address_in_use);
  EXPECT_NE(rx.error().message().find(path), std::string::npos) << rx.error().message();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the file was replaced";
}

TEST(NotifyReceiver, SecondReceiverOnSamePathIsRefusedAndFirstStillWorks) {
  test::temp_dir dir;
  const std::string path = dir / "notify.sock";
  auto first = notify_receiver::open(path);
  ASSERT_TRUE(first);
  {
    auto second = notify_receiver::open(path);
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().message().find(path), std::string::npos);
  }
  // The refused second one must not have unlinked the first one's path.
  ASSERT_TRUE(notifier(path).ready());
  auto m = first->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_TRUE(m->has("READY"));
}

TEST(NotifyReceiver, AbstractNameInUseIsRefused) {
  const std::string name = unique_abstract_name();
  auto first = notify_receiver::open(name);
  ASSERT_TRUE(first);
  auto second = notify_receiver::open(name);
  ASSERT_FALSE(second);
  EXPECT_NE(second.error().message().find(name.substr(1)), std::string::npos);
}

TEST(NotifyReceiver, PathUnlinkedOnDestructionOnlyByOwner) {
  test::temp_dir dir;
  const std::string path = dir / "notify.sock";
  {
    auto rx = notify_receiver::open(path);
    ASSERT_TRUE(rx);
    notify_receiver moved(std::move(*rx));
    {
      // Destroying the moved-from object must leave the path alone.
      auto gone = std::move(rx);
    }
    EXPECT_EQ(::access(path.c_str(), F_OK), 0);
    ASSERT_TRUE(notifier(path).ready());
    EXPECT_TRUE(moved.receive(5s));
  }
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << path << " still exists";
}

TEST(NotifyReceiver, MoveAssignmentUnlinksTheReplacedPath) {
  test::temp_dir dir;
  auto a = notify_receiver::open(dir / "a.sock");
  auto b = notify_receiver::open(dir / "b.sock");
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  *a = std::move(*b);
  EXPECT_NE(::access((dir / "a.sock").c_str(), F_OK), 0);
  EXPECT_EQ(::access((dir / "b.sock").c_str(), F_OK), 0);
  EXPECT_EQ(a->address(), dir / "b.sock");
}

TEST(NotifyReceiver, BadAddressesAreRefused) {
  const std::vector<std::string> bad = {"", "relative.sock", "vsock:2:1234", "@",
                                        "/" + std::string(200, 'x')};
  for (const std::string& where : bad) {
    auto rx = notify_receiver::open(where);
    ASSERT_FALSE(rx) << where;
    EXPECT_EQ(rx.error(), errc::invalid_address) << rx.error().message();
  }
}

// ---------------------------------------------------------------------------------------------
// receive: credentials, fds, barrier, timeouts

TEST(NotifyReceiver, TryReceiveWithNothingWaitingIsNullopt) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  auto r = rx->try_receive();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_FALSE(r->has_value());
}

TEST(NotifyReceiver, FdIsReadableWhenAMessageWaits) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  pollfd p{rx->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  ASSERT_TRUE(notifier(rx->address()).watchdog());
  EXPECT_EQ(::poll(&p, 1, 5000), 1);
  auto r = rx->try_receive();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->has_value());
  EXPECT_TRUE((*r)->has("WATCHDOG"));
}

TEST(NotifyReceiver, ReceiveTimesOut) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto start = std::chrono::steady_clock::now();
  auto m = rx->receive(100ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), errc::timed_out);
  EXPECT_NE(m.error().message().find(rx->address()), std::string::npos) << m.error().message();
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 3s);
}

void ignore_signal(int) {}

TEST(NotifyReceiver, ReceiveKeepsWaitingThroughSignals) {
  // SIGALRM without SA_RESTART interrupts poll(2) with EINTR, several times during the wait.
  struct sigaction sa {
  }, old{};
  sa.sa_handler = ignore_signal;
  ASSERT_EQ(::sigaction(SIGALRM, &sa, &old), 0);
  itimerval every_20ms{{0, 20000}, {0, 20000}}, off{};
  ASSERT_EQ(::setitimer(ITIMER_REAL, &every_20ms, nullptr), 0);
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto start = std::chrono::steady_clock::now();
  auto m = rx->receive(200ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ::setitimer(ITIMER_REAL, &off, nullptr);
  ::sigaction(SIGALRM, &old, nullptr);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), errc::timed_out) << m.error().message();
  EXPECT_GE(took, 200ms);
}

TEST(NotifyReceiver, CredentialsOfAForkedChild) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const std::string where = rx->address();
  const pid_t child = fork_child([&] { return notifier(where).ready() ? 0 : 1; });
  ASSERT_GT(child, 0);
  auto m = rx->receive(5s);
  EXPECT_EQ(reap(child), 0);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->pid, child);
  EXPECT_NE(m->pid, ::getpid());
  EXPECT_TRUE(m->has("READY"));
}

TEST(NotifyReceiver, SendOnBehalfOfAnotherPid) {
  // sd_pid_notify: SCM_CREDENTIALS naming another live process (needs CAP_SYS_ADMIN).
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  test_pipe hold;
  const int hold_fd = hold.read_end.get();
  const int release_fd = hold.write_end.get();
  const pid_t child = fork_child([hold_fd, release_fd] {
    ::close(release_fd);
    char c;
    return ::read(hold_fd, &c, 1) >= 0 ? 0 : 1;  // until the parent closes the write end
  });
  ASSERT_GT(child, 0);
  auto sent = notifier(rx->address()).send("MAINPID=" + std::to_string(child), {}, child);
  hold.write_end.reset();
  EXPECT_EQ(reap(child), 0);
  if (!sent && sent.error().code() == std::errc::operation_not_permitted)
    GTEST_SKIP() << "no CAP_SYS_ADMIN: " << sent.error().message();
  ASSERT_TRUE(sent) << sent.error().message();
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->pid, child);
}

TEST(NotifyReceiver, FdstoreFdsArriveCloexecAndUsable) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto baseline = count_open_fds();
  {
    test_pipe p;
    const int fds[] = {p.write_end.get(), p.read_end.get()};
    auto sent = notifier(rx->address()).fdstore(fds, "pipe");
    ASSERT_TRUE(sent) << sent.error().message();
    auto m = rx->receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->get("FDSTORE"), "1");
    EXPECT_EQ(m->get("FDNAME"), "pipe");
    ASSERT_EQ(m->fds.size(), 2u);
    for (const auto& fd : m->fds) {
      EXPECT_TRUE(is_cloexec(fd.get())) << fd.get();
      EXPECT_NE(fd.get(), p.write_end.get());
      EXPECT_NE(fd.get(), p.read_end.get());
    }
    // In order: the received write end feeds our read end, and our write end its read end.
    ASSERT_EQ(::write(m->fds[0].get(), "hello", 5), 5);
    char buf[8] = {};
    ASSERT_EQ(::read(p.read_end.get(), buf, sizeof buf), 5);
    EXPECT_EQ(std::string(buf, 5), "hello");
    ASSERT_EQ(::write(p.write_end.get(), "back", 4), 4);
    ASSERT_EQ(::read(m->fds[1].get(), buf, sizeof buf), 4);
    EXPECT_EQ(std::string(buf, 4), "back");
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(NotifyReceiver, BarrierIsAnsweredAndOrderedAfterEarlierMessages) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const std::string where = rx->address();
  const pid_t child = fork_child([&] {
    const notifier n(where);
    if (!n.mainpid(4242)) return 2;
    auto b = n.barrier(10s);
    return b && *b == notify_outcome::sent ? 0 : 1;
  });
  ASSERT_GT(child, 0);
  auto first = rx->receive(5s);
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_EQ(first->get("MAINPID"), "4242");
  EXPECT_FALSE(first->is_barrier());
  auto barrier = rx->receive(5s);
  ASSERT_TRUE(barrier) << barrier.error().message();
  EXPECT_TRUE(barrier->is_barrier());
  EXPECT_TRUE(barrier->fds.empty()) << "the barrier fd must be closed, not handed out";
  EXPECT_EQ(barrier->pid, child);
  // The child's barrier() only returns (exit 0) once the fd is closed; an unanswered barrier
  // would time out (exit 1) after 10 s.
  EXPECT_EQ(reap(child, 8s), 0);
}

// ---------------------------------------------------------------------------------------------
// Garbage from a misbehaving peer: each datagram is rejected, consumed, its fds closed, and the
// receiver keeps working.

struct garbage_case {
  const char* name;
  std::string bytes;
  std::size_t fds;       // how many pipe ends to pass along
  std::string expected;  // part of the error text
};
void PrintTo(const garbage_case& c, std::ostream* os) { *os << c.name; }

class NotifyGarbage : public testing::TestWithParam<garbage_case> {};

TEST_P(NotifyGarbage, RejectedWithoutLeakAndReceiverStaysUsable) {
  const auto& c = GetParam();
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto baseline = count_open_fds();
  {
    std::vector<test_pipe> pipes(c.fds);
    std::vector<int> fds;
    for (const auto& p : pipes) fds.push_back(p.read_end.get());
    ASSERT_EQ(send_raw(rx->address(), c.bytes, fds), 0);
  }  // our copies are closed: only the in-flight ones remain
  auto m = rx->try_receive();
  ASSERT_FALSE(m) << "accepted: " << ((m && *m) ? (*m)->fields.size() : 0) << " fields";
  EXPECT_EQ(m.error(), errc::invalid_message);
  EXPECT_NE(m.error().message().find("pid " + std::to_string(::getpid())), std::string::npos)
      << m.error().message();
  EXPECT_NE(m.error().message().find(c.expected), std::string::npos) << m.error().message();
  EXPECT_EQ(count_open_fds(), baseline) << "received fds leaked";

  // Consumed: nothing left, and the next valid message comes through.
  auto none = rx->try_receive();
  ASSERT_TRUE(none) << none.error().message();
  EXPECT_FALSE(none->has_value());
  ASSERT_EQ(send_raw(rx->address(), "READY=1"), 0);
  auto next = rx->receive(5s);
  ASSERT_TRUE(next) << next.error().message();
  EXPECT_TRUE(next->has("READY"));
}

INSTANTIATE_TEST_SUITE_P(
    NotifyReceiver, NotifyGarbage,
    testing::Values(
        garbage_case{"Oversized4097", "STATUS=" + std::string(4097 - 7, 'x'), 0, "4097 bytes"},
        garbage_case{"Oversized64k", std::string(65000, 'A'), 0, "65000 bytes"},
        garbage_case{"OversizedWithFds", "FDSTORE=1\nX=" + std::string(5000, 'x'), 3, "bytes"},
        garbage_case{"Empty", "", 0, "empty"}, garbage_case{"EmptyWithFd", "", 1, "empty"},
        garbage_case{"OnlyNewlines", "\n\n", 0, "no KEY=VALUE"},
        garbage_case{"NoEquals", "READY=1\nhello", 0, "\"hello\""},
        garbage_case{"BadKey", "ready=1", 0, "\"ready=1\""},
        garbage_case{"NulByte", "READY=1\nSTATUS=a\0b"s, 0, "NUL"},
        garbage_case{"BadLineWithFds", "FDSTORE=1\nnope", 2, "\"nope\""},
        garbage_case{"FdsWithoutFdstore", "READY=1", 1, "neither FDSTORE=1 nor BARRIER=1"},
        garbage_case{"FdsWithFdstore0", "FDSTORE=0", 2, "neither FDSTORE=1 nor BARRIER=1"},
        garbage_case{"MaxFdsWithoutFdstore", "STATUS=many", notify_fds_max,
                     "253 fds in a message with neither"},
        garbage_case{"BarrierWithoutFd", "BARRIER=1", 0, "0 fds instead of exactly one"},
        garbage_case{"BarrierWithTwoFds", "BARRIER=1", 2, "2 fds instead of exactly one"},
        garbage_case{"BarrierAndFdstore", "BARRIER=1\nFDSTORE=1", 1, "BARRIER=1 and FDSTORE=1"}),
    case_name());

TEST(NotifyReceiver, ExactlyMaxSizeIsAccepted) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const std::string text = "STATUS=" + std::string(notify_message_max - 7, 'x');
  ASSERT_EQ(text.size(), notify_message_max);
  ASSERT_EQ(send_raw(rx->address(), text), 0);
  auto m = rx->receive(5s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->get("STATUS")->size(), notify_message_max - 7);
}

TEST(NotifyReceiver, MaxFdsWithFdstoreAreAllReceived) {
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto baseline = count_open_fds();
  {
    test_pipe p;
    std::vector<int> fds(notify_fds_max, p.read_end.get());
    ASSERT_EQ(send_raw(rx->address(), "FDSTORE=1\nFDNAME=many", fds), 0);
    auto m = rx->receive(5s);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->fds.size(), notify_fds_max);
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(NotifyReceiver, KernelRefusesMoreThanMaxFdsInOneMessage) {
  // 300 fds cannot reach the receiver: the kernel caps one message at SCM_MAX_FD (253) in
  // total, however many SCM_RIGHTS headers carry them, so notify_fds_max is a hard bound.
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  test_pipe p;
  std::vector<int> fds(300, p.read_end.get());
  EXPECT_EQ(send_raw(rx->address(), "FDSTORE=1", fds, 1), EINVAL);
  EXPECT_EQ(send_raw(rx->address(), "FDSTORE=1", fds, 2), EINVAL);
  auto none = rx->try_receive();
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

TEST(NotifyReceiver, FdsThatDoNotFitAreReportedAsTruncated) {
  // With RLIMIT_NOFILE reached the kernel installs what fits, drops the rest and sets
  // MSG_CTRUNC: the message is incomplete and must be refused, and the part received closed.
  auto rx = notify_receiver::open_unique();
  ASSERT_TRUE(rx);
  const auto baseline = count_open_fds();
  test_pipe p;
  std::vector<int> fds(20, p.read_end.get());
  ASSERT_EQ(send_raw(rx->address(), "FDSTORE=1\nFDNAME=truncated", fds), 0);

  // Fill the holes below the highest open fd, then leave room for 5 of the 20 fds.
  const auto open = test::open_fds();
  const int highest = *std::max_element(open.begin(), open.end());
  std::vector<unique_fd> fillers;
  for (;;) {
    unique_fd f(::fcntl(0, F_DUPFD_CLOEXEC, 0));
    ASSERT_TRUE(f);
    if (f.get() > highest) break;
    fillers.push_back(std::move(f));
  }
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(highest + 1 + 5);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  auto m = rx->try_receive();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);

  ASSERT_FALSE(m) << "an incomplete FDSTORE message was accepted";
  EXPECT_EQ(m.error(), errc::invalid_message);
  EXPECT_NE(m.error().message().find("truncated"), std::string::npos) << m.error().message();
  EXPECT_NE(m.error().message().find("5 fds received and closed"), std::string::npos)
      << m.error().message();
  fillers.clear();
  p = test_pipe();
  EXPECT_EQ(count_open_fds(), baseline + 2);  // just the new pipe: the 5 received fds are closed
  ASSERT_EQ(send_raw(rx->address(), "READY=1"), 0);
  auto next = rx->receive(5s);
  ASSERT_TRUE(next) << next.error().message();
}

}  // namespace
}  // namespace handoff
