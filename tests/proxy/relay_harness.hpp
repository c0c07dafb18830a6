// In-process harness for the HTTP relay's tests: the relay runs on its own io_context thread
// behind a loopback TCP listener (the "front"); a test router lends it connections to an
// upstream listener that the test thread accepts on and scripts byte by byte. Client and
// upstream ends are blocking sockets with a receive timeout, so a test that waits for bytes
// that never come fails instead of hanging.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "handoff/fd.hpp"
#include "proxy/http_relay.hpp"

namespace handoff::proxy::test {

namespace asio = boost::asio;
using asio::ip::tcp;

// One end of a loopback TCP connection, used blocking.
class peer {
 public:
  peer() = default;
  explicit peer(int fd) : fd_(fd) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  static peer connect_to(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
      ::close(fd);
      return peer();
    }
    return peer(fd);
  }
  bool valid() const { return fd_.get() >= 0; }
  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const auto n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Reads more into the pending buffer; false at EOF, error or timeout.
  bool fill() {
    char buf[16384];
    const auto n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n <= 0) {
      eof_ = n == 0;
      return false;
    }
    pending_.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  // Everything up to and including `delim`; empty if it never came.
  std::string read_until(std::string_view delim) {
    for (;;) {
      const auto at = pending_.find(delim);
      if (at != std::string::npos) return take(at + delim.size());
      if (!fill()) return {};
    }
  }
  std::string read_exact(std::size_t n) {
    while (pending_.size() < n)
      if (!fill()) return take(pending_.size());
    return take(n);
  }
  // A whole message: head, then a body by Content-Length or chunked (to the last chunk and
  // trailers), or none. `no_body` for answers to HEAD and 1xx.
  std::string read_message(bool no_body = false) {
    std::string head = read_until("\r\n\r\n");
    if (head.empty() || no_body) return head;
    const std::string lower = lowercase(head);
    if (lower.find("\r\ntransfer-encoding: chunked") != std::string::npos) {
      std::string body;
      for (;;) {
        std::string size_line = read_until("\r\n");
        if (size_line.empty()) return head + body;
        body += size_line;
        const auto size = std::stoul(size_line, nullptr, 16);
        if (size == 0) return head + body + read_until_trailer_end();
        body += read_exact(size + 2);
      }
    }
    const auto cl = lower.find("\r\ncontent-length: ");
    if (cl == std::string::npos) return head;
    const auto length = std::stoul(head.substr(cl + 18));
    return head + read_exact(length);
  }
  // Everything until the other side closes.
  std::string read_to_eof() {
    while (fill()) {
    }
    return take(pending_.size());
  }
  // True if the other side closed (after any bytes still pending, which are dropped).
  bool closed() {
    while (fill()) {
    }
    return eof_;
  }
  void shutdown_send() { ::shutdown(fd_.get(), SHUT_WR); }
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    fd_.reset();
  }
  void close() { fd_.reset(); }
  std::string& pending() { return pending_; }

  static std::string lowercase(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }

 private:
  std::string read_until_trailer_end() {
    std::string out;
    for (;;) {
      std::string line = read_until("\r\n");
      out += line;
      if (line.empty() || line == "\r\n") return out;
    }
  }
  std::string take(std::size_t n) {
    std::string out = pending_.substr(0, n);
    pending_.erase(0, n);
    return out;
  }
  unique_fd fd_;
  std::string pending_;
  bool eof_ = false;
};

// Lends connections to the upstream listener: new ones, or idle ones given back reusable.
class test_router final : public router {
 public:
  test_router(asio::io_context& ioc, std::uint16_t upstream_port)
      : ioc_(ioc), port_(upstream_port) {}

  asio::awaitable<std::optional<upstream_connection>> acquire(std::size_t,
                                                              connection_source source) override {
    ++acquired;
    if (source == connection_source::new_only) ++new_only;
    if (!available) co_return std::nullopt;
    // Unlike the front's router, no check of an idle connection: a test may lend one the
    // upstream has closed, as happens when the app's close crosses the request.
    if (!idle_.empty() && source == connection_source::pool_or_new) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      c.reused = true;
      co_return std::move(c);
    }
    tcp::socket s(ioc_);
    boost::system::error_code ec;
    co_await s.async_connect({asio::ip::address_v4::loopback(), port_},
                             asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return std::nullopt;
    s.set_option(tcp::no_delay(true));
    ++opened;
    const int native = s.release();
    co_return upstream_connection{
        stream(ioc_, asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), native), 1, false};
  }
  void release(upstream_connection c, bool reusable) override {
    if (reusable) {
      last_idle_fd = c.socket.native_handle();
      idle_.push_back(std::move(c));
    }
    std::lock_guard lock(mutex_);
    releases_.push_back(reusable);
    released_.notify_all();
  }
  bool closing() const override { return closing_flag; }

  // The `reusable` flags of the first n releases, once there are n (or what came in 5 s).
  std::vector<bool> releases(std::size_t n) {
    std::unique_lock lock(mutex_);
    released_.wait_for(lock, std::chrono::seconds(5), [&] { return releases_.size() >= n; });
    return releases_;
  }

  std::atomic<int> acquired{0};
  std::atomic<int> new_only{0};       // acquires for a retry
  std::atomic<int> last_idle_fd{-1};  // the connection given back last, reusable
  std::atomic<int> opened{0};
  std::atomic<bool> available{true};
  std::atomic<bool> closing_flag{false};

 private:
  asio::io_context& ioc_;
  std::uint16_t port_;
  std::vector<upstream_connection> idle_;
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<bool> releases_;
};

// The relay behind a loopback listener, on its own thread, and an upstream listener.
class relay_harness {
 public:
  relay_harness() {
    upstream_listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(upstream_listener_.get(), reinterpret_cast<sockaddr*>(&at), sizeof at);
    ::listen(upstream_listener_.get(), 64);
    socklen_t len = sizeof at;
    ::getsockname(upstream_listener_.get(), reinterpret_cast<sockaddr*>(&at), &len);
    router_.emplace(ioc_, ntohs(at.sin_port));
  }
  ~relay_harness() { stop(); }

  relay_options options;

  void start() {
    acceptor_.emplace(ioc_, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    front_port_ = acceptor_->local_endpoint().port();
    asio::co_spawn(ioc_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  // Stops the relay thread; counters may be read after this.
  void stop() {
    if (!thread_.joinable()) return;
    ioc_.stop();
    thread_.join();
  }

  peer client() { return peer::connect_to(front_port_); }
  // The next connection the relay opened upstream; invalid if none came within 5 s.
  peer accept_upstream() {
    pollfd p{upstream_listener_.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return peer();
    return peer(::accept4(upstream_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  }
  // Whether a connection to the upstream is waiting to be accepted, within `ms`.
  bool upstream_pending(int ms) {
    pollfd p{upstream_listener_.get(), POLLIN, 0};
    return ::poll(&p, 1, ms) == 1;
  }
  test_router& router() { return *router_; }
  int upstream_listener() const { return upstream_listener_.get(); }
  std::uint16_t front_port() const { return front_port_; }
  const relay_counters& counters() const { return counters_; }
  int relays_finished() const { return finished_.load(); }

 private:
  asio::awaitable<void> accept_loop() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket s =
          co_await acceptor_->async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      const int native = s.release();
      stream client(ioc_, asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), native);
      asio::co_spawn(ioc_, relay_http(std::move(client), *router_, 0, options, counters_),
                     [this](const std::exception_ptr& e) {
                       if (e) failed_ = true;
                       ++finished_;
                     });
    }
  }

  asio::io_context ioc_{1};
  unique_fd upstream_listener_;
  std::optional<test_router> router_;
  std::optional<tcp::acceptor> acceptor_;
  std::uint16_t front_port_ = 0;
  relay_counters counters_;
  std::thread thread_;
  std::atomic<int> finished_{0};
  std::atomic<bool> failed_{false};

 public:
  bool relay_threw() const { return failed_.load(); }
};

}  // namespace handoff::proxy::test
