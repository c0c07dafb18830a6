// `handoff reexec` with real processes: an app whose STATUS= is not UTF-8 (Latin-1 "café"),
// and a probe that takes its time. The supervisor runs from a copy of the binary in the test's
// directory (as a package leaves it); tests/supervisor/status_app.py is the app.
//
//  - the state crosses the exec whatever bytes an app sent: the re-exec succeeds, the app
//    keeps serving with the same pid, `status --json` is valid JSON before and after, and the
//    status text is the same bytes after the exec;
//  - a build that cannot read such a state (it reads versions 1 to 3) is refused at the probe,
//    and one that would have read the state at the probe but not the state written after it
//    is refused before the exec: everything keeps running;
//  - while the probe of the binary at the path has not answered, the loop goes on: `handoff
//    status` is answered, a signal is forwarded and the app's notification taken.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "http/raw_client.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct cli_result {
  exit_status status;
  std::string output;
  bool finished = false;  // within its timeout
};

// Runs `argv`, capturing stdout and stderr, for at most `timeout` (then it is killed).
cli_result run_program(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  cli_result out;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return out;
  unique_fd read_end(p[0]), write_end(p[1]);
  spawn_options o;
  o.argv = argv;
  o.stdout_fd = o.stderr_fd = write_end.get();
  auto pid = spawn(o);
  write_end.reset();
  if (!pid) {
    out.output = pid.error().message();
    return out;
  }
  const auto deadline = clock_type::now() + timeout;
  char buf[4096];
  out.finished = true;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    pollfd pfd{read_end.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) == 0) {
      out.finished = false;
      ::kill(*pid, SIGKILL);
      break;
    }
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.output.append(buf, static_cast<std::size_t>(n));
  }
  if (auto status = wait_exit(*pid, 10s)) out.status = *status;
  return out;
}

// A strict parse (UTF-8 checked, as Boost.JSON does by default and RFC 8259 requires).
std::optional<boost::json::value> parse_json(const std::string& text) {
  boost::system::error_code ec;
  auto v = boost::json::parse(text, ec);
  if (ec) return std::nullopt;
  return v;
}

class ReexecState : public testing::Test {
 protected:
  void SetUp() override {
    auto l = open_listener(parse_address("127.0.0.1:0").value());
    ASSERT_TRUE(l) << l.error().message();
    listener_ = std::move(*l);
    port_ = local_address(listener_.get()).value().port;
    control_ = dir_ / "control.sock";
    log_path_ = dir_ / "supervisor.log";
    std::filesystem::create_directories(dir_ / "bin");
    tool_ = dir_ / "bin/handoff";
    replace_binary();
  }

  void TearDown() override {
    stop_manager_reader_ = true;
    if (manager_reader_.joinable()) manager_reader_.join();
    if (supervisor_ > 0) {
      ::kill(supervisor_, SIGKILL);
      (void)wait_exit(supervisor_, 10s);
      if (app_ > 0) ::kill(-app_, SIGKILL);
    }
    if (HasFailure())
      std::fprintf(stderr, "--- supervisor log ---\n%s", read_file(log_path_).c_str());
  }

  // Copies the real binary (or writes `script`, REAL standing for the real binary) next to
  // the path and renames it over it.
  void replace_binary(std::string script = {}) {
    const std::string next = dir_ / "bin/handoff.next";
    std::filesystem::remove(next);
    if (script.empty()) {
      std::filesystem::copy_file(HANDOFF_TOOL, next);
    } else {
      for (auto at = script.find("REAL"); at != std::string::npos; at = script.find("REAL"))
        script.replace(at, 4, HANDOFF_TOOL);
      std::ofstream(next) << script;
    }
    std::filesystem::permissions(next, std::filesystem::perms::owner_all);
    std::filesystem::rename(next, tool_);
  }

  // `handoff run` with status_app.py; returns once the supervisor said READY=1 to us, its
  // manager (the first generation is ready).
  void start(std::vector<std::string> environment = {}) {
    spawn_options o;
    o.extra_environment = std::move(environment);  // the supervisor's, and so its app's
    o.argv = {tool_,   "run",           "--control", control_,          "--name",
              "latin", "--nonblocking", "--",        HANDOFF_STATUS_APP};
    o.fds = {{listener_.get(), "http"}};
    manager_.emplace(notify_receiver::open_unique().value());
    o.notify_socket = manager_->address();
    unique_fd log(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(log);
    o.stdout_fd = o.stderr_fd = log.get();
    auto pid = spawn(o);
    ASSERT_TRUE(pid) << pid.error().message();
    supervisor_ = *pid;
    listener_.reset();
    for (;;) {
      auto m = manager_->receive(30s);
      ASSERT_TRUE(m) << "no READY=1 from the supervisor: " << m.error().message();
      if (m->pid == supervisor_ && m->has("READY")) break;
    }
    // From now on read (and so answer barriers) all the time, as systemd does.
    manager_reader_ = std::thread([this] {
      while (!stop_manager_reader_) (void)manager_->receive(100ms);
    });
    app_ = served_by();
    ASSERT_GT(app_, 0);
  }

  cli_result cli(std::vector<std::string> args, std::chrono::milliseconds timeout = 30s) {
    args.insert(args.begin(), HANDOFF_TOOL);
    args.insert(args.end(), {"--control", control_});
    return run_program(args, timeout);
  }

  // `status --json`, parsed strictly; fails the test when it is not valid JSON.
  boost::json::value status_json() {
    const auto r = cli({"status", "--json"});
    auto v = parse_json(r.output);
    EXPECT_TRUE(v) << "status --json is not valid JSON: " << r.output;
    return v ? *v : boost::json::value();
  }

  // The status text of the app's process, as `handoff status` (text) shows it.
  std::string status_line() {
    const auto text = cli({"status"}).output;
    const auto at = text.find(", status: ");
    if (at == std::string::npos) return "(none) " + text;
    return text.substr(at + 10, text.find('\n', at) - at - 10);
  }

  // The pid that answers GET /, or -1.
  pid_t served_by() {
    test::raw_connection c(port_);
    if (!c.valid()) return -1;
    auto r = c.get("/", 10s, true);
    if (r.result != test::outcome::ok || r.status != 200) return -1;
    return static_cast<pid_t>(std::stol(r.header("x-served-by")));
  }

  // The running image's inode (/proc/PID/exe) and the one at the path.
  ino_t running_inode() const {
    struct stat st {};
    const std::string exe = "/proc/" + std::to_string(supervisor_) + "/exe";
    return ::stat(exe.c_str(), &st) == 0 ? st.st_ino : 0;
  }
  ino_t path_inode() const {
    struct stat st {};
    return ::stat(tool_.c_str(), &st) == 0 ? st.st_ino : 0;
  }

  void stop_supervisor() {
    ASSERT_EQ(::kill(supervisor_, SIGTERM), 0);
    auto status = wait_exit(supervisor_, 30s);
    ASSERT_TRUE(status) << status.error().message();
    supervisor_ = -1;
    EXPECT_TRUE(status->success()) << status->describe();
  }

  test::temp_dir dir_;
  std::string tool_, control_, log_path_;
  unique_fd listener_;
  std::uint16_t port_ = 0;
  pid_t supervisor_ = -1, app_ = -1;
  std::optional<notify_receiver> manager_;
  std::thread manager_reader_;
  std::atomic<bool> stop_manager_reader_{false};
};

TEST_F(ReexecState, AStatusThatIsNotUtf8CrossesTheExecByteExact) {
  start();
  ASSERT_FALSE(HasFatalFailure());
  // Before: valid JSON (U+FFFD where the bytes are not UTF-8), the text escaped.
  auto before = status_json();
  ASSERT_TRUE(before.is_object());
  const auto& process = before.at("generations").at(0).at("processes").at(0);
  EXPECT_EQ(process.at("status").as_string(), "caf\xef\xbf\xbd");
  EXPECT_EQ(status_line(), "caf\\xe9");
  replace_binary();
  const ino_t fresh = path_inode();
  const auto r = cli({"reexec"});
  ASSERT_TRUE(r.status.success()) << r.output;
  EXPECT_NE(r.output.find("re-executed handoff"), std::string::npos) << r.output;
  EXPECT_EQ(running_inode(), fresh) << "not the binary now at the path";
  // The same supervisor, the same app, still serving, and its status the same bytes.
  auto after = status_json();
  ASSERT_TRUE(after.is_object());
  EXPECT_EQ(after.at("pid").to_number<pid_t>(), supervisor_);
  EXPECT_EQ(after.at("reexecs").to_number<int>(), 1);
  EXPECT_EQ(after.at("generations").at(0).at("processes").at(0).at("pid").to_number<pid_t>(), app_);
  EXPECT_EQ(status_line(), "caf\\xe9");
  EXPECT_EQ(served_by(), app_);
  // And again, from the state the new image wrote (version 4), with a new status on the way.
  ASSERT_EQ(::kill(supervisor_, SIGUSR1), 0);  // forwarded: the app says "na\xefve 1"
  const auto deadline = clock_type::now() + 20s;
  while (status_line() != "na\\xefve 1" && clock_type::now() < deadline)
    std::this_thread::sleep_for(20ms);
  ASSERT_EQ(status_line(), "na\\xefve 1");
  replace_binary();
  const auto again = cli({"reexec"});
  ASSERT_TRUE(again.status.success()) << again.output;
  EXPECT_EQ(status_line(), "na\\xefve 1");
  EXPECT_EQ(status_json().at("reexecs").to_number<int>(), 2);
  EXPECT_EQ(served_by(), app_);
  stop_supervisor();
}

TEST_F(ReexecState, ABuildThatCannotReadTheBytesIsRefusedAtTheProbe) {
  start();
  ASSERT_FALSE(HasFatalFailure());
  const ino_t old = running_inode();
  // As an older build answers: it reads versions 1 to 3 (it would refuse the state's bytes).
  replace_binary(
      "#!/bin/sh\n[ -n \"$HANDOFF_REEXEC_PROBE\" ] && { echo 'handoff-reexec state 1 3 handoff "
      "old'; exit 0; }\nexec REAL \"$@\"\n");
  const auto r = cli({"reexec"});
  EXPECT_EQ(r.status.code, 1) << r.output;
  EXPECT_NE(r.output.find("handoff old reads state versions 1 to 3; this one writes version 4 "
                          "(a byte string in the state is not UTF-8 text"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("keeps running"), std::string::npos) << r.output;
  EXPECT_EQ(running_inode(), old);
  auto status = status_json();
  EXPECT_EQ(status.at("reexecs").to_number<int>(), 0);
  EXPECT_EQ(served_by(), app_);
  EXPECT_EQ(status_line(), "caf\\xe9");
  stop_supervisor();
}

// The binary at the path, as a script: in probe mode it says it started (on `started`), waits
// for a line on `go` and then lets the real binary answer as `answer` says ("" for the real
// answer); otherwise it is the real binary.
std::string slow_probe_script(const std::string& started, const std::string& go,
                              const std::string& answer = {}) {
  const std::string reply = answer.empty() ? "exec REAL" : "echo '" + answer + "'; exit 0";
  return "#!/bin/sh\nif [ -n \"$HANDOFF_REEXEC_PROBE\" ]; then\n  echo started >" + started +
         "\n  read line <" + go + "\n  " + reply + "\nfi\nexec REAL \"$@\"\n";
}

class SlowProbe : public ReexecState {
 protected:
  void SetUp() override {
    ReexecState::SetUp();
    started_path_ = dir_ / "started";
    go_path_ = dir_ / "go";
    ASSERT_EQ(::mkfifo(started_path_.c_str(), 0600), 0);
    ASSERT_EQ(::mkfifo(go_path_.c_str(), 0600), 0);
    // Read and write ends both ours: the script's opens never wait, only its read of `go`.
    started_.reset(::open(started_path_.c_str(), O_RDWR | O_CLOEXEC));
    go_.reset(::open(go_path_.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(started_ && go_);
  }

  // Waits for the probe's "started" line.
  void wait_probe_started() {
    pollfd p{started_.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 30'000), 1) << "the probe never started";
    char buf[64];
    ASSERT_GT(::read(started_.get(), buf, sizeof buf), 0);
  }
  void release_probe() { ASSERT_EQ(::write(go_.get(), "go\n", 3), 3); }

  std::string started_path_, go_path_;
  unique_fd started_, go_;
};

TEST_F(SlowProbe, TheLoopServesWhileTheProbeHasNotAnswered) {
  start();
  ASSERT_FALSE(HasFatalFailure());
  replace_binary(slow_probe_script(started_path_, go_path_));
  cli_result reexec;
  std::thread asking([&] { reexec = cli({"reexec"}); });
  wait_probe_started();
  // The probe waits on us now: its answer is due within 5 s (then it would be killed). The
  // loop answers a status request meanwhile; a signal is forwarded to the app and the
  // app's notification taken.
  const auto r = cli({"status"}, 4s);
  EXPECT_TRUE(r.finished) << "status was not answered while the probe ran";
  EXPECT_NE(r.output.find("status: caf\\xe9"), std::string::npos) << r.output;
  ASSERT_EQ(::kill(supervisor_, SIGUSR1), 0);
  const auto deadline = clock_type::now() + 4s;
  std::string line;
  while ((line = status_line()) != "na\\xefve 1" && clock_type::now() < deadline)
    std::this_thread::sleep_for(20ms);
  EXPECT_EQ(line, "na\\xefve 1") << "the app's notification was not taken during the probe";
  // A second re-exec meanwhile is refused at once.
  const auto second = cli({"reexec"}, 4s);
  EXPECT_TRUE(second.finished);
  EXPECT_NE(second.output.find("a re-exec is under way already"), std::string::npos)
      << second.output;
  release_probe();
  asking.join();
  EXPECT_TRUE(reexec.status.success()) << reexec.output;
  // The script at the path execs the real binary: that is what runs now.
  struct stat real {};
  ASSERT_EQ(::stat(HANDOFF_TOOL, &real), 0);
  EXPECT_EQ(running_inode(), real.st_ino);
  EXPECT_EQ(status_json().at("reexecs").to_number<int>(), 1);
  EXPECT_EQ(status_line(), "na\\xefve 1");
  EXPECT_EQ(served_by(), app_);
  stop_supervisor();
}

// The state when the probe started was UTF-8 text (version 1); by the time the probe answered,
// the app had sent a status that is not (version 4). What counts is the state of the moment
// of the answer: the binary, which reads 1 to 3, is refused, and everything keeps running.
TEST_F(SlowProbe, TheVersionThatCountsIsTheOneOfTheStateWhenTheProbeAnswers) {
  start({"STATUS_APP_UTF8=1"});
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(status_line(), "caf\xc3\xa9");
  replace_binary(
      slow_probe_script(started_path_, go_path_, "handoff-reexec state 1 3 handoff old"));
  const ino_t old = running_inode();
  cli_result reexec;
  std::thread asking([&] { reexec = cli({"reexec"}); });
  wait_probe_started();
  ASSERT_EQ(::kill(supervisor_, SIGUSR1), 0);
  const auto deadline = clock_type::now() + 4s;
  while (status_line() != "na\\xefve 1" && clock_type::now() < deadline)
    std::this_thread::sleep_for(20ms);
  release_probe();
  asking.join();
  EXPECT_EQ(reexec.status.code, 1) << reexec.output;
  EXPECT_NE(reexec.output.find("reads state versions 1 to 3; this one writes version 4"),
            std::string::npos)
      << reexec.output;
  EXPECT_EQ(running_inode(), old);
  EXPECT_EQ(status_json().at("reexecs").to_number<int>(), 0);
  EXPECT_EQ(served_by(), app_);
  stop_supervisor();
}

}  // namespace
}  // namespace handoff
