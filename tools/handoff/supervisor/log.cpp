#include "supervisor/log.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <ctime>

#include "supervisor/byte_text.hpp"

namespace handoff::supervisor {

namespace {

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  const std::time_t secs = static_cast<std::time_t>(ms.count() / 1000);
  std::tm utc{};
  ::gmtime_r(&secs, &utc);
  char stamp[32];
  (void)std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03}Z", stamp, ms.count() % 1000);
}

}  // namespace

void json_string(std::string& out, std::string_view text) {
  // JSON is UTF-8: bytes from outside (a name, a path) that are not become U+FFFD.
  out += boost::json::serialize(boost::json::string(utf8_or_replacement(text)));
}

bool stderr_is_journal() {
  // systemd.exec(5): JOURNAL_STREAM=DEVICE:INODE of the stream stdout/stderr were connected to.
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return fmt::format("{}:{}", st.st_dev, st.st_ino) == stream;
}

logger::~logger() {
  flush();
  if (own_fd_) ::close(fd_);
}

void logger::start_nonblocking() {
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return;
  if (S_ISSOCK(st.st_mode)) {
    is_socket_ = true;
    nonblocking_ = true;
  } else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
    const int fd = ::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
      fd_ = fd;
      own_fd_ = true;
      nonblocking_ = true;
    }
  }
}

long logger::write_some(std::string_view text) const {
  for (;;) {
    const ssize_t n = is_socket_
                          ? ::send(fd_, text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                          : ::write(fd_, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    return n;
  }
}

std::string logger::format(std::string_view event, std::string_view message,
                           const log_fields& fields) const {
  if (format_ == log_format::text) {
    if (timestamps_) return fmt::format("{} handoff[{}]: {}\n", utc_now(), name_, message);
    return fmt::format("handoff[{}]: {}\n", name_, message);
  }
  std::string line = fmt::format("{{\"time\":\"{}\",\"name\":", utc_now());
  json_string(line, name_);
  line += ",\"event\":";
  json_string(line, event);
  for (const auto& [key, value] : fields) {
    line += ',';
    json_string(line, key);
    line += ':';
    if (const auto* n = std::get_if<long long>(&value))
      line += std::to_string(*n);
    else
      json_string(line, std::get<std::string>(value));
  }
  line += ",\"message\":";
  json_string(line, message);
  line += "}\n";
  return line;
}

void logger::log(std::string_view event, std::string_view message, const log_fields& fields) const {
  std::uint64_t suppressed = 0;
  if (!limiter_.admit(event, message, std::chrono::steady_clock::now(), suppressed)) return;
  if (suppressed == 0) {
    write_line(event, message, fields);
    return;
  }
  log_fields more = fields;
  more.emplace_back("suppressed", static_cast<long long>(suppressed));
  write_line(event, fmt::format("{} ({} similar messages suppressed)", message, suppressed), more);
}

void logger::report_suppressed(deadlines& due) const {
  // The limiter runs on the real clock (log() has no other); `due` may be a test's.
  const auto now = std::chrono::steady_clock::now();
  auto next = clock::time_point::max();
  for (auto& r : limiter_.take_reports(now, next))
    write_line(r.kind,
               fmt::format("{} similar messages suppressed; the last: {}", r.suppressed, r.last),
               {{"suppressed", static_cast<long long>(r.suppressed)}});
  if (next != clock::time_point::max()) (void)due.reached(due.now() + (next - now));
}

void logger::write_line(std::string_view event, std::string_view message,
                        const log_fields& fields) const {
  const std::string line = format(event, message, fields);
  if (!pending_.empty() || dropped_ > 0) {
    flush();
    if (!pending_.empty()) {
      if (pending_.size() + line.size() <= log_buffer_max)
        pending_ += line;
      else
        ++dropped_, ++dropped_total_;
      return;
    }
  }
  // One write(2) per line, so lines of the supervisor and of the app do not interleave mid-line.
  std::string_view rest = line;
  while (!rest.empty()) {
    const long n = write_some(rest);
    if (n <= 0) break;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  // Not written (a full pipe): kept, whole or its tail, when writes never wait; a blocking
  // stderr that failed has nowhere else to go.
  if (!rest.empty() && nonblocking_ && (errno == EAGAIN || errno == EWOULDBLOCK))
    pending_.assign(rest);
}

int logger::poll_fd() const noexcept { return pending_.empty() && dropped_ == 0 ? -1 : fd_; }

void logger::flush() const {
  for (;;) {
    while (!pending_.empty()) {
      const long n = write_some(pending_);
      if (n <= 0) return;
      pending_.erase(0, static_cast<std::size_t>(n));
    }
    if (dropped_ == 0) return;
    const auto count = dropped_;
    dropped_ = 0;
    pending_ = format("log_dropped",
                      fmt::format("{} log lines dropped: stderr was not read fast enough", count),
                      {{"dropped", static_cast<long long>(count)}});
  }
}

}  // namespace handoff::supervisor
