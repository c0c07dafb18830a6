// handoff run | reload | status | stop: the supervisor (supervisor/) and the commands that talk
// to it over its control socket (supervisor/control.hpp).
//
// Exit codes of reload, status and stop: 0 done; 1 the supervisor answered with an error (a
// failed or refused reload, with its cause); 2 no supervisor could be reached; 3 no answer
// within --timeout.
#include <dirent.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "commands.hpp"
#include "handoff/duration.hpp"
#include "supervisor/command_line_expand.hpp"
#include "supervisor/control.hpp"
#include "supervisor/probe.hpp"
#include "supervisor/supervisor.hpp"

namespace handoff::cli {
namespace {

using namespace std::chrono_literals;
namespace sv = handoff::supervisor;

[[noreturn]] void fail(int code, const std::string& message) {
  fmt::print(stderr, "handoff: {}\n", message);
  throw CLI::RuntimeError(code);
}

std::chrono::milliseconds duration_of(const std::string& text, const char* option) {
  auto d = parse_duration(text);
  // The context is the whole sentence; message() would add strerror(EINVAL).
  if (!d) fail(2, std::string(option) + ": " + d.error().context());
  return *d;
}

// "TERM", "SIGTERM", "15".
int signal_of(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
      text.size() < 4) {
    const int n = std::stoi(text);
    if (n > 0 && n < NSIG) return n;
  }
  std::string name = text;
  for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (name.rfind("SIG", 0) == 0) name.erase(0, 3);
  for (int sig = 1; sig < NSIG; ++sig)
    if (const char* abbrev = ::sigabbrev_np(sig); abbrev != nullptr && name == abbrev) return sig;
  fail(2, "--stop-signal: \"" + text + "\" is not a signal (e.g. TERM, INT, QUIT, USR1, 15)");
}

// The control socket a client talks to: --control, else the default path of --name, else the
// only supervisor socket in the default directory.
std::string client_control_path(const std::string& control, const std::string& name) {
  if (!control.empty()) return control;
  if (!name.empty()) return sv::default_control_path(name);
  const std::string dir = sv::default_control_dir();
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
    if (entry.path().extension() == ".sock") found.push_back(entry.path().string());
  if (found.size() == 1) return found.front();
  if (found.empty())
    fail(2, "no supervisor found in " + dir + " (give --control PATH or --name NAME)");
  std::string list;
  for (const auto& f : found) list += " " + f;
  fail(2, "several supervisors in " + dir + ":" + list + " (give --control PATH or --name NAME)");
}

sv::control_answer call(const std::string& path, const std::string& request,
                        std::chrono::milliseconds timeout) {
  auto answer = sv::control_call(path, request, timeout);
  if (!answer) fail(2, answer.error().message());
  return *answer;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

struct run_args {
  sv::run_options o;
  std::string ready = "notify", ready_timeout = "60s", stop_signal = "TERM", stop_timeout = "30s",
              restart = "on-failure", log_format = "text", watchdog = "0", settle = "0",
              log_timestamps = "auto", tls_ticket_key_rotation = "12h", notify_socket = "path";
  std::string tls_cert, tls_key;
  std::string proxy, upstream, header_timeout = "10s", idle_timeout = "60s",
                               response_timeout = "60s", queue_timeout = "5s",
                               upstream_idle_timeout = "1s";
  std::size_t upstream_max_connections = 0;
  bool no_forwarded = false;
  std::uint32_t max_header = 16 * 1024;
  std::optional<std::uint64_t> max_body;
  std::optional<std::uint64_t> max_connections;
};

struct client_args {
  std::string control, name, timeout;
  bool json = false;
};

void run_command(run_args& a) {
  sv::run_options& o = a.o;
  if (o.command.empty()) fail(2, "run: no command given (handoff run [OPTIONS] -- COMMAND ...)");
  auto& p = o.proxy;
  if (a.proxy.empty() || a.proxy == "none")
    p.kind = sv::proxy_kind::none;
  else if (a.proxy == "http")
    p.kind = sv::proxy_kind::http;
  else if (a.proxy == "https")
    p.kind = sv::proxy_kind::https;
  else if (a.proxy == "tcp")
    p.kind = sv::proxy_kind::tcp;
  else
    fail(2, "--proxy: \"" + a.proxy + "\" is not http, https or tcp");
  if (p.kind == sv::proxy_kind::https && (a.tls_cert.empty() || a.tls_key.empty()))
    fail(2, "--proxy https needs --tls-cert FILE and --tls-key FILE");
  if (p.kind != sv::proxy_kind::https && (!a.tls_cert.empty() || !a.tls_key.empty()))
    fail(2, "--tls-cert and --tls-key need --proxy https");
  p.tls_certificate = a.tls_cert;
  p.tls_key = a.tls_key;
  if (a.upstream.empty() || a.upstream == "fds")
    p.upstream = sv::upstream_kind::fds_unix;
  else if (a.upstream == "fds:tcp")
    p.upstream = sv::upstream_kind::fds_tcp;
  else if (a.upstream == "port")
    p.upstream = sv::upstream_kind::port;
  else
    fail(2, "--upstream: \"" + a.upstream + "\" is not fds, fds:tcp or port");
  if (!a.upstream.empty() && p.kind == sv::proxy_kind::none)
    fail(2, "--upstream needs --proxy http, https or tcp");
  p.forwarded = !a.no_forwarded;
  p.header_limit = a.max_header;
  p.body_limit = a.max_body;
  p.header_timeout = duration_of(a.header_timeout, "--header-timeout");
  p.idle_timeout = duration_of(a.idle_timeout, "--idle-timeout");
  p.response_timeout = duration_of(a.response_timeout, "--response-timeout");
  p.queue_timeout = duration_of(a.queue_timeout, "--queue-timeout");
  p.upstream_idle_timeout = duration_of(a.upstream_idle_timeout, "--upstream-idle-timeout");
  if (p.upstream_idle_timeout.count() <= 0)
    fail(2, "--upstream-idle-timeout: must be more than 0 (a pooled connection must expire)");
  p.upstream_max_connections = a.upstream_max_connections;
  // A TCP relay holds its connection for the client's whole connection: a limit would queue
  // clients, not requests.
  if (p.upstream_max_connections != 0 && p.kind != sv::proxy_kind::http &&
      p.kind != sv::proxy_kind::https)
    fail(2, "--upstream-max-connections needs --proxy http or https");
  if (a.max_connections && p.kind == sv::proxy_kind::none)
    fail(2, "--max-connections needs --proxy http, https or tcp");
  p.max_connections = a.max_connections;
  if (p.kind != sv::proxy_kind::none && a.ready.rfind("http://", 0) == 0) {
    // With --proxy the generation's own address is probed: only the URL's path counts.
    const auto path_at = a.ready.find('/', 7);
    const std::string path = path_at == std::string::npos ? "/" : a.ready.substr(path_at);
    if (!sv::valid_http_url("http://localhost" + path))
      fail(2, "--ready: \"" + a.ready + "\" is not a valid URL");
    o.ready = sv::ready_mode::http;
    o.ready_target = "http://localhost" + path;
  } else if (a.ready == "notify") {
    o.ready = sv::ready_mode::notify;
  } else if (a.ready == "tcp" || a.ready.rfind("tcp:", 0) == 0) {
    o.ready = sv::ready_mode::tcp;
    if (a.ready.size() > 4) o.ready_target = a.ready.substr(4);
    if (!o.ready_target.empty())
      if (const auto problem = sv::ready_target_problem("tcp", o.ready_target); !problem.empty())
        fail(2, "--ready: " + problem);
  } else if (a.ready.rfind("http://", 0) == 0) {
    if (const auto problem = sv::ready_target_problem("http", a.ready); !problem.empty())
      fail(2, "--ready: " + problem);
    o.ready = sv::ready_mode::http;
    o.ready_target = a.ready;
  } else if (a.ready.rfind("delay:", 0) == 0) {
    o.ready = sv::ready_mode::delay;
    o.ready_delay = duration_of(a.ready.substr(6), "--ready delay:");
  } else {
    fail(2, "--ready: \"" + a.ready +
                "\" is not notify, http://HOST:PORT/PATH, tcp[:HOST:PORT] or delay:DURATION");
  }
  if (o.ready == sv::ready_mode::tcp && p.kind != sv::proxy_kind::none) {
    if (p.upstream != sv::upstream_kind::port)
      fail(2,
           "--ready tcp with --upstream fds or fds:tcp proves nothing: the supervisor holds "
           "the generation's socket, so the kernel completes the connect by itself; use "
           "--ready notify, --ready http:///PATH, or --upstream port");
    if (!o.ready_target.empty())
      fail(2, "--ready tcp:" + o.ready_target +
                  " with --proxy: give --ready tcp, which "
                  "probes the generation's own port");
  }
  o.ready_timeout = duration_of(a.ready_timeout, "--ready-timeout");
  o.stop_timeout = duration_of(a.stop_timeout, "--stop-timeout");
  o.watchdog = duration_of(a.watchdog, "--watchdog");
  o.tls_ticket_key_rotation = duration_of(a.tls_ticket_key_rotation, "--tls-ticket-key-rotation");
  if (o.tls_ticket_key_rotation.count() < 1000) fail(2, "--tls-ticket-key-rotation: at least 1s");
  o.settle = duration_of(a.settle, "--settle");
  o.stop_signal = signal_of(a.stop_signal);
  if (a.restart == "on-failure")
    o.restart = sv::restart_policy::on_failure;
  else if (a.restart == "always")
    o.restart = sv::restart_policy::always;
  else if (a.restart == "never")
    o.restart = sv::restart_policy::never;
  else
    fail(2, "--restart: \"" + a.restart + "\" is not on-failure, always or never");
  if (a.log_format == "text")
    o.logs = sv::log_format::text;
  else if (a.log_format == "json")
    o.logs = sv::log_format::json;
  else
    fail(2, "--log-format: \"" + a.log_format + "\" is not text or json");
  if (o.name.empty()) o.name = std::filesystem::path(o.command.front()).filename().string();
  if (o.name.empty() || o.name.find('/') != std::string::npos)
    fail(2, "--name: \"" + o.name + "\" cannot name a control socket");
  if (a.log_timestamps == "yes")
    o.log_timestamps = true;
  else if (a.log_timestamps == "no")
    o.log_timestamps = false;
  else if (a.log_timestamps != "auto")
    fail(2, "--log-timestamps: \"" + a.log_timestamps + "\" is not auto, yes or no");
  if (a.notify_socket == "path")
    o.notify_socket = sv::notify_socket_kind::path;
  else if (a.notify_socket == "abstract")
    o.notify_socket = sv::notify_socket_kind::abstract;
  else
    fail(2, "--notify-socket: \"" + a.notify_socket + "\" is not path or abstract");
  // $PORT in the arguments is expanded for the app (command_line_expand.hpp); in a mode where
  // handoff sets no such variable the app would get the literal text, and fail obscurely. One
  // that our own environment has (PORT of a platform, for `sh -c '... ${PORT}'`) is the app's.
  for (const auto& name : sv::command_line_references(o.command))
    if ((name == "PORT" || name.rfind("HANDOFF_PORT_", 0) == 0) &&
        (p.kind == sv::proxy_kind::none || p.upstream != sv::upstream_kind::port) &&
        std::getenv(name.c_str()) == nullptr)
      fail(2, "the command names $" + name +
                  ", which handoff sets only with --proxy and --upstream port (without them "
                  "the app gets its sockets by LISTEN_FDS; write $$" +
                  name + " for the literal text)");
  std::string created_dir;
  if (o.control.empty()) {
    const std::string dir = sv::default_control_dir();
    // Only the last component is ours to create; 0700 keeps other users out of the directory.
    if (::mkdir(dir.c_str(), 0700) == 0)
      created_dir = dir;
    else if (errno != EEXIST)
      fail(2, fmt::format("cannot create {} for the control socket: {} (give --control PATH, or "
                          "set XDG_RUNTIME_DIR)",
                          dir, std::strerror(errno)));
    o.control = sv::default_control_path(o.name);
  }
  int code = 0;
  try {
    code = sv::run(o);
  } catch (const std::runtime_error& e) {
    // A directory we created for nothing goes again (rmdir: only while it is empty).
    if (!created_dir.empty()) (void)::rmdir(created_dir.c_str());
    fail(2, std::string("run: ") + e.what());
  }
  if (!created_dir.empty()) (void)::rmdir(created_dir.c_str());
  if (code != 0) throw CLI::RuntimeError(code);
}

}  // namespace

void add_supervisor_commands(CLI::App& app) {
  auto run_a = std::make_shared<run_args>();
  CLI::App* run = app.add_subcommand(
      "run", "supervise an app: hold its sockets, start generations with overlap");
  // One address per -l: CLI11 lets a vector option take every following word, and with `--`
  // right after `-l ADDR` the app's own options were then read as ours.
  run->add_option("-l,--listen", run_a->o.listen,
                  "[NAME=]ADDRESS to listen on (repeatable; default: inherit LISTEN_FDS)")
      ->allow_extra_args(false);
  run->add_option("--ready", run_a->ready,
                  "notify | http://HOST:PORT/PATH | tcp[:HOST:PORT] | delay:DURATION")
      ->capture_default_str();
  run->add_option("--ready-timeout", run_a->ready_timeout, "a new generation must be ready within")
      ->capture_default_str()
      ->check(duration_check());
  run->add_option("--settle", run_a->settle,
                  "a ready generation must stay up this long before the old one is stopped")
      ->capture_default_str()
      ->check(duration_check());
  run->add_option("--stop-signal", run_a->stop_signal, "sent to the old generation")
      ->capture_default_str();
  run->add_option("--stop-timeout", run_a->stop_timeout, "then SIGKILL to its process groups")
      ->capture_default_str()
      ->check(duration_check());
  run->add_option("--processes", run_a->o.processes,
                  "processes per generation, sharing the sockets")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  run->add_option("--restart", run_a->restart,
                  "on-failure | always | never (when the app dies unasked)")
      ->capture_default_str();
  run->add_option("--max-draining", run_a->o.max_draining,
                  "old generations still draining at most; a reload beyond is refused")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  run->add_option("--watchdog", run_a->watchdog,
                  "restart a ready process silent this long (WATCHDOG=1); 0: off")
      ->capture_default_str()
      ->check(duration_check());
  run->add_option("--control", run_a->o.control,
                  "control socket (default $XDG_RUNTIME_DIR/handoff/NAME.sock or "
                  "/run/handoff/NAME.sock)");
  run->add_option("--name", run_a->o.name,
                  "name in logs and of the control socket (default: the "
                  "command's file name)");
  run->add_option("--pid-file", run_a->o.pid_file, "write the supervisor's pid there");
  run->add_option("--log-format", run_a->log_format, "text | json")->capture_default_str();
  run->add_option("--log-timestamps", run_a->log_timestamps,
                  "auto | yes | no: time on text log lines (auto: not when stderr is the journal)")
      ->capture_default_str();
  run->add_option("--notify-socket", run_a->notify_socket,
                  "path | abstract: the app's NOTIFY_SOCKET, a socket file beside the control "
                  "socket (NAME.notify, as systemd gives a path) or an abstract @name")
      ->capture_default_str();
  run->add_flag("--nonblocking", run_a->o.nonblocking,
                "O_NONBLOCK on the sockets handed to the app (systemd's NonBlocking=)");
  run->add_flag("--nodelay", run_a->o.nodelay,
                "TCP_NODELAY on the TCP sockets handed to the app, inherited by every connection "
                "it accepts (systemd's NoDelay=)");
  run->add_option("--backlog", run_a->o.backlog,
                  "listen(2) backlog of the sockets handoff opens (systemd's Backlog=; default: "
                  "net.core.somaxconn)")
      ->check(CLI::Range(1, 1 << 20));
  run->add_option("--proxy", run_a->proxy,
                  "http | https | tcp: the supervisor accepts on the sockets and relays each "
                  "request (connection) to the generation that serves; the app gets private "
                  "sockets (https: TLS ends in the supervisor, plaintext to the app)");
  run->add_option("--tls-cert", run_a->tls_cert,
                  "--proxy https: the PEM certificate chain (read again by every reload)");
  run->add_option("--tls-key", run_a->tls_key,
                  "--proxy https: the PEM private key of --tls-cert (read again by every reload)");
  run->add_option("--upstream", run_a->upstream,
                  "with --proxy: fds (a unix socket per generation, by LISTEN_FDS; default) | "
                  "fds:tcp (127.0.0.1:0, by LISTEN_FDS) | port (a free port in $PORT)");
  run->add_flag("--no-forwarded-headers", run_a->no_forwarded,
                "--proxy http: add no Forwarded / X-Forwarded-For / X-Forwarded-Proto");
  run->add_option("--max-header-size", run_a->max_header,
                  "--proxy http: a larger request header is answered 431")
      ->check(CLI::Range(1024U, 1024U * 1024U))
      ->capture_default_str();
  run->add_option("--max-body-size", run_a->max_body,
                  "--proxy http: a larger request body is answered 413 (default: any)");
  run->add_option("--header-timeout", run_a->header_timeout,
                  "--proxy http: a request header must arrive within (408); https: and the TLS "
                  "handshake within; 0: no limit")
      ->capture_default_str();
  run->add_option("--idle-timeout", run_a->idle_timeout,
                  "--proxy http: an idle client connection (or one that sends no byte of a body, "
                  "or takes none of a response) is closed after; 0: no limit")
      ->capture_default_str();
  run->add_option("--response-timeout", run_a->response_timeout,
                  "--proxy http: each wait on the app, to take the request or send its response "
                  "(504); 0: no limit")
      ->capture_default_str();
  run->add_option("--queue-timeout", run_a->queue_timeout,
                  "--proxy: with no generation ready, a request waits this long (then 503)")
      ->capture_default_str();
  run->add_option("--upstream-idle-timeout", run_a->upstream_idle_timeout,
                  "--proxy http: an idle pooled connection to the app is closed after this (keep "
                  "it under the app's own keep-alive timeout)")
      ->capture_default_str();
  run->add_option("--upstream-max-connections", run_a->upstream_max_connections,
                  "--proxy http: connections to one generation at most; more requests wait for "
                  "one (up to --queue-timeout, then 503) (default: no limit)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}));
  run->add_option("--max-connections", run_a->max_connections,
                  "--proxy: client connections open at most; beyond, new ones wait in the "
                  "kernel's listen queue (default: what the fd limit holds, 2 fds each, less a "
                  "reserve)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 32));
  run->add_flag(
      "--tls-ticket-keys", run_a->o.tls_ticket_keys,
      "hold TLS session-ticket keys for the app (a memfd passed as handoff-tls-keys), so that "
      "clients resume their sessions in the next generation (implied by --proxy https, whose "
      "front keeps them)");
  run->add_option("--tls-ticket-key-rotation", run_a->tls_ticket_key_rotation,
                  "with --tls-ticket-keys or --proxy https: a new encryption key this often (the "
                  "previous one still decrypts)")
      ->capture_default_str()
      ->check(duration_check());
  run->add_option("--metrics", run_a->o.metrics,
                  "serve GET /metrics (Prometheus text format) on ADDRESS: host:port or "
                  "unix:PATH");
  run->add_option("command", run_a->o.command, "the app and its arguments (after --)")->required();
  run->callback([run_a] { run_command(*run_a); });

  auto add_client = [&app](const char* name, const char* help, const char* timeout) {
    auto a = std::make_shared<client_args>();
    a->timeout = timeout;
    CLI::App* sub = app.add_subcommand(name, help);
    sub->add_option("--control", a->control, "the supervisor's control socket");
    sub->add_option("--name", a->name, "the supervisor's --name (finds its control socket)");
    return std::pair{sub, a};
  };

  auto [reload, reload_a] =
      add_client("reload", "start a new generation; exit 0 once it has taken over", "120s");
  reload->add_option("--timeout", reload_a->timeout, "give up waiting after")
      ->capture_default_str()
      ->check(duration_check());
  reload->callback([a = reload_a] {
    const auto answer = call(client_control_path(a->control, a->name), "reload",
                             duration_of(a->timeout, "--timeout"));
    const std::string line = first_line(answer.text);
    if (line.rfind("ok ", 0) == 0) {
      fmt::print("{}\n", line.substr(3));
      return;
    }
    if (line.rfind("error ", 0) == 0) fail(1, "reload: " + line.substr(6));
    if (!answer.complete) fail(3, "reload: no outcome within " + a->timeout);
    fail(1, "reload: the supervisor closed the connection without an answer");
  });

  auto [status, status_a] = add_client("status", "generations, pids, states, last reload", "10s");
  status->add_flag("--json", status_a->json, "one JSON object");
  status->add_option("--timeout", status_a->timeout, "give up waiting after")
      ->capture_default_str()
      ->check(duration_check());
  status->callback([a = status_a] {
    const auto answer =
        call(client_control_path(a->control, a->name), a->json ? "status json" : "status",
             duration_of(a->timeout, "--timeout"));
    if (answer.text.rfind("error ", 0) == 0)
      fail(1, "status: " + first_line(answer.text).substr(6));
    if (!answer.complete) fail(3, "status: no answer within " + a->timeout);
    fmt::print("{}", answer.text);
  });

  auto [reexec, reexec_a] = add_client(
      "reexec", "exec the supervisor's binary now on disk, same pid, keeping every generation",
      "60s");
  reexec->add_option("--timeout", reexec_a->timeout, "give up waiting after")
      ->capture_default_str()
      ->check(duration_check());
  reexec->callback([a = reexec_a] {
    const auto answer = call(client_control_path(a->control, a->name), "reexec",
                             duration_of(a->timeout, "--timeout"));
    const std::string line = first_line(answer.text);
    if (line.rfind("ok ", 0) == 0) {
      fmt::print("{}\n", line.substr(3));
      return;
    }
    if (line.rfind("error ", 0) == 0) fail(1, "reexec: " + line.substr(6));
    if (!answer.complete) fail(3, "reexec: no outcome within " + a->timeout);
    fail(1, "reexec: the supervisor closed the connection without an answer");
  });

  auto [stop, stop_a] = add_client("stop", "stop the app gracefully, then the supervisor", "60s");
  stop->add_option("--timeout", stop_a->timeout, "give up waiting after")
      ->capture_default_str()
      ->check(duration_check());
  stop->callback([a = stop_a] {
    const auto answer = call(client_control_path(a->control, a->name), "stop",
                             duration_of(a->timeout, "--timeout"));
    if (answer.text.rfind("error ", 0) == 0) fail(1, "stop: " + first_line(answer.text).substr(6));
    if (!answer.complete) fail(3, "stop: the supervisor still runs after " + a->timeout);
    fmt::print("stopped\n");
  });
}

}  // namespace handoff::cli
