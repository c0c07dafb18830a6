// handoff::upgrader in this process, with our notify receiver standing in for systemd and a
// successor written against libsystemd (sd_ready_child): the hand-over as the manager sees it.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "handoff/notify_receiver.hpp"
#include "handoff/upgrader.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

class Upgrader : public testing::Test {
 protected:
  void SetUp() override {
    manager_.emplace(notify_receiver::open_unique().value());
    ::setenv("NOTIFY_SOCKET", manager_->address().c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("NOTIFY_SOCKET");
    for (pid_t pid : children_) {
      ::kill(pid, SIGKILL);
      (void)wait_exit(pid, 10s);
    }
  }
  upgrader make(const std::string& binary, std::vector<std::string> args = {}) {
    upgrader_options o;
    o.binary = binary;
    o.arguments = std::move(args);
    o.ready_timeout = 5s;
    o.pid_file = dir_ / "app.pid";
    auto u = upgrader::create(o);
    EXPECT_TRUE(u) << u.error().message();
    EXPECT_EQ(std::getenv("NOTIFY_SOCKET"), nullptr) << "create() must take NOTIFY_SOCKET";
    return std::move(*u);
  }
  notify_message next_message() {
    auto m = manager_->receive(10s);
    EXPECT_TRUE(m) << m.error().message();
    return m ? std::move(*m) : notify_message{};
  }
  std::string pid_file() {
    std::ifstream in(dir_ / "app.pid");
    std::string pid;
    in >> pid;
    return pid;
  }

  test::temp_dir dir_;
  std::optional<notify_receiver> manager_;
  std::vector<pid_t> children_;
};

TEST_F(Upgrader, HandsOverToALibsystemdSuccessorAndTellsTheManager) {
  auto up = make(HANDOFF_SD_READY_CHILD, {"web"});
  auto fd = up.listen("web", "127.0.0.1:0");
  ASSERT_TRUE(fd) << fd.error().message();
  ASSERT_TRUE(up.ready("serving"));
  auto first = next_message();
  EXPECT_EQ(first.pid, ::getpid());
  EXPECT_TRUE(first.has("READY"));
  EXPECT_EQ(pid_file(), std::to_string(::getpid()));

  // The manager reads while the upgrade runs, as systemd does: the barrier at the end of the
  // hand-over waits for it.
  std::vector<notify_message> seen;
  std::thread manager([&] {
    for (int i = 0; i < 4; ++i) seen.push_back(next_message());
  });
  auto child = up.upgrade();
  manager.join();
  ASSERT_TRUE(child) << child.error().message();
  children_.push_back(*child);

  // What systemd would see, in order: RELOADING=1 with the monotonic time, a status, then
  // MAINPID= and READY=1 in one datagram, then the barrier; all from the old main process.
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_TRUE(seen[0].has("RELOADING"));
  EXPECT_TRUE(seen[0].get("MONOTONIC_USEC").has_value());
  EXPECT_TRUE(seen[1].get("STATUS").has_value());
  EXPECT_EQ(seen[2].pid, ::getpid());
  EXPECT_EQ(seen[2].get("MAINPID").value_or(""), std::to_string(*child));
  EXPECT_TRUE(seen[2].has("READY"));
  EXPECT_TRUE(seen[3].is_barrier());

  EXPECT_EQ(pid_file(), std::to_string(*child)) << "the pid file names the new process";
  EXPECT_TRUE(up.exit_requested());
  EXPECT_TRUE(readable(up.exit_fd()));
  EXPECT_FALSE(up.manager().has_manager()) << "the old process no longer speaks for the service";
  auto again = up.upgrade();
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message().find("replaced already"), std::string::npos);

  ::kill(*child, SIGTERM);
  auto exited = wait_exit(*child, 10s);
  ASSERT_TRUE(exited);
  EXPECT_TRUE(exited->success()) << exited->describe() << " (3: the socket did not arrive)";
  children_.clear();
}

TEST_F(Upgrader, AFailedSuccessorLeavesThisProcessInCharge) {
  struct failing {
    std::string binary;
    std::vector<std::string> args;
    std::string cause;
  };
  test::temp_dir scripts;
  auto script = [&](const std::string& name, const std::string& body) {
    const std::string path = scripts / name;
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    ::chmod(path.c_str(), 0755);
    return path;
  };
  const std::vector<failing> cases = {
      {scripts / "missing", {}, "No such file or directory"},
      {script("exit1", "exit 1"), {}, "exited with status 1 before it was ready"},
      {script("crash", "kill -SEGV $$"), {}, "killed by signal 11"},
      {script("hang", "exec sleep 60"), {}, "was not ready within"},
      {HANDOFF_SD_READY_CHILD, {"wrong-name"}, "exited with status 3"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.binary);
    upgrader_options o;
    o.binary = c.binary;
    o.arguments = c.args;
    o.ready_timeout = 1s;
    auto up = upgrader::create(o).value();
    ASSERT_TRUE(up.listen("http", "127.0.0.1:0"));
    ASSERT_TRUE(up.ready());
    (void)next_message();  // READY=1
    const auto fds_before = test::count_open_fds();
    auto r = up.upgrade();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find(c.cause), std::string::npos) << r.error().message();
    EXPECT_FALSE(up.exit_requested());
    EXPECT_FALSE(readable(up.exit_fd()));
    EXPECT_EQ(test::count_open_fds(), fds_before) << "a failed upgrade leaks nothing";
    // The manager hears that the reload ended with this process still in charge.
    notify_message m;
    do {
      m = next_message();
    } while (!m.has("READY") && m.pid != 0);
    EXPECT_EQ(m.pid, ::getpid());
    EXPECT_NE(m.get("STATUS").value_or("").find("upgrade failed"), std::string::npos);
    ::setenv("NOTIFY_SOCKET", manager_->address().c_str(), 1);  // for the next case's create()
  }
}

TEST_F(Upgrader, PidFileIsRemovedAtExitOnlyWhileItNamesThisProcess) {
  const std::string path = dir_ / "app.pid";
  {
    auto up = make(HANDOFF_SD_READY_CHILD);
    ASSERT_TRUE(up.listen("web", "127.0.0.1:0"));
    ASSERT_TRUE(up.ready());
    (void)next_message();
    EXPECT_EQ(pid_file(), std::to_string(::getpid()));
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << "a clean exit leaves no pid file behind";
  {
    ::setenv("NOTIFY_SOCKET", manager_->address().c_str(), 1);
    auto up = make(HANDOFF_SD_READY_CHILD);
    ASSERT_TRUE(up.listen("web", "127.0.0.1:0"));
    ASSERT_TRUE(up.ready());
    (void)next_message();
    std::ofstream(path) << "1\n";  // someone else's now
  }
  EXPECT_EQ(pid_file(), "1") << "a pid file that names another process is not ours to remove";
}

TEST_F(Upgrader, PidFileTemporaryIsNeitherPredictableNorFollowed) {
  // Symlinks planted where a predictable temporary would go (the pid, as before) must not be
  // followed: the file they point to keeps its content.
  const std::string path = dir_ / "app.pid";
  const std::string victim = dir_ / "victim";
  std::ofstream(victim) << "precious\n";
  for (const std::string& name :
       {path + ".tmp." + std::to_string(::getpid()), path + ".tmp", path + ".new"})
    ASSERT_EQ(::symlink(victim.c_str(), name.c_str()), 0);
  auto up = make(HANDOFF_SD_READY_CHILD);
  ASSERT_TRUE(up.listen("web", "127.0.0.1:0"));
  ASSERT_TRUE(up.ready());
  std::ifstream in(victim);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the pid file is a file of its own, not a planted link";
  EXPECT_EQ(pid_file(), std::to_string(::getpid()));
}

TEST_F(Upgrader, AFailedPidFileWriteLeavesNoTemporary) {
  // The pid file's path is a directory: rename(2) fails, and the error names the file.
  const std::string path = dir_ / "app.pid";
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  auto up = make(HANDOFF_SD_READY_CHILD);
  ASSERT_TRUE(up.listen("web", "127.0.0.1:0"));
  auto r = up.ready();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find(path), std::string::npos) << r.error().message();
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path()))
    left.push_back(entry.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"app.pid"});
}

TEST_F(Upgrader, UpgradeBeforeReadyIsRefused) {
  auto up = make(HANDOFF_SD_READY_CHILD, {"http"});
  auto r = up.upgrade();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("ready()"), std::string::npos);
}

}  // namespace
}  // namespace handoff
