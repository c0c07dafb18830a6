// handoff_demo: a socket hand-off between generations of an app, with nothing but handoff::core.
//
// It does what a supervisor does, in a hundred lines: open the listening socket once, start
// generation 1 of the app with it (LISTEN_FDS), wait for its READY=1 on a notify socket, then
// for each next generation: start it with the same socket while the old one still serves,
// wait for READY=1 from the new pid, and only then send SIGTERM to the old one. Meanwhile
// client threads send requests, a new connection each, and count every failure. Because the
// socket never closes and the old generation stops only after the new one is ready, the count
// should be zero. (`handoff run` is the full supervisor; this shows the core's parts.)
//
//   handoff_demo --app PATH [--listen ADDRESS] [--generations N] [--clients N]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "handoff/decimal.hpp"
#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
  std::string app;
  std::string listen = "http=127.0.0.1:0";
  int generations = 4;
  int clients = 4;
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "handoff_demo: %s\n", why.c_str());
  std::exit(1);
}

options parse_args(int argc, char** argv) {
  options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], value = argv[i + 1];
    if (arg == "--app")
      o.app = value;
    else if (arg == "--listen")
      o.listen = value;
    else if (arg == "--generations")
      o.generations = handoff::parse_decimal<int>(value, 1, 100).value_or(0);
    else if (arg == "--clients")
      o.clients = handoff::parse_decimal<int>(value, 1, 64).value_or(0);
    else
      die("unknown option " + arg);
  }
  if (o.app.empty() || o.generations < 1 || o.generations > 100 || o.clients < 1 || o.clients > 64)
    die("usage: handoff_demo --app PATH [--listen ADDRESS] [--generations 1-100] "
        "[--clients 1-64]");
  return o;
}

// What the client threads saw.
struct tally {
  std::mutex mutex;
  std::map<std::string, long> answers;   // response line -> count
  std::map<std::string, long> failures;  // failure class -> count
  void add(std::map<std::string, long>& to, const std::string& key) {
    std::lock_guard lock(mutex);
    ++to[key];
  }
};

// One request on a new connection; returns the failure class, or "" and the answer.
std::string one_request(std::uint16_t port, std::string& answer) {
  handoff::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0)
    return errno == ECONNREFUSED ? "connection refused" : "connect failed";
  const char request[] = "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";
  if (::send(fd.get(), request, sizeof request - 1, MSG_NOSIGNAL) != sizeof request - 1)
    return "send failed";
  std::string response;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) return errno == ECONNRESET ? "reset" : errno == EAGAIN ? "timeout" : "recv failed";
    response.append(buf, static_cast<std::size_t>(n));
  }
  if (response.rfind("HTTP/1.1 200", 0) != 0)
    return response.empty() ? "closed, no answer" : "not 200";
  const auto body = response.find("\r\n\r\n");
  answer = response.substr(body + 4);
  if (!answer.empty() && answer.back() == '\n') answer.pop_back();
  return {};
}

pid_t start_generation(const options& o, int fd, const std::string& name,
                       const handoff::notify_receiver& notify, int generation) {
  handoff::spawn_options spawn;
  spawn.argv = {o.app, "--version", std::to_string(generation)};
  spawn.fds = {{fd, name}};
  spawn.notify_socket = notify.address();
  spawn.group = handoff::process_group::new_group;
  auto pid = handoff::spawn(spawn);
  if (!pid) die(pid.error().message());
  return *pid;
}

// Waits for READY=1 from `pid`; messages of other processes are shown and otherwise ignored.
bool wait_ready(handoff::notify_receiver& notify, pid_t pid, std::chrono::seconds timeout) {
  const auto deadline = clock_type::now() + timeout;
  while (clock_type::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    auto message = notify.receive(left);
    if (!message) {
      std::fprintf(stderr, "handoff_demo: notify: %s\n", message.error().message().c_str());
      if (message.error() == handoff::errc::timed_out) return false;
      continue;
    }
    if (message->pid == pid && message->has("READY")) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // interleave sensibly with the apps' stderr
  const options o = parse_args(argc, argv);
  auto where = handoff::parse_address(o.listen);
  if (!where) die(where.error().message());
  const std::string name = where->name.empty() ? "http" : where->name;
  auto listener = handoff::open_listener(*where);
  if (!listener) die(listener.error().message());
  const auto port = handoff::local_address(listener->get())->port;
  auto notify = handoff::notify_receiver::open_unique();
  if (!notify) die(notify.error().message());
  std::printf("socket %s opened once, as fd %d; notify socket %s\n",
              handoff::local_address(listener->get())->to_string().c_str(), listener->get(),
              notify->address().c_str());

  pid_t current = start_generation(o, listener->get(), name, *notify, 1);
  if (!wait_ready(*notify, current, std::chrono::seconds(30)))
    die("generation 1 never became ready");
  std::printf("generation 1: pid %d ready\n", current);

  tally seen;
  std::atomic<bool> stop{false};
  std::atomic<long> requests{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < o.clients; ++i) {
    clients.emplace_back([&] {
      while (!stop) {
        std::string answer;
        const std::string failure = one_request(port, answer);
        ++requests;
        if (failure.empty())
          seen.add(seen.answers, answer);
        else
          seen.add(seen.failures, failure);
      }
    });
  }

  for (int generation = 2; generation <= o.generations; ++generation) {
    // Let each generation serve some traffic before it is replaced.
    const long target = requests + 300;
    while (requests < target) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto started = clock_type::now();
    const pid_t next = start_generation(o, listener->get(), name, *notify, generation);
    if (!wait_ready(*notify, next, std::chrono::seconds(30))) {
      std::printf("generation %d: pid %d not ready; killing it, pid %d keeps serving\n", generation,
                  next, current);
      ::kill(-next, SIGKILL);
      (void)handoff::wait_exit(next);
      continue;
    }
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
    std::printf("generation %d: pid %d ready after %lld ms; SIGTERM to pid %d\n", generation, next,
                static_cast<long long>(ms.count()), current);
    ::kill(current, SIGTERM);
    auto status = handoff::wait_exit(current, std::chrono::seconds(10));
    std::printf("  pid %d %s\n", current,
                status ? status->describe().c_str() : status.error().message().c_str());
    current = next;
  }

  stop = true;
  for (auto& t : clients) t.join();
  ::kill(current, SIGTERM);
  (void)handoff::wait_exit(current, std::chrono::seconds(10));

  long failed = 0;
  for (const auto& [what, n] : seen.failures) failed += n;
  std::printf("\n%ld requests, each on a new connection; %ld failed\n", requests.load(), failed);
  for (const auto& [answer, n] : seen.answers) std::printf("  %6ld  %s\n", n, answer.c_str());
  for (const auto& [what, n] : seen.failures) std::printf("  %6ld  FAILED: %s\n", n, what.c_str());
  return failed == 0 ? 0 : 1;
}
