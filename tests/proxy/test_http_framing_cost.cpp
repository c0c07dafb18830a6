// What a header costs the front's one thread to frame, crafted against plain (issue 22, item
// 2): a header full of Connection tokens and fields once cost fields x tokens. Measured as a
// ratio of thread CPU time in one run, the two kinds interleaved, so that a loaded machine
// slows both alike.
#include <gtest/gtest.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "proxy/http_framing.hpp"

namespace handoff::proxy::test {
namespace {

std::chrono::nanoseconds thread_cpu() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// `fields` fields of `value_size` bytes each, then one Connection field listing `tokens`
// names no field has (each must be looked for) or, when `tokens` is 0, a Cookie of the same
// size: the same bytes, the same number of fields, no Connection.
std::string header(int fields, int tokens, std::size_t filler) {
  std::string h = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < fields; ++i) h += "X-Field-" + std::to_string(i) + ": value\r\n";
  std::string list;
  for (int i = 0; i < tokens; ++i) list += (i ? "," : "") + std::string("t") + std::to_string(i);
  if (tokens > 0) {
    h += "Connection: " + list + "\r\n";
  } else {
    h += "Cookie: " + std::string(filler, 'c') + "\r\n";
  }
  return h + "\r\n";
}

// CPU time of framing `request` `rounds` times, as the relay does (a new framer each time).
std::chrono::nanoseconds cost(const std::string& request, int rounds) {
  request_framing options;
  options.header_limit = 64 * 1024;
  std::string out;
  std::vector<field_ref> fields;
  const auto start = thread_cpu();
  for (int i = 0; i < rounds; ++i) {
    out.clear();
    request_framer framer(options, out, fields);
    boost::system::error_code ec;
    framer.feed(request, ec);
    if (ec || !framer.is_done()) ADD_FAILURE() << "not framed: " << ec.message();
  }
  return thread_cpu() - start;
}

TEST(HttpFramingCost, CraftedConnectionTokensCostAtMostThreeTimesAPlainHeader) {
  const std::string crafted = header(400, 1200, 0);
  const std::size_t connection_bytes = crafted.size() - header(400, 0, 0).size();
  const std::string plain = header(400, 0, connection_bytes);
  ASSERT_GT(crafted.size(), 14000u);
  ASSERT_EQ(plain.size(), crafted.size());
  // The best of several interleaved runs of each: what the code costs, not what the
  // machine's load added to it.
  auto best_crafted = std::chrono::nanoseconds::max();
  auto best_plain = std::chrono::nanoseconds::max();
  for (int run = 0; run < 7; ++run) {
    best_plain = std::min(best_plain, cost(plain, 20));
    best_crafted = std::min(best_crafted, cost(crafted, 20));
  }
  const double ratio = static_cast<double>(best_crafted.count()) / best_plain.count();
  std::printf("header %zu bytes: crafted %.3f ms, plain %.3f ms, ratio %.2f\n", crafted.size(),
              best_crafted.count() / 20e6, best_plain.count() / 20e6, ratio);
  EXPECT_LE(ratio, 3.0);
}

}  // namespace
}  // namespace handoff::proxy::test
