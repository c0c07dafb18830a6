#include "handoff/http/stats.hpp"

#include <stdexcept>

namespace handoff::http {

namespace {

bool valid_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

struct writer {
  std::string& out;
  std::string_view prefix;

  void head(std::string_view name, std::string_view type, std::string_view help) {
    out.append("# HELP ").append(prefix).append("_").append(name).append(" ").append(help);
    out.append("\n# TYPE ").append(prefix).append("_").append(name).append(" ").append(type);
    out.append("\n");
  }
  void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
    out.append(prefix).append("_").append(name);
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ").append(std::to_string(value)).append("\n");
  }
  void one(std::string_view name, std::string_view type, std::string_view help,
           std::uint64_t value) {
    head(name, type, help);
    sample(name, {}, value);
  }
};

}  // namespace

void write_prometheus(std::string& out, const server_stats& s, std::string_view prefix) {
  if (!valid_name(prefix))
    throw std::invalid_argument("write_prometheus: \"" + std::string(prefix) +
                                "\" is not a metric name");
  writer w{out, prefix};
  w.one("connections_accepted_total", "counter", "Connections accepted.", s.connections_accepted);
  w.one("connections_open", "gauge", "Connections open now.", s.connections_open);
  w.one("requests_total", "counter", "Requests answered by the handler.", s.requests);
  w.one("requests_in_flight", "gauge", "Requests being read, handled or answered now.",
        s.requests_in_flight);
  w.head("errors_total", "counter",
         "Requests or connections that failed, by class: the server's 400, 413 and 431 answers, "
         "500 for a handler that threw, timeout, tls_handshake.");
  w.sample("errors_total", "class=\"400\"", s.bad_requests);
  w.sample("errors_total", "class=\"413\"", s.payload_too_large);
  w.sample("errors_total", "class=\"431\"", s.header_fields_too_large);
  w.sample("errors_total", "class=\"500\"", s.handler_exceptions);
  w.sample("errors_total", "class=\"timeout\"", s.timeouts);
  w.sample("errors_total", "class=\"tls_handshake\"", s.tls_handshake_failures);
  w.one("idle_closed_total", "counter",
        "Keep-alive connections closed after the idle timeout without a next request.",
        s.idle_closed);
  w.one("draining", "gauge", "1 once the server drains.", s.draining ? 1 : 0);
  w.head("drain_connections_total", "counter",
         "How connections open during the drain were ended by the server: closed_after_response "
         "(Connection: close), closed_idle (idle past the grace), aborted (at the deadline).");
  w.sample("drain_connections_total", "outcome=\"closed_after_response\"",
           s.drain_closed_after_response);
  w.sample("drain_connections_total", "outcome=\"closed_idle\"", s.drain_closed_idle);
  w.sample("drain_connections_total", "outcome=\"aborted\"", s.drain_aborted_connections);
  w.one("drain_requests_aborted_total", "counter",
        "Requests in flight aborted at the drain deadline.", s.drain_aborted_requests);
}

}  // namespace handoff::http
