// The Date header field of handoff::http::server's responses (RFC 9110 6.6.1): every response
// the server writes carries one, an IMF-fixdate of the current second, unless the handler set
// its own. The server runs in this process on 127.0.0.1:0; the client is a raw socket.
#include <gtest/gtest.h>
#include <strings.h>
#include <time.h>

#include <regex>
#include <stdexcept>

#include "handoff/http/server.hpp"
#include "handoff/listeners.hpp"
#include "handoff/socket_info.hpp"
#include "raw_client.hpp"

namespace handoff::http {
namespace {

using namespace std::chrono_literals;
using test::outcome;
using test::raw_connection;
namespace bhttp = boost::beast::http;

constexpr std::string_view handler_date = "Tue, 15 Nov 1994 08:12:31 GMT";

asio::awaitable<response> date_handler(request_context& ctx) {
  const std::string_view target = ctx.req().target();
  if (target == "/throw") throw std::runtime_error("handler bug");
  if (target == "/stream") {
    response_header header;
    header.result(bhttp::status::ok);
    header.version(11);
    co_await ctx.send_header(std::move(header));
    co_await ctx.send_chunk("tick\n");
    co_return response{};
  }
  response res{bhttp::status::ok, ctx.req().version()};
  if (target == "/own-date") res.set(bhttp::field::date, handler_date);
  res.body() = "ok\n";
  co_return res;
}

std::time_t wall_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return now.tv_sec;
}

// `value` as the seconds it names when it is an IMF-fixdate (RFC 9110 5.6.7) whose day name
// matches its date, else -1.
std::time_t parse_imf_fixdate(const std::string& value) {
  static const std::regex form(
      "(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
      "[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT");
  if (!std::regex_match(value, form)) return -1;
  std::tm tm{};
  if (::strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return -1;
  const std::time_t t = ::timegm(&tm);
  std::tm back{};
  ::gmtime_r(&t, &back);
  char text[64];
  ::strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &back);  // C locale: tests' own
  return value == text ? t : -1;
}

std::size_t count_date_fields(const std::string& head) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = head.find("\r\n", at)) != std::string::npos; at += 2)
    if (strncasecmp(head.c_str() + at + 2, "date:", 5) == 0) ++n;
  return n;
}

class HttpDate : public testing::Test {
 protected:
  void SetUp() override {
    auto fd = open_listener(parse_address("127.0.0.1:0").value()).value();
    port_ = local_address(fd.get()).value().port;
    server_options options;
    options.threads = 1;
    server_ = std::make_unique<server>(options, date_handler);
    server_->add_listener(std::move(fd));
    server_->start();
  }
  void TearDown() override { server_->drain(2s); }

  // The reply's one Date field is the current second, as an IMF-fixdate.
  static void expect_current_date(const test::reply& r, std::time_t before, std::time_t after) {
    ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
    EXPECT_EQ(count_date_fields(r.head), 1u) << r.head;
    const std::string date = r.header("date");
    const std::time_t t = parse_imf_fixdate(date);
    ASSERT_NE(t, -1) << "not an IMF-fixdate: \"" << date << "\"";
    EXPECT_GE(t, before) << date;
    EXPECT_LE(t, after) << date;
  }

  std::uint16_t port_ = 0;
  std::unique_ptr<server> server_;
};

TEST_F(HttpDate, EveryResponseHasTheCurrentDate) {
  raw_connection c(port_);
  for (int i = 0; i < 3; ++i) {
    const auto before = wall_seconds();
    const auto r = c.get("/");
    const auto after = wall_seconds();
    expect_current_date(r, before, after);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "ok\n");
  }
}

TEST_F(HttpDate, TheHandlersOwnDateIsKept) {
  raw_connection c(port_);
  const auto r = c.get("/own-date");
  ASSERT_EQ(r.result, outcome::ok) << to_string(r.result);
  EXPECT_EQ(count_date_fields(r.head), 1u) << r.head;
  EXPECT_EQ(r.header("date"), handler_date);
}

TEST_F(HttpDate, AStreamedResponseHasTheDate) {
  raw_connection c(port_);
  const auto before = wall_seconds();
  const auto r = c.get("/stream");
  const auto after = wall_seconds();
  expect_current_date(r, before, after);
  EXPECT_EQ(r.body, "tick\n");
}

TEST_F(HttpDate, TheServersOwnAnswersHaveTheDate) {
  {
    raw_connection c(port_);
    const auto before = wall_seconds();
    const auto r = c.get("/throw");
    const auto after = wall_seconds();
    expect_current_date(r, before, after);
    EXPECT_EQ(r.status, 500);
  }
  raw_connection c(port_);
  const auto before = wall_seconds();
  ASSERT_TRUE(c.send_all("NOT HTTP AT ALL\r\n\r\n"));
  const auto r = c.read_reply(5s);
  const auto after = wall_seconds();
  expect_current_date(r, before, after);
  EXPECT_EQ(r.status, 400);
}

}  // namespace
}  // namespace handoff::http
