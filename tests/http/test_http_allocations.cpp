// Heap allocations per keep-alive request of handoff::http::server in steady state, counted by
// replacing the global operator new of this test binary, and aligned_alloc, through which Asio
// allocates the coroutine frames and operations its per-thread cache does not hold (it is a
// binary of its own so that the replacements touch no other test).
//
// The server runs in this process on 127.0.0.1:0 with one thread; the client is this thread,
// which only makes system calls (send, recv into a stack buffer) while the count runs, so
// every allocation counted is the server's. After a warm-up (Asio's per-thread caches of
// operation and coroutine-frame memory fill on the first requests), a batch of requests is
// sent one after the other on one connection, and the allocations of the batch are divided by
// the number of requests.
//
// The count must be zero: a change that adds an allocation to the path of a request fails here.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "raw_client.hpp"

namespace {

std::atomic<std::size_t> allocations{0};

void* counted_allocate(std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

void* aligned(std::size_t align, std::size_t size) noexcept {
  void* p = nullptr;
  return ::posix_memalign(&p, std::max(align, sizeof(void*)), size == 0 ? 1 : size) == 0 ? p
                                                                                         : nullptr;
}

void* counted_allocate(std::size_t size, std::align_val_t align) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = aligned(static_cast<std::size_t>(align), size)) return p;
  throw std::bad_alloc();
}

}  // namespace

// Asio's aligned_new: a coroutine frame larger than its cache's blocks (about 1 KiB), or one
// more than the cache holds, comes from here, not from operator new.
extern "C" void* aligned_alloc(std::size_t align, std::size_t size) noexcept {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return aligned(align, size);
}

// The replaceable global allocation functions ([new.delete]); the nothrow and sized forms of
// the standard library call these.
void* operator new(std::size_t size) { return counted_allocate(size); }
void* operator new[](std::size_t size) { return counted_allocate(size); }
void* operator new(std::size_t size, std::align_val_t align) {
  return counted_allocate(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return counted_allocate(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
namespace bhttp = boost::beast::http;

// What the server itself costs per request. The handlers below allocate nothing of their own
// beyond what the response type makes them. The request's target and header fields, the
// response's fields (its Date and Content-Length too) and its body are blocks of
// field_allocator's per-thread cache; coroutine frames and socket operations are recycled by
// Asio, and the serializer lives on the connection's coroutine frame: in steady state, nothing
// is left to allocate. (Before the fields had their allocator: 5 per request; before the
// response's body had it, one more for every body beyond std::string's inline storage.)
constexpr std::size_t kMaxAllocationsPerRequest = 0;

// A prepared body as a real handler keeps one (a template's output, a file read at start):
// 1 KiB, well beyond any string's inline storage.
const std::string& prepared_body() {
  static const std::string body = [] {
    std::string b;
    for (int row = 0; row < 32; ++row)
      b += "row " + std::to_string(100 + row) + " abcdefghijklmnopqrstuvw\n";
    return b;
  }();
  return body;
}

asio::awaitable<response> hello(request_context& ctx) {
  response res{bhttp::status::ok, ctx.req().version()};
  if (ctx.req().target() == "/realistic") {
    // What a small API answer looks like: five header fields and the prepared body.
    res.set(bhttp::field::content_type, "text/plain; charset=utf-8");
    res.set(bhttp::field::cache_control, "private, max-age=60");
    res.set("X-Content-Type-Options", "nosniff");
    res.set("X-Frame-Options", "DENY");
    res.set(bhttp::field::vary, "Accept-Encoding");
    res.body() = prepared_body();
  } else {
    res.body() = "hello\n";
  }
  co_return res;
}

// The server whose allocations are counted: one thread, serving `hello` on 127.0.0.1 at a port
// of its own.
struct counted_server {
  counted_server() : srv(one_thread(), hello) {
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port = local_address(fd.get()).value().port;
    srv.add_listener(std::move(fd));
    srv.start();
  }
  static server_options one_thread() {
    server_options options;
    options.threads = 1;
    return options;
  }
  server srv;
  std::uint16_t port = 0;
};

// Sends `request` and reads exactly `length` bytes of response into a stack buffer: no
// allocation on this side.
bool exchange(int fd, std::string_view request, std::size_t length) {
  std::string_view rest = request;
  while (!rest.empty()) {
    const ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  char buf[4096];
  while (length > 0) {
    const ssize_t n = ::recv(fd, buf, std::min(length, sizeof buf), 0);
    if (n <= 0) return false;
    length -= static_cast<std::size_t>(n);
  }
  return true;
}

// Calls `one` (a request, or a round of them: false when one failed) `warm_up` times, then
// `times` times with the count running: the heap allocations per call, or -1 on a failure. A
// template, not a std::function, which could allocate itself.
template <class Call>
double allocations_per_call(int warm_up, int times, const Call& one) {
  for (int i = 0; i < warm_up; ++i)
    if (!one()) return -1;
  const std::size_t before = allocations.load();
  bool ok = true;
  for (int i = 0; i < times && ok; ++i) ok = one();
  const std::size_t counted = allocations.load() - before;
  EXPECT_TRUE(ok);
  if (!ok) return -1;
  return static_cast<double>(counted) / times;
}

// What every test below asserts: the count is known (not -1), recorded, and none.
void expect_none(double per_request, const char* what, const char* otherwise) {
  ASSERT_GE(per_request, 0);
  testing::Test::RecordProperty("allocations_per_request", std::to_string(per_request));
  std::printf("heap allocations per %s: %.2f\n", what, per_request);
  EXPECT_LE(per_request, static_cast<double>(kMaxAllocationsPerRequest)) << otherwise;
}

// Heap allocations per request of `request` on one keep-alive connection, after a warm-up;
// `body` is the response body expected.
double allocations_per_request(std::string_view request, std::string_view body) {
  const counted_server counted;
  const auto port = counted.port;

  raw_connection c(port);
  EXPECT_TRUE(c.valid());
  EXPECT_TRUE(c.send_all(request));
  const auto first = c.read_reply(5s);
  EXPECT_EQ(first.result, outcome::ok) << to_string(first.result);
  EXPECT_EQ(first.status, 200);
  EXPECT_EQ(first.body, body);
  if (first.result != outcome::ok || first.body != body) return -1;
  // Date is an IMF-fixdate, 29 bytes in every second: every response has this length.
  const std::size_t length = first.head.size() + 2 + first.body.size();

  return allocations_per_call(100, 1000, [&] { return exchange(c.fd(), request, length); });
}

// The same with `connections` keep-alive connections in lock step: each round sends one request
// on every connection, then reads every response, so the server has that many requests in its
// queue at once, and as many operations and coroutine frames alive (what Asio's per-thread cache
// must hold).
double allocations_per_request_on(std::size_t connections, std::string_view request,
                                  std::string_view body) {
  const counted_server counted;
  const auto port = counted.port;

  std::vector<raw_connection> clients;
  clients.reserve(connections);
  std::size_t length = 0;
  for (std::size_t i = 0; i < connections; ++i) {
    clients.emplace_back(port);
    EXPECT_TRUE(clients.back().valid());
    EXPECT_TRUE(clients.back().send_all(request));
    const auto first = clients.back().read_reply(5s);
    EXPECT_EQ(first.result, outcome::ok) << to_string(first.result);
    if (first.result != outcome::ok || first.body != body) return -1;
    length = first.head.size() + 2 + first.body.size();
  }
  const auto round = [&] {
    for (auto& c : clients)
      if (!c.send_all(request)) return false;
    for (auto& c : clients)
      if (!exchange(c.fd(), {}, length)) return false;
    return true;
  };
  const double per_round = allocations_per_call(20, 100, round);
  return per_round < 0 ? -1 : per_round / static_cast<double>(connections);
}

TEST(HttpAllocations, KeepAliveGetInSteadyState) {
  // A request as wrk and browsers send it: a few headers, each a field in the parsed request.
  const double per_request = allocations_per_request(
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n", "hello\n");
  expect_none(per_request, "keep-alive GET /",
              "a change added a heap allocation to the path of a keep-alive request");
}

TEST(HttpAllocations, RealisticKeepAliveGetInSteadyState) {
  // bench/http_peers' realistic row: a browser's request with six header fields, answered
  // with five header fields and a 1 KiB prepared body.
  const double per_request = allocations_per_request(
      "GET /realistic HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0\r\n"
      "Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\n"
      "Accept-Encoding: gzip, deflate\r\nCookie: session=0123456789abcdef\r\n\r\n",
      prepared_body());
  expect_none(per_request, "keep-alive GET /realistic",
              "a change added a heap allocation to the path of a realistic keep-alive request");
}

TEST(HttpAllocations, FiftyKeepAliveConnectionsInSteadyState) {
  const double per_request = allocations_per_request_on(
      50, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n",
      "hello\n");
  expect_none(
      per_request, "keep-alive GET / on 50 connections",
      "with 50 connections at once, requests allocate: Asio's per-thread cache "
      "(BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE) is too small, or a frame too large for it");
}

// One request per connection with a client that allocates nothing: socket, connect, send, recv
// to the server's close, close. The allocations per request after a warm-up, or -1 when a
// response did not end with `body`.
double allocations_per_new_connection(std::string_view request, std::string_view body) {
  const counted_server counted;
  const auto port = counted.port;

  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto one = [&] {
    const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0) return false;
    char reply[4096];
    std::size_t got = 0;
    bool ok = ::connect(c, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0 &&
              exchange(c, request, 0);
    for (ssize_t n = 1; ok && n > 0;) {  // to the server's close
      n = ::recv(c, reply + got, sizeof reply - got, 0);
      if (n > 0) got += static_cast<std::size_t>(n);
      ok = n >= 0 && got < sizeof reply;
    }
    ::close(c);
    return ok && std::string_view(reply, got).ends_with(body);
  };
  return allocations_per_call(100, 500, one);
}

// A client that opens a connection per request (HTTP/1.0, `Connection: close`): the
// connection object and its read buffer come from field_allocator's cache, and the coroutine
// frames from Asio's (serve()'s frame keeps the parser out of it, to stay within what Asio
// recycles). Before, each new connection allocated the connection, its entry in the list of
// open connections, its 8 KiB read buffer and serve()'s 1.6 KiB frame.
TEST(HttpAllocations, ANewConnectionPerRequestInSteadyState) {
  const double per_request = allocations_per_new_connection(
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "hello\n");
  expect_none(per_request, "GET / on a new connection",
              "a change added a heap allocation to the path of a new connection");
}

}  // namespace
}  // namespace handoff::http
