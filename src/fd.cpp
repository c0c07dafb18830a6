#include "handoff/fd.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <string>

namespace handoff {

void unique_fd::reset(int fd) noexcept {
  // close(2) is not retried on EINTR: on Linux the fd is released even then, and a retry could
  // close an fd another thread just received.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

result<unique_fd> duplicate_fd(int fd, int min_fd) {
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, min_fd);
  if (copy < 0) return error::from_errno(errno, "dup fd " + std::to_string(fd));
  return unique_fd(copy);
}

result<unique_fd> unique_fd::duplicate(int min_fd) const { return duplicate_fd(fd_, min_fd); }

result<void> set_cloexec(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0) return error::from_errno(errno, "fcntl F_GETFD fd " + std::to_string(fd));
  int wanted = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (wanted != flags && ::fcntl(fd, F_SETFD, wanted) < 0)
    return error::from_errno(errno, "fcntl F_SETFD fd " + std::to_string(fd));
  return {};
}

result<void> set_nonblocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return error::from_errno(errno, "fcntl F_GETFL fd " + std::to_string(fd));
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) < 0)
    return error::from_errno(errno, "fcntl F_SETFL fd " + std::to_string(fd));
  return {};
}

bool fd_is_open(int fd) noexcept { return fd >= 0 && ::fcntl(fd, F_GETFD) >= 0; }

}  // namespace handoff
