// restart_holder: holds a listening socket and runs generations of an app on it, passed by the
// systemd protocol (LISTEN_FDS, fd 3, name "http"); SIGHUP restarts the app in one of two orders:
//
//   --order stop-first    systemd's order (`systemctl restart` of a socket-activated service):
//                         SIGTERM the old generation, wait for it to exit, start the new one,
//                         wait for READY=1. The socket stays open: connections wait in the queue.
//   --order naive         no held socket: the app opens its own (pass --listen in its args);
//                         SIGTERM the old one, wait for it to exit, start the new one, wait
//                         for READY=1. Between the two nobody listens: connections are refused.
//   --order start-first   handoff's order: start the new generation, wait for its READY=1
//                         (NOTIFY_SOCKET), then SIGTERM the old one, which drains while the new
//                         one serves.
//
// A benchmark helper (bench/restart_peers), not part of the library; SIGTERM stops everything.
//   restart_holder [--listen 127.0.0.1:8080] --order ORDER [--pidfile F] -- APP ARGS...
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/spawn.hpp"

using namespace std::chrono_literals;

namespace {

[[noreturn]] void die(const std::string& what) {
  (void)std::fprintf(stderr, "restart_holder: %s\n", what.c_str());
  std::exit(1);
}

struct holder {
  handoff::unique_fd listener;
  handoff::notify_receiver notify;
  std::vector<std::string> app;
  std::set<pid_t> draining;

  pid_t start() {
    handoff::spawn_options o;
    o.argv = app;
    if (listener) o.fds = {{listener.get(), "http"}};
    o.notify_socket = notify.address();
    auto pid = handoff::spawn(o);
    if (!pid) die(pid.error().message());
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto m = notify.receive(60s);
      if (m && m->pid == *pid && m->has("READY")) return *pid;
    }
    die("the app never reported READY=1");
  }

  void reap() {
    int status;
    pid_t p;
    while ((p = ::waitpid(-1, &status, WNOHANG)) > 0) draining.erase(p);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen, order = "stop-first", pidfile;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (i + 1 >= argc) die("missing value for " + a);
    if (a == "--listen")
      listen = argv[++i];
    else if (a == "--order")
      order = argv[++i];
    else if (a == "--pidfile")
      pidfile = argv[++i];
    else
      die("unknown option " + a);
  }
  if ((listen.empty() && order != "naive") || i >= argc ||
      (order != "stop-first" && order != "start-first" && order != "naive"))
    die("usage: restart_holder [--listen ADDR] --order naive|stop-first|start-first -- APP...");

  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGHUP, SIGTERM, SIGINT, SIGCHLD}) sigaddset(&signals, s);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  handoff::unique_fd fd;
  if (order != "naive") {
    auto address = handoff::parse_address(listen);
    if (!address) die(address.error().message());
    auto opened = handoff::open_listener(*address);
    if (!opened) die(opened.error().message());
    fd = std::move(*opened);
  }
  auto n = handoff::notify_receiver::open_unique();
  if (!n) die(n.error().message());
  holder h{std::move(fd), std::move(*n), {argv + i, argv + argc}, {}};

  pid_t current = h.start();
  if (!pidfile.empty()) std::ofstream(pidfile) << ::getpid() << "\n";
  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    h.reap();
    if (sig == SIGCHLD) continue;
    if (sig != SIGHUP) break;
    if (order == "stop-first" || order == "naive") {
      ::kill(current, SIGTERM);
      (void)handoff::wait_exit(current, 60s);
      current = h.start();
    } else {
      const pid_t next = h.start();
      ::kill(current, SIGTERM);
      h.draining.insert(current);
      current = next;
    }
  }
  ::kill(current, SIGTERM);
  (void)handoff::wait_exit(current, 30s);
  for (pid_t p : h.draining) (void)handoff::wait_exit(p, 30s);
  return 0;
}
