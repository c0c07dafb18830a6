// The state of `handoff reexec` (tools/handoff/supervisor/state.hpp) without processes: every
// kind of field encoded and decoded again with arbitrary bytes, the version each state needs,
// the states older builds wrote, and damaged states refused whole with the field they name.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "supervisor/byte_text.hpp"
#include "supervisor/state.hpp"

namespace handoff::supervisor {
namespace {

// Byte strings no JSON string may carry as they are, and a few that it may.
std::vector<std::string> nasty_bytes() {
  std::string every;
  for (int b = 0; b < 256; ++b) every += static_cast<char>(b);
  return {
      "",
      std::string("\0", 1),
      std::string("a\0b", 3),
      "caf\xe9",                  // Latin-1
      "caf\xc3\xa9",              // UTF-8
      "\x80\xff\xfe",             // never UTF-8
      "\xc0\xaf",                 // overlong '/'
      "\xed\xa0\x80",             // a surrogate
      "\xf4\x90\x80\x80",         // above U+10FFFF
      "\xe2\x82",                 // truncated
      "\"quote\" \\back\\ \n\t",  // JSON escapes
      "{\"hex\":\"00\"}",         // looks like the encoding of bytes, and is text
      every,
  };
}

// A state in which every field holds something other than its default, and every byte
// string `bytes` (a different variant each, so that a swap of two fields shows).
saved_state full_state(const std::string& bytes, const char* mode = "tcp") {
  saved_state s;
  int fd = 3;
  const auto b = [&bytes](const char* tag) { return bytes + tag; };
  s.handoff = b("handoff");
  s.reexecs = 7;
  s.self_exe = fd++;
  s.self_path = b("/usr/bin/handoff");
  s.waiter = 42;
  s.sockets.push_back({fd++, b("http"), b("127.0.0.1:80"), 12345, 2});
  s.sockets.push_back({fd++, b(""), b("unix:/run/x"), 99, 0});
  s.fdstore.push_back({fd++, b("store")});
  s.keys = saved_state::ticket_keys{fd++, 123456789};
  s.notify_socket = {fd++, b("@notify")};
  auto& c = *(s.control_socket = saved_state::control{});
  c.fd = fd++;
  c.path = b("/run/handoff/x.sock");
  c.dev = 1;
  c.ino = 2;
  c.next_id = 9;
  c.sessions.push_back({8, fd++, b("stat"), true, -5});
  s.metrics = saved_state::metrics_listener{fd++, b("9100"), b("/run/m.sock")};
  auto& k = s.core_state;
  k.started = 1'000'000'000'000;
  k.next_id = 3;
  k.final_generation = 2;
  k.app_failures = 1;
  k.next_start = 77;
  k.last_status = saved_state::exit_info{false, 0, 9};
  k.reloads = 4;
  k.reloads_failed = 1;
  k.restarts = 2;
  k.last_reload = b("ok");
  k.pid_file_written = true;
  k.own_watchdog_us = 500000;
  k.next_ping = 88;
  k.last_ignored_sender = 31337;
  k.recent_exits = {1, 2, 3, 0};
  k.recent_exits_next = 3;
  auto& m = s.counts;
  m.reloads_ok = 5;
  m.reloads_failed = {1, 2};
  m.reloads_refused = {3};
  m.app_restarts = 6;
  m.stop_escalations = 7;
  m.notify_refused = {8, 9, 10};
  m.ready_buckets = {0, 1, 18446744073709551615ULL};
  m.ready_sum = 0.125;
  m.ready_count = 11;
  m.last_reload_ok = 12;
  m.first_ready = std::nullopt;
  auto& g = s.generations.emplace_back();
  g.id = 2;
  g.state = "serving";
  g.started = 13;
  g.ready_deadline = 14;
  g.settle_deadline = 15;
  g.stop_deadline = 16;
  g.retire_deadline = 17;
  g.stop_sent = true;
  g.is_restart = true;
  g.failure = b("failure");
  g.waiters = {5, 6};
  auto& sl = g.slots.emplace_back();
  sl.pid = 1234;
  sl.pgid = 1234;
  sl.former = {1200};
  sl.ready = true;
  sl.reloading = true;
  sl.started = 18;
  sl.ready_at = 19;
  sl.last_watchdog = 20;
  sl.ready_deadline = -1;
  sl.restart_at = 21;
  sl.watchdog_ms = 3000;
  sl.last_exit = saved_state::exit_info{true, 3, 0};
  sl.status_text = b("status");
  sl.restarts = 1;
  sl.failures_in_a_row = 2;
  s.generations.push_back(g);
  s.generations.back().id = 1;
  s.generations.back().state = "draining";
  s.generations.back().slots.clear();
  if (mode != nullptr) {
    auto& p = s.front.emplace();
    p.mode = mode;
    auto& pg = p.generations.emplace_back();
    pg.generation = 2;
    pg.drained = true;
    pg.upstreams.push_back({fd++, b("/run/up.sock"), 0});
    pg.upstreams.push_back({-1, "", 8081});
    auto& cl = p.clients.emplace_back();
    cl.fd = fd++;
    cl.listener = 1;
    cl.buffered = bytes + "GET / HTTP/1.1\r\n";
    if (std::string(mode) == "tcp") cl.tcp = saved_state::tcp_relay{fd++, 2, true, false};
    p.counts = saved_state::proxy_counts{1, 2, 3, 4, 5, 6, 7, 8};
  }
  return s;
}

TEST(StateCodec, EveryFieldRoundTripsWithArbitraryBytes) {
  for (const char* mode : {static_cast<const char*>(nullptr), "http", "tcp"})
    for (const auto& bytes : nasty_bytes()) {
      const auto s = full_state(bytes, mode);
      const auto encoded = encode_state(s);
      auto decoded = decode_state(encoded.text);
      ASSERT_TRUE(decoded) << decoded.error().message() << "\n" << encoded.text;
      EXPECT_EQ(decoded->version, encoded.version);
      auto expected = s;
      expected.version = encoded.version;
      EXPECT_TRUE(*decoded == expected) << escaped_text(bytes) << "\n" << encoded.text;
      EXPECT_EQ(decoded->generations.at(0).slots.at(0).status_text, bytes + "status");
      // What is written is JSON a strict parser takes: valid UTF-8 whatever the bytes.
      EXPECT_TRUE(valid_utf8(encoded.text)) << escaped_text(encoded.text);
      // And again: encoding is a function of the state.
      EXPECT_EQ(encode_state(*decoded).text, encoded.text);
    }
}

TEST(StateCodec, TheVersionWrittenIsTheLowestThatCarriesTheState) {
  EXPECT_EQ(encode_state(full_state("text", nullptr)).version, 1);
  EXPECT_EQ(encode_state(full_state("text", "http")).version, 2);
  EXPECT_EQ(encode_state(full_state("text", "tcp")).version, 3);
  // Bytes read ahead of a client are hex in every version: they never need 4.
  auto s = full_state("text", "http");
  s.front->clients.at(0).buffered = "\xff\xfe";
  EXPECT_EQ(encode_state(s).version, 2);
  for (const char* mode : {static_cast<const char*>(nullptr), "http", "tcp"}) {
    s = full_state("text", mode);
    s.generations.at(0).slots.at(0).status_text = "caf\xe9";
    const auto encoded = encode_state(s);
    EXPECT_EQ(encoded.version, 4);
    EXPECT_NE(encoded.text.find(R"("status_text":{"hex":"636166e9"})"), std::string::npos)
        << encoded.text;
    // A build that reads up to 3 refuses it whole, saying why.
    auto older = decode_state(encoded.text, 3);
    ASSERT_FALSE(older);
    EXPECT_EQ(older.error().message(), "state version 4: this binary reads versions 1 to 3");
  }
}

TEST(StateCodec, AVersion4StateKeepsTheTcpFieldsOfItsClients) {
  auto s = full_state("caf\xe9", "tcp");
  auto decoded = decode_state(encode_state(s).text);
  ASSERT_TRUE(decoded) << decoded.error().message();
  ASSERT_TRUE(decoded->front->clients.at(0).tcp);
  EXPECT_EQ(decoded->front->clients.at(0).tcp->generation, 2);
  s = full_state("caf\xe9", "http");
  decoded = decode_state(encode_state(s).text);
  ASSERT_TRUE(decoded) << decoded.error().message();
  EXPECT_FALSE(decoded->front->clients.at(0).tcp);
}

// A state as the builds before version 4 wrote it: JSON strings holding an app's bytes as
// they came (here Latin-1 "café", which is not UTF-8). The reader takes it, byte-exact.
TEST(StateCodec, AnOlderBuildsStateWithRawBytesIsRead) {
  auto text = encode_state(full_state("x", nullptr)).text;
  ASSERT_EQ(text.rfind("handoff-state 1\n", 0), 0U);
  const std::string utf8 = R"("status_text":"xstatus")";
  const auto at = text.find(utf8);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, utf8.size(), "\"status_text\":\"caf\xe9\"");
  auto decoded = decode_state(text);
  ASSERT_TRUE(decoded) << decoded.error().message();
  EXPECT_EQ(decoded->generations.at(0).slots.at(0).status_text, "caf\xe9");
  // Written again by this build: version 4, UTF-8 JSON.
  const auto again = encode_state(*decoded);
  EXPECT_EQ(again.version, 4);
  EXPECT_TRUE(valid_utf8(again.text));
}

struct damage {
  const char* name;
  std::string from, to;  // replaced in a version-3 state of "text"
  const char* error;     // in the refusal
};

TEST(StateCodec, ADamagedStateIsRefusedWholeNamingTheField) {
  const auto good = encode_state(full_state("text", "tcp")).text;
  ASSERT_TRUE(decode_state(good));
  const std::vector<damage> cases = {
      {"header", "handoff-state 3", "handoff-stat 3", "does not start with"},
      {"version", "handoff-state 3", "handoff-state 99", "state version 99"},
      {"version zero", "handoff-state 3", "handoff-state 0", "state version 0"},
      {"not json", "\"reexecs\":7", "\"reexecs\":", "not JSON"},
      {"missing", "\"reexecs\":7,", "", "reexecs: missing"},
      {"type", "\"pid\":1234", "\"pid\":\"1234\"", "generations[0].slots[0].pid: not a number"},
      {"range", "\"pid\":1234", "\"pid\":1e20", "generations[0].slots[0].pid: out of range"},
      {"fraction", "\"restarts\":1,", "\"restarts\":1.5,", "generations[0].slots[0].restarts"},
      {"negative pid", "\"pgid\":1234", "\"pgid\":-1234", "a negative pid"},
      {"bool", "\"ready\":true", "\"ready\":1", "generations[0].slots[0].ready: not true or false"},
      {"state", "\"serving\"", "\"sleeping\"", "unknown generation state \"sleeping\""},
      {"string", "\"status_text\":\"textstatus\"", "\"status_text\":5",
       "generations[0].slots[0].status_text: not a string"},
      {"hex before 4", "\"status_text\":\"textstatus\"", "\"status_text\":{\"hex\":\"00\"}",
       "status_text: not a string"},
      {"fd", "\"fdstore\":[{\"fd\":6", "\"fdstore\":[{\"fd\":-6", "fdstore[0].fd: -6 is not an fd"},
      {"fd twice", "\"fdstore\":[{\"fd\":6", "\"fdstore\":[{\"fd\":3", "fd 3 named twice"},
      {"listener", "\"listener\":1", "\"listener\":2", "proxy.clients[0].listener: no socket 2"},
      {"buffered", "\"buffered\":\"", "\"buffered\":\"zz", "proxy.clients[0].buffered: not hex"},
      {"tcp field", "\"client_done\":true,", "", "proxy.clients[0].client_done: missing"},
      {"object", "\"notify\":{", "\"notify\":8,\"x\":{", "notify: not an object"},
      {"array", "\"former\":[1200]", "\"former\":1200", "slots[0].former: not an array"},
      {"optional", "\"waiter\":42", "\"waiter\":{}", "waiter: not a number"},
  };
  for (const auto& c : cases) {
    auto text = good;
    const auto at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.name;
    text.replace(at, c.from.size(), c.to);
    auto decoded = decode_state(text);
    ASSERT_FALSE(decoded) << c.name;
    EXPECT_NE(decoded.error().message().find(c.error), std::string::npos)
        << c.name << ": " << decoded.error().message();
  }
  // Version 4's byte strings: only {"hex": even lowercase hex}.
  const auto v4 = encode_state(full_state("\xff", nullptr)).text;
  ASSERT_TRUE(decode_state(v4));
  for (const char* bad : {R"({"hex":"f"})", R"({"hex":"FF"})", R"({"hex":"ff","x":1})",
                          R"({"bytes":"ff"})", R"({"hex":255})"}) {
    auto text = v4;
    const std::string from = R"({"hex":"ff737461747573"})";
    const auto at = text.find(from);
    ASSERT_NE(at, std::string::npos) << v4;
    text.replace(at, from.size(), bad);
    auto decoded = decode_state(text);
    ASSERT_FALSE(decoded) << bad;
    EXPECT_NE(decoded.error().message().find("status_text: not a byte string"), std::string::npos)
        << decoded.error().message();
  }
}

TEST(StateCodec, EveryFdIsListedOnce) {
  const auto s = full_state("x", "tcp");
  auto fds = state_fds_of(s);
  const std::size_t n = fds.size();
  std::sort(fds.begin(), fds.end());
  EXPECT_EQ(std::unique(fds.begin(), fds.end()) - fds.begin(), static_cast<long>(n));
  EXPECT_EQ(n, 12U);  // 3 (self_exe) to 14: every fd full_state hands out
}

// The seeds of fuzz_reexec_state are states of every version: they stay readable (and so
// start the fuzzer on the accepting paths) as the schema grows.
TEST(StateCodec, EverySeedOfTheFuzzCorpusIsAState) {
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(HANDOFF_STATE_CORPUS)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    auto decoded = decode_state(text.str());
    EXPECT_TRUE(decoded) << entry.path() << ": " << decoded.error().message();
    ++seeds;
  }
  EXPECT_GE(seeds, 4);
}

TEST(ByteText, Utf8ValidityReplacementAndEscapes) {
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
  for (const char* bad :
       {"caf\xe9", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80", "\xff"})
    EXPECT_FALSE(valid_utf8(bad)) << escaped_text(bad);
  EXPECT_EQ(utf8_or_replacement("caf\xe9"), "caf\xef\xbf\xbd");
  // One U+FFFD per maximal ill-formed subsequence (a truncated sequence is one).
  EXPECT_EQ(utf8_or_replacement("a\xe2\x82z"), "a\xef\xbf\xbdz");
  EXPECT_EQ(utf8_or_replacement("\xff\xfe"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(escaped_text("caf\xe9"), "caf\\xe9");
  EXPECT_EQ(escaped_text("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(escaped_text(std::string("a\0\n\x1b[31m\x7f\\", 10)), "a\\x00\\x0a\\x1b[31m\\x7f\\\\");
  EXPECT_EQ(escaped_text("\xc2\x85"), "\\xc2\\x85");  // NEL, a C1 control
  // Distinct bytes, distinct text.
  EXPECT_NE(escaped_text("\\xe9"), escaped_text("\xe9"));
}

}  // namespace
}  // namespace handoff::supervisor
