#include "unix_address.hpp"

#include <cstring>

namespace handoff::sys {

result<unix_sockaddr> make_unix_sockaddr(std::string_view where, std::string_view what) {
  unix_sockaddr out;
  out.addr.sun_family = AF_UNIX;
  const std::string quoted = std::string(what) + " \"" + std::string(where) + "\"";
  if (where.empty() || where == "@")
    return error::make(errc::invalid_address, quoted + ": empty unix socket name");
  if (where.find('\0') != std::string_view::npos)
    return error::make(errc::invalid_address, quoted + ": contains a NUL byte");
  const bool abstract = where.front() == '@';
  // A path needs its terminating NUL inside sun_path; an abstract name uses every byte.
  const std::size_t limit = sizeof(out.addr.sun_path) - (abstract ? 0 : 1);
  if (where.size() > limit)
    return error::make(errc::invalid_address, quoted + ": longer than the " +
                                                  std::to_string(limit) +
                                                  " bytes a unix socket name can hold");
  std::memcpy(out.addr.sun_path, where.data(), where.size());
  if (abstract) out.addr.sun_path[0] = '\0';
  out.length =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where.size() + (abstract ? 0 : 1));
  return out;
}

std::string unix_sockaddr_text(const sockaddr_un& addr, socklen_t length) {
  const std::size_t base = offsetof(sockaddr_un, sun_path);
  if (length <= base) return {};
  std::size_t n = length - base;
  if (n > sizeof(addr.sun_path)) n = sizeof(addr.sun_path);
  std::string text(addr.sun_path, n);
  if (text.front() == '\0') {
    for (char& c : text)
      if (c == '\0') c = '@';
    return text;
  }
  return text.substr(0, text.find('\0'));
}

}  // namespace handoff::sys
