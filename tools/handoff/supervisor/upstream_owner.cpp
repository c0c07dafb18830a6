#include "supervisor/upstream_owner.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "supervisor/core.hpp"

namespace handoff::supervisor {

namespace {

std::optional<std::string> read_file(const char* path) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

// The next whitespace-separated field of `line`, taken off it.
std::string_view field(std::string_view& line) {
  const auto start = line.find_first_not_of(' ');
  if (start == std::string_view::npos) {
    line = {};
    return {};
  }
  line.remove_prefix(start);
  const auto end = line.find(' ');
  const auto out = line.substr(0, end);
  line.remove_prefix(end == std::string_view::npos ? line.size() : end);
  return out;
}

// The kernel prints each 32-bit word of the address as %08X of its value in host order
// (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c): 127.0.0.1 is 0100007F on a little-endian host.
std::string word_of(unsigned char a, unsigned char b, unsigned char c, unsigned char d) {
  const unsigned char bytes[4] = {a, b, c, d};
  std::uint32_t host = 0;
  std::memcpy(&host, bytes, sizeof host);
  return fmt::format("{:08X}", host);
}

bool reachable(std::string_view address, bool v6) {
  const std::string loopback = word_of(127, 0, 0, 1);
  const std::string zero = "00000000";
  if (!v6) return address == loopback || address == zero;
  if (address.size() != 32) return false;
  if (address == std::string(32, '0')) return true;  // ::
  // ::ffff:127.0.0.1
  return address.substr(0, 16) == std::string(16, '0') &&
         address.substr(16, 8) == word_of(0, 0, 0xff, 0xff) && address.substr(24) == loopback;
}

}  // namespace

std::vector<ino_t> loopback_listeners_in(std::string_view table, int port, bool v6) {
  std::vector<ino_t> out;
  const std::string port_hex = fmt::format("{:04X}", port);
  bool header = true;
  while (!table.empty()) {
    const auto nl = table.find('\n');
    std::string_view line = table.substr(0, nl);
    table.remove_prefix(nl == std::string_view::npos ? table.size() : nl + 1);
    if (std::exchange(header, false)) continue;
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    (void)field(line);
    const auto local = field(line);
    (void)field(line);
    const auto state = field(line);
    for (int skip = 0; skip < 5; ++skip) (void)field(line);
    const auto inode = field(line);
    const auto colon = local.find(':');
    if (state != "0A" || colon == std::string_view::npos) continue;  // 0A: TCP_LISTEN
    if (local.substr(colon + 1) != port_hex || !reachable(local.substr(0, colon), v6)) continue;
    out.push_back(static_cast<ino_t>(std::strtoull(std::string(inode).c_str(), nullptr, 10)));
  }
  return out;
}

std::optional<std::vector<ino_t>> loopback_listeners(int port) {
  auto v4 = read_file("/proc/net/tcp");
  if (!v4) return std::nullopt;
  auto out = loopback_listeners_in(*v4, port, false);
  if (auto v6 = read_file("/proc/net/tcp6")) {  // absent without IPv6
    auto more = loopback_listeners_in(*v6, port, true);
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

std::string supervisor_core::upstream_intruder(const generation& g) {
  if (!proxy_) return {};
  std::vector<ino_t> held;
  bool known = false;
  for (const int port : proxy_->upstream_ports(g.id)) {
    const auto listeners = os_.loopback_listeners(port);
    if (!listeners) return {};  // no /proc: no verdict, as check_sockets_served
    if (!known) {
      for (const auto& s : g.slots) {
        if (!s.running()) continue;
        auto inodes = os_.socket_inodes(s.pid);
        if (!inodes) return {};
        held.insert(held.end(), inodes->begin(), inodes->end());
      }
      known = true;
    }
    if (listeners->empty()) return fmt::format("nothing listens on 127.0.0.1:{}", port);
    for (const ino_t inode : *listeners)
      if (std::find(held.begin(), held.end(), inode) == held.end())
        return fmt::format(
            "127.0.0.1:{} is listened on by a process outside the generation (socket inode {})",
            port, inode);
  }
  return {};
}

bool supervisor_core::upstream_is_ours(generation& g) {
  if (!proxy_ || o_.proxy.upstream != upstream_kind::port) return true;
  const auto now = os_.now();
  if (g.upstream_recheck != clock::time_point{} && now < g.upstream_recheck) return false;
  const std::string why = upstream_intruder(g);
  if (why.empty()) {
    g.upstream_recheck = {};
    return true;
  }
  if (now - g.started >= o_.ready_timeout) {
    fail_generation(g, reload_failure::ready_timeout,
                    fmt::format("ready, but {} after {} (--ready-timeout); not routed to", why,
                                format_duration(o_.ready_timeout)));
    return false;
  }
  if (g.upstream_recheck == clock::time_point{})
    log_.log("upstream_not_ours",
             fmt::format("generation {}: ready, but {}: not routing to it (looking again every "
                         "{} ms until --ready-timeout)",
                         g.id, why, upstream_recheck_interval.count()),
             {{"generation", g.id}});
  g.upstream_recheck = now + upstream_recheck_interval;
  return false;
}

}  // namespace handoff::supervisor
