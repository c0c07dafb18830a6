// Internal: the Date header field of handoff::http's responses (RFC 9110 6.6.1: an origin server
// with a clock sends one in every response).
//
// The value is an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT", always 29 bytes) of the
// current second in UTC. Each thread keeps its own copy and formats it again only when the
// second changes, so a response pays one clock_gettime (vDSO, no system call) and no
// allocation or formatting.
#pragma once

#include <ctime>
#include <string_view>

namespace handoff::http {

inline constexpr std::size_t imf_fixdate_size = 29;

// Writes `t` (seconds since the epoch) as an IMF-fixdate into `out`, without a terminator.
void format_imf_fixdate(std::time_t t, char* out) noexcept;

// The current second as an IMF-fixdate; valid until this thread calls it again.
std::string_view http_date_now() noexcept;

}  // namespace handoff::http
