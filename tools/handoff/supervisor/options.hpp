// The settings of `handoff run`, as parsed from its command line (supervisor_command.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace handoff::supervisor {

enum class ready_mode { notify, http, tcp, delay };
enum class restart_policy { on_failure, always, never };
enum class log_format { text, json };
// --proxy: none (the app gets the public sockets), http, https (TLS terminated by the
// supervisor, plaintext to the app) or tcp (the supervisor relays).
enum class proxy_kind { none, http, https, tcp };
// --upstream: where a generation listens in proxy mode. fds_unix: a unix socket made for it in
// the runtime directory, fds_tcp: 127.0.0.1:0, both passed by LISTEN_FDS; port: a free
// loopback port in $PORT that the app binds itself.
enum class upstream_kind { fds_unix, fds_tcp, port };
// --notify-socket: the app's NOTIFY_SOCKET as a file beside the control socket (as systemd
// gives one), or in the abstract namespace (notify_socket.hpp).
enum class notify_socket_kind { path, abstract };

inline const char* to_string(proxy_kind k) {
  switch (k) {
    case proxy_kind::none:
      return "none";
    case proxy_kind::http:
      return "http";
    case proxy_kind::https:
      return "https";
    case proxy_kind::tcp:
      return "tcp";
  }
  return "?";
}

struct proxy_settings {
  proxy_kind kind = proxy_kind::none;
  upstream_kind upstream = upstream_kind::fds_unix;
  bool forwarded = true;  // Forwarded, X-Forwarded-For, X-Forwarded-Proto
  std::uint32_t header_limit = 16 * 1024;
  std::optional<std::uint64_t> body_limit;
  std::chrono::milliseconds header_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
  std::chrono::milliseconds response_timeout{std::chrono::seconds(60)};
  // With no generation ready (the first one starting, a crashed one restarting), how long a
  // request or TCP connection waits for one before the 503 (tcp: the close).
  std::chrono::milliseconds queue_timeout{std::chrono::seconds(5)};
  // --proxy http|https: an idle pooled connection to the app is closed after this, before the
  // app's own keep-alive timeout can cross a request (proxy/upstream.hpp).
  std::chrono::milliseconds upstream_idle_timeout{std::chrono::seconds(1)};
  // Connections to one generation at most (0: no limit); requests beyond wait for one.
  std::size_t upstream_max_connections = 0;
  // --max-connections: client connections open at most (HAProxy's maxconn); beyond, they wait
  // in the kernel's listen queue. nullopt: derived from the fd limit at start (fd_limits.hpp).
  std::optional<std::uint64_t> max_connections;
  // https: PEM files, read at start and again by every reload.
  std::string tls_certificate;
  std::string tls_key;
};

struct run_options {
  std::vector<std::string> command;  // argv of the app
  std::vector<std::string> listen;   // [NAME=]ADDRESS; empty: inherit LISTEN_FDS, if any
  ready_mode ready = ready_mode::notify;
  std::string ready_target;  // http: the URL; tcp: "HOST:PORT" or "" (the first TCP listener)
  std::chrono::milliseconds ready_delay{0};
  std::chrono::milliseconds ready_timeout{std::chrono::seconds(60)};
  // How long a ready generation must stay up before the old one is told to stop (0: at once).
  std::chrono::milliseconds settle{0};
  int stop_signal = 15;  // SIGTERM
  std::chrono::milliseconds stop_timeout{std::chrono::seconds(30)};
  int processes = 1;
  restart_policy restart = restart_policy::on_failure;
  std::chrono::milliseconds backoff_min{std::chrono::milliseconds(100)};
  std::chrono::milliseconds backoff_max{std::chrono::seconds(30)};
  std::string control;  // the control socket path
  std::string name;
  std::string pid_file;
  log_format logs = log_format::text;
  int max_draining = 4;
  std::chrono::milliseconds watchdog{0};  // 0: off
  std::size_t fdstore_max = 64;
  bool nonblocking = false;  // O_NONBLOCK on the sockets handed to the app (NonBlocking=)
  notify_socket_kind notify_socket = notify_socket_kind::path;
  // TCP_NODELAY on the TCP sockets handed to the app (systemd's NoDelay=): Linux gives it to
  // every connection accepted from them. Public sockets and --upstream fds:tcp.
  bool nodelay = false;
  int backlog = 0;  // listen(2) backlog of the sockets handoff opens (Backlog=); 0: somaxconn
  std::optional<bool> log_timestamps;  // text logs; nullopt: on unless stderr is the journal
  proxy_settings proxy;
  std::string metrics;  // --metrics ADDRESS: GET /metrics served there ("": none)
  // --tls-ticket-keys: hold a TLS session-ticket keys memfd (handoff/ticket_keys.hpp) for the
  // generations, made at start unless inherited, with a new key every rotation period. Implied
  // by --proxy https, whose front uses the keys itself and does not pass them to the app.
  bool tls_ticket_keys = false;
  std::chrono::milliseconds tls_ticket_key_rotation{std::chrono::hours(12)};
};

}  // namespace handoff::supervisor
