// Fuzz target for the relay's parsers, both directions (tools/handoff/proxy/http_framing.hpp).
// The first input byte chooses the direction and the request's kind (HEAD, CONNECT, Upgrade,
// HTTP/1.0 client), the second how the rest is cut into reads. Invariants: no crash or
// sanitizer report on any input, and re-framing is idempotent: a message the framer completed,
// parsed again by a fresh framer in one piece, is accepted and re-framed to the same bytes (so
// what the relay sends is unambiguous to a parser like its own).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_framing.hpp"

namespace {

using namespace handoff::proxy;
namespace bhttp = boost::beast::http;

// Feeds `input` in pieces of `step` bytes as the relay does (unconsumed bytes stay at the
// front of the buffer). Returns whether the message completed; `out` gets the re-framing.
template <class Framer, class Options>
bool frame(const Options& options, std::string_view input, std::size_t step, bool eof_ends,
           std::string& out) {
  std::vector<field_ref> fields;
  Framer framer(options, out, fields);
  std::string buffer;
  std::size_t offered = 0;
  boost::system::error_code ec;
  for (;;) {
    const auto more = std::min(step, input.size() - offered);
    buffer.append(input.substr(offered, more));
    offered += more;
    const std::size_t used = framer.feed(buffer, ec);
    buffer.erase(0, used);
    if (framer.is_done()) return !ec;
    if (ec && ec != bhttp::error::need_more) return false;
    if (offered == input.size()) {
      if (!eof_ends || !framer.is_header_done()) return false;
      framer.put_eof(ec);
      return !ec && framer.is_done();
    }
  }
}

// Shows both framings before aborting, so a crash file explains itself.
[[noreturn]] void mismatch(std::string_view first, std::string_view second) {
  std::fprintf(stderr, "re-framing differs:\n--- first\n%.*s\n--- again\n%.*s\n",
               static_cast<int>(first.size()), first.data(), static_cast<int>(second.size()),
               second.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::uint8_t mode = data[0];
  const std::size_t step = 1 + data[1] % 64;
  const std::string_view input(reinterpret_cast<const char*>(data + 2), size - 2);
  std::string out;
  std::string again;
  if ((mode & 1) == 0) {
    request_framing options;
    options.header_limit = 4096;
    options.forwarded = false;  // with them on, each pass would add its own entry
    if (mode & 2) options.body_limit = 100;
    if (!frame<request_framer>(options, input, step, false, out)) return 0;
    if (!frame<request_framer>(options, out, out.size() + 1, false, again) || again != out)
      mismatch(out, again);
  } else {
    response_framing options;
    options.header_limit = 4096;
    options.head = (mode & 2) != 0;
    options.connect = (mode & 4) != 0;
    options.upgrade = (mode & 8) != 0;
    options.client_version = (mode & 16) != 0 ? 10 : 11;
    if (!frame<response_framer>(options, input, step, true, out)) return 0;
    if (out.empty()) return 0;  // a 1xx, which an HTTP/1.0 client is not sent
    // A close-delimited body to an HTTP/1.0 client is delimited by our close again.
    const bool to_eof = options.client_version == 10;
    if (!frame<response_framer>(options, out, out.size() + 1, to_eof, again) || again != out)
      mismatch(out, again);
  }
  return 0;
}
