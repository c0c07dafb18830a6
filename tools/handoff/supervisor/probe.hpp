// Readiness probes for --ready tcp and --ready http://...: a detached thread tries until it
// succeeds or is abandoned, then wakes the event loop through an eventfd. The thread shares
// only its state (and its own duplicate of the eventfd) with the loop, so abandoning a probe
// never waits for a connect in progress.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "handoff/fd.hpp"

namespace handoff::supervisor {

struct probe_state {
  std::atomic<bool> done{false};
  std::atomic<bool> abandoned{false};
  unique_fd wake;  // eventfd, written once when done
};

// kind "tcp": target "HOST:PORT" (IPv6 in brackets); kind "http": target "http://HOST:PORT/PATH".
// Returns the shared state; `done` turns true on the first success.
// `unix_path`: connect there instead of the target's HOST:PORT (the URL's path still counts).
std::shared_ptr<probe_state> start_probe(std::string kind, std::string target, int wake_fd,
                                         std::string unix_path = {});

// Whether `url` is http://HOST[:PORT][/PATH] (for option validation).
bool valid_http_url(const std::string& url);
// "" when `target` is valid for `kind` ("http": a URL, check/url.hpp; "tcp": HOST:PORT,
// handoff/address.hpp), else what is wrong with it.
std::string ready_target_problem(const std::string& kind, const std::string& target);

}  // namespace handoff::supervisor
