// Decimal numbers from untrusted text (environment variables, notify messages, command lines):
// the one parser every part of handoff uses, so "LISTEN_FDS= 3", "+3", "3x" and a value past
// the type's range are refused the same way everywhere.
#pragma once

#include <charconv>
#include <concepts>
#include <limits>
#include <optional>
#include <string_view>

namespace handoff {

// Digits only (no sign, no space, no "0x"), at least one, within [min, max]; nullopt otherwise.
// A value too large for T is nullopt, never a wrap-around.
template <std::integral T>
constexpr std::optional<T> parse_decimal(std::string_view text,
                                         T min = std::numeric_limits<T>::min(),
                                         T max = std::numeric_limits<T>::max()) noexcept {
  if (text.empty() || text.size() > 40) return std::nullopt;
  for (const char c : text)
    if (c < '0' || c > '9') return std::nullopt;
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  if (value < min || value > max) return std::nullopt;
  return value;
}

}  // namespace handoff
