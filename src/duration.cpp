#include "handoff/duration.hpp"

#include <algorithm>
#include <string>

#include "handoff/decimal.hpp"

namespace handoff {

result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  auto fail = [&](const char* why) {
    return error(std::make_error_code(std::errc::invalid_argument),
                 "duration \"" + std::string(text) + "\": " + why +
                     " (expected a whole number with ms, s, m or h, as in 500ms, 30s, 2m)");
  };
  const std::size_t digits = std::min(text.find_first_not_of("0123456789"), text.size());
  if (digits == 0) return fail("no number");
  const auto number =
      parse_decimal<unsigned long long>(text.substr(0, digits), 0, 10'000'000'000ULL);
  if (!number) return fail("too large");
  const unsigned long long value = *number;
  const std::string_view unit = text.substr(digits);
  unsigned long long ms = 0;
  if (unit == "ms")
    ms = value;
  else if (unit == "s")
    ms = value * 1000;
  else if (unit == "m")
    ms = value * 60'000;
  else if (unit == "h")
    ms = value * 3'600'000;
  else if (unit.empty() && value == 0)
    ms = 0;
  else
    return fail(unit.empty() ? "missing unit" : "unknown unit");
  if (ms > 30ULL * 24 * 3'600'000) return fail("longer than 30 days");
  return std::chrono::milliseconds(ms);
}

}  // namespace handoff
