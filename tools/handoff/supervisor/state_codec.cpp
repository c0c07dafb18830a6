// saved_state as the text of state.hpp's format, and back. The decoder reads every field of
// every version it takes into the typed state, and refuses the whole state at the first field
// that is missing or of the wrong type or range, naming it; it never throws.
#include <fmt/core.h>

#include <algorithm>
#include <boost/json.hpp>
#include <set>
#include <stdexcept>

#include "handoff/decimal.hpp"
#include "supervisor/byte_text.hpp"
#include "supervisor/state.hpp"

namespace handoff::supervisor {

namespace json = boost::json;

namespace {

// ---- writing

class writer {
 public:
  // A byte string: a JSON string when it is UTF-8, else {"hex": ...} (version 4).
  json::value bytes(std::string_view s) {
    if (valid_utf8(s)) return json::string(s);
    needs_hex_ = true;
    return json::object{{"hex", hex_of(s)}};
  }
  bool needs_hex() const noexcept { return needs_hex_; }

 private:
  bool needs_hex_ = false;
};

json::value optional_time(const std::optional<std::int64_t>& t) {
  return t ? json::value(*t) : json::value(nullptr);
}

json::value exit_json(const std::optional<saved_state::exit_info>& s) {
  if (!s) return nullptr;
  return json::object{{"exited", s->exited}, {"code", s->code}, {"signal", s->signal}};
}

template <class T>
json::array array_of(const std::vector<T>& v) {
  json::array out;
  for (const auto& n : v) out.push_back(n);
  return out;
}

json::object write_root(const saved_state& s, int structural_version, writer& w) {
  json::object root;
  root["version"] = structural_version;  // first, as every version wrote it; set at the end
  root["handoff"] = w.bytes(s.handoff);
  root["reexecs"] = s.reexecs;
  if (s.nofile_soft) root["nofile_soft"] = *s.nofile_soft;
  root["self_exe"] = s.self_exe;
  root["self_path"] = w.bytes(s.self_path);
  root["waiter"] = s.waiter ? json::value(*s.waiter) : json::value(nullptr);
  json::array sockets;
  for (const auto& k : s.sockets)
    sockets.push_back(json::object{{"fd", k.fd},
                                   {"name", w.bytes(k.name)},
                                   {"where", w.bytes(k.where)},
                                   {"inode", k.inode},
                                   {"unserved_by", k.unserved_by}});
  root["sockets"] = std::move(sockets);
  json::array store;
  for (const auto& f : s.fdstore)
    store.push_back(json::object{{"fd", f.fd}, {"name", w.bytes(f.name)}});
  root["fdstore"] = std::move(store);
  if (s.keys)
    root["ticket_keys"] =
        json::object{{"fd", s.keys->fd}, {"next_rotation", s.keys->next_rotation}};
  root["notify"] =
      json::object{{"fd", s.notify_socket.fd}, {"address", w.bytes(s.notify_socket.address)}};
  if (const auto& c = s.control_socket) {
    json::array sessions;
    for (const auto& x : c->sessions)
      sessions.push_back(json::object{{"id", x.id},
                                      {"fd", x.fd},
                                      {"buffer", w.bytes(x.buffer)},
                                      {"answered", x.answered},
                                      {"deadline", x.deadline}});
    root["control"] = json::object{{"fd", c->fd},           {"path", w.bytes(c->path)},
                                   {"dev", c->dev},         {"ino", c->ino},
                                   {"next_id", c->next_id}, {"sessions", std::move(sessions)}};
  }
  if (const auto& m = s.metrics)
    root["metrics"] =
        json::object{{"fd", m->fd}, {"where", w.bytes(m->where)}, {"path", w.bytes(m->path)}};
  const auto& c = s.core_state;
  root["core"] = json::object{{"started", c.started},
                              {"next_id", c.next_id},
                              {"final_generation", c.final_generation},
                              {"app_failures", c.app_failures},
                              {"next_start", optional_time(c.next_start)},
                              {"last_status", exit_json(c.last_status)},
                              {"reloads", c.reloads},
                              {"reloads_failed", c.reloads_failed},
                              {"restarts", c.restarts},
                              {"last_reload", w.bytes(c.last_reload)},
                              {"pid_file_written", c.pid_file_written},
                              {"own_watchdog_us", c.own_watchdog_us},
                              {"next_ping", c.next_ping},
                              {"last_ignored_sender", c.last_ignored_sender},
                              {"recent_exits", array_of(c.recent_exits)},
                              {"recent_exits_next", c.recent_exits_next}};
  const auto& m = s.counts;
  root["metrics_counts"] = json::object{{"reloads_ok", m.reloads_ok},
                                        {"reloads_failed", array_of(m.reloads_failed)},
                                        {"reloads_refused", array_of(m.reloads_refused)},
                                        {"app_restarts", m.app_restarts},
                                        {"stop_escalations", m.stop_escalations},
                                        {"notify_refused", array_of(m.notify_refused)},
                                        {"ready_buckets", array_of(m.ready_buckets)},
                                        {"ready_sum", m.ready_sum},
                                        {"ready_count", m.ready_count},
                                        {"last_reload_ok", optional_time(m.last_reload_ok)},
                                        {"first_ready", optional_time(m.first_ready)}};
  json::array generations;
  for (const auto& g : s.generations) {
    json::array slots;
    for (const auto& x : g.slots)
      slots.push_back(json::object{{"pid", x.pid},
                                   {"pgid", x.pgid},
                                   {"former", array_of(x.former)},
                                   {"leader_reaped", x.leader_reaped},
                                   {"ready", x.ready},
                                   {"stopping", x.stopping},
                                   {"reloading", x.reloading},
                                   {"started", x.started},
                                   {"ready_at", x.ready_at},
                                   {"last_watchdog", x.last_watchdog},
                                   {"ready_deadline", x.ready_deadline},
                                   {"watchdog_fired", x.watchdog_fired},
                                   {"restart_at", x.restart_at},
                                   {"watchdog_ms", x.watchdog_ms},
                                   {"last_exit", exit_json(x.last_exit)},
                                   {"status_text", w.bytes(x.status_text)},
                                   {"restarts", x.restarts},
                                   {"failures_in_a_row", x.failures_in_a_row}});
    generations.push_back(json::object{{"id", g.id},
                                       {"state", g.state},
                                       {"started", g.started},
                                       {"ready_deadline", g.ready_deadline},
                                       {"settle_deadline", g.settle_deadline},
                                       {"stop_deadline", g.stop_deadline},
                                       {"retire_deadline", g.retire_deadline},
                                       {"stop_sent", g.stop_sent},
                                       {"killed", g.killed},
                                       {"is_restart", g.is_restart},
                                       {"failure", w.bytes(g.failure)},
                                       {"waiters", array_of(g.waiters)},
                                       {"slots", std::move(slots)}});
  }
  root["generations"] = std::move(generations);
  if (const auto& p = s.front) {
    json::array upstreams;
    for (const auto& g : p->generations) {
      json::array list;
      for (const auto& u : g.upstreams)
        list.push_back(json::object{{"fd", u.fd}, {"path", w.bytes(u.path)}, {"port", u.port}});
      upstreams.push_back(json::object{
          {"generation", g.generation}, {"drained", g.drained}, {"upstreams", std::move(list)}});
    }
    json::array clients;
    for (const auto& x : p->clients) {
      json::object client{{"fd", x.fd}, {"listener", x.listener}, {"buffered", hex_of(x.buffered)}};
      if (x.tcp) {
        client["upstream"] = x.tcp->upstream;
        client["generation"] = x.tcp->generation;
        client["client_done"] = x.tcp->client_done;
        client["upstream_done"] = x.tcp->upstream_done;
      }
      clients.push_back(std::move(client));
    }
    json::object proxy{{"mode", w.bytes(p->mode)},
                       {"generations", std::move(upstreams)},
                       {"clients", std::move(clients)}};
    if (const auto& n = p->counts)
      proxy["counts"] = json::object{{"requests", n->requests},
                                     {"bad_gateway", n->bad_gateway},
                                     {"unavailable", n->unavailable},
                                     {"rejected", n->rejected},
                                     {"tunnels", n->tunnels},
                                     {"accepted", n->accepted},
                                     {"connect_failures", n->connect_failures},
                                     {"tls_handshake_failures", n->tls_handshake_failures}};
    root["proxy"] = std::move(proxy);
  }
  return root;
}

// ---- reading

struct damaged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& path, std::string_view what) {
  throw damaged(fmt::format("{}: {}", path, what));
}

std::string at_index(const std::string& path, std::size_t i) {
  return fmt::format("{}[{}]", path, i);
}

std::string at_key(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

class reader {
 public:
  explicit reader(int version) : version_(version) {}
  int version() const noexcept { return version_; }

  const json::object& object(const json::value& v, const std::string& path) const {
    if (!v.is_object()) fail(path, "not an object");
    return v.get_object();
  }
  const json::array& array(const json::value& v, const std::string& path) const {
    if (!v.is_array()) fail(path, "not an array");
    return v.get_array();
  }
  // A key that must be there.
  const json::value& field(const json::object& o, std::string_view key,
                           const std::string& path) const {
    const auto* v = o.if_contains(key);
    if (v == nullptr) fail(at_key(path, key), "missing");
    return *v;
  }
  template <class T>
  T number(const json::value& v, const std::string& path) const {
    if (!v.is_number()) fail(path, "not a number");
    boost::system::error_code ec;
    const T n = v.to_number<T>(ec);
    if (ec) fail(path, fmt::format("out of range ({})", ec.message()));
    return n;
  }
  template <class T>
  T number(const json::object& o, std::string_view key, const std::string& path) const {
    return number<T>(field(o, key, path), at_key(path, key));
  }
  bool boolean(const json::object& o, std::string_view key, const std::string& path) const {
    const auto& v = field(o, key, path);
    if (!v.is_bool()) fail(at_key(path, key), "not true or false");
    return v.get_bool();
  }
  int fd(const json::object& o, std::string_view key, const std::string& path,
         bool may_be_none = false) {
    const int n = number<int>(o, key, path);
    if (n == -1 && may_be_none) return n;
    if (n < 0) fail(at_key(path, key), fmt::format("{} is not an fd", n));
    if (!fds_.insert(n).second) fail(at_key(path, key), fmt::format("fd {} named twice", n));
    return n;
  }
  std::int64_t time(const json::object& o, std::string_view key, const std::string& path) const {
    return number<std::int64_t>(o, key, path);
  }
  std::optional<std::int64_t> optional_time(const json::object& o, std::string_view key,
                                            const std::string& path) const {
    const auto& v = field(o, key, path);
    if (v.is_null()) return std::nullopt;
    return number<std::int64_t>(v, at_key(path, key));
  }
  std::string bytes(const json::value& v, const std::string& path) const {
    if (v.is_string()) return std::string(v.get_string());
    if (version_ >= 4 && v.is_object()) {
      const auto& o = v.get_object();
      const auto* h = o.if_contains("hex");
      if (o.size() == 1 && h != nullptr && h->is_string())
        if (auto b = bytes_of_hex(h->get_string())) return std::move(*b);
      fail(path, "not a byte string ({\"hex\": an even number of lowercase hex digits})");
    }
    fail(path, "not a string");
  }
  std::string bytes(const json::object& o, std::string_view key, const std::string& path) const {
    return bytes(field(o, key, path), at_key(path, key));
  }
  template <class T>
  std::vector<T> numbers(const json::object& o, std::string_view key,
                         const std::string& path) const {
    const std::string here = at_key(path, key);
    const auto& a = array(field(o, key, path), here);
    std::vector<T> out;
    out.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) out.push_back(number<T>(a[i], at_index(here, i)));
    return out;
  }
  std::optional<saved_state::exit_info> exit_of(const json::object& o, std::string_view key,
                                                const std::string& path) const {
    const auto& v = field(o, key, path);
    if (v.is_null()) return std::nullopt;
    const std::string here = at_key(path, key);
    const auto& e = object(v, here);
    saved_state::exit_info s;
    s.exited = boolean(e, "exited", here);
    s.code = number<int>(e, "code", here);
    s.signal = number<int>(e, "signal", here);
    return s;
  }
  // Iterates the objects of the array at `key`.
  template <class F>
  void each(const json::object& o, std::string_view key, const std::string& path, F&& f) const {
    const std::string here = at_key(path, key);
    const auto& a = array(field(o, key, path), here);
    for (std::size_t i = 0; i < a.size(); ++i) {
      const std::string item = at_index(here, i);
      f(object(a[i], item), item);
    }
  }

 private:
  int version_;
  std::set<int> fds_;
};

saved_state::slot read_slot(reader& r, const json::object& o, const std::string& p) {
  saved_state::slot s;
  s.pid = r.number<pid_t>(o, "pid", p);
  s.pgid = r.number<pid_t>(o, "pgid", p);
  if (s.pid < 0 || s.pgid < 0) fail(p, "a negative pid");
  s.former = r.numbers<pid_t>(o, "former", p);
  s.leader_reaped = r.boolean(o, "leader_reaped", p);
  s.ready = r.boolean(o, "ready", p);
  s.stopping = r.boolean(o, "stopping", p);
  s.reloading = r.boolean(o, "reloading", p);
  s.started = r.time(o, "started", p);
  s.ready_at = r.time(o, "ready_at", p);
  s.last_watchdog = r.time(o, "last_watchdog", p);
  s.ready_deadline = r.time(o, "ready_deadline", p);
  s.watchdog_fired = r.boolean(o, "watchdog_fired", p);
  s.restart_at = r.time(o, "restart_at", p);
  s.watchdog_ms = r.number<std::int64_t>(o, "watchdog_ms", p);
  s.last_exit = r.exit_of(o, "last_exit", p);
  s.status_text = r.bytes(o, "status_text", p);
  s.restarts = r.number<int>(o, "restarts", p);
  s.failures_in_a_row = r.number<int>(o, "failures_in_a_row", p);
  return s;
}

saved_state::generation read_generation(reader& r, const json::object& o, const std::string& p) {
  saved_state::generation g;
  g.id = r.number<int>(o, "id", p);
  g.state = r.bytes(o, "state", p);
  if (std::find(std::begin(generation_state_names), std::end(generation_state_names), g.state) ==
      std::end(generation_state_names))
    fail(at_key(p, "state"), fmt::format("unknown generation state \"{}\"", escaped_text(g.state)));
  g.started = r.time(o, "started", p);
  g.ready_deadline = r.time(o, "ready_deadline", p);
  g.settle_deadline = r.time(o, "settle_deadline", p);
  g.stop_deadline = r.time(o, "stop_deadline", p);
  g.retire_deadline = r.time(o, "retire_deadline", p);
  g.stop_sent = r.boolean(o, "stop_sent", p);
  g.killed = r.boolean(o, "killed", p);
  g.is_restart = r.boolean(o, "is_restart", p);
  g.failure = r.bytes(o, "failure", p);
  g.waiters = r.numbers<std::uint64_t>(o, "waiters", p);
  r.each(o, "slots", p, [&](const json::object& x, const std::string& xp) {
    g.slots.push_back(read_slot(r, x, xp));
  });
  return g;
}

saved_state::proxy read_proxy(reader& r, const json::object& o, const std::string& p,
                              std::size_t sockets) {
  saved_state::proxy f;
  f.mode = r.bytes(o, "mode", p);
  r.each(o, "generations", p, [&](const json::object& g, const std::string& gp) {
    auto& pg = f.generations.emplace_back();
    pg.generation = r.number<int>(g, "generation", gp);
    pg.drained = r.boolean(g, "drained", gp);
    r.each(g, "upstreams", gp, [&](const json::object& u, const std::string& up) {
      pg.upstreams.push_back(
          {r.fd(u, "fd", up, true), r.bytes(u, "path", up), r.number<int>(u, "port", up)});
    });
  });
  if (const auto* n = o.if_contains("counts")) {
    const std::string np = at_key(p, "counts");
    const auto& c = r.object(*n, np);
    const auto count = [&](std::string_view key) -> std::uint64_t {
      return c.contains(key) ? r.number<std::uint64_t>(c, key, np) : 0;
    };
    f.counts =
        saved_state::proxy_counts{count("requests"),         count("bad_gateway"),
                                  count("unavailable"),      count("rejected"),
                                  count("tunnels"),          count("accepted"),
                                  count("connect_failures"), count("tls_handshake_failures")};
  }
  r.each(o, "clients", p, [&](const json::object& c, const std::string& cp) {
    auto& x = f.clients.emplace_back();
    x.fd = r.fd(c, "fd", cp);
    x.listener = r.number<std::uint64_t>(c, "listener", cp);
    if (x.listener >= sockets)
      fail(at_key(cp, "listener"),
           fmt::format("no socket {} (the state has {})", x.listener, sockets));
    const auto& hex = r.field(c, "buffered", cp);
    auto buffered = hex.is_string() ? bytes_of_hex(hex.get_string()) : std::nullopt;
    if (!buffered) fail(at_key(cp, "buffered"), "not hex");
    x.buffered = std::move(*buffered);
    // Version 3 wrote them for every client; version 4 for those of --proxy tcp.
    if (r.version() == 3 || (r.version() >= 4 && c.contains("upstream"))) {
      saved_state::tcp_relay t;
      t.upstream = r.fd(c, "upstream", cp, true);
      t.generation = r.number<int>(c, "generation", cp);
      t.client_done = r.boolean(c, "client_done", cp);
      t.upstream_done = r.boolean(c, "upstream_done", cp);
      x.tcp = t;
    }
  });
  return f;
}

saved_state read_root(reader& r, const json::object& o) {
  const std::string p;
  saved_state s;
  s.version = r.version();
  s.handoff = o.contains("handoff") ? r.bytes(o, "handoff", p) : std::string();
  s.reexecs = r.number<int>(o, "reexecs", p);
  if (o.contains("nofile_soft")) s.nofile_soft = r.number<std::uint64_t>(o, "nofile_soft", p);
  s.self_exe = r.fd(o, "self_exe", p);
  s.self_path = r.bytes(o, "self_path", p);
  if (const auto& w = r.field(o, "waiter", p); !w.is_null())
    s.waiter = r.number<std::uint64_t>(w, "waiter");
  r.each(o, "sockets", p, [&](const json::object& x, const std::string& xp) {
    s.sockets.push_back({r.fd(x, "fd", xp), r.bytes(x, "name", xp), r.bytes(x, "where", xp),
                         r.number<std::uint64_t>(x, "inode", xp),
                         r.number<int>(x, "unserved_by", xp)});
  });
  r.each(o, "fdstore", p, [&](const json::object& x, const std::string& xp) {
    s.fdstore.push_back({r.fd(x, "fd", xp), r.bytes(x, "name", xp)});
  });
  // Optional: the states of builds before --tls-ticket-keys have none.
  if (const auto* k = o.if_contains("ticket_keys")) {
    const auto& x = r.object(*k, "ticket_keys");
    s.keys = saved_state::ticket_keys{r.fd(x, "fd", "ticket_keys"),
                                      r.time(x, "next_rotation", "ticket_keys")};
  }
  {
    const auto& x = r.object(r.field(o, "notify", p), "notify");
    s.notify_socket = {r.fd(x, "fd", "notify"), r.bytes(x, "address", "notify")};
  }
  if (const auto* c = o.if_contains("control")) {
    const std::string cp = "control";
    const auto& x = r.object(*c, cp);
    auto& k = *(s.control_socket = saved_state::control{});  // not emplace(): clang 14 (state.cpp)
    k.fd = r.fd(x, "fd", cp);
    k.path = r.bytes(x, "path", cp);
    k.dev = r.number<std::uint64_t>(x, "dev", cp);
    k.ino = r.number<std::uint64_t>(x, "ino", cp);
    k.next_id = r.number<std::uint64_t>(x, "next_id", cp);
    r.each(x, "sessions", cp, [&](const json::object& v, const std::string& vp) {
      k.sessions.push_back({r.number<std::uint64_t>(v, "id", vp), r.fd(v, "fd", vp),
                            r.bytes(v, "buffer", vp), r.boolean(v, "answered", vp),
                            r.time(v, "deadline", vp)});
    });
  }
  if (const auto* m = o.if_contains("metrics")) {
    const auto& x = r.object(*m, "metrics");
    s.metrics = saved_state::metrics_listener{
        r.fd(x, "fd", "metrics"), r.bytes(x, "where", "metrics"), r.bytes(x, "path", "metrics")};
  }
  {
    const std::string cp = "core";
    const auto& x = r.object(r.field(o, "core", p), cp);
    auto& c = s.core_state;
    c.started = r.time(x, "started", cp);
    c.next_id = r.number<int>(x, "next_id", cp);
    c.final_generation = r.number<int>(x, "final_generation", cp);
    c.app_failures = r.number<int>(x, "app_failures", cp);
    c.next_start = r.optional_time(x, "next_start", cp);
    c.last_status = r.exit_of(x, "last_status", cp);
    c.reloads = r.number<int>(x, "reloads", cp);
    c.reloads_failed = r.number<int>(x, "reloads_failed", cp);
    c.restarts = r.number<int>(x, "restarts", cp);
    c.last_reload = r.bytes(x, "last_reload", cp);
    c.pid_file_written = r.boolean(x, "pid_file_written", cp);
    c.own_watchdog_us = r.number<std::int64_t>(x, "own_watchdog_us", cp);
    c.next_ping = r.time(x, "next_ping", cp);
    c.last_ignored_sender = r.number<pid_t>(x, "last_ignored_sender", cp);
    c.recent_exits = r.numbers<pid_t>(x, "recent_exits", cp);
    c.recent_exits_next = r.number<std::uint64_t>(x, "recent_exits_next", cp);
  }
  {
    const std::string mp = "metrics_counts";
    const auto& x = r.object(r.field(o, "metrics_counts", p), mp);
    auto& m = s.counts;
    m.reloads_ok = r.number<std::uint64_t>(x, "reloads_ok", mp);
    m.reloads_failed = r.numbers<std::uint64_t>(x, "reloads_failed", mp);
    m.reloads_refused = r.numbers<std::uint64_t>(x, "reloads_refused", mp);
    m.app_restarts = r.number<std::uint64_t>(x, "app_restarts", mp);
    m.stop_escalations = r.number<std::uint64_t>(x, "stop_escalations", mp);
    m.notify_refused = r.numbers<std::uint64_t>(x, "notify_refused", mp);
    m.ready_buckets = r.numbers<std::uint64_t>(x, "ready_buckets", mp);
    m.ready_sum = r.number<double>(x, "ready_sum", mp);
    m.ready_count = r.number<std::uint64_t>(x, "ready_count", mp);
    m.last_reload_ok = r.optional_time(x, "last_reload_ok", mp);
    m.first_ready = r.optional_time(x, "first_ready", mp);
  }
  r.each(o, "generations", p, [&](const json::object& x, const std::string& xp) {
    s.generations.push_back(read_generation(r, x, xp));
  });
  if (const auto* f = o.if_contains("proxy"))
    s.front = read_proxy(r, r.object(*f, "proxy"), "proxy", s.sockets.size());
  return s;
}

}  // namespace

encoded_state encode_state(const saved_state& s) {
  // Version 3 wrote the fields of a TCP relay for every client, version 2 for none: a state
  // with some of each (which this supervisor never writes) needs 4, which has them where
  // "upstream" is.
  int version = 1;
  if (s.front) {
    bool any_tcp = false, all_tcp = true;
    for (const auto& c : s.front->clients) {
      any_tcp = any_tcp || c.tcp.has_value();
      all_tcp = all_tcp && c.tcp.has_value();
    }
    if (!any_tcp && s.front->mode != "tcp")
      version = 2;
    else
      version = all_tcp ? 3 : 4;
  }
  writer w;
  json::object root = write_root(s, version, w);
  if (w.needs_hex()) version = 4;
  root["version"] = version;
  return {version, fmt::format("{}{}\n{}\n", state_header, version, json::serialize(root))};
}

result<saved_state> decode_state(std::string_view text, int max_version) {
  const auto refuse = [](std::string why) {
    return result<saved_state>(error::make(errc::invalid_message, std::move(why)));
  };
  const std::string_view header = state_header;
  if (text.substr(0, header.size()) != header)
    return refuse(
        fmt::format("the state does not start with \"{}\" ({} bytes)", header, text.size()));
  const auto nl = text.find('\n');
  if (nl == std::string_view::npos) return refuse("the state's header line is damaged");
  const auto version = parse_decimal<int>(text.substr(header.size(), nl - header.size()), 0);
  if (!version) return refuse("the state's header line is damaged");
  max_version = std::min(max_version, state_version);
  if (*version < state_version_min || *version > max_version)
    return refuse(fmt::format("state version {}: this binary reads versions {} to {}", *version,
                              state_version_min, max_version));
  // Builds before version 4 wrote an app's bytes into JSON strings as they came.
  json::parse_options options;
  options.allow_invalid_utf8 = true;
  boost::system::error_code ec;
  const auto v = json::parse(text.substr(nl + 1), ec, {}, options);
  if (ec) return refuse("the state is not JSON: " + ec.message());
  if (!v.is_object()) return refuse("the state is not one JSON object");
  try {
    reader r(*version);
    return read_root(r, v.get_object());
  } catch (const damaged& e) {
    return refuse(std::string("the state is damaged: ") + e.what());
  }
}

std::vector<int> state_fds_of(const saved_state& s) {
  std::vector<int> fds;
  for (const auto& k : s.sockets) fds.push_back(k.fd);
  for (const auto& f : s.fdstore) fds.push_back(f.fd);
  fds.push_back(s.notify_socket.fd);
  if (s.control_socket) {
    fds.push_back(s.control_socket->fd);
    for (const auto& x : s.control_socket->sessions) fds.push_back(x.fd);
  }
  if (s.metrics) fds.push_back(s.metrics->fd);
  fds.push_back(s.self_exe);
  if (s.keys) fds.push_back(s.keys->fd);
  if (s.front) {
    for (const auto& g : s.front->generations)
      for (const auto& u : g.upstreams)
        if (u.fd >= 0) fds.push_back(u.fd);
    for (const auto& c : s.front->clients) {
      fds.push_back(c.fd);
      if (c.tcp && c.tcp->upstream >= 0) fds.push_back(c.tcp->upstream);
    }
  }
  return fds;
}

}  // namespace handoff::supervisor
