// The floor of a keep-alive `GET /` on this kernel, for bench/io_floor: a responder whose reads
// and writes are io_uring submissions, so the system calls per request fall below the one recv
// plus one send that every epoll server (nginx, Go, handoff::http) makes. It answers every
// request whose header has ended with the same fixed response, keep-alive, and does nothing
// else: no parsing, no limits, no timeouts, no `Connection: close`. It is a measuring stick for
// what the kernel costs without those system calls, not a server.
//
// One ring, one thread. Each connection has one operation in flight at a time: a recv, or the
// send of the answers to every request that recv completed (pipelined ones included). A single
// io_uring_submit_and_wait per loop submits everything queued and reaps what completed.
//
//   uring_hello 127.0.0.1:PORT
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

constexpr std::string_view answer =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\nhello from uring\n";

struct connection {
  int fd = -1;
  char in[16 * 1024];
  std::size_t used = 0;  // bytes of `in` not yet answered (an unfinished header)
  std::string out;       // the answers being sent
  std::size_t sent = 0;
};

enum class kind : std::uint64_t { accept = 1, recv = 2, send = 3 };

std::uint64_t tag(kind k, int fd) {
  return (static_cast<std::uint64_t>(fd) << 8) | static_cast<std::uint64_t>(k);
}

class server {
 public:
  explicit server(int listener) : listener_(listener) {
    io_uring_params params{};
    // One thread submits; completions are run when it waits, not from interrupts (kernel 6.1+).
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int r = io_uring_queue_init_params(1024, &ring_, &params);
    if (r == -EINVAL) {
      params = {};
      r = io_uring_queue_init_params(1024, &ring_, &params);
    }
    if (r < 0) {
      std::fprintf(stderr, "uring_hello: io_uring: %s\n", std::strerror(-r));
      std::exit(1);
    }
  }

  [[noreturn]] void run() {
    queue_accept();
    for (;;) {
      const int r = io_uring_submit_and_wait(&ring_, 1);
      if (r < 0 && r != -EINTR) {
        std::fprintf(stderr, "uring_hello: submit: %s\n", std::strerror(-r));
        std::exit(1);
      }
      io_uring_cqe* cqe = nullptr;
      unsigned head = 0, seen = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        complete(cqe->user_data, cqe->res, cqe->flags);
      }
      io_uring_cq_advance(&ring_, seen);
    }
  }

 private:
  io_uring_sqe* next_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // the queue is full: submit what is there and take a slot
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }
  void queue_accept() {
    io_uring_sqe* sqe = next_sqe();
    io_uring_prep_multishot_accept(sqe, listener_, nullptr, nullptr, 0);
    io_uring_sqe_set_data64(sqe, tag(kind::accept, 0));
  }
  void queue_recv(connection& c) {
    io_uring_sqe* sqe = next_sqe();
    io_uring_prep_recv(sqe, c.fd, c.in + c.used, sizeof c.in - c.used, 0);
    io_uring_sqe_set_data64(sqe, tag(kind::recv, c.fd));
  }
  void queue_send(connection& c) {
    io_uring_sqe* sqe = next_sqe();
    io_uring_prep_send(sqe, c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(kind::send, c.fd));
  }
  void drop(int fd) {
    ::close(fd);
    connections_.erase(fd);
  }

  void complete(std::uint64_t data, int res, unsigned flags) {
    const auto k = static_cast<kind>(data & 0xff);
    const int fd = static_cast<int>(data >> 8);
    if (k == kind::accept) {
      if (res >= 0) {
        const int one = 1;
        ::setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto& c = connections_[res];
        c = std::make_unique<connection>();
        c->fd = res;
        queue_recv(*c);
      }
      if ((flags & IORING_CQE_F_MORE) == 0) queue_accept();  // the multishot accept ended
      return;
    }
    const auto it = connections_.find(fd);
    if (it == connections_.end()) return;
    connection& c = *it->second;
    if (res <= 0) {  // the client closed, or an error: either way this connection is over
      drop(fd);
      return;
    }
    if (k == kind::recv) {
      c.used += static_cast<std::size_t>(res);
      // Every request whose header has ended gets an answer; the unfinished rest stays.
      std::string_view unread(c.in, c.used);
      std::size_t answered = 0;
      for (std::size_t end; (end = unread.find("\r\n\r\n", answered)) != std::string_view::npos;) {
        c.out.append(answer);
        answered = end + 4;
      }
      std::memmove(c.in, c.in + answered, c.used - answered);
      c.used -= answered;
      if (c.out.empty()) {
        if (c.used == sizeof c.in) {  // a header larger than the buffer: not ours to serve
          drop(fd);
          return;
        }
        queue_recv(c);
      } else {
        queue_send(c);
      }
      return;
    }
    c.sent += static_cast<std::size_t>(res);
    if (c.sent < c.out.size()) {
      queue_send(c);  // a short send: the rest
      return;
    }
    c.out.clear();
    c.sent = 0;
    queue_recv(c);
  }

  int listener_;
  io_uring ring_{};
  std::unordered_map<int, std::unique_ptr<connection>> connections_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string_view arg = argc == 2 ? argv[1] : "";
  const auto colon = arg.rfind(':');
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (colon == std::string_view::npos ||
      ::inet_pton(AF_INET, std::string(arg.substr(0, colon)).c_str(), &address.sin_addr) != 1) {
    std::fprintf(stderr, "usage: uring_hello IPV4:PORT\n");
    return 2;
  }
  address.sin_port = htons(static_cast<std::uint16_t>(std::atoi(argv[1] + colon + 1)));
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listener, 4096) != 0) {
    std::perror("uring_hello: listen");
    return 1;
  }
  server(listener).run();
}
