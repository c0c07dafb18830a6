// example_server: the HTTP server a user would copy, on handoff::http.
//
// Sockets: without --listen, every listening stream socket a manager passes by the systemd
// protocol (systemd, `handoff run`, an upgrading parent), or 127.0.0.1:8080 when none is passed;
// with --listen, each address's inherited socket (by name or address), else a new one. The log
// says which sockets were inherited, which were opened, and which inherited ones are closed.
// READY=1 once serving; SIGTERM or SIGINT drains (see handoff/http/server.hpp) and reports what the
// drain did. SIGHUP upgrades in place: the binary on disk is started with the sockets, and once it
// is ready this process drains (see handoff/upgrader.hpp); if the new one fails, this one keeps
// serving.
//
// TLS: the socket named `https` (--listen https=ADDR, or an inherited socket of that name) is
// served over TLS with --tls-cert and --tls-key, the others in plaintext. The files are read at
// start, so a new generation (SIGHUP, `handoff reload`) picks up a renewed certificate; one it
// cannot use fails that generation's start, and the old one keeps serving. Session tickets are
// encrypted with the keys inherited as handoff-tls-keys, or made here and handed on by the
// upgrader (handoff/ticket_keys.hpp): a client resumes its session in the next generation.
//
//   GET  /                 "hello from pid N version V"   (and X-Served-By: N)
//   GET  /realistic        what a small API answer looks like, for bench/http_peers: five header
//                          fields (Content-Type, Cache-Control, X-Content-Type-Options,
//                          X-Frame-Options, Vary) and a 1 KiB body, 32 lines "row NN a..x"; the
//                          bench's nginx and Go peers serve the same bytes
//   GET  /health           200 "ready", 503 "draining"
//   GET  /metrics          the server's counters (server::stats()) in the Prometheus text format
//   GET  /slow?ms=N        answers after N ms; cancelled at the drain deadline
//   GET  /stream?seconds=N a chunked response, a line every 100 ms for N seconds
//   POST /echo             the request body back
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "handoff/decimal.hpp"
#include "handoff/duration.hpp"
#include "handoff/http/server.hpp"
#include "handoff/upgrader.hpp"

// Which build this is: tests build a second binary with another value and replace the file
// between upgrades, to see the new version answer (X-Build).
#ifndef EXAMPLE_BUILD
#define EXAMPLE_BUILD "1"
#endif

namespace {

namespace http = handoff::http;
namespace bhttp = boost::beast::http;
using namespace std::chrono_literals;

// The value of `key` in a query string such as "ms=100&x=1", as a number within [0, max].
std::optional<long> query_number(std::string_view target, std::string_view key, long max) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    if (pair.substr(0, key.size()) == key && pair.size() > key.size() && pair[key.size()] == '=') {
      const std::string_view value = pair.substr(key.size() + 1);
      return handoff::parse_decimal<long>(value, 0, max);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

// getpid() is a system call (glibc no longer caches it): ask once.
const std::string& pid_text() {
  static const std::string text = std::to_string(::getpid());
  return text;
}

http::response text(bhttp::status status, unsigned version, std::string_view body) {
  http::response res{status, version};
  res.set(bhttp::field::content_type, "text/plain");
  res.set("X-Served-By", pid_text());
  res.set("X-Build", EXAMPLE_BUILD);
  res.body() = body;  // copied into a recycled block (see http::body_string): no allocation
  return res;
}

// 32 lines of 32 bytes: "row 00 abcdefghijklmnopqrstuvwx\n" ... "row 31 ...".
std::string realistic_body() {
  std::string body;
  for (int row = 0; row < 32; ++row)
    body += fmt::format("row {:02} abcdefghijklmnopqrstuvwx\n", row);
  return body;
}

// A response that is ready: the coroutine a plain answer needs, with a frame of one response.
boost::asio::awaitable<http::response> ready(http::response res) { co_return res; }

struct app {
  std::string version;
  std::string hello = fmt::format("hello from pid {} version {}\n", ::getpid(), version);
  std::string realistic = realistic_body();
  const http::server* server = nullptr;

  // Not a coroutine itself: it picks one. Asio recycles coroutine frames up to about 1 KiB, and
  // one coroutine holding the locals of every route (timers, several responses) would be larger
  // and cost a malloc per request; so each route that waits is a coroutine of its own, and the
  // others answer through ready().
  boost::asio::awaitable<http::response> operator()(http::request_context& ctx) const {
    const auto& req = ctx.req();
    const std::string_view target = req.target();
    const std::string_view path = target.substr(0, target.find('?'));
    const unsigned v = req.version();
    if (path == "/" && req.method() == bhttp::verb::get) {
      return ready(text(bhttp::status::ok, v, hello));
    }
    if (path == "/realistic" && req.method() == bhttp::verb::get) {
      http::response res{bhttp::status::ok, v};
      res.set(bhttp::field::content_type, "text/plain; charset=utf-8");
      res.set(bhttp::field::cache_control, "private, max-age=60");
      res.set("X-Content-Type-Options", "nosniff");
      res.set("X-Frame-Options", "DENY");
      res.set(bhttp::field::vary, "Accept-Encoding");
      res.body() = realistic;  // a copy into a recycled block, as for the others
      return ready(std::move(res));
    }
    if (path == "/metrics" && req.method() == bhttp::verb::get) {
      std::string body;
      http::write_prometheus(body, server->stats());
      http::response res{bhttp::status::ok, v};
      res.set(bhttp::field::content_type, http::prometheus_content_type);
      res.body() = std::move(body);
      return ready(std::move(res));
    }
    if (path == "/health") {
      if (server->ready()) return ready(text(bhttp::status::ok, v, "ready\n"));
      return ready(text(bhttp::status::service_unavailable, v, "draining\n"));
    }
    if (path == "/slow") return slow(ctx);
    if (path == "/stream") return stream(ctx);
    if (path == "/echo" && req.method() == bhttp::verb::post) {
      auto res = text(bhttp::status::ok, v, req.body());
      const std::string_view type = req[bhttp::field::content_type];
      res.set(bhttp::field::content_type, type.empty() ? "application/octet-stream" : type);
      return ready(std::move(res));
    }
    return ready(text(bhttp::status::not_found, v, "not found\n"));
  }

  static boost::asio::awaitable<http::response> slow(http::request_context& ctx) {
    const unsigned v = ctx.req().version();
    const auto ms = query_number(ctx.req().target(), "ms", 600'000);
    if (!ms) co_return text(bhttp::status::bad_request, v, "usage: /slow?ms=0..600000\n");
    // Cancelled (operation_aborted, thrown) when the drain deadline passes.
    boost::asio::steady_timer timer(ctx.executor(), std::chrono::milliseconds(*ms));
    co_await timer.async_wait(boost::asio::use_awaitable);
    co_return text(bhttp::status::ok, v, fmt::format("slept {} ms\n", *ms));
  }

  static boost::asio::awaitable<http::response> stream(http::request_context& ctx) {
    const unsigned v = ctx.req().version();
    const auto seconds = query_number(ctx.req().target(), "seconds", 3600);
    if (!seconds) co_return text(bhttp::status::bad_request, v, "usage: /stream?seconds=N\n");
    http::response_header header;
    header.result(bhttp::status::ok);
    header.version(v);
    header.set(bhttp::field::content_type, "text/plain");
    co_await ctx.send_header(std::move(header));
    boost::asio::steady_timer timer(ctx.executor());
    for (long tick = 0; tick < *seconds * 10; ++tick) {
      co_await ctx.send_chunk(fmt::format("tick {} from pid {}\n", tick, pid_text()));
      timer.expires_after(100ms);
      co_await timer.async_wait(boost::asio::use_awaitable);
    }
    co_return http::response{};
  }
};

std::chrono::milliseconds duration_option(const std::string& text, const char* what) {
  auto d = handoff::parse_duration(text);
  if (!d) throw CLI::ValidationError(what, d.error().message());
  return *d;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"example_server: an HTTP server that hands over without failing a request"};
  std::vector<std::string> listen{"http=127.0.0.1:8080"};
  std::string version = "1", drain_timeout = "30s", health_delay = "0", start_delay = "0";
  unsigned threads = 0, max_draining = 2, defer_accept = 1;
  std::string upgrade_timeout = "60s", pid_file;
  http::tls_config tls;
  cli.add_option("-l,--listen", listen,
                 "[NAME=]ADDRESS to serve: the inherited socket of that name or address, else a "
                 "new one (default: every inherited socket, or http=127.0.0.1:8080 when none)");
  cli.add_option("--version", version, "version text in the answers");
  cli.add_option("--threads", threads, "threads (0: one per core)");
  cli.add_option("--defer-accept", defer_accept,
                 "seconds a TCP connection may stay silent before it is accepted all the same "
                 "(TCP_DEFER_ACCEPT; 0: accept at once)");
  cli.add_option("--drain-timeout", drain_timeout, "drain deadline after SIGTERM, e.g. 30s");
  cli.add_option("--health-delay", health_delay, "503 on /health this long before draining");
  cli.add_option("--start-delay", start_delay, "pretend start-up work before READY=1");
  cli.add_option("--upgrade-timeout", upgrade_timeout, "how long a new version may take to start");
  cli.add_option("--max-draining", max_draining, "older generations allowed to still drain");
  cli.add_option("--pid-file", pid_file, "keep the pid of the serving generation here");
  cli.add_option("--tls-cert", tls.certificate_chain_file,
                 "PEM certificate chain for the socket named https");
  cli.add_option("--tls-key", tls.private_key_file, "PEM private key for the socket named https");
  CLI11_PARSE(cli, argc, argv);

  try {
    http::server_options options;
    options.threads = threads;
    options.defer_accept = std::chrono::seconds(defer_accept);
    options.health_delay = duration_option(health_delay, "--health-delay");
    const auto drain_deadline = duration_option(drain_timeout, "--drain-timeout");
    const auto startup = duration_option(start_delay, "--start-delay");

    // Signals go to serve_signals() below, never to a handler: block them before any thread
    // starts, so that every thread inherits the mask.
    handoff::upgrader::block_signals();
    handoff::upgrader_options upgrade_options;
    upgrade_options.ready_timeout = duration_option(upgrade_timeout, "--upgrade-timeout");
    upgrade_options.max_draining = max_draining;
    if (!pid_file.empty()) upgrade_options.pid_file = pid_file;
    auto up = handoff::upgrader::create(upgrade_options).value();
    const auto& given = up.sockets().sockets();

    app handler{version};
    http::server server(options, std::ref(handler));
    handler.server = &server;
    // What this process serves, and where each socket came from, said as it is: a socket that
    // is served but was not inherited, or inherited but not served, must not go unnoticed.
    std::string where;
    const bool tls_given = !tls.certificate_chain_file.empty() || !tls.private_key_file.empty();
    if (tls_given) {
      // Session tickets every generation can open: the keys inherited as handoff-tls-keys
      // (from `handoff run --tls-ticket-keys`, systemd's fd store or the previous generation),
      // else new ones that this process hands to its successors.
      if (auto keys = up.hold_ticket_keys())
        tls.session_ticket_keys_fd = *keys;
      else
        fmt::print(stderr, "example_server: {}; sessions will not resume after an upgrade\n",
                   keys.error().message());
    }
    bool served_https = false;
    auto serve = [&](int fd, const std::string& name, const char* origin) {
      auto copy = handoff::duplicate_fd(fd).value();  // the upgrader keeps its own
      const bool https = name == "https";
      if (https) {
        if (!tls_given) throw std::runtime_error("socket https needs --tls-cert and --tls-key");
        server.add_listener(std::move(copy), tls);  // throws, naming the file it cannot use
        served_https = true;
      } else {
        server.add_listener(std::move(copy));
      }
      const std::string at = handoff::local_address(fd).value().to_string();
      where += (where.empty() ? "" : " ") + at;
      fmt::print(stderr, "example_server: pid {} serving {} on {} ({}{})\n", ::getpid(), name, at,
                 origin, https ? ", TLS" : "");
    };
    if (cli.count("--listen") == 0 && !given.empty()) {
      // Started with sockets and no --listen: serve every one that can be served, whatever
      // its name, rather than open a default address beside them.
      for (const auto& s : given) {
        if (s.info.type == handoff::socket_type::stream && s.info.listening) {
          up.claim(s.fd.get());
          serve(s.fd.get(), s.name, "inherited");
        } else {
          fmt::print(stderr,
                     "example_server: pid {} not serving inherited {} ({}): not a listening stream "
                     "socket\n",
                     ::getpid(), s.name, s.info.describe());
        }
      }
      if (where.empty())
        throw std::runtime_error("none of the " + std::to_string(given.size()) +
                                 " inherited sockets is a listening stream socket");
    } else {
      std::vector<int> inherited_fds;
      for (const auto& s : given) inherited_fds.push_back(s.fd.get());
      std::vector<int> served;
      for (std::size_t i = 0; i < listen.size(); ++i) {
        // Every socket has a name, so that the next generation finds it again, even on port 0.
        auto address = handoff::parse_address(listen[i]).value();
        if (address.name.empty()) address.name = i == 0 ? "http" : "http" + std::to_string(i + 1);
        const int fd = up.listen(address.name, address.to_string()).value();
        served.push_back(fd);
        const bool was_given =
            std::find(inherited_fds.begin(), inherited_fds.end(), fd) != inherited_fds.end();
        serve(fd, address.name, was_given ? "inherited" : "opened");
      }
      for (const auto& s : given)
        if (std::find(served.begin(), served.end(), s.fd.get()) == served.end())
          fmt::print(stderr,
                     "example_server: pid {} closing inherited {} ({}): no --listen asks for it\n",
                     ::getpid(), s.name, s.info.describe());
    }
    if (tls_given && !served_https)
      throw std::runtime_error("--tls-cert and --tls-key are for a socket named https; none is");
    if (startup.count() > 0) std::this_thread::sleep_for(startup);
    server.start();
    if (auto r = up.ready("serving on " + where); !r)
      fmt::print(stderr, "example_server: {}\n", r.error().message());
    fmt::print(stderr, "example_server: pid {} version {} build {} ready\n", ::getpid(), version,
               EXAMPLE_BUILD);

    // SIGHUP: upgrade to the binary on disk; on success, drain. SIGTERM/SIGINT: drain.
    const int sig = up.serve_signals([](const handoff::error& e) {
      fmt::print(stderr, "example_server: pid {}: {}; still serving\n", ::getpid(), e.message());
    });
    if (up.exit_requested()) {
      fmt::print(stderr, "example_server: pid {} replaced by a new generation\n", ::getpid());
    } else {
      (void)up.manager().stopping("draining");
    }
    fmt::print(stderr, "example_server: pid {} draining ({})\n", ::getpid(), strsignal(sig));
    const auto report = server.drain(drain_deadline);
    fmt::print(stderr,
               "example_server: pid {} stopped: {} connections at drain, {} requests completed, "
               "{} connections and {} requests aborted at the deadline\n",
               ::getpid(), report.connections_at_start, report.requests_completed,
               report.connections_aborted, report.requests_aborted);
    return report.clean() ? 0 : 3;
  } catch (const std::exception& e) {
    fmt::print(stderr, "example_server: {}\n", e.what());
    return 1;
  }
}
