#include "proxy/http_framing.hpp"

#include <algorithm>
#include <array>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <charconv>
#include <random>

#include "proxy/field_rules.hpp"

namespace handoff::proxy {

namespace beast = boost::beast;
using bhttp::field;
using namespace field_rules;  // the vocabulary of every framer below

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
