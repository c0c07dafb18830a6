#include "supervisor/fd_limits.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace handoff::supervisor {

namespace {

// fs.nr_open: the ceiling of any RLIMIT_NOFILE (setrlimit(2): EPERM above it).
std::optional<std::uint64_t> nr_open() {
  const int fd = ::open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[32] = {};
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(buf, &end, 10);
  if (end == buf || value == 0) return std::nullopt;
  return value;
}

}  // namespace

open_files_limit raise_open_files_limit() {
  open_files_limit out;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return out;
  out.original_soft = out.soft = limit.rlim_cur;
  out.hard = limit.rlim_max;
  rlim_t target = limit.rlim_max;
  if (target == RLIM_INFINITY) target = nr_open().value_or(limit.rlim_cur);
  if (target <= limit.rlim_cur) return out;
  rlimit raised = limit;
  raised.rlim_cur = target;
  if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) out.soft = target;
  return out;
}

std::uint64_t reserved_fds(std::uint64_t limit) { return std::max<std::uint64_t>(64, limit / 16); }

std::uint64_t default_max_connections(std::uint64_t limit) {
  const auto reserve = reserved_fds(limit);
  return limit > reserve + 2 ? (limit - reserve) / 2 : 1;
}

std::uint64_t fds_needed(std::uint64_t max_connections) {
  // The reserve of the limit that would give this default, near enough: 2n + 64, or 2n * 16/15.
  return std::max<std::uint64_t>(2 * max_connections + 64, 2 * max_connections * 16 / 15);
}

std::optional<std::uint64_t> open_fd_count() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  std::uint64_t count = 0;
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++count;
  ::closedir(dir);
  return count - 1;  // the directory's own fd
}

}  // namespace handoff::supervisor
