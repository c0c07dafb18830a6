#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <vector>

#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

address parse(std::string_view text) { return parse_address(text).value(); }

unique_fd must_listen(std::string_view text, const listen_options& options = {}) {
  auto fd = open_listener(parse(text), options);
  if (!fd) ADD_FAILURE() << fd.error().message();
  return fd ? std::move(*fd) : unique_fd();
}

// A blocking connect to a TCP port; the fd is invalid if refused.
unique_fd connect_tcp(const char* host, std::uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (std::string(host).find(':') != std::string::npos) {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(ss);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    ::inet_pton(AF_INET6, host, &in6.sin6_addr);
    len = sizeof in6;
  } else {
    auto& in = reinterpret_cast<sockaddr_in&>(ss);
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    ::inet_pton(AF_INET, host, &in.sin_addr);
    len = sizeof in;
  }
  unique_fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) fd.reset();
  return fd;
}

unique_fd connect_unix(const std::string& where) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  socklen_t len = offsetof(sockaddr_un, sun_path) + where.size();
  where.copy(sa.sun_path, where.size());
  if (where.front() == '@') {
    sa.sun_path[0] = '\0';
  } else {
    ++len;
  }
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0) fd.reset();
  return fd;
}

// Accepting proves the connection reached this listener's queue.
bool accepts(int listener) {
  unique_fd conn(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  return conn.valid();
}

bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

int int_option(int fd, int level, int name) {
  int v = -1;
  socklen_t l = sizeof v;
  ::getsockopt(fd, level, name, &v, &l);
  return v;
}

TEST(OpenListener, TcpV4PortZeroReadsBackTheBoundPort) {
  auto fd = must_listen("127.0.0.1:0");
  ASSERT_TRUE(fd);
  EXPECT_TRUE(is_cloexec(fd.get()));
  EXPECT_EQ(int_option(fd.get(), SOL_SOCKET, SO_REUSEADDR), 1);
  auto local = local_address(fd.get());
  ASSERT_TRUE(local) << local.error().message();
  EXPECT_EQ(local->host, "127.0.0.1");
  EXPECT_NE(local->port, 0);
  auto client = connect_tcp("127.0.0.1", local->port);
  ASSERT_TRUE(client);
  EXPECT_TRUE(accepts(fd.get()));

  auto info = inspect_socket(fd.get());
  ASSERT_TRUE(info);
  EXPECT_EQ(info->family, socket_family::ipv4);
  EXPECT_EQ(info->type, socket_type::stream);
  EXPECT_TRUE(info->listening);
  EXPECT_EQ(info->describe(), "tcp 127.0.0.1:" + std::to_string(local->port) + " listening");
}

TEST(OpenListener, TcpV6Loopback) {
  auto fd = must_listen("[::1]:0");
  ASSERT_TRUE(fd);
  auto info = inspect_socket(fd.get());
  ASSERT_TRUE(info);
  EXPECT_EQ(info->family, socket_family::ipv6);
  EXPECT_EQ(info->describe(), "tcp [::1]:" + std::to_string(info->local.port) + " listening");
  ASSERT_TRUE(connect_tcp("::1", info->local.port));
  EXPECT_TRUE(accepts(fd.get()));
}

TEST(OpenListener, WildcardIsDualStackByDefault) {
  auto fd = must_listen(":0");
  ASSERT_TRUE(fd);
  auto local = local_address(fd.get());
  ASSERT_TRUE(local);
  EXPECT_EQ(local->host, "::");
  EXPECT_EQ(int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY), 0);
  ASSERT_TRUE(connect_tcp("127.0.0.1", local->port));
  EXPECT_TRUE(accepts(fd.get()));
  ASSERT_TRUE(connect_tcp("::1", local->port));
  EXPECT_TRUE(accepts(fd.get()));
}

TEST(OpenListener, V6OnlyRefusesIpv4) {
  listen_options options;
  options.v6only = ipv6_only::v6_only;
  auto fd = must_listen("[::]:0", options);
  ASSERT_TRUE(fd);
  EXPECT_EQ(int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY), 1);
  auto local = local_address(fd.get());
  ASSERT_TRUE(local);
  EXPECT_FALSE(connect_tcp("127.0.0.1", local->port));
  EXPECT_TRUE(connect_tcp("::1", local->port));
}

TEST(OpenListener, AddressInUseNamesTheAddress) {
  auto first = must_listen("127.0.0.1:0");
  auto port = local_address(first.get())->port;
  auto second = open_listener(parse("127.0.0.1:" + std::to_string(port)));
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().message(),
            "bind tcp://127.0.0.1:" + std::to_string(port) + ": Address already in use");
  EXPECT_EQ(second.error(), std::errc::address_in_use);
}

TEST(OpenListener, LocalhostResolvesToLoopback) {
  auto fd = must_listen("localhost:0");
  ASSERT_TRUE(fd);
  auto local = local_address(fd.get());
  ASSERT_TRUE(local);
  EXPECT_TRUE(local->host == "127.0.0.1" || local->host == "::1") << local->host;
}

TEST(OpenListener, NonLocalAddressFailsWithErrno) {
  auto fd = open_listener(parse("192.0.2.1:0"));  // TEST-NET-1: never an address of ours
  ASSERT_FALSE(fd);
  EXPECT_EQ(fd.error().message(), "bind tcp://192.0.2.1:0: Cannot assign requested address");
}

// ss(8) shows a listening socket's backlog in its Send-Q column.
int backlog_of(std::uint16_t port) {
  const std::string command = "ss -ltnH 'sport = :" + std::to_string(port) + "'";
  std::FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return -1;
  char state[32] = {};
  int recv_q = -1, send_q = -1;
  const int n = std::fscanf(p, "%31s %d %d", state, &recv_q, &send_q);
  ::pclose(p);
  return n == 3 ? send_q : -1;
}

TEST(OpenListener, BacklogDefaultsToSomaxconn) {
  if (std::system("command -v ss >/dev/null") != 0) GTEST_SKIP() << "ss (iproute2) not installed";
  auto fd = must_listen("127.0.0.1:0");
  EXPECT_EQ(backlog_of(local_address(fd.get())->port), kernel_somaxconn());
  listen_options options;
  options.backlog = 7;
  auto small = must_listen("127.0.0.1:0", options);
  EXPECT_EQ(backlog_of(local_address(small.get())->port), 7);
}

TEST(OpenListener, SomaxconnIsReadFromTheKernel) {
  std::ifstream in("/proc/sys/net/core/somaxconn");
  int expected = 0;
  ASSERT_TRUE(in >> expected);
  EXPECT_EQ(kernel_somaxconn(), expected);
}

TEST(OpenListener, Udp) {
  auto fd = must_listen("udp://127.0.0.1:0");
  ASSERT_TRUE(fd);
  auto info = inspect_socket(fd.get());
  ASSERT_TRUE(info);
  EXPECT_EQ(info->type, socket_type::datagram);
  EXPECT_FALSE(info->listening);
  EXPECT_EQ(info->local.kind, transport::udp);
  EXPECT_EQ(info->describe(), "udp 127.0.0.1:" + std::to_string(info->local.port));

  unique_fd sender(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(info->local.port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::sendto(sender.get(), "hi", 2, 0, reinterpret_cast<sockaddr*>(&to), sizeof to), 2);
  char buf[8] = {};
  EXPECT_EQ(::recv(fd.get(), buf, sizeof buf, 0), 2);
}

TEST(OpenListener, UnixPathWithMode) {
  test::temp_dir dir;
  const std::string path = dir / "app.sock";
  listen_options options;
  options.unix_mode = 0600;
  auto fd = must_listen("unix:" + path, options);
  ASSERT_TRUE(fd);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto info = inspect_socket(fd.get());
  ASSERT_TRUE(info);
  EXPECT_EQ(info->describe(), "unix-stream " + path + " listening");
  EXPECT_TRUE(socket_matches(*info, parse("unix:" + path)));
  ASSERT_TRUE(connect_unix(path));
  EXPECT_TRUE(accepts(fd.get()));
}

TEST(OpenListener, UnixPathReplacesAStaleSocketFile) {
  test::temp_dir dir;
  const std::string path = dir / "stale.sock";
  { auto dead = must_listen("unix:" + path); }  // closed, file left behind as by a crash
  ASSERT_EQ(::access(path.c_str(), F_OK), 0);
  auto fd = must_listen("unix:" + path);
  ASSERT_TRUE(fd);
  ASSERT_TRUE(connect_unix(path));
  EXPECT_TRUE(accepts(fd.get()));
}

TEST(OpenListener, UnixPathRefusesToStealALiveListener) {
  test::temp_dir dir;
  const std::string path = dir / "live.sock";
  auto owner = must_listen("unix:" + path);
  ASSERT_TRUE(owner);
  auto thief = open_listener(parse("unix:" + path));
  ASSERT_FALSE(thief);
  EXPECT_EQ(thief.error().message(),
            "bind unix:" + path + ": another process listens on it: Address already in use");
  // The owner still has its path and its clients.
  ASSERT_TRUE(connect_unix(path));
  EXPECT_TRUE(accepts(owner.get()));
}

TEST(OpenListener, UnixPathNeverRemovesAFileThatIsNotASocket) {
  test::temp_dir dir;
  const std::string path = dir / "data.txt";
  std::ofstream(path) << "precious";
  auto fd = open_listener(parse("unix:" + path));
  ASSERT_FALSE(fd);
  EXPECT_NE(fd.error().message().find("exists and is not a socket"), std::string::npos);
  std::ifstream in(path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

// Makes the given system calls fail with `err` in this process from now on (seccomp(2)): a real
// refusal by the kernel at a step that nothing else makes fail on demand. Call in a child.
bool refuse_syscalls(std::initializer_list<int> numbers, int err) {
  std::vector<sock_filter> filter;
  filter.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
  for (int nr : numbers) {
    filter.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<unsigned>(nr), 0, 1));
    filter.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)));
  }
  filter.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  sock_fprog program{static_cast<unsigned short>(filter.size()), filter.data()};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// In a child whose `numbers` fail with EACCES: opens unix:path and says how it went.
enum open_outcome { refused_and_removed = 10, refused_but_left = 11, opened = 12, no_seccomp = 13 };
int open_unix_with_refused(const std::string& path, const listen_options& options,
                           std::initializer_list<int> numbers) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (!refuse_syscalls(numbers, EACCES)) ::_exit(no_seccomp);
    auto fd = open_listener(parse_address("unix:" + path).value(), options);
    if (fd) ::_exit(opened);
    ::_exit(::access(path.c_str(), F_OK) == 0 ? refused_but_left : refused_and_removed);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(OpenListener, UnixSocketFileIsRemovedWhenListenFails) {
  test::temp_dir dir;
  const std::string path = dir / "app.sock";
  const int outcome = open_unix_with_refused(path, {}, {__NR_listen});
  if (outcome == no_seccomp) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(outcome, refused_and_removed);
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

TEST(OpenListener, UnixSocketFileIsRemovedWhenChmodFails) {
  test::temp_dir dir;
  const std::string path = dir / "app.sock";
  listen_options options;
  options.unix_mode = 0600;
  const int outcome = open_unix_with_refused(path, options, {__NR_chmod, __NR_fchmodat});
  if (outcome == no_seccomp) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(outcome, refused_and_removed);
}

TEST(OpenListener, AFailedOpenLeavesAStaleSocketFileItDidNotCreate) {
  // The stale file of a dead process is replaced only once bind succeeds; a failure before that
  // leaves the path as it was, and one after removes only the new file.
  test::temp_dir dir;
  const std::string path = dir / "stale.sock";
  { auto dead = must_listen("unix:" + path); }
  const int outcome = open_unix_with_refused(path, {}, {__NR_bind});
  if (outcome == no_seccomp) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(outcome, refused_but_left);
}

TEST(OpenListener, UnixPathInMissingDirectory) {
  auto fd = open_listener(parse("unix:/nonexistent-dir-for-handoff/x.sock"));
  ASSERT_FALSE(fd);
  EXPECT_EQ(fd.error().message(),
            "bind unix:/nonexistent-dir-for-handoff/x.sock: No such file or directory");
}

TEST(OpenListener, AbstractUnixSocket) {
  const std::string name = "@handoff-test-" + std::to_string(::getpid());
  auto fd = must_listen("unix:" + name);
  ASSERT_TRUE(fd);
  auto info = inspect_socket(fd.get());
  ASSERT_TRUE(info);
  EXPECT_EQ(info->local.host, name);
  EXPECT_TRUE(socket_matches(*info, parse("unix:" + name)));
  ASSERT_TRUE(connect_unix(name));
  EXPECT_TRUE(accepts(fd.get()));
  auto second = open_listener(parse("unix:" + name));
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), std::errc::address_in_use);
}

TEST(InspectSocket, NonSocketsAndClosedFds) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd a(p[0]), b(p[1]);
  auto pipe_info = inspect_socket(a.get());
  ASSERT_TRUE(pipe_info);
  EXPECT_FALSE(pipe_info->is_socket());
  EXPECT_EQ(pipe_info->describe(), "not a socket");
  auto closed = inspect_socket(987654);
  ASSERT_FALSE(closed);
  EXPECT_EQ(closed.error(), std::errc::bad_file_descriptor);
}

TEST(SocketMatches, HostsPortsAndKinds) {
  auto v4 = must_listen("127.0.0.1:0");
  auto any = must_listen(":0");
  auto udp = must_listen("udp://127.0.0.1:0");
  auto i4 = inspect_socket(v4.get()).value();
  auto iany = inspect_socket(any.get()).value();
  auto iudp = inspect_socket(udp.get()).value();
  const auto p4 = std::to_string(i4.local.port);
  EXPECT_TRUE(socket_matches(i4, parse("127.0.0.1:" + p4)));
  EXPECT_TRUE(socket_matches(i4, parse("tcp://127.0.0.1:" + p4)));
  EXPECT_TRUE(socket_matches(i4, parse("localhost:" + p4)));
  EXPECT_FALSE(socket_matches(i4, parse("127.0.0.1:0")));  // port 0 asks for a new port
  EXPECT_FALSE(socket_matches(i4, parse("127.0.0.2:" + p4)));
  EXPECT_FALSE(socket_matches(i4, parse("udp://127.0.0.1:" + p4)));
  EXPECT_FALSE(socket_matches(i4, parse(":" + p4)));
  EXPECT_FALSE(socket_matches(i4, parse("127.0.0.1:" + std::to_string(i4.local.port ^ 1))));
  EXPECT_TRUE(socket_matches(iany, parse(":" + std::to_string(iany.local.port))));
  EXPECT_TRUE(socket_matches(iany, parse("[::]:" + std::to_string(iany.local.port))));
  EXPECT_TRUE(socket_matches(iudp, parse("udp://127.0.0.1:" + std::to_string(iudp.local.port))));
  EXPECT_FALSE(socket_matches(iudp, parse("127.0.0.1:" + std::to_string(iudp.local.port))));
  EXPECT_FALSE(socket_matches(i4, parse("unix:/tmp/x")));
}

TEST(OpenListener, NoFdLeaksOnErrors) {
  test::temp_dir dir;
  std::ofstream(dir / "file") << "x";
  auto taken = must_listen("127.0.0.1:0");
  const auto port = std::to_string(local_address(taken.get())->port);
  const auto before = test::count_open_fds();
  for (int i = 0; i < 50; ++i) {
    EXPECT_FALSE(open_listener(parse("127.0.0.1:" + port)));
    EXPECT_FALSE(open_listener(parse("unix:" + (dir / "file"))));
    EXPECT_FALSE(open_listener(parse("192.0.2.1:0")));
  }
  EXPECT_EQ(test::count_open_fds(), before);
}

}  // namespace
}  // namespace handoff
