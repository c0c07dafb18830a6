// handoff check URL: load while restarting, every failure by class (see check/load.hpp for the
// engine's invariants and check/report.hpp for what a restart window is).
//
// Exit status (exit_codes below, also in --help and docs/check.md): 0; 1 with --fail-on-errors
// when any request failed, or when no request completed; 2 for a usage error (bad URL, duration,
// mode, method, an output file that cannot be opened); 3 when the target cannot be reached
// before the load starts; 4 when a restart command failed or had to be stopped at the end (it is
// also on the timeline and in the JSON).
//
// Output files are opened before the run, so that a typo in a path costs nothing, and written
// after it; one created here is removed again when the run ends without a report.
#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "check/load.hpp"
#include "check/report.hpp"
#include "commands.hpp"
#include "handoff/duration.hpp"

namespace handoff::cli {

namespace {

struct check_args {
  std::string url;
  std::string duration = "10s";
  unsigned connections = 32;
  unsigned threads = 1;
  double rate = 0;
  std::string mode = "keepalive";
  std::string method = "GET";
  std::size_t body_size = 0;
  std::string connect_timeout = "3s";
  std::string timeout = "10s";
  std::string reload_cmd;
  std::string reload_every;
  std::string reload_at;
  std::string reload_grace = "5s";
  std::string json;
  std::string plot;
  bool fail_on_errors = false;
  bool quiet = false;
  std::string cacert;
  bool insecure = false;
  bool tls_resume = false;
};

[[noreturn]] void fail(int code, const std::string& message) {
  fmt::print(stderr, "handoff check: {}\n", message);
  throw CLI::RuntimeError(code);
}

std::chrono::milliseconds duration_arg(const std::string& text, const char* option) {
  auto d = parse_duration(text);
  if (!d) fail(2, fmt::format("{}: {}", option, d.error().context()));
  return *d;
}

constexpr const char* exit_codes =
    "Exit status: 0 ok; 1 with --fail-on-errors when a request failed, or when no request "
    "completed; 2 usage error (bad URL, duration, option, an output file that cannot be opened); "
    "3 the target is not reachable before the load starts; 4 a restart command failed, or still "
    "ran after the load and --reload-grace and was stopped.";

// An output file (--json, --plot), opened before the run and written after it.
class output_file {
 public:
  output_file() = default;
  output_file(const output_file&) = delete;
  output_file& operator=(const output_file&) = delete;
  ~output_file() {
    if (fd_ >= 0) ::close(fd_);
    if (created_ && !written_) (void)::unlink(path_.c_str());
  }

  void open(const std::string& path, const char* option) {
    if (path.empty()) return;
    path_ = path;
    option_ = option;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    created_ = fd_ >= 0;
    if (fd_ < 0 && errno == EEXIST) fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) fail(2, fmt::format("{} {}: {}", option, path, std::strerror(errno)));
  }

  // A regular file is truncated first; a pipe or terminal (--json /dev/stdout) is written as is.
  void write(const std::string& content) {
    if (fd_ < 0) return;
    written_ = true;
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode) && ::ftruncate(fd_, 0) != 0) return failed();
    for (std::size_t done = 0; done < content.size();) {
      const ssize_t n = ::write(fd_, content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return failed();
      done += static_cast<std::size_t>(n);
    }
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) failed();
  }

 private:
  void failed() { fail(1, fmt::format("{} {}: write: {}", option_, path_, std::strerror(errno))); }

  std::string path_;
  const char* option_ = "";
  int fd_ = -1;
  bool created_ = false;
  bool written_ = false;
};

void run_check(const check_args& a) {
  check::load_options o;
  auto target = check::parse_url(a.url);
  if (!target) fail(2, target.error().message());
  o.target = *target;
  o.duration = duration_arg(a.duration, "--duration");
  if (o.duration.count() <= 0) fail(2, "--duration must be more than 0");
  o.connections = a.connections;
  o.threads = a.threads;
  o.rate = a.rate;
  if (a.mode == "keepalive" || a.mode == "keep-alive") {
    o.mode = check::connection_mode::keepalive;
  } else if (a.mode == "close") {
    o.mode = check::connection_mode::close;
  } else {
    fail(2, fmt::format("--mode \"{}\": expected keepalive or close", a.mode));
  }
  if (a.method != "GET" && a.method != "POST")
    fail(2, fmt::format("--method \"{}\": expected GET or POST", a.method));
  o.method = a.method;
  o.body_size = a.body_size;
  if (o.method == "GET" && o.body_size > 0) fail(2, "--body-size needs --method POST");
  o.connect_timeout = duration_arg(a.connect_timeout, "--connect-timeout");
  o.timeout = duration_arg(a.timeout, "--timeout");
  if (o.connect_timeout.count() <= 0 || o.timeout.count() <= 0)
    fail(2, "timeouts must be more than 0");
  o.reload_command = a.reload_cmd;
  const bool every = !a.reload_every.empty(), at = !a.reload_at.empty();
  if ((every || at) && a.reload_cmd.empty())
    fail(2, "--reload-every and --reload-at need --reload-cmd");
  if (!a.reload_cmd.empty() && !every && !at)
    fail(2, "--reload-cmd needs --reload-every D or --reload-at D");
  if (every) {
    const auto d = duration_arg(a.reload_every, "--reload-every");
    if (d.count() <= 0) fail(2, "--reload-every must be more than 0");
    for (auto t = d; t < o.duration; t += d) o.reload_times.push_back(t);
  }
  if (at) {
    const auto d = duration_arg(a.reload_at, "--reload-at");
    if (d >= o.duration) fail(2, "--reload-at must be within --duration");
    o.reload_times.push_back(d);
  }
  std::sort(o.reload_times.begin(), o.reload_times.end());
  o.reload_grace = duration_arg(a.reload_grace, "--reload-grace");
  o.progress = !a.quiet && ::isatty(STDERR_FILENO) == 1;
  o.tls.ca_file = a.cacert;
  o.tls.insecure = a.insecure;
  o.tls.resume = a.tls_resume;
  if (!o.target.tls && (!a.cacert.empty() || a.insecure || a.tls_resume))
    fail(2, "--cacert, --insecure and --tls-resume need an https:// URL");
  if (!a.cacert.empty() && a.insecure) fail(2, "--cacert and --insecure exclude each other");
  if (o.target.tls) {
    if (auto ctx = check::make_tls_context(o.tls); !ctx) fail(2, ctx.error().message());
  }
  output_file json, plot;
  json.open(a.json, "--json");
  plot.open(a.plot, "--plot");

  if (auto p = check::probe(o); !p)
    fail(3, fmt::format("{} is not reachable: {}", a.url, p.error().message()));
  auto run = check::run_load(o);
  if (!run) fail(3, run.error().message());
  const auto summary = check::analyze(*run);
  const check::report_context ctx{o, *run, summary};
  fmt::print("{}", check::format_text(ctx));
  (void)std::fflush(stdout);
  json.write(check::format_json(ctx));
  plot.write(check::format_svg(ctx));

  std::size_t failed_commands = 0;
  for (const auto& r : run->restarts) failed_commands += r.success ? 0 : 1;
  if (failed_commands > 0) {
    for (const auto& r : run->restarts) {
      if (!r.success)
        fmt::print(stderr, "handoff check: the restart command at {:.2f} s failed: {}\n",
                   static_cast<double>(r.start_us) / 1e6, r.status);
    }
    throw CLI::RuntimeError(4);
  }
  if (a.fail_on_errors && summary.total.failed() > 0)
    fail(1,
         fmt::format("{} of {} requests failed", summary.total.failed(), summary.total.requests));
  if (summary.total.requests == 0) fail(1, "no request completed");
}

}  // namespace

void add_check_command(CLI::App& app) {
  auto args = std::make_shared<check_args>();
  auto* cmd = app.add_subcommand(
      "check", "measure failed requests and latency under load, while restart commands run");
  cmd->add_option("url", args->url, "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]")
      ->required();
  cmd->add_option("--duration", args->duration, "how long to send requests, e.g. 30s")
      ->capture_default_str()
      ->check(duration_check());
  cmd->add_option("-c,--connections", args->connections, "concurrent connections")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  cmd->add_option("--threads", args->threads,
                  "client threads, each with its own connections (at most --connections); for "
                  "servers that one core of client cannot load")
      ->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  cmd->add_option("--rate", args->rate, "requests/s in total (default: as fast as possible)")
      ->check(non_negative_check());
  cmd->add_option("--mode", args->mode,
                  "keepalive: reuse connections; close: a new connection per request")
      ->capture_default_str();
  cmd->add_option("--method", args->method, "GET or POST (non-idempotent traffic)")
      ->capture_default_str();
  cmd->add_option("--body-size", args->body_size, "bytes of request body (POST)");
  cmd->add_option("--connect-timeout", args->connect_timeout, "connect timeout")
      ->capture_default_str()
      ->check(duration_check());
  cmd->add_option("--timeout", args->timeout, "response timeout after the request is sent")
      ->capture_default_str()
      ->check(duration_check());
  cmd->add_option("--reload-cmd", args->reload_cmd,
                  "restart command, run with /bin/sh -c during the load");
  cmd->add_option("--reload-every", args->reload_every,
                  "run the restart command every D (from D on)")
      ->check(duration_check());
  cmd->add_option("--reload-at", args->reload_at, "run the restart command once, D after start")
      ->check(duration_check());
  cmd->add_option("--reload-grace", args->reload_grace,
                  "a restart command still running when the load ends gets D to finish, then "
                  "SIGTERM to its process group, then SIGKILL D later")
      ->capture_default_str()
      ->check(duration_check());
  cmd->add_option("--json", args->json, "write the results as JSON to FILE");
  cmd->add_option("--plot", args->plot, "write the timeline as an SVG picture to FILE");
  cmd->add_option("--cacert", args->cacert,
                  "https: trust the certificates in this PEM FILE (default: the system's store)");
  cmd->add_flag("--insecure", args->insecure,
                "https: accept any certificate and name (no verification)");
  cmd->add_flag("--tls-resume", args->tls_resume,
                "https: resume the previous connection's TLS session when reconnecting");
  cmd->add_flag("--fail-on-errors", args->fail_on_errors,
                "exit with status 1 when any request failed");
  cmd->add_flag("-q,--quiet", args->quiet, "no progress line");
  cmd->footer(exit_codes);
  cmd->callback([args] { run_check(*args); });
}

}  // namespace handoff::cli
