// The supervisor's state as state.hpp's format, and back. Only what cannot be rebuilt travels:
// pidfds are reopened by pid (our own children, unreaped, so the pid is still theirs), probes
// started again, the signalfd and the wake eventfd made anew.
#include "supervisor/state.hpp"

#include <fmt/core.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "handoff/decimal.hpp"
#include "supervisor/core.hpp"

namespace handoff::supervisor {

namespace json = boost::json;

namespace {

std::int64_t ns(clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

clock::time_point at(const json::value& v) {
  return clock::time_point(std::chrono::duration_cast<clock::duration>(
      std::chrono::nanoseconds(v.to_number<std::int64_t>())));
}

json::value exit_json(const std::optional<exit_status>& s) {
  if (!s) return nullptr;
  return json::object{{"exited", s->exited}, {"code", s->code}, {"signal", s->signal}};
}

std::optional<exit_status> exit_of(const json::value& v) {
  if (v.is_null()) return std::nullopt;
  exit_status s;
  s.exited = v.at("exited").as_bool();
  s.code = v.at("code").to_number<int>();
  s.signal = v.at("signal").to_number<int>();
  return s;
}

template <std::size_t N>
json::array counts_json(const std::array<std::uint64_t, N>& a) {
  json::array out;
  for (const auto n : a) out.push_back(n);
  return out;
}

template <std::size_t N>
void counts_of(const json::value& v, std::array<std::uint64_t, N>& a) {
  const auto& arr = v.as_array();
  for (std::size_t i = 0; i < N && i < arr.size(); ++i) a[i] = arr[i].to_number<std::uint64_t>();
}

generation_state state_of(std::string_view s) {
  for (auto g : {generation_state::starting, generation_state::settling, generation_state::serving,
                 generation_state::retiring, generation_state::draining, generation_state::failed})
    if (s == to_string(g)) return g;
  throw std::invalid_argument(fmt::format("unknown generation state \"{}\"", s));
}

std::string str(const json::value& v) {
  const auto& s = v.as_string();
  return {s.data(), s.size()};
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi << 4 | lo);
  }
  return out;
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

int supervisor_core::state_version_written() const {
  if (!proxy_) return 1;
  return o_.proxy.kind == proxy_kind::tcp ? 3 : 2;
}

std::string supervisor_core::save_state(std::optional<std::uint64_t> waiter) const {
  json::object root;
  const int version = state_version_written();
  root["version"] = version;
  root["handoff"] = HANDOFF_VERSION_TEXT;
  root["reexecs"] = reexecs_;
  // The soft RLIMIT_NOFILE we were started with (fd_limits.hpp): the next image starts with
  // our raised one and cannot know it otherwise. Optional on reading (images before it).
  root["nofile_soft"] = nofile_.original_soft;
  root["self_exe"] = self_exe_.get();
  root["self_path"] = self_path_;
  root["waiter"] = waiter ? json::value(*waiter) : json::value(nullptr);
  json::array sockets;
  for (const auto& s : sockets_)
    sockets.push_back(json::object{{"fd", s.fd.get()},
                                   {"name", s.name},
                                   {"where", s.where},
                                   {"inode", static_cast<std::uint64_t>(s.inode)},
                                   {"unserved_by", s.unserved_by}});
  root["sockets"] = std::move(sockets);
  json::array store;
  for (const auto& f : fdstore_)
    store.push_back(json::object{{"fd", f.fd.get()}, {"name", f.name}});
  root["fdstore"] = std::move(store);
  // The TLS session-ticket keys (--tls-ticket-keys): the next generations must get the same
  // ones, or every session made so far stops resuming at the first reload after a re-exec.
  if (ticket_keys_)
    root["ticket_keys"] =
        json::object{{"fd", ticket_keys_.get()}, {"next_rotation", ns(next_key_rotation_)}};
  root["notify"] = json::object{{"fd", notify_->fd()}, {"address", notify_->address()}};
  if (const auto* c = control_.server()) {
    json::array sessions;
    for (const auto& s : control_.sessions())
      sessions.push_back(json::object{{"id", s.id},
                                      {"fd", s.conn.fd.get()},
                                      {"buffer", s.conn.buffer},
                                      {"answered", s.conn.answered},
                                      {"deadline", ns(s.conn.deadline)}});
    root["control"] = json::object{{"fd", c->fd()},
                                   {"path", c->path()},
                                   {"dev", static_cast<std::uint64_t>(c->dev())},
                                   {"ino", static_cast<std::uint64_t>(c->ino())},
                                   {"next_id", control_.next_id()},
                                   {"sessions", std::move(sessions)}};
  }
  if (metrics_server_)
    root["metrics"] = json::object{{"fd", metrics_server_->listener_fd()},
                                   {"where", metrics_server_->where()},
                                   {"path", metrics_server_->created_path()}};
  json::array recent;
  for (const auto pid : recent_exits_) recent.push_back(pid);
  root["core"] = json::object{
      {"started", ns(started_)},
      {"next_id", next_id_},
      {"final_generation", final_generation_},
      {"app_failures", app_failures_},
      {"next_start", next_start_ ? json::value(ns(*next_start_)) : json::value(nullptr)},
      {"last_status", exit_json(last_status_)},
      {"reloads", reloads_},
      {"reloads_failed", reloads_failed_},
      {"restarts", restarts_},
      {"last_reload", last_reload_},
      {"pid_file_written", pid_file_written_},
      {"own_watchdog_us", own_watchdog_.count()},
      {"next_ping", ns(next_ping_)},
      {"last_ignored_sender", last_ignored_sender_},
      {"recent_exits", std::move(recent)},
      {"recent_exits_next", recent_exits_next_}};
  json::array buckets;
  for (const auto n : metrics_.time_to_ready.buckets) buckets.push_back(n);
  root["metrics_counts"] = json::object{
      {"reloads_ok", metrics_.reloads_ok},
      {"reloads_failed", counts_json(metrics_.reloads_failed)},
      {"reloads_refused", counts_json(metrics_.reloads_refused)},
      {"app_restarts", metrics_.app_restarts},
      {"stop_escalations", metrics_.stop_escalations},
      {"notify_refused", counts_json(metrics_.notify_refused)},
      {"ready_buckets", std::move(buckets)},
      {"ready_sum", metrics_.time_to_ready.sum},
      {"ready_count", metrics_.time_to_ready.count},
      {"last_reload_ok",
       metrics_.last_reload_ok ? json::value(ns(*metrics_.last_reload_ok)) : json::value(nullptr)},
      {"first_ready",
       metrics_.first_ready ? json::value(ns(*metrics_.first_ready)) : json::value(nullptr)}};
  json::array generations;
  for (const auto& g : generations_) {
    json::array slots;
    for (const auto& s : g.slots) {
      json::array former;
      for (const auto pid : s.former) former.push_back(pid);
      slots.push_back(json::object{{"pid", s.pid},
                                   {"pgid", s.pgid},
                                   {"former", std::move(former)},
                                   {"leader_reaped", s.leader_reaped},
                                   {"ready", s.ready},
                                   {"stopping", s.stopping},
                                   {"reloading", s.reloading},
                                   {"started", ns(s.started)},
                                   {"ready_at", ns(s.ready_at)},
                                   {"last_watchdog", ns(s.last_watchdog)},
                                   {"ready_deadline", ns(s.ready_deadline)},
                                   {"watchdog_fired", s.watchdog_fired},
                                   {"restart_at", ns(s.restart_at)},
                                   {"watchdog_ms", s.watchdog.count()},
                                   {"last_exit", exit_json(s.last_exit)},
                                   {"status_text", s.status_text},
                                   {"restarts", s.restarts},
                                   {"failures_in_a_row", s.failures_in_a_row}});
    }
    json::array waiters;
    for (const auto id : g.waiters) waiters.push_back(id);
    generations.push_back(json::object{{"id", g.id},
                                       {"state", to_string(g.state)},
                                       {"started", ns(g.started)},
                                       {"ready_deadline", ns(g.ready_deadline)},
                                       {"settle_deadline", ns(g.settle_deadline)},
                                       {"stop_deadline", ns(g.stop_deadline)},
                                       {"retire_deadline", ns(g.retire_deadline)},
                                       {"stop_sent", g.stop_sent},
                                       {"killed", g.killed},
                                       {"is_restart", g.is_restart},
                                       {"failure", g.failure},
                                       {"waiters", std::move(waiters)},
                                       {"slots", std::move(slots)}});
  }
  root["generations"] = std::move(generations);
  if (proxy_) {
    // Version 2: each generation's private upstreams, and the client connections handed over
    // at a request boundary with the bytes read ahead (hex: JSON strings must be UTF-8).
    json::array upstreams;
    for (const auto& [id, ups] : proxy_->saved_upstreams()) {
      json::array list;
      for (const auto& u : ups)
        list.push_back(json::object{{"fd", u.fd}, {"path", u.path}, {"port", u.port}});
      upstreams.push_back(json::object{{"generation", id},
                                       {"drained", proxy_->drained_generations().count(id) != 0},
                                       {"upstreams", std::move(list)}});
    }
    json::array clients;
    for (const auto& c : handed_clients_) {
      json::object client{
          {"fd", c.fd.get()}, {"listener", c.listener}, {"buffered", to_hex(c.buffered)}};
      if (version >= 3) {
        client["upstream"] = c.upstream ? c.upstream.get() : -1;
        client["generation"] = c.generation;
        client["client_done"] = c.client_done;
        client["upstream_done"] = c.upstream_done;
      }
      clients.push_back(std::move(client));
    }
    // The front's totals go on in the next image (status, /metrics).
    const auto f = proxy_->stats();
    const json::object counts{{"requests", f.requests},
                              {"bad_gateway", f.bad_gateway},
                              {"unavailable", f.unavailable},
                              {"rejected", f.rejected},
                              {"tunnels", f.tunnels},
                              {"accepted", f.accepted},
                              {"connect_failures", f.connect_failures},
                              {"tls_handshake_failures", f.tls_handshake_failures}};
    root["proxy"] = json::object{{"mode", to_string(o_.proxy.kind)},
                                 {"generations", std::move(upstreams)},
                                 {"clients", std::move(clients)},
                                 {"counts", counts}};
  }
  return fmt::format("{}{}\n{}\n", state_header, version, json::serialize(root));
}

std::string supervisor_core::check_state(const std::string& text) const {
  const std::string header = state_header;
  if (text.rfind(header, 0) != 0)
    return fmt::format("the state does not start with \"{}\" ({} bytes)", header, text.size());
  const auto nl = text.find('\n');
  const auto version =
      parse_decimal<int>(std::string_view(text).substr(header.size(), nl - header.size()), 0);
  if (nl == std::string::npos || !version) return "the state's header line is damaged";
  int max = state_version;
  // A test stands in for an older build this way (state.hpp).
  if (const char* m = std::getenv(env_read_max))
    if (auto v = parse_decimal<int>(m, 0)) max = std::min(max, *v);
  if (*version < state_version_min || *version > max)
    return fmt::format("state version {}: this binary ({}) reads versions {} to {}", *version,
                       HANDOFF_VERSION_TEXT, state_version_min, max);
  boost::system::error_code ec;
  auto v = json::parse(std::string_view(text).substr(nl + 1), ec);
  if (ec || !v.is_object()) return "the state is not one JSON object: " + ec.message();
  // Everything read before anything is used: a damaged state is refused whole.
  try {
    const auto& root = v.as_object();
    for (const char* key :
         {"sockets", "fdstore", "notify", "core", "metrics_counts", "generations"})
      if (!root.contains(key)) return fmt::format("the state has no \"{}\"", key);
    if (const auto* k = root.if_contains("ticket_keys")) {
      (void)k->at("fd").to_number<int>();
      (void)at(k->at("next_rotation"));
    }
    for (const auto& g : root.at("generations").as_array()) {
      (void)state_of(str(g.at("state")));
      for (const auto& s : g.at("slots").as_array()) (void)s.at("pid").to_number<pid_t>();
    }
    const auto* p = root.if_contains("proxy");
    const std::string mode = p != nullptr ? str(p->at("mode")) : "none";
    // The same command line on both sides: a front of another kind would be a damaged state.
    if (mode != to_string(o_.proxy.kind) && (p != nullptr || *version >= 2))
      return fmt::format("the state's front is \"{}\", this supervisor's \"{}\"", mode,
                         to_string(o_.proxy.kind));
    if (p != nullptr) {
      for (const auto& g : p->at("generations").as_array()) {
        (void)g.at("generation").to_number<int>();
        (void)g.at("drained").as_bool();
        for (const auto& u : g.at("upstreams").as_array()) {
          (void)u.at("fd").to_number<int>();
          (void)str(u.at("path"));
          (void)u.at("port").to_number<int>();
        }
      }
      if (const auto* n = p->as_object().if_contains("counts"))
        for (const auto& [key, value] : n->as_object()) (void)value.to_number<std::uint64_t>();
      for (const auto& c : p->at("clients").as_array()) {
        (void)c.at("fd").to_number<int>();
        (void)c.at("listener").to_number<std::size_t>();
        if (!from_hex(str(c.at("buffered"))))
          return "the state is damaged: a client's buffered bytes are not hex";
        if (*version >= 3) {
          (void)c.at("upstream").to_number<int>();
          (void)c.at("generation").to_number<int>();
          (void)c.at("client_done").as_bool();
          (void)c.at("upstream_done").as_bool();
        }
      }
    }
  } catch (const std::exception& e) {
    return std::string("the state is damaged: ") + e.what();
  }
  return {};
}

void supervisor_core::load_state(const std::string& text) {
  const auto root = json::parse(std::string_view(text).substr(text.find('\n') + 1)).as_object();
  if (const auto* p = root.if_contains("proxy")) {
    for (const auto& g : p->at("generations").as_array()) {
      const int id = g.at("generation").to_number<int>();
      auto& ups = restored_upstreams_[id];
      for (const auto& u : g.at("upstreams").as_array())
        ups.push_back(
            {u.at("fd").to_number<int>(), str(u.at("path")), u.at("port").to_number<int>()});
      if (g.at("drained").as_bool()) restored_drained_.insert(id);
    }
    if (const auto* n = p->as_object().if_contains("counts")) {
      const auto count = [n](const char* key) {
        const auto* v = n->as_object().if_contains(key);
        return v != nullptr ? v->to_number<std::uint64_t>() : 0;
      };
      restored_counts_.requests = count("requests");
      restored_counts_.bad_gateway = count("bad_gateway");
      restored_counts_.unavailable = count("unavailable");
      restored_counts_.rejected = count("rejected");
      restored_counts_.tunnels = count("tunnels");
      restored_counts_.accepted = count("accepted");
      restored_counts_.connect_failures = count("connect_failures");
      restored_counts_.tls_handshake_failures = count("tls_handshake_failures");
    }
    for (const auto& c : p->at("clients").as_array()) {
      proxy::handed_client h;
      h.fd.reset(c.at("fd").to_number<int>());
      h.listener = c.at("listener").to_number<std::size_t>();
      h.buffered = *from_hex(str(c.at("buffered")));
      if (const auto* u = c.as_object().if_contains("upstream")) {
        if (const int fd = u->to_number<int>(); fd >= 0) h.upstream.reset(fd);
        h.generation = c.at("generation").to_number<int>();
        h.client_done = c.at("client_done").as_bool();
        h.upstream_done = c.at("upstream_done").as_bool();
      }
      handed_clients_.push_back(std::move(h));
    }
  }
  reexecs_ = root.at("reexecs").to_number<int>();
  if (const auto* soft = root.if_contains("nofile_soft"))
    nofile_.original_soft = std::min(soft->to_number<std::uint64_t>(), nofile_.soft);
  self_exe_.reset(root.at("self_exe").to_number<int>());
  self_path_ = str(root.at("self_path"));
  if (!root.at("waiter").is_null()) reexec_waiter_ = root.at("waiter").to_number<std::uint64_t>();
  for (const auto& v : root.at("sockets").as_array()) {
    held_socket h;
    h.fd.reset(v.at("fd").to_number<int>());
    h.name = str(v.at("name"));
    h.where = str(v.at("where"));
    h.inode = v.at("inode").to_number<ino_t>();
    h.unserved_by = v.at("unserved_by").to_number<int>();
    sockets_.push_back(std::move(h));
  }
  for (const auto& v : root.at("fdstore").as_array()) {
    stored_fd f;
    f.fd.reset(v.at("fd").to_number<int>());
    f.name = str(v.at("name"));
    fdstore_.push_back(std::move(f));
  }
  // Optional: the states of builds before --tls-ticket-keys have none.
  if (const auto* k = root.if_contains("ticket_keys")) {
    ticket_keys_.reset(k->at("fd").to_number<int>());
    next_key_rotation_ = at(k->at("next_rotation"));
  }
  const auto& n = root.at("notify");
  notify_.emplace(
      notify_receiver::adopt(unique_fd(n.at("fd").to_number<int>()), str(n.at("address"))));
  if (const auto* c = root.if_contains("control")) {
    control_ = control_sessions(
        control_server::adopt(unique_fd(c->at("fd").to_number<int>()), str(c->at("path")),
                              c->at("dev").to_number<dev_t>(), c->at("ino").to_number<ino_t>()));
    control_.set_next_id(c->at("next_id").to_number<std::uint64_t>());
    for (const auto& v : c->at("sessions").as_array()) {
      control_sessions::session s;
      s.id = v.at("id").to_number<std::uint64_t>();
      s.conn.fd.reset(v.at("fd").to_number<int>());
      s.conn.buffer = str(v.at("buffer"));
      s.conn.answered = v.at("answered").as_bool();
      s.conn.deadline = at(v.at("deadline"));
      control_.adopt(std::move(s));
    }
  }
  if (const auto* m = root.if_contains("metrics"))
    metrics_server_.emplace(metrics_server::adopt(unique_fd(m->at("fd").to_number<int>()),
                                                  str(m->at("where")), str(m->at("path"))));
  const auto& c = root.at("core");
  started_ = at(c.at("started"));
  next_id_ = c.at("next_id").to_number<int>();
  final_generation_ = c.at("final_generation").to_number<int>();
  app_failures_ = c.at("app_failures").to_number<int>();
  if (!c.at("next_start").is_null()) next_start_ = at(c.at("next_start"));
  last_status_ = exit_of(c.at("last_status"));
  reloads_ = c.at("reloads").to_number<int>();
  reloads_failed_ = c.at("reloads_failed").to_number<int>();
  restarts_ = c.at("restarts").to_number<int>();
  last_reload_ = str(c.at("last_reload"));
  pid_file_written_ = c.at("pid_file_written").as_bool();
  own_watchdog_ = std::chrono::microseconds(c.at("own_watchdog_us").to_number<std::int64_t>());
  next_ping_ = at(c.at("next_ping"));
  last_ignored_sender_ = c.at("last_ignored_sender").to_number<pid_t>();
  const auto& recent = c.at("recent_exits").as_array();
  for (std::size_t i = 0; i < recent_exits_.size() && i < recent.size(); ++i)
    recent_exits_[i] = recent[i].to_number<pid_t>();
  recent_exits_next_ = c.at("recent_exits_next").to_number<std::size_t>() % recent_exits_.size();
  const auto& m = root.at("metrics_counts");
  metrics_.reloads_ok = m.at("reloads_ok").to_number<std::uint64_t>();
  counts_of(m.at("reloads_failed"), metrics_.reloads_failed);
  counts_of(m.at("reloads_refused"), metrics_.reloads_refused);
  metrics_.app_restarts = m.at("app_restarts").to_number<std::uint64_t>();
  metrics_.stop_escalations = m.at("stop_escalations").to_number<std::uint64_t>();
  counts_of(m.at("notify_refused"), metrics_.notify_refused);
  counts_of(m.at("ready_buckets"), metrics_.time_to_ready.buckets);
  metrics_.time_to_ready.sum = m.at("ready_sum").to_number<double>();
  metrics_.time_to_ready.count = m.at("ready_count").to_number<std::uint64_t>();
  if (!m.at("last_reload_ok").is_null()) metrics_.last_reload_ok = at(m.at("last_reload_ok"));
  if (!m.at("first_ready").is_null()) metrics_.first_ready = at(m.at("first_ready"));
  for (const auto& v : root.at("generations").as_array()) {
    generation& g = generations_.emplace_back();
    g.id = v.at("id").to_number<int>();
    g.state = state_of(str(v.at("state")));
    g.started = at(v.at("started"));
    g.ready_deadline = at(v.at("ready_deadline"));
    g.settle_deadline = at(v.at("settle_deadline"));
    g.stop_deadline = at(v.at("stop_deadline"));
    g.retire_deadline = at(v.at("retire_deadline"));
    g.stop_sent = v.at("stop_sent").as_bool();
    g.killed = v.at("killed").as_bool();
    g.is_restart = v.at("is_restart").as_bool();
    g.failure = str(v.at("failure"));
    for (const auto& id : v.at("waiters").as_array())
      g.waiters.push_back(id.to_number<std::uint64_t>());
    for (const auto& sv : v.at("slots").as_array()) {
      slot& s = g.slots.emplace_back();
      s.pid = sv.at("pid").to_number<pid_t>();
      s.pgid = sv.at("pgid").to_number<pid_t>();
      for (const auto& p : sv.at("former").as_array()) s.former.push_back(p.to_number<pid_t>());
      s.leader_reaped = sv.at("leader_reaped").as_bool();
      s.ready = sv.at("ready").as_bool();
      s.stopping = sv.at("stopping").as_bool();
      s.reloading = sv.at("reloading").as_bool();
      s.started = at(sv.at("started"));
      s.ready_at = at(sv.at("ready_at"));
      s.last_watchdog = at(sv.at("last_watchdog"));
      s.ready_deadline = at(sv.at("ready_deadline"));
      s.watchdog_fired = sv.at("watchdog_fired").as_bool();
      s.restart_at = at(sv.at("restart_at"));
      s.watchdog = std::chrono::milliseconds(sv.at("watchdog_ms").to_number<std::int64_t>());
      s.last_exit = exit_of(sv.at("last_exit"));
      s.status_text = str(sv.at("status_text"));
      s.restarts = sv.at("restarts").to_number<int>();
      s.failures_in_a_row = sv.at("failures_in_a_row").to_number<int>();
    }
  }
}

}  // namespace handoff::supervisor
