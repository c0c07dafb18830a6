// sd_ready_child: a successor written against libsystemd, the reference implementation. It
// takes its sockets with sd_listen_fds_with_names() and reports READY=1 with sd_notify(), then
// waits for SIGTERM. Used to check that handoff::upgrader hands over to any app that speaks the
// protocol, not only to itself. Exit status 3 when the sockets are not what was expected:
// exactly one, named by argv[1].
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(1, &names);
  const bool as_expected = n == 1 && argc > 1 && names != nullptr &&
                           std::strcmp(names[0], argv[1]) == 0 &&
                           sd_is_socket(SD_LISTEN_FDS_START, 0, SOCK_STREAM, 1) > 0;
  for (int i = 0; names != nullptr && names[i] != nullptr; ++i) std::free(names[i]);
  std::free(names);  // a strv of libsystemd's: the caller frees it
  if (!as_expected) {
    std::fprintf(stderr, "sd_ready_child: got %d fds\n", n);
    return 3;
  }
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigprocmask(SIG_BLOCK, &term, nullptr);
  if (sd_notify(0, "READY=1") <= 0) return 4;
  int sig = 0;
  sigwait(&term, &sig);
  return 0;
}
