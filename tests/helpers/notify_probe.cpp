// notify_probe: a service for the tests against real systemd. It uses only handoff::core.
//
//   notify_probe REPORT_FILE
// On start it appends to REPORT_FILE one line per fd received by LISTEN_FDS ("fd NAME KIND");
// an fd named "state" (a memfd it stored with FDSTORE=1 in an earlier life) holds a counter of
// starts, which it increments and reports as "starts N". Then it stores the memfd again
// (FDSTORE=1, FDNAME=state) and reports READY=1 with STATUS=.
// SIGHUP: RELOADING=1 with MONOTONIC_USEC=, then READY=1 ("reloaded" in the report).
// SIGUSR2: hands the service over to a forked successor: the child sends MAINPID=<its pid> and
// READY=1, waits on the barrier, then tells the parent, which exits; the child serves on
// ("successor PID").
// SIGTERM: STOPPING=1, exit 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "handoff/activation.hpp"
#include "handoff/notify.hpp"

namespace {

std::string report_path;

void report(const std::string& line) {
  if (std::FILE* f = std::fopen(report_path.c_str(), "ae")) {
    std::fprintf(f, "%s\n", line.c_str());
    std::fclose(f);
  }
}

void fail(const std::string& what, const handoff::error& e) {
  report("error " + what + ": " + e.message());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  report_path = argv[1];
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&signals, s);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  handoff::unique_fd sigfd(::signalfd(-1, &signals, SFD_CLOEXEC));

  auto inherited = handoff::listen_fds();
  if (!inherited) fail("listen_fds", inherited.error());
  handoff::unique_fd state;
  for (auto& s : *inherited) {
    report("fd " + s.name + " " + s.info.describe());
    if (s.name == "state") state = std::move(s.fd);
  }
  unsigned starts = 0;
  if (state) {
    if (::pread(state.get(), &starts, sizeof starts, 0) != sizeof starts) starts = 0;
  } else {
    state.reset(::memfd_create("state", MFD_CLOEXEC));
  }
  ++starts;
  if (::pwrite(state.get(), &starts, sizeof starts, 0) != sizeof starts) return 1;
  report("starts " + std::to_string(starts));

  const auto notify = handoff::notifier::from_environment();
  const int store[] = {state.get()};
  if (auto r = notify.fdstore(store, "state"); !r) fail("fdstore", r.error());
  if (auto r = notify.ready("probe started " + std::to_string(starts) + " times"); !r)
    fail("ready", r.error());

  for (;;) {
    signalfd_siginfo info{};
    if (::read(sigfd.get(), &info, sizeof info) != sizeof info) continue;
    if (info.ssi_signo == SIGTERM) {
      (void)notify.stopping();
      report("stopping " + std::to_string(::getpid()));
      return 0;
    }
    if (info.ssi_signo == SIGHUP) {
      if (auto r = notify.reloading(); !r) fail("reloading", r.error());
      report("reloaded");
      if (auto r = notify.ready(); !r) fail("ready", r.error());
    } else if (info.ssi_signo == SIGUSR2) {
      int done[2];
      if (::pipe2(done, O_CLOEXEC) != 0) return 1;
      const pid_t child = ::fork();
      if (child == 0) {
        ::close(done[0]);
        const std::string message = "MAINPID=" + std::to_string(::getpid()) + "\nREADY=1";
        if (auto r = notify.send(message); !r) fail("mainpid", r.error());
        // Only once systemd has processed MAINPID= may the old main process exit.
        if (auto r = notify.barrier(); !r) fail("barrier", r.error());
        report("successor " + std::to_string(::getpid()));
        ::close(done[1]);
        continue;
      }
      ::close(done[1]);
      char byte;
      (void)::read(done[0], &byte, 1);  // EOF when the successor has passed the barrier
      report("predecessor " + std::to_string(::getpid()) + " exits");
      return 0;
    }
  }
}
