// A tiny HTTP/1.1 server for the tests of `handoff check`, on raw sockets so that it can
// misbehave on purpose. It listens on 127.0.0.1:0, prints "port N" on stdout, and on SIGTERM
// prints "served N" (responses written in full) and exits 0.
//
//   test_server                         200 "ok", keep-alive
//   test_server --status 503            that status instead
//   test_server --one-per-connection    answers one request per connection, then closes it
//                                       without `Connection: close` (keep-alive was promised)
//   test_server --announce-close        answers one request per connection with
//                                       `Connection: close`, then closes it (no failure)
//   test_server --idle-close-ms N       closes a connection that stays idle for N ms, without
//                                       saying so: clients that reuse it race the close
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

std::atomic<long> served{0};
int status_code = 200;
bool one_per_connection = false;
bool announce_close = false;
int idle_close_ms = -1;

void serve(int fd) {
  std::string buffer;
  char chunk[4096];
  for (;;) {
    std::size_t end;
    while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
      if (idle_close_ms >= 0 && buffer.empty()) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, idle_close_ms) == 0) {
          ::close(fd);  // idle: close without a word
          return;
        }
      }
      const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) {
        ::close(fd);
        return;
      }
      buffer.append(chunk, static_cast<std::size_t>(n));
    }
    buffer.erase(0, end + 4);  // GET only: no body to skip
    const std::string body = status_code == 200 ? "ok\n" : "unavailable\n";
    const std::string response =
        "HTTP/1.1 " + std::to_string(status_code) + (status_code == 200 ? " OK" : " Error") +
        (announce_close ? "\r\nConnection: close" : "") +
        "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\n\r\n" + body;
    std::size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = ::send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) {
        ::close(fd);
        return;
      }
      sent += static_cast<std::size_t>(n);
    }
    ++served;
    if (one_per_connection || announce_close) {
      ::close(fd);
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--status" && i + 1 < argc) {
      status_code = std::atoi(argv[++i]);
    } else if (a == "--one-per-connection") {
      one_per_connection = true;
    } else if (a == "--announce-close") {
      announce_close = true;
    } else if (a == "--idle-close-ms" && i + 1 < argc) {
      idle_close_ms = std::atoi(argv[++i]);
    } else {
      (void)std::fprintf(stderr, "test_server: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);

  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener, 1024) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("test_server: listen");
    return 1;
  }
  std::printf("port %d\n", ntohs(addr.sin_port));
  (void)std::fflush(stdout);
  std::thread([listener] {
    for (;;) {
      const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::thread(serve, fd).detach();
    }
  }).detach();
  int sig = 0;
  sigwait(&term, &sig);
  std::printf("served %ld\n", served.load());
  (void)std::fflush(stdout);
  _exit(0);
}
