// The supervisor's state as saved_state (state.hpp, encoded by state_codec.cpp), and back.
// Only what cannot be rebuilt travels: pidfds are reopened by pid (our own children, unreaped,
// so the pid is still theirs), probes started again, the signalfd and the wake eventfd made
// anew.
//
// The new image: decode_state() reads all of the state, check_state() holds it against this
// supervisor (its front, its fds), and only then load_state() takes it, field by field, with
// nothing left that can fail: until then not one fd of it has an owner here, so a refusal
// leaves everything as the old image needs it back.
#include "supervisor/state.hpp"

#include <fcntl.h>
#include <fmt/core.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "supervisor/byte_text.hpp"
#include "supervisor/core.hpp"

namespace handoff::supervisor {

namespace {

std::int64_t ns(clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

clock::time_point at(std::int64_t t) {
  return clock::time_point(
      std::chrono::duration_cast<clock::duration>(std::chrono::nanoseconds(t)));
}

std::optional<saved_state::exit_info> exit_info_of(const std::optional<exit_status>& s) {
  if (!s) return std::nullopt;
  return saved_state::exit_info{s->exited, s->code, s->signal};
}

std::optional<exit_status> exit_of(const std::optional<saved_state::exit_info>& s) {
  if (!s) return std::nullopt;
  exit_status e;
  e.exited = s->exited;
  e.code = s->code;
  e.signal = s->signal;
  return e;
}

std::optional<generation_state> generation_state_of(std::string_view s) {
  for (auto g : {generation_state::starting, generation_state::settling, generation_state::serving,
                 generation_state::retiring, generation_state::draining, generation_state::failed})
    if (s == to_string(g)) return g;
  return std::nullopt;
}

template <std::size_t N>
std::vector<std::uint64_t> vector_of(const std::array<std::uint64_t, N>& a) {
  return {a.begin(), a.end()};
}

template <std::size_t N>
void copy_counts(const std::vector<std::uint64_t>& v, std::array<std::uint64_t, N>& a) {
  for (std::size_t i = 0; i < N && i < v.size(); ++i) a[i] = v[i];
}

std::optional<std::int64_t> optional_ns(const std::optional<clock::time_point>& t) {
  if (!t) return std::nullopt;
  return ns(*t);
}

}  // namespace

std::vector<int> supervisor_core::state_fds() const {
  std::vector<int> fds;
  for (const auto& s : sockets_) fds.push_back(s.fd.get());
  for (const auto& f : fdstore_) fds.push_back(f.fd.get());
  if (notify_) fds.push_back(notify_->fd());
  if (const auto* c = control_.server()) fds.push_back(c->fd());
  for (const auto& s : control_.sessions()) fds.push_back(s.conn.fd.get());
  if (metrics_server_) fds.push_back(metrics_server_->listener_fd());
  if (self_exe_) fds.push_back(self_exe_.get());
  if (ticket_keys_) fds.push_back(ticket_keys_.get());
  if (proxy_) {
    const auto ups = proxy_->upstream_fds();
    fds.insert(fds.end(), ups.begin(), ups.end());
  }
  for (const auto& [id, ups] : restored_upstreams_)
    for (const auto& u : ups)
      if (u.fd >= 0) fds.push_back(u.fd);
  for (const auto& c : handed_clients_) {
    fds.push_back(c.fd.get());
    if (c.upstream) fds.push_back(c.upstream.get());
  }
  return fds;
}

saved_state supervisor_core::saved(std::optional<std::uint64_t> waiter) const {
  saved_state s;
  s.handoff = HANDOFF_VERSION_TEXT;
  s.reexecs = reexecs_;
  s.nofile_soft = nofile_.original_soft;
  s.self_exe = self_exe_.get();
  s.self_path = self_path_;
  s.waiter = waiter;
  for (const auto& k : sockets_)
    s.sockets.push_back(
        {k.fd.get(), k.name, k.where, static_cast<std::uint64_t>(k.inode), k.unserved_by});
  for (const auto& f : fdstore_) s.fdstore.push_back({f.fd.get(), f.name});
  // The TLS session-ticket keys (--tls-ticket-keys): the next generations must get the same
  // ones, or every session made so far stops resuming at the first reload after a re-exec.
  if (ticket_keys_) s.keys = saved_state::ticket_keys{ticket_keys_.get(), ns(next_key_rotation_)};
  s.notify_socket = {notify_->fd(), notify_->address()};
  if (const auto* c = control_.server()) {
    // Assigned, not emplace()d: clang 14 judges a nested struct with default member
    // initializers not default-constructible (asked while the enclosing class was incomplete).
    auto& k = *(s.control_socket = saved_state::control{});
    k.fd = c->fd();
    k.path = c->path();
    k.dev = static_cast<std::uint64_t>(c->dev());
    k.ino = static_cast<std::uint64_t>(c->ino());
    k.next_id = control_.next_id();
    for (const auto& x : control_.sessions())
      k.sessions.push_back(
          {x.id, x.conn.fd.get(), x.conn.buffer, x.conn.answered, ns(x.conn.deadline)});
  }
  if (metrics_server_)
    s.metrics = saved_state::metrics_listener{
        metrics_server_->listener_fd(), metrics_server_->where(), metrics_server_->created_path()};
  auto& c = s.core_state;
  c.started = ns(started_);
  c.next_id = next_id_;
  c.final_generation = final_generation_;
  c.app_failures = app_failures_;
  c.next_start = optional_ns(next_start_);
  c.last_status = exit_info_of(last_status_);
  c.reloads = reloads_;
  c.reloads_failed = reloads_failed_;
  c.restarts = restarts_;
  c.last_reload = last_reload_;
  c.pid_file_written = pid_file_written_;
  c.own_watchdog_us = own_watchdog_.count();
  c.next_ping = ns(next_ping_);
  c.last_ignored_sender = last_ignored_sender_;
  c.recent_exits.assign(recent_exits_.begin(), recent_exits_.end());
  c.recent_exits_next = recent_exits_next_;
  auto& m = s.counts;
  m.reloads_ok = metrics_.reloads_ok;
  m.reloads_failed = vector_of(metrics_.reloads_failed);
  m.reloads_refused = vector_of(metrics_.reloads_refused);
  m.app_restarts = metrics_.app_restarts;
  m.stop_escalations = metrics_.stop_escalations;
  m.notify_refused = vector_of(metrics_.notify_refused);
  m.ready_buckets = vector_of(metrics_.time_to_ready.buckets);
  m.ready_sum = metrics_.time_to_ready.sum;
  m.ready_count = metrics_.time_to_ready.count;
  m.last_reload_ok = optional_ns(metrics_.last_reload_ok);
  m.first_ready = optional_ns(metrics_.first_ready);
  for (const auto& g : generations_) {
    auto& x = s.generations.emplace_back();
    x.id = g.id;
    x.state = to_string(g.state);
    x.started = ns(g.started);
    x.ready_deadline = ns(g.ready_deadline);
    x.settle_deadline = ns(g.settle_deadline);
    x.stop_deadline = ns(g.stop_deadline);
    x.retire_deadline = ns(g.retire_deadline);
    x.stop_sent = g.stop_sent;
    x.killed = g.killed;
    x.is_restart = g.is_restart;
    x.failure = g.failure;
    x.waiters = g.waiters;
    for (const auto& sl : g.slots) {
      auto& y = x.slots.emplace_back();
      y.pid = sl.pid;
      y.pgid = sl.pgid;
      y.former = sl.former;
      y.leader_reaped = sl.leader_reaped;
      y.ready = sl.ready;
      y.stopping = sl.stopping;
      y.reloading = sl.reloading;
      y.started = ns(sl.started);
      y.ready_at = ns(sl.ready_at);
      y.last_watchdog = ns(sl.last_watchdog);
      y.ready_deadline = ns(sl.ready_deadline);
      y.watchdog_fired = sl.watchdog_fired;
      y.restart_at = ns(sl.restart_at);
      y.watchdog_ms = sl.watchdog.count();
      y.last_exit = exit_info_of(sl.last_exit);
      y.status_text = sl.status_text;
      y.restarts = sl.restarts;
      y.failures_in_a_row = sl.failures_in_a_row;
    }
  }
  if (proxy_) {
    auto& p = s.front.emplace();
    p.mode = to_string(o_.proxy.kind);
    for (const auto& [id, ups] : proxy_->saved_upstreams()) {
      auto& g = p.generations.emplace_back();
      g.generation = id;
      g.drained = proxy_->drained_generations().count(id) != 0;
      for (const auto& u : ups) g.upstreams.push_back({u.fd, u.path, u.port});
    }
    for (const auto& x : handed_clients_) {
      auto& y = p.clients.emplace_back();
      y.fd = x.fd.get();
      y.listener = x.listener;
      y.buffered = x.buffered;
      if (o_.proxy.kind == proxy_kind::tcp)
        y.tcp = saved_state::tcp_relay{x.upstream ? x.upstream.get() : -1, x.generation,
                                       x.client_done, x.upstream_done};
    }
    // The front's totals go on in the next image (status, /metrics).
    const auto f = proxy_->stats();
    p.counts = saved_state::proxy_counts{
        f.requests, f.bad_gateway, f.unavailable,      f.rejected,
        f.tunnels,  f.accepted,    f.connect_failures, f.tls_handshake_failures};
  }
  return s;
}

encoded_state supervisor_core::save_state(std::optional<std::uint64_t> waiter) const {
  return encode_state(saved(waiter));
}

std::string supervisor_core::check_state(const saved_state& s) const {
  const std::string mode = s.front ? s.front->mode : "none";
  // The same command line on both sides: a front of another kind would be a damaged state.
  if (mode != to_string(o_.proxy.kind) && (s.front || s.version >= 2))
    return fmt::format("the state's front is \"{}\", this supervisor's \"{}\"", escaped_text(mode),
                       to_string(o_.proxy.kind));
  for (const auto& g : s.generations)
    if (!generation_state_of(g.state))
      return fmt::format("generation {}: unknown state \"{}\"", g.id, escaped_text(g.state));
  // Every fd it names must be open here: the old image cleared close-on-exec on each.
  for (const int fd : state_fds_of(s))
    if (::fcntl(fd, F_GETFD) < 0)
      return fmt::format("the state names fd {}, which is not open in the new image", fd);
  return {};
}

void supervisor_core::load_state(saved_state s) {
  if (auto& p = s.front) {
    for (auto& g : p->generations) {
      auto& ups = restored_upstreams_[g.generation];
      for (auto& u : g.upstreams) ups.push_back({u.fd, std::move(u.path), u.port});
      if (g.drained) restored_drained_.insert(g.generation);
    }
    if (const auto& n = p->counts) {
      restored_counts_.requests = n->requests;
      restored_counts_.bad_gateway = n->bad_gateway;
      restored_counts_.unavailable = n->unavailable;
      restored_counts_.rejected = n->rejected;
      restored_counts_.tunnels = n->tunnels;
      restored_counts_.accepted = n->accepted;
      restored_counts_.connect_failures = n->connect_failures;
      restored_counts_.tls_handshake_failures = n->tls_handshake_failures;
    }
    for (auto& c : p->clients) {
      proxy::handed_client h;
      h.fd.reset(c.fd);
      h.listener = static_cast<std::size_t>(c.listener);
      h.buffered = std::move(c.buffered);
      if (c.tcp) {
        if (c.tcp->upstream >= 0) h.upstream.reset(c.tcp->upstream);
        h.generation = c.tcp->generation;
        h.client_done = c.tcp->client_done;
        h.upstream_done = c.tcp->upstream_done;
      }
      handed_clients_.push_back(std::move(h));
    }
  }
  reexecs_ = s.reexecs;
  if (s.nofile_soft) nofile_.original_soft = std::min<std::uint64_t>(*s.nofile_soft, nofile_.soft);
  self_exe_.reset(s.self_exe);
  self_path_ = std::move(s.self_path);
  reexec_waiter_ = s.waiter;
  for (auto& k : s.sockets) {
    held_socket h;
    h.fd.reset(k.fd);
    h.name = std::move(k.name);
    h.where = std::move(k.where);
    h.inode = static_cast<ino_t>(k.inode);
    h.unserved_by = k.unserved_by;
    sockets_.push_back(std::move(h));
  }
  for (auto& f : s.fdstore) {
    stored_fd x;
    x.fd.reset(f.fd);
    x.name = std::move(f.name);
    fdstore_.push_back(std::move(x));
  }
  if (s.keys) {
    ticket_keys_.reset(s.keys->fd);
    next_key_rotation_ = at(s.keys->next_rotation);
  }
  notify_.emplace(
      notify_receiver::adopt(unique_fd(s.notify_socket.fd), std::move(s.notify_socket.address)));
  if (auto& c = s.control_socket) {
    control_ = control_sessions(control_server::adopt(unique_fd(c->fd), std::move(c->path),
                                                      static_cast<dev_t>(c->dev),
                                                      static_cast<ino_t>(c->ino)));
    control_.set_next_id(c->next_id);
    for (auto& v : c->sessions) {
      control_sessions::session x;
      x.id = v.id;
      x.conn.fd.reset(v.fd);
      x.conn.buffer = std::move(v.buffer);
      x.conn.answered = v.answered;
      x.conn.deadline = at(v.deadline);
      control_.adopt(std::move(x));
    }
  }
  if (auto& m = s.metrics)
    metrics_server_.emplace(
        metrics_server::adopt(unique_fd(m->fd), std::move(m->where), std::move(m->path)));
  const auto& c = s.core_state;
  started_ = at(c.started);
  next_id_ = c.next_id;
  final_generation_ = c.final_generation;
  app_failures_ = c.app_failures;
  if (c.next_start) next_start_ = at(*c.next_start);
  last_status_ = exit_of(c.last_status);
  reloads_ = c.reloads;
  reloads_failed_ = c.reloads_failed;
  restarts_ = c.restarts;
  last_reload_ = c.last_reload;
  pid_file_written_ = c.pid_file_written;
  own_watchdog_ = std::chrono::microseconds(c.own_watchdog_us);
  next_ping_ = at(c.next_ping);
  last_ignored_sender_ = c.last_ignored_sender;
  for (std::size_t i = 0; i < recent_exits_.size() && i < c.recent_exits.size(); ++i)
    recent_exits_[i] = c.recent_exits[i];
  recent_exits_next_ = static_cast<std::size_t>(c.recent_exits_next % recent_exits_.size());
  const auto& m = s.counts;
  metrics_.reloads_ok = m.reloads_ok;
  copy_counts(m.reloads_failed, metrics_.reloads_failed);
  copy_counts(m.reloads_refused, metrics_.reloads_refused);
  metrics_.app_restarts = m.app_restarts;
  metrics_.stop_escalations = m.stop_escalations;
  copy_counts(m.notify_refused, metrics_.notify_refused);
  copy_counts(m.ready_buckets, metrics_.time_to_ready.buckets);
  metrics_.time_to_ready.sum = m.ready_sum;
  metrics_.time_to_ready.count = m.ready_count;
  if (m.last_reload_ok) metrics_.last_reload_ok = at(*m.last_reload_ok);
  if (m.first_ready) metrics_.first_ready = at(*m.first_ready);
  for (auto& v : s.generations) {
    generation& g = generations_.emplace_back();
    g.id = v.id;
    g.state = generation_state_of(v.state).value_or(generation_state::failed);  // checked
    g.started = at(v.started);
    g.ready_deadline = at(v.ready_deadline);
    g.settle_deadline = at(v.settle_deadline);
    g.stop_deadline = at(v.stop_deadline);
    g.retire_deadline = at(v.retire_deadline);
    g.stop_sent = v.stop_sent;
    g.killed = v.killed;
    g.is_restart = v.is_restart;
    g.failure = std::move(v.failure);
    g.waiters = std::move(v.waiters);
    for (auto& sv : v.slots) {
      slot& x = g.slots.emplace_back();
      x.pid = sv.pid;
      x.pgid = sv.pgid;
      x.former = std::move(sv.former);
      x.leader_reaped = sv.leader_reaped;
      x.ready = sv.ready;
      x.stopping = sv.stopping;
      x.reloading = sv.reloading;
      x.started = at(sv.started);
      x.ready_at = at(sv.ready_at);
      x.last_watchdog = at(sv.last_watchdog);
      x.ready_deadline = at(sv.ready_deadline);
      x.watchdog_fired = sv.watchdog_fired;
      x.restart_at = at(sv.restart_at);
      x.watchdog = std::chrono::milliseconds(std::clamp<std::int64_t>(
          sv.watchdog_ms, 0,
          std::chrono::duration_cast<std::chrono::milliseconds>(watchdog_max).count()));
      x.last_exit = exit_of(sv.last_exit);
      x.status_text = std::move(sv.status_text);
      x.restarts = sv.restarts;
      x.failures_in_a_row = sv.failures_in_a_row;
    }
  }
}

}  // namespace handoff::supervisor
