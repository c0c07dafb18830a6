// Self-upgrade of example_server (handoff::upgrader) as a deploy does it: the binary file is
// replaced, SIGHUP, and the new version takes over the sockets while the old one drains, under
// continuous load that never retries. This test process stands in for systemd: it passes the
// socket, owns NOTIFY_SOCKET (and answers barriers), and is the subreaper that inherits each
// old generation once its own parent has gone.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "raw_client.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
namespace fs = std::filesystem;

const std::string v1 = HANDOFF_EXAMPLE_SERVER;
const std::string v2 = HANDOFF_EXAMPLE_SERVER_V2;

struct load_stats {
  std::mutex mutex;
  std::map<std::string, long> failures;
  std::map<std::string, std::string> build_of_pid;  // X-Served-By -> X-Build
  std::atomic<long> ok{0};
  void record(const char* kind, const test::reply& r) {
    std::lock_guard lock(mutex);
    if (r.result != outcome::ok) {
      ++failures[std::string(kind) + ": " + to_string(r.result)];
    } else if (r.status != 200) {
      ++failures[std::string(kind) + ": status " + std::to_string(r.status)];
    } else {
      ++ok;
      build_of_pid[r.header("x-served-by")] = r.header("x-build");
    }
  }
  std::string describe_failures() {
    std::lock_guard lock(mutex);
    std::string s;
    for (const auto& [what, n] : failures) s += what + " x" + std::to_string(n) + "\n";
    return s;
  }
};

class SelfUpgrade : public testing::Test {
 protected:
  void SetUp() override {
    // Orphaned old generations come to us, as they would to systemd, so we can reap them.
    ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    binary_ = dir_ / "server";
    install(v1);
    listener_ = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(listener_.get()).value().port;
    manager_.emplace(notify_receiver::open_unique().value());
    // The manager reads all the time, as systemd does: barriers are answered at once.
    reader_ = std::thread([this] {
      while (!stop_reader_) {
        auto m = manager_->receive(100ms);
        if (!m) continue;
        std::lock_guard lock(messages_mutex_);
        messages_.push_back(std::move(*m));
        messages_changed_.notify_all();
      }
    });
  }
  void TearDown() override {
    stop_load();
    stop_reader_ = true;
    reader_.join();
    for (pid_t pid : alive_) ::kill(pid, SIGKILL);
    // Reap everything that is (or became) our child.
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    (void)::prctl(PR_SET_CHILD_SUBREAPER, 0);
  }

  // Replaces the binary the way a deploy does: a new file renamed over the old path.
  void install(const std::string& from) {
    const std::string next = binary_ + ".new";
    fs::copy_file(from, next, fs::copy_options::overwrite_existing);
    fs::permissions(next, fs::perms::owner_all);
    fs::rename(next, binary_);
  }

  pid_t start(std::vector<std::string> extra = {}, std::vector<passed_fd> fds = {}) {
    spawn_options o;
    o.argv = {binary_, "--threads", "2", "--drain-timeout", "20s"};
    if (std::find(extra.begin(), extra.end(), "--upgrade-timeout") == extra.end())
      o.argv.insert(o.argv.end(), {"--upgrade-timeout", "2s"});
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    o.fds = fds.empty() ? std::vector<passed_fd>{{listener_.get(), "http"}} : std::move(fds);
    o.notify_socket = manager_->address();
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    stderr_read_.reset(p[0]);
    unique_fd write_end(p[1]);
    o.stderr_fd = write_end.get();
    const pid_t pid = spawn(o).value();
    alive_.insert(pid);
    EXPECT_TRUE(
        wait_message([&](const notify_message& m) { return m.pid == pid && m.has("READY"); }));
    return pid;
  }

  // Waits (bounded) for a message that satisfies `match`, consuming everything before it.
  template <class F>
  std::optional<notify_message> wait_message(F&& match, std::chrono::seconds timeout = 30s) {
    std::unique_lock lock(messages_mutex_);
    std::optional<notify_message> found;
    messages_changed_.wait_for(lock, timeout, [&] {
      while (!messages_.empty()) {
        notify_message m = std::move(messages_.front());
        messages_.erase(messages_.begin());
        if (match(m)) {
          found = std::move(m);
          return true;
        }
      }
      return false;
    });
    return found;
  }

  // SIGHUP to the current generation; returns the successor's pid, or -1 when the upgrade
  // failed (then `why` is the manager's STATUS=).
  pid_t upgrade(pid_t current, std::string* why = nullptr) {
    EXPECT_EQ(::kill(current, SIGHUP), 0);
    auto m =
        wait_message([&](const notify_message& x) { return x.pid == current && x.has("READY"); });
    if (!m) {
      ADD_FAILURE() << "no READY=1 from pid " << current << " after SIGHUP";
      return -1;
    }
    if (auto mainpid = m->get("MAINPID")) {
      const pid_t next = std::atoi(std::string(*mainpid).c_str());
      alive_.insert(next);
      return next;
    }
    if (why != nullptr) *why = std::string(m->get("STATUS").value_or(""));
    return -1;
  }

  // The old generation drains and exits 0; it is our child by now (directly, or as an orphan).
  void expect_clean_exit(pid_t pid) {
    auto status = wait_exit(pid, 30s);
    ASSERT_TRUE(status) << "pid " << pid << ": " << status.error().message();
    EXPECT_TRUE(status->success()) << "pid " << pid << " " << status->describe();
    alive_.erase(pid);
  }

  void start_load(std::vector<std::uint16_t> ports = {}) {
    if (ports.empty()) ports.push_back(port_);
    for (const std::uint16_t port : ports) {
      clients_.emplace_back([this, port] {
        raw_connection c;
        while (!stop_load_) {
          if (!c.valid()) c = raw_connection(port);
          auto r = c.get("/", 10s);
          load_.record("keepalive", r);
          if (r.result != outcome::ok || r.close) c.close();
        }
      });
      clients_.emplace_back([this, port] {
        while (!stop_load_) {
          raw_connection c(port);
          load_.record("close", c.get("/", 10s, true));
        }
      });
    }
    clients_.emplace_back([this] {
      raw_connection c;
      while (!stop_load_) {
        if (!c.valid()) c = raw_connection(port_);
        auto r = c.get("/slow?ms=200", 10s);
        load_.record("slow", r);
        if (r.result != outcome::ok || r.close) c.close();
      }
    });
  }
  void stop_load() {
    stop_load_ = true;
    for (auto& t : clients_) t.join();
    clients_.clear();
  }
  void wait_requests(long more) {
    const long target = load_.ok + more;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (load_.ok < target && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(2ms);
    EXPECT_GE(load_.ok.load(), target) << "the load stalled";
  }

  test::temp_dir dir_;
  std::string binary_;
  unique_fd listener_;
  std::uint16_t port_ = 0;
  std::optional<notify_receiver> manager_;
  std::thread reader_;
  std::atomic<bool> stop_reader_{false};
  std::mutex messages_mutex_;
  std::condition_variable messages_changed_;
  std::vector<notify_message> messages_;
  unique_fd stderr_read_;
  std::set<pid_t> alive_;
  load_stats load_;
  std::atomic<bool> stop_load_{false};
  std::vector<std::thread> clients_;
};

TEST_F(SelfUpgrade, TwentyUpgradesInARowUnderLoadWithANewBinaryEachTime) {
  pid_t current = start();
  start_load();
  std::map<pid_t, std::string> expected_build{{current, "1"}};
  for (int i = 1; i <= 20; ++i) {
    wait_requests(100);
    const bool second = i % 2 == 1;
    install(second ? v2 : v1);
    const pid_t next = upgrade(current);
    ASSERT_GT(next, 0) << "upgrade " << i << " failed";
    expected_build[next] = second ? "2" : "1";
    expect_clean_exit(current);
    current = next;
  }
  wait_requests(100);
  stop_load();
  EXPECT_EQ(load_.describe_failures(), "");
  // Every generation answered, and each with the build that was on disk when it started.
  for (const auto& [pid, build] : expected_build) {
    ASSERT_TRUE(load_.build_of_pid.count(std::to_string(pid))) << "pid " << pid << " never served";
    EXPECT_EQ(load_.build_of_pid[std::to_string(pid)], build) << "pid " << pid;
  }
  ::kill(current, SIGTERM);
  expect_clean_exit(current);
}

TEST_F(SelfUpgrade, SocketsMatchedByAddressAreCarriedThroughUpgrades) {
  // The app asks for http=127.0.0.1:P and 127.0.0.1:Q; the manager passed the first under
  // another name (as a systemd socket with its own FileDescriptorName= does) and the second
  // unnamed. Both are found by address and must be handed on, upgrade after upgrade: neither
  // is closed at ready() for not carrying the name the app asked for.
  unique_fd unnamed = open_listener(parse_address("127.0.0.1:0").value()).value();
  const std::uint16_t unnamed_port = local_address(unnamed.get()).value().port;
  const std::string pid_path = dir_ / "app.pid";
  pid_t current = start({"--listen", "http=127.0.0.1:" + std::to_string(port_), "--listen",
                         "127.0.0.1:" + std::to_string(unnamed_port), "--pid-file", pid_path,
                         "--upgrade-timeout", "30s"},
                        {{listener_.get(), "web"}, {unnamed.get(), ""}});
  // From here on only the generations hold the sockets: a socket one of them closed would stop
  // being served, instead of waiting in our copy's queue.
  listener_.reset();
  unnamed.reset();
  start_load({port_, unnamed_port});
  for (int i = 1; i <= 2; ++i) {
    wait_requests(200);
    install(i % 2 == 1 ? v2 : v1);
    std::string why;
    const pid_t next = upgrade(current, &why);
    ASSERT_GT(next, 0) << "upgrade " << i << " failed: " << why;
    expect_clean_exit(current);
    current = next;
    std::ifstream in(pid_path);
    std::string named;
    in >> named;
    EXPECT_EQ(named, std::to_string(current)) << "the pid file names the serving generation";
  }
  wait_requests(200);
  stop_load();
  EXPECT_EQ(load_.describe_failures(), "");
  ::kill(current, SIGTERM);
  expect_clean_exit(current);
  EXPECT_FALSE(fs::exists(pid_path)) << "the last generation removes its pid file at exit";
}

TEST_F(SelfUpgrade, FailedUpgradesLeaveTheOldProcessServing) {
  const pid_t current = start();
  start_load();
  const std::string broken = dir_ / "broken";
  auto install_script = [&](const std::string& body) {
    std::ofstream(broken) << "#!/bin/sh\n" << body << "\n";
    fs::permissions(broken, fs::perms::owner_all);
    fs::rename(broken, binary_);
  };
  struct failure {
    std::function<void()> prepare;
    std::string cause;
  };
  const std::vector<failure> failures = {
      {[&] { install_script("exit 1"); }, "exited with status 1 before it was ready"},
      {[&] { install_script("kill -SEGV $$"); }, "killed by signal 11"},
      {[&] { install_script("exec sleep 60"); }, "was not ready within 2000 ms"},
      {[&] { fs::remove(binary_); }, "No such file or directory"},
  };
  for (const auto& f : failures) {
    wait_requests(100);
    f.prepare();
    std::string why;
    EXPECT_EQ(upgrade(current, &why), -1);
    EXPECT_NE(why.find(f.cause), std::string::npos) << why;
  }
  // And after all that, a good binary takes over as usual.
  wait_requests(100);
  install(v2);
  const pid_t next = upgrade(current);
  ASSERT_GT(next, 0);
  expect_clean_exit(current);
  wait_requests(100);
  stop_load();
  EXPECT_EQ(load_.describe_failures(), "");
  ::kill(next, SIGTERM);
  expect_clean_exit(next);
}

TEST_F(SelfUpgrade, BackToBackUpgradesWhileALongStreamDrains) {
  const pid_t first = start({"--max-draining", "2"});
  raw_connection stream(port_);
  ASSERT_TRUE(stream.send_all("GET /stream?seconds=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  // Its first bytes tell us the stream runs, in the first generation (the only one yet).
  pollfd started{stream.fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&started, 1, 10'000), 1);
  const pid_t second = upgrade(first);
  ASSERT_GT(second, 0);
  const pid_t third = upgrade(second);  // the first still drains its stream: allowed (1 < 2)
  ASSERT_GT(third, 0);
  // Two generations draining now: one more upgrade is refused, and says why on stderr.
  ASSERT_EQ(::kill(third, SIGHUP), 0);
  std::string err;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (err.find("upgrade refused") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    pollfd p{stderr_read_.get(), POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) continue;
    const ssize_t n = ::read(stderr_read_.get(), buf, sizeof buf);
    if (n <= 0) break;
    err.append(buf, static_cast<std::size_t>(n));
  }
  EXPECT_NE(err.find("upgrade refused: 2 older generations are still draining"), std::string::npos)
      << err;
  auto reply = stream.read_reply(20s);
  ASSERT_EQ(reply.result, outcome::ok) << to_string(reply.result);
  EXPECT_NE(reply.body.find("tick 29"), std::string::npos) << "the stream was cut short";
  expect_clean_exit(first);
  expect_clean_exit(second);
  const pid_t fourth = upgrade(third);  // nothing drains any more
  EXPECT_GT(fourth, 0);
  expect_clean_exit(third);
  ::kill(fourth, SIGTERM);
  expect_clean_exit(fourth);
}

}  // namespace
}  // namespace handoff
