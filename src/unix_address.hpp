// Internal: unix socket addresses, "/path" or "@abstract", as sockaddr_un (unix(7)).
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <string>
#include <string_view>

#include "handoff/error.hpp"

namespace handoff::sys {

struct unix_sockaddr {
  sockaddr_un addr{};
  socklen_t length = 0;  // what bind/connect/sendmsg take: abstract names are not NUL-ended
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&addr); }
};

// "@name" is the abstract namespace (a leading NUL byte), anything else a path. Empty, too
// long for sun_path, or containing a NUL byte: errc::invalid_address naming `what`.
result<unix_sockaddr> make_unix_sockaddr(std::string_view where, std::string_view what);

// The reverse: "/path", "@name" (NUL bytes in abstract names shown as '@'), or "" if unbound.
std::string unix_sockaddr_text(const sockaddr_un& addr, socklen_t length);

}  // namespace handoff::sys
