// The field-level rules of the front's framing (field_rules.hpp).
#include "proxy/field_rules.hpp"

#include <array>
#include <boost/beast/core/string.hpp>
#include <charconv>
#include <random>

namespace handoff::proxy::field_rules {

namespace beast = boost::beast;
using bhttp::field;

void append_number(std::string& out, std::uint64_t n, int base) {
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

}  // namespace handoff::proxy::field_rules
