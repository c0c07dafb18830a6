// Internal: the raw system-call helpers every source file shares.
#pragma once

#include <cerrno>

namespace handoff::sys {

// Calls `f` again while it fails with EINTR (every call but close(2), see fd.cpp).
template <class F>
auto retry_eintr(F&& f) {
  for (;;) {
    auto r = f();
    if (!(r == -1 && errno == EINTR)) return r;
  }
}

}  // namespace handoff::sys
