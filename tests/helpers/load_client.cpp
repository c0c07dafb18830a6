// load_client: continuous HTTP load for shell-driven tests (tests/systemd): keep-alive and
// new-connection-per-request clients against 127.0.0.1:PORT until SIGTERM, never retrying.
// Prints "load: N ok, M failed" and the failures by class; exits 0 only when none failed
// and at least one request succeeded.
//   load_client PORT
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "http/raw_client.hpp"

int main(int argc, char** argv) {
  using handoff::test::outcome;
  using handoff::test::raw_connection;
  if (argc != 2) return 2;
  const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigaddset(&term, SIGINT);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);

  std::atomic<bool> stop{false};
  std::atomic<long> ok{0};
  std::mutex mutex;
  std::map<std::string, long> failures;
  auto record = [&](const char* kind, const handoff::test::reply& r) {
    if (r.result == outcome::ok && r.status == 200) {
      ++ok;
      return;
    }
    std::lock_guard lock(mutex);
    ++failures[std::string(kind) + ": " +
               (r.result == outcome::ok ? "status " + std::to_string(r.status)
                                        : std::string(to_string(r.result)))];
  };
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&] {
      raw_connection c;
      while (!stop) {
        if (!c.valid()) c = raw_connection(port);
        auto r = c.get("/", std::chrono::seconds(10));
        record("keepalive", r);
        if (r.result != outcome::ok || r.close) c.close();
      }
    });
    clients.emplace_back([&] {
      while (!stop) {
        raw_connection c(port);
        record("close", c.get("/", std::chrono::seconds(10), true));
      }
    });
  }
  int sig = 0;
  sigwait(&term, &sig);
  stop = true;
  for (auto& t : clients) t.join();
  long failed = 0;
  for (const auto& [what, n] : failures) failed += n;
  std::printf("load: %ld ok, %ld failed\n", ok.load(), failed);
  for (const auto& [what, n] : failures) std::printf("  %ld %s\n", n, what.c_str());
  return failed == 0 && ok > 0 ? 0 : 1;
}
