// The supervisor's state machine without processes: a scripted operating system (os_env)
// spawns nothing, records signals and notifications, and moves the clock by hand. The process
// tests (test_supervisor.cpp) run the same code against real processes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <map>
#include <sstream>

#include "supervisor/core.hpp"

namespace handoff::supervisor {
namespace {

using namespace std::chrono_literals;

// Pids beyond any pid_max: no real process can answer for them.
constexpr pid_t first_fake_pid = 50'000'000;

class fake_os final : public os_env {
 public:
  result<pid_t> spawn(const spawn_options& options) override {
    if (fail_spawns > 0) {
      --fail_spawns;
      return error::from_errno(ENOENT, "exec " + options.argv.at(0));
    }
    spawned.push_back(next_pid);
    return next_pid++;
  }
  unique_fd open_pidfd(pid_t) override { return {}; }
  std::optional<std::vector<ino_t>> socket_inodes(pid_t) override { return std::nullopt; }
  void signal_slot(const slot& s, int sig) override { signals.emplace_back(s.pid, sig); }
  void signal_process(const slot& s, int sig) override { signals.emplace_back(s.pid, sig); }
  std::optional<pid_t> peek_exited() override {
    if (exits.empty()) return std::nullopt;
    return exits.front().first;
  }
  std::optional<exit_status> collect(pid_t pid) override {
    if (exits.empty() || exits.front().first != pid) return std::nullopt;
    auto status = exits.front().second;
    exits.pop_front();
    return status;
  }
  clock::time_point now() override { return time; }
  void notify_manager(manager_event event, std::string_view) override { manager.push_back(event); }

  int signals_to(pid_t pid, int sig) const {
    int n = 0;
    for (const auto& [p, s] : signals)
      if (p == pid && s == sig) ++n;
    return n;
  }

  pid_t next_pid = first_fake_pid;
  int fail_spawns = 0;
  std::vector<pid_t> spawned;
  std::vector<std::pair<pid_t, int>> signals;
  std::deque<std::pair<pid_t, exit_status>> exits;
  std::vector<manager_event> manager;
  clock::time_point time = clock::time_point{} + 1000h;
};

exit_status exited(int code) {
  exit_status s;
  s.exited = true;
  s.code = code;
  return s;
}

exit_status killed(int sig) {
  exit_status s;
  s.signal = sig;
  return s;
}

class StateMachine : public ::testing::Test {
 protected:
  run_options options() {
    run_options o;
    o.command = {"app"};
    o.name = "unit";
    o.ready_timeout = 10s;
    o.stop_timeout = 5s;
    return o;
  }
  void make(run_options o = {}) {
    if (o.command.empty()) o = options();
    sv = std::make_unique<supervisor_core>(std::move(o), os);
  }
  void ready(pid_t pid) {
    notify_message m;
    m.pid = pid;
    m.fields = {{"READY", "1"}};
    sv->on_notify_message(m);
    settle();
  }
  void exit(pid_t pid, exit_status status) {
    sv->on_exit(pid, status);
    settle();
  }
  // What the loop does after every event: the timers until nothing more changes.
  clock::time_point settle() {
    clock::time_point next{};
    for (int round = 0; round < 16; ++round) {
      const auto before = sv->transitions();
      next = sv->on_timers();
      if (sv->transitions() == before) break;
    }
    return next;
  }
  const generation* find(int id) {
    for (const auto& g : sv->generations())
      if (g.id == id) return &g;
    return nullptr;
  }
  generation_state state_of(int id) {
    const generation* g = find(id);
    EXPECT_NE(g, nullptr) << "generation " << id;
    return g ? g->state : generation_state::failed;
  }
  // The first generation, ready and serving.
  pid_t serving_first() {
    sv->start_generation(false, std::nullopt);
    const pid_t pid = os.spawned.back();
    ready(pid);
    EXPECT_EQ(state_of(1), generation_state::serving);
    return pid;
  }

  fake_os os;
  std::unique_ptr<supervisor_core> sv;
};

TEST(Backoff, DoublesFromMinimumUpToMaximumWithoutOverflow) {
  EXPECT_EQ(backoff(100ms, 30s, 0), 100ms);
  EXPECT_EQ(backoff(100ms, 30s, 1), 200ms);
  EXPECT_EQ(backoff(100ms, 30s, 3), 800ms);
  EXPECT_EQ(backoff(100ms, 30s, 9), 30s);
  EXPECT_EQ(backoff(100ms, 30s, 1000), 30s);
  EXPECT_EQ(backoff(std::chrono::milliseconds::max() / 2, 30s, 20), 30s);
  EXPECT_EQ(backoff(0ms, 30s, 5), 0ms);
}

TEST_F(StateMachine, FirstGenerationServesOnReadyAndTellsTheManager) {
  make();
  sv->start_generation(false, std::nullopt);
  ASSERT_EQ(os.spawned.size(), 1u);
  EXPECT_EQ(state_of(1), generation_state::starting);
  ready(os.spawned[0]);
  EXPECT_EQ(state_of(1), generation_state::serving);
  ASSERT_EQ(os.manager.size(), 1u);
  EXPECT_EQ(os.manager[0], manager_event::ready);
}

TEST_F(StateMachine, ReloadTakesOverThenStopsTheOldGenerationOnce) {
  make();
  const pid_t old_pid = serving_first();
  EXPECT_EQ(sv->request_reload(std::nullopt), "");
  const pid_t new_pid = os.spawned.back();
  EXPECT_EQ(state_of(2), generation_state::starting);
  EXPECT_EQ(os.signals_to(old_pid, SIGTERM), 0) << "the old one serves until the new is ready";
  ready(new_pid);
  EXPECT_EQ(state_of(2), generation_state::serving);
  EXPECT_EQ(state_of(1), generation_state::draining);
  EXPECT_EQ(os.signals_to(old_pid, SIGTERM), 1);
  exit(old_pid, killed(SIGTERM));
  EXPECT_EQ(find(1), nullptr) << "a stopped generation is forgotten";
  EXPECT_EQ(os.manager.back(), manager_event::ready);
}

TEST_F(StateMachine, ReloadDuringReloadIsRefused) {
  make();
  serving_first();
  EXPECT_EQ(sv->request_reload(std::nullopt), "");
  EXPECT_NE(sv->request_reload(std::nullopt).find("already in progress"), std::string::npos);
}

TEST_F(StateMachine, FailedReloadKillsTheNewGenerationAndTheOldKeepsServing) {
  make();
  const pid_t old_pid = serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  const pid_t new_pid = os.spawned.back();
  exit(new_pid, exited(1));
  EXPECT_EQ(find(2), nullptr);
  EXPECT_EQ(state_of(1), generation_state::serving);
  EXPECT_EQ(os.signals_to(old_pid, SIGTERM), 0);
  // Type=notify-reload: RELOADING=1 is always followed by READY=1.
  ASSERT_GE(os.manager.size(), 2u);
  EXPECT_EQ(os.manager[os.manager.size() - 2], manager_event::reloading);
  EXPECT_EQ(os.manager.back(), manager_event::ready);
}

TEST_F(StateMachine, NotReadyWithinTheReadyTimeoutFails) {
  make();
  serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  const pid_t new_pid = os.spawned.back();
  const auto next = settle();
  EXPECT_EQ(next, os.time + 10s) << "the loop wakes for the ready timeout";
  os.time = next;
  settle();
  EXPECT_EQ(state_of(2), generation_state::failed);
  EXPECT_EQ(os.signals_to(new_pid, SIGKILL), 1);
}

// An app that never speaks the protocol (uvicorn, Node) is told apart from a slow one: with not a
// single message from the process, the failure says so and names the other --ready modes.
TEST_F(StateMachine, ASilentAppsReadyTimeoutNamesTheAlternatives) {
  make();
  sv->start_generation(false, std::nullopt);
  EXPECT_NE(sv->status_text(false).find("nothing on NOTIFY_SOCKET yet"), std::string::npos);
  os.time = settle();
  settle();
  EXPECT_EQ(state_of(1), generation_state::failed);
  const std::string status = sv->status_text(false);
  EXPECT_NE(status.find("last start failure: generation 1 failed: pid"), std::string::npos)
      << status;
  EXPECT_NE(status.find("nothing at all arrived on NOTIFY_SOCKET"), std::string::npos) << status;
  EXPECT_NE(status.find("--ready delay:"), std::string::npos) << status;
  EXPECT_NE(status.find("--ready http:///PATH"), std::string::npos) << status;
  EXPECT_NE(status.find("--proxy"), std::string::npos) << status;
  EXPECT_NE(sv->status_text(true).find("\"last_start_failure\":\"generation 1 failed"),
            std::string::npos);

  // A process that spoke (STATUS=, no READY=1) is slow, not silent: no such hint.
  os.time = settle();  // the restart's backoff
  settle();
  ASSERT_EQ(state_of(2), generation_state::starting);
  notify_message m;
  m.pid = os.spawned.back();
  m.fields = {{"STATUS", "loading"}};
  sv->on_notify_message(m);
  os.time = settle();
  settle();
  EXPECT_EQ(state_of(2), generation_state::failed);
  EXPECT_EQ(sv->status_text(false).find("nothing at all arrived"), std::string::npos);
}

// A reload while the first generation is still starting has nothing to take over from: the
// refusal says that, not "a reload is already in progress".
TEST_F(StateMachine, AReloadBeforeTheFirstGenerationIsReadySaysItIsStillStarting) {
  make();
  sv->start_generation(false, std::nullopt);
  const std::string why = sv->request_reload(std::nullopt);
  EXPECT_EQ(why.find("already in progress"), std::string::npos) << why;
  EXPECT_NE(why.find("generation 1 (the first) is still starting"), std::string::npos) << why;
  EXPECT_NE(why.find("nothing to reload"), std::string::npos) << why;
}

TEST_F(StateMachine, OldGenerationIgnoringTheStopSignalIsKilledAfterTheStopTimeout) {
  make();
  const pid_t old_pid = serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  ready(os.spawned.back());
  const auto next = settle();
  EXPECT_EQ(next, os.time + 5s);
  os.time = next - 1ms;
  settle();
  EXPECT_EQ(os.signals_to(old_pid, SIGKILL), 0);
  os.time = next;
  settle();
  EXPECT_EQ(os.signals_to(old_pid, SIGKILL), 1);
  // Nothing left to act on for it: no deadline in the past (no spin).
  EXPECT_GT(settle(), os.time);
}

TEST_F(StateMachine, RetiredGenerationWaitsForTheRetireConditionBoundedByTheStopTimeout) {
  make();
  bool idle = false;
  sv->set_retire_condition([&](const generation&) { return idle; });
  const pid_t old_pid = serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  ready(os.spawned.back());
  EXPECT_EQ(state_of(1), generation_state::retiring);
  EXPECT_EQ(os.signals_to(old_pid, SIGTERM), 0);
  EXPECT_EQ(settle(), os.time + 5s);
  idle = true;
  settle();
  EXPECT_EQ(state_of(1), generation_state::draining);
  EXPECT_EQ(os.signals_to(old_pid, SIGTERM), 1);

  // Never idle: the stop signal goes out at --stop-timeout after the take-over.
  idle = false;
  exit(old_pid, killed(SIGTERM));
  const pid_t second = os.spawned.back();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  ready(os.spawned.back());
  EXPECT_EQ(os.signals_to(second, SIGTERM), 0);
  os.time += 5s;
  settle();
  EXPECT_EQ(os.signals_to(second, SIGTERM), 1);
}

TEST_F(StateMachine, DeadProcessIsRestartedWithBackoff) {
  run_options o = options();
  o.backoff_min = 100ms;
  make(o);
  const pid_t pid = serving_first();
  exit(pid, killed(SIGSEGV));
  EXPECT_EQ(os.spawned.size(), 1u);
  EXPECT_EQ(settle(), os.time + 100ms);
  os.time += 100ms;
  settle();
  ASSERT_EQ(os.spawned.size(), 2u);
  EXPECT_EQ(state_of(1), generation_state::serving);
  // Dies again before being ready: the next pause doubles.
  exit(os.spawned.back(), exited(1));
  EXPECT_EQ(settle(), os.time + 200ms);
}

TEST_F(StateMachine, StopSignalsEveryGenerationAndFinishesWhenAllExited) {
  make();
  const pid_t pid = serving_first();
  sv->begin_stop("test");
  EXPECT_EQ(os.signals_to(pid, SIGTERM), 1);
  EXPECT_EQ(os.manager.back(), manager_event::stopping);
  EXPECT_FALSE(sv->finished());
  exit(pid, exited(0));
  EXPECT_TRUE(sv->finished());
}

TEST_F(StateMachine, AStopAskedForAndDoneByTheStopSignalExitsZero) {
  make();
  const pid_t pid = serving_first();
  sv->begin_stop("SIGTERM");
  exit(pid, killed(SIGTERM));
  ASSERT_TRUE(sv->finished());
  EXPECT_EQ(sv->exit_code(), 0);
}

TEST_F(StateMachine, AStopThatNeededSigkillOrAnAppThatFailedKeepsTheStatus) {
  make();
  const pid_t pid = serving_first();
  sv->begin_stop("SIGTERM");
  exit(pid, exited(3));
  EXPECT_EQ(sv->exit_code(), 3);
}

TEST_F(StateMachine, AppKilledByTheStopSignalUnaskedIsAFailure) {
  run_options o = options();
  o.restart = restart_policy::never;
  make(o);
  const pid_t pid = serving_first();
  exit(pid, killed(SIGTERM));  // someone else's SIGTERM: not a stop we were asked for
  ASSERT_TRUE(sv->finished());
  EXPECT_EQ(sv->exit_code(), 128 + SIGTERM);
}

TEST_F(StateMachine, RefusedReloadSignalStillSendsReloadingThenReady) {
  make();
  serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");  // generation 2 starting
  os.manager.clear();
  sv->on_reload_signal();  // refused: a reload is in progress
  ASSERT_EQ(os.manager.size(), 2u);
  EXPECT_EQ(os.manager[0], manager_event::reloading);
  EXPECT_EQ(os.manager[1], manager_event::ready);
}

TEST_F(StateMachine, WatchdogIntervalsOverADayNeitherOverflowNorSpin) {
  make();
  const pid_t pid = serving_first();
  for (const char* usec : {"90000000000", "18446744073709551615", "9223372036854775807"}) {
    notify_message m;
    m.pid = pid;
    m.fields = {{"WATCHDOG_USEC", usec}};
    sv->on_notify_message(m);
    const auto next = settle();
    EXPECT_GT(next, os.time) << usec;
    EXPECT_LE(next, os.time + watchdog_max) << usec;
  }
  // Silent for the whole (capped) interval: killed once, and then no deadline for it.
  os.time += watchdog_max;
  settle();
  EXPECT_EQ(os.signals_to(pid, SIGKILL), 1);
  EXPECT_EQ(settle(), clock::time_point::max());
  EXPECT_EQ(os.signals_to(pid, SIGKILL), 1);
}

TEST_F(StateMachine, OwnWatchdogIsPingedEveryHalfIntervalFromTheLoop) {
  make();
  serving_first();
  os.manager.clear();
  sv->set_own_watchdog(10s);
  EXPECT_EQ(settle(), os.time + 5s);
  ASSERT_EQ(os.manager.size(), 1u);
  EXPECT_EQ(os.manager[0], manager_event::watchdog);
  os.time += 4s;
  settle();
  EXPECT_EQ(os.manager.size(), 1u);
  os.time += 1s;
  EXPECT_EQ(settle(), os.time + 5s);
  EXPECT_EQ(os.manager.size(), 2u);
}

TEST_F(StateMachine, LastWordsOfAProcessReapedFirstAreDroppedQuietly) {
  // An app that sends STOPPING=1 and exits: the loop reaps before it reads notifications, so
  // the message is read from a pid no generation has any more. A stranger's still is logged.
  make();
  const pid_t old_pid = serving_first();
  ASSERT_EQ(sv->request_reload(std::nullopt), "");
  ready(os.spawned.back());
  exit(old_pid, exited(0));
  const pid_t stranger = os.next_pid + 1000;
  testing::internal::CaptureStderr();
  notify_message m;
  m.pid = old_pid;
  m.fields = {{"STOPPING", "1"}};
  sv->on_notify_message(m);
  m.pid = stranger;
  sv->on_notify_message(m);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("pid " + std::to_string(old_pid) + ","), std::string::npos) << log;
  EXPECT_NE(log.find("pid " + std::to_string(stranger) + ", not a process of any generation"),
            std::string::npos)
      << log;
}

TEST_F(StateMachine, FirstStartThatCannotExecIsASetupError) {
  make();
  os.fail_spawns = 1;
  EXPECT_THROW(sv->start_generation(false, std::nullopt), std::runtime_error);
}

// The real system_os with real processes: a group whose leader was reaped is never signalled
// as a group (its id may be reused), only the main process, through its pidfd.
TEST(SystemOs, AfterTheLeaderIsReapedOnlyTheMainProcessIsSignalled) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const pid_t leader = ::fork();
  ASSERT_GE(leader, 0);
  if (leader == 0) {
    ::setpgid(0, 0);
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pid_t kids[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      kids[i] = ::fork();
      if (kids[i] == 0) {
        // The second one (a bystander of the group) blocks SIGTERM: a signal sent to the group
        // stays visible as pending in /proc/PID/status instead of ending it.
        if (i == 1) ::sigprocmask(SIG_BLOCK, &term, nullptr);
        for (;;) ::pause();
      }
    }
    (void)!::write(p[1], kids, sizeof kids);
    ::_exit(0);
  }
  ::close(p[1]);
  pid_t kids[2] = {0, 0};
  ASSERT_EQ(::read(p[0], kids, sizeof kids), static_cast<ssize_t>(sizeof kids));
  ::close(p[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(leader, &status, 0), leader);  // the leader is reaped
  const pid_t main_pid = kids[0], bystander = kids[1];
  unique_fd main_fd(static_cast<int>(::syscall(SYS_pidfd_open, main_pid, 0)));
  ASSERT_TRUE(main_fd);

  system_os os;
  slot s;
  s.pid = main_pid;
  s.pgid = leader;
  s.leader_reaped = true;
  s.pidfd = os.open_pidfd(main_pid);
  os.signal_slot(s, SIGTERM);

  pollfd pfd{main_fd.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1) << "the main process got no SIGTERM";
  std::ifstream in("/proc/" + std::to_string(bystander) + "/status");
  std::string line, pending;
  while (std::getline(in, line))
    if (line.rfind("ShdPnd:", 0) == 0) pending = line.substr(7);
  const unsigned long long mask = std::stoull(pending, nullptr, 16);
  EXPECT_EQ(mask & (1ULL << (SIGTERM - 1)), 0ULL) << "the group of a reaped leader was signalled";
  ::kill(bystander, SIGKILL);
  s.pid = 0;
}

}  // namespace
}  // namespace handoff::supervisor
