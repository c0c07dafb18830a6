#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <cstdio>
#include <future>
#include <string>
#include <system_error>

#include "connection.hpp"
#include "handoff/http/tls_context.hpp"
#include "handoff/socket_info.hpp"

namespace handoff::http {

using asio::redirect_error;
using asio::use_awaitable;
using boost::system::error_code;

const char* to_string(server_state state) noexcept {
  switch (state) {
    case server_state::starting:
      return "starting";
    case server_state::ready:
      return "ready";
    case server_state::draining:
      return "draining";
    case server_state::stopped:
      return "stopped";
  }
  return "unknown";
}

namespace {

server_options normalized(server_options o) {
  if (o.threads == 0) o.threads = std::max(1u, std::thread::hardware_concurrency());
  if (o.max_connections == 0) o.max_connections = 1;
  return o;
}

}  // namespace

// The concurrency hint tells Asio how many threads run a context: each is run by one thread,
// and with one its scheduler skips the wake-ups that several threads need.
server::impl::impl(server_options o, handler h)
    : options(normalized(o)),
      on_request(std::move(h)),
      counters(std::make_unique<thread_counters[]>(options.threads)) {
  for (unsigned i = 0; i < options.threads; ++i)
    ios.push_back(std::make_unique<asio::io_context>(1));
}

asio::awaitable<void> server::impl::accept(accept_loop& loop) {
  // drain() waits for every loop to end: an accept that the kernel completed just as accepting
  // stopped is delivered after the close, and its connection must be registered (and served)
  // before drain() looks for the last connection; else the stopped io_context would destroy the
  // accepted socket with the client's request unread, which resets it.
  struct running_guard {
    server::impl& srv;
    ~running_guard() {
      {
        std::lock_guard lock(srv.mutex);
        --srv.accept_loops_running;
      }
      srv.changed.notify_all();
    }
  } running{*this};
  auto backoff = options.accept_backoff_min;
  while (!loop.stopped) {
    // Every failure backs off, growing and bounded: an error that repeats at once (EMFILE,
    // ENFILE, EINVAL once another holder shut the socket down, ENOTSOCK) would otherwise spin
    // a core. Only drain() ends the loop; a failure, however persistent, is reported and waited
    // out, since fds free up and a holder may listen() again.
    std::string failure;
    try {
      // A slot is reserved before accepting, so that several accept loops together never take
      // more than max_connections. At the limit, new connections stay in the kernel's queue
      // (they wait, they are not refused); connection_closed() wakes this timer.
      if (slots.fetch_add(1) >= options.max_connections) {
        slots.fetch_sub(1);
        loop.throttle.expires_after(std::chrono::seconds(1));
        error_code ignored;
        co_await loop.throttle.async_wait(redirect_error(use_awaitable, ignored));
        continue;
      }
      // accept4 rather than Asio's accept(2): the connection is born close-on-exec (a child
      // the app starts, with popen(3) say, must not hold its clients' connections open) and
      // non-blocking (as the connection wants it). The listener is non-blocking (start()), so
      // a connection another loop took first means EAGAIN here, then a wait.
      error_code ec;
      int fd = -1;
      for (;;) {
        fd = ::accept4(loop.acceptor.native_handle(), nullptr, nullptr,
                       SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) break;
        ec = error_code(errno, asio::error::get_system_category());
        if (ec != asio::error::would_block && ec != asio::error::try_again) break;
        if (loop.stopped) break;
        co_await loop.acceptor.async_wait(asio::socket_base::wait_read,
                                          redirect_error(use_awaitable, ec));
        if (ec) break;
      }
      // A connection accepted just as accepting stopped is still served below: it is ours now,
      // and dropping it would reset a client that did nothing wrong.
      if (ec && loop.stopped) {
        slots.fetch_sub(1);
        break;
      }
      if (ec) {
        slots.fetch_sub(1);
        // ECONNABORTED and the like: that client is gone, the next one waits; no back-off.
        if (ec == asio::error::connection_aborted || ec == asio::error::connection_reset ||
            ec == asio::error::interrupted || ec == asio::error::would_block ||
            ec == asio::error::try_again)
          continue;
        report_once("accept " + loop.where + ": " + ec.message(),
                    "accept " + loop.where + ": " + ec.message() + " (retrying with back-off)");
        failure = ec.message();
      } else {
        backoff = options.accept_backoff_min;
        unique_fd accepted(fd);
        auto conn = make_connection(*this, loop.executor, accepted.get(), loop.protocol, loop.tls,
                                    loop.tcp && !loop.nodelay_inherited);
        (void)accepted.release();  // the connection's now
        conn->counters = loop.counters;
        bump(loop.counters->connections_accepted);
        connection_opened(conn.get());
        auto executor = conn->executor();
        // The completion handler keeps the connection: its `cancel` holds the coroutine's
        // cancellation state, which Asio uses until the coroutine's thread has ended, after
        // run()'s frame (a connection served without a single suspension ends with a post).
        asio::co_spawn(executor, conn->run(),
                       asio::bind_cancellation_slot(conn->cancel.slot(),
                                                    [conn](const std::exception_ptr&) {}));
        // The connection ran until its first wait (often to its end). Before the next accept,
        // the rest of the thread's work gets its turn: clients that reconnect at once would
        // otherwise keep this loop from ever yielding, and every waiting connection with it.
        co_await asio::post(loop.executor, use_awaitable);
        continue;
      }
    } catch (const std::exception& e) {
      // Out of memory or threads for this one connection: the loop must outlive it.
      report_once(std::string("accept exception ") + e.what(),
                  "accept " + loop.where + ": " + e.what() + " (retrying with back-off)");
      failure = e.what();
    }
    if (loop.stopped) break;
    loop.throttle.expires_after(backoff);
    error_code ignored;
    co_await loop.throttle.async_wait(redirect_error(use_awaitable, ignored));
    backoff = std::min(backoff * 2, options.accept_backoff_max);
  }
}

void server::impl::report_once(const std::string& kind, const std::string& message) {
  {
    std::lock_guard lock(reported_mutex);
    if (std::find(reported.begin(), reported.end(), kind) != reported.end()) return;
    reported.push_back(kind);
  }
  if (options.log) {
    options.log(message);
  } else {
    std::fprintf(stderr, "handoff::http: %s\n", message.c_str());
  }
}

// The io_contexts go first, while the list and its mutex still exist: a connection they
// destroy (its coroutine never ended) unlinks itself. Then the accept loops' sockets, whose
// io_contexts must outlive them, are already gone.
server::impl::~impl() {
  accept_loops.clear();
  work.clear();
  ios.clear();
}

void server::impl::connection_opened(connection* c) {
  {
    std::lock_guard lock(mutex);
    c->live_next = live;
    if (live != nullptr) live->live_prev = c;
    live = c;
    c->linked = true;
  }
  open_connections.fetch_add(1);
}

void server::impl::unlink(connection* c) {
  std::lock_guard lock(mutex);
  if (!c->linked) return;
  if (c->live_prev != nullptr) c->live_prev->live_next = c->live_next;
  if (c->live_next != nullptr) c->live_next->live_prev = c->live_prev;
  if (live == c) live = c->live_next;
  c->live_prev = c->live_next = nullptr;
  c->linked = false;
}

void server::impl::connection_closed(connection* c) {
  unlink(c);
  open_connections.fetch_sub(1);
  if (slots.fetch_sub(1) >= options.max_connections) {
    for (auto& loop : accept_loops)
      asio::post(loop->executor, [l = loop.get()] { l->throttle.cancel(); });
  }
  changed.notify_all();
}

std::vector<std::shared_ptr<connection>> server::impl::live_connections() {
  std::vector<std::shared_ptr<connection>> conns;
  for (connection* c = live; c != nullptr; c = c->live_next)
    if (auto owned = c->weak_from_this().lock()) conns.push_back(std::move(owned));
  return conns;
}

server::server(server_options options, handler on_request)
    : impl_(std::make_shared<impl>(options, std::move(on_request))) {}

server::~server() {
  const auto s = impl_->state.load();
  if (s != server_state::ready && s != server_state::draining) return;
  try {
    (void)drain(milliseconds(0));
  } catch (...) {
    // Out of memory or threads while tearing down: nothing left to do but stop.
    for (auto& io : impl_->ios) io->stop();
    for (auto& t : impl_->threads) t.join();
  }
}

void server::add_listener(unique_fd fd) { impl_->listeners.push_back({std::move(fd), nullptr}); }

void server::add_listener(unique_fd fd, const tls_config& tls) {
  // Throws, naming the file, before anything changes.
  auto context = make_tls_context(tls, [weak = std::weak_ptr<impl>(impl_)](const std::string& m) {
    if (auto s = weak.lock()) s->report_once(m, m);
  });
  impl_->listeners.push_back({std::move(fd), std::move(context)});
}

void server::start() {
  auto& s = *impl_;
  // One accept loop per thread and listener, each on its own dup of the fd and on its thread's
  // io_context, so that accepting scales with the threads (new-connection-per-request clients)
  // and each connection is served by the thread that accepted it.
  for (auto& [fd, tls] : s.listeners) {
    sockaddr_storage local{};
    socklen_t length = sizeof local;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &length) != 0)
      throw std::system_error(errno, std::system_category(),
                              "listener fd " + std::to_string(fd.get()) + ": getsockname");
    const asio::generic::stream_protocol protocol(local.ss_family,
                                                  local.ss_family == AF_UNIX ? 0 : IPPROTO_TCP);
    auto where = local_address(fd.get());
    // Small responses must leave at once, not wait for Nagle's algorithm to batch them. Linux
    // gives an accepted connection the listener's TCP_NODELAY: set here once, it spares each
    // connection a setsockopt(2) (the other holders of the socket, generations of this same
    // server, get it too; it changes no behaviour of listening).
    const int one = 1;
    const bool nodelay_inherited =
        local.ss_family != AF_UNIX &&
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
    // Best effort, as TCP_NODELAY: without it connections are accepted at once, as before.
    const int defer = static_cast<int>(s.options.defer_accept.count());
    int current = 0;
    socklen_t current_length = sizeof current;
    if (local.ss_family != AF_UNIX && defer > 0 &&
        ::getsockopt(fd.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, &current, &current_length) == 0 &&
        current == 0)
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer);
    for (unsigned i = 0; i < s.options.threads; ++i) {
      auto copy = fd.duplicate();
      if (!copy) throw std::runtime_error(copy.error().message());
      auto loop = std::make_unique<impl::accept_loop>(*s.ios[i]);
      loop->where = where ? where->to_string() : "fd " + std::to_string(fd.get());
      loop->acceptor.assign(protocol, copy->release());
      loop->protocol = protocol;
      // accept() needs it (Asio's own async accept would set it on its first wait anyway; it
      // is the open file's flag, shared with every copy of the socket, as it was then).
      error_code ignored;
      loop->acceptor.native_non_blocking(true, ignored);
      loop->tls = tls;
      loop->tcp = local.ss_family != AF_UNIX;
      loop->nodelay_inherited = nodelay_inherited;
      loop->counters = &s.counters[i];
      s.accept_loops.push_back(std::move(loop));
    }
  }
  s.listeners.clear();  // the loops hold their own copies
  for (auto& io : s.ios) s.work.push_back(asio::make_work_guard(io->get_executor()));
  s.accept_loops_running = s.accept_loops.size();
  for (auto& loop : s.accept_loops) {
    // accept() catches what it can; whatever still escapes (it should be nothing) is said, not
    // dropped as asio::detached would.
    asio::co_spawn(
        loop->executor, s.accept(*loop), [&s, where = loop->where](const std::exception_ptr& e) {
          if (!e) return;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& x) {
            s.report_once("accept loop ended", "accept loop on " + where + " ended: " + x.what());
          } catch (...) {
            s.report_once("accept loop ended", "accept loop on " + where + " ended");
          }
        });
  }
  s.state = server_state::ready;
  for (auto& io : s.ios) s.threads.emplace_back([io = io.get()] { io->run(); });
}

server_state server::state() const noexcept { return impl_->state.load(); }
std::size_t server::connections() const noexcept { return impl_->open_connections.load(); }
std::size_t server::requests_in_flight() const noexcept { return impl_->in_flight.load(); }

server_stats server::stats() const noexcept {
  const auto& s = *impl_;
  server_stats out;
  constexpr auto relaxed = std::memory_order_relaxed;
  for (unsigned i = 0; i < s.options.threads; ++i) {
    const thread_counters& c = s.counters[i];
    out.connections_accepted += c.connections_accepted.load(relaxed);
    out.requests += c.requests.load(relaxed);
    out.bad_requests += c.bad_requests.load(relaxed);
    out.payload_too_large += c.payload_too_large.load(relaxed);
    out.header_fields_too_large += c.header_fields_too_large.load(relaxed);
    out.handler_exceptions += c.handler_exceptions.load(relaxed);
    out.timeouts += c.timeouts.load(relaxed);
    out.tls_handshake_failures += c.tls_handshake_failures.load(relaxed);
    out.idle_closed += c.idle_closed.load(relaxed);
    out.drain_closed_after_response += c.drain_closed_after_response.load(relaxed);
    out.drain_closed_idle += c.drain_closed_idle.load(relaxed);
  }
  out.connections_open = s.open_connections.load(relaxed);
  out.requests_in_flight = s.in_flight.load(relaxed);
  out.draining = s.draining();
  out.drain_aborted_connections = s.drain_aborted_connections.load(relaxed);
  out.drain_aborted_requests = s.drain_aborted_requests.load(relaxed);
  return out;
}

drain_report server::drain(milliseconds timeout) {
  auto& s = *impl_;
  drain_report report;
  auto expected = server_state::ready;
  if (!s.state.compare_exchange_strong(expected, server_state::draining)) return report;
  // Health says 503 from now on; keep accepting for the delay so that load balancers stop
  // sending before the door closes (the delay is the feature, not a stand-in for an event).
  if (s.options.health_delay.count() > 0) std::this_thread::sleep_for(s.options.health_delay);
  s.drain_deadline = (clock_type::now() + timeout).time_since_epoch().count();

  // Stop accepting. Closing our copies leaves the socket itself open for every other holder;
  // never shutdown(2) it, which would stop them too.
  std::vector<std::future<void>> stopped;
  for (auto& loop : s.accept_loops) {
    stopped.push_back(asio::post(loop->executor, asio::use_future([l = loop.get()] {
                                   l->stopped = true;
                                   error_code ignored;
                                   l->acceptor.close(ignored);
                                   l->throttle.cancel();
                                 })));
  }
  for (auto& f : stopped) f.wait();
  {
    std::unique_lock lock(s.mutex);
    s.changed.wait_until(lock, s.deadline(), [&] { return s.accept_loops_running == 0; });
  }

  // Tell every connection; from now on none is added.
  std::vector<std::shared_ptr<connection>> conns;
  {
    std::lock_guard lock(s.mutex);
    conns = s.live_connections();
  }
  report.connections_at_start = conns.size();
  for (auto& c : conns) asio::post(c->executor(), [c] { c->on_drain(); });
  conns.clear();

  {
    std::unique_lock lock(s.mutex);
    s.changed.wait_until(lock, s.deadline(), [&] { return s.live == nullptr; });
    conns = s.live_connections();
  }
  report.connections_aborted = conns.size();
  report.requests_aborted = s.in_flight.load();
  s.drain_aborted_connections = report.connections_aborted;
  s.drain_aborted_requests = report.requests_aborted;
  for (auto& c : conns) asio::post(c->executor(), [c] { c->abort(); });
  conns.clear();
  {
    std::unique_lock lock(s.mutex);
    // Aborted connections end at their next suspension point; a handler that ignores
    // cancellation is waited for only this long more.
    s.changed.wait_for(lock, std::chrono::seconds(5), [&] { return s.live == nullptr; });
  }
  report.requests_completed = s.completed_while_draining.load();
  s.state = server_state::stopped;
  s.work.clear();
  for (auto& io : s.ios) io->stop();
  for (auto& t : s.threads) t.join();
  s.threads.clear();
  return report;
}

}  // namespace handoff::http
