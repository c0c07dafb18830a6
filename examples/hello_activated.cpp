// hello_activated: the smallest app that speaks both systemd protocols with handoff::core.
//
// It takes the socket named "http" from LISTEN_FDS (systemd, systemd-socket-activate,
// `handoff run`), or opens --listen itself, reports READY=1 on NOTIFY_SOCKET, answers every
// HTTP request with one line naming its pid and version, and on SIGTERM reports STOPPING=1,
// stops accepting and exits. It never shuts the listening socket down: another process may be
// accepting from it. One connection at a time, Connection: close; the HTTP server of
// handoff::http is the real thing, this is a demonstration of the core.
//
//   hello_activated [--listen ADDRESS] [--version TEXT] [--start-delay-ms N]
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "handoff/activation.hpp"
#include "handoff/decimal.hpp"
#include "handoff/notify.hpp"

namespace {

struct options {
  std::string listen = "http=127.0.0.1:8080";
  std::string version = "1";
  int start_delay_ms = 0;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "hello_activated: %s\n"
               "usage: hello_activated [--listen [NAME=]ADDRESS] [--version TEXT] "
               "[--start-delay-ms N]\n",
               why);
  std::exit(2);
}

options parse_args(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + arg).c_str());
    const std::string value = argv[++i];
    if (arg == "--listen") {
      o.listen = value.find('=') == std::string::npos ? "http=" + value : value;
    } else if (arg == "--version") {
      o.version = value;
    } else if (arg == "--start-delay-ms") {
      const auto ms = handoff::parse_decimal<int>(value, 0, 600000);
      if (!ms) usage("--start-delay-ms takes 0 to 600000");
      o.start_delay_ms = *ms;
    } else {
      usage(("unknown option " + arg).c_str());
    }
  }
  return o;
}

// Reads the request head (or gives up after 5 s of silence) and answers with one line.
void serve(int conn, const std::string& body) {
  char buf[8192];
  std::string head;
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < sizeof buf) {
    pollfd p{conn, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    const ssize_t n = ::recv(conn, buf, sizeof buf, 0);
    if (n <= 0) return;
    head.append(buf, static_cast<std::size_t>(n));
  }
  const std::string response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  std::size_t sent = 0;
  while (sent < response.size()) {
    const ssize_t n = ::send(conn, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<std::size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const options opts = parse_args(argc, argv);

  // Signals are read from a signalfd in the loop, never handled asynchronously.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  handoff::unique_fd sigfd(::signalfd(-1, &signals, SFD_CLOEXEC));

  auto sockets = handoff::socket_set::from_environment();
  if (!sockets) {
    std::fprintf(stderr, "hello_activated: %s\n", sockets.error().message().c_str());
    return 1;
  }
  const bool inherited = !sockets->sockets().empty();
  auto listener = sockets->listen(opts.listen);
  if (!listener) {
    std::fprintf(stderr, "hello_activated: %s\n", listener.error().message().c_str());
    return 1;
  }
  // Another generation may poll the same socket and take the connection first: accept must
  // not block then. O_NONBLOCK belongs to the shared open file description, which is fine here
  // because every holder of it (this example) polls before accepting.
  (void)handoff::set_nonblocking(*listener);
  // A slow start-up (loading data, warming caches) that the manager must wait out.
  if (opts.start_delay_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(opts.start_delay_ms));

  const auto notify = handoff::notifier::from_environment(/*unset=*/true);
  auto local = handoff::local_address(*listener);
  const std::string where = local ? local->to_string() : std::string("an unknown address");
  const std::string body =
      "hello from pid " + std::to_string(::getpid()) + " version " + opts.version + "\n";
  std::fprintf(stderr, "hello_activated: pid %d serving on %s (%s)\n", ::getpid(), where.c_str(),
               inherited ? "inherited" : "opened");
  if (auto r = notify.ready("serving on " + where); !r)
    std::fprintf(stderr, "hello_activated: %s\n", r.error().message().c_str());

  for (;;) {
    pollfd fds[2] = {{sigfd.get(), POLLIN, 0}, {*listener, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::perror("hello_activated: poll");
      return 1;
    }
    if (fds[0].revents != 0) break;
    handoff::unique_fd conn(::accept4(*listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (conn) serve(conn.get(), body);
  }
  (void)notify.stopping();
  std::fprintf(stderr, "hello_activated: pid %d stopping\n", ::getpid());
  return 0;
}
