#include "proxy/http_framing.hpp"

#include <algorithm>
#include <array>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <charconv>
#include <random>

namespace handoff::proxy {

namespace beast = boost::beast;
using bhttp::field;

namespace {

void append_number(std::string& out, std::uint64_t n, int base = 10) {
  std::array<char, 24> text{};
  auto result = std::to_chars(text.data(), text.data() + text.size(), n, base);
  out.append(text.data(), result.ptr);
}

void append_field(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
}

// One chunk per piece of body received: the chunk sizes the sender chose do not matter, and
// this needs no state across calls.
void append_chunk(std::string& out, std::string_view data) {
  if (data.empty()) return;  // an empty chunk would end the body
  append_number(out, data.size(), 16);
  out.append("\r\n");
  out.append(data);
  out.append("\r\n");
}

bool starts_with_nocase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && beast::iequals(text.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Calls f(token) for each element of a comma-separated list (RFC 9110 5.6.1), empty ones
// skipped; stops early when f returns true, and returns whether it did.
template <class F>
bool any_token(std::string_view list, F f) {
  while (!list.empty()) {
    const auto comma = list.find(',');
    const auto token = trim(list.substr(0, comma));
    if (!token.empty() && f(token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// Hop-by-hop fields (RFC 9110 7.6.1) and the framing fields the relay writes itself.
bool hop_by_hop(field name, std::string_view text) {
  switch (name) {
    case field::connection:
    case field::keep_alive:
    case field::te:
    case field::trailer:
    case field::upgrade:
    case field::transfer_encoding:
    case field::content_length:
      return true;
    default:
      return starts_with_nocase(text, "proxy-");
  }
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// FNV-1a of a field name, case folded, with a per-process seed so that a client cannot choose
// names that collide.
std::uint32_t name_hash(std::string_view name) {
  static const std::uint32_t seed = std::random_device{}();
  std::uint32_t h = 2166136261u ^ seed;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(lower(c));
    h *= 16777619u;
  }
  return h;
}

// Marks the fields whose names a Connection field lists (RFC 9110 7.6.1: hop-by-hop, not passed
// on). The distinct field names go in a hash table (repeats chained behind the first), then
// each Connection token is looked up once: time linear in the header, where checking every
// field against every token cost fields x tokens (a 14 KB header of both cost 600 times a
// plain one). Nothing is allocated: the fields are at most max_fields.
void mark_connection_named(const std::vector<field_ref>& fields, named_fields& named) {
  named.reset();
  const bool any = std::any_of(fields.begin(), fields.end(),
                               [](const field_ref& f) { return f.name == field::connection; });
  if (!any) return;  // the plain path: no table
  constexpr std::uint16_t empty = 0xffff;
  constexpr std::size_t slots = 2048;  // a power of two, over twice max_fields
  static_assert(slots >= 2 * max_fields && max_fields < empty);
  std::array<std::uint16_t, slots> table;
  table.fill(empty);
  std::array<std::uint16_t, max_fields> next_same;  // the chain of a name's repeats
  const auto count = std::min(fields.size(), max_fields);
  for (std::size_t i = 0; i < count; ++i) {
    next_same[i] = empty;
    auto slot = name_hash(fields[i].name_text) & (slots - 1);
    while (table[slot] != empty &&
           !beast::iequals(fields[table[slot]].name_text, fields[i].name_text))
      slot = (slot + 1) & (slots - 1);
    if (table[slot] == empty) {
      table[slot] = static_cast<std::uint16_t>(i);
    } else {
      next_same[i] = next_same[table[slot]];
      next_same[table[slot]] = static_cast<std::uint16_t>(i);
    }
  }
  for (std::size_t i = 0; i < count; ++i) {
    if (fields[i].name != field::connection) continue;
    any_token(fields[i].value, [&](std::string_view token) {
      auto slot = name_hash(token) & (slots - 1);
      while (table[slot] != empty && !beast::iequals(fields[table[slot]].name_text, token))
        slot = (slot + 1) & (slots - 1);
      // A name listed again is marked already: its chain is walked once.
      if (table[slot] == empty || named[table[slot]]) return false;
      for (auto f = table[slot]; f != empty; f = next_same[f]) named.set(f);
      return false;
    });
  }
}

// Fields a trailer section may not carry on (RFC 9110 6.5.1): framing, routing, hop-by-hop.
bool forbidden_in_trailer(field name, std::string_view text) {
  return hop_by_hop(name, text) || name == field::host || name == field::expect;
}

// RFC 9110 5.6.2: what a coding name may be (parameters included, a coding is no more than a
// token in practice; one that is not cannot be passed on as it was parsed).
bool is_token(std::string_view t) {
  return !t.empty() && std::all_of(t.begin(), t.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z')) return true;
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

// Counts the codings of a Transfer-Encoding line, the chunked ones, and whether the last
// one so far is chunked.
void count_codings(std::string_view value, coding_count& c) {
  bool any = false;
  any_token(value, [&](std::string_view t) {
    any = true;
    ++c.count;
    if (!is_token(t)) c.invalid = true;
    c.last_chunked = beast::iequals(t, "chunked");
    if (c.last_chunked) ++c.chunked;
    return false;
  });
  if (!any) {  // an empty Transfer-Encoding is no coding we know
    ++c.count;
    c.invalid = true;
    c.last_chunked = false;
  }
}

// "Transfer-Encoding: " and the codings the upstream applied before its final chunked, as it
// listed them (gzip, chunked): the relay re-frames the chunks and keeps the other codings,
// which the client undoes (RFC 9112 6.1).
void append_codings(std::string& out, const std::vector<field_ref>& fields, int count) {
  out.append("Transfer-Encoding: ");
  int seen = 0;
  for (const auto& f : fields) {
    if (f.name != field::transfer_encoding) continue;
    any_token(f.value, [&](std::string_view t) {
      if (++seen < count) out.append(t).append(", ");
      return false;
    });
  }
  out.append("chunked\r\n");
}

// The same name, ignoring case and taking '_' for '-': CGI and WSGI turn both spellings into
// the same HTTP_X_FORWARDED_FOR, so a client's X_Forwarded_For could stand for ours.
bool same_field_name(std::string_view name, std::string_view dashed) {
  if (name.size() != dashed.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i] == '_' ? '-' : lower(name[i]);
    if (c != dashed[i]) return false;
  }
  return true;
}

// With forwarded headers on: the fields the front sets or removes, which the client must not
// choose. Forwarded and X-Forwarded-For are merged (the client's entries first, ours last);
// X-Forwarded-Proto is replaced; X-Forwarded-Host, X-Real-IP and True-Client-IP, which apps
// that trust a proxy read instead of Host or the peer's address, are removed; and the
// '_'-spelled variants of all of these are removed.
bool set_by_front(std::string_view name) {
  if (name.empty()) return false;
  const char first = lower(name.front());
  if (first != 'x' && first != 'f' && first != 't') return false;  // most fields stop here
  return same_field_name(name, "forwarded") || same_field_name(name, "x-forwarded-for") ||
         same_field_name(name, "x-forwarded-proto") || same_field_name(name, "x-forwarded-host") ||
         same_field_name(name, "x-real-ip") || same_field_name(name, "true-client-ip");
}

bool valid_host(std::string_view host) {
  return std::all_of(host.begin(), host.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z')) return true;
    return std::string_view("-._~%!$&'()*+,;=:[]").find(c) != std::string_view::npos;
  });
}

bool valid_target(bhttp::verb method, std::string_view target) {
  if (method == bhttp::verb::connect) {
    // authority-form only: host:port (RFC 9112 3.2.3)
    return target.find(':') != std::string_view::npos && valid_host(target);
  }
  if (target == "*") return method == bhttp::verb::options;
  if (!target.empty() && target.front() == '/') return true;
  return starts_with_nocase(target, "http://") || starts_with_nocase(target, "https://");
}

// Obsolete line folding (RFC 9112 5.2): a line of the header that begins with SP or HTAB.
// Beast unfolds such lines; a front refuses them instead, as another parser may not unfold.
bool has_obs_fold(std::string_view message) {
  const auto end = message.find("\r\n\r\n");
  const auto header = message.substr(0, end == std::string_view::npos ? message.size() : end);
  for (std::size_t i = header.find('\n'); i != std::string_view::npos && i + 1 < header.size();
       i = header.find('\n', i + 1)) {
    if (header[i + 1] == ' ' || header[i + 1] == '\t') return true;
  }
  return false;
}

void append_forwarded_for(std::string& out, std::string_view address) {
  if (address.empty()) {
    out.append("for=unknown");
  } else if (address.find(':') != std::string_view::npos) {
    out.append("for=\"[").append(address).append("]\"");
  } else {
    out.append("for=").append(address);
  }
}

}  // namespace

bool header_ready(std::string_view input, std::size_t& scanned) {
  for (std::size_t i = scanned; i < input.size(); ++i) {
    if (input[i] != '\n') continue;
    if (i == 0 || input[i - 1] != '\r') return true;  // a bare LF: Beast refuses it
    if (i >= 3 && input.substr(i - 3, 4) == "\r\n\r\n") return true;
  }
  scanned = input.size();
  return false;
}

namespace {

// Feeds a framer the header whole, or not at all.
template <class Framer>
std::size_t feed_whole_header(Framer& framer, std::uint32_t limit, std::string_view input,
                              std::size_t& scanned, error_code& ec) {
  if (!framer.is_header_done() && !header_ready(input, scanned)) {
    ec = input.size() >= limit ? error_code(bhttp::error::header_limit)
                               : error_code(bhttp::error::need_more);
    return 0;
  }
  const auto used = framer.put(boost::asio::const_buffer(input.data(), input.size()), ec);
  // A header that still is not done was cut short by an error (or misjudged as whole): its
  // views would not survive the next call, so it goes no further.
  if (!framer.is_header_done() && used > 0 && (!ec || ec == bhttp::error::need_more))
    ec = bhttp::error::bad_value;
  return used;
}

}  // namespace

refusal request_error(const error_code& ec) {
  if (ec == bhttp::error::header_limit) return refusal::header_too_large;
  if (ec == bhttp::error::body_limit) return refusal::body_too_large;
  return refusal::bad_request;
}

// ---- requests ----------------------------------------------------------------------------

request_framer::request_framer(const request_framing& options, std::string& out,
                               std::vector<field_ref>& scratch)
    : options_(options), out_(out), fields_(scratch) {
  fields_.clear();
  header_limit(options.header_limit);
  body_limit(options.body_limit ? boost::optional<std::uint64_t>(*options.body_limit)
                                : boost::none);
  eager(true);
}

std::size_t request_framer::feed(std::string_view input, error_code& ec) {
  std::size_t skipped = 0;
  if (!got_some() && scanned_ == 0) {
    // RFC 9112 2.2: empty lines before the request line (a stray CRLF after a body) are
    // ignored, a few of them; Beast takes none.
    while (input.size() - skipped >= 2 && input[skipped] == '\r' && input[skipped + 1] == '\n') {
      if (++empty_lines_ > max_empty_lines) {
        ec = bhttp::error::bad_method;
        return skipped;
      }
      skipped += 2;
    }
    input.remove_prefix(skipped);
    if (input.empty() || input == "\r") {
      ec = bhttp::error::need_more;
      return skipped;
    }
  }
  if (!request_line_seen_) {
    // A request line without a version (HTTP/0.9's "GET /") is refused once it is whole, not
    // when a header that never comes times out.
    const auto end = input.find('\n', line_scanned_);
    if (end == std::string_view::npos) {
      line_scanned_ = input.size();
    } else {
      request_line_seen_ = true;
      auto line = input.substr(0, end);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const auto space = line.rfind(' ');
      if (space == std::string_view::npos || line.substr(space + 1, 5) != "HTTP/") {
        ec = bhttp::error::bad_version;
        return skipped;
      }
    }
  }
  input_ = input;
  return skipped + feed_whole_header(*this, options_.header_limit, input, scanned_, ec);
}

void request_framer::on_request_impl(bhttp::verb method, beast_view method_text, beast_view target,
                                     int version, error_code& ec) {
  if (version / 10 != 1) {
    ec = bhttp::error::bad_version;
    return;
  }
  if (!valid_target(method, target)) {
    ec = bhttp::error::bad_target;
    return;
  }
  method_ = method;
  method_text_ = method_text;
  target_ = target;
  version_ = version;
}

void request_framer::on_field_impl(field name, beast_view name_text, beast_view value,
                                   error_code& ec) {
  if (header_done_) {  // a trailer field
    if (!forbidden_in_trailer(name, name_text)) append_field(out_, name_text, value);
    return;
  }
  switch (name) {
    case field::host:
      if (++hosts_ > 1 || !valid_host(value)) ec = bhttp::error::bad_value;
      break;
    case field::transfer_encoding:
      count_codings(value, codings_);
      break;
    case field::content_length:
      content_length_ = true;
      break;
    case field::expect:
      expect_continue_ = beast::iequals(trim(value), "100-continue");
      break;
    default:
      break;
  }
  if (fields_.size() >= max_fields) {  // bounds the header's scan
    ec = bhttp::error::header_limit;
    return;
  }
  fields_.push_back({name, name_text, value});
}

void request_framer::on_header_impl(error_code& ec) {
  header_done_ = true;
  // RFC 9112 6.1 and 6.3: only "chunked", last and once, frames a request; with
  // Content-Length, or under HTTP/1.0, the framing is ambiguous. Beast alone lets
  // "Transfer-Encoding: gzip" (not chunked) through, and so a Content-Length that follows it.
  if (codings_.count > 0 &&
      (content_length_ || codings_.count != 1 || codings_.chunked != 1 || version_ < 11)) {
    ec = bhttp::error::bad_transfer_encoding;
    return;
  }
  if ((version_ >= 11 && hosts_ != 1) || has_obs_fold(input_)) {
    ec = bhttp::error::bad_value;
    return;
  }
  // RFC 9112 3.2.2: an absolute-form target's authority replaces Host. The app gets that
  // authority as Host and the origin form (path and query) as target, the form every app
  // parses, so that it cannot route by one host and build links from another.
  std::string_view target = target_;
  std::string_view authority;
  if (method_ != bhttp::verb::connect &&
      (starts_with_nocase(target, "http://") || starts_with_nocase(target, "https://"))) {
    target.remove_prefix(target.find("//") + 2);
    const auto path = target.find_first_of("/?#");
    authority = target.substr(0, path);
    target = path == std::string_view::npos ? std::string_view() : target.substr(path);
    target = target.substr(0, target.find('#'));
    // userinfo (RFC 9110 4.2.4: not to be sent) would be a second idea of who the host is
    if (authority.empty() || !valid_host(authority)) {
      ec = bhttp::error::bad_target;
      return;
    }
  }
  const bool upgrade_on = upgrade();  // Connection: upgrade + Upgrade, HTTP/1.1
  mark_connection_named(fields_, named_);
  out_.append(method_text_).append(" ");
  if (!authority.empty() && (target.empty() || target.front() == '?')) {
    // RFC 9112 3.2.4: an empty path is "/", or "*" for OPTIONS without a query
    out_.append(method_ == bhttp::verb::options && target.empty() ? "*" : "/");
  }
  out_.append(target).append(" HTTP/1.1\r\n");
  for (std::size_t i = 0; i < fields_.size(); ++i) {
    const auto& f = fields_[i];
    if (f.name == field::upgrade && upgrade_on && upgrade_ < 0) {
      upgrade_ = static_cast<std::ptrdiff_t>(i);
      continue;
    }
    if (f.name != field::host && (hop_by_hop(f.name, f.name_text) || named_[i])) continue;
    if (options_.forwarded && set_by_front(f.name_text)) continue;  // merged below, or removed
    append_field(out_, f.name_text,
                 f.name == field::host && !authority.empty() ? authority : f.value);
  }
  // We speak HTTP/1.1 upstream, where Host is required: an HTTP/1.0 request without one gets
  // the empty value RFC 9112 3.2 prescribes for a target without an authority.
  if (hosts_ == 0) append_field(out_, "Host", authority);
  if (upgrade_ >= 0) {
    append_field(out_, "Upgrade", fields_[static_cast<std::size_t>(upgrade_)].value);
    out_.append("Connection: upgrade\r\n");
  }
  if (chunked()) {
    out_.append("Transfer-Encoding: chunked\r\n");
  } else if (content_length_) {
    out_.append("Content-Length: ");
    append_number(out_, content_length().value_or(0));
    out_.append("\r\n");
  }
  if (options_.forwarded) {
    // Earlier proxies' entries first, in order, then ours (RFC 7239 section 4); a field with
    // nothing in it is left out.
    const auto merged = [&](std::string_view header, auto ours, bool have_ours) {
      const auto start = out_.size();
      out_.append(header).append(": ");
      const auto values = out_.size();
      for (std::size_t i = 0; i < fields_.size(); ++i) {
        const auto& f = fields_[i];
        if (!beast::iequals(f.name_text, header) || named_[i]) continue;
        if (trim(f.value).empty()) continue;
        if (out_.size() != values) out_.append(", ");
        out_.append(trim(f.value));
      }
      if (have_ours) {
        if (out_.size() != values) out_.append(", ");
        ours();
      }
      if (out_.size() == values) {
        out_.resize(start);
      } else {
        out_.append("\r\n");
      }
    };
    merged(
        "Forwarded",
        [&] {
          append_forwarded_for(out_, options_.client_address);
          out_.append(";proto=").append(options_.scheme);
        },
        true);
    merged(
        "X-Forwarded-For", [&] { out_.append(options_.client_address); },
        !options_.client_address.empty());
    append_field(out_, "X-Forwarded-Proto", options_.scheme);
  }
  out_.append("\r\n");
}

std::size_t request_framer::on_body_impl(beast_view body, error_code&) {
  out_.append(body);
  return body.size();
}

void request_framer::on_chunk_header_impl(std::uint64_t size, beast_view, error_code&) {
  if (size == 0) out_.append("0\r\n");  // the trailer section follows, then on_finish
}

std::size_t request_framer::on_chunk_body_impl(std::uint64_t, beast_view body, error_code&) {
  append_chunk(out_, body);
  return body.size();
}

void request_framer::on_finish_impl(error_code&) {
  if (chunked()) out_.append("\r\n");
}

// ---- responses ---------------------------------------------------------------------------

response_framer::response_framer(const response_framing& options, std::string& out,
                                 std::vector<field_ref>& scratch)
    : options_(options), out_(out), fields_(scratch) {
  fields_.clear();
  header_limit(options.header_limit);
  body_limit(boost::none);
  eager(true);
  // Beast takes skip() only before the first byte, so a CONNECT's answer is read without a
  // body whatever its status: a refused CONNECT is relayed without its body, then both
  // connections close.
  if (options.head || options.connect) skip(true);
}

std::size_t response_framer::feed(std::string_view input, error_code& ec) {
  input_ = input;
  return feed_whole_header(*this, options_.header_limit, input, scanned_, ec);
}

void response_framer::on_response_impl(int code, beast_view reason, int version, error_code& ec) {
  if (version / 10 != 1 || code < 100 || code > 599) {
    ec = bhttp::error::bad_version;
    return;
  }
  status_ = code;
  reason_ = reason;
}

void response_framer::on_field_impl(field name, beast_view name_text, beast_view value,
                                    error_code& ec) {
  if (header_done_) {
    if (chunked_out_ && !forbidden_in_trailer(name, name_text))
      append_field(out_, name_text, value);
    return;
  }
  if (name == field::transfer_encoding) count_codings(value, codings_);
  if (fields_.size() >= max_fields) {
    ec = bhttp::error::header_limit;
    return;
  }
  fields_.push_back({name, name_text, value});
}

void response_framer::on_header_impl(error_code& ec) {
  header_done_ = true;
  // A folded line (RFC 9112 5.2) is a 502, as in a request it is a 400: Beast unfolds it into
  // storage of its own that the next folded line reuses, and a client's parser may not unfold.
  if (has_obs_fold(input_)) {
    ec = bhttp::error::bad_value;
    return;
  }
  // The body's end must be what we parsed: chunked not last or not once, or Content-Length
  // beside Transfer-Encoding, leaves it to interpretation, and the answer is a 502. Codings
  // before the final chunked (gzip, chunked) are relayed, but not to an HTTP/1.0 client, which
  // knows no Transfer-Encoding (RFC 9112 6.1).
  if (codings_.count > 0 &&
      (content_length() || codings_.chunked != 1 || !codings_.last_chunked || codings_.invalid ||
       (codings_.count > 1 && options_.client_version < 11 && !is_done()))) {
    ec = bhttp::error::bad_transfer_encoding;
    return;
  }
  if (status_ == 101 && !options_.upgrade) {  // switching to a protocol nobody asked for
    ec = bhttp::error::bad_value;
    return;
  }
  tunnel_ = (status_ == 101) || (options_.connect && status_ / 100 == 2);
  const bool interim_status = interim();
  if (interim_status && options_.client_version < 11) return;  // RFC 9110 15.2: not to 1.0
  out_.append("HTTP/1.1 ");
  append_number(out_, static_cast<std::uint64_t>(status_));
  out_.append(" ").append(reason_).append("\r\n");
  std::ptrdiff_t upgrade_field = -1;
  mark_connection_named(fields_, named_);
  for (std::size_t i = 0; i < fields_.size(); ++i) {
    const auto& f = fields_[i];
    if (f.name == field::upgrade && status_ == 101 && upgrade_field < 0)
      upgrade_field = static_cast<std::ptrdiff_t>(i);
    if (hop_by_hop(f.name, f.name_text) || named_[i]) continue;
    append_field(out_, f.name_text, f.value);
  }
  if (tunnel_) {
    if (status_ == 101) {
      if (upgrade_field < 0) {
        ec = bhttp::error::bad_value;  // a 101 must say what it switches to
        return;
      }
      append_field(out_, "Upgrade", fields_[static_cast<std::size_t>(upgrade_field)].value);
      out_.append("Connection: upgrade\r\n");
    }
    out_.append("\r\n");
    return;
  }
  if (interim_status) {
    out_.append("\r\n");
    return;
  }
  if (options_.connect) {
    client_keep_alive_ = false;
  } else if (is_done()) {
    // No body follows (HEAD, 204, 304): the length fields describe the representation.
    if (status_ != 204 && content_length()) {
      out_.append("Content-Length: ");
      append_number(out_, *content_length());
      out_.append("\r\n");
    } else if (status_ != 204 && chunked() && options_.client_version >= 11) {
      append_codings(out_, fields_, codings_.count);
    }
  } else if (content_length()) {
    out_.append("Content-Length: ");
    append_number(out_, *content_length());
    out_.append("\r\n");
  } else if (options_.client_version >= 11) {
    chunked_out_ = true;
    append_codings(out_, fields_, codings_.count);
  } else {
    client_keep_alive_ = false;  // an HTTP/1.0 client reads this body to the close
  }
  if (!client_keep_alive_) {
    out_.append("Connection: close\r\n");
  } else if (options_.client_version < 11) {
    out_.append("Connection: keep-alive\r\n");
  }
  out_.append("\r\n");
}

std::size_t response_framer::on_body_impl(beast_view body, error_code&) {
  if (chunked_out_) {
    append_chunk(out_, body);
  } else {
    out_.append(body);
  }
  return body.size();
}

void response_framer::on_chunk_header_impl(std::uint64_t size, beast_view, error_code&) {
  if (size == 0 && chunked_out_) out_.append("0\r\n");
}

std::size_t response_framer::on_chunk_body_impl(std::uint64_t, beast_view body, error_code& ec) {
  return on_body_impl(body, ec);
}

void response_framer::on_finish_impl(error_code&) {
  if (!chunked_out_) return;
  // After a chunked body the last chunk and trailers are written already; after a body that
  // ran to the upstream's close, the chunked framing to the client ends here.
  out_.append(chunked() ? "\r\n" : "0\r\n\r\n");
}

}  // namespace handoff::proxy
