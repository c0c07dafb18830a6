// A child program for the interop tests: receives its sockets with libsystemd's
// sd_listen_fds_with_names() (the reference implementation, sd_listen_fds(3)) and reports them
// in fd_report's format, with the kinds as libsystemd's sd_is_socket*() functions see them:
//   pid       <pid>
//   before    LISTEN_PID=<v>  LISTEN_FDS=<v>  LISTEN_FDNAMES=<v>   ("-" when unset)
//   result    ok  count=<n>        or   result  error  <strerror of the returned -errno>
//   socket    index=<i> fd=<fd> name=<name> family=<ipv4|ipv6|unix|other|none>
//             type=<stream|datagram|seqpacket|other|none> listening=<0|1> host=<h> port=<p>
//             cloexec=<0|1> ino=<inode> sd_match=<1 when sd_is_socket_inet()/_unix() agrees
//             with the port or path that getsockname() gives, else 0>
//   open      fd=<fd> cloexec=<0|1> ino=<inode>
//   after     LISTEN_PID=<v>  LISTEN_FDS=<v>  LISTEN_FDNAMES=<v>
//   end
// It does not link handoff: the point is to compare with an independent implementation.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void line(const std::vector<std::string>& fields) {
  std::string text;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) text += '\t';
    text += fields[i];
  }
  text += '\n';
  (void)std::fwrite(text.data(), 1, text.size(), stdout);
}

std::string variable(const char* name) {
  const char* v = std::getenv(name);
  return std::string(name) + "=" + (v != nullptr ? v : "-");
}

void listen_variables(const char* record) {
  line({record, variable("LISTEN_PID"), variable("LISTEN_FDS"), variable("LISTEN_FDNAMES")});
}

std::string cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags < 0 ? "?" : ((flags & FD_CLOEXEC) != 0 ? "1" : "0");
}

std::string inode(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? std::to_string(st.st_ino) : "?";
}

std::string family_of(int fd) {
  if (sd_is_socket_inet(fd, AF_INET, 0, -1, 0) > 0) return "ipv4";
  if (sd_is_socket_inet(fd, AF_INET6, 0, -1, 0) > 0) return "ipv6";
  if (sd_is_socket_unix(fd, 0, -1, nullptr, 0) > 0) return "unix";
  if (sd_is_socket(fd, AF_UNSPEC, 0, -1) > 0) return "other";
  return "none";
}

std::string type_of(int fd) {
  if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, -1) > 0) return "stream";
  if (sd_is_socket(fd, AF_UNSPEC, SOCK_DGRAM, -1) > 0) return "datagram";
  if (sd_is_socket(fd, AF_UNSPEC, SOCK_SEQPACKET, -1) > 0) return "seqpacket";
  if (sd_is_socket(fd, AF_UNSPEC, 0, -1) > 0) return "other";
  return "none";
}

// host, port and whether libsystemd agrees with them, from getsockname().
void local_address(int fd, std::string& host, int& port, bool& sd_match) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  host.clear();
  port = 0;
  sd_match = false;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  char text[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    host = text;
    port = ntohs(in->sin_port);
    sd_match = sd_is_socket_inet(fd, AF_INET, 0, -1, static_cast<uint16_t>(port)) > 0;
  } else if (ss.ss_family == AF_INET6) {
    const auto* in = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof text);
    host = text;
    port = ntohs(in->sin6_port);
    sd_match = sd_is_socket_inet(fd, AF_INET6, 0, -1, static_cast<uint16_t>(port)) > 0;
  } else if (ss.ss_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
    const std::size_t n =
        len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    if (n > 0 && un->sun_path[0] != '\0') {
      host = std::string(un->sun_path, ::strnlen(un->sun_path, n));
      sd_match = sd_is_socket_unix(fd, 0, -1, host.c_str(), 0) > 0;
    } else if (n > 0) {
      host = "@" + std::string(un->sun_path + 1, n - 1);
      sd_match = sd_is_socket_unix(fd, 0, -1, un->sun_path, n) > 0;
    }
  }
}

void open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != own) fds.push_back(fd);
  }
  ::closedir(dir);
  for (int fd : fds)
    line({"open", "fd=" + std::to_string(fd), "cloexec=" + cloexec(fd), "ino=" + inode(fd)});
}

}  // namespace

int main() {
  line({"pid", std::to_string(::getpid())});
  listen_variables("before");
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(1, &names);
  int exit_code = 0;
  if (n < 0) {
    line({"result", "error", std::strerror(-n)});
    exit_code = 1;
  } else {
    line({"result", "ok", "count=" + std::to_string(n)});
    for (int i = 0; i < n; ++i) {
      const int fd = SD_LISTEN_FDS_START + i;
      std::string host;
      int port = 0;
      bool sd_match = false;
      local_address(fd, host, port, sd_match);
      line({"socket", "index=" + std::to_string(i), "fd=" + std::to_string(fd),
            std::string("name=") + (names != nullptr && names[i] != nullptr ? names[i] : ""),
            "family=" + family_of(fd), "type=" + type_of(fd),
            std::string("listening=") + (sd_is_socket(fd, AF_UNSPEC, 0, 1) > 0 ? "1" : "0"),
            "host=" + host, "port=" + std::to_string(port), "cloexec=" + cloexec(fd),
            "ino=" + inode(fd), std::string("sd_match=") + (sd_match ? "1" : "0")});
    }
  }
  if (names != nullptr) {
    for (int i = 0; names[i] != nullptr; ++i) std::free(names[i]);
    std::free(static_cast<void*>(names));
  }
  open_fds();
  listen_variables("after");
  line({"end"});
  (void)std::fflush(stdout);
  return exit_code;
}
