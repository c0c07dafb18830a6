// Shared by the integration tests of the socket-passing protocol: reading the reports of the
// child programs fd_report and sd_listen_child (format: see tests/helpers/fd_report.cpp), and
// making real sockets with raw system calls (the tests do not depend on open_listener()).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "handoff/fd.hpp"
#include "test_support.hpp"

namespace handoff::test {

struct reported_socket {
  int index = -1, fd = -1, port = -1;
  std::string name, family, type, host, describe;
  bool listening = false, cloexec = false, sd_match = false;
  std::string ino;
};

struct reported_fd {
  int fd = -1;
  bool cloexec = false;
  std::string ino, target;
};

struct child_report {
  pid_t pid = -1, pgid = -1;
  std::string cwd, signals_blocked, signals_ignored;
  std::map<std::string, std::string> before, after;  // LISTEN_* ("-" when unset)
  bool ok = false;
  int count = -1;
  std::string error;
  std::vector<reported_socket> sockets;
  std::vector<reported_fd> open;
  std::vector<std::string> env;
  bool complete = false;  // the closing "end" line was seen

  std::vector<int> open_fd_numbers() const {
    std::vector<int> fds;
    for (const auto& o : open) fds.push_back(o.fd);
    std::sort(fds.begin(), fds.end());
    return fds;
  }
  const reported_fd* find_open(int fd) const {
    for (const auto& o : open)
      if (o.fd == fd) return &o;
    return nullptr;
  }
  std::optional<std::string> env_value(const std::string& key) const {
    for (const auto& e : env)
      if (e.compare(0, key.size() + 1, key + "=") == 0) return e.substr(key.size() + 1);
    return std::nullopt;
  }
  bool env_has_key(const std::string& key) const { return env_value(key).has_value(); }
};

inline std::string unescape(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) {
      const char c = text[++i];
      out += c == 't' ? '\t' : c == 'n' ? '\n' : c;
    } else {
      out += text[i];
    }
  }
  return out;
}

inline std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? tab : tab - start));
    if (tab == std::string::npos) return fields;
    start = tab + 1;
  }
}

// key=value fields after the record name.
inline std::map<std::string, std::string> key_values(const std::vector<std::string>& fields) {
  std::map<std::string, std::string> kv;
  for (std::size_t i = 1; i < fields.size(); ++i) {
    const std::size_t eq = fields[i].find('=');
    if (eq == std::string::npos) continue;
    kv[fields[i].substr(0, eq)] = unescape(fields[i].substr(eq + 1));
  }
  return kv;
}

inline child_report parse_report(const std::string& text) {
  child_report r;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto fields = split_fields(line);
    const std::string& record = fields[0];
    const auto kv = key_values(fields);
    auto get = [&](const char* key) {
      auto it = kv.find(key);
      return it == kv.end() ? std::string() : it->second;
    };
    auto number = [&](const char* key) { return std::atoi(get(key).c_str()); };
    if (record == "pid" && fields.size() > 1) {
      r.pid = std::atoi(fields[1].c_str());
    } else if (record == "pgid" && fields.size() > 1) {
      r.pgid = std::atoi(fields[1].c_str());
    } else if (record == "cwd" && fields.size() > 1) {
      r.cwd = unescape(fields[1]);
    } else if (record == "signals") {
      r.signals_blocked = get("blocked");
      r.signals_ignored = get("ignored");
    } else if (record == "before") {
      r.before = kv;
    } else if (record == "after") {
      r.after = kv;
    } else if (record == "result" && fields.size() > 1) {
      r.ok = fields[1] == "ok";
      if (r.ok) r.count = number("count");
      if (!r.ok && fields.size() > 2) r.error = unescape(fields[2]);
    } else if (record == "socket") {
      reported_socket s;
      s.index = number("index");
      s.fd = number("fd");
      s.port = number("port");
      s.name = get("name");
      s.family = get("family");
      s.type = get("type");
      s.host = get("host");
      s.describe = get("describe");
      s.listening = get("listening") == "1";
      s.cloexec = get("cloexec") == "1";
      s.sd_match = get("sd_match") == "1";
      s.ino = get("ino");
      r.sockets.push_back(s);
    } else if (record == "open") {
      reported_fd o;
      o.fd = number("fd");
      o.cloexec = get("cloexec") == "1";
      o.ino = get("ino");
      o.target = get("target");
      r.open.push_back(o);
    } else if (record == "env" && fields.size() > 1) {
      r.env.push_back(unescape(fields[1]));
    } else if (record == "end") {
      r.complete = true;
    }
  }
  return r;
}

// The inode of what `fd` refers to, as the reports print it: the identity of a socket across
// processes.
inline std::string inode_of(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? std::to_string(st.st_ino) : "?";
}

inline bool has_cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags >= 0 && (flags & FD_CLOEXEC) != 0;
}

// A socket bound to `host` (an IPv4 or IPv6 literal) port 0; listening when it is a stream.
inline unique_fd inet_socket(const char* host, int type = SOCK_STREAM, int* port = nullptr) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  const bool v6 = std::strchr(host, ':') != nullptr;
  if (v6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&ss);
    in->sin6_family = AF_INET6;
    if (::inet_pton(AF_INET6, host, &in->sin6_addr) != 1) return {};
    len = sizeof *in;
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    if (::inet_pton(AF_INET, host, &in->sin_addr) != 1) return {};
    len = sizeof *in;
  }
  unique_fd fd(::socket(v6 ? AF_INET6 : AF_INET, type | SOCK_CLOEXEC, 0));
  if (!fd) return {};
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return {};
  if (type == SOCK_STREAM && ::listen(fd.get(), 16) != 0) return {};
  if (port != nullptr) {
    len = sizeof ss;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    *port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                     : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  return fd;
}

inline unique_fd unix_socket(const std::string& path, int type = SOCK_STREAM) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return {};
  std::memcpy(addr.sun_path, path.data(), path.size());
  unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return {};
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  if (type != SOCK_DGRAM && ::listen(fd.get(), 16) != 0) return {};
  return fd;
}

// The same open file on a number >= `min`, close-on-exec; the original is closed. Sockets made
// for the clobbering tests first go up there, out of the range 3.. they are then placed on.
inline unique_fd lifted(unique_fd fd, int min = 100) {
  unique_fd high(::fcntl(fd.get(), F_DUPFD_CLOEXEC, min));
  return high;
}

// Puts a duplicate of `source` on the number `target` for the lifetime of the lease, with
// FD_CLOEXEC as every fd of ours. Whatever this process had on `target` (ctest leaks its log
// file into tests on fd 3) is kept aside meanwhile and put back afterwards.
class fd_lease {
 public:
  fd_lease(int source, int target) : target_(target) {
    const int flags = ::fcntl(target, F_GETFD);
    if (flags >= 0) {
      saved_ = unique_fd(::fcntl(target, F_DUPFD_CLOEXEC, 1000));
      saved_cloexec_ = (flags & FD_CLOEXEC) != 0;
    }
    ok_ = source != target && ::dup3(source, target, O_CLOEXEC) == target;
  }
  ~fd_lease() {
    if (saved_)
      ::dup3(saved_.get(), target_, saved_cloexec_ ? O_CLOEXEC : 0);
    else if (ok_)
      ::close(target_);
  }
  fd_lease(const fd_lease&) = delete;
  fd_lease& operator=(const fd_lease&) = delete;
  bool ok() const { return ok_; }
  int get() const { return target_; }

 private:
  int target_;
  unique_fd saved_;
  bool saved_cloexec_ = false;
  bool ok_ = false;
};

// Whether this kernel has a usable ::1 (some containers have no IPv6).
inline bool have_ipv6_loopback() { return inet_socket("::1").valid(); }

// waitpid(-1) finds no child: every child was reaped, none is a zombie.
inline bool no_children_left() {
  int status = 0;
  const pid_t r = ::waitpid(-1, &status, WNOHANG);
  return r == -1 && errno == ECHILD;
}

// Kills and reaps a child that a failed test left running (a test never leaves a process
// behind); release() once the test has reaped it itself.
class child_guard {
 public:
  explicit child_guard(pid_t pid) : pid_(pid) {}
  ~child_guard() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  child_guard(const child_guard&) = delete;
  child_guard& operator=(const child_guard&) = delete;
  void release() { pid_ = -1; }

 private:
  pid_t pid_;
};

// Spawns, captures stdout and parses it as a report.
inline child_report run_report(spawn_options options, exit_status* status = nullptr) {
  auto out = run_and_capture(std::move(options));
  if (!out) {
    child_report failed;
    failed.error = "run_and_capture: " + out.error().message();
    return failed;
  }
  if (status != nullptr) *status = out->status;
  return parse_report(out->out);
}

}  // namespace handoff::test
