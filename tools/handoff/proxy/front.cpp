#include "proxy/front.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <future>
#include <mutex>
#include <thread>

#include "proxy/handover.hpp"
#include "proxy/tcp_relay.hpp"

namespace handoff::proxy {

using acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

struct front::impl {
  // Declared first, destroyed last: the relays' coroutine frames die with it, and they refer
  // to the router and counters below.
  asio::io_context io{1};
  front_options options;
  upstream_router router;
  relay_counters http_counters;
  tcp_counters tcp_counters_;
  std::vector<std::unique_ptr<acceptor>> acceptors;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;
  std::uint64_t accepted = 0, open_clients = 0;
  std::uint64_t limit_reached = 0, accept_failures = 0;
  // Where accept loops wait while max_connections are open: cancelled (every waiter wakes) when
  // one closes, and by pause and stop.
  asio::steady_timer room{io};
  bool stopped = false;
  // Accept loops of another epoch end (paused, then started again).
  std::uint64_t accept_epoch = 0;
  bool accept_paused = false;
  unique_fd event;
  std::mutex drained_mutex;
  std::vector<int> drained;
  // park(): the relays parked at request boundaries (handover.hpp), bounded by park_timer.
  parking_lot lot{[this] { check_parked(); }};
  asio::steady_timer park_timer{io};
  std::chrono::milliseconds park_bound{0};
  bool park_reported = false;
  std::optional<std::string> park_result;  // under drained_mutex
  front_stats before;                      // the image before's counts (add_to_counts)

  // Stops accepting: our duplicates of the public sockets only; the supervisor keeps its own
  // open (never shutdown(2): every holder would see it).
  void stop_accepting() {
    stopped = true;
    room.cancel();
    for (auto& a : acceptors) {
      boost::system::error_code ignored;
      a->close(ignored);
    }
  }

  explicit impl(front_options o)
      : options(std::move(o)),
        router(
            io.get_executor(), [this](int id) { on_drained(id); },
            pool_options{options.queue_timeout, options.upstream_idle_timeout,
                         options.upstream_max_connections}) {
    room.expires_at(asio::steady_timer::time_point::max());
  }

  void signal_event() {
    const std::uint64_t one = 1;
    (void)!::write(event.get(), &one, sizeof one);
  }

  void on_drained(int id) {
    {
      const std::lock_guard lock(drained_mutex);
      drained.push_back(id);
    }
    signal_event();
  }

  void report_park(std::string result) {
    {
      const std::lock_guard lock(drained_mutex);
      park_result = std::move(result);
    }
    signal_event();
  }

  // Every client connection parked (open_clients counts those accepted whose relay has not
  // run yet, too): no more accepting, so that none comes between this and the handover; the
  // backlog keeps the new ones for the next image.
  void check_parked() {
    if (!lot.parking() || park_reported || lot.parked() != open_clients) return;
    park_reported = true;
    pause_accepting();
    park_timer.cancel();
    report_park({});
  }

  void start_park(std::chrono::milliseconds bound) {
    park_bound = bound;
    park_reported = false;
    lot.start();
    park_timer.expires_after(bound);
    park_timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec || park_reported || !lot.parking()) return;
      park_reported = true;
      const auto busy = open_clients - lot.parked();
      lot.resume();
      report_park(std::to_string(busy) + " of " + std::to_string(open_clients) +
                  (options.mode == proxy_mode::tcp
                       ? " client connections still moving bytes after "
                       : " client connections still inside a request or a tunnel after ") +
                  std::to_string(park_bound.count()) + " ms");
    });
    check_parked();
  }

  void end_park() {
    park_timer.cancel();
    park_reported = false;
    lot.resume();
    resume_accepting();
  }

  void pause_accepting() {
    accept_paused = true;
    ++accept_epoch;
    room.cancel();
    for (auto& a : acceptors) {
      boost::system::error_code ignored;
      a->cancel(ignored);
    }
  }

  void resume_accepting() {
    if (!accept_paused || stopped) return;
    accept_paused = false;
    for (std::size_t n = 0; n < acceptors.size(); ++n)
      asio::co_spawn(io, accept_loop(n), [](const std::exception_ptr&) {});
  }

  void start_connection(stream client, std::size_t listener, std::string buffered = {},
                        bool adopted = false) {
    if (!adopted) ++accepted;  // an adopted one was counted by the image that accepted it
    spawn_relay(
        // The TLS context current at the accept: a set_tls() after it changes nothing here.
        [this, client = std::move(client), listener, tls = options.tls,
         buffered = std::move(buffered), adopted]() mutable -> asio::awaitable<void> {
          if (options.mode == proxy_mode::tcp)
            co_await relay_tcp(std::move(client), router, listener, tcp_counters_, &lot);
          else if (tls)
            co_await relay_https(std::move(client), std::move(tls), router, listener, options.relay,
                                 http_counters);
          else
            co_await relay_http(std::move(client), router, listener, options.relay, http_counters,
                                &lot, buffered, adopted);
        });
  }

  // A TCP relay of the image before (handover.hpp), its upstream connection lent again.
  void resume_connection(stream client, stream upstream, const handed_client& c,
                         std::size_t listener) {
    spawn_relay([this, client = std::move(client),
                 up = router.adopt(c.generation, listener, std::move(upstream)), listener,
                 client_done = c.client_done,
                 upstream_done = c.upstream_done]() mutable -> asio::awaitable<void> {
      co_await resume_tcp(std::move(client), std::move(up), router, listener, client_done,
                          upstream_done, &lot);
    });
  }

  template <typename Relay>
  void spawn_relay(Relay relay) {
    ++open_clients;
    asio::co_spawn(io, std::move(relay),
                   // A relay that throws (out of memory) loses its one connection, never the front.
                   [this](const std::exception_ptr&) {
                     --open_clients;
                     if (!at_limit()) room.cancel();
                     check_parked();
                   });
  }

  bool at_limit() const noexcept {
    return options.max_connections != 0 && open_clients >= options.max_connections;
  }

  asio::awaitable<void> accept_loop(std::size_t index) {
    acceptor& a = *acceptors[index];
    const auto protocol = a.local_endpoint().protocol();
    asio::steady_timer pause(io);
    boost::system::error_code ec;
    const auto epoch = accept_epoch;
    const auto running = [&] { return !stopped && epoch == accept_epoch; };
    // Accept first, wait after: the public socket may have connections queued before this
    // loop runs (a new front after a re-exec, a resumed one), and epoll is edge-triggered: the
    // edge of those was seen by the reactor before this wait existed, and no other comes until
    // the next client connects. So the loop waits only once accept4 said the queue is empty;
    // nothing runs on this front's one thread between that EAGAIN and the wait.
    while (running()) {
      if (at_limit()) {
        // The clients beyond the bound wait in the kernel's queue (its backlog) until one of
        // ours closes; then the loop accepts first, as after any wait (see below).
        ++limit_reached;
        // `room` never expires (see impl()): only a cancel ends the wait. Its expiry is never
        // set again here, since that would cancel the other listeners' waits.
        while (at_limit() && running())
          co_await room.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      bool empty = false;
      for (int taken = 0; taken < 64 && running() && !at_limit(); ++taken) {
        // accept4: the connection is born close-on-exec (the supervisor's thread forks) and
        // non-blocking (the TCP relay splices without blocking).
        const int fd = ::accept4(a.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
          start_connection(stream(io, protocol, fd), index);
          continue;
        }
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of fds or memory: the queued clients wait in the backlog until some close.
          ++accept_failures;
          pause.expires_after(accept_pause);
          co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        } else {
          empty = true;  // EAGAIN (or the socket failed: the wait below says so)
        }
        break;
      }
      if (!running()) co_return;
      if (empty) {
        co_await a.async_wait(asio::socket_base::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;  // closed by stop(), or paused
      } else {
        // 64 taken, or a pause for fds: more may be queued, and no new edge will say so.
        co_await asio::post(io, asio::use_awaitable);
      }
    }
  }
};

front::front(std::unique_ptr<impl> i) : impl_(std::move(i)) {}

result<std::unique_ptr<front>> front::start(std::vector<unique_fd> listeners,
                                            front_options options) {
  auto i = std::make_unique<impl>(std::move(options));
  i->event.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!i->event) return error::from_errno(errno, "proxy: eventfd");
  for (auto& fd : listeners) {
    sockaddr_storage local{};
    socklen_t length = sizeof local;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &length) != 0)
      return error::from_errno(errno, "proxy: getsockname of a public socket");
    // Our duplicate shares its file status with the supervisor's copy; in proxy mode no one
    // else accepts on it, and non-blocking is what accept4 after a readiness wait needs.
    const int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0)
      return error::from_errno(errno, "proxy: fcntl of a public socket");
    auto a = std::make_unique<acceptor>(i->io);
    boost::system::error_code ec;
    a->assign(asio::generic::stream_protocol(local.ss_family, 0), fd.get(), ec);
    if (ec) return error(ec, "proxy: a public socket");
    (void)fd.release();
    i->acceptors.push_back(std::move(a));
  }
  for (std::size_t n = 0; n < i->acceptors.size(); ++n)
    asio::co_spawn(i->io, i->accept_loop(n), [](const std::exception_ptr&) {});
  i->work.emplace(i->io.get_executor());
  impl* raw = i.get();
  i->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<front>(new front(std::move(i)));
}

front::~front() {
  if (!impl_) return;
  impl* i = impl_.get();
  asio::post(i->io, [i] {
    i->stop_accepting();
    i->work.reset();
    i->io.stop();
  });
  i->thread.join();
}

void front::serve(int generation, std::vector<endpoint> upstreams) {
  impl* i = impl_.get();
  asio::post(i->io, [i, generation, u = std::move(upstreams)]() mutable {
    i->router.serve(generation, std::move(u));
  });
}

void front::set_tls(std::shared_ptr<asio::ssl::context> tls) {
  impl* i = impl_.get();
  asio::post(i->io, [i, tls = std::move(tls)]() mutable { i->options.tls = std::move(tls); });
}

void front::retire(int generation) {
  impl* i = impl_.get();
  asio::post(i->io, [i, generation] { i->router.retire(generation); });
}

void front::forget(int generation) {
  impl* i = impl_.get();
  asio::post(i->io, [i, generation] { i->router.forget(generation); });
}

void front::stop() {
  impl* i = impl_.get();
  asio::post(i->io, [i] {
    i->stop_accepting();
    i->router.stop();
  });
}

front_stats front::stats(std::chrono::milliseconds timeout) const {
  impl* i = impl_.get();
  auto promise = std::make_shared<std::promise<front_stats>>();
  auto answer = promise->get_future();
  asio::post(i->io, [i, promise] {
    front_stats s;
    s.generations = i->router.stats();
    const auto& c = i->http_counters;
    if (i->options.mode == proxy_mode::tcp) {
      s.requests = i->tcp_counters_.connections;
      s.unavailable = i->tcp_counters_.unavailable;
    } else {
      s.requests = c.requests;
      s.bad_gateway = c.bad_gateway;
      s.retried = c.retried;
      s.unavailable = c.unavailable;
      s.rejected = c.bad_request + c.too_large + c.header_too_large + c.request_timeout;
      s.tunnels = c.tunnels;
      s.tls_handshake_failures = c.tls_handshake_failures;
    }
    s.client_connections = i->open_clients;
    s.accepted = i->accepted;
    s.max_connections = i->options.max_connections;
    s.limit_reached = i->limit_reached + i->before.limit_reached;
    s.accept_failures = i->accept_failures + i->before.accept_failures;
    s.connect_failures = i->router.connect_failures();
    const auto& b = i->before;
    s.requests += b.requests;
    s.bad_gateway += b.bad_gateway;
    s.unavailable += b.unavailable;
    s.rejected += b.rejected;
    s.tunnels += b.tunnels;
    s.accepted += b.accepted;
    s.connect_failures += b.connect_failures;
    s.tls_handshake_failures += b.tls_handshake_failures;
    promise->set_value(std::move(s));
  });
  if (answer.wait_for(timeout) != std::future_status::ready) return {};
  try {
    return answer.get();
  } catch (const std::future_error&) {
    return {};  // the io thread is gone: nothing to report
  }
}

void front::park(std::chrono::milliseconds bound) {
  impl* i = impl_.get();
  asio::post(i->io, [i, bound] { i->start_park(bound); });
}

std::optional<std::string> front::take_park_result() {
  const std::lock_guard lock(impl_->drained_mutex);
  return std::exchange(impl_->park_result, std::nullopt);
}

result<std::vector<handed_client>> front::hand_over(std::chrono::milliseconds timeout) {
  impl* i = impl_.get();
  auto promise = std::make_shared<std::promise<result<std::vector<handed_client>>>>();
  auto answer = promise->get_future();
  asio::post(i->io, [i, promise] {
    if (!i->lot.parking() || !i->park_reported || i->lot.parked() != i->open_clients) {
      promise->set_value(
          error::make(errc::unsupported, "proxy: the client connections are not all parked"));
      return;
    }
    auto clients = i->lot.take();
    i->park_reported = false;
    promise->set_value(std::move(clients));
  });
  if (answer.wait_for(timeout) != std::future_status::ready)
    return error::make(errc::timed_out, "proxy: the front did not hand its connections over");
  try {
    return answer.get();
  } catch (const std::future_error&) {
    return error::make(errc::unsupported, "proxy: the front is gone");
  }
}

namespace {

// A connected socket handed over as an fd (handover.hpp), as a stream of the front; nullopt
// when it is not a socket (a damaged state): closed as `fd` goes.
std::optional<stream> adopt_socket(asio::io_context& io, unique_fd& fd) {
  sockaddr_storage local{};
  socklen_t length = sizeof local;
  if (!fd || ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &length) != 0)
    return std::nullopt;
  boost::system::error_code ec;
  stream s(io);
  s.assign(asio::generic::stream_protocol(local.ss_family, 0), fd.get(), ec);
  if (ec) return std::nullopt;
  (void)fd.release();
  return s;
}

}  // namespace

void front::adopt(std::vector<handed_client> clients) {
  impl* i = impl_.get();
  auto shared = std::make_shared<std::vector<handed_client>>(std::move(clients));
  asio::post(i->io, [i, shared] {
    i->end_park();
    for (auto& c : *shared) {
      if (i->acceptors.empty()) break;
      auto s = adopt_socket(i->io, c.fd);
      if (!s) continue;
      const std::size_t listener = std::min(c.listener, i->acceptors.size() - 1);
      if (i->options.mode != proxy_mode::tcp) {
        i->start_connection(std::move(*s), listener, std::move(c.buffered), true);
        continue;
      }
      // tcp: the upstream connection crossed too; without it (a damaged state) the client's
      // connection closes, as one whose generation went away would.
      auto up = adopt_socket(i->io, c.upstream);
      if (!up) continue;
      i->resume_connection(std::move(*s), std::move(*up), c, listener);
    }
  });
}

void front::add_to_counts(const front_stats& before) {
  impl* i = impl_.get();
  asio::post(i->io, [i, before] { i->before = before; });
}

void front::end_park() {
  impl* i = impl_.get();
  asio::post(i->io, [i] { i->end_park(); });
}

int front::event_fd() const noexcept { return impl_->event.get(); }

std::vector<int> front::take_drained() {
  std::uint64_t count = 0;
  (void)!::read(impl_->event.get(), &count, sizeof count);
  const std::lock_guard lock(impl_->drained_mutex);
  return std::exchange(impl_->drained, {});
}

}  // namespace handoff::proxy
