// `handoff check` against real servers on 127.0.0.1: it must count what goes wrong (a naive
// kill-and-start, the keep-alive race, 503s, a failing restart command), and count nothing
// when nothing goes wrong. Every process is started here and reaped; each run is bounded by
// --duration and a wait_exit deadline. The test process is a child subreaper, so server
// generations started in the background by a restart command become its children.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "json.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/handoff-check-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~temp_dir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct check_run {
  int exit_code = -1;
  std::string output;  // stdout
  std::string errors;  // stderr
  boost::json::value json;
};

// A server started here: test_server (prints its port) or example_server.
class server_process {
 public:
  server_process() = default;
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
  ~server_process() { stop(); }

  // test_server with `args`; reads "port N" from its stdout.
  void start_test_server(std::vector<std::string> args) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    out_.reset(p[0]);
    unique_fd w(p[1]);
    spawn_options o;
    o.argv = {HANDOFF_CHECK_TEST_SERVER};
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    o.stdout_fd = w.get();
    auto pid = spawn(o);
    ASSERT_TRUE(pid) << pid.error().message();
    pid_ = *pid;
    w.reset();
    const std::string line = read_line();
    ASSERT_EQ(line.rfind("port ", 0), 0u) << line;
    port_ = static_cast<std::uint16_t>(std::stoi(line.substr(5)));
  }

  // example_server on 127.0.0.1:port (0: a kernel-chosen port, passed as a socket named
  // `socket_name`: "https" is served over TLS, given --tls-cert and --tls-key in `extra`);
  // returns once it reported READY=1.
  void start_example_server(std::uint16_t port, std::vector<std::string> extra = {},
                            const std::string& socket_name = "http") {
    scheme_ = socket_name == "https" ? "https" : "http";
    auto n = notify_receiver::open_unique();
    ASSERT_TRUE(n) << n.error().message();
    spawn_options o;
    o.argv = {HANDOFF_EXAMPLE_SERVER, "--threads", "1"};
    unique_fd listener;
    if (port == 0) {
      listener = open_listener(parse_address("127.0.0.1:0").value()).value();
      port = local_address(listener.get()).value().port;
      o.fds = {{listener.get(), socket_name}};
    } else {
      o.argv.insert(o.argv.end(), {"--listen", "127.0.0.1:" + std::to_string(port)});
    }
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    o.notify_socket = n->address();
    auto pid = spawn(o);
    ASSERT_TRUE(pid) << pid.error().message();
    pid_ = *pid;
    port_ = port;
    for (;;) {
      auto m = n->receive(30s);
      ASSERT_TRUE(m) << "example_server never reported READY=1: " << m.error().message();
      if (m->pid == pid_ && m->has("READY")) break;
    }
  }

  // SIGTERM and reap; for test_server, the number of responses it wrote in full.
  long stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    long served = -1;
    if (out_) {
      const std::string line = read_line();
      if (line.rfind("served ", 0) == 0) served = std::stol(line.substr(7));
    }
    auto status = wait_exit(pid_, 30s);
    if (!status) {
      ::kill(pid_, SIGKILL);
      (void)wait_exit(pid_, 10s);
    }
    pid_ = -1;
    out_.reset();
    return served;
  }

  pid_t pid() const { return pid_; }
  std::uint16_t port() const { return port_; }
  std::string url(const std::string& path = "/") const {
    return scheme_ + "://127.0.0.1:" + std::to_string(port_) + path;
  }

 private:
  std::string read_line() {
    std::string line;
    char c;
    while (::read(out_.get(), &c, 1) == 1 && c != '\n') line += c;
    return line;
  }

  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
  unique_fd out_;
  std::string scheme_ = "http";
};

// Runs a short command (openssl) to its end, its output discarded; false when it failed.
bool run_quietly(const std::vector<std::string>& argv) {
  unique_fd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  spawn_options o;
  o.argv = argv;
  o.stdout_fd = null.get();
  o.stderr_fd = null.get();
  auto pid = spawn(o);
  if (!pid) return false;
  auto status = wait_exit(*pid, 60s);
  if (!status) {
    ::kill(*pid, SIGKILL);
    (void)wait_exit(*pid, 10s);
    return false;
  }
  return status->success();
}

// A self-signed certificate (its own CA) for `names`, by `openssl req`.
struct certificate {
  std::string cert, key;
};
certificate make_certificate(const fs::path& dir, const std::string& name,
                             const std::string& names = "IP:127.0.0.1,DNS:localhost") {
  certificate c{(dir / (name + ".pem")).string(), (dir / (name + ".key")).string()};
  EXPECT_TRUE(
      run_quietly({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=" + name,
                   "-addext", "subjectAltName=" + names, "-keyout", c.key, "-out", c.cert}))
      << "openssl req";
  return c;
}

// `handoff run -l https=127.0.0.1:0 -- APP...` in a process group of its own; its stderr (the
// log, and the apps') is read on a thread, so that a full pipe never blocks an app.
class supervised_server {
 public:
  supervised_server() = default;
  supervised_server(const supervised_server&) = delete;
  supervised_server& operator=(const supervised_server&) = delete;
  ~supervised_server() { stop(); }

  // Returns once generation 1 is ready.
  void start(const fs::path& dir, const std::vector<std::string>& app) {
    control_ = (dir / "control.sock").string();
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    unique_fd r(p[0]), w(p[1]);
    spawn_options o;
    // -l first: directly before `--`, CLI11 would hand the app's options to handoff run.
    o.argv = {HANDOFF_TOOL,     "run",      "-l",        "https=127.0.0.1:0",
              "--name",         "tlscheck", "--control", control_,
              "--stop-timeout", "10s",      "--"};
    o.argv.insert(o.argv.end(), app.begin(), app.end());
    o.stderr_fd = w.get();
    o.group = process_group::new_group;
    auto pid = spawn(o);
    ASSERT_TRUE(pid) << pid.error().message();
    pid_ = *pid;
    w.reset();
    reader_ = std::thread([this, fd = std::move(r)] { read_log(fd.get()); });
    const std::string holding = wait_log("holding https=", 30s);
    const auto at = holding.find("127.0.0.1:");
    ASSERT_NE(at, std::string::npos) << holding;
    port_ = static_cast<std::uint16_t>(std::stoi(holding.substr(at + 10)));
    // "generation 1 took over": the app may log other lines first (its keys stored in our fd
    // store, for one).
    ASSERT_NE(wait_log("generation 1 took over", 60s).find("ready"), std::string::npos) << log();
  }

  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      if (!wait_exit(pid_, 60s)) {
        ::kill(-pid_, SIGKILL);
        (void)wait_exit(pid_, 10s);
      }
      pid_ = -1;
    }
    stop_reading_ = true;
    if (reader_.joinable()) reader_.join();
  }

  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/"; }
  const std::string& control() const { return control_; }
  std::string log() {
    std::lock_guard lock(mutex_);
    return log_;
  }

 private:
  // The first log line that contains `what`, waited for up to `timeout`.
  std::string wait_log(const std::string& what, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    std::string line;
    changed_.wait_for(lock, timeout, [&] {
      const auto at = log_.find(what);
      if (at == std::string::npos) return eof_;
      const auto end = log_.find('\n', at);
      if (end == std::string::npos) return eof_;
      line = log_.substr(at, end - at);
      return true;
    });
    EXPECT_FALSE(line.empty()) << "no \"" << what << "\" in the log:\n" << log_;
    return line;
  }

  // Until EOF, or until stop() once the supervisor is gone (an app that outlived it must not
  // keep the test waiting).
  void read_log(int fd) {
    char buf[4096];
    while (!stop_reading_) {
      pollfd pfd{fd, POLLIN, 0};
      const int n = ::poll(&pfd, 1, 100);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) continue;
      const ssize_t got = ::read(fd, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      std::lock_guard lock(mutex_);
      if (got <= 0) {
        eof_ = true;
        changed_.notify_all();
        return;
      }
      log_.append(buf, static_cast<std::size_t>(got));
      changed_.notify_all();
    }
  }

  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
  std::string control_;
  std::thread reader_;
  std::atomic<bool> stop_reading_{false};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string log_;
  bool eof_ = false;
};

class HandoffCheck : public testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }

  // Runs `handoff check ARGS --json FILE`, bounded.
  check_run run_check(std::vector<std::string> args, bool want_json = true) {
    const fs::path json = dir_.path / "result.json";
    fs::remove(json);
    args.insert(args.begin(), "check");
    if (want_json) args.insert(args.end(), {"--json", json.string()});
    check_run r = run_handoff(args);
    if (want_json && fs::exists(json)) r.json = test::read_json_file(json.string());
    return r;
  }

  // Runs `handoff ARGS`, bounded.
  check_run run_handoff(const std::vector<std::string>& args) {
    check_run r;
    const fs::path out = dir_.path / "stdout";
    const fs::path err = dir_.path / "stderr";
    spawn_options o;
    o.argv = {HANDOFF_TOOL};
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    unique_fd out_fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    o.stdout_fd = out_fd.get();
    unique_fd err_fd(::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    o.stderr_fd = err_fd.get();
    auto pid = spawn(o);
    EXPECT_TRUE(pid) << pid.error().message();
    if (!pid) return r;
    auto status = wait_exit(*pid, 60s);
    EXPECT_TRUE(status) << "handoff check did not end: " << status.error().message();
    if (!status) {
      ::kill(*pid, SIGKILL);
      (void)wait_exit(*pid, 10s);
      return r;
    }
    r.exit_code = status->exited ? status->code : 128 + status->signal;
    r.output = slurp(out);
    r.errors = slurp(err);
    return r;
  }

  static std::int64_t outcome(const check_run& r, const char* name) {
    return r.json.as_object().at("outcomes").as_object().at(name).to_number<std::int64_t>();
  }
  static std::int64_t field(const check_run& r, const char* name) {
    return test::json_int(r.json, name);
  }

  temp_dir dir_;
};

TEST_F(HandoffCheck, ExampleServerUnderSteadyLoadHasNoFailures) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_example_server(0));
  for (const char* mode : {"keepalive", "close"}) {
    auto r = run_check(
        {server.url(), "--duration", "1s", "-c", "8", "--mode", mode, "--fail-on-errors"});
    ASSERT_EQ(r.exit_code, 0) << mode << "\n" << r.output;
    EXPECT_EQ(field(r, "failed"), 0) << r.output;
    EXPECT_GT(field(r, "ok"), 100) << r.output;
    EXPECT_EQ(field(r, "ok"), field(r, "requests"));
    const auto& served = r.json.as_object().at("served_by").as_object();
    ASSERT_EQ(served.size(), 1u) << r.output;
    EXPECT_TRUE(served.contains(std::to_string(server.pid())));
    EXPECT_EQ(served.at(std::to_string(server.pid())).to_number<std::int64_t>(), field(r, "ok"));
    if (std::string(mode) == "keepalive") {
      EXPECT_EQ(field(r, "connections_opened"), 8) << "one per connection, none again";
      EXPECT_EQ(field(r, "reconnects"), 0) << r.output;
    } else {
      EXPECT_EQ(field(r, "connections_opened"), field(r, "requests"));
      EXPECT_TRUE(r.json.as_object().at("reconnects").is_null());
    }
    // Consistent totals: the timeline adds up to the same requests.
    std::int64_t in_timeline = 0;
    for (const auto& v : r.json.as_object().at("timeline").as_object().at("requests").as_array())
      in_timeline += v.to_number<std::int64_t>();
    EXPECT_EQ(in_timeline, field(r, "requests"));
  }
  // POST with a body: non-idempotent traffic.
  auto r = run_check({server.url("/echo"), "--duration", "500ms", "-c", "4", "--method", "POST",
                      "--body-size", "2000", "--fail-on-errors"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(field(r, "ok"), 10);
}

TEST_F(HandoffCheck, OkCountEqualsTheResponsesTheServerWrote) {
  for (const char* mode : {"keepalive", "close"}) {
    server_process server;
    ASSERT_NO_FATAL_FAILURE(server.start_test_server({}));
    auto r = run_check({server.url(), "--duration", "1s", "-c", "8", "--mode", mode});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const long served = server.stop();
    EXPECT_EQ(field(r, "failed"), 0) << r.output;
    EXPECT_EQ(field(r, "ok"), served) << mode;
    EXPECT_GT(served, 100);
  }
}

TEST_F(HandoffCheck, ThreadsShareTheConnectionsAndTheirOutcomesAreMerged) {
  // 7 connections over 3 threads (3, 2, 2): every connection opened once, every response the
  // server wrote counted once, the timeline adding up to the merged totals.
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({}));
  auto r = run_check({server.url(), "--duration", "1s", "-c", "7", "--threads", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.output << r.errors;
  const long served = server.stop();
  EXPECT_EQ(field(r, "failed"), 0) << r.output;
  EXPECT_EQ(field(r, "ok"), served);
  EXPECT_GT(served, 100);
  EXPECT_EQ(field(r, "connections_opened"), 7) << r.output;
  EXPECT_EQ(field(r, "reconnects"), 0) << r.output;
  std::int64_t in_timeline = 0;
  for (const auto& v : r.json.as_object().at("timeline").as_object().at("requests").as_array())
    in_timeline += v.to_number<std::int64_t>();
  EXPECT_EQ(in_timeline, field(r, "requests"));
  // The rate is the total, shared out: 3 threads at 300 req/s together, not each.
  server_process limited;
  ASSERT_NO_FATAL_FAILURE(limited.start_test_server({}));
  auto l =
      run_check({limited.url(), "--duration", "1s", "-c", "6", "--threads", "3", "--rate", "300"});
  ASSERT_EQ(l.exit_code, 0) << l.output << l.errors;
  EXPECT_LE(field(l, "requests"), 300 * 105 / 100 + 6) << l.output;
  EXPECT_GE(field(l, "requests"), 300 / 2) << l.output;
}

TEST_F(HandoffCheck, CountsRefusedConnectionsOfANaiveRestart) {
  // A fixed port: the new generation must bind it again after the old one is gone.
  std::uint16_t port;
  {
    auto probe = open_listener(parse_address("127.0.0.1:0").value()).value();
    port = local_address(probe.get()).value().port;
  }
  server_process first;
  ASSERT_NO_FATAL_FAILURE(first.start_example_server(port));
  const fs::path pidfile = dir_.path / "server.pid";
  { std::ofstream(pidfile) << first.pid() << "\n"; }
  // The 300 ms are the scenario (the new generation's start-up time), not a synchronisation.
  const std::string restart = "kill -KILL $(cat " + pidfile.string() + "); sleep 0.3; " +
                              HANDOFF_EXAMPLE_SERVER +
                              " --threads 1 --listen 127.0.0.1:" + std::to_string(port) +
                              " 2>/dev/null & echo $! > " + pidfile.string();
  auto r =
      run_check({first.url(), "--duration", "2s", "-c", "8", "--reload-cmd", restart, "--reload-at",
                 "500ms", "--fail-on-errors", "--plot", (dir_.path / "plot.svg").string()});
  (void)wait_exit(first.pid(), 10s);  // killed by the restart command
  const pid_t second = std::stoi(slurp(pidfile));
  ::kill(second, SIGTERM);
  EXPECT_TRUE(wait_exit(second, 30s)) << "the second generation is our child (subreaper)";

  EXPECT_EQ(r.exit_code, 1) << "--fail-on-errors\n" << r.output;
  EXPECT_GT(outcome(r, "connect_refused"), 0) << r.output;
  EXPECT_GT(field(r, "ok"), 100);
  EXPECT_EQ(field(r, "requests"), field(r, "ok") + field(r, "failed"));
  EXPECT_EQ(r.json.as_object().at("served_by").as_object().size(), 2u) << r.output;
  const auto& restarts = r.json.as_object().at("restarts").as_array();
  ASSERT_EQ(restarts.size(), 1u);
  EXPECT_TRUE(restarts[0].as_object().at("success").as_bool());
  EXPECT_GT(test::json_int(restarts[0], "failed"), 0) << "the failures fall in the window";
  // Every connection was cut by the kill and opened again to the new generation.
  EXPECT_GE(field(r, "reconnects"), 8) << r.output;
  EXPECT_GE(test::json_int(restarts[0], "reconnects"), 8) << r.output;
  EXPECT_EQ(field(r, "connections_opened"), 8 + field(r, "reconnects"));
  EXPECT_NE(r.output.find("reconnects"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("connection refused"), std::string::npos);
  const std::string svg = slurp(dir_.path / "plot.svg");
  EXPECT_NE(svg.find("fill=\"#d22\""), std::string::npos) << "failures drawn";
}

TEST_F(HandoffCheck, CountsTheKeepAliveRaceOfAServerThatClosesAfterOneRequest) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({"--one-per-connection"}));
  auto r = run_check({server.url(), "--duration", "1s", "-c", "4"});
  const long served = server.stop();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(outcome(r, "keepalive_race"), 0) << r.output;
  EXPECT_EQ(field(r, "failed"), outcome(r, "keepalive_race") + outcome(r, "reset_before_response"))
      << r.output;
  EXPECT_EQ(field(r, "ok"), served);
  // With a new connection per request the same server loses nothing.
  server_process again;
  ASSERT_NO_FATAL_FAILURE(again.start_test_server({"--one-per-connection"}));
  auto c = run_check(
      {again.url(), "--duration", "500ms", "-c", "4", "--mode", "close", "--fail-on-errors"});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(field(c, "failed"), 0);
}

TEST_F(HandoffCheck, ConnectionCloseAnnouncedIsNotAFailure) {
  // The same one-request connections as above, but the server says so: the client opens a new
  // connection for the next request and nothing fails.
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({"--announce-close"}));
  auto r = run_check({server.url(), "--duration", "500ms", "-c", "4", "--fail-on-errors"});
  const long served = server.stop();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(field(r, "failed"), 0) << r.output;
  EXPECT_EQ(field(r, "ok"), served);
}

TEST_F(HandoffCheck, CountsTheRaceWithAnIdleTimeout) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({"--idle-close-ms", "20"}));
  // 8 connections at 400 req/s in total: each is idle about 20 ms between requests.
  auto r = run_check({server.url(), "--duration", "2s", "-c", "8", "--rate", "400"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(outcome(r, "keepalive_race") + outcome(r, "reset_before_response"), 0) << r.output;
  EXPECT_GT(field(r, "ok"), 0);
  // Unlimited, this would be thousands; the slots at the edges of the 2 s may add a few.
  EXPECT_LE(field(r, "requests"), 2 * 400 * 105 / 100 + 8) << "the rate limit holds";
}

TEST_F(HandoffCheck, Counts503AsFailures) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({"--status", "503"}));
  auto r = run_check({server.url(), "--duration", "500ms", "-c", "4", "--fail-on-errors"});
  const long served = server.stop();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(field(r, "ok"), 0);
  EXPECT_EQ(outcome(r, "status"), field(r, "requests"));
  EXPECT_EQ(r.json.as_object().at("status_codes").as_object().at("503").to_number<long>(), served);
  EXPECT_NE(r.output.find("status 503"), std::string::npos) << r.output;
}

TEST_F(HandoffCheck, AFailingRestartCommandIsRecordedAndFailsTheRun) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({}));
  auto r = run_check({server.url(), "--duration", "1s", "-c", "2", "--reload-cmd",
                      "echo restarting >&2; exit 7", "--reload-at", "200ms"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  const auto& restarts = r.json.as_object().at("restarts").as_array();
  ASSERT_EQ(restarts.size(), 1u);
  EXPECT_FALSE(restarts[0].as_object().at("success").as_bool());
  EXPECT_EQ(restarts[0].as_object().at("status").as_string(), "exited with status 7");
  EXPECT_EQ(field(r, "failed"), 0);
}

TEST_F(HandoffCheck, OutputPathsAreCheckedBeforeTheRun) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({}));
  const std::string missing = (dir_.path / "no-such-dir" / "result.json").string();
  auto r = run_check({server.url(), "--duration", "1s", "-c", "2", "--json", missing}, false);
  EXPECT_EQ(r.exit_code, 2) << r.errors;
  EXPECT_NE(r.errors.find("--json " + missing + ": No such file or directory"), std::string::npos)
      << r.errors;
  auto p =
      run_check({server.url(), "--duration", "1s", "-c", "2", "--plot", dir_.path.string()}, false);
  EXPECT_EQ(p.exit_code, 2) << p.errors;
  EXPECT_NE(p.errors.find("Is a directory"), std::string::npos) << p.errors;
  EXPECT_EQ(server.stop(), 0) << "no request was sent: the paths were checked first";
  // A run that ends without a report leaves no empty file behind.
  const fs::path json = dir_.path / "unreachable.json";
  auto closed = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(closed.get()).value().port;
  closed.reset();
  auto u =
      run_check({"http://127.0.0.1:" + std::to_string(port) + "/", "--json", json.string()}, false);
  EXPECT_EQ(u.exit_code, 3) << u.errors;
  EXPECT_FALSE(fs::exists(json));
}

TEST_F(HandoffCheck, ARestartCommandStillRunningAfterTheLoadIsStopped) {
  server_process server;
  ASSERT_NO_FATAL_FAILURE(server.start_test_server({}));
  const fs::path child = dir_.path / "child.pid";
  // The command's child ignores SIGTERM too: only SIGKILL to the whole group ends it.
  auto r = run_check({server.url(), "--duration", "500ms", "-c", "2", "--reload-at", "100ms",
                      "--reload-grace", "200ms", "--reload-cmd",
                      "trap '' TERM; sleep 60 & echo $! > " + child.string() + "; wait"});
  EXPECT_EQ(r.exit_code, 4) << r.errors;
  EXPECT_NE(r.errors.find("still runs 200 ms after the load ended: SIGTERM"), std::string::npos)
      << r.errors;
  EXPECT_NE(r.errors.find("SIGKILL to its process group"), std::string::npos) << r.errors;
  const auto& restarts = r.json.as_object().at("restarts").as_array();
  ASSERT_EQ(restarts.size(), 1u) << r.output;
  EXPECT_TRUE(restarts[0].as_object().at("stopped").as_bool());
  EXPECT_FALSE(restarts[0].as_object().at("success").as_bool());
  EXPECT_EQ(restarts[0].as_object().at("status").as_string(),
            "stopped after the load ended: killed by signal 9 (Killed)");
  // The background child was in the group: killed too, and reaped by us (the subreaper).
  const pid_t sleeper = std::stoi(slurp(child));
  auto status = wait_exit(sleeper, 10s);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(status->signal, SIGKILL);
  // A command that ends on SIGTERM is stopped with it.
  auto t = run_check({server.url(), "--duration", "300ms", "-c", "2", "--reload-at", "100ms",
                      "--reload-grace", "100ms", "--reload-cmd", "exec sleep 60"});
  EXPECT_EQ(t.exit_code, 4) << t.errors;
  EXPECT_EQ(t.json.as_object().at("restarts").as_array()[0].as_object().at("status").as_string(),
            "stopped after the load ended: killed by signal 15 (Terminated)");
  EXPECT_EQ(t.errors.find("SIGKILL"), std::string::npos) << t.errors;
}

TEST_F(HandoffCheck, BadInputIsAClearErrorAndANonZeroExit) {
  // Unreachable: a port nobody listens on (bound, never listening).
  auto closed = open_listener(parse_address("127.0.0.1:0").value()).value();
  const auto port = local_address(closed.get()).value().port;
  closed.reset();
  EXPECT_EQ(run_check({"http://127.0.0.1:" + std::to_string(port) + "/"}, false).exit_code, 3);
  EXPECT_EQ(run_check({"ftp://127.0.0.1/"}, false).exit_code, 2);
  EXPECT_EQ(run_check({"127.0.0.1:80"}, false).exit_code, 2);
  EXPECT_EQ(run_check({"http://127.0.0.1:1/", "--duration", "soon"}, false).exit_code, 2);
  EXPECT_EQ(run_check({"http://127.0.0.1:1/", "--mode", "pipelined"}, false).exit_code, 2);
  EXPECT_EQ(run_check({"http://127.0.0.1:1/", "--reload-every", "1s"}, false).exit_code, 2);
  EXPECT_EQ(run_check({"http://no-such-host.invalid/"}, false).exit_code, 3);
}

// https://: example_server's TLS listener, verified with its own certificate as the CA, in both
// client modes and over two client threads; every connection made one handshake.
TEST_F(HandoffCheck, HttpsExampleServerUnderSteadyLoadHasNoFailures) {
  const auto c = make_certificate(dir_.path, "server");
  server_process server;
  ASSERT_NO_FATAL_FAILURE(
      server.start_example_server(0, {"--tls-cert", c.cert, "--tls-key", c.key}, "https"));
  for (const char* mode : {"keepalive", "close"}) {
    auto r = run_check({server.url(), "--duration", "1s", "-c", "4", "--threads", "2", "--mode",
                        mode, "--cacert", c.cert, "--fail-on-errors"});
    ASSERT_EQ(r.exit_code, 0) << mode << "\n" << r.output << r.errors;
    EXPECT_EQ(field(r, "failed"), 0) << r.output;
    // A handshake per request costs a debug build on a busy machine ~50 ms: few requests.
    EXPECT_GE(field(r, "ok"), 4) << r.output;
    EXPECT_EQ(r.json.as_object().at("url").as_string(), server.url());
    const auto& tls = r.json.as_object().at("tls");
    EXPECT_EQ(tls.as_object().at("verify").as_string(), "cacert");
    EXPECT_EQ(test::json_int(tls, "handshakes"), field(r, "connections_opened")) << r.output;
    EXPECT_EQ(test::json_int(tls, "resumed"), 0) << "no --tls-resume, no session offered";
    if (std::string(mode) == "keepalive") {
      EXPECT_EQ(field(r, "connections_opened"), 4) << r.output;
    } else {
      EXPECT_EQ(field(r, "connections_opened"), field(r, "requests")) << r.output;
    }
    EXPECT_NE(r.output.find("TLS handshakes"), std::string::npos) << r.output;
  }
}

TEST_F(HandoffCheck, HttpsTlsResumeResumesSessionsWithinOneGeneration) {
  const auto c = make_certificate(dir_.path, "server");
  server_process server;
  ASSERT_NO_FATAL_FAILURE(
      server.start_example_server(0, {"--tls-cert", c.cert, "--tls-key", c.key}, "https"));
  auto r = run_check({server.url(), "--duration", "1s", "-c", "4", "--mode", "close", "--cacert",
                      c.cert, "--tls-resume", "--fail-on-errors"});
  ASSERT_EQ(r.exit_code, 0) << r.output << r.errors;
  const auto& tls = r.json.as_object().at("tls");
  EXPECT_TRUE(tls.as_object().at("resume").as_bool());
  const auto handshakes = test::json_int(tls, "handshakes");
  EXPECT_EQ(handshakes, field(r, "requests")) << "one connection per request";
  // Each slot's first connection is a full handshake; the later ones offer a session, which a
  // server whose ticket key does not change accepts.
  EXPECT_EQ(test::json_int(tls, "resumed"), handshakes - 4) << r.output;
  EXPECT_NE(r.output.find("resumed"), std::string::npos) << r.output;
}

TEST_F(HandoffCheck, HttpsWithAnotherCaIsTheVerifyFailedClass) {
  const auto c = make_certificate(dir_.path, "server");
  const auto other = make_certificate(dir_.path, "other");
  server_process server;
  ASSERT_NO_FATAL_FAILURE(
      server.start_example_server(0, {"--tls-cert", c.cert, "--tls-key", c.key}, "https"));
  auto r = run_check({server.url(), "--duration", "300ms", "-c", "2", "--cacert", other.cert});
  ASSERT_EQ(r.exit_code, 0) << r.output << r.errors;
  EXPECT_EQ(field(r, "ok"), 0) << r.output;
  EXPECT_GT(outcome(r, "tls_verify_failed"), 0) << r.output;
  EXPECT_EQ(outcome(r, "tls_verify_failed"), field(r, "requests")) << r.output;
  EXPECT_NE(r.output.find("TLS certificate verify failed"), std::string::npos) << r.output;
  // --insecure accepts it.
  auto insecure =
      run_check({server.url(), "--duration", "300ms", "-c", "2", "--insecure", "--fail-on-errors"});
  EXPECT_EQ(insecure.exit_code, 0) << insecure.output;
  EXPECT_GT(field(insecure, "ok"), 0);
  EXPECT_EQ(insecure.json.as_object().at("tls").as_object().at("verify").as_string(), "none");
}

// Host-name verification: the certificate must carry the URL's host (SNI sends the name).
TEST_F(HandoffCheck, HttpsChecksTheHostNameAgainstTheCertificate) {
  const auto c = make_certificate(dir_.path, "named", "DNS:localhost");
  server_process server;
  ASSERT_NO_FATAL_FAILURE(
      server.start_example_server(0, {"--tls-cert", c.cert, "--tls-key", c.key}, "https"));
  auto by_name =
      run_check({"https://localhost:" + std::to_string(server.port()) + "/", "--duration", "300ms",
                 "-c", "2", "--cacert", c.cert, "--fail-on-errors"});
  EXPECT_EQ(by_name.exit_code, 0) << by_name.output << by_name.errors;
  EXPECT_GT(field(by_name, "ok"), 0) << by_name.output;
  auto by_address = run_check({server.url(), "--duration", "300ms", "-c", "2", "--cacert", c.cert});
  EXPECT_EQ(by_address.exit_code, 0) << by_address.output << by_address.errors;
  EXPECT_EQ(field(by_address, "ok"), 0) << "127.0.0.1 is not in the certificate";
  EXPECT_EQ(outcome(by_address, "tls_verify_failed"), field(by_address, "requests"))
      << by_address.output;
}

TEST_F(HandoffCheck, HttpsToAPlainHttpServerIsTheHandshakeFailedClass) {
  server_process server;  // plain HTTP: it answers the ClientHello with an HTTP 400
  ASSERT_NO_FATAL_FAILURE(server.start_example_server(0));
  const std::string url = "https://127.0.0.1:" + std::to_string(server.port()) + "/";
  auto r = run_check({url, "--duration", "300ms", "-c", "2", "--insecure"});
  ASSERT_EQ(r.exit_code, 0) << r.output << r.errors;
  EXPECT_EQ(field(r, "ok"), 0) << r.output;
  EXPECT_GT(outcome(r, "tls_handshake_failed"), 0) << r.output;
  EXPECT_EQ(outcome(r, "tls_handshake_failed"), field(r, "requests")) << r.output;
  EXPECT_EQ(test::json_int(r.json.as_object().at("tls"), "handshakes"), 0);
}

TEST_F(HandoffCheck, HttpsOptionsAreCheckedBeforeTheRun) {
  const auto c = make_certificate(dir_.path, "server");
  const std::string missing = (dir_.path / "missing.pem").string();
  auto r = run_check({"https://127.0.0.1:1/", "--cacert", missing}, false);
  EXPECT_EQ(r.exit_code, 2) << r.errors;
  EXPECT_NE(r.errors.find("--cacert " + missing + ": No such file or directory"), std::string::npos)
      << r.errors;
  auto key = run_check({"https://127.0.0.1:1/", "--cacert", c.key}, false);
  EXPECT_EQ(key.exit_code, 2) << key.errors;
  EXPECT_NE(key.errors.find("no PEM certificate"), std::string::npos) << key.errors;
  auto both = run_check({"https://127.0.0.1:1/", "--cacert", c.cert, "--insecure"}, false);
  EXPECT_EQ(both.exit_code, 2) << both.errors;
  auto plain = run_check({"http://127.0.0.1:1/", "--tls-resume"}, false);
  EXPECT_EQ(plain.exit_code, 2) << plain.errors;
  EXPECT_NE(plain.errors.find("need an https:// URL"), std::string::npos) << plain.errors;
}

// The zero-failure reload test of handoff run, over TLS: example_server's https socket held by
// the supervisor, reloaded every 700 ms while check loads it, in both client modes.
TEST_F(HandoffCheck, HttpsReloadsUnderHandoffRunWithoutAFailureInBothModes) {
  const auto c = make_certificate(dir_.path, "server");
  supervised_server server;
  ASSERT_NO_FATAL_FAILURE(server.start(dir_.path, {HANDOFF_EXAMPLE_SERVER, "--threads", "1",
                                                   "--tls-cert", c.cert, "--tls-key", c.key}));
  const std::string reload = std::string(HANDOFF_TOOL) + " reload --control " + server.control();
  for (const char* mode : {"keepalive", "close"}) {
    auto r = run_check({server.url(), "--duration", "5s", "-c", "8", "--mode", mode, "--cacert",
                        c.cert, "--tls-resume", "--reload-cmd", reload, "--reload-every", "700ms",
                        "--fail-on-errors"});
    EXPECT_EQ(r.exit_code, 0) << mode << "\n" << r.output << r.errors << server.log();
    EXPECT_EQ(field(r, "failed"), 0) << mode << "\n" << r.output;
    EXPECT_GT(field(r, "ok"), 20) << r.output;
    // One reload at a time: on a busy machine one takes ~2 s (a sanitized build, TLS setup).
    const auto& restarts = r.json.as_object().at("restarts").as_array();
    EXPECT_GE(restarts.size(), 2u) << r.output;
    for (const auto& x : restarts) EXPECT_TRUE(x.as_object().at("success").as_bool()) << r.output;
    EXPECT_GE(r.json.as_object().at("served_by").as_object().size(), 2u) << r.output;
    const auto& tls = r.json.as_object().at("tls");
    EXPECT_EQ(test::json_int(tls, "handshakes"), field(r, "connections_opened")) << r.output;
  }
  server.stop();
}

// The command's usage errors: one plain sentence each, exit status 2.
TEST_F(HandoffCheck, UsageErrorsSayWhatIsWrongPlainly) {
  auto unknown = run_handoff({"bogus"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.errors.find("unknown command \"bogus\": the commands are check, run, reload, "
                                "status, reexec, stop"),
            std::string::npos)
      << unknown.errors;
  auto option = run_handoff({"run", "--bogus", "--", "true"});
  EXPECT_EQ(option.exit_code, 2);
  EXPECT_NE(option.errors.find("run: unknown option --bogus"), std::string::npos) << option.errors;
  EXPECT_EQ(option.errors.find("not expected"), std::string::npos) << option.errors;
  auto rate = run_handoff({"check", "http://127.0.0.1:1/", "--rate", "-5"});
  EXPECT_EQ(rate.exit_code, 2);
  EXPECT_NE(rate.errors.find("--rate: -5: must be 0 or more"), std::string::npos) << rate.errors;
  EXPECT_LT(rate.errors.size(), 200u) << rate.errors;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"reload", "--timeout", "abc"},
        {"status", "--timeout", "abc"},
        {"check", "http://127.0.0.1:1/", "--duration", "abc"},
        {"run", "--ready", "delay:abc", "--", "true"}}) {
    auto r = run_handoff(args);
    EXPECT_EQ(r.exit_code, 2) << args[0];
    EXPECT_NE(r.errors.find("duration \"abc\": no number"), std::string::npos) << r.errors;
    EXPECT_EQ(r.errors.find("Invalid argument"), std::string::npos) << r.errors;
  }
  for (const char* command : {"run", "check", "reload", "status", "stop"}) {
    auto r = run_handoff({command, "--version"});
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.errors;
    EXPECT_EQ(r.output, "handoff 0.1.0\n") << command;
  }
  auto help = run_handoff({"check", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("3 the target is not reachable"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("4 a restart command failed"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace handoff
