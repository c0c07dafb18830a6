// `handoff run`: the supervisor. It owns the listening sockets (they never close), starts each
// generation of the app with them (LISTEN_FDS) and a NOTIFY_SOCKET of its own, and swaps
// generations with overlap: the new one starts while the old one serves, and the old one is
// told to stop only once every process of the new one is ready.
//
// Invariants: at most one generation is starting at a time (a reload during a reload is
// refused); at most one is serving; at most --max-draining old ones are still draining (a
// reload beyond that is refused); a generation that fails to start is killed whole and changes
// nothing else. One thread runs everything: signals arrive through a signalfd, children's exits
// through SIGCHLD (every zombie is reaped, also re-parented orphans: the supervisor is a child
// subreaper, or PID 1), notifications through one datagram socket whose messages are attributed
// by the sender's pid (SCM_CREDENTIALS), control requests through a unix stream socket. Every
// wait has a deadline.
#pragma once

#include "supervisor/options.hpp"

namespace handoff::supervisor {

// Runs until the app is gone or the supervisor was told to stop; returns the exit code (the
// app's status: its exit code, or 128+N when killed by signal N). Setup failures (a socket that
// cannot be opened, a control socket in use) throw std::runtime_error with the message.
int run(run_options options);

}  // namespace handoff::supervisor
