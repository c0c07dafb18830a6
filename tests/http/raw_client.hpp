// A deliberately plain blocking HTTP/1.1 client for the tests: it never retries, and it tells
// every way a request can fail apart, so a test can assert that none happened. It reads
// Content-Length and chunked bodies; that is all the example server sends.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <string_view>

#include "handoff/fd.hpp"

namespace handoff::test {

enum class outcome {
  ok,            // a complete response (any status)
  refused,       // connect refused
  reset,         // ECONNRESET/EPIPE before the response was complete
  closed_early,  // EOF before any response byte (on a reused connection: the keep-alive race)
  truncated,     // EOF in the middle of the response
  timed_out,     // no complete response within the timeout
  malformed,     // bytes that are not an HTTP response
};

inline const char* to_string(outcome o) {
  switch (o) {
    case outcome::ok:
      return "ok";
    case outcome::refused:
      return "refused";
    case outcome::reset:
      return "reset";
    case outcome::closed_early:
      return "closed before response";
    case outcome::truncated:
      return "truncated";
    case outcome::timed_out:
      return "timed out";
    case outcome::malformed:
      return "malformed";
  }
  return "?";
}

struct reply {
  outcome result = outcome::ok;
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
  bool close = false;  // the server said Connection: close (or closed after the response)

  std::string header(std::string_view name) const {
    std::string lower_head;
    for (char c : head)
      lower_head += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string key = "\r\n";
    for (char c : name) key += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    key += ":";
    const auto at = lower_head.find(key);
    if (at == std::string::npos) return {};
    auto start = at + key.size();
    while (start < head.size() && head[start] == ' ') ++start;
    return head.substr(start, head.find("\r\n", start) - start);
  }
};

class raw_connection {
 public:
  raw_connection() = default;
  // Connects to 127.0.0.1:port; valid() is false (and error() set) when that fails.
  explicit raw_connection(std::uint16_t port) {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
      error_ = errno;
      fd_.reset();
    }
  }
  // A connection made elsewhere (another family, a unix socket).
  explicit raw_connection(unique_fd connected) : fd_(std::move(connected)) {}
  bool valid() const { return fd_.valid(); }
  int error() const { return error_; }
  int fd() const { return fd_.get(); }
  int requests() const { return requests_; }

  bool send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Reads one response. The connection is closed afterwards if the server closes it.
  reply read_reply(std::chrono::milliseconds timeout, bool head_request = false) {
    reply r;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t head_end;
    while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      const outcome o = fill(deadline);
      if (o != outcome::ok)
        return r.result = (o == outcome::closed_early && !buffer_.empty()) ? outcome::truncated : o,
               r;
    }
    r.head = buffer_.substr(0, head_end + 2);
    buffer_.erase(0, head_end + 4);
    if (r.head.rfind("HTTP/1.", 0) != 0 || r.head.size() < 12)
      return r.result = outcome::malformed, r;
    r.status = std::atoi(r.head.c_str() + 9);
    const std::string connection = r.header("connection");
    r.close = connection == "close" || connection == "Close";
    if (head_request || r.status == 100 || r.status == 204 || r.status == 304) return r;
    if (r.header("transfer-encoding") == "chunked") {
      for (;;) {
        std::size_t line_end;
        while ((line_end = buffer_.find("\r\n")) == std::string::npos) {
          const outcome o = fill(deadline);
          if (o != outcome::ok) return r.result = eof_is_truncation(o), r;
        }
        const std::size_t size = std::strtoul(buffer_.c_str(), nullptr, 16);
        while (buffer_.size() < line_end + 2 + size + 2) {
          const outcome o = fill(deadline);
          if (o != outcome::ok) return r.result = eof_is_truncation(o), r;
        }
        r.body.append(buffer_, line_end + 2, size);
        buffer_.erase(0, line_end + 2 + size + 2);
        if (size == 0) break;
      }
    } else {
      const std::size_t length = std::strtoul(r.header("content-length").c_str(), nullptr, 10);
      while (buffer_.size() < length) {
        const outcome o = fill(deadline);
        if (o != outcome::ok) return r.result = eof_is_truncation(o), r;
      }
      r.body = buffer_.substr(0, length);
      buffer_.erase(0, length);
    }
    return r;
  }

  // Sends a GET and reads the reply.
  reply get(std::string_view target, std::chrono::milliseconds timeout = std::chrono::seconds(10),
            bool close = false) {
    ++requests_;
    const std::string request = "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n" +
                                (close ? "Connection: close\r\n" : "") + "\r\n";
    if (!send_all(request)) {
      reply r;
      r.result = errno == EPIPE || errno == ECONNRESET ? outcome::reset : outcome::closed_early;
      return r;
    }
    return read_reply(timeout);
  }

  // Waits for the server to close the connection (EOF or reset); false on timeout.
  bool wait_closed(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const outcome o = fill(deadline);
      if (o == outcome::timed_out) return false;
      if (o != outcome::ok) return true;
    }
  }

  void close() { fd_.reset(); }

 private:
  static outcome eof_is_truncation(outcome o) {
    return o == outcome::closed_early ? outcome::truncated : o;
  }

  outcome fill(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return outcome::timed_out;
    pollfd p{fd_.get(), POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) return outcome::ok;
    if (ready <= 0) return outcome::timed_out;
    char buf[16384];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n > 0) {
      buffer_.append(buf, static_cast<std::size_t>(n));
      return outcome::ok;
    }
    if (n == 0) return outcome::closed_early;
    return errno == ECONNRESET ? outcome::reset : outcome::closed_early;
  }

  unique_fd fd_;
  int error_ = 0;
  int requests_ = 0;
  std::string buffer_;
};

}  // namespace handoff::test
