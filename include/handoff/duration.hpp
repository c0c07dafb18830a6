// Durations as users write them on a command line: "500ms", "30s", "2m", "1h", "0".
#pragma once

#include <chrono>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff {

// A whole number followed by ms, s, m or h ("0" alone is allowed), at most 30 days. Anything
// else is std::errc::invalid_argument with a message that quotes the input.
result<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace handoff
