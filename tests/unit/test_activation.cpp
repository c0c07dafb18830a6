// The receiving side of the socket-passing protocol, in this process: parsing LISTEN_* (table
// driven, malformed input first), listen_fds() on the variables and on fds of this process, the
// unsetting of the environment, and socket_set's lookups. What a received fd looks like in a
// real child is tested in tests/integration (fd_report).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <optional>
#include <string>
#include <vector>

#include "handoff/activation.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr pid_t self = 4242;
const std::optional<std::string> unset;

listen_environment env(std::optional<std::string> pid, std::optional<std::string> fds,
                       std::optional<std::string> names = std::nullopt) {
  return listen_environment{std::move(pid), std::move(fds), std::move(names)};
}

// gtest test names from the `what` of each case.
template <class Case>
std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  std::string name = param_info.param.what;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

struct not_for_us_case {
  const char* what;
  listen_environment vars;
};

// Failures name the case, not its bytes.
void PrintTo(const not_for_us_case& c, std::ostream* os) { *os << c.what; }

class NotForUs : public ::testing::TestWithParam<not_for_us_case> {};

TEST_P(NotForUs, IsAnEmptyResultNotAnError) {
  auto plan = parse_listen_environment(GetParam().vars, self);
  ASSERT_TRUE(plan) << plan.error().message();
  EXPECT_FALSE(plan->for_us);
  EXPECT_EQ(plan->count, 0);
  EXPECT_TRUE(plan->names.empty());
  auto sockets = listen_fds(GetParam().vars, self);
  ASSERT_TRUE(sockets) << sockets.error().message();
  EXPECT_TRUE(sockets->empty());
}

INSTANTIATE_TEST_SUITE_P(
    Table, NotForUs,
    ::testing::Values(not_for_us_case{"nothing set", env(unset, unset)},
                      not_for_us_case{"pid missing", env(unset, "2", "a:b")},
                      not_for_us_case{"pid missing, garbage count", env(unset, "3x", "a")},
                      not_for_us_case{"other pid", env("4243", "2", "a:b")},
                      not_for_us_case{"other pid, garbage count", env("1", "-1", "::::")},
                      not_for_us_case{"other pid, prefix of ours", env("424", "1")},
                      not_for_us_case{"other pid, ours as prefix", env("42420", "1")}),
    case_name<not_for_us_case>);

struct valid_case {
  const char* what;
  listen_environment vars;
  int count;
  std::vector<std::string> names;
};

// Failures name the case, not its bytes.
void PrintTo(const valid_case& c, std::ostream* os) { *os << c.what; }

class Valid : public ::testing::TestWithParam<valid_case> {};

TEST_P(Valid, GivesCountAndOneNamePerFd) {
  auto plan = parse_listen_environment(GetParam().vars, self);
  ASSERT_TRUE(plan) << plan.error().message();
  EXPECT_TRUE(plan->for_us);
  EXPECT_EQ(plan->count, GetParam().count);
  EXPECT_EQ(plan->names, GetParam().names);
}

INSTANTIATE_TEST_SUITE_P(
    Table, Valid,
    ::testing::Values(
        valid_case{"count unset", env("4242", unset), 0, {}},
        valid_case{"zero", env("4242", "0"), 0, {}},
        valid_case{"zero with empty names", env("4242", "0", ""), 0, {}},
        valid_case{"names missing", env("4242", "3"), 3, {"unknown", "unknown", "unknown"}},
        valid_case{"named", env("4242", "2", "http:https"), 2, {"http", "https"}},
        valid_case{"one empty name", env("4242", "1", ""), 1, {"unknown"}},
        valid_case{"empty name in the middle", env("4242", "3", "a::c"), 3, {"a", "unknown", "c"}},
        valid_case{"only separators", env("4242", "2", ":"), 2, {"unknown", "unknown"}},
        valid_case{"names systemd accepts",
                   env("4242", "2", "web server=1:x.y"),
                   2,
                   {"web server=1", "x.y"}},
        valid_case{"leading zeros are decimal", env("4242", "010"), 10,
                   std::vector<std::string>(10, "unknown")},
        valid_case{"pid with leading zero", env("04242", "1", "a"), 1, {"a"}},
        valid_case{"the largest count", env("4242", "65536"), 65536,
                   std::vector<std::string>(65536, "unknown")}),
    case_name<valid_case>);

struct invalid_case {
  const char* what;
  listen_environment vars;
  const char* message_part;  // the quoted variable and value, and the reason
};

// Failures name the case, not its bytes.
void PrintTo(const invalid_case& c, std::ostream* os) { *os << c.what; }

class Invalid : public ::testing::TestWithParam<invalid_case> {};

TEST_P(Invalid, IsAnErrorQuotingTheVariable) {
  auto plan = parse_listen_environment(GetParam().vars, self);
  ASSERT_FALSE(plan) << "accepted, count " << plan->count;
  EXPECT_TRUE(plan.error() == errc::invalid_environment) << plan.error().message();
  EXPECT_THAT(plan.error().message(), HasSubstr(GetParam().message_part));
  // listen_fds() rejects the same variables too (a name mismatch after making fds 3.. of this
  // process close-on-exec, which is harmless here).
  auto sockets = listen_fds(GetParam().vars, self);
  ASSERT_FALSE(sockets);
  EXPECT_TRUE(sockets.error() == errc::invalid_environment) << sockets.error().message();
}

INSTANTIATE_TEST_SUITE_P(
    Table, Invalid,
    ::testing::Values(
        invalid_case{"pid empty", env("", "1"), "LISTEN_PID=\"\": not a process id"},
        invalid_case{"pid garbage", env("abc", "1"), "LISTEN_PID=\"abc\": not a process id"},
        invalid_case{"pid zero", env("0", "1"), "LISTEN_PID=\"0\": not a process id"},
        invalid_case{"pid negative", env("-4242", "1"), "LISTEN_PID=\"-4242\""},
        invalid_case{"pid plus", env("+4242", "1"), "LISTEN_PID=\"+4242\""},
        invalid_case{"pid space", env(" 4242", "1"), "LISTEN_PID=\" 4242\""},
        invalid_case{"pid trailing", env("4242\n", "1"), "LISTEN_PID=\"4242\\x0a\""},
        invalid_case{"pid too large", env("99999999999999999999", "1"),
                     "LISTEN_PID=\"99999999999999999999\""},
        invalid_case{"count empty", env("4242", ""), "LISTEN_FDS=\"\": not a number"},
        invalid_case{"count trailing junk", env("4242", "3x"),
                     "LISTEN_FDS=\"3x\": not a number (expected the count of fds passed from "
                     "fd 3 on)"},
        invalid_case{"count minus one", env("4242", "-1"), "LISTEN_FDS=\"-1\": negative"},
        invalid_case{"count plus", env("4242", "+1"), "LISTEN_FDS=\"+1\": not a number"},
        invalid_case{"count leading space", env("4242", " 1"), "LISTEN_FDS=\" 1\": not a number"},
        invalid_case{"count trailing space", env("4242", "1 "), "LISTEN_FDS=\"1 \": not a number"},
        invalid_case{"count hex", env("4242", "0x1"), "LISTEN_FDS=\"0x1\": not a number"},
        invalid_case{"count minus", env("4242", "-"), "LISTEN_FDS=\"-\": not a number"},
        invalid_case{"count huge", env("4242", "99999999999"),
                     "LISTEN_FDS=\"99999999999\": more than 65536 fds"},
        invalid_case{"count one over", env("4242", "65537"),
                     "LISTEN_FDS=\"65537\": more than 65536 fds"},
        invalid_case{"count with a NUL", env("4242", std::string("1\0", 2)),
                     "LISTEN_FDS=\"1\\x00\": not a number"},
        invalid_case{"fewer names", env("4242", "3", "a:b"),
                     "LISTEN_FDNAMES=\"a:b\" has 2 names but LISTEN_FDS=\"3\" passes 3 fds"},
        invalid_case{"more names", env("4242", "1", "a:b"),
                     "LISTEN_FDNAMES=\"a:b\" has 2 names but LISTEN_FDS=\"1\" passes 1 fd"},
        invalid_case{"names without fds", env("4242", "0", "a"),
                     "LISTEN_FDNAMES=\"a\" has 1 name but LISTEN_FDS=\"0\" passes 0 fds"},
        invalid_case{"names, count unset", env("4242", unset, "a"),
                     "LISTEN_FDNAMES=\"a\" has 1 name but LISTEN_FDS unset passes 0 fds"},
        invalid_case{"empty names for two", env("4242", "2", ""),
                     "LISTEN_FDNAMES=\"\" has 1 name but LISTEN_FDS=\"2\" passes 2 fds"}),
    case_name<invalid_case>);

TEST(ParseListenEnvironment, QuotesAbsurdValuesShortAndEscaped) {
  const std::string value = std::string(1000, '7') + "\"\x01";
  auto plan = parse_listen_environment(env("4242", value), self);
  ASSERT_FALSE(plan);
  const std::string message = plan.error().message();
  EXPECT_LT(message.size(), 200u) << message;
  EXPECT_THAT(message, HasSubstr("LISTEN_FDS=\"7777"));
  EXPECT_THAT(message, HasSubstr("...\""));
}

TEST(ParseListenEnvironment, ManyNamesForFewFdsStaysCheap) {
  // A runaway LISTEN_FDNAMES must not be split all the way before the mismatch is reported.
  const std::string names(1 << 20, ':');
  auto plan = parse_listen_environment(env("4242", "1", names), self);
  ASSERT_FALSE(plan);
  EXPECT_THAT(plan.error().message(), HasSubstr("has 1048577 names"));
}

// Environment variables of this test process, restored afterwards.
class saved_environment {
 public:
  saved_environment() {
    for (const char* name : names_) {
      const char* v = std::getenv(name);
      saved_.push_back(v != nullptr ? std::optional<std::string>(v) : std::nullopt);
    }
  }
  ~saved_environment() {
    for (std::size_t i = 0; i < saved_.size(); ++i) {
      if (saved_[i])
        ::setenv(names_[i], saved_[i]->c_str(), 1);
      else
        ::unsetenv(names_[i]);
    }
  }
  saved_environment(const saved_environment&) = delete;
  saved_environment& operator=(const saved_environment&) = delete;

 private:
  static constexpr const char* names_[] = {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"};
  std::vector<std::optional<std::string>> saved_;
};

void set_listen(const char* pid, const char* fds, const char* names) {
  ::setenv("LISTEN_PID", pid, 1);
  ::setenv("LISTEN_FDS", fds, 1);
  ::setenv("LISTEN_FDNAMES", names, 1);
}

bool listen_vars_unset() {
  return std::getenv("LISTEN_PID") == nullptr && std::getenv("LISTEN_FDS") == nullptr &&
         std::getenv("LISTEN_FDNAMES") == nullptr;
}

TEST(ListenEnvironment, FromProcessReadsTheThreeVariables) {
  saved_environment saved;
  set_listen("12", "3", "a:b:c");
  auto e = listen_environment::from_process();
  EXPECT_EQ(e.pid, "12");
  EXPECT_EQ(e.fds, "3");
  EXPECT_EQ(e.fdnames, "a:b:c");
  ::unsetenv("LISTEN_FDNAMES");
  ::setenv("LISTEN_FDS", "", 1);
  e = listen_environment::from_process();
  EXPECT_EQ(e.fds, "");  // set but empty is not unset
  EXPECT_EQ(e.fdnames, std::nullopt);
}

TEST(ListenFdsFromProcess, UnsetsTheVariablesWhenNotForUs) {
  saved_environment saved;
  const std::string other = std::to_string(::getpid() + 1);
  set_listen(other.c_str(), "2", "a:b");
  auto sockets = listen_fds();
  ASSERT_TRUE(sockets) << sockets.error().message();
  EXPECT_TRUE(sockets->empty());
  EXPECT_TRUE(listen_vars_unset());
}

TEST(ListenFdsFromProcess, UnsetsTheVariablesOnError) {
  saved_environment saved;
  const std::string me = std::to_string(::getpid());
  set_listen(me.c_str(), "3x", "a");
  auto sockets = listen_fds();
  ASSERT_FALSE(sockets);
  EXPECT_THAT(sockets.error().message(), HasSubstr("LISTEN_FDS=\"3x\""));
  EXPECT_TRUE(listen_vars_unset());
}

TEST(ListenFdsFromProcess, KeepsTheVariablesWhenAskedTo) {
  saved_environment saved;
  const std::string other = std::to_string(::getpid() + 1);
  set_listen(other.c_str(), "2", "a:b");
  auto sockets = listen_fds(unset_environment::no);
  ASSERT_TRUE(sockets) << sockets.error().message();
  EXPECT_TRUE(sockets->empty());
  EXPECT_STREQ(std::getenv("LISTEN_PID"), other.c_str());
  EXPECT_STREQ(std::getenv("LISTEN_FDS"), "2");
  EXPECT_STREQ(std::getenv("LISTEN_FDNAMES"), "a:b");
}

TEST(ListenFdsFromProcess, ZeroFdsForUsIsEmpty) {
  saved_environment saved;
  const std::string me = std::to_string(::getpid());
  set_listen(me.c_str(), "0", "");
  auto sockets = listen_fds();
  ASSERT_TRUE(sockets) << sockets.error().message();
  EXPECT_TRUE(sockets->empty());
  EXPECT_TRUE(listen_vars_unset());
}

// The lowest fd number from which `n` numbers are free in this process.
int free_run(int n) {
  for (int start = listen_fds_start;; ++start) {
    bool free = true;
    for (int fd = start; fd < start + n && free; ++fd) free = !fd_is_open(fd);
    if (free) return start;
  }
}

TEST(ListenFds, MakesOpenFdsCloseOnExecEvenWhenOneIsMissing) {
  // An fd without FD_CLOEXEC inside the announced range, and a hole right after it: the
  // error must come, and the open fd must have been made close-on-exec first.
  const int at = free_run(2);
  // Deliberately inheritable, as a manager passes it.
  unique_fd sock(::socket(AF_UNIX, SOCK_STREAM, 0));  // NOLINT(android-cloexec-socket)
  ASSERT_TRUE(sock);
  if (sock.get() != at) {
    ASSERT_EQ(::dup2(sock.get(), at), at);
    sock.reset(at);
  }
  ASSERT_EQ(::fcntl(at, F_GETFD) & FD_CLOEXEC, 0);
  const int count = at + 2 - listen_fds_start;  // 3 .. at+1; at+1 is not open
  int first_missing = listen_fds_start;
  while (fd_is_open(first_missing)) ++first_missing;
  auto sockets = listen_fds(env(std::to_string(self), std::to_string(count)), self);
  ASSERT_FALSE(sockets);
  EXPECT_TRUE(sockets.error() == errc::invalid_environment);
  EXPECT_THAT(sockets.error().message(),
              HasSubstr("LISTEN_FDS=\"" + std::to_string(count) + "\": fd " +
                        std::to_string(first_missing) + " is not open"));
  EXPECT_TRUE(fd_is_open(at)) << "an error must not close the fds";
  EXPECT_NE(::fcntl(at, F_GETFD) & FD_CLOEXEC, 0) << "fd " << at << " left inheritable";
}

// Runs `body` in a forked child of this test whose fds from 3 on are closed first, so that fds
// 3.. can be laid out as a manager would (ctest itself leaks its log file into tests on fd 3).
// `body` returns what went wrong, "" when nothing did; gtest's assertions stay in the parent.
std::string in_clean_child(std::string (*body)()) {
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) return "pipe2 failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out = ::fcntl(report[1], F_DUPFD_CLOEXEC, 1000);
    ::close_range(listen_fds_start, static_cast<unsigned>(out) - 1, 0);
    ::close_range(static_cast<unsigned>(out) + 1, ~0U, 0);
    const std::string failure = body();
    (void)!::write(out, failure.data(), failure.size());
    ::_exit(0);
  }
  ::close(report[1]);
  std::string failure;
  char buf[512];
  ssize_t n;
  while ((n = ::read(report[0], buf, sizeof buf)) > 0) failure.append(buf, static_cast<size_t>(n));
  ::close(report[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    failure += "the child ended with status " + std::to_string(status);
  return failure;
}

#define CHILD_CHECK(cond) \
  if (!(cond)) failures += std::string(#cond) + " (line " + std::to_string(__LINE__) + ")\n"

TEST(ListenFds, MakesOpenFdsCloseOnExecEvenWhenTheNamesAreWrong) {
  const std::string found = in_clean_child([] {
    std::string failures;
    // Inheritable, as a manager passes it.
    const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);  // NOLINT(android-cloexec-socket)
    CHILD_CHECK(sock == listen_fds_start);
    auto sockets = listen_fds(env(std::to_string(self), "1", "a:b"), self);
    CHILD_CHECK(!sockets);
    if (!sockets) {
      CHILD_CHECK(sockets.error().message().find("LISTEN_FDNAMES=\"a:b\" has 2 names") !=
                  std::string::npos);
    }
    CHILD_CHECK(fd_is_open(listen_fds_start));
    CHILD_CHECK((::fcntl(listen_fds_start, F_GETFD) & FD_CLOEXEC) != 0);
    return failures;
  });
  EXPECT_EQ(found, "");
}

TEST(ListenFds, TakesRealFdsFromThree) {
  const std::string found = in_clean_child([] {
    std::string failures;
    const int listener = ::socket(AF_INET, SOCK_STREAM, 0);  // NOLINT(android-cloexec-socket)
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHILD_CHECK(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    CHILD_CHECK(::listen(listener, 4) == 0);
    socklen_t len = sizeof addr;
    CHILD_CHECK(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    int pair[2];
    CHILD_CHECK(::socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) == 0);  // NOLINT(android-cloexec-*)
    ::close(pair[1]);
    int pipe_fds[2];
    CHILD_CHECK(::pipe(pipe_fds) == 0);  // NOLINT(android-cloexec-pipe)
    ::close(pipe_fds[1]);
    CHILD_CHECK(listener == 3 && pair[0] == 4 && pipe_fds[0] == 5);

    auto sockets = listen_fds(env(std::to_string(self), "3", "http::fifo"), self);
    CHILD_CHECK(sockets);
    if (!sockets) return failures + sockets.error().message();
    CHILD_CHECK(sockets->size() == 3);
    if (sockets->size() != 3) return failures;
    const auto& http = (*sockets)[0];
    CHILD_CHECK(http.fd.get() == 3);
    CHILD_CHECK(http.name == "http");
    CHILD_CHECK(http.info.family == socket_family::ipv4);
    CHILD_CHECK(http.info.type == socket_type::stream);
    CHILD_CHECK(http.info.listening);
    CHILD_CHECK(http.info.local.host == "127.0.0.1");
    CHILD_CHECK(http.info.local.port == ntohs(addr.sin_port));
    CHILD_CHECK((*sockets)[1].fd.get() == 4);
    CHILD_CHECK((*sockets)[1].name == "unknown");
    CHILD_CHECK((*sockets)[1].info.family == socket_family::unix_domain);
    CHILD_CHECK((*sockets)[1].info.type == socket_type::datagram);
    CHILD_CHECK(!(*sockets)[1].info.listening);
    CHILD_CHECK((*sockets)[2].fd.get() == 5);
    CHILD_CHECK((*sockets)[2].name == "fifo");
    CHILD_CHECK(!(*sockets)[2].info.is_socket());  // a pipe is passed on as family none
    for (int fd = 3; fd <= 5; ++fd) CHILD_CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    sockets->clear();  // the result owns them: they close with it
    for (int fd = 3; fd <= 5; ++fd) CHILD_CHECK(!fd_is_open(fd));
    return failures;
  });
  EXPECT_EQ(found, "");
}

// socket_set: lookups over sockets made here with raw system calls.
unique_fd loopback_listener(std::uint16_t& port) {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  if (::listen(fd.get(), 4) != 0) return {};
  socklen_t len = sizeof addr;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  return fd;
}

inherited_socket inherit(unique_fd fd, std::string name) {
  auto info = inspect_socket(fd.get());
  return inherited_socket{std::move(fd), std::move(name), info ? *info : socket_info{}};
}

class SocketSet : public ::testing::Test {
 protected:
  void SetUp() override {
    auto http = loopback_listener(http_port_);
    auto admin = loopback_listener(admin_port_);
    ASSERT_TRUE(http && admin);
    http_fd_ = http.get();
    admin_fd_ = admin.get();
    std::vector<inherited_socket> inherited;
    inherited.push_back(inherit(std::move(http), "http"));
    inherited.push_back(inherit(std::move(admin), "unknown"));
    set_ = socket_set(std::move(inherited));
  }
  address tcp(std::uint16_t port, std::string name = "") {
    address a;
    a.name = std::move(name);
    a.kind = transport::tcp;
    a.host = "127.0.0.1";
    a.port = port;
    return a;
  }
  socket_set set_;
  std::uint16_t http_port_ = 0, admin_port_ = 0;
  int http_fd_ = -1, admin_fd_ = -1;
};

TEST_F(SocketSet, FindsByName) {
  EXPECT_EQ(set_.find(std::string_view("http")), http_fd_);
  EXPECT_EQ(set_.find(std::string_view("unknown")), admin_fd_);
  EXPECT_EQ(set_.find(std::string_view("nope")), -1);
  EXPECT_EQ(set_.find(std::string_view("")), -1);
}

TEST_F(SocketSet, FindsByAddress) {
  EXPECT_EQ(set_.find(tcp(http_port_)), http_fd_);
  EXPECT_EQ(set_.find(tcp(admin_port_)), admin_fd_);
  address udp = tcp(http_port_);
  udp.kind = transport::udp;
  EXPECT_EQ(set_.find(udp), -1) << "same port, other transport";
  address other_host = tcp(http_port_);
  other_host.host = "127.0.0.2";
  EXPECT_EQ(set_.find(other_host), -1);
}

TEST_F(SocketSet, ListenReturnsTheInheritedSocketByNameFirst) {
  // Named "http" but written with admin's port: the name wins, nothing is opened.
  auto fd = set_.listen(tcp(admin_port_, "http"));
  ASSERT_TRUE(fd) << fd.error().message();
  EXPECT_EQ(*fd, http_fd_);
  EXPECT_EQ(set_.sockets().size(), 2u);
}

TEST_F(SocketSet, ListenFallsBackToTheAddress) {
  auto unnamed = set_.listen(tcp(admin_port_));
  ASSERT_TRUE(unnamed) << unnamed.error().message();
  EXPECT_EQ(*unnamed, admin_fd_);
  auto unknown_name = set_.listen(tcp(http_port_, "metrics"));
  ASSERT_TRUE(unknown_name) << unknown_name.error().message();
  EXPECT_EQ(*unknown_name, http_fd_);
  EXPECT_EQ(set_.sockets().size(), 2u);
}

TEST_F(SocketSet, ListenOpensWhatWasNotInheritedAndKeepsIt) {
  auto fd = set_.listen(tcp(0, "extra"));
  ASSERT_TRUE(fd) << fd.error().message();
  EXPECT_NE(*fd, http_fd_);
  EXPECT_NE(*fd, admin_fd_);
  ASSERT_EQ(set_.sockets().size(), 3u);
  EXPECT_EQ(set_.sockets().back().name, "extra");
  EXPECT_TRUE(set_.sockets().back().info.listening);
  EXPECT_EQ(set_.find(std::string_view("extra")), *fd);
  EXPECT_NE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC, 0);
  // Asked again, by name: the same socket, not a second one.
  auto again = set_.listen(tcp(0, "extra"));
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *fd);
  EXPECT_EQ(set_.sockets().size(), 3u);
}

TEST_F(SocketSet, ListenTextParsesFirst) {
  auto fd = set_.listen("http=127.0.0.1:" + std::to_string(admin_port_));
  ASSERT_TRUE(fd) << fd.error().message();
  EXPECT_EQ(*fd, http_fd_);
  auto by_address = set_.listen("127.0.0.1:" + std::to_string(admin_port_));
  ASSERT_TRUE(by_address) << by_address.error().message();
  EXPECT_EQ(*by_address, admin_fd_);
  auto bad = set_.listen(std::string_view("127.0.0.1:notaport"));
  ASSERT_FALSE(bad);
  EXPECT_TRUE(bad.error() == errc::invalid_address) << bad.error().message();
  EXPECT_EQ(set_.sockets().size(), 2u);
}

TEST_F(SocketSet, ListenReportsAnAddressInUse) {
  // Port taken by a socket outside the set (not inherited): open_listener fails, with the cause.
  std::uint16_t port = 0;
  auto outside = loopback_listener(port);
  ASSERT_TRUE(outside);
  auto fd = set_.listen(tcp(port, "busy"));
  ASSERT_FALSE(fd);
  EXPECT_EQ(fd.error().code(), std::errc::address_in_use) << fd.error().message();
  EXPECT_EQ(set_.sockets().size(), 2u);
}

TEST(SocketSetFromEnvironment, NotForUsGivesAnEmptySet) {
  saved_environment saved;
  const std::string other = std::to_string(::getpid() + 1);
  set_listen(other.c_str(), "1", "x");
  auto set = socket_set::from_environment();
  ASSERT_TRUE(set) << set.error().message();
  EXPECT_TRUE(set->sockets().empty());
  EXPECT_TRUE(listen_vars_unset());
}

}  // namespace
}  // namespace handoff
