// TLS sessions across generations: session-ticket keys shared by a memfd named
// handoff-tls-keys (handoff/ticket_keys.hpp). `openssl s_client -sess_out` against one server
// (or generation), `-sess_in` against the next: "Reused" when they share the keys, "New" (a full
// handshake) when each makes its own. In-process servers for the key file's semantics
// (rotation, a malformed file), then real processes: example_server under `handoff run
// --tls-ticket-keys` across `handoff reload`, upgrading itself on SIGHUP, and given a malformed
// keys fd by LISTEN_FDS.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mutex>
#include <regex>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "handoff/ticket_keys.hpp"
#include "test_support.hpp"

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::temp_dir;
using testing::HasSubstr;
namespace bhttp = boost::beast::http;

asio::awaitable<response> handler(request_context& ctx) {
  response res{bhttp::status::ok, ctx.req().version()};
  res.body() = "hello from this process\n";
  co_return res;
}

// Runs a command (stdout and stderr together) to its end, bounded.
std::string run(std::vector<std::string> argv) {
  spawn_options o;
  o.argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1"};
  o.argv.insert(o.argv.end(), argv.begin(), argv.end());
  auto r = test::run_and_capture(o, 30s);
  EXPECT_TRUE(r) << r.error().message();
  return r ? r->out : std::string();
}

// One TLS connection by `openssl s_client` sending GET / with Connection: close; the session is
// saved to `session` (resume false) or resumed from it. s_client says "New," or "Reused,".
std::string connect(std::uint16_t port, const std::string& ca, const std::string& session,
                    bool resume) {
  return run({"/bin/sh", "-c",
              "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | "
              "exec openssl s_client -connect 127.0.0.1:\"$1\" -CAfile \"$2\" "
              "-verify_return_error -ign_eof \"$3\" \"$4\"",
              "sh", std::to_string(port), ca, resume ? "-sess_in" : "-sess_out", session});
}
bool reused(const std::string& out) { return out.find("\nReused, ") != std::string::npos; }
bool fresh(const std::string& out) { return out.find("\nNew, ") != std::string::npos; }

// A memfd holding `text`, as a holder that wrote garbage would leave it.
unique_fd memfd_with(const std::string& text) {
  unique_fd fd(::memfd_create("keys", MFD_CLOEXEC));
  EXPECT_TRUE(fd);
  EXPECT_EQ(::write(fd.get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
  return fd;
}

// The lines a child writes to a pipe, read as they come.
class line_reader {
 public:
  explicit line_reader(unique_fd fd) : fd_(std::move(fd)) {}
  // Reads until `pattern` matches somewhere in all output so far: its first group, or "" (and
  // a test failure) at EOF or the timeout.
  std::string wait_for(const std::string& pattern, std::chrono::milliseconds timeout = 30s) {
    const std::regex re(pattern);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      std::smatch m;
      if (std::regex_search(output, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd_.get(), POLLIN, 0};
      char buf[4096];
      ssize_t n = 0;
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0 ||
          (n = ::read(fd_.get(), buf, sizeof buf)) <= 0) {
        ADD_FAILURE() << "no /" << pattern << "/ in:\n" << output;
        return {};
      }
      output.append(buf, static_cast<std::size_t>(n));
    }
  }
  std::string output;

 private:
  unique_fd fd_;
};

class TlsResume : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    cert_ = dir_ / "cert.pem";
    key_ = dir_ / "key.pem";
    const auto made =
        run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
             "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key_, "-out", cert_});
    ASSERT_TRUE(std::filesystem::exists(cert_)) << made;
  }

  // An in-process server on a new port, its session tickets under the keys of `keys_fd`.
  struct in_process {
    std::unique_ptr<server> s;
    std::uint16_t port = 0;
    std::shared_ptr<std::mutex> mutex = std::make_shared<std::mutex>();
    std::shared_ptr<std::string> log = std::make_shared<std::string>();
    std::string logged() const {
      std::lock_guard lock(*mutex);
      return *log;
    }
  };
  in_process start(int keys_fd) {
    in_process p;
    server_options o;
    o.threads = 1;
    o.log = [m = p.mutex, l = p.log](std::string_view line) {
      std::lock_guard lock(*m);
      *l += std::string(line) + "\n";
    };
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    p.port = local_address(fd.get()).value().port;
    p.s = std::make_unique<server>(o, handler);
    p.s->add_listener(std::move(fd), tls_config{cert_, key_, keys_fd});
    p.s->start();
    return p;
  }

  // A child whose stderr the test reads; killed and reaped at the end of the test.
  line_reader spawn_logged(spawn_options o, pid_t& pid) {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    unique_fd read_end(p[0]), write_end(p[1]);
    o.stderr_fd = write_end.get();
    pid = spawn(o).value();
    children_.push_back(pid);
    return line_reader(std::move(read_end));
  }
  void TearDown() override {
    for (pid_t pid : children_) ::kill(pid, SIGKILL);
    for (pid_t pid : children_) (void)wait_exit(pid, 10s);
  }

  temp_dir dir_;
  std::string cert_, key_;
  std::string session_ = dir_ / "session.pem";
  std::vector<pid_t> children_;
};

TEST(TicketKeysFile, ParsesWhatCreateWritesAndRefusesTheRest) {
  auto fd = create_ticket_keys().value();
  ASSERT_TRUE(append_ticket_key(fd.get()));
  const auto keys = read_ticket_keys(fd.get()).value();
  ASSERT_EQ(keys.size(), 2U);
  EXPECT_NE(keys[0].name, keys[1].name);
  EXPECT_NE(keys[0].aes, keys[1].aes);
  EXPECT_GT(keys[1].created, 1'600'000'000);

  const std::string name(32, 'a'), aes(64, 'b'), hmac(64, 'c');
  const std::string good = "12 " + name + " " + aes + " " + hmac + "\n";
  const std::string header(ticket_keys_header);
  // A last line without its '\n' is a key being appended: not there yet, not an error.
  EXPECT_EQ(parse_ticket_keys(header + good + "13 " + name).value().size(), 1U);
  struct bad_case {
    std::string text, says;
  };
  for (const auto& [text, says] : std::vector<bad_case>{
           {"", "first line"},
           {"garbage\n", "first line is not"},
           {"handoff-tls-keys 2\n" + good, "version 1"},
           {header, "no key"},
           {header + "x " + name + " " + aes + " " + hmac + "\n", "line 2: the creation time"},
           {header + good + "12 " + name + "\n", "line 3: the AES key"},
           {header + "12 " + std::string(31, 'a') + " " + aes + " " + hmac + "\n", "key name"},
           {header + "12 " + name + " " + aes + " " + std::string(64, 'C') + "\n", "HMAC"},
           {header + "12 " + name + " " + aes + " " + hmac + " extra\n", "HMAC"},
       }) {
    const auto r = parse_ticket_keys(text);
    ASSERT_FALSE(r) << text;
    EXPECT_THAT(r.error().message(), HasSubstr(says)) << text;
    EXPECT_THAT(r.error().message(), HasSubstr("handoff-tls-keys file malformed")) << text;
  }
}

// The first failure before the keys were shared: each server made its own, so a session of one
// was not resumed by the next.
TEST_F(TlsResume, OwnKeysGiveAFullHandshakeInAnotherServer) {
  auto a = start(-1);
  ASSERT_TRUE(fresh(connect(a.port, cert_, session_, false)));
  a.s->drain(1s);
  auto b = start(-1);
  const auto out = connect(b.port, cert_, session_, true);
  EXPECT_TRUE(fresh(out)) << out;
}

TEST_F(TlsResume, SharedKeysResumeInAnotherServer) {
  auto keys = create_ticket_keys().value();
  auto a = start(keys.get());
  const auto first = connect(a.port, cert_, session_, false);
  ASSERT_TRUE(fresh(first)) << first;
  a.s->drain(1s);
  auto b = start(keys.get());
  const auto out = connect(b.port, cert_, session_, true);
  EXPECT_TRUE(reused(out)) << out;
  EXPECT_THAT(out, HasSubstr("hello from this process"));
  EXPECT_EQ(b.logged(), "");
}

// The holder appends a key: new tickets use it, the previous key still opens older tickets,
// and the one before that no longer does.
TEST_F(TlsResume, RotationEncryptsWithTheNewestAndDecryptsWithThePrevious) {
  auto keys = create_ticket_keys().value();
  auto s = start(keys.get());
  const std::string under_first = dir_ / "first.pem", under_second = dir_ / "second.pem";
  ASSERT_TRUE(fresh(connect(s.port, cert_, under_first, false)));
  ASSERT_TRUE(append_ticket_key(keys.get()));
  const auto old = connect(s.port, cert_, under_first, true);
  EXPECT_TRUE(reused(old)) << old;
  ASSERT_TRUE(fresh(connect(s.port, cert_, under_second, false)));
  ASSERT_TRUE(append_ticket_key(keys.get()));
  const auto second = connect(s.port, cert_, under_second, true);
  EXPECT_TRUE(reused(second)) << "a ticket made after the first rotation uses the second key\n"
                              << second;
  const auto first = connect(s.port, cert_, under_first, true);
  EXPECT_TRUE(fresh(first)) << "two rotations later the first key is gone\n" << first;
}

TEST_F(TlsResume, MalformedKeysAreIgnoredWithALogLineAndTheServerMakesItsOwn) {
  auto bad = memfd_with("handoff-tls-keys 1\n12 not-hex\n");
  auto s = start(bad.get());
  const auto out = connect(s.port, cert_, session_, false);
  EXPECT_TRUE(fresh(out)) << out;
  EXPECT_THAT(out, HasSubstr("HTTP/1.1 200 OK"));
  EXPECT_THAT(s.logged(), HasSubstr("handoff-tls-keys file malformed: line 2: the key name"));
  EXPECT_THAT(s.logged(), HasSubstr("this process makes its own keys"));
  // Its own keys work for resumption within the process.
  const auto again = connect(s.port, cert_, session_, true);
  EXPECT_TRUE(reused(again)) << again;
}

// example_server given a malformed keys memfd by LISTEN_FDS, as a broken holder would: one line
// on stderr, and it serves TLS all the same.
TEST_F(TlsResume, ExampleServerWithAMalformedKeysFdServes) {
  auto listener = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(listener.get()).value().port;
  auto bad = memfd_with("not a keys file\n");
  spawn_options o;
  o.argv = {HANDOFF_EXAMPLE_SERVER, "--threads", "1", "--tls-cert", cert_, "--tls-key", key_};
  o.fds = {{listener.get(), "https"}, {bad.get(), std::string(ticket_keys_name)}};
  pid_t pid = 0;
  auto err = spawn_logged(o, pid);
  err.wait_for("build \\d+ ready");
  EXPECT_THAT(err.output, HasSubstr("handoff-tls-keys file malformed: the first line is not"));
  EXPECT_THAT(err.output, Not(HasSubstr("not serving inherited")));
  const auto out = connect(port, cert_, session_, false);
  EXPECT_THAT(out, HasSubstr("HTTP/1.1 200 OK"));
}

// generation 1 of example_server under `handoff run`, `handoff reload`, generation 2: the
// session resumes. With --tls-ticket-keys the supervisor makes the keys; without it,
// example_server's upgrader makes them and stores them in the supervisor's fd store (FDSTORE=1),
// which hands them to the next generation just the same. (Before the keys were shared, the
// second connection said "New": see OwnKeysGiveAFullHandshakeInAnotherServer.)
class TlsResumeUnderRun : public TlsResume, public testing::WithParamInterface<bool> {};

TEST_P(TlsResumeUnderRun, AcrossAReload) {
  const bool supervisor_keys = GetParam();
  auto listener = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(listener.get()).value().port;
  const std::string control = dir_ / "c.sock";
  spawn_options o;
  o.argv = {HANDOFF_TOOL, "run", "--control", control, "--name", "tls"};
  if (supervisor_keys) o.argv.push_back("--tls-ticket-keys");
  o.argv.insert(o.argv.end(), {"--", HANDOFF_EXAMPLE_SERVER, "--threads", "1", "--tls-cert", cert_,
                               "--tls-key", key_});
  o.fds = {{listener.get(), "https"}};
  pid_t pid = 0;
  auto err = spawn_logged(o, pid);
  const std::string first_pid = err.wait_for("example_server: pid (\\d+) version");
  EXPECT_THAT(err.output,
              HasSubstr(supervisor_keys ? "holding new TLS session-ticket keys (handoff-tls-keys)"
                                        : "stored fds as \"handoff-tls-keys\""));
  const auto first = connect(port, cert_, session_, false);
  ASSERT_TRUE(fresh(first)) << first;
  EXPECT_THAT(first, HasSubstr("hello from pid " + first_pid));

  const auto reload = run({HANDOFF_TOOL, "reload", "--control", control});
  EXPECT_THAT(reload, HasSubstr("generation 2")) << reload;
  // Only generation 2 accepts once generation 1 has stopped.
  err.wait_for("example_server: pid " + first_pid + " stopped");
  const auto second = connect(port, cert_, session_, true);
  EXPECT_THAT(second, Not(HasSubstr("hello from pid " + first_pid)));
  EXPECT_THAT(second, HasSubstr("HTTP/1.1 200 OK"));
  EXPECT_TRUE(reused(second)) << second << err.output;
}
INSTANTIATE_TEST_SUITE_P(KeysFrom, TlsResumeUnderRun, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& p) {
                           return p.param ? "Supervisor" : "AppInFdStore";
                         });

// `handoff reexec` between the two generations: the new image of the supervisor holds the same
// keys (they travel in its state) and hands them to generation 2. Without them in the state, the
// first reload after a re-exec had no keys to give, and the session did not resume.
TEST_F(TlsResume, SupervisorKeysSurviveAReexecOfTheSupervisor) {
  auto listener = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(listener.get()).value().port;
  const std::string control = dir_ / "c.sock";
  spawn_options o;
  o.argv = {HANDOFF_TOOL,
            "run",
            "--control",
            control,
            "--name",
            "tls",
            "--tls-ticket-keys",
            "--",
            HANDOFF_EXAMPLE_SERVER,
            "--threads",
            "1",
            "--tls-cert",
            cert_,
            "--tls-key",
            key_};
  o.fds = {{listener.get(), "https"}};
  pid_t pid = 0;
  auto err = spawn_logged(o, pid);
  const std::string first_pid = err.wait_for("example_server: pid (\\d+) version");
  ASSERT_TRUE(fresh(connect(port, cert_, session_, false)));
  const auto reexec = run({HANDOFF_TOOL, "reexec", "--control", control});
  EXPECT_THAT(reexec, HasSubstr("1 re-execs")) << reexec;
  const auto reload = run({HANDOFF_TOOL, "reload", "--control", control});
  EXPECT_THAT(reload, HasSubstr("generation 2")) << reload;
  err.wait_for("example_server: pid " + first_pid + " stopped");
  const auto second = connect(port, cert_, session_, true);
  EXPECT_THAT(second, Not(HasSubstr("hello from pid " + first_pid)));
  EXPECT_TRUE(reused(second)) << second << err.output;
}

// --tls-ticket-key-rotation: the supervisor appends a key each period; a ticket made before
// still resumes after one rotation and no longer after two (the app keeps the newest two).
TEST_F(TlsResume, SupervisorRotatesTheKeys) {
  auto listener = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(listener.get()).value().port;
  spawn_options o;
  o.argv = {HANDOFF_TOOL,
            "run",
            "--control",
            dir_ / "c.sock",
            "--name",
            "tls",
            "--tls-ticket-keys",
            "--tls-ticket-key-rotation",
            "1s",
            "--",
            HANDOFF_EXAMPLE_SERVER,
            "--threads",
            "1",
            "--tls-cert",
            cert_,
            "--tls-key",
            key_};
  o.fds = {{listener.get(), "https"}};
  pid_t pid = 0;
  auto err = spawn_logged(o, pid);
  err.wait_for("example_server: pid \\d+ version");
  const auto first = connect(port, cert_, session_, false);
  ASSERT_TRUE(fresh(first)) << first;
  // The ticket's key is at most one rotation newer than the last line logged by now (each line
  // follows its key), so four more lines leave it two keys behind: one more than needed, for a
  // line still on its way.
  const auto rotations = [&] {
    std::size_t n = 0;
    for (auto at = err.output.find("new session-ticket key"); at != std::string::npos;
         at = err.output.find("new session-ticket key", at + 1))
      ++n;
    return n;
  };
  err.wait_for("(new session-ticket key[\\s\\S]*){" + std::to_string(rotations() + 4) + "}");
  const auto after = connect(port, cert_, session_, true);
  EXPECT_TRUE(fresh(after)) << "three rotations later the ticket's key is gone\n" << after;
  EXPECT_THAT(after, HasSubstr("HTTP/1.1 200 OK"));
}

// example_server upgrading itself on SIGHUP, with no manager: the first generation makes the
// keys and the upgrader hands them to the second.
TEST_F(TlsResume, AcrossASelfUpgrade) {
  // The second generation is orphaned when the first exits: it comes to us, to be reaped.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  auto listener = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(listener.get()).value().port;
  spawn_options o;
  o.argv = {HANDOFF_EXAMPLE_SERVER, "--threads", "1", "--tls-cert", cert_, "--tls-key", key_};
  o.fds = {{listener.get(), "https"}};
  pid_t pid = 0;
  auto err = spawn_logged(o, pid);
  err.wait_for("pid " + std::to_string(pid) + " version 1 build \\d+ ready");
  const auto first = connect(port, cert_, session_, false);
  ASSERT_TRUE(fresh(first)) << first;

  ASSERT_EQ(::kill(pid, SIGHUP), 0);
  const std::string second_pid =
      err.wait_for("example_server: pid (?!" + std::to_string(pid) + " )(\\d+) version 1 build");
  children_.push_back(std::stoi(second_pid));
  err.wait_for("pid " + std::to_string(pid) + " stopped");
  const auto second = connect(port, cert_, session_, true);
  EXPECT_THAT(second, HasSubstr("hello from pid " + second_pid));
  EXPECT_TRUE(reused(second)) << second << err.output;
  (void)::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

}  // namespace
}  // namespace handoff::http
