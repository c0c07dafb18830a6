#include "proxy/upstream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace handoff::proxy {

namespace {

// Connects that fail are tried again on whatever generation serves then; a few are enough to
// cover a generation that went away between our choice and the connect.
constexpr int connect_attempts = 4;
// Idle connections kept per generation and public socket; more are closed when given back.
constexpr std::size_t idle_limit = 1024;

// An idle upstream connection has nothing to say: readable means EOF (the app closed it, e.g.
// on its idle timeout or its exit) or bytes nobody asked for; either way it must not carry a
// request. POLLRDHUP catches a half-close too.
bool still_idle(stream& s) {
  pollfd p{s.native_handle(), POLLIN | POLLRDHUP, 0};
  int n = 0;
  do {
    n = ::poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  return n == 0;
}

}  // namespace

upstream_router::generation_state* upstream_router::find(int id) {
  const auto it = generations_.find(id);
  return it == generations_.end() ? nullptr : &it->second;
}

std::optional<stream> upstream_router::take_idle(generation_state& g, std::size_t listener) {
  auto& pool = g.idle[listener];
  const auto now = clock_type::now();
  while (!pool.empty()) {
    idle_connection c = std::move(pool.back());
    pool.pop_back();
    if (now - c.since >= options_.idle_timeout) {
      // The newest is past it, so every older one is too (the purge timer was about to).
      g.open -= std::min(g.open, pool.size() + 1);
      pool.clear();
      break;
    }
    if (still_idle(c.socket)) return std::move(c.socket);
    if (g.open > 0) --g.open;  // closed as `c` goes
  }
  return std::nullopt;
}

bool upstream_router::room_for_new(generation_state& g, std::size_t listener) {
  if (options_.max_connections == 0 || g.open + g.connecting < options_.max_connections)
    return true;
  for (std::size_t other = 0; other < g.idle.size(); ++other) {
    auto& pool = g.idle[other];
    if (other == listener || pool.empty()) continue;
    pool.pop_front();  // the oldest idle one, of a public socket nobody waits on
    if (g.open > 0) --g.open;
    return true;
  }
  return false;
}

void upstream_router::slot_freed(generation_state& g) {
  if (g.queue.empty() || !room_for_new(g, g.queue.front()->listener)) return;
  queued_request* q = g.queue.front();
  g.queue.pop_front();
  q->queued = false;
  q->slot = true;
  q->wake->cancel();
}

void upstream_router::wake_queue(generation_state& g) {
  for (queued_request* q : g.queue) {
    q->queued = false;
    q->wake->cancel();
  }
  g.queue.clear();
}

asio::awaitable<std::optional<upstream_connection>> upstream_router::acquire(
    std::size_t listener, connection_source source) {
  const auto queue_deadline = clock_type::now() + options_.queue_timeout;
  // Woken from the queue with room to connect: it goes first if it has to queue again.
  bool granted = false;
  for (int attempt = 0; attempt < connect_attempts && !closing_;) {
    generation_state* g = find(serving_);
    if (g == nullptr) {
      // Wait for serve() (or stop()), bounded: the caller answers 503 after that.
      if (clock_type::now() >= queue_deadline) co_return std::nullopt;
      asio::steady_timer wait(executor_, queue_deadline);
      const auto at = waiting_.insert(waiting_.end(), &wait);
      boost::system::error_code ignored;
      co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      waiting_.erase(at);
      continue;
    }
    if (listener >= g->upstreams.size()) co_return std::nullopt;
    const int id = g->id;
    // Requests queued under max_connections come first: a newcomer takes no idle connection
    // and no room from them.
    const bool ahead = !g->queue.empty() && !granted;
    if (source == connection_source::pool_or_new && !ahead) {
      if (auto s = take_idle(*g, listener)) {
        ++g->in_flight;
        ++g->requests;
        g->lent[s->native_handle()] = {listener, -1};
        co_return upstream_connection{std::move(*s), id, true};
      }
    }
    if (ahead || !room_for_new(*g, listener)) {
      if (clock_type::now() >= queue_deadline) co_return std::nullopt;
      asio::steady_timer wait(executor_, queue_deadline);
      queued_request q;
      q.wake = &wait;
      q.listener = listener;
      const auto at = g->queue.insert(granted ? g->queue.begin() : g->queue.end(), &q);
      boost::system::error_code ignored;
      co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      g = find(id);
      // Still queued: the deadline passed. (The entry outlives its queue: forget() and
      // retire() empty the queue before it can go.)
      if (q.queued) {
        if (g != nullptr) g->queue.erase(at);
        co_return std::nullopt;
      }
      granted = q.slot;
      if (q.handed) {
        const bool usable = g != nullptr && !g->retired && !g->forgotten && !closing_;
        if (usable && still_idle(*q.handed)) {
          ++g->in_flight;
          ++g->requests;
          g->lent[q.handed->native_handle()] = {listener, -1};
          co_return upstream_connection{std::move(*q.handed), id, true};
        }
        q.handed.reset();
        if (g != nullptr && g->open > 0) --g->open;
        granted = usable;  // its slot is ours: a new connection
      }
      continue;  // at the top again: the generation may have changed meanwhile
    }
    granted = false;
    ++attempt;
    const endpoint where = g->upstreams[listener];
    const int family = where.protocol().family();
    // Born close-on-exec and non-blocking: the supervisor's thread forks while we run.
    const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      ++connect_failures_;
      continue;
    }
    stream s(executor_, asio::generic::stream_protocol(family, 0), fd);
    // Counted in flight while connecting, so that a retire in the meantime waits for it.
    ++g->in_flight;
    ++g->connecting;
    boost::system::error_code ec;
    co_await s.async_connect(where, asio::redirect_error(asio::use_awaitable, ec));
    g = find(id);  // forget() may have run meanwhile; the entry stays while in_flight > 0
    if (g != nullptr && g->connecting > 0) --g->connecting;
    if (ec || g == nullptr || g->forgotten) {
      ++connect_failures_;
      if (g != nullptr) {
        --g->in_flight;
        slot_freed(*g);
        check_drained(id);
      }
      continue;  // nothing of the request was written: the serving generation gets it
    }
    if (family == AF_INET || family == AF_INET6) {
      const int one = 1;
      ::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    ++g->open;
    ++g->requests;
    g->lent[s.native_handle()] = {listener, -1};
    co_return upstream_connection{std::move(s), id, false};
  }
  co_return std::nullopt;
}

void upstream_router::release(upstream_connection c, bool reusable) {
  generation_state* g = find(c.generation);
  if (g == nullptr) return;  // not ours: closed as `c` goes
  const auto it = g->lent.find(c.socket.native_handle());
  const std::size_t listener = it != g->lent.end() ? it->second.listener : 0;
  if (it != g->lent.end()) g->lent.erase(it);
  if (g->in_flight > 0) --g->in_flight;
  if (reusable && c.socket.is_open() && !g->retired && !closing_) {
    // The first request queued for this public socket takes it at once.
    for (auto q = g->queue.begin(); q != g->queue.end(); ++q) {
      if ((*q)->listener != listener) continue;
      (*q)->handed.emplace(std::move(c.socket));
      (*q)->queued = false;
      (*q)->wake->cancel();
      g->queue.erase(q);
      return;
    }
    // Queued requests of other public sockets only: closed, so that one of them connects.
    if (g->queue.empty() && g->idle[listener].size() < idle_limit) {
      g->idle[listener].push_back({std::move(c.socket), clock_type::now()});
      arm_purge();
      return;
    }
  }
  boost::system::error_code ignored;
  c.socket.close(ignored);
  if (g->open > 0) --g->open;
  slot_freed(*g);
  check_drained(c.generation);
}

void upstream_router::arm_purge() {
  if (!purge_armed_) purge_at(clock_type::now() + options_.idle_timeout);
}

void upstream_router::purge_at(clock_type::time_point when) {
  purge_armed_ = true;
  purge_timer_.expires_at(when);
  purge_timer_.async_wait([this](const boost::system::error_code& ec) {
    purge_armed_ = false;
    if (!ec) purge();
  });
}

void upstream_router::purge() {
  const auto now = clock_type::now();
  auto next = clock_type::time_point::max();
  for (auto& [id, g] : generations_) {
    bool closed = false;
    for (auto& pool : g.idle) {
      while (!pool.empty() && now - pool.front().since >= options_.idle_timeout) {
        pool.pop_front();
        if (g.open > 0) --g.open;
        closed = true;
      }
      if (!pool.empty()) next = std::min(next, pool.front().since + options_.idle_timeout);
    }
    if (closed) slot_freed(g);
  }
  if (next != clock_type::time_point::max()) purge_at(next);
}

void upstream_router::disown(int generation, int fd) {
  generation_state* g = find(generation);
  if (g == nullptr) return;
  g->lent.erase(fd);
  if (g->in_flight > 0) --g->in_flight;
  if (g->open > 0) --g->open;
  slot_freed(*g);
}

upstream_connection upstream_router::adopt(int generation, std::size_t listener, stream s) {
  auto& g = generations_[generation];
  g.id = generation;
  if (g.idle.size() <= listener) g.idle.resize(listener + 1);
  ++g.in_flight;
  ++g.open;
  g.lent[s.native_handle()] = {listener, -1};
  return upstream_connection{std::move(s), generation, false};
}

void upstream_router::close_idle(generation_state& g) {
  for (auto& pool : g.idle) {
    g.open -= std::min(g.open, pool.size());
    pool.clear();
  }
}

void upstream_router::check_drained(int id) {
  generation_state* g = find(id);
  if (g == nullptr || g->in_flight > 0) return;
  if (g->retired && !g->drained_reported) {
    close_idle(*g);
    g->drained_reported = true;
    if (on_drained_) on_drained_(id);
  }
  if (g->forgotten) generations_.erase(id);
}

void upstream_router::serve(int generation, std::vector<endpoint> upstreams) {
  auto& g = generations_[generation];
  g.id = generation;
  g.idle.resize(std::max(g.idle.size(), upstreams.size()));
  g.upstreams = std::move(upstreams);
  g.retired = g.forgotten = g.drained_reported = false;
  serving_ = generation;
  wake_waiting();
}

void upstream_router::wake_waiting() {
  for (asio::steady_timer* t : waiting_) t->cancel();
}

void upstream_router::retire(int generation) {
  if (serving_ == generation) serving_ = 0;
  generation_state* g = find(generation);
  if (g == nullptr) {
    // Never served (or already gone): nothing of ours can be in flight there.
    if (on_drained_) on_drained_(generation);
    return;
  }
  g->retired = true;
  wake_queue(*g);  // they go to the generation that serves now
  check_drained(generation);
}

void upstream_router::forget(int generation) {
  if (serving_ == generation) serving_ = 0;
  generation_state* g = find(generation);
  if (g == nullptr) return;
  g->retired = g->forgotten = true;
  wake_queue(*g);
  close_idle(*g);
  // Our own connected sockets: shutdown(2) wakes every relay blocked on them. Never applied
  // to a listening socket.
  for (const auto& [fd, lent] : g->lent) {
    ::shutdown(fd, SHUT_RDWR);
    if (lent.client_fd >= 0) ::shutdown(lent.client_fd, SHUT_RDWR);
  }
  check_drained(generation);
}

void upstream_router::stop() {
  closing_ = true;
  for (auto& [id, g] : generations_) {
    wake_queue(g);
    close_idle(g);
  }
  wake_waiting();
  purge_timer_.cancel();
}

void upstream_router::attach_client(upstream_connection& c, int client_fd) {
  if (generation_state* g = find(c.generation)) {
    const auto it = g->lent.find(c.socket.native_handle());
    if (it != g->lent.end()) it->second.client_fd = client_fd;
  }
}

std::vector<generation_stats> upstream_router::stats() const {
  std::vector<generation_stats> out;
  for (const auto& [id, g] : generations_) {
    generation_stats s;
    s.generation = id;
    s.serving = id == serving_;
    s.retired = g.retired;
    s.in_flight = g.in_flight;
    s.upstream_connections = g.open;
    for (const auto& pool : g.idle) s.idle += pool.size();
    s.requests = g.requests;
    s.queued = g.queue.size();
    out.push_back(s);
  }
  return out;
}

}  // namespace handoff::proxy
