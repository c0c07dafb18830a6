#include "check/load.hpp"

#include <fmt/core.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cerrno>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>

#include "handoff/spawn.hpp"

namespace handoff::check {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string build_request(const load_options& options) {
  std::string r = options.method + " " + options.target.target +
                  " HTTP/1.1\r\nHost: " + options.target.host_header() +
                  "\r\nUser-Agent: handoff-check\r\n";
  r += options.mode == connection_mode::close ? "Connection: close\r\n" : "";
  if (options.body_size > 0 || options.method == "POST") {
    r += "Content-Type: application/octet-stream\r\nContent-Length: " +
         std::to_string(options.body_size) + "\r\n\r\n";
    r.append(options.body_size, 'x');
  } else {
    r += "\r\n";
  }
  return r;
}

namespace {

result<std::vector<tcp::endpoint>> resolve(asio::io_context& io, const url& target) {
  tcp::resolver resolver(io);
  boost::system::error_code ec;
  auto found = resolver.resolve(target.host, std::to_string(target.port), ec);
  if (ec) return error::make(errc::invalid_address, "resolve " + target.host + ": " + ec.message());
  std::vector<tcp::endpoint> out;
  for (const auto& e : found) out.push_back(e.endpoint());
  if (out.empty())
    return error::make(errc::invalid_address, "resolve " + target.host + ": no address");
  return out;
}

std::int64_t micros(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

class engine;

// What the progress line shows, summed over the engines.
struct shared_counts {
  std::atomic<std::uint64_t> total{0};
  std::atomic<std::uint64_t> failed{0};
};

// One client connection slot: at most one request in flight. The engine drives its slots
// through this interface (a few calls per request at most); the I/O itself is in connection<>.
class slot {
 public:
  slot() = default;
  slot(const slot&) = delete;
  slot& operator=(const slot&) = delete;
  virtual ~slot() = default;
  virtual void next() = 0;
  virtual void sweep(clock_type::time_point now) = 0;
  virtual void wake() = 0;
  virtual void shut() = 0;
};

template <bool Tls>
class connection final : public slot {
 public:
  using stream_type = std::conditional_t<Tls, asio::ssl::stream<tcp::socket>, tcp::socket>;

  connection(engine& e, asio::io_context& io);
  void next() override;
  void sweep(clock_type::time_point now) override;
  void wake() override { pause_.cancel(); }
  void shut() override {
    if (!stream_) return;
    boost::system::error_code ignored;
    socket().close(ignored);
  }

 private:
  tcp::socket& socket() {
    if constexpr (Tls) {
      return stream_->next_layer();
    } else {
      return *stream_;
    }
  }
  void begin();
  void connect();
  void handshake();
  void send();
  void read();
  void complete();
  void fail(const boost::system::error_code& ec);
  void reset_socket();

  engine& engine_;
  asio::io_context& io_;
  // Plain: one socket, opened and closed again. TLS: a new stream (a new SSL object) for every
  // connection, since an SSL object cannot start over.
  std::optional<stream_type> stream_;
  asio::steady_timer pause_;  // rate limit and the pause after a failed connect
  boost::beast::flat_buffer buffer_;
  std::optional<bhttp::response_parser<bhttp::string_body>> parser_;
  phase phase_ = phase::connecting;
  bool in_attempt_ = false;
  bool reused_ = false;
  bool timed_out_ = false;
  bool opened_before_ = false;  // this slot had a connection before (reconnect accounting)
  bool connected_ = false;      // the socket is connected (its loss dates the reconnect)
  bool handshake_done_ = false;
  bool session_taken_ = false;  // the session of this connection was kept for the next one
  tls_session session_;         // --tls-resume: offered on the next connection
  clock_type::time_point attempt_start_, deadline_, lost_at_;
};

class engine {
 public:
  engine(const load_options& options, std::vector<tcp::endpoint> endpoints, shared_counts& counts,
         std::shared_ptr<asio::ssl::context> tls_context)
      : counts_(counts),
        options_(options),
        endpoints_(std::move(endpoints)),
        tls_context_(std::move(tls_context)),
        request_(build_request(options)),
        tick_(io_) {
    if (options.rate > 0)
      period_ = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / options.rate));
    out_.requests.reserve(1 << 16);
  }

  // `start`: the common origin of every engine's times.
  run_result run(clock_type::time_point start) {
    start_ = start;
    stop_at_ = start_ + options_.duration;
    next_slot_ = start_;
    progress_at_ = last_progress_ = start_;
    for (unsigned i = 0; i < options_.connections; ++i) {
      if (options_.target.tls) {
        connections_.push_back(std::make_unique<connection<true>>(*this, io_));
      } else {
        connections_.push_back(std::make_unique<connection<false>>(*this, io_));
      }
    }
    active_ = connections_.size();
    for (auto& c : connections_) c->next();
    schedule_tick();
    io_.run();
    out_.load_us = micros(options_.duration);
    out_.elapsed_us = micros(clock_type::now() - start_);
    // Reconnects are dated by a loss that came before their connect: back in time order.
    std::sort(out_.opened_us.begin(), out_.opened_us.end());
    std::sort(out_.reconnect_us.begin(), out_.reconnect_us.end());
    if (options_.progress) fmt::print(stderr, "\r\033[K");
    return std::move(out_);
  }

  // The connection API.
  const load_options& options() const { return options_; }
  bool stopping() const { return stopping_; }
  const tcp::endpoint& endpoint() const { return endpoints_.front(); }
  const std::string& request() const { return request_; }
  asio::ssl::context& tls_context() { return *tls_context_; }
  void tls_handshake_done(bool resumed) {
    ++out_.tls_handshakes;
    if (resumed) ++out_.tls_resumed;
  }
  // When the next request may start (rate limit): never in the past, so no catch-up bursts.
  clock_type::time_point next_slot() {
    const auto now = clock_type::now();
    const auto t = std::max(next_slot_, now);
    next_slot_ = t + period_;
    return t;
  }
  bool rate_limited() const { return period_.count() > 0; }
  void record(clock_type::time_point started, std::uint16_t status, outcome o) {
    const auto now = clock_type::now();
    const auto latency = micros(now - started);
    out_.requests.push_back(
        {micros(now - start_),
         static_cast<std::uint32_t>(std::min<std::int64_t>(latency, UINT32_MAX)), status, o});
    counts_.total.fetch_add(1, std::memory_order_relaxed);
    if (failed(o)) counts_.failed.fetch_add(1, std::memory_order_relaxed);
  }
  void note_io_error(const boost::system::error_code& ec) {
    if (out_.first_io_error.empty()) out_.first_io_error = ec.message();
  }
  void served_by(std::string_view who) {
    if (who.empty()) return;
    if (last_served_ < out_.served_by.size() && out_.served_by[last_served_].first == who) {
      ++out_.served_by[last_served_].second;
      return;
    }
    for (std::size_t i = 0; i < out_.served_by.size(); ++i) {
      if (out_.served_by[i].first == who) {
        ++out_.served_by[i].second;
        last_served_ = i;
        return;
      }
    }
    out_.served_by.emplace_back(std::string(who), 1);
    last_served_ = out_.served_by.size() - 1;
  }
  void connection_done() { --active_; }
  // `lost` is when the slot's previous connection was lost (reconnects only).
  void connection_opened(bool reconnect, clock_type::time_point lost) {
    const auto at = micros((reconnect ? lost : clock_type::now()) - start_);
    out_.opened_us.push_back(at);
    if (reconnect) out_.reconnect_us.push_back(at);
  }

 private:
  void schedule_tick() {
    tick_.expires_after(50ms);
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      on_tick();
    });
  }

  void on_tick() {
    const auto now = clock_type::now();
    for (auto& c : connections_) c->sweep(now);
    if (!stopping_ && now >= stop_at_) {
      stopping_ = true;
      for (auto& c : connections_) c->wake();
    }
    if (!stopping_) maybe_start_reload(now);
    if (options_.progress && now - last_progress_ >= 250ms) {
      last_progress_ = now;
      print_progress(now);
    }
    if (stopping_ && reload_running_) stop_reload(now);
    if (stopping_ && active_ == 0 && !reload_running_) return finish();
    schedule_tick();
  }

  // The run ends with the load: a command still running after the grace is stopped, its whole
  // process group, since /bin/sh -c may have started children that hold the run open.
  void stop_reload(clock_type::time_point now) {
    const auto grace = options_.reload_grace;
    auto& r = out_.restarts.back();
    if (reload_signals_ == 0 && now - stop_at_ >= grace) {
      r.stopped = true;
      fmt::print(stderr,
                 "handoff check: the restart command started at {:.2f} s still runs {} ms after "
                 "the load ended: SIGTERM to its process group\n",
                 static_cast<double>(r.start_us) / 1e6, grace.count());
      signal_reload(SIGTERM);
      reload_signals_ = 1;
      reload_signal_at_ = now;
    } else if (reload_signals_ == 1 && now - reload_signal_at_ >= grace) {
      fmt::print(stderr,
                 "handoff check: the restart command still runs {} ms after SIGTERM: SIGKILL to "
                 "its process group\n",
                 grace.count());
      signal_reload(SIGKILL);
      reload_signals_ = 2;
      reload_signal_at_ = now;
    } else if (reload_signals_ == 2 && now - reload_signal_at_ >= grace) {
      // Unkillable (uninterruptible sleep): give up rather than hang the checker.
      r.status = "still running after SIGKILL";
      reload_running_ = false;
    }
  }

  // Only while the leader is unreaped (reload_running_): its pid is then still the group's id.
  void signal_reload(int sig) {
    if (::kill(-reload_pid_, sig) != 0 && errno == ESRCH) (void)::kill(reload_pid_, sig);
  }

  void finish() {
    for (auto& c : connections_) c->shut();
    if (reload_wait_) {
      boost::system::error_code ignored;
      reload_wait_->close(ignored);
    }
  }

  void print_progress(clock_type::time_point now) {
    const double t = std::chrono::duration<double>(now - start_).count();
    const std::uint64_t total = counts_.total.load(std::memory_order_relaxed);
    const std::uint64_t failures = counts_.failed.load(std::memory_order_relaxed);
    const auto rate = static_cast<double>(total - progress_total_) /
                      std::max(1e-3, std::chrono::duration<double>(now - progress_at_).count());
    progress_total_ = total;
    progress_at_ = now;
    fmt::print(stderr,
               "\r\033[K{:6.1f}s / {:.0f}s  {} requests  {} failed  {:.0f} req/s  {} restarts{}", t,
               std::chrono::duration<double>(options_.duration).count(), total, failures, rate,
               out_.restarts.size(), reload_running_ ? " (restarting)" : "");
    (void)std::fflush(stderr);
  }

  void maybe_start_reload(clock_type::time_point now) {
    if (reload_running_ || next_reload_ >= options_.reload_times.size() ||
        options_.reload_command.empty())
      return;
    if (now < start_ + options_.reload_times[next_reload_]) return;
    ++next_reload_;
    restart_record r;
    r.start_us = micros(now - start_);
    spawn_options o;
    o.argv = {"/bin/sh", "-c", options_.reload_command};
    o.group = process_group::new_group;
    auto pid = spawn(o);
    if (!pid) {
      r.end_us = r.start_us;
      r.finished = true;
      r.status = pid.error().message();
      out_.restarts.push_back(std::move(r));
      return;
    }
    out_.restarts.push_back(std::move(r));
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, *pid, 0));
    if (pidfd < 0) {  // no pidfd (very old kernel): wait here; the load pauses meanwhile
      on_reload_exit(*pid);
      return;
    }
    reload_running_ = true;
    reload_pid_ = *pid;
    reload_wait_.emplace(io_, pidfd);
    reload_wait_->async_wait(asio::posix::stream_descriptor::wait_read,
                             [this, p = *pid](const boost::system::error_code& ec) {
                               if (ec) return;  // given up at the end
                               on_reload_exit(p);
                             });
  }

  void on_reload_exit(pid_t pid) {
    auto& r = out_.restarts.back();
    auto status = wait_exit(pid, 10s);
    r.end_us = micros(clock_type::now() - start_);
    r.finished = true;
    if (status) {
      r.success = status->success() && !r.stopped;
      r.status =
          r.stopped ? "stopped after the load ended: " + status->describe() : status->describe();
    } else {
      r.status = status.error().message();
    }
    reload_running_ = false;
    if (reload_wait_) {
      boost::system::error_code ignored;
      reload_wait_->close(ignored);
      reload_wait_.reset();
    }
  }

  asio::io_context io_{1};
  shared_counts& counts_;
  load_options options_;
  std::vector<tcp::endpoint> endpoints_;
  std::shared_ptr<asio::ssl::context> tls_context_;  // https:// only
  std::string request_;
  asio::steady_timer tick_;
  std::vector<std::unique_ptr<slot>> connections_;
  std::size_t active_ = 0;
  bool stopping_ = false;
  clock_type::time_point start_, stop_at_, next_slot_, last_progress_, progress_at_;
  std::chrono::nanoseconds period_{0};
  run_result out_;
  std::size_t last_served_ = 0;
  std::uint64_t progress_total_ = 0;
  std::size_t next_reload_ = 0;
  bool reload_running_ = false;
  pid_t reload_pid_ = -1;
  int reload_signals_ = 0;  // 0: none sent, 1: SIGTERM, 2: SIGKILL
  clock_type::time_point reload_signal_at_;
  std::optional<asio::posix::stream_descriptor> reload_wait_;
};

template <bool Tls>
void connection<Tls>::next() {
  in_attempt_ = false;
  if (engine_.stopping()) {
    reset_socket();
    engine_.connection_done();
    return;
  }
  if (engine_.rate_limited()) {
    const auto at = engine_.next_slot();
    if (at > clock_type::now()) {
      pause_.expires_at(at);
      pause_.async_wait([this](const boost::system::error_code&) {
        if (engine_.stopping()) return next();
        begin();
      });
      return;
    }
  }
  begin();
}

template <bool Tls>
connection<Tls>::connection(engine& e, asio::io_context& io) : engine_(e), io_(io), pause_(io) {
  if constexpr (!Tls) stream_.emplace(io);
}

template <bool Tls>
void connection<Tls>::reset_socket() {
  if (connected_) lost_at_ = clock_type::now();
  connected_ = false;
  if constexpr (Tls) {
    if (stream_ && handshake_done_) {
      // OpenSSL forgets (marks not resumable) the session of an SSL object freed without
      // SSL_SENT_SHUTDOWN. The client never sends close_notify (it closes after a response with
      // Connection: close, or a connection the server closed or broke), and the session the
      // slot kept is still good for resuming: the server decides whether it accepts it.
      SSL_set_shutdown(stream_->native_handle(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    }
    shut();
    stream_.reset();
    handshake_done_ = false;
  } else {
    shut();
  }
  buffer_.clear();
  reused_ = false;
}

template <bool Tls>
void connection<Tls>::begin() {
  in_attempt_ = true;
  timed_out_ = false;
  attempt_start_ = clock_type::now();
  if (stream_ && socket().is_open()) return send();
  connect();
}

template <bool Tls>
void connection<Tls>::connect() {
  phase_ = phase::connecting;
  reused_ = false;
  buffer_.clear();
  deadline_ = attempt_start_ + engine_.options().connect_timeout;
  if constexpr (Tls) {
    stream_.emplace(io_, engine_.tls_context());
    session_taken_ = false;
  }
  socket().async_connect(engine_.endpoint(), [this](const boost::system::error_code& ec) {
    if (ec) return fail(ec);
    engine_.connection_opened(
        opened_before_ && engine_.options().mode == connection_mode::keepalive, lost_at_);
    opened_before_ = true;
    connected_ = true;
    boost::system::error_code ignored;
    socket().set_option(tcp::no_delay(true), ignored);
    if constexpr (Tls) {
      handshake();
    } else {
      send();
    }
  });
}

// Within the connect deadline, which covers connect() and the handshake.
template <bool Tls>
void connection<Tls>::handshake() {
  if constexpr (Tls) {
    phase_ = phase::handshaking;
    SSL* ssl = stream_->native_handle();
    const auto& o = engine_.options();
    prepare_tls_connection(ssl, o.target.host, o.tls);
    if (o.tls.resume && session_) (void)SSL_set_session(ssl, session_.get());
    stream_->async_handshake(
        asio::ssl::stream_base::client, [this](const boost::system::error_code& ec) {
          if (ec) return fail(ec);
          handshake_done_ = true;
          engine_.tls_handshake_done(SSL_session_reused(stream_->native_handle()) == 1);
          send();
        });
  }
}

template <bool Tls>
void connection<Tls>::send() {
  phase_ = phase::sending;
  deadline_ = clock_type::now() + engine_.options().timeout;
  asio::async_write(*stream_, asio::buffer(engine_.request()),
                    [this](const boost::system::error_code& ec, std::size_t) {
                      if (ec) return fail(ec);
                      read();
                    });
}

template <bool Tls>
void connection<Tls>::read() {
  phase_ = phase::reading;
  parser_.emplace();
  parser_->body_limit(std::uint64_t{1} << 30);
  bhttp::async_read(*stream_, buffer_, *parser_,
                    [this](const boost::system::error_code& ec, std::size_t) {
                      if (ec) return fail(ec);
                      complete();
                    });
}

template <bool Tls>
void connection<Tls>::complete() {
  const auto& res = parser_->get();
  const unsigned status = res.result_int();
  engine_.record(attempt_start_, static_cast<std::uint16_t>(status),
                 status >= 200 && status < 300 ? outcome::ok : outcome::status);
  engine_.served_by(res["X-Served-By"]);
  const bool keep = engine_.options().mode == connection_mode::keepalive && parser_->keep_alive();
  parser_.reset();
  if constexpr (Tls) {
    // After a response, since TLS 1.3 sends its tickets after the handshake.
    if (engine_.options().tls.resume && !session_taken_) {
      session_taken_ = true;
      tls_session s(SSL_get1_session(stream_->native_handle()));
      if (s && SSL_SESSION_is_resumable(s.get()) == 1) session_ = std::move(s);
    }
  }
  if (keep) {
    reused_ = true;
  } else {
    reset_socket();
  }
  next();
}

template <bool Tls>
void connection<Tls>::fail(const boost::system::error_code& ec) {
  failure_context ctx;
  ctx.at = phase_;
  ctx.reused = reused_;
  ctx.timed_out = timed_out_;
  ctx.got_bytes =
      phase_ == phase::reading && ((parser_ && parser_->got_some()) || buffer_.size() > 0);
  const outcome o = classify(ec, ctx);
  if (o == outcome::io_error) engine_.note_io_error(ec);
  const std::uint16_t status = parser_ && parser_->is_header_done()
                                   ? static_cast<std::uint16_t>(parser_->get().result_int())
                                   : 0;
  engine_.record(attempt_start_, status, o);
  parser_.reset();
  reset_socket();
  if (ctx.at == phase::connecting && !engine_.stopping()) {
    in_attempt_ = false;
    pause_.expires_after(10ms);
    pause_.async_wait([this](const boost::system::error_code&) { next(); });
    return;
  }
  next();
}

template <bool Tls>
void connection<Tls>::sweep(clock_type::time_point now) {
  if (in_attempt_ && !timed_out_ && now > deadline_) {
    timed_out_ = true;
    shut();  // the pending operation completes with operation_aborted
  }
}

}  // namespace

namespace {

// The first resolved address that accepts a connection within the connect timeout ("localhost"
// may resolve to ::1 first while the server listens on 127.0.0.1 only).
result<tcp::endpoint> reachable_endpoint(const load_options& options) {
  asio::io_context io;
  auto endpoints = resolve(io, options.target);
  if (!endpoints) return endpoints.error();
  std::optional<error> first_error;
  for (const auto& endpoint : *endpoints) {
    tcp::socket socket(io);
    asio::steady_timer timer(io, options.connect_timeout);
    boost::system::error_code result = asio::error::would_block;
    bool timed_out = false;
    socket.async_connect(endpoint, [&](const boost::system::error_code& ec) {
      result = ec;
      timer.cancel();
    });
    timer.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      timed_out = true;
      boost::system::error_code ignored;
      socket.close(ignored);
    });
    io.restart();
    io.run();
    const std::string what = "connect " + options.target.authority();
    if (!timed_out && !result) return endpoint;
    if (first_error) continue;
    if (timed_out) {
      first_error =
          error::make(errc::timed_out, what + ": no answer within " +
                                           std::to_string(options.connect_timeout.count()) + " ms");
    } else {
      first_error = error::from_errno(result.value(), what);
    }
  }
  return *first_error;
}

}  // namespace

result<void> probe(const load_options& options) {
  auto endpoint = reachable_endpoint(options);
  if (!endpoint) return endpoint.error();
  return {};
}

result<run_result> run_load(const load_options& options) {
  auto endpoint = reachable_endpoint(options);
  if (!endpoint) return endpoint.error();
  std::shared_ptr<asio::ssl::context> tls_context;
  if (options.target.tls) {
    auto made = make_tls_context(options.tls);
    if (!made) return made.error();
    tls_context = std::move(*made);
  }
  shared_counts counts;
  const unsigned threads = std::clamp(options.threads, 1u, std::max(1u, options.connections));
  if (threads == 1) {
    engine e(options, {*endpoint}, counts, tls_context);
    return e.run(clock_type::now());
  }
  std::vector<std::unique_ptr<engine>> engines;
  for (unsigned i = 0; i < threads; ++i) {
    load_options part = options;
    part.threads = 1;
    part.connections = options.connections / threads + (i < options.connections % threads ? 1 : 0);
    part.rate = options.rate * part.connections / options.connections;
    if (i > 0) {
      part.reload_command.clear();
      part.reload_times.clear();
      part.progress = false;
    }
    engines.push_back(
        std::make_unique<engine>(part, std::vector<tcp::endpoint>{*endpoint}, counts, tls_context));
  }
  std::vector<run_result> parts(threads);
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> running;
  const auto start = clock_type::now();
  for (unsigned i = 0; i < threads; ++i) {
    running.emplace_back([&, i] {
      try {
        parts[i] = engines[i]->run(start);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (auto& t : running) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  // One result, as one engine would have recorded it: the lists in time order, the restarts of
  // the first engine, the responders in the order the first engine saw them, then the others.
  run_result out = std::move(parts[0]);
  for (unsigned i = 1; i < threads; ++i) {
    auto& p = parts[i];
    out.requests.insert(out.requests.end(), p.requests.begin(), p.requests.end());
    out.opened_us.insert(out.opened_us.end(), p.opened_us.begin(), p.opened_us.end());
    out.reconnect_us.insert(out.reconnect_us.end(), p.reconnect_us.begin(), p.reconnect_us.end());
    for (auto& entry : p.served_by) {
      auto at = std::find_if(out.served_by.begin(), out.served_by.end(),
                             [&](const auto& seen) { return seen.first == entry.first; });
      if (at == out.served_by.end()) {
        out.served_by.push_back(std::move(entry));
      } else {
        at->second += entry.second;
      }
    }
    out.elapsed_us = std::max(out.elapsed_us, p.elapsed_us);
    if (out.first_io_error.empty()) out.first_io_error = p.first_io_error;
    out.tls_handshakes += p.tls_handshakes;
    out.tls_resumed += p.tls_resumed;
  }
  std::stable_sort(
      out.requests.begin(), out.requests.end(),
      [](const request_record& a, const request_record& b) { return a.end_us < b.end_us; });
  std::sort(out.opened_us.begin(), out.opened_us.end());
  std::sort(out.reconnect_us.begin(), out.reconnect_us.end());
  return out;
}

}  // namespace handoff::check
