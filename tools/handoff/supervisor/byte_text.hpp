// Bytes from outside (an app's STATUS= and FDNAME=, socket paths, names from the command
// line) shown as text: such bytes need not be UTF-8, nor printable, but JSON must be UTF-8
// (RFC 8259 section 8.1) and a line of `handoff status` must stay one line a terminal shows
// as it is.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace handoff::supervisor {

// Whether `bytes` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF).
bool valid_utf8(std::string_view bytes) noexcept;
// `bytes` with each maximal ill-formed subsequence replaced by U+FFFD (as WHATWG's decoder
// and Python's errors="replace" do): always valid UTF-8, unchanged when it was.
std::string utf8_or_replacement(std::string_view bytes);
// For one line of text: valid UTF-8 printable characters as they are; a backslash as "\\";
// control characters (C0, DEL, C1) and bytes that are not UTF-8 as "\xNN", so that distinct
// byte strings stay distinct ("caf\xe9" is Latin-1 "café").
std::string escaped_text(std::string_view bytes);

// Two lowercase hex digits a byte, and back (nullopt unless that is exactly what `hex` is).
std::string hex_of(std::string_view bytes);
std::optional<std::string> bytes_of_hex(std::string_view hex);

}  // namespace handoff::supervisor
