// Fuzz target: parse_notify_message on arbitrary bytes of arbitrary size. It must never crash,
// and whatever it accepts must be what a manager can rely on: every key non-empty [A-Z0-9_],
// no NUL and no newline in keys or values, and the fields in the order of their lines.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "handoff/notify_receiver.hpp"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool valid_key(std::string_view key) {
  if (key.empty()) return false;
  for (char c : key)
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto fields = handoff::parse_notify_message(input);
  if (!fields) {
    check(fields.error() == handoff::errc::invalid_message);
    check(!fields.error().message().empty());
    // The error quotes at most a bounded part of the input.
    check(fields.error().message().size() < 400);
    return 0;
  }
  check(input.find('\0') == std::string_view::npos);
  // Re-joining the fields gives back the non-empty lines of the input, in order.
  std::string joined, lines;
  for (const auto& [key, value] : *fields) {
    check(valid_key(key));
    check(value.find('\0') == std::string::npos);
    check(value.find('\n') == std::string::npos);
    joined += key + "=" + value + "\n";
  }
  std::size_t pos = 0;
  while (pos < input.size()) {
    auto end = input.find('\n', pos);
    if (end == std::string_view::npos) end = input.size();
    if (end > pos) lines += std::string(input.substr(pos, end - pos)) + "\n";
    pos = end + 1;
  }
  check(joined == lines);
  // The parse is stable: the canonical form parses to the same fields.
  auto again = handoff::parse_notify_message(joined);
  check(again && *again == *fields);
  return 0;
}
