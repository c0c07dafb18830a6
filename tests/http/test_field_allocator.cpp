// field_allocator: the per-thread block cache behind the header fields of handoff::http's
// request and response. What matters: a freed block is reused (that is the point), any thread
// may free a block another thread allocated, a message may outlive the thread that built it,
// and the fields behave as Beast's with std::allocator.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "handoff/http/server.hpp"

namespace handoff::http {
namespace {

namespace bhttp = boost::beast::http;

TEST(HttpFieldAllocator, AFreedBlockIsReusedForAnySizeOfItsClass) {
  field_allocator<char> a;
  char* p = a.allocate(40);
  std::memset(p, 'x', 40);
  a.deallocate(p, 40);
  // 40 and 64 bytes are one class (up to 64): the cached block comes back, at its full size.
  char* q = a.allocate(64);
  EXPECT_EQ(q, p);
  std::memset(q, 'y', 64);
  a.deallocate(q, 64);
  // Another class does not take it.
  char* r = a.allocate(65);
  EXPECT_NE(r, p);
  std::memset(r, 'z', 65);
  a.deallocate(r, 65);
}

// Beyond 4 KiB the classes are of 1 KiB up to 16 KiB: a connection's 8 KiB read buffer, freed
// when the connection ends, is the next connection's.
TEST(HttpFieldAllocator, ReadBufferSizedBlocksAreReusedToo) {
  field_allocator<char> a;
  char* p = a.allocate(8192);
  std::memset(p, 'x', 8192);
  a.deallocate(p, 8192);
  char* q = a.allocate(7200);  // 7169 .. 8192: one class
  EXPECT_EQ(q, p);
  std::memset(q, 'y', 8192);
  a.deallocate(q, 7200);
  char* r = a.allocate(8193);  // the next class
  EXPECT_NE(r, p);
  std::memset(r, 'z', 8193);
  a.deallocate(r, 8193);
  char* top = a.allocate(16 * 1024);  // the largest class
  std::memset(top, 't', 16 * 1024);
  a.deallocate(top, 16 * 1024);
  EXPECT_EQ(a.allocate(15 * 1024 + 1), top);
  a.deallocate(top, 15 * 1024 + 1);
}

TEST(HttpFieldAllocator, LargeAndHugeRequests) {
  field_allocator<char> a;
  char* big = a.allocate(64 * 1024);  // beyond the classes: operator new
  std::memset(big, 'x', 64 * 1024);
  a.deallocate(big, 64 * 1024);
  // A count whose size in bytes overflows is refused before any allocation (a merely huge one
  // reaches operator new, which ASan reports instead of throwing).
  field_allocator<std::uint64_t> b;
  EXPECT_THROW((void)b.allocate(std::size_t(-1) / 4), std::bad_array_new_length);
}

TEST(HttpFieldAllocator, BlocksFreedOnAnotherThreadAndAfterTheirThreadExited) {
  // Messages built on one thread (a connection's) and destroyed on others, some after the
  // first thread ended and released its cache: every block is freed once (ASan and LSan
  // watch), and what a thread caches it can use.
  std::vector<request> made;
  std::thread maker([&] {
    for (int i = 0; i < 200; ++i) {
      request req{bhttp::verb::get, "/path/" + std::to_string(i), 11};
      req.set(bhttp::field::host, "127.0.0.1");
      req.set("X-Long", std::string(300 + i, 'v'));
      made.push_back(std::move(req));
    }
  });
  maker.join();
  std::thread eater([&] {
    for (std::size_t i = 0; i < made.size() / 2; ++i) made[i] = request{};
    // Built here from blocks the maker allocated and this thread cached.
    request again{bhttp::verb::post, "/again", 11};
    again.set("X-Long", std::string(350, 'w'));
    EXPECT_EQ(again["X-Long"], std::string(350, 'w'));
  });
  eater.join();
  for (std::size_t i = made.size() / 2; i < made.size(); ++i) {
    EXPECT_EQ(made[i].target(), "/path/" + std::to_string(i));
    EXPECT_EQ(made[i]["X-Long"].size(), 300 + i);
  }
  made.clear();
}

TEST(HttpFieldAllocator, FieldsCopyMoveAndEraseAsBeastsOwn) {
  response res{bhttp::status::ok, 11};
  for (int i = 0; i < 50; ++i) res.insert("X-Field-" + std::to_string(i), std::string(i * 20, 'a'));
  res.body() = "hello\n";
  res.prepare_payload();
  response copy = res;
  response moved = std::move(res);
  for (int i = 0; i < 50; i += 2) copy.erase("X-Field-" + std::to_string(i));
  for (int i = 0; i < 50; ++i) {
    const auto name = "X-Field-" + std::to_string(i);
    EXPECT_EQ(moved[name], std::string(i * 20, 'a'));
    EXPECT_EQ(copy.count(name), i % 2 == 0 ? 0U : 1U);
  }
  EXPECT_EQ(moved[bhttp::field::content_length], "6");
}

}  // namespace
}  // namespace handoff::http
