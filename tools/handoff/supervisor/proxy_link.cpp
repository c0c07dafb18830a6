#include "supervisor/proxy_link.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "handoff/http/tls_context.hpp"
#include "handoff/listeners.hpp"
#include "handoff/ticket_keys.hpp"

namespace handoff::supervisor {

namespace {

// A listening (or, for --upstream port, only bound and then closed) socket on 127.0.0.1:0.
result<unique_fd> loopback_socket(bool listening, int& port) {
  unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return error::from_errno(errno, "proxy upstream: socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
    return error::from_errno(errno, "proxy upstream: bind 127.0.0.1:0");
  socklen_t length = sizeof a;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &length) != 0)
    return error::from_errno(errno, "proxy upstream: getsockname");
  port = ntohs(a.sin_port);
  if (listening && ::listen(fd.get(), SOMAXCONN) != 0)
    return error::from_errno(errno, "proxy upstream: listen 127.0.0.1:" + std::to_string(port));
  return fd;
}

proxy::endpoint loopback_endpoint(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return {&a, sizeof a};
}

// HANDOFF_PORT_<NAME>: the socket's name in upper case, anything else than [A-Z0-9] as '_'.
std::string port_variable(const std::string& name) {
  std::string out = "HANDOFF_PORT_";
  for (const char c : name)
    out += std::isalnum(static_cast<unsigned char>(c)) != 0
               ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
               : '_';
  return out;
}

}  // namespace

namespace {

// A run of 1 to 10 digits at the start of `rest`, taken off it.
std::optional<unsigned long> take_number(std::string_view& rest) {
  std::size_t n = 0;
  while (n < rest.size() && n < 10 && std::isdigit(static_cast<unsigned char>(rest[n])) != 0) ++n;
  if (n == 0) return std::nullopt;
  const unsigned long value = std::stoul(std::string(rest.substr(0, n)));
  rest.remove_prefix(n);
  return value;
}

bool take(std::string_view& rest, std::string_view word) {
  if (rest.substr(0, word.size()) != word) return false;
  rest.remove_prefix(word.size());
  return true;
}

}  // namespace

bool stale_upstream_name(std::string_view file, std::string_view app, pid_t& pid) {
  // APP.PID.gN.I.sock, as prepare() makes them.
  std::string_view rest = file;
  if (!take(rest, app) || !take(rest, ".")) return false;
  const auto number = take_number(rest);
  if (!number || *number == 0 || *number > 0x7fffffffUL) return false;
  if (!take(rest, ".g") || !take_number(rest) || !take(rest, ".") || !take_number(rest) ||
      rest != ".sock")
    return false;
  pid = static_cast<pid_t>(*number);
  return true;
}

std::vector<std::string> remove_stale_upstreams(const std::string& dir, const std::string& app) {
  std::vector<std::string> removed;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return removed;
  const uid_t me = ::geteuid();
  while (const dirent* e = ::readdir(d)) {
    pid_t pid = 0;
    if (!stale_upstream_name(e->d_name, app, pid)) continue;
    // Only a supervisor that is gone: its pid names no process (a reused pid keeps the file,
    // which is the safe mistake). ESRCH alone: EPERM is someone's live process.
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    const std::string path = dir + "/" + e->d_name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != me) continue;
    if (::unlink(path.c_str()) == 0) removed.push_back(path);
  }
  ::closedir(d);
  return removed;
}

proxy_link::proxy_link(const run_options& o, const std::vector<public_socket>& sockets,
                       std::string runtime_dir, int ticket_keys, const logger& log)
    : settings_(o.proxy),
      ticket_keys_(ticket_keys),
      log_(log),
      nonblocking_(o.nonblocking),
      nodelay_(o.nodelay),
      runtime_dir_(std::move(runtime_dir)) {
  if (sockets.empty())
    throw std::runtime_error("--proxy: no public socket to accept on (give --listen)");
  prefix_ = runtime_dir_ + "/" + o.name + "." + std::to_string(::getpid());
  // What a supervisor of this name killed outright (SIGKILL) left behind: nothing else unlinks
  // them. Ours by the name's pattern, a socket, of our user, of a supervisor pid that is gone.
  if (o.proxy.upstream == upstream_kind::fds_unix)
    for (const auto& path : remove_stale_upstreams(runtime_dir_, o.name))
      log_.log("stale_upstream", "removed " + path + ", left by a supervisor that is gone",
               {{"path", path}});
  std::vector<unique_fd> copies;
  for (const auto& s : sockets) {
    auto copy = duplicate_fd(s.fd);
    if (!copy) throw std::runtime_error("--proxy: " + copy.error().message());
    copies.push_back(std::move(*copy));
    names_.push_back(s.name);
  }
  proxy::front_options fo;
  fo.mode = o.proxy.kind == proxy_kind::tcp ? proxy::proxy_mode::tcp : proxy::proxy_mode::http;
  if (o.proxy.kind == proxy_kind::https) fo.tls = make_tls();  // throws, naming the file
  fo.relay.forwarded = o.proxy.forwarded;
  fo.relay.header_limit = o.proxy.header_limit;
  fo.relay.body_limit = o.proxy.body_limit;
  fo.relay.header_timeout = o.proxy.header_timeout;
  fo.relay.idle_timeout = o.proxy.idle_timeout;
  fo.relay.response_timeout = o.proxy.response_timeout;
  fo.relay.handshake_timeout = o.proxy.header_timeout;
  fo.relay.scheme = o.proxy.kind == proxy_kind::https ? "https" : "http";
  fo.queue_timeout = o.proxy.queue_timeout;
  fo.upstream_idle_timeout = o.proxy.upstream_idle_timeout;
  fo.upstream_max_connections = o.proxy.upstream_max_connections;
  fo.max_connections = o.proxy.max_connections.value_or(0);
  auto f = proxy::front::start(std::move(copies), std::move(fo));
  if (!f) throw std::runtime_error(f.error().message());
  front_ = std::move(*f);
}

proxy_link::~proxy_link() {
  front_.reset();  // joins the io thread before the upstream sockets go
  for (auto& [id, ups] : generations_)
    for (auto& u : ups)
      if (!u.path.empty()) ::unlink(u.path.c_str());
}

std::vector<proxy_link::upstream>* proxy_link::find(int generation) {
  const auto it = generations_.find(generation);
  return it == generations_.end() ? nullptr : &it->second;
}

const std::vector<proxy_link::upstream>* proxy_link::find(int generation) const {
  const auto it = generations_.find(generation);
  return it == generations_.end() ? nullptr : &it->second;
}

result<void> proxy_link::prepare(int generation) {
  std::vector<upstream> ups;
  for (std::size_t i = 0; i < names_.size(); ++i) {
    upstream u;
    if (settings_.upstream == upstream_kind::fds_unix) {
      u.path = prefix_ + ".g" + std::to_string(generation) + "." + std::to_string(i) + ".sock";
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      if (u.path.size() >= sizeof a.sun_path)
        return error::make(errc::invalid_address,
                           "proxy upstream " + u.path +
                               ": longer than a unix socket path may be "
                               "(give a shorter --control directory or --name)");
      std::memcpy(a.sun_path, u.path.c_str(), u.path.size() + 1);
      u.fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!u.fd) return error::from_errno(errno, "proxy upstream " + u.path + ": socket");
      // Our pid is in the name: a file already there is no one else's live socket.
      if (::bind(u.fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
        return error::from_errno(errno, "proxy upstream: bind " + u.path);
      // 0600 whatever the umask: anyone who can connect here reaches the app past the front
      // (and its X-Forwarded-For). chmod between bind and listen: no connect(2) succeeds before
      // listen(), and the kernel checks the file's mode at connect, so no one gets in under the
      // umask's mode. Not umask(2) around bind: it is process-wide, and the front's thread runs.
      if (::chmod(u.path.c_str(), 0600) != 0 || ::listen(u.fd.get(), SOMAXCONN) != 0) {
        const int err = errno;
        ::unlink(u.path.c_str());
        return error::from_errno(err, "proxy upstream: chmod and listen " + u.path);
      }
      u.where = proxy::endpoint(&a, sizeof a);
    } else {
      const bool fds = settings_.upstream == upstream_kind::fds_tcp;
      auto fd = loopback_socket(fds, u.port);
      if (!fd) return fd.error();
      // --upstream port: the port was free a moment ago; the app binds it itself.
      if (fds) u.fd = std::move(*fd);
      u.where = loopback_endpoint(u.port);
    }
    if (u.fd && nonblocking_)
      if (auto r = set_nonblocking(u.fd.get()); !r) return r.error();
    if (u.fd && nodelay_ && u.path.empty())
      if (auto r = set_nodelay(u.fd.get()); !r) return r.error();
    ups.push_back(std::move(u));
  }
  generations_[generation] = std::move(ups);
  return {};
}

void proxy_link::add_to_spawn(int generation, spawn_options& so) const {
  const auto* ups = find(generation);
  if (ups == nullptr) return;
  for (std::size_t i = 0; i < ups->size(); ++i) {
    const auto& u = (*ups)[i];
    if (u.fd) {
      so.fds.push_back({u.fd.get(), names_[i]});
    } else {
      if (i == 0) so.extra_environment.push_back("PORT=" + std::to_string(u.port));
      if (!names_[i].empty())
        so.extra_environment.push_back(port_variable(names_[i]) + "=" + std::to_string(u.port));
    }
  }
}

std::vector<int> proxy_link::upstream_ports(int generation) const {
  std::vector<int> ports;
  if (const auto* ups = find(generation))
    for (const auto& u : *ups)
      if (!u.fd && u.path.empty()) ports.push_back(u.port);
  return ports;
}

std::string proxy_link::probe_address(int generation) const {
  const auto* ups = find(generation);
  if (ups == nullptr || ups->empty()) return {};
  const auto& u = ups->front();
  return u.path.empty() ? "127.0.0.1:" + std::to_string(u.port) : "unix:" + u.path;
}

void proxy_link::serve(int generation) {
  const auto* ups = find(generation);
  if (ups == nullptr) return;
  std::vector<proxy::endpoint> where;
  for (const auto& u : *ups) where.push_back(u.where);
  front_->serve(generation, std::move(where));
}

void proxy_link::retire(int generation) { front_->retire(generation); }

void proxy_link::forget(int generation) {
  front_->forget(generation);
  drained_.erase(generation);
  if (auto* ups = find(generation)) {
    for (auto& u : *ups)
      if (!u.path.empty()) ::unlink(u.path.c_str());
    generations_.erase(generation);
  }
}

void proxy_link::stop() { front_->stop(); }

// Every context the front makes (at start, at each reload) reads the one keys file, so a ticket
// issued under the certificate before a reload still opens after it. No log for
// make_tls_context: it would keep it for the front's thread, which must not use our logger. The
// file is ours (only appended to, whole lines at a time), so it is checked here instead, once
// per context: a malformed one leaves that context with OpenSSL's own keys.
std::shared_ptr<boost::asio::ssl::context> proxy_link::make_tls() const {
  http::tls_config config{settings_.tls_certificate, settings_.tls_key, ticket_keys_};
  if (ticket_keys_ >= 0)
    if (auto keys = read_ticket_keys(ticket_keys_); !keys)
      log_.log("tls_keys", "--proxy https: " + keys.error().message() +
                               "; this TLS context makes its own keys (sessions will not resume "
                               "after the next reload)");
  return http::make_tls_context(config);
}

std::string proxy_link::reload_tls() {
  if (settings_.kind != proxy_kind::https) return {};
  try {
    front_->set_tls(make_tls());
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

std::map<int, std::vector<proxy_link::saved_upstream>> proxy_link::saved_upstreams() const {
  std::map<int, std::vector<saved_upstream>> out;
  for (const auto& [id, ups] : generations_)
    for (const auto& u : ups) out[id].push_back({u.fd ? u.fd.get() : -1, u.path, u.port});
  return out;
}

void proxy_link::restore_generation(int generation, const std::vector<saved_upstream>& saved,
                                    bool drained) {
  std::vector<upstream> ups;
  for (const auto& v : saved) {
    upstream u;
    if (v.fd >= 0) u.fd.reset(v.fd);
    u.path = v.path;
    u.port = v.port;
    if (!u.path.empty()) {
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::memcpy(a.sun_path, u.path.c_str(), std::min(u.path.size() + 1, sizeof a.sun_path));
      u.where = proxy::endpoint(&a, sizeof a);
    } else {
      u.where = loopback_endpoint(u.port);
    }
    ups.push_back(std::move(u));
  }
  generations_[generation] = std::move(ups);
  if (drained) drained_.insert(generation);
}

std::vector<int> proxy_link::upstream_fds() const {
  std::vector<int> fds;
  for (const auto& [id, ups] : generations_)
    for (const auto& u : ups)
      if (u.fd) fds.push_back(u.fd.get());
  return fds;
}

void proxy_link::on_event() {
  for (const int id : front_->take_drained())
    if (generations_.count(id) != 0) drained_.insert(id);
}

}  // namespace handoff::supervisor
