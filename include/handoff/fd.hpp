// unique_fd: the one owner of a file descriptor.
//
// Invariant: a unique_fd holds -1 or an fd that nobody else closes. Every fd that handoff
// creates is close-on-exec from birth (SOCK_CLOEXEC, O_CLOEXEC, MSG_CMSG_CLOEXEC,
// F_DUPFD_CLOEXEC); only the exec path of spawn() clears the flag, for exactly the fds it hands on.
#pragma once

#include <utility>

#include "handoff/error.hpp"

namespace handoff {

class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  // Gives up ownership without closing.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  // Closes the held fd (if any) and takes `fd`.
  void reset(int fd = -1) noexcept;

  // A close-on-exec duplicate (F_DUPFD_CLOEXEC) at the lowest free number >= min_fd.
  result<unique_fd> duplicate(int min_fd = 0) const;

 private:
  int fd_ = -1;
};

// A close-on-exec duplicate of an fd the caller does not necessarily own.
result<unique_fd> duplicate_fd(int fd, int min_fd = 0);
// Sets or clears FD_CLOEXEC on an fd the caller does not necessarily own.
result<void> set_cloexec(int fd, bool on = true);
// Sets or clears O_NONBLOCK.
result<void> set_nonblocking(int fd, bool on = true);
// Whether `fd` is an open descriptor of this process.
bool fd_is_open(int fd) noexcept;

}  // namespace handoff
