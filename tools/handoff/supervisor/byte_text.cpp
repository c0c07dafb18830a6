// UTF-8 by RFC 3629's table of well-formed byte sequences (Unicode's Table 3-7).
#include "supervisor/byte_text.hpp"

#include <fmt/core.h>

namespace handoff::supervisor {

namespace {

// The length of the well-formed sequence that starts at `at` (> 0), or minus the length of
// its maximal ill-formed prefix (at least one byte), which a decoder replaces by one U+FFFD.
int sequence_at(std::string_view s, std::size_t at) noexcept {
  const auto c = static_cast<unsigned char>(s[at]);
  if (c < 0x80) return 1;
  int more = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the byte after the first
  if (c >= 0xc2 && c <= 0xdf) {
    more = 1;
  } else if (c >= 0xe0 && c <= 0xef) {
    more = 2;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    more = 3;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i <= more; ++i) {
    if (at + static_cast<std::size_t>(i) >= s.size()) return -i;
    const auto d = static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
    if (d < lo || d > hi) return -i;
    lo = 0x80;
    hi = 0xbf;
  }
  return more + 1;
}

void hex_byte(std::string& out, char c) {
  out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
}

}  // namespace

bool valid_utf8(std::string_view bytes) noexcept {
  for (std::size_t at = 0; at < bytes.size();) {
    const int n = sequence_at(bytes, at);
    if (n < 0) return false;
    at += static_cast<std::size_t>(n);
  }
  return true;
}

std::string utf8_or_replacement(std::string_view bytes) {
  if (valid_utf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 8);
  for (std::size_t at = 0; at < bytes.size();) {
    const int n = sequence_at(bytes, at);
    if (n > 0) {
      out.append(bytes.substr(at, static_cast<std::size_t>(n)));
      at += static_cast<std::size_t>(n);
    } else {
      out += "\xef\xbf\xbd";
      at += static_cast<std::size_t>(-n);
    }
  }
  return out;
}

std::string escaped_text(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t at = 0; at < bytes.size();) {
    int n = sequence_at(bytes, at);
    const auto c = static_cast<unsigned char>(bytes[at]);
    if (n == 1 && c == '\\') {
      out += "\\\\";
    } else if (n == 1 && (c < 0x20 || c == 0x7f)) {
      hex_byte(out, bytes[at]);
    } else if (n == 2 && c == 0xc2 && static_cast<unsigned char>(bytes[at + 1]) < 0xa0) {
      hex_byte(out, bytes[at]);  // C1 controls, U+0080..U+009F
      hex_byte(out, bytes[at + 1]);
    } else if (n > 0) {
      out.append(bytes.substr(at, static_cast<std::size_t>(n)));
    } else {
      for (int i = 0; i < -n; ++i) hex_byte(out, bytes[at + static_cast<std::size_t>(i)]);
      n = -n;
    }
    at += static_cast<std::size_t>(n);
  }
  return out;
}

std::string hex_of(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

std::optional<std::string> bytes_of_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi << 4 | lo);
  }
  return out;
}

}  // namespace handoff::supervisor
