// fault_app: the app for the supervisor's fault tests. Each start takes the first line of a
// "modes" file (and removes it), so a test scripts what each generation does:
//   fault_app --modes FILE -- SERVER [ARGS...]
//   serve (or no line left)  exec SERVER (example_server), which takes fd 3 by LISTEN_FDS
//   exit1                    exit 1 at start
//   kill-before-ready        killed by SIGKILL before READY=1
//   never-ready              never sends READY=1 (and never accepts)
//   crash-after-ready        READY=1, then abort() 300 ms later (never accepts)
//   ignore-term              SIGTERM ignored, READY=1, never accepts, waits forever
//   report-fds:PATH          writes its open fds (one "N TARGET" a line) to PATH, then serves
//   fdstore:NAME             stores a memfd (FDSTORE=1, FDNAME=NAME) with the supervisor, serves
//   fork-mainpid             forks; the child (a new main process, as after a self-upgrade)
//                            serves, the parent sends MAINPID=<child> with a barrier and exits 0
//   ping-serve:PATH          a helper process in the group sends WATCHDOG=1 every 50 ms (its pid
//                            in PATH; kill it to silence the app), then serves
//   orphan:PATH              leaves a grandchild that outlives its parent (re-parented to the
//                            supervisor), writes its pid to PATH, then serves
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "handoff/notify.hpp"

namespace {

std::string take_mode(const std::string& file) {
  std::ifstream in(file);
  if (!in) return "serve";
  std::string first, line, rest;
  std::getline(in, first);
  while (std::getline(in, line)) rest += line + "\n";
  in.close();
  const std::string tmp = file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << rest;
  }
  std::filesystem::rename(tmp, file);
  return first.empty() ? "serve" : first;
}

void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
  }
  std::filesystem::rename(tmp, path);
}

[[noreturn]] void serve(std::vector<char*>& server) {
  server.push_back(nullptr);
  ::execv(server[0], server.data());
  std::perror("fault_app: exec");
  ::_exit(127);
}

}  // namespace

int main(int argc, char** argv) {
  std::string modes;
  std::vector<char*> server;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--modes") == 0 && i + 1 < argc) {
      modes = argv[++i];
    } else if (std::strcmp(argv[i], "--") == 0) {
      for (++i; i < argc; ++i) server.push_back(argv[i]);
    }
  }
  if (modes.empty() || server.empty()) {
    (void)std::fprintf(stderr, "usage: fault_app --modes FILE -- SERVER [ARGS...]\n");
    return 2;
  }
  const std::string mode = take_mode(modes);
  (void)std::fprintf(stderr, "fault_app: pid %d mode %s\n", ::getpid(), mode.c_str());
  const auto notify = handoff::notifier::from_environment();
  if (mode == "serve") serve(server);
  if (mode == "exit1") return 1;
  if (mode == "kill-before-ready") (void)::raise(SIGKILL);
  if (mode == "never-ready") {
    for (;;) ::pause();
  }
  if (mode == "crash-after-ready") {
    (void)notify.ready();
    ::usleep(300'000);
    std::abort();
  }
  if (mode == "ignore-term") {
    (void)::signal(SIGTERM, SIG_IGN);
    (void)notify.ready();
    for (;;) ::pause();
  }
  if (mode.rfind("report-fds:", 0) == 0) {
    std::ostringstream out;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      const auto target = std::filesystem::read_symlink(entry.path(), ec);
      // The directory iterator's own fd (closed by now, or still listed as /proc/N/fd).
      if (ec || target.string().rfind("/proc/", 0) == 0) continue;
      out << entry.path().filename().string() << " " << target.string() << "\n";
    }
    const char* names = std::getenv("LISTEN_FDNAMES");
    out << "names " << (names != nullptr ? names : "") << "\n";
    write_file(mode.substr(11), out.str());
    serve(server);
  }
  if (mode.rfind("fdstore:", 0) == 0) {
    const int fd = ::memfd_create("fault_app_store", MFD_CLOEXEC);
    if (fd < 0) return 3;
    const int fds[] = {fd};
    auto sent = notify.fdstore(fds, mode.substr(8));
    if (!sent) {
      (void)std::fprintf(stderr, "fault_app: %s\n", sent.error().message().c_str());
      return 3;
    }
    serve(server);
  }
  if (mode.rfind("ping-serve:", 0) == 0) {
    const pid_t pinger = ::fork();
    if (pinger < 0) return 3;
    if (pinger == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (;;) {
        (void)notify.watchdog();
        ::usleep(50'000);
      }
    }
    write_file(mode.substr(11), std::to_string(pinger) + "\n");
    serve(server);
  }
  if (mode == "fork-mainpid") {
    const pid_t child = ::fork();
    if (child < 0) return 3;
    if (child == 0) {
      // The fds on 3.. are inherited as they are; only LISTEN_PID must name the new process.
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
      serve(server);
    }
    if (!notify.mainpid(child) || !notify.barrier()) return 3;
    return 0;
  }
  if (mode.rfind("orphan:", 0) == 0) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return 3;
    const pid_t middle = ::fork();
    if (middle == 0) {
      const pid_t grandchild = ::fork();
      if (grandchild == 0) {
        ::close(p[1]);
        char c;
        (void)!::read(p[0], &c, 1);  // until the test's side is written: EOF when all closed
        ::usleep(200'000);
        ::_exit(0);
      }
      ::_exit(0);
    }
    int status = 0;
    ::waitpid(middle, &status, 0);
    ::close(p[0]);
    ::close(p[1]);
    // The grandchild's pid: the only other process of our group.
    std::string found;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = std::stoi(name);
      if (pid != ::getpid() && ::getpgid(pid) == ::getpgrp()) found = name;
    }
    write_file(mode.substr(7), found + "\n");
    serve(server);
  }
  (void)std::fprintf(stderr, "fault_app: unknown mode %s\n", mode.c_str());
  return 2;
}
