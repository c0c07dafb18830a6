// Test helper: sends notifications with libsystemd (the reference implementation) to the
// NOTIFY_SOCKET it was started with, one per command, in order, then exits.
//
//   ready               sd_notify(0, "READY=1")
//   status TEXT         sd_notify(0, "STATUS=TEXT")
//   mainpid PID         sd_notifyf(0, "MAINPID=PID")
//   reloading           sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=<now>"); prints the value
//   raw TEXT            sd_notify(0, TEXT)
//   fdstore NAME        sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=NAME", fds, 2) with a
//                       pipe's read end (the pipe holds "pipe:NAME") and a memfd (holding
//                       "memfd:NAME")
//   barrier             sd_notify_barrier(0, 5 s)
//
// Prints "pid <its pid>", then "<command> <return value>" per command on stdout. Any failure
// (including a return of 0, which means NOTIFY_SOCKET is unset) goes to stderr and exits 1.
#include <fcntl.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

int fail(const char* what, int r) {
  std::fprintf(stderr, "sd_notify_sender: %s: %s\n", what,
               r < 0 ? std::strerror(-r) : "returned 0");
  return 1;
}

unsigned long long monotonic_usec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
         static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
}

bool write_all(int fd, const std::string& text) {
  return write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("pid %d\n", static_cast<int>(getpid()));
  for (int i = 1; i < argc; ++i) {
    const std::string cmd = argv[i];
    const auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "sd_notify_sender: %s needs an argument\n", cmd.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    int r = 0;
    if (cmd == "ready") {
      r = sd_notify(0, "READY=1");
    } else if (cmd == "status") {
      r = sd_notifyf(0, "STATUS=%s", next());
    } else if (cmd == "mainpid") {
      r = sd_notifyf(0, "MAINPID=%s", next());
    } else if (cmd == "raw") {
      r = sd_notify(0, next());
    } else if (cmd == "reloading") {
      const unsigned long long now = monotonic_usec();
      r = sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", now);
      std::printf("monotonic_usec %llu\n", now);
    } else if (cmd == "fdstore") {
      const std::string name = next();
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) return fail("pipe2", -errno);
      const int memfd = memfd_create("sd_notify_sender", MFD_CLOEXEC);
      if (memfd < 0) return fail("memfd_create", -errno);
      if (!write_all(p[1], "pipe:" + name) || !write_all(memfd, "memfd:" + name))
        return fail("write", -errno);
      close(p[1]);
      const int fds[] = {p[0], memfd};
      r = sd_pid_notify_with_fds(0, 0, ("FDSTORE=1\nFDNAME=" + name).c_str(), fds, 2);
      close(p[0]);
      close(memfd);
    } else if (cmd == "barrier") {
      r = sd_notify_barrier(0, 5 * 1000000ULL);
    } else {
      std::fprintf(stderr, "sd_notify_sender: unknown command %s\n", cmd.c_str());
      return 2;
    }
    if (r <= 0) return fail(cmd.c_str(), r);
    std::printf("%s %d\n", cmd.c_str(), r);
    std::fflush(stdout);
  }
  return 0;
}
