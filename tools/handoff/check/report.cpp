#include "check/report.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <optional>

namespace handoff::check {

void tally::add(const request_record& r) {
  ++requests;
  ++by_outcome[static_cast<std::size_t>(r.result)];
  if (r.result == outcome::status) ++status_codes[r.status];
  latency.record(r.latency_us);
}

namespace {

constexpr int steady_run_bins = 5;  // 0.5 s of steady bins ends a window
constexpr int baseline_bins = 10;   // 1 s before the restart
constexpr double steady_fraction = 0.5;

double median(std::vector<std::uint32_t> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

// The request rate of bin i, over the part of it in which requests were started: the bin the
// load ends inside holds fewer requests only because it is shorter, and a bin past the end
// holds only the tail of requests in flight. A bin covered for less than half its length says
// too little about a rate to be drawn (nullopt); a partial one longer than that is scaled.
std::optional<double> bin_rate(const run_summary& s, std::int64_t load_us, std::size_t i) {
  const auto from = static_cast<std::int64_t>(i) * s.bin_us;
  const std::int64_t covered =
      load_us <= 0 ? s.bin_us : std::clamp<std::int64_t>(load_us - from, 0, s.bin_us);
  if (covered * 2 < s.bin_us) return std::nullopt;
  return s.timeline[i].requests * 1e6 / static_cast<double>(covered);
}

double ms(std::uint64_t us) { return static_cast<double>(us) / 1000.0; }
double seconds(std::int64_t us) { return static_cast<double>(us) / 1e6; }

}  // namespace

run_summary analyze(const run_result& run, std::int64_t bin_us) {
  run_summary s;
  s.bin_us = bin_us;
  std::int64_t end_us = std::max(run.elapsed_us, run.load_us);
  for (const auto& r : run.requests) end_us = std::max(end_us, r.end_us);
  s.timeline.resize(static_cast<std::size_t>(end_us / bin_us + 1));
  for (const auto& r : run.requests) {
    auto& b = s.timeline[static_cast<std::size_t>(r.end_us / bin_us)];
    ++b.requests;
    if (r.result == outcome::ok) {
      ++b.ok;
    } else {
      ++b.failed;
    }
    b.latency_max_us = std::max(b.latency_max_us, r.latency_us);
    b.latency_sum_us += r.latency_us;
  }
  const auto bins = static_cast<std::int64_t>(s.timeline.size());
  for (std::size_t i = 0; i < run.restarts.size(); ++i) {
    const auto& restart = run.restarts[i];
    restart_window w;
    w.restart = restart;
    w.from_us = restart.start_us;
    const std::int64_t limit =
        i + 1 < run.restarts.size() ? run.restarts[i + 1].start_us : run.load_us;
    const std::int64_t first = w.from_us / bin_us;  // the bin the restart starts in
    std::vector<std::uint32_t> before;
    for (std::int64_t b = std::max<std::int64_t>(0, first - baseline_bins); b < first; ++b)
      before.push_back(s.timeline[static_cast<std::size_t>(b)].ok);
    const double baseline = median(std::move(before));
    w.baseline_ok_per_s = baseline * 1e6 / static_cast<double>(bin_us);
    const auto steady = [&](std::int64_t b) {
      const auto& bin = s.timeline[static_cast<std::size_t>(b)];
      return bin.failed == 0 && bin.ok >= steady_fraction * baseline;
    };
    const std::int64_t command_end = restart.finished ? restart.end_us : end_us;
    w.to_us = std::max(limit, w.from_us);
    for (std::int64_t k = std::max(first, (command_end + bin_us - 1) / bin_us);
         (k + steady_run_bins) * bin_us <= limit && k + steady_run_bins <= bins; ++k) {
      bool all = true;
      for (int j = 0; j < steady_run_bins && all; ++j) all = steady(k + j);
      if (all) {
        w.to_us = std::max(k * bin_us, w.from_us);
        w.settled = true;
        break;
      }
    }
    if (!w.settled && i + 1 == run.restarts.size()) w.to_us = end_us + 1;
    s.windows.push_back(std::move(w));
  }
  for (const auto& r : run.requests) {
    s.total.add(r);
    bool in_window = false;
    for (auto& w : s.windows) {
      // In flight at any time of the window: a request queued during a stall belongs to the
      // restart even when it completes after traffic is steady again.
      const std::int64_t started = r.end_us - static_cast<std::int64_t>(r.latency_us);
      if (r.end_us >= w.from_us && started < w.to_us) {
        w.stats.add(r);
        s.in_restarts.add(r);
        in_window = true;
        break;
      }
    }
    if (!in_window) s.steady.add(r);
  }
  s.connections_opened = run.opened_us.size();
  s.reconnects = run.reconnect_us.size();
  for (auto& w : s.windows) {
    const auto in = [&](const std::vector<std::int64_t>& times) {
      return static_cast<std::uint64_t>(
          std::count_if(times.begin(), times.end(),
                        [&](std::int64_t t) { return t >= w.from_us && t < w.to_us; }));
    };
    w.connections_opened = in(run.opened_us);
    w.reconnects = in(run.reconnect_us);
  }
  return s;
}

namespace {

std::string mode_text(const load_options& o) {
  return o.mode == connection_mode::keepalive ? "keep-alive" : "new connection per request";
}

std::string latency_row(std::string_view name, const histogram& h) {
  if (h.count() == 0) return fmt::format("  {:<22} {:>9}\n", name, "-");
  return fmt::format("  {:<22} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f}\n", name,
                     ms(h.percentile(50)), ms(h.percentile(90)), ms(h.percentile(99)),
                     ms(h.percentile(99.9)), ms(h.max()));
}

std::string failure_list(const tally& t) {
  std::string s;
  for (outcome o : all_outcomes) {
    if (o == outcome::ok || o == outcome::status || t.count(o) == 0) continue;
    s += fmt::format("{}{} {}", s.empty() ? "" : ", ", t.count(o), describe(o));
  }
  for (const auto& [code, n] : t.status_codes)
    s += fmt::format("{}{} status {}", s.empty() ? "" : ", ", n, code);
  return s;
}

}  // namespace

std::string format_text(const report_context& r) {
  const auto& o = r.options;
  const auto& s = r.summary;
  const auto& t = s.total;
  std::string out;
  const double load_s = seconds(r.run.load_us);
  out += fmt::format("handoff check {} for {:.1f} s: {} connections ({}), {}, {}\n",
                     o.target.text(), load_s, o.connections, mode_text(o), o.method,
                     o.rate > 0 ? fmt::format("{:g} req/s", o.rate) : "as fast as possible");
  out += fmt::format("  requests  {:>10}  ({:.0f} req/s)\n", t.requests,
                     load_s > 0 ? static_cast<double>(t.requests) / load_s : 0.0);
  out += fmt::format("  ok        {:>10}\n", t.ok());
  out += fmt::format("  failed    {:>10}\n", t.failed());
  for (outcome c : all_outcomes) {
    if (c == outcome::ok || c == outcome::status || t.count(c) == 0) continue;
    out += fmt::format("    {:<44} {:>8}\n", describe(c), t.count(c));
  }
  for (const auto& [code, n] : t.status_codes)
    out += fmt::format("    {:<44} {:>8}\n", fmt::format("status {}", code), n);
  if (!r.run.first_io_error.empty())
    out += fmt::format("    (first other I/O error: {})\n", r.run.first_io_error);
  const bool keepalive = o.mode == connection_mode::keepalive;
  out += fmt::format(
      "  connections opened {:>10}{}\n", s.connections_opened,
      keepalive ? fmt::format("  ({} reconnects: opened again after a close)", s.reconnects)
                : std::string("  (one per request)"));
  if (o.target.tls)
    out += fmt::format("  TLS handshakes {:>14}  ({} resumed{})\n", r.run.tls_handshakes,
                       r.run.tls_resumed, o.tls.resume ? "" : "; --tls-resume offers sessions");
  out += fmt::format("\n  latency (ms)           {:>9} {:>9} {:>9} {:>9} {:>9}\n", "p50", "p90",
                     "p99", "p99.9", "max");
  out += latency_row("all", t.latency);
  if (!s.windows.empty()) {
    out += latency_row("steady state", s.steady.latency);
    out += latency_row("all restart windows", s.in_restarts.latency);
    for (std::size_t i = 0; i < s.windows.size(); ++i)
      out += latency_row(fmt::format("restart {}", i + 1), s.windows[i].stats.latency);
  }
  if (!r.run.served_by.empty()) {
    out += fmt::format("\n  served by (X-Served-By): {} distinct:", r.run.served_by.size());
    for (const auto& [who, n] : r.run.served_by) out += fmt::format(" {} ({})", who, n);
    out += "\n";
  }
  if (!s.windows.empty()) {
    out += "\n  restarts (window: from the command's start until traffic is steady again)\n";
    for (std::size_t i = 0; i < s.windows.size(); ++i) {
      const auto& w = s.windows[i];
      const auto& rs = w.restart;
      out += fmt::format(
          "  {:>3}. at {:.2f} s: {}{}; window {:.2f}-{:.2f} s{}: {} requests, {} failed{}", i + 1,
          seconds(rs.start_us), rs.status,
          rs.finished ? fmt::format(" after {:.2f} s", seconds(rs.end_us - rs.start_us)) : "",
          seconds(w.from_us), seconds(w.to_us), w.settled ? "" : " (not settled)", w.stats.requests,
          w.stats.failed(),
          keepalive ? fmt::format(", {} reconnects", w.reconnects) : std::string());
      const std::string f = failure_list(w.stats);
      out += f.empty() ? "\n" : " (" + f + ")\n";
    }
    out += fmt::format("  steady state: {} requests, {} failed{}\n", s.steady.requests,
                       s.steady.failed(),
                       s.steady.failed() ? " (" + failure_list(s.steady) + ")" : "");
  }
  // The timeline, 50 bins (5 s) a line: the rate as bars, then failures (x) and restarts (R).
  // Bars are rates (bin_rate), so the bin the run ends inside is not drawn as a drop; the full
  // bar is still said in requests per 100 ms, the unit a reader counts in.
  const auto rate = [&](std::size_t b) { return bin_rate(s, r.run.load_us, b); };
  double peak = 1;
  for (std::size_t b = 0; b < s.timeline.size(); ++b) peak = std::max(peak, rate(b).value_or(0));
  static constexpr const char* bars[] = {" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  const double per_bin = static_cast<double>(s.bin_us) / 1e6;
  out += fmt::format(
      "\n  requests per 100 ms (full bar: {:.0f}), x: failures, R: restart starts, !: a restart "
      "command that failed\n",
      peak * per_bin);
  for (std::size_t line = 0; line < s.timeline.size(); line += 50) {
    std::string bar_line, marks;
    bool any_mark = false;
    for (std::size_t b = line; b < std::min(line + 50, s.timeline.size()); ++b) {
      const auto& bin = s.timeline[b];
      const auto v = rate(b);
      char m = bin.failed ? 'x' : ' ';
      for (const auto& w : s.windows)
        if (w.from_us / s.bin_us == static_cast<std::int64_t>(b)) m = w.restart.success ? 'R' : '!';
      // A bin too short to give a rate ends the line, unless something happened in it.
      if (!v && m == ' ') break;
      bar_line += bars[std::min(8, static_cast<int>(std::ceil(v.value_or(0) * 8 / peak)))];
      marks += m;
      any_mark = any_mark || m != ' ';
    }
    if (bar_line.empty()) continue;
    out += fmt::format("  {:5.1f}s |{}|\n", seconds(static_cast<std::int64_t>(line) * s.bin_us),
                       bar_line);
    if (any_mark) out += fmt::format("         {}\n", marks);
  }
  return out;
}

namespace {

namespace json = boost::json;

// Milliseconds and seconds to the microsecond, so that the file says what was measured and no
// more digits than that.
double rounded(double v, double unit) { return std::round(v * unit) / unit; }
double json_ms(std::uint64_t us) { return rounded(ms(us), 1000); }
double json_s(std::int64_t us) { return rounded(seconds(us), 1e6); }

json::object json_latency(const histogram& h) {
  return {{"count", h.count()},
          {"p50", json_ms(h.percentile(50))},
          {"p90", json_ms(h.percentile(90))},
          {"p99", json_ms(h.percentile(99))},
          {"p99_9", json_ms(h.percentile(99.9))},
          {"max", json_ms(h.max())},
          {"mean", rounded(h.mean() / 1000.0, 1000)}};
}

// The fields of a tally, added to `o` (the top level holds the totals' fields directly).
void put_tally(json::object& o, const tally& t) {
  o["requests"] = t.requests;
  o["ok"] = t.ok();
  o["failed"] = t.failed();
  json::object outcomes;
  for (outcome c : all_outcomes) outcomes[to_string(c)] = t.count(c);
  o["outcomes"] = std::move(outcomes);
  json::object codes;
  for (const auto& [code, n] : t.status_codes) codes[std::to_string(code)] = n;
  o["status_codes"] = std::move(codes);
  o["latency_ms"] = json_latency(t.latency);
}

json::object tally_object(const tally& t) {
  json::object o;
  put_tally(o, t);
  return o;
}

// Reconnects are counted in keep-alive mode only (load.hpp): null in close mode.
json::value reconnects(const load_options& o, std::uint64_t n) {
  if (o.mode != connection_mode::keepalive) return nullptr;
  return n;
}

// Boost.JSON 1.81 writes doubles as "5E2" and everything on one line; the file is also read by
// people, so numbers are written by fmt (shortest round trip: "500", "0.291") and objects one
// member a line. Strings, keys and the structure stay Boost.JSON's.
void write_pretty(std::string& out, const json::value& v, int indent) {
  switch (v.kind()) {
    case json::kind::double_:
      out += std::isfinite(v.get_double()) ? fmt::format("{}", v.get_double()) : "null";
      return;
    case json::kind::object: {
      const auto& o = v.get_object();
      if (o.empty()) {
        out += "{}";
        return;
      }
      const bool flat = indent >= 2;  // a restart, a tally inside an object: one line
      out += '{';
      bool first = true;
      for (const auto& [key, value] : o) {
        out += first ? "" : ",";
        out += flat ? (first ? "" : " ")
                    : "\n" + std::string(static_cast<std::size_t>(indent + 1) * 2, ' ');
        out += json::serialize(json::string_view(key));
        out += ": ";
        write_pretty(out, value, indent + 1);
        first = false;
      }
      out += flat ? "}" : "\n" + std::string(static_cast<std::size_t>(indent) * 2, ' ') + "}";
      return;
    }
    case json::kind::array: {
      const auto& a = v.get_array();
      const bool scalars =
          std::none_of(a.begin(), a.end(), [](const json::value& x) { return x.is_structured(); });
      out += '[';
      for (std::size_t i = 0; i < a.size(); ++i) {
        out += i ? "," : "";
        out += scalars ? (i ? " " : "")
                       : "\n" + std::string(static_cast<std::size_t>(indent + 1) * 2, ' ');
        write_pretty(out, a[i], indent + 1);
      }
      out += scalars || a.empty()
                 ? "]"
                 : "\n" + std::string(static_cast<std::size_t>(indent) * 2, ' ') + "]";
      return;
    }
    default:
      out += json::serialize(v);
  }
}

template <class F>
json::array timeline_array(const std::vector<timeline_bin>& bins, F f) {
  json::array a;
  a.reserve(bins.size());
  for (const auto& b : bins) a.emplace_back(f(b));
  return a;
}

}  // namespace

std::string format_json(const report_context& r) {
  const auto& o = r.options;
  const auto& s = r.summary;
  json::object top;
  top["url"] = o.target.text();
  top["mode"] = o.mode == connection_mode::keepalive ? "keepalive" : "close";
  top["method"] = o.method;
  top["body_size"] = o.body_size;
  top["connections"] = o.connections;
  top["rate"] = o.rate;
  top["duration_s"] = json_s(r.run.load_us);
  top["elapsed_s"] = json_s(r.run.elapsed_us);
  put_tally(top, s.total);
  top["connections_opened"] = s.connections_opened;
  top["reconnects"] = reconnects(o, s.reconnects);
  if (o.target.tls) {
    top["tls"] = {{"verify", o.tls.insecure          ? "none"
                             : o.tls.ca_file.empty() ? "system"
                                                     : "cacert"},
                  {"resume", o.tls.resume},
                  {"handshakes", r.run.tls_handshakes},
                  {"resumed", r.run.tls_resumed}};
  } else {
    top["tls"] = nullptr;
  }
  top["steady"] = tally_object(s.steady);
  top["in_restarts"] = tally_object(s.in_restarts);
  top["first_io_error"] = r.run.first_io_error;
  json::object served;
  for (const auto& [who, n] : r.run.served_by) served[who] = n;
  top["served_by"] = std::move(served);
  json::array restarts;
  for (const auto& w : s.windows) {
    json::object x{{"start_s", json_s(w.restart.start_us)},
                   {"end_s", json_s(w.restart.end_us)},
                   {"finished", w.restart.finished},
                   {"stopped", w.restart.stopped},
                   {"success", w.restart.success},
                   {"status", w.restart.status},
                   {"window_start_s", json_s(w.from_us)},
                   {"window_end_s", json_s(w.to_us)},
                   {"settled", w.settled},
                   {"baseline_ok_per_s", rounded(w.baseline_ok_per_s, 10)},
                   {"connections_opened", w.connections_opened},
                   {"reconnects", reconnects(o, w.reconnects)}};
    put_tally(x, w.stats);
    restarts.emplace_back(std::move(x));
  }
  top["restarts"] = std::move(restarts);
  top["timeline"] = json::object{
      {"bin_ms", s.bin_us / 1000},
      {"requests", timeline_array(s.timeline, [](const timeline_bin& b) { return b.requests; })},
      {"ok", timeline_array(s.timeline, [](const timeline_bin& b) { return b.ok; })},
      {"failed", timeline_array(s.timeline, [](const timeline_bin& b) { return b.failed; })},
      {"latency_max_ms",
       timeline_array(s.timeline, [](const timeline_bin& b) { return json_ms(b.latency_max_us); })},
      {"latency_mean_ms", timeline_array(s.timeline, [](const timeline_bin& b) {
         return b.requests ? rounded(ms(b.latency_sum_us) / b.requests, 1000) : 0.0;
       })}};
  std::string out;
  write_pretty(out, top, 0);
  return out + "\n";
}

namespace {
std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}
}  // namespace

// At most `max` characters (UTF-8 bytes), the cut marked with "...".
std::string shortened(const std::string& text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t cut = max - 3;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

std::string format_svg(const report_context& r) {
  const auto& s = r.summary;
  const auto& t = s.total;
  // Text lines are kept short enough to end inside the picture at 0.6 em a character, more
  // than sans-serif's average glyph (the legend in two lines, a long URL in the title cut).
  constexpr double width = 960, left = 70, right = 70, top = 48, panel = 220, gap = 50;
  constexpr double plot_w = width - left - right;
  constexpr double height = top + panel + gap + panel + 56;
  const std::size_t n = std::max<std::size_t>(1, s.timeline.size());
  const double bin_s = static_cast<double>(s.bin_us) / 1e6;
  const double span_s = static_cast<double>(n) * bin_s;
  double rate_max = 1, fail_max = 1, lat_max = 0.001;
  for (std::size_t i = 0; i < s.timeline.size(); ++i)
    rate_max = std::max(rate_max, bin_rate(s, r.run.load_us, i).value_or(0));
  for (const auto& b : s.timeline) {
    fail_max = std::max(fail_max, static_cast<double>(b.failed));
    lat_max = std::max(lat_max, ms(b.latency_max_us));
  }
  const auto nice = [](double v) {
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
      if (m * p >= v) return m * p;
    return 10 * p;
  };
  rate_max = nice(rate_max * 1.05);
  fail_max = nice(fail_max);
  lat_max = nice(lat_max * 1.05);
  const auto x = [&](double sec) { return left + sec / span_s * plot_w; };
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n",
      width, height);
  out += fmt::format(
      "<text x=\"{0}\" y=\"18\" font-size=\"14\">handoff check {1}</text>\n<text x=\"{0}\" "
      "y=\"34\">{2} requests, {3} failed, {4} restarts ({5}, {6} connections)</text>\n",
      left, xml_escape(shortened(r.options.target.text(), 90)), t.requests, t.failed(),
      s.windows.size(), r.options.mode == connection_mode::keepalive ? "keep-alive" : "close",
      r.options.connections);
  const auto axes = [&](double y0, double ymax, const std::string& label,
                        const std::string& fmt_unit) {
    std::string a = fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n",
        left, y0, plot_w, panel);
    for (int i = 0; i <= 4; ++i) {
      const double yy = y0 + panel - panel * i / 4.0;
      a += fmt::format(
          "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>"
          "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:g}{6}</text>\n",
          left, left + plot_w, yy, left - 6, yy + 4, ymax * i / 4.0, fmt_unit);
    }
    const double step = nice(span_s / 10);
    for (int k = 0; k * step <= span_s + 1e-9; ++k) {
      const double sec = k * step;
      a += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:g}s</text>\n", x(sec),
                       y0 + panel + 16, sec);
    }
    a += fmt::format(
        "<text x=\"14\" y=\"{0:.1f}\" transform=\"rotate(-90 14 {0:.1f})\" "
        "text-anchor=\"middle\">{1}</text>\n",
        y0 + panel / 2, label);
    return a;
  };
  const double y1 = top, y2 = top + panel + gap;
  out += axes(y1, rate_max, "requests/s (line), failures per 100 ms (red)", "");
  out += axes(y2, lat_max, "latency per 100 ms (ms): max, mean", "");
  for (int i = 0; i <= 4; ++i)  // the failure axis, on the right of the top panel
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" fill=\"#c00\">{:g}</text>\n", left + plot_w + 6,
                       y1 + panel - panel * i / 4.0 + 4, fail_max * i / 4.0);
  for (const auto& w : s.windows) {  // shaded windows and restart marks
    const double a = x(seconds(w.from_us)), b = std::max(a + 1, x(seconds(w.to_us)));
    for (double y0 : {y1, y2}) {
      out += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"#36c\" "
          "fill-opacity=\"0.08\"/><line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" "
          "stroke=\"{}\" stroke-dasharray=\"4 3\"/>\n",
          a, y0, b - a, panel, a, a, y0, y0 + panel, w.restart.success ? "#36c" : "#c00");
    }
  }
  for (std::size_t i = 0; i < s.timeline.size(); ++i) {  // failures as red bars
    const auto& b = s.timeline[i];
    if (!b.failed) continue;
    const double h = std::max(2.0, panel * b.failed / fail_max);
    out += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#d22\"/>\n",
        x(static_cast<double>(i) * bin_s), y1 + panel - h,
        std::max(1.0, plot_w / static_cast<double>(n)), h);
  }
  // `value` gives a bin's point, or nullopt for none (the line skips that bin).
  const auto polyline = [&](double y0, double ymax, const char* color, auto value) {
    std::string p =
        fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"", color);
    for (std::size_t i = 0; i < s.timeline.size(); ++i)
      if (const std::optional<double> v = value(i))
        p += fmt::format("{:.1f},{:.1f} ", x((static_cast<double>(i) + 0.5) * bin_s),
                         y0 + panel - panel * std::min(1.0, *v / ymax));
    return p + "\"/>\n";
  };
  out +=
      polyline(y1, rate_max, "#222", [&](std::size_t i) { return bin_rate(s, r.run.load_us, i); });
  out += polyline(y2, lat_max, "#e80", [&](std::size_t i) {
    return std::optional<double>(ms(s.timeline[i].latency_max_us));
  });
  out += polyline(y2, lat_max, "#080", [&](std::size_t i) {
    const auto& b = s.timeline[i];
    return std::optional<double>(b.requests ? ms(b.latency_sum_us) / b.requests : 0.0);
  });
  out += fmt::format(
      "<text x=\"{}\" y=\"{}\">black: requests/s (a last bin the run ends inside: scaled to its "
      "length); red: failed requests per 100 ms</text>\n"
      "<text x=\"{}\" y=\"{}\">(right axis); dashed: restart starts (red: command failed); "
      "shaded: restart windows; orange: max latency, green: mean</text>\n",
      left, height - 26, left, height - 10);
  out += "</svg>\n";
  return out;
}

}  // namespace handoff::check
