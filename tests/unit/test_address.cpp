#include <gtest/gtest.h>

#include "handoff/address.hpp"

namespace handoff {
namespace {

struct good_case {
  const char* text;
  const char* name;
  transport kind;
  const char* host;
  std::uint16_t port;
  const char* canonical;
};

// Readable test names in ctest: the input text, not the struct's bytes.
void PrintTo(const good_case& c, std::ostream* os) { *os << '"' << c.text << '"'; }

class ParseAddressGood : public testing::TestWithParam<good_case> {};

TEST_P(ParseAddressGood, ParsesAndRoundTrips) {
  const auto& c = GetParam();
  auto a = parse_address(c.text);
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_EQ(a->name, c.name);
  EXPECT_EQ(a->kind, c.kind);
  EXPECT_EQ(a->host, c.host);
  EXPECT_EQ(a->port, c.port);
  EXPECT_EQ(a->to_string(), c.canonical);
  auto again = parse_address(a->to_string());
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(*again, *a);
}

constexpr auto tcp = transport::tcp;
constexpr auto udp = transport::udp;
constexpr auto unx = transport::unix_stream;

INSTANTIATE_TEST_SUITE_P(
    EveryForm, ParseAddressGood,
    testing::Values(
        good_case{"8080", "", tcp, "", 8080, "tcp://:8080"},
        good_case{":8080", "", tcp, "", 8080, "tcp://:8080"},
        good_case{"0", "", tcp, "", 0, "tcp://:0"},
        good_case{"65535", "", tcp, "", 65535, "tcp://:65535"},
        good_case{"*:80", "", tcp, "", 80, "tcp://:80"},
        good_case{"127.0.0.1:8080", "", tcp, "127.0.0.1", 8080, "tcp://127.0.0.1:8080"},
        good_case{"0.0.0.0:1", "", tcp, "0.0.0.0", 1, "tcp://0.0.0.0:1"},
        good_case{"[::1]:8080", "", tcp, "::1", 8080, "tcp://[::1]:8080"},
        good_case{"[::]:8080", "", tcp, "::", 8080, "tcp://[::]:8080"},
        good_case{"[fe80::1:2]:9", "", tcp, "fe80::1:2", 9, "tcp://[fe80::1:2]:9"},
        good_case{"localhost:8080", "", tcp, "localhost", 8080, "tcp://localhost:8080"},
        good_case{"db-1.example.internal:5432", "", tcp, "db-1.example.internal", 5432,
                  "tcp://db-1.example.internal:5432"},
        good_case{"tcp://127.0.0.1:80", "", tcp, "127.0.0.1", 80, "tcp://127.0.0.1:80"},
        good_case{"tcp://:80", "", tcp, "", 80, "tcp://:80"},
        good_case{"tcp://[::1]:0", "", tcp, "::1", 0, "tcp://[::1]:0"},
        good_case{"udp://127.0.0.1:53", "", udp, "127.0.0.1", 53, "udp://127.0.0.1:53"},
        good_case{"udp://[::1]:53", "", udp, "::1", 53, "udp://[::1]:53"},
        good_case{"udp://:5353", "", udp, "", 5353, "udp://:5353"},
        good_case{"unix:/run/app.sock", "", unx, "/run/app.sock", 0, "unix:/run/app.sock"},
        good_case{"unix:///run/app.sock", "", unx, "/run/app.sock", 0, "unix:/run/app.sock"},
        good_case{"unix:relative/app.sock", "", unx, "relative/app.sock", 0,
                  "unix:relative/app.sock"},
        good_case{"unix:@abstract-name", "", unx, "@abstract-name", 0, "unix:@abstract-name"},
        good_case{"unix:/tmp/a=b.sock", "", unx, "/tmp/a=b.sock", 0, "unix:/tmp/a=b.sock"},
        good_case{"http=:8080", "http", tcp, "", 8080, "http=tcp://:8080"},
        good_case{"http=8080", "http", tcp, "", 8080, "http=tcp://:8080"},
        good_case{"admin=unix:/run/admin.sock", "admin", unx, "/run/admin.sock", 0,
                  "admin=unix:/run/admin.sock"},
        good_case{"dns=udp://[::1]:53", "dns", udp, "::1", 53, "dns=udp://[::1]:53"},
        good_case{"my.sock-2_x=tcp://127.0.0.1:1", "my.sock-2_x", tcp, "127.0.0.1", 1,
                  "my.sock-2_x=tcp://127.0.0.1:1"}));

struct bad_case {
  const char* text;
  const char* says;  // a part of the message that tells what is wrong
};

void PrintTo(const bad_case& c, std::ostream* os) {
  *os << testing::PrintToString(std::string(c.text));
}

class ParseAddressBad : public testing::TestWithParam<bad_case> {};

TEST_P(ParseAddressBad, FailsWithAMessageThatQuotesTheInput) {
  const auto& c = GetParam();
  auto a = parse_address(c.text);
  ASSERT_FALSE(a) << "parsed as " << a->to_string();
  EXPECT_TRUE(a.error() == errc::invalid_address);
  const std::string message = a.error().message();
  EXPECT_NE(message.find(c.says), std::string::npos) << message;
  EXPECT_EQ(message.rfind("address \"", 0), 0u) << message;
  EXPECT_NE(message.find("expected PORT, :PORT, HOST:PORT"), std::string::npos) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, ParseAddressBad,
    testing::Values(bad_case{"", "empty address"}, bad_case{":", "missing port"},
                    bad_case{"localhost", "missing port"}, bad_case{"127.0.0.1:", "missing port"},
                    bad_case{"65536", "out of range"}, bad_case{"99999", "out of range"},
                    bad_case{"123456", "not a number"}, bad_case{":-1", "not a number"},
                    bad_case{":+80", "not a number"}, bad_case{":http", "not a number"},
                    bad_case{":80 ", "not a number"}, bad_case{"::1:8080", "need brackets"},
                    bad_case{"[::1:8080", "without ']'"}, bad_case{"[::1]8080", "missing :PORT"},
                    bad_case{"[::1]", "missing :PORT"}, bad_case{"[]:80", "not an IPv6"},
                    bad_case{"[1.2.3.4]:80", "not an IPv6"}, bad_case{"[::g]:80", "not an IPv6"},
                    bad_case{"1.2.3:80", "not an IPv4"}, bad_case{"256.1.1.1:80", "not an IPv4"},
                    bad_case{"exa mple:80", "invalid character"},
                    bad_case{"a..b:80", "empty label"},
                    bad_case{"http://x:80", "unsupported scheme"},
                    bad_case{"tcp://", "missing port"}, bad_case{"udp://host", "missing port"},
                    bad_case{"unix:", "empty unix socket path"},
                    bad_case{"unix:@", "empty unix socket path"},
                    bad_case{"http=", "nothing after the name"}, bad_case{"=:80", "invalid name"},
                    bad_case{"a\tb=:80", "invalid name"}, bad_case{"x=\x01", "\\x01"}));

TEST(ParseAddress, RejectsPathsLongerThanSunPath) {
  const std::string ok = "unix:/" + std::string(106, 'a');
  EXPECT_TRUE(parse_address(ok)) << ok.size();
  auto too_long = parse_address("unix:/" + std::string(107, 'a'));
  ASSERT_FALSE(too_long);
  EXPECT_NE(too_long.error().message().find("longer than 107 bytes"), std::string::npos);
  EXPECT_FALSE(parse_address("unix:@" + std::string(107, 'a')));
}

TEST(ParseAddress, RejectsEmbeddedNul) {
  using namespace std::string_literals;
  EXPECT_FALSE(parse_address("unix:/tmp/a\0b"s));
  EXPECT_FALSE(parse_address("127.0.0.1:80\0"s));
}

TEST(ParseAddress, NameLimits) {
  EXPECT_TRUE(parse_address(std::string(255, 'n') + "=:80"));
  EXPECT_FALSE(parse_address(std::string(256, 'n') + "=:80"));
}

TEST(ValidSocketName, FollowsSystemdFdnameRules) {
  EXPECT_TRUE(valid_socket_name("http"));
  EXPECT_TRUE(valid_socket_name("with space"));
  EXPECT_TRUE(valid_socket_name("a=b"));
  EXPECT_FALSE(valid_socket_name(""));
  EXPECT_FALSE(valid_socket_name("a:b"));
  EXPECT_FALSE(valid_socket_name("tab\t"));
  EXPECT_FALSE(valid_socket_name("\x7f"));
  EXPECT_TRUE(valid_socket_name(std::string(255, 'x')));
  EXPECT_FALSE(valid_socket_name(std::string(256, 'x')));
}

}  // namespace
}  // namespace handoff
