// The receiving side of NOTIFY_SOCKET, as systemd's manager_dispatch_notify_fd reads it, but
// strict: whatever systemd would log and drop is an error here, with the sender's pid.
#include "handoff/notify_receiver.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "quote.hpp"
#include "sys.hpp"
#include "unix_address.hpp"

namespace handoff {
namespace {

bool valid_key_char(char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }

error bad_message(pid_t pid, const std::string& what) {
  return error::make(errc::invalid_message,
                     "notify message from pid " + std::to_string(pid) + ": " + what);
}

}  // namespace

namespace {

// What is wrong with `datagram`, or nullopt when it parsed into `fields`.
std::optional<std::string> parse_fields(std::string_view datagram, notify_fields& fields) {
  if (const auto at = datagram.find('\0'); at != std::string_view::npos) {
    const auto before = datagram.rfind('\n', at);
    const auto start = before == std::string_view::npos ? 0 : before + 1;
    return "NUL byte in line " +
           sys::quote(datagram.substr(start, datagram.find('\n', at) - start));
  }
  std::size_t pos = 0;
  while (pos < datagram.size()) {
    auto end = datagram.find('\n', pos);
    if (end == std::string_view::npos) end = datagram.size();
    const std::string_view line = datagram.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    const auto eq = line.find('=');
    if (eq == std::string_view::npos) return "line " + sys::quote(line) + " is not KEY=VALUE";
    const std::string_view key = line.substr(0, eq);
    if (key.empty()) return "line " + sys::quote(line) + " has an empty key";
    if (!std::all_of(key.begin(), key.end(), valid_key_char))
      return "line " + sys::quote(line) + " has a key that is not [A-Z0-9_]";
    fields.emplace_back(std::string(key), std::string(line.substr(eq + 1)));
  }
  return std::nullopt;
}

}  // namespace

result<notify_fields> parse_notify_message(std::string_view datagram) {
  notify_fields fields;
  if (auto what = parse_fields(datagram, fields))
    return error::make(errc::invalid_message, "notify message: " + *what);
  return fields;
}

std::optional<std::string_view> notify_message::get(std::string_view key) const {
  for (auto it = fields.rbegin(); it != fields.rend(); ++it)
    if (it->first == key) return std::string_view(it->second);
  return std::nullopt;
}

bool notify_message::has(std::string_view key, std::string_view value) const {
  const auto v = get(key);
  return v && *v == value;
}

notify_receiver::notify_receiver(unique_fd fd, std::string address, std::string created_path)
    : fd_(std::move(fd)), address_(std::move(address)), created_path_(std::move(created_path)) {}

notify_receiver::notify_receiver(notify_receiver&& other) noexcept
    : fd_(std::move(other.fd_)),
      address_(std::exchange(other.address_, {})),
      created_path_(std::exchange(other.created_path_, {})) {}

notify_receiver& notify_receiver::operator=(notify_receiver&& other) noexcept {
  if (this != &other) {
    if (!created_path_.empty()) ::unlink(created_path_.c_str());
    fd_ = std::move(other.fd_);
    address_ = std::exchange(other.address_, {});
    created_path_ = std::exchange(other.created_path_, {});
  }
  return *this;
}

notify_receiver::~notify_receiver() {
  // Only the path this receiver's bind() created: bind never replaces a file, so it is ours.
  if (!created_path_.empty()) ::unlink(created_path_.c_str());
}

namespace {

result<unique_fd> notify_socket(const std::string& what) {
  unique_fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return error::from_errno(errno, "socket for " + what);
  // Every datagram then carries the sender's pid/uid/gid, as the kernel saw them (unix(7)).
  const int on = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
    return error::from_errno(errno, "setsockopt SO_PASSCRED on " + what);
  return fd;
}

}  // namespace

result<notify_receiver> notify_receiver::open(std::string where) {
  const std::string what = "notify socket " + sys::quote(where);
  // A child must find the socket from any working directory: NOTIFY_SOCKET is absolute.
  if (where.empty() || (where.front() != '/' && where.front() != '@'))
    return error::make(errc::invalid_address,
                       what + ": not an absolute path or an abstract socket name (\"@name\")");
  auto addr = sys::make_unix_sockaddr(where, "notify socket");
  if (!addr) return addr.error();
  auto fd = notify_socket(what);
  if (!fd) return fd.error();
  // bind(2) fails with EADDRINUSE on any existing file: a path is never replaced.
  if (::bind(fd->get(), addr->get(), addr->length) != 0)
    return error::from_errno(errno, "bind " + what);
  std::string created = where.front() == '/' ? where : std::string();
  return notify_receiver(std::move(*fd), std::move(where), std::move(created));
}

notify_receiver notify_receiver::adopt(unique_fd fd, std::string address) {
  // The process that bound a path is still this one (an exec keeps the pid): the file is ours.
  std::string created = !address.empty() && address.front() == '/' ? address : std::string();
  return notify_receiver(std::move(fd), std::move(address), std::move(created));
}

result<notify_receiver> notify_receiver::open_unique() {
  auto fd = notify_socket("an autobound notify socket");
  if (!fd) return fd.error();
  // Autobind: an address of only sun_family makes the kernel pick a unique abstract name.
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (::bind(fd->get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(sa_family_t)) != 0)
    return error::from_errno(errno, "bind an autobound notify socket");
  socklen_t length = sizeof addr;
  if (::getsockname(fd->get(), reinterpret_cast<sockaddr*>(&addr), &length) != 0)
    return error::from_errno(errno, "getsockname of an autobound notify socket");
  std::string name = sys::unix_sockaddr_text(addr, length);
  if (name.size() < 2 || name.front() != '@')
    return error::make(errc::unsupported,
                       "autobound notify socket got no abstract name: " + sys::quote(name));
  return notify_receiver(std::move(*fd), std::move(name), std::string());
}

result<std::optional<notify_message>> notify_receiver::try_receive() {
  char buf[notify_message_max + 1];
  // Room for the credentials and the most fds one message can carry (SCM_MAX_FD), so that
  // MSG_CTRUNC means a real loss.
  alignas(
      cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * notify_fds_max)];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  // MSG_TRUNC: the real length of a datagram longer than the buffer, so it is seen as oversized.
  const ssize_t n = sys::retry_eintr(
      [&] { return ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT | MSG_TRUNC); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::optional<notify_message>();
    return error::from_errno(errno, "receive on notify socket " + sys::quote(address_));
  }

  notify_message m;
  bool have_creds = false;
  // Own every received fd before any check, so that each error path closes them all.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_RIGHTS) {
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        m.fds.emplace_back(fd);
      }
    } else if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(ucred))) {
      ucred creds{};
      std::memcpy(&creds, CMSG_DATA(c), sizeof creds);
      m.pid = creds.pid;
      m.uid = creds.uid;
      m.gid = creds.gid;
      have_creds = true;
    }
  }

  if (!have_creds)
    return error::make(
        errc::invalid_message,
        "notify message without sender credentials (SCM_CREDENTIALS) on " + sys::quote(address_));
  if ((msg.msg_flags & MSG_CTRUNC) != 0)
    return bad_message(m.pid, "control data truncated (more than " +
                                  std::to_string(notify_fds_max) +
                                  " fds, or no room for them in this process), " +
                                  std::to_string(m.fds.size()) + " fds received and closed");
  const auto size = static_cast<std::size_t>(n);
  if (size > notify_message_max || (msg.msg_flags & MSG_TRUNC) != 0)
    return bad_message(m.pid, std::to_string(size) + " bytes, more than the " +
                                  std::to_string(notify_message_max) + " a message may have");
  if (size == 0) return bad_message(m.pid, "empty datagram");
  const std::string_view text(buf, size);
  if (auto what = parse_fields(text, m.fields)) return bad_message(m.pid, *what);
  if (m.fields.empty()) return bad_message(m.pid, "no KEY=VALUE line in " + sys::quote(text));

  const bool barrier = m.has("BARRIER");
  const bool fdstore = m.has("FDSTORE");
  if (barrier && fdstore) return bad_message(m.pid, "BARRIER=1 and FDSTORE=1 in one message");
  if (barrier && m.fds.size() != 1)
    return bad_message(
        m.pid, "BARRIER=1 with " + std::to_string(m.fds.size()) + " fds instead of exactly one");
  if (!barrier && !fdstore && !m.fds.empty())
    return bad_message(
        m.pid, std::to_string(m.fds.size()) +
                   " fds in a message with neither FDSTORE=1 nor BARRIER=1: " + sys::quote(text));
  // Closing the barrier's fd is the answer: everything sent before it has been read.
  if (barrier) m.fds.clear();
  return std::optional<notify_message>(std::move(m));
}

result<notify_message> notify_receiver::receive(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto r = try_receive();
    if (!r) return r.error();
    if (*r) return std::move(**r);
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return error::make(errc::timed_out, "no notify message on " + sys::quote(address_) +
                                              " within " + std::to_string(timeout.count()) + " ms");
    pollfd pfd{fd_.get(), POLLIN, 0};
    const int p = ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), INT_MAX)));
    if (p < 0 && errno != EINTR)
      return error::from_errno(errno, "poll notify socket " + sys::quote(address_));
  }
}

}  // namespace handoff
