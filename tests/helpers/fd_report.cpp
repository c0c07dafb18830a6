// A child program for the tests: receives its sockets with handoff::listen_fds() and reports
// what it got, and what else it sees, on stdout.
//
// One record per line, fields separated by tabs, the first field names the record:
//   pid        <pid>
//   pgid       <process group>
//   cwd        <working directory>
//   signals    blocked=<SigBlk hex>  ignored=<SigIgn hex>        (/proc/self/status)
//   before     LISTEN_PID=<v>  LISTEN_FDS=<v>  LISTEN_FDNAMES=<v>  ("-" when unset), as found
//   result     ok  count=<n>       or   result  error  <message>
//   socket     index=<i> fd=<fd> name=<name> family=<f> type=<t> listening=<0|1> host=<h>
//              port=<p> cloexec=<0|1> ino=<inode> describe=<socket_info::describe()>
//   open       fd=<fd> cloexec=<0|1> ino=<inode> target=<readlink of /proc/self/fd/N>
//   after      LISTEN_PID=<v>  LISTEN_FDS=<v>  LISTEN_FDNAMES=<v>  (after listen_fds())
//   env        <KEY=VALUE>   (every variable of the environment, after listen_fds())
//   end
// Tabs, newlines and backslashes inside values are written as \t, \n and \\.
// Options: --keep-env calls listen_fds(unset_environment::no).
// Exit status: 0, or 1 when listen_fds() failed (the message also goes to stderr).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "handoff/activation.hpp"

extern char** environ;  // NOLINT: POSIX

namespace {

std::string escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\t')
      out += "\\t";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\\')
      out += "\\\\";
    else
      out += c;
  }
  return out;
}

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
  return std::string(name) + "=" + (v != nullptr ? escaped(v) : "-");
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

const char* family_name(handoff::socket_family f) {
  switch (f) {
    case handoff::socket_family::none:
      return "none";
    case handoff::socket_family::ipv4:
      return "ipv4";
    case handoff::socket_family::ipv6:
      return "ipv6";
    case handoff::socket_family::unix_domain:
      return "unix";
    case handoff::socket_family::other:
      return "other";
  }
  return "?";
}

const char* type_name(handoff::socket_type t) {
  switch (t) {
    case handoff::socket_type::none:
      return "none";
    case handoff::socket_type::stream:
      return "stream";
    case handoff::socket_type::datagram:
      return "datagram";
    case handoff::socket_type::seqpacket:
      return "seqpacket";
    case handoff::socket_type::other:
      return "other";
  }
  return "?";
}

void status_signals() {
  std::ifstream status("/proc/self/status");
  std::string text, blocked = "?", ignored = "?";
  while (std::getline(status, text)) {
    if (text.rfind("SigBlk:", 0) == 0) blocked = text.substr(text.find_first_not_of(" \t", 7));
    if (text.rfind("SigIgn:", 0) == 0) ignored = text.substr(text.find_first_not_of(" \t", 7));
  }
  line({"signals", "blocked=" + blocked, "ignored=" + ignored});
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
  for (int fd : fds) {
    char target[4096];
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    const std::string where = n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?";
    line({"open", "fd=" + std::to_string(fd), "cloexec=" + cloexec(fd), "ino=" + inode(fd),
          "target=" + escaped(where)});
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--keep-env") == 0) {
      keep = true;
    } else {
      (void)std::fprintf(stderr, "fd_report: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  line({"pid", std::to_string(::getpid())});
  line({"pgid", std::to_string(::getpgid(0))});
  char cwd[4096];
  line({"cwd", ::getcwd(cwd, sizeof cwd) != nullptr ? escaped(cwd) : "?"});
  status_signals();
  listen_variables("before");

  auto sockets =
      handoff::listen_fds(keep ? handoff::unset_environment::no : handoff::unset_environment::yes);
  int exit_code = 0;
  if (sockets) {
    line({"result", "ok", "count=" + std::to_string(sockets->size())});
    for (std::size_t i = 0; i < sockets->size(); ++i) {
      const auto& s = (*sockets)[i];
      const int fd = s.fd.get();
      line({"socket", "index=" + std::to_string(i), "fd=" + std::to_string(fd),
            "name=" + escaped(s.name), std::string("family=") + family_name(s.info.family),
            std::string("type=") + type_name(s.info.type),
            std::string("listening=") + (s.info.listening ? "1" : "0"),
            "host=" + escaped(s.info.local.host), "port=" + std::to_string(s.info.local.port),
            "cloexec=" + cloexec(fd), "ino=" + inode(fd),
            "describe=" + escaped(s.info.describe())});
    }
  } else {
    line({"result", "error", escaped(sockets.error().message())});
    (void)std::fprintf(stderr, "fd_report: %s\n", sockets.error().message().c_str());
    exit_code = 1;
  }
  open_fds();
  listen_variables("after");
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) line({"env", escaped(*e)});
  line({"end"});
  (void)std::fflush(stdout);
  return exit_code;
}
