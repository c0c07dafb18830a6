// glibc's pidfd_open and pidfd_send_signal (<sys/pidfd.h>, glibc 2.36). That header of glibc
// 2.36 (Debian 12) lacks the extern "C" of its siblings, so C++ would look for mangled
// names; the headers it includes are included first, with their own linkage.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>

extern "C" {
#include <sys/pidfd.h>
}
