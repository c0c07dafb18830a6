// A user's program built against an installed handoff (find_package or pkg-config): it opens
// a listener through the library and prints its address, proving headers and library link.
#include <cstdio>

#include "handoff/activation.hpp"
#include "handoff/notify.hpp"

int main() {
  auto sockets = handoff::socket_set::from_environment();
  if (!sockets) return 1;
  auto fd = sockets->listen("http=127.0.0.1:0");
  if (!fd) {
    std::fprintf(stderr, "%s\n", fd.error().message().c_str());
    return 1;
  }
  auto sent = handoff::notifier().ready();
  if (!sent || *sent != handoff::notify_outcome::no_manager) return 1;
  std::printf("consumer: listening on %s\n", handoff::local_address(*fd)->to_string().c_str());
  return 0;
}
