// Shared helpers of the tests: fd counting, temporary directories, running a child program and
// capturing what it prints. Real processes and real fds, no mocks.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "handoff/fd.hpp"
#include "handoff/spawn.hpp"

namespace handoff::test {

// The fds open in this process, as /proc/self/fd lists them (without the directory's own fd).
inline std::vector<int> open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != own) fds.push_back(fd);
  }
  ::closedir(dir);
  return fds;
}
inline std::size_t count_open_fds() { return open_fds().size(); }

// A directory under /tmp, removed with its contents on destruction.
class temp_dir {
 public:
  temp_dir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "handoff-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~temp_dir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct child_output {
  exit_status status;
  std::string out;  // everything the child wrote to stdout
};

// Spawns `options` (its stdout replaced by a pipe), reads stdout to EOF and reaps the child,
// all within `timeout`. A child that outlives it is killed and reported as errc::timed_out.
inline result<child_output> run_and_capture(
    spawn_options options, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return error::from_errno(errno, "pipe2");
  unique_fd read_end(p[0]), write_end(p[1]);
  options.stdout_fd = write_end.get();
  auto pid = spawn(options);
  write_end.reset();
  if (!pid) return pid.error();
  child_output result_value;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(*pid, SIGKILL);
      (void)wait_exit(*pid, std::chrono::seconds(5));
      return error::make(errc::timed_out, "child " + options.argv.at(0) + " did not finish");
    }
    pollfd pfd{read_end.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
      return error::from_errno(errno, "poll");
    if (pfd.revents == 0) continue;
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result_value.out.append(buf, static_cast<std::size_t>(n));
  }
  auto status = wait_exit(*pid, std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now()) +
                                    std::chrono::seconds(1));
  if (!status) {
    ::kill(*pid, SIGKILL);
    (void)wait_exit(*pid, std::chrono::seconds(5));
    return status.error();
  }
  result_value.status = *status;
  return result_value;
}

}  // namespace handoff::test
