// The hand-off the HTTP server exists for: generations of example_server (real processes) on
// one listening socket, each started while the previous one serves and told to drain only once
// the new one reported READY=1, under continuous load from clients that never retry. Every
// request must succeed: keep-alive clients, new-connection-per-request clients, and slow
// requests in flight during the drains.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "handoff/listeners.hpp"
#include "handoff/notify_receiver.hpp"
#include "handoff/socket_info.hpp"
#include "handoff/spawn.hpp"
#include "raw_client.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;

struct load_result {
  std::mutex mutex;
  std::map<std::string, long> failures;  // "keepalive: reset" -> count
  std::set<std::string> served_by;
  std::atomic<long> ok{0};

  void fail(const std::string& what) {
    std::lock_guard lock(mutex);
    ++failures[what];
  }
  void served(const std::string& pid) {
    std::lock_guard lock(mutex);
    served_by.insert(pid);
  }
  // "what xN" per kind of failure, a line each.
  std::string describe_failures() {
    std::lock_guard lock(mutex);
    std::string s;
    for (const auto& [what, n] : failures) s += what + " x" + std::to_string(n) + "\n";
    return s;
  }
};

void check(load_result& load, const char* kind, const test::reply& r) {
  if (r.result != outcome::ok) {
    load.fail(std::string(kind) + ": " + to_string(r.result));
  } else if (r.status != 200) {
    load.fail(std::string(kind) + ": status " + std::to_string(r.status));
  } else {
    ++load.ok;
    load.served(r.header("x-served-by"));
  }
}

class HttpHandoff : public testing::Test {
 protected:
  void SetUp() override {
    listener_ = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(listener_.get()).value().port;
    auto n = notify_receiver::open_unique();
    ASSERT_TRUE(n) << n.error().message();
    notify_.emplace(std::move(*n));
  }
  void TearDown() override {
    for (pid_t pid : running_) {
      ::kill(pid, SIGKILL);
      (void)wait_exit(pid, 10s);
    }
  }

  // Starts a generation and waits for its READY=1; -1 if it never came. With `tls` (the
  // certificate and key files), the socket is named https and served over TLS.
  pid_t start_generation(const std::string& version,
                         std::optional<std::pair<std::string, std::string>> tls = {}) {
    spawn_options o;
    o.argv = {HANDOFF_EXAMPLE_SERVER, "--version", version, "--threads", "2",
              "--drain-timeout",      "20s"};
    o.fds = {{listener_.get(), tls ? "https" : "http"}};
    if (tls) o.argv.insert(o.argv.end(), {"--tls-cert", tls->first, "--tls-key", tls->second});
    o.notify_socket = notify_->address();
    auto pid = spawn(o);
    if (!pid) {
      ADD_FAILURE() << pid.error().message();
      return -1;
    }
    running_.insert(*pid);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto m = notify_->receive(30s);
      if (m && m->pid == *pid && m->has("READY")) return *pid;
    }
    ADD_FAILURE() << "generation " << version << " never reported READY=1";
    return -1;
  }

  // SIGTERM, then the old generation must drain and exit 0 (nothing aborted).
  void stop_generation(pid_t pid) {
    ASSERT_EQ(::kill(pid, SIGTERM), 0);
    auto status = wait_exit(pid, 30s);
    ASSERT_TRUE(status) << status.error().message();
    running_.erase(pid);
    EXPECT_TRUE(status->success()) << "pid " << pid << " " << status->describe();
  }

  void wait_for_requests(long more) {
    const long target = load_.ok + more;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (load_.ok < target && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
  }

  unique_fd listener_;
  std::uint16_t port_ = 0;
  std::optional<notify_receiver> notify_;
  std::set<pid_t> running_;
  load_result load_;
};

TEST_F(HttpHandoff, GenerationsSwapUnderLoadWithoutAFailedRequest) {
  pid_t current = start_generation("1");
  ASSERT_GT(current, 0);

  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&] {  // keep-alive: reconnects only when the server says close
      raw_connection c;
      while (!stop) {
        if (!c.valid()) c = raw_connection(port_);
        if (!c.valid()) {
          load_.fail("keepalive: connect " + std::to_string(c.error()));
          continue;
        }
        const bool reused = c.requests() > 0;
        auto r = c.get("/", 10s);
        check(load_, reused ? "keepalive (reused)" : "keepalive (new)", r);
        if (r.result != outcome::ok || r.close) c.close();
      }
    });
    clients.emplace_back([&] {  // a new connection per request
      while (!stop) {
        raw_connection c(port_);
        if (!c.valid()) {
          load_.fail("close: connect " + std::to_string(c.error()));
          continue;
        }
        check(load_, "close", c.get("/", 10s, /*close=*/true));
      }
    });
  }
  clients.emplace_back([&] {  // slow requests, so that every drain has some in flight
    raw_connection c;
    while (!stop) {
      if (!c.valid()) c = raw_connection(port_);
      auto r = c.get("/slow?ms=300", 10s);
      check(load_, "slow", r);
      if (r.result != outcome::ok || r.close) c.close();
    }
  });

  constexpr int generations = 5;
  for (int g = 2; g <= generations; ++g) {
    wait_for_requests(300);
    const pid_t next = start_generation(std::to_string(g));
    ASSERT_GT(next, 0);
    stop_generation(current);
    current = next;
  }
  wait_for_requests(300);
  stop = true;
  for (auto& t : clients) t.join();
  stop_generation(current);

  EXPECT_TRUE(load_.failures.empty()) << load_.describe_failures();
  EXPECT_GT(load_.ok.load(), 1500);
  EXPECT_EQ(load_.served_by.size(), static_cast<std::size_t>(generations))
      << "every generation should have served";
}

// Runs `sh -c SCRIPT` (stdout and stderr together), bounded.
test::child_output shell(const std::string& script) {
  spawn_options o;
  o.argv = {"/bin/sh", "-c", "exec 2>&1; " + script};
  auto r = test::run_and_capture(o, 60s);
  EXPECT_TRUE(r) << r.error().message();
  return r ? *r : test::child_output{};
}

// The same hand-off over TLS, with curl as the client (keep-alive: many URLs on one connection;
// and a new connection per request), and the certificate rotated between generations: each
// generation reads the files again, and the clients trust both certificates.
TEST_F(HttpHandoff, GenerationsSwapOverTlsWithoutAFailedRequestAndRotateTheCertificate) {
  test::temp_dir dir;
  const std::string cert = dir / "cert.pem", key = dir / "key.pem", ca = dir / "ca.pem";
  auto make = [&](int g) {
    auto r = shell(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
        "-subj /CN=gen" +
        std::to_string(g) +
        " -addext subjectAltName=IP:127.0.0.1 "
        "-keyout '" +
        key + ".new' -out '" + cert + ".new' && cat '" + cert + ".new' >> '" + ca + "' && mv '" +
        key + ".new' '" + key + "' && mv '" + cert + ".new' '" + cert + "'");
    EXPECT_TRUE(r.status.success()) << r.out;
  };
  // The subject of the certificate a new TLS connection is served with.
  auto served_subject = [&] {
    return shell("openssl s_client -connect 127.0.0.1:" + std::to_string(port_) +
                 " </dev/null 2>/dev/null | openssl x509 -noout -subject")
        .out;
  };
  make(1);
  pid_t current = start_generation("1", std::pair{cert, key});
  ASSERT_GT(current, 0);
  EXPECT_NE(served_subject().find("CN = gen1"), std::string::npos);

  std::atomic<bool> stop{false};
  std::atomic<long> ok{0};
  std::string urls;
  for (int i = 0; i < 50; ++i)
    urls += " -o /dev/null https://127.0.0.1:" + std::to_string(port_) + "/";
  auto client = [&](const char* kind, const std::string& extra) {
    while (!stop) {
      // One status code per transfer; curl fails (and says why) on any transport error.
      auto r = shell("curl -sS --cacert '" + ca + "' -w '%{http_code}\n' " + extra + urls);
      if (!r.status.success()) load_.fail(std::string(kind) + ": curl: " + r.out);
      for (std::size_t at = 0; at < r.out.size(); at = r.out.find('\n', at) + 1) {
        if (r.out.compare(at, 4, "200\n") == 0) {
          ++ok;
        } else {
          load_.fail(std::string(kind) + ": " + r.out.substr(at, r.out.find('\n', at) - at));
        }
        if (r.out.find('\n', at) == std::string::npos) break;
      }
    }
  };
  std::vector<std::thread> clients;
  clients.emplace_back(client, "keepalive", "");
  clients.emplace_back(client, "close", "-H 'Connection: close'");
  auto wait_for = [&](long more) {
    const long target = ok + more;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (ok < target && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
  };

  constexpr int generations = 3;
  for (int g = 2; g <= generations; ++g) {
    wait_for(100);
    make(g);
    const pid_t next = start_generation(std::to_string(g), std::pair{cert, key});
    ASSERT_GT(next, 0);
    stop_generation(current);
    current = next;
    EXPECT_NE(served_subject().find("CN = gen" + std::to_string(g)), std::string::npos);
  }
  wait_for(100);
  stop = true;
  for (auto& t : clients) t.join();
  stop_generation(current);

  EXPECT_TRUE(load_.failures.empty()) << load_.describe_failures();
  EXPECT_GT(ok.load(), 300);
}

}  // namespace
}  // namespace handoff
