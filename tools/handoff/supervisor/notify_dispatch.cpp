// Notifications from the app: each message is attributed to the slot of its sender (by pid,
// earlier main pid, or process group) and applied to it.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>

#include "handoff/decimal.hpp"
#include "handoff/listeners.hpp"
#include "supervisor/core.hpp"
#include "supervisor/pidfd.hpp"

namespace handoff::supervisor {

using ms = std::chrono::milliseconds;

void supervisor_core::remember_exit(pid_t pid) noexcept {
  recent_exits_[recent_exits_next_] = pid;
  recent_exits_next_ = (recent_exits_next_ + 1) % recent_exits_.size();
}

bool supervisor_core::exited_recently(pid_t pid) const noexcept {
  return pid > 0 &&
         std::find(recent_exits_.begin(), recent_exits_.end(), pid) != recent_exits_.end();
}

void supervisor_core::on_notify() {
  for (int budget = 0; budget < 64; ++budget) {
    auto got = notify_->try_receive();
    if (!got) {
      ++metrics_.notify_refused[static_cast<std::size_t>(notify_refusal::malformed)];
      log_.log("notify_error", got.error().message());
      continue;
    }
    if (!*got) return;
    on_notify_message(**got);
  }
}

void supervisor_core::on_notify_message(notify_message& m) {
  generation* owner = nullptr;
  slot* from = nullptr;
  const pid_t group = ::getpgid(m.pid);
  for (auto& g : generations_)
    for (auto& s : g.slots) {
      if (!s.running()) continue;
      const bool mine = s.pid == m.pid ||
                        std::find(s.former.begin(), s.former.end(), m.pid) != s.former.end() ||
                        (group > 0 && group == s.pgid);
      if (mine && from == nullptr) owner = &g, from = &s;
    }
  if (from == nullptr) {
    // Sent before its exit, read after it was reaped (reap() runs first, so that a READY=1 of
    // a process that died meanwhile never counts): expected, not worth a line.
    if (exited_recently(m.pid)) return;
    ++metrics_.notify_refused[static_cast<std::size_t>(notify_refusal::unknown_sender)];
    if (m.pid != last_ignored_sender_)
      log_.log("notify_ignored",
               fmt::format("notify message from pid {}, not a process of any generation: "
                           "ignored",
                           m.pid));
    last_ignored_sender_ = m.pid;
    return;
  }
  generation& g = *owner;
  slot& s = *from;
  s.heard = true;
  if (auto text = m.get("STATUS")) s.status_text = std::string(*text);
  if (auto mp = m.get("MAINPID")) {
    const auto n = parse_decimal<pid_t>(*mp, 2);
    // The pidfd first, then the membership check, then the pidfd's process still alive: so
    // the check was about the process the pidfd names, not a later owner of a reused pid.
    unique_fd pidfd;
    if (n && *n != s.pid) pidfd.reset(::pidfd_open(*n, 0));
    const bool member =
        pidfd && ::getpgid(*n) == s.pgid && ::pidfd_send_signal(pidfd.get(), 0, nullptr, 0) == 0;
    if (n && *n == s.pid) {
      // Already the main process.
    } else if (!member) {
      ++metrics_.notify_refused[static_cast<std::size_t>(notify_refusal::mainpid)];
      log_.log("notify_ignored",
               fmt::format("generation {}: MAINPID={} from pid {} refused: not a live process "
                           "of the generation's process group",
                           g.id, std::string(*mp), m.pid));
    } else {
      log_.log("mainpid", fmt::format("generation {}: main process {} -> {}", g.id, s.pid, *n));
      s.former.push_back(s.pid);
      s.pid = *n;
      s.pidfd = std::move(pidfd);
    }
  }
  if (m.has("RELOADING")) s.reloading = true;
  if (m.has("STOPPING")) s.stopping = true;
  if (m.has("WATCHDOG")) s.last_watchdog = os_.now();
  if (auto wd = m.get("WATCHDOG_USEC")) {
    if (const auto us = parse_decimal<std::uint64_t>(*wd, 1)) {
      const auto cap = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(watchdog_max).count());
      s.watchdog = std::chrono::duration_cast<ms>(
          std::chrono::microseconds(static_cast<std::int64_t>(std::min(*us, cap))));
      s.watchdog_fired = false;
    }
  }
  if (m.has("FDSTORE") && !m.fds.empty()) {
    std::string name(m.get("FDNAME").value_or("stored"));
    if (!valid_socket_name(name)) name = "stored";
    for (auto& fd : m.fds) {
      if (fdstore_.size() >= o_.fdstore_max) {
        log_.log("fdstore",
                 fmt::format("fd store full ({}): fd from pid {} dropped", o_.fdstore_max, m.pid));
        break;
      }
      fdstore_.push_back({std::move(fd), name});
    }
    log_.log("fdstore", fmt::format("generation {}: pid {} stored fds as {:?} ({} in store)", g.id,
                                    m.pid, name, fdstore_.size()));
  }
  if (m.has("FDSTOREREMOVE")) {
    if (auto name = m.get("FDNAME"))
      std::erase_if(fdstore_, [&](const stored_fd& f) { return f.name == *name; });
  }
  if (m.has("READY")) {
    s.reloading = false;
    if (!s.ready && o_.ready == ready_mode::notify) mark_ready(g, s, "READY=1");
  }
}

}  // namespace handoff::supervisor
