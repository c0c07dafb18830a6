// Internal: untrusted text (a peer's datagram, an environment variable) made safe to put in an
// error message: quoted, control and non-ASCII bytes escaped, long text cut.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace handoff::sys {

// "READY=1", "A\nB" as "A\\nB", a NUL as "\\0", other bytes outside printable ASCII as "\\xHH";
// more than `max` input bytes are cut and followed by "..." (after the closing quote).
inline std::string quote(std::string_view text, std::size_t max = 64) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "\"";
  const std::size_t n = text.size() < max ? text.size() : max;
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\0':
        out += "\\0";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (c >= 0x20 && c < 0x7f) {
          out += static_cast<char>(c);
        } else {
          out += "\\x";
          out += hex[c >> 4];
          out += hex[c & 0xf];
        }
    }
  }
  out += '"';
  if (n < text.size()) out += "...";
  return out;
}

}  // namespace handoff::sys
