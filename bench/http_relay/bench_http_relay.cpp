// Micro-benchmark of the HTTP relay alone: keep-alive clients send small GETs to an in-process
// upstream, once directly and once through the relay (on its own thread, as the front runs
// it), and the command prints requests/s and latency percentiles of both, and what the relay
// adds. Usage: bench_http_relay [connections=50] [seconds=3]. Numbers go in docs/benchmarks.md
// with the machine they were taken on; they are never asserted.
#include <algorithm>
#include <atomic>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "proxy/relay_harness.hpp"

namespace {

using namespace handoff::proxy;
using namespace handoff::proxy::test;
using clock_type = std::chrono::steady_clock;

constexpr std::string_view response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// The upstream: answers every request with the same small response.
asio::awaitable<void> serve(tcp::socket s) {
  std::string in;
  boost::system::error_code ec;
  for (;;) {
    const auto n = co_await asio::async_read_until(s, asio::dynamic_buffer(in), "\r\n\r\n",
                                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    in.erase(0, n);
    co_await asio::async_write(s, asio::buffer(response.data(), response.size()),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
  }
}

asio::awaitable<void> accept_all(tcp::acceptor& acceptor) {
  for (;;) {
    boost::system::error_code ec;
    auto s = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    s.set_option(tcp::no_delay(true));
    asio::co_spawn(acceptor.get_executor(), serve(std::move(s)), asio::detached);
  }
}

struct load_result {
  std::vector<double> latencies_us;
  std::uint64_t failed = 0;
};

asio::awaitable<void> client(std::uint16_t port, clock_type::time_point end, load_result& r) {
  auto ex = co_await asio::this_coro::executor;
  tcp::socket s(ex);
  boost::system::error_code ec;
  co_await s.async_connect({asio::ip::address_v4::loopback(), port},
                           asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    ++r.failed;
    co_return;
  }
  s.set_option(tcp::no_delay(true));
  const std::string request = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
  std::string in;
  while (clock_type::now() < end) {
    const auto start = clock_type::now();
    co_await asio::async_write(s, asio::buffer(request),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    const auto n = co_await asio::async_read_until(s, asio::dynamic_buffer(in), "ok",
                                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    in.erase(0, n);
    r.latencies_us.push_back(
        std::chrono::duration<double, std::micro>(clock_type::now() - start).count());
  }
  if (ec) ++r.failed;
}

load_result run_load(std::uint16_t port, int connections, int seconds) {
  asio::io_context ioc(1);
  load_result r;
  const auto end = clock_type::now() + std::chrono::seconds(seconds);
  for (int i = 0; i < connections; ++i) asio::co_spawn(ioc, client(port, end, r), asio::detached);
  ioc.run();
  std::sort(r.latencies_us.begin(), r.latencies_us.end());
  return r;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  const int connections = argc > 1 ? std::atoi(argv[1]) : 50;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 3;
  relay_harness h;
  h.start();
  // The upstream takes over the harness's listening socket, on a thread of its own.
  asio::io_context upstream_ioc(1);
  tcp::acceptor acceptor(upstream_ioc, tcp::v4(), ::dup(h.upstream_listener()));
  asio::co_spawn(upstream_ioc, accept_all(acceptor), asio::detached);
  std::thread upstream([&] { upstream_ioc.run(); });
  const auto upstream_port = acceptor.local_endpoint().port();

  std::printf("%d keep-alive connections, %d s each\n", connections, seconds);
  std::printf("%-8s %12s %10s %10s %8s\n", "path", "requests/s", "p50 us", "p99 us", "failed");
  double p50[2] = {0, 0};
  for (int relayed = 0; relayed < 2; ++relayed) {
    const auto r = run_load(relayed ? h.front_port() : upstream_port, connections, seconds);
    p50[relayed] = percentile(r.latencies_us, 0.5);
    std::printf("%-8s %12.0f %10.1f %10.1f %8llu\n", relayed ? "relay" : "direct",
                static_cast<double>(r.latencies_us.size()) / seconds, p50[relayed],
                percentile(r.latencies_us, 0.99), static_cast<unsigned long long>(r.failed));
  }
  std::printf("p50 added by the relay: %.1f us\n", p50[1] - p50[0]);
  upstream_ioc.stop();
  upstream.join();
  h.stop();
  return 0;
}
