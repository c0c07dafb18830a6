// Fuzz target: decode_state, the reader of the state `handoff reexec` hands across the exec
// (tools/handoff/supervisor/state.hpp), on arbitrary bytes. It must never crash nor throw;
// whatever it accepts must encode again into a state it accepts, the same, and that is valid
// UTF-8 (a strict JSON parser on the other side of the exec takes it); and every fd it names
// is named once.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "supervisor/byte_text.hpp"
#include "supervisor/state.hpp"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace handoff::supervisor;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto decoded = decode_state(input);
  if (!decoded) {
    check(!decoded.error().message().empty());
    return 0;
  }
  check(decoded->version >= state_version_min && decoded->version <= state_version);
  auto fds = state_fds_of(*decoded);
  std::sort(fds.begin(), fds.end());
  check(std::adjacent_find(fds.begin(), fds.end()) == fds.end());
  for (const int fd : fds) check(fd >= 0);
  const auto encoded = encode_state(*decoded);
  check(valid_utf8(encoded.text));
  auto again = decode_state(encoded.text);
  check(static_cast<bool>(again));
  again->version = decoded->version;
  check(*again == *decoded);
  check(encode_state(*again).text == encoded.text);
  return 0;
}
