// The NOTIFY_SOCKET the supervisor gives its app (--notify-socket).
//
// path (the default): a datagram socket file beside the control socket (NAME.sock ->
// NAME.notify), mode 0600, as systemd hands out /run/systemd/notify: every sd_notify library
// can connect to a path, and some (Ruby's sd_notify gem) cannot connect to anything else.
// abstract: "@..." chosen by the kernel, nothing in the file system.
//
// The file is removed when the supervisor exits (the receiver's destructor; across `handoff
// reexec` the next image adopts it, same fd, same path). A file left there by a supervisor of
// the same name killed outright is replaced: only a socket file on which no one receives.
#pragma once

#include <string>

#include "handoff/notify_receiver.hpp"
#include "supervisor/options.hpp"

namespace handoff::supervisor {

// Where the path socket goes for this control socket ("" when there is no control socket).
std::string notify_socket_path(const std::string& control_path);

struct opened_notify_socket {
  notify_receiver receiver;
  std::string note;  // why it is not what was asked for (a path too long: abstract), or ""
};

result<opened_notify_socket> open_notify_socket(notify_socket_kind kind,
                                                const std::string& control_path);

}  // namespace handoff::supervisor
