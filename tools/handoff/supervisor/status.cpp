// `handoff status`: the supervisor's state as text for a person, or as one JSON object
// (Boost.JSON: one writer, one escaping rule). Bytes from outside (an app's STATUS=, names,
// paths) need not be UTF-8: JSON gets them as valid UTF-8 (U+FFFD for what is not), the text
// escaped (byte_text.hpp), so that the answer is always valid JSON and one line per item.
#include <fmt/core.h>
#include <unistd.h>

#include <boost/json.hpp>

#include "supervisor/byte_text.hpp"
#include "supervisor/core.hpp"

namespace handoff::supervisor {

namespace json = boost::json;

namespace {

std::string text_of(std::string_view bytes) { return utf8_or_replacement(bytes); }

}  // namespace

std::string supervisor_core::status_text(bool as_json) const {
  const auto now = os_.now();
  // The front's counts are taken on its own thread; one snapshot serves the whole answer.
  std::optional<proxy::front_stats> front;
  if (proxy_) front = proxy_->stats();
  auto of = [&front](int id) -> const proxy::generation_stats* {
    if (front)
      for (const auto& s : front->generations)
        if (s.generation == id) return &s;
    return nullptr;
  };
  if (!as_json) {
    std::string out = fmt::format(
        "{}: supervisor pid {}, up {} s, {} reloads ({} failed), {} "
        "restarts\n",
        escaped_text(o_.name), ::getpid(), ms_since(started_, now) / 1000, reloads_,
        reloads_failed_, restarts_);
    out += fmt::format("{}, re-executed {} times{}\n", HANDOFF_VERSION_TEXT, reexecs_,
                       last_reexec_.empty() ? "" : "; last reexec: " + escaped_text(last_reexec_));
    const auto open_fds = open_fd_count();
    out += fmt::format(
        "open files: {} of {}{}\n", open_fds ? std::to_string(*open_fds) : std::string("(unknown)"),
        nofile_.soft,
        nofile_.raised()
            ? fmt::format(" (raised from {}, which the app gets)", nofile_.original_soft)
            : std::string());
    for (const auto& s : sockets_)
      out += fmt::format(
          "socket {}{}{}\n", s.name.empty() ? "" : escaped_text(s.name) + "=",
          escaped_text(s.where),
          s.unserved_by == 0
              ? ""
              : fmt::format(" NOT SERVED: no process of generation {} holds it", s.unserved_by));
    for (const auto& g : generations_) {
      out += fmt::format("generation {} {}, up {} ms", g.id, to_string(g.state),
                         ms_since(g.started, now));
      if (const auto* p = of(g.id))
        out += fmt::format(", {} requests in flight, {} upstream connections ({} idle)",
                           p->in_flight, p->upstream_connections, p->idle);
      out += "\n";
      for (const auto& s : g.slots) {
        if (s.running())
          out +=
              fmt::format("  pid {} {}{}, up {} ms, {} restarts{}\n", s.pid,
                          s.ready ? "ready"
                          : s.heard || o_.ready != ready_mode::notify
                              ? "not ready"
                              : "not ready (nothing on NOTIFY_SOCKET yet)",
                          s.reloading ? " (reloading)" : "", ms_since(s.started, now), s.restarts,
                          s.status_text.empty() ? "" : ", status: " + escaped_text(s.status_text));
        else
          out += fmt::format("  (no process{}), {} restarts\n",
                             s.restart_at != clock::time_point{} ? ": restart pending" : "",
                             s.restarts);
      }
    }
    if (front)
      out += fmt::format(
          "proxy {}: {} requests, {} answered 502, {} answered 503, {} client connections open "
          "({} accepted), at most {}{}\n",
          to_string(o_.proxy.kind), front->requests, front->bad_gateway, front->unavailable,
          front->client_connections, front->accepted, front->max_connections,
          front->limit_reached + front->accept_failures == 0
              ? std::string()
              : fmt::format(" (accepting stopped {} times at the bound, {} times out of fds)",
                            front->limit_reached, front->accept_failures));
    if (stopping_) out += "stopping\n";
    out += "last reload: " +
           (last_reload_.empty() ? std::string("none") : escaped_text(last_reload_)) + "\n";
    if (!last_start_failure_.empty())
      out += "last start failure: " + escaped_text(last_start_failure_) + "\n";
    return out;
  }
  json::object root;
  root["name"] = text_of(o_.name);
  root["pid"] = ::getpid();
  root["version"] = HANDOFF_VERSION_TEXT;
  root["reexecs"] = reexecs_;
  root["last_reexec"] = text_of(last_reexec_);
  root["uptime_ms"] = ms_since(started_, now);
  root["reloads"] = reloads_;
  root["reloads_failed"] = reloads_failed_;
  root["restarts"] = restarts_;
  root["stopping"] = stopping_;
  json::object files{
      {"limit", nofile_.soft}, {"hard_limit", nofile_.hard}, {"app_limit", nofile_.original_soft}};
  if (const auto open_fds = open_fd_count())
    files["open"] = *open_fds;
  else
    files["open"] = nullptr;
  root["open_files"] = std::move(files);
  json::array sockets;
  for (const auto& s : sockets_)
    sockets.push_back(json::object{
        {"name", text_of(s.name)}, {"address", text_of(s.where)}, {"served", s.unserved_by == 0}});
  root["sockets"] = std::move(sockets);
  json::array generations;
  for (const auto& g : generations_) {
    json::array processes;
    for (const auto& s : g.slots)
      processes.push_back(json::object{{"pid", s.pid},
                                       {"ready", s.ready},
                                       {"notified", s.heard},
                                       {"uptime_ms", s.running() ? ms_since(s.started, now) : 0},
                                       {"restarts", s.restarts},
                                       {"status", text_of(s.status_text)}});
    json::object entry{{"id", g.id},
                       {"state", to_string(g.state)},
                       {"uptime_ms", ms_since(g.started, now)},
                       {"processes", std::move(processes)}};
    if (const auto* p = of(g.id)) {
      entry["requests_in_flight"] = p->in_flight;
      entry["upstream_connections"] = p->upstream_connections;
      entry["upstream_idle"] = p->idle;
      entry["requests_queued"] = p->queued;  // --upstream-max-connections
    } else if (front) {
      entry["requests_in_flight"] = 0;
      entry["upstream_connections"] = 0;
      entry["upstream_idle"] = 0;
      entry["requests_queued"] = 0;
    }
    generations.push_back(std::move(entry));
  }
  root["generations"] = std::move(generations);
  if (front)
    root["proxy"] = json::object{{"mode", to_string(o_.proxy.kind)},
                                 {"requests", front->requests},
                                 {"bad_gateway", front->bad_gateway},
                                 {"retried", front->retried},
                                 {"unavailable", front->unavailable},
                                 {"rejected", front->rejected},
                                 {"tunnels", front->tunnels},
                                 {"client_connections", front->client_connections},
                                 {"accepted", front->accepted},
                                 {"connect_failures", front->connect_failures},
                                 {"tls_handshake_failures", front->tls_handshake_failures},
                                 {"max_connections", front->max_connections},
                                 {"limit_reached", front->limit_reached},
                                 {"accept_failures", front->accept_failures}};
  root["last_reload"] = text_of(last_reload_);
  root["last_start_failure"] = text_of(last_start_failure_);
  return json::serialize(root) + "\n";
}

}  // namespace handoff::supervisor
