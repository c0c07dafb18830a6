// The probe of `handoff reexec`: before this image writes its state and execs the binary at
// its path, that binary is run once with HANDOFF_REEXEC_PROBE=1 and must answer which state
// versions it reads ("handoff-reexec state MIN MAX VERSION", main.cpp) and exit 0.
//
// The probe is a child the loop watches, never a wait inside a handler: its answer comes on a
// nonblocking pipe the loop polls, its exit through reap() like any child's, and its deadline
// (probe_timeout) through the timers, which SIGKILL it. Meanwhile the loop goes on reaping,
// taking notifications, answering control requests and pinging its own watchdog: a binary
// that is slow to answer (a cold page cache, a loaded machine, a wrapper script) never stalls
// the supervisor. The answer is read once the probe has exited (whatever it wrote is in the
// pipe by then), so a grandchild that keeps the pipe open cannot hold the decision back.
#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "handoff/spawn.hpp"
#include "supervisor/core.hpp"
#include "supervisor/state.hpp"

namespace handoff::supervisor {

using namespace std::chrono_literals;

namespace {

// How long the binary at the path may take to answer which state versions it reads.
constexpr auto probe_timeout = 5s;
// What is kept of its output (its last line says why it failed).
constexpr std::size_t probe_output_max = 4096;

std::string state_version_note(int version) {
  return version >= 4 ? " (a byte string in the state is not UTF-8 text: an app's STATUS= or "
                        "FDNAME=, a name or a path)"
                      : "";
}

}  // namespace

bool supervisor_core::start_reexec_probe(std::optional<std::uint64_t> id) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    refuse_reexec(
        id, fmt::format("pipe: {}; {} keeps running", std::strerror(errno), HANDOFF_VERSION_TEXT));
    return false;
  }
  unique_fd read_end(p[0]), write_end(p[1]);
  // Ours only: the probe writes to a blocking pipe, as to any stdout.
  (void)::fcntl(read_end.get(), F_SETFL, ::fcntl(read_end.get(), F_GETFL) | O_NONBLOCK);
  spawn_options so;
  so.argv = {self_path_};
  so.extra_environment = {std::string(env_probe) + "=1"};
  so.stdout_fd = so.stderr_fd = write_end.get();
  so.parent_death_signal = SIGKILL;
  auto pid = spawn(so);
  write_end.reset();
  if (!pid) {
    refuse_reexec(id, fmt::format("{} {}; {} keeps running", self_path_, pid.error().message(),
                                  HANDOFF_VERSION_TEXT));
    return false;
  }
  // Assigned, not emplace()d: clang 14 judges a nested struct with default member initializers
  // not default-constructible (asked while the enclosing class was incomplete).
  auto& probe = *(reexec_probe_ = reexec_probe{});
  probe.id = id;
  probe.pid = *pid;
  probe.out = std::move(read_end);
  probe.deadline = os_.now() + probe_timeout;
  log_.log("reexec_probe", fmt::format("reexec: asking {} (pid {}) which state versions it reads",
                                       self_path_, *pid));
  return true;
}

int supervisor_core::reexec_probe_fd() const noexcept {
  return reexec_probe_ && reexec_probe_->out ? reexec_probe_->out.get() : -1;
}

void supervisor_core::on_reexec_probe_output() {
  if (!reexec_probe_ || !reexec_probe_->out) return;
  auto& probe = *reexec_probe_;
  char buf[1024];
  for (;;) {
    const ssize_t n = ::read(probe.out.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    // The end (or an error): no more polling, or a closed pipe would wake the loop for ever.
    if (n <= 0) {
      probe.out.reset();
      return;
    }
    const auto room = probe_output_max - std::min(probe_output_max, probe.said.size());
    probe.said.append(buf, std::min(room, static_cast<std::size_t>(n)));
  }
}

void supervisor_core::reexec_probe_timers(deadlines& due) {
  if (!reexec_probe_ || reexec_probe_->killed) return;
  // A stop begun meanwhile refuses the re-exec anyway: no need to wait for the answer.
  if (stopping_ || due.reached(reexec_probe_->deadline)) {
    reexec_probe_->timed_out = !stopping_;
    (void)::kill(reexec_probe_->pid, SIGKILL);  // our child, not reaped: still that process
    reexec_probe_->killed = true;
  }
}

bool supervisor_core::on_reexec_probe_exit(pid_t pid, const std::optional<exit_status>& status) {
  if (!reexec_probe_ || reexec_probe_->pid != pid) return false;
  on_reexec_probe_output();  // what it wrote before it exited is in the pipe
  const auto probe = std::move(*std::exchange(reexec_probe_, std::nullopt));
  std::string last;  // its last line of output, to say why it failed
  {
    std::string trimmed = probe.said;
    while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == '\r'))
      trimmed.pop_back();
    const auto nl = trimmed.rfind('\n');
    last = trimmed.substr(nl == std::string::npos ? 0 : nl + 1);
    if (last.size() > 200) last.resize(200);
  }
  const std::string said = last.empty() ? "" : fmt::format(" (its last words: \"{}\")", last);
  const auto refuse = [&](const std::string& why) {
    refuse_reexec(probe.id,
                  fmt::format("{} {}; {} keeps running", self_path_, why, HANDOFF_VERSION_TEXT));
  };
  if (stopping_) {
    refuse_reexec(probe.id, "the supervisor is stopping");
    return true;
  }
  if (probe.timed_out) {
    refuse(fmt::format("did not answer the probe within {} s", probe_timeout.count()));
    return true;
  }
  if (!status || !status->success()) {
    refuse(fmt::format("{} when probed{}",
                       status ? status->describe() : std::string("could not be reaped"), said));
    return true;
  }
  const std::string tag = "handoff-reexec state ";
  const auto at = probe.said.find(tag);
  if (at == std::string::npos) {
    refuse(fmt::format("is not a handoff that can re-execute: no state versions in its answer{}",
                       said));
    return true;
  }
  probed_binary binary;
  char version[128] = {};
  if (std::sscanf(probe.said.c_str() + at + tag.size(), "%d %d %127[^\n]", &binary.min, &binary.max,
                  version) != 3) {
    refuse("answered the probe with a damaged line");
    return true;
  }
  binary.version = version;
  const int written = state_version_written();
  if (written < binary.min || written > binary.max) {
    refuse(fmt::format("{} reads state versions {} to {}; this one writes version {}{}",
                       binary.version, binary.min, binary.max, written,
                       state_version_note(written)));
    return true;
  }
  after_probe(probe.id, binary);
  return true;
}

std::string supervisor_core::state_version_refused(const probed_binary& binary, int version) const {
  if (version >= binary.min && version <= binary.max) return {};
  return fmt::format("{} {} reads state versions {} to {}; the state is now version {}{}",
                     self_path_, binary.version, binary.min, binary.max, version,
                     state_version_note(version));
}

}  // namespace handoff::supervisor
