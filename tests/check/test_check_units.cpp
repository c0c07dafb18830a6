// The pieces of `handoff check` that need no network: the histogram's percentiles, the outcome
// classes, URL parsing, the request bytes, restart windows and the JSON report's shape.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/http/error.hpp>
#include <sstream>

#include "check/histogram.hpp"
#include "check/load.hpp"
#include "check/outcome.hpp"
#include "check/report.hpp"
#include "check/url.hpp"
#include "json.hpp"

namespace handoff::check {
namespace {

TEST(CheckHistogram, EmptyIsZero) {
  histogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.percentile(50), 0u);
  EXPECT_EQ(h.max(), 0u);
}

TEST(CheckHistogram, SmallValuesAreExact) {
  histogram h;
  for (std::uint32_t v = 1; v <= 100; ++v) h.record(v);
  EXPECT_EQ(h.percentile(50), 50u);
  EXPECT_EQ(h.percentile(90), 90u);
  EXPECT_EQ(h.percentile(99), 99u);
  EXPECT_EQ(h.percentile(100), 100u);
  EXPECT_EQ(h.percentile(0), 1u);
  EXPECT_EQ(h.max(), 100u);
  EXPECT_EQ(h.min(), 1u);
  EXPECT_DOUBLE_EQ(h.mean(), 50.5);
}

TEST(CheckHistogram, LargeValuesWithinTwoPercent) {
  histogram h;
  for (std::uint32_t v = 1; v <= 1'000'000; ++v) h.record(v);
  for (double q : {50.0, 90.0, 99.0, 99.9}) {
    const double exact = q / 100.0 * 1'000'000;
    const double got = static_cast<double>(h.percentile(q));
    EXPECT_GE(got, exact) << q;  // never below: the bucket's upper bound
    EXPECT_LE(got, exact * 1.02) << q;
  }
  EXPECT_EQ(h.percentile(100), 1'000'000u);  // capped at the exact max
}

TEST(CheckHistogram, OneOutlierShowsInTheTailOnly) {
  histogram h;
  for (int i = 0; i < 999; ++i) h.record(1000);
  h.record(5'000'000);
  EXPECT_LE(h.percentile(99), 1016u);
  EXPECT_EQ(h.percentile(99.9), h.percentile(99));  // rank 999 of 1000
  EXPECT_EQ(h.max(), 5'000'000u);
  EXPECT_GE(h.percentile(99.95), 5'000'000u * 0.98);
}

TEST(CheckHistogram, BucketsCoverEveryValue) {
  for (std::uint32_t v :
       {0u, 1u, 127u, 128u, 129u, 255u, 256u, 1000u, 65535u, 1u << 20, 0xFFFFFFFFu}) {
    const int b = histogram::bucket_of(v);
    ASSERT_GE(b, 0);
    ASSERT_LT(b, histogram::bucket_count);
    EXPECT_GE(histogram::bucket_high(b), v);
    if (b > 0) {
      EXPECT_LT(histogram::bucket_high(b - 1), v);
    }
  }
}

TEST(CheckHistogram, MergeAddsCounts) {
  histogram a, b;
  a.record(10);
  b.record(20);
  b.record(30);
  a.merge(b);
  EXPECT_EQ(a.count(), 3u);
  EXPECT_EQ(a.min(), 10u);
  EXPECT_EQ(a.max(), 30u);
  EXPECT_EQ(a.percentile(50), 20u);
}

struct classify_case {
  const char* name;
  boost::system::error_code ec;
  failure_context ctx;
  outcome expected;
};

failure_context at(phase p, bool reused = false, bool got_bytes = false, bool timed_out = false) {
  return {p, reused, got_bytes, timed_out};
}

TEST(CheckOutcome, Classification) {
  namespace aerr = boost::asio::error;
  namespace herr = boost::beast::http;
  const boost::system::error_code eof = aerr::eof, reset = aerr::connection_reset,
                                  refused = aerr::connection_refused,
                                  aborted = aerr::operation_aborted,
                                  end_of_stream = herr::error::end_of_stream,
                                  partial = herr::error::partial_message,
                                  bad_version = herr::error::bad_version, pipe = aerr::broken_pipe,
                                  unreachable = aerr::network_unreachable;
  // OpenSSL's packed codes, as Asio reports them in its ssl category.
  const boost::system::error_code wrong_version(
      static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER)),
      aerr::get_ssl_category()),
      verify(static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_CERTIFICATE_VERIFY_FAILED)),
             aerr::get_ssl_category()),
      truncated = boost::asio::ssl::error::stream_truncated;
  const classify_case cases[] = {
      {"refused", refused, at(phase::connecting), outcome::connect_refused},
      {"connect timeout (ours)", aborted, at(phase::connecting, false, false, true),
       outcome::connect_timeout},
      {"connect timeout (kernel)", aerr::timed_out, at(phase::connecting),
       outcome::connect_timeout},
      {"connect other", unreachable, at(phase::connecting), outcome::connect_error},
      {"write reset", reset, at(phase::sending, true), outcome::reset_before_response},
      {"write EPIPE", pipe, at(phase::sending, true), outcome::reset_before_response},
      {"read reset, no bytes", reset, at(phase::reading), outcome::reset_before_response},
      {"EOF reused", end_of_stream, at(phase::reading, true), outcome::keepalive_race},
      {"EOF reused (asio)", eof, at(phase::reading, true), outcome::keepalive_race},
      {"EOF new", end_of_stream, at(phase::reading, false), outcome::closed_before_response},
      {"EOF mid", partial, at(phase::reading, true, true), outcome::cut_mid_response},
      {"reset mid", reset, at(phase::reading, false, true), outcome::cut_mid_response},
      {"garbage", bad_version, at(phase::reading, false, true), outcome::bad_response},
      {"read timeout", aborted, at(phase::reading, true, true, true), outcome::read_timeout},
      {"write timeout", aborted, at(phase::sending, true, false, true), outcome::read_timeout},
      {"other", aborted, at(phase::reading), outcome::io_error},
      {"TLS: not a TLS server", wrong_version, at(phase::handshaking),
       outcome::tls_handshake_failed},
      {"TLS: EOF in the handshake", eof, at(phase::handshaking), outcome::tls_handshake_failed},
      {"TLS: handshake timeout", aborted, at(phase::handshaking, false, false, true),
       outcome::tls_handshake_failed},
      {"TLS: certificate", verify, at(phase::handshaking), outcome::tls_verify_failed},
      {"TLS: truncated, no bytes", truncated, at(phase::reading, true), outcome::tls_truncated},
      {"TLS: truncated mid-response", truncated, at(phase::reading, true, true),
       outcome::tls_truncated},
  };
  for (const auto& c : cases) EXPECT_EQ(classify(c.ec, c.ctx), c.expected) << c.name;
}

TEST(CheckOutcome, NamesAreDistinct) {
  std::set<std::string_view> names;
  for (outcome o : all_outcomes) names.insert(to_string(o));
  EXPECT_EQ(names.size(), outcome_count);
  EXPECT_FALSE(failed(outcome::ok));
  EXPECT_TRUE(failed(outcome::status));
}

TEST(CheckUrl, Valid) {
  struct {
    const char* text;
    const char* host;
    std::uint16_t port;
    const char* target;
    const char* host_header;
  } cases[] = {
      {"http://127.0.0.1:8080/", "127.0.0.1", 8080, "/", "127.0.0.1:8080"},
      {"http://localhost", "localhost", 80, "/", "localhost"},
      {"HTTP://example.com:80/a/b?x=1", "example.com", 80, "/a/b?x=1", "example.com"},
      {"http://[::1]:9000/slow?ms=5", "::1", 9000, "/slow?ms=5", "[::1]:9000"},
      {"http://h?q=1", "h", 80, "/?q=1", "h"},
      {"http://h/p#frag", "h", 80, "/p", "h"},
      {"https://example.com/", "example.com", 443, "/", "example.com"},
      {"HTTPS://127.0.0.1:8443/x", "127.0.0.1", 8443, "/x", "127.0.0.1:8443"},
      {"https://h:80/", "h", 80, "/", "h:80"},
  };
  for (const auto& c : cases) {
    auto u = parse_url(c.text);
    ASSERT_TRUE(u) << c.text << ": " << u.error().message();
    EXPECT_EQ(u->host, c.host) << c.text;
    EXPECT_EQ(u->port, c.port) << c.text;
    EXPECT_EQ(u->target, c.target) << c.text;
    EXPECT_EQ(u->host_header(), c.host_header) << c.text;
    EXPECT_EQ(u->tls, std::string_view(c.text).find("://") == 5) << c.text;  // https
  }
}

TEST(CheckUrl, Malformed) {
  struct {
    const char* text;
    const char* says;
  } cases[] = {
      {"ftp://x/", "only http:// and https:// are"},
      {"https://", "no host"},
      {"127.0.0.1:8080", "expected http://"},
      {"", "expected http://"},
      {"http://", "no host"},
      {"http:///path", "no host"},
      {"http://h:/", "empty port"},
      {"http://h:0/", "1..65535"},
      {"http://h:65536/", "1..65535"},
      {"http://h:8o/", "not a number"},
      {"http://[::1/", "unterminated"},
      {"http://[::1]x/", "after ']'"},
      {"http://user@h/", "user information"},
      {"http://h/a b", "percent-encoded"},
  };
  for (const auto& c : cases) {
    auto u = parse_url(c.text);
    ASSERT_FALSE(u) << c.text;
    EXPECT_NE(u.error().message().find(c.says), std::string::npos) << u.error().message();
    EXPECT_NE(u.error().message().find(std::string("\"") + c.text + "\""), std::string::npos)
        << "quotes the input: " << u.error().message();
  }
}

TEST(CheckRequest, Bytes) {
  load_options o;
  o.target = parse_url("http://127.0.0.1:8080/x").value();
  EXPECT_EQ(build_request(o),
            "GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: handoff-check\r\n\r\n");
  o.mode = connection_mode::close;
  o.method = "POST";
  o.body_size = 3;
  EXPECT_EQ(build_request(o),
            "POST /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: handoff-check\r\n"
            "Connection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: "
            "3\r\n\r\nxxx");
}

// A synthetic run: 100 ok per 100 ms for 3 s, a restart at 1.0-1.1 s, failures in 1.1-1.3 s
// and nothing in 1.3-1.4 s.
run_result synthetic_run() {
  run_result run;
  run.load_us = 3'000'000;
  run.elapsed_us = 3'000'000;
  for (std::int64_t bin = 0; bin < 30; ++bin) {
    for (int i = 0; i < 100; ++i) {
      request_record r;
      r.end_us = bin * 100'000 + i * 1000;
      r.latency_us = 500;
      r.status = 200;
      if (bin == 11 || bin == 12) {
        r.result = i < 10 ? outcome::connect_refused : outcome::ok;
        if (i == 99) {
          r.result = outcome::status;
          r.status = 503;
        }
        if (r.result != outcome::ok) r.latency_us = 2000;
      }
      if (bin == 13) continue;
      run.requests.push_back(r);
    }
  }
  run.restarts.push_back({1'000'000, 1'100'000, true, true, "exited with status 0"});
  run.served_by = {{"42", 2800}};
  // 4 connections at the start; two are closed in the restart and opened again, one after it.
  run.opened_us = {1'000, 1'000, 1'000, 1'000, 1'050'000, 1'200'000, 2'000'000};
  run.reconnect_us = {1'050'000, 1'200'000, 2'000'000};
  return run;
}

TEST(CheckReport, RestartWindowEndsWhenTrafficIsSteady) {
  const auto run = synthetic_run();
  const auto s = analyze(run);
  ASSERT_EQ(s.windows.size(), 1u);
  const auto& w = s.windows[0];
  EXPECT_EQ(w.from_us, 1'000'000);
  EXPECT_EQ(w.to_us, 1'400'000);  // bins 11, 12 failed, 13 empty; 14.. steady
  EXPECT_TRUE(w.settled);
  EXPECT_DOUBLE_EQ(w.baseline_ok_per_s, 1000.0);
  EXPECT_EQ(w.stats.requests, 301u);  // and the one that started at 1.3995 s
  EXPECT_EQ(w.stats.count(outcome::connect_refused), 20u);
  EXPECT_EQ(w.stats.status_codes.at(503), 2u);
  EXPECT_EQ(s.steady.failed(), 0u);
  EXPECT_EQ(s.total.requests, s.steady.requests + w.stats.requests);
  EXPECT_EQ(s.total.failed(), 22u);
  ASSERT_EQ(s.timeline.size(), 31u);
  EXPECT_EQ(s.timeline[11].failed, 11u);
  EXPECT_EQ(s.timeline[13].requests, 0u);
  EXPECT_EQ(w.stats.latency.max(), 2000u);
}

TEST(CheckReport, WindowThatNeverSettles) {
  auto run = synthetic_run();
  for (auto& r : run.requests)
    if (r.end_us >= 1'100'000) r.result = outcome::keepalive_race;
  const auto s = analyze(run);
  ASSERT_EQ(s.windows.size(), 1u);
  EXPECT_FALSE(s.windows[0].settled);
  EXPECT_GT(s.windows[0].to_us, run.elapsed_us);
  EXPECT_EQ(s.steady.failed(), 0u);
}

TEST(CheckReport, JsonShape) {
  const auto run = synthetic_run();
  const auto s = analyze(run);
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/\"quoted\"").value();
  const auto json = boost::json::parse(format_json({o, run, s}));
  const auto& top = json.as_object();
  EXPECT_EQ(top.at("url").as_string(), "http://127.0.0.1:1/\"quoted\"");
  EXPECT_EQ(top.at("mode").as_string(), "keepalive");
  EXPECT_EQ(test::json_int(json, "requests"), 2900);
  EXPECT_EQ(test::json_int(json, "failed"), 22);
  const auto& outcomes = top.at("outcomes").as_object();
  EXPECT_EQ(outcomes.size(), outcome_count);  // every class, zeros included
  EXPECT_EQ(outcomes.at("connect_refused").to_number<int>(), 20);
  EXPECT_EQ(top.at("status_codes").as_object().at("503").to_number<int>(), 2);
  for (const char* k : {"p50", "p90", "p99", "p99_9", "max", "mean", "count"})
    EXPECT_TRUE(top.at("latency_ms").as_object().contains(k)) << k;
  EXPECT_EQ(top.at("served_by").as_object().at("42").to_number<int>(), 2800);
  const auto& restarts = top.at("restarts").as_array();
  ASSERT_EQ(restarts.size(), 1u);
  EXPECT_TRUE(restarts[0].as_object().at("success").as_bool());
  EXPECT_DOUBLE_EQ(restarts[0].as_object().at("window_end_s").to_number<double>(), 1.4);
  EXPECT_EQ(test::json_int(restarts[0], "failed"), 22);
  const auto& timeline = top.at("timeline").as_object();
  EXPECT_EQ(timeline.at("bin_ms").to_number<int>(), 100);
  for (const char* k : {"requests", "ok", "failed", "latency_max_ms", "latency_mean_ms"})
    EXPECT_EQ(timeline.at(k).as_array().size(), s.timeline.size()) << k;
  EXPECT_EQ(test::json_int(top.at("steady"), "failed"), 0);
  EXPECT_EQ(test::json_int(top.at("in_restarts"), "failed"), 22);
  EXPECT_EQ(test::json_int(top.at("in_restarts"), "requests"), 301);
  EXPECT_EQ(test::json_int(top.at("in_restarts"), "requests") +
                test::json_int(top.at("steady"), "requests"),
            2900);
  EXPECT_TRUE(top.at("tls").is_null()) << "http://";
}

TEST(CheckReport, TlsCountsInJsonAndText) {
  auto run = synthetic_run();
  run.tls_handshakes = 40;
  run.tls_resumed = 32;
  const auto s = analyze(run);
  load_options o;
  o.target = parse_url("https://127.0.0.1:8443/").value();
  o.tls.ca_file = "/ca.pem";
  o.tls.resume = true;
  const auto json = boost::json::parse(format_json({o, run, s}));
  const auto& top = json.as_object();
  EXPECT_EQ(top.at("url").as_string(), "https://127.0.0.1:8443/");
  const auto& tls = top.at("tls");
  EXPECT_EQ(tls.as_object().at("verify").as_string(), "cacert");
  EXPECT_TRUE(tls.as_object().at("resume").as_bool());
  EXPECT_EQ(test::json_int(tls, "handshakes"), 40);
  EXPECT_EQ(test::json_int(tls, "resumed"), 32);
  for (const char* k : {"tls_handshake_failed", "tls_verify_failed", "tls_truncated"})
    EXPECT_TRUE(top.at("outcomes").as_object().contains(k)) << k;
  const std::string text = format_text({o, run, s});
  EXPECT_NE(text.find("handoff check https://127.0.0.1:8443/"), std::string::npos) << text;
  EXPECT_NE(text.find("(32 resumed)"), std::string::npos) << text;
}

TEST(CheckReport, TextAndSvgMentionWhatHappened) {
  const auto run = synthetic_run();
  const auto s = analyze(run);
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/").value();
  const std::string text = format_text({o, run, s});
  EXPECT_NE(text.find("connection refused"), std::string::npos) << text;
  EXPECT_NE(text.find("status 503"), std::string::npos) << text;
  EXPECT_NE(text.find("restart 1"), std::string::npos) << text;
  const std::string svg = format_svg({o, run, s});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("fill=\"#d22\""), std::string::npos) << "failures as red bars";
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
}

// The points of the SVG's polyline of `color`, as (x, y).
std::vector<std::pair<double, double>> svg_points(const std::string& svg,
                                                  const std::string& color) {
  std::vector<std::pair<double, double>> out;
  const auto at = svg.find("<polyline fill=\"none\" stroke=\"" + color + "\"");
  if (at == std::string::npos) return out;
  const auto from = svg.find("points=\"", at) + 8;
  std::istringstream in(svg.substr(from, svg.find('"', from) - from));
  double x = 0, y = 0;
  char comma = 0;
  while (in >> x >> comma >> y) out.emplace_back(x, y);
  return out;
}

// The run ends on a bin boundary (a last bin with nothing in it) or inside a bin (a bin with
// half the requests): neither is a drop of the rate, which stayed 1000/s.
TEST(CheckReport, SvgRateHasNoDropAtTheEnd) {
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/").value();
  for (const std::int64_t load_us : {3'000'000, 2'950'000}) {
    auto run = synthetic_run();
    run.load_us = run.elapsed_us = load_us;
    std::erase_if(run.requests, [&](const request_record& r) { return r.end_us >= load_us; });
    const auto s = analyze(run);
    const auto points = svg_points(format_svg({o, run, s}), "#222");
    ASSERT_GE(points.size(), 29u) << load_us;
    EXPECT_DOUBLE_EQ(points.back().second, points.front().second) << load_us;
    EXPECT_LE(points.back().first, 960 - 70) << "inside the plot";
  }
}

// The same for the text timeline: its last bar is as full as the others, and the steady rate
// draws full bars throughout.
TEST(CheckReport, TextTimelineHasNoDropAtTheEnd) {
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/").value();
  for (const std::int64_t load_us : {3'000'000, 2'950'000}) {
    auto run = synthetic_run();
    run.load_us = run.elapsed_us = load_us;
    std::erase_if(run.requests, [&](const request_record& r) { return r.end_us >= load_us; });
    const auto s = analyze(run);
    const std::string text = format_text({o, run, s});
    const auto at = text.find("  0.0s |");
    ASSERT_NE(at, std::string::npos) << text;
    const auto from = at + 8;
    const std::string bars = text.substr(from, text.find("|\n", from) - from);
    ASSERT_FALSE(bars.empty()) << text;
    const std::string full = "\u2588";
    EXPECT_EQ(bars.substr(bars.size() - full.size()), full) << load_us << "\n" << text;
    EXPECT_NE(text.find("(full bar: 100)"), std::string::npos) << text;
  }
}

// Every line of text that starts at its x (no text-anchor) ends inside the 960 px picture, at
// 0.6 em a character (wider than the average glyph of any sans-serif font).
TEST(CheckReport, SvgTextStaysInsideThePicture) {
  auto run = synthetic_run();
  const auto s = analyze(run);
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/" + std::string(200, 'a')).value();
  const std::string svg = format_svg({o, run, s});
  int lines = 0;
  for (auto at = svg.find("<text "); at != std::string::npos; at = svg.find("<text ", at + 1)) {
    const auto close = svg.find('>', at);
    const std::string tag = svg.substr(at, close - at);
    if (tag.find("text-anchor") != std::string::npos) continue;
    const std::string body = svg.substr(close + 1, svg.find("</text>", close) - close - 1);
    const auto x_at = tag.find("x=\"") + 3;
    const double x = std::stod(tag.substr(x_at));
    const auto size_at = tag.find("font-size=\"");
    const double size = size_at == std::string::npos ? 12 : std::stod(tag.substr(size_at + 11));
    EXPECT_LE(x + 0.6 * size * static_cast<double>(body.size()), 960) << body;
    ++lines;
  }
  EXPECT_GE(lines, 3);  // the title and the legend at least
}

TEST(CheckReport, ConnectionsAndReconnectsOverallAndPerWindow) {
  const auto run = synthetic_run();
  const auto s = analyze(run);
  EXPECT_EQ(s.connections_opened, 7u);
  EXPECT_EQ(s.reconnects, 3u);
  ASSERT_EQ(s.windows.size(), 1u);
  EXPECT_EQ(s.windows[0].connections_opened, 2u);  // the window is 1.0-1.4 s
  EXPECT_EQ(s.windows[0].reconnects, 2u);
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/").value();
  const auto json = boost::json::parse(format_json({o, run, s}));
  EXPECT_EQ(test::json_int(json, "connections_opened"), 7);
  EXPECT_EQ(test::json_int(json, "reconnects"), 3);
  const auto& restart = json.as_object().at("restarts").as_array().at(0);
  EXPECT_EQ(test::json_int(restart, "connections_opened"), 2);
  EXPECT_EQ(test::json_int(restart, "reconnects"), 2);
  const std::string text = format_text({o, run, s});
  EXPECT_NE(text.find("3 reconnects"), std::string::npos) << text;
  EXPECT_NE(text.find("2 reconnects"), std::string::npos) << text;
  // A new connection per request is the design of close mode, not a reconnect.
  o.mode = connection_mode::close;
  const auto close = boost::json::parse(format_json({o, run, s}));
  EXPECT_TRUE(close.as_object().at("reconnects").is_null());
  EXPECT_TRUE(
      close.as_object().at("restarts").as_array().at(0).as_object().at("reconnects").is_null());
}

TEST(CheckReport, JsonEscapesEveryString) {
  auto run = synthetic_run();
  run.served_by = {{"a\"b\\c\n\x01", 1}};
  run.first_io_error = "tab\there";
  const auto s = analyze(run);
  load_options o;
  o.target = parse_url("http://127.0.0.1:1/").value();
  const std::string text = format_json({o, run, s});
  const auto json = boost::json::parse(text);
  EXPECT_TRUE(json.as_object().at("served_by").as_object().contains("a\"b\\c\n\x01"));
  EXPECT_EQ(json.as_object().at("first_io_error").as_string(), "tab\there");
  EXPECT_NE(text.find("\\u0001"), std::string::npos) << text.substr(0, 400);
}

}  // namespace
}  // namespace handoff::check
