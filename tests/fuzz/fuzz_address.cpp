// Fuzz target for parse_address: any input either fails with errc::invalid_address or parses
// into an address whose canonical text parses back to the same address.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "handoff/address.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = handoff::parse_address(text);
  if (!parsed) {
    if (!(parsed.error() == handoff::errc::invalid_address)) std::abort();
    return 0;
  }
  auto again = handoff::parse_address(parsed->to_string());
  if (!again || !(*again == *parsed)) std::abort();
  return 0;
}
