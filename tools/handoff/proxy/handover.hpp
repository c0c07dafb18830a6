// Client connections handed from one image of the supervisor to the next (`handoff reexec` with
// --proxy http or tcp): the front parks every relay at a boundary, then takes each one's sockets
// and the bytes it had read ahead; the next image adopts them as if it had just accepted them.
// - http: at a request boundary, with the bytes read ahead (a pipelined or partial next
//   request), which the next image uses first.
// - tcp: when both directions are idle (nothing read and not yet written: the pipe of each is
//   empty), with the upstream connection to the app, which crosses the exec too, and which
//   directions were already half-closed. Bytes still in flight wait in the kernel's socket
//   buffers, which outlive the exec.
//
// Invariants (everything runs on the front's io thread):
// - A relay parks only at such a boundary: no request of it is in flight upstream, no byte of a
//   response is owed (http); no byte is held in user space or a pipe (tcp). A parked relay reads
//   nothing more until it is resumed or handed over.
// - A relay that is handed over ends without closing or shutting down its sockets: the fds are
//   the caller's from then on.
// - A relay that is not parked when parking ends (resume()) carries on as if nothing happened.
#pragma once

#include <cstddef>
#include <functional>
#include <list>
#include <string>
#include <utility>
#include <vector>

#include "handoff/fd.hpp"

namespace handoff::proxy {

struct handed_client {
  unique_fd fd;
  std::size_t listener = 0;  // index of the public socket it came on
  std::string buffered;      // http: read from the client, not yet used: its next request's start
  // tcp: the relay's connection to the app (its generation), and which directions ended (the
  // half-close was passed on already: the next image does not read that side again).
  unique_fd upstream;
  int generation = 0;
  bool client_done = false;    // the client sent FIN (the app's side was shut for writing)
  bool upstream_done = false;  // the app sent FIN (the client's side was shut for writing)
};

class parking_lot {
 public:
  class member {
   public:
    // Parking began: a relay waiting for its client's next request stops waiting and parks.
    virtual void parking_started() = 0;
    // Parking ended: a parked relay carries on; one that was not parked hears it too (a tcp
    // relay holds an idle direction while parking).
    virtual void resume() = 0;
    // Parked only: its socket and buffered bytes; the relay then ends without closing it.
    virtual handed_client hand_over() = 0;

   protected:
    ~member() = default;
  };

  // `changed`: called when a relay parked or left while parking, so that the front can see
  // whether every client connection is parked.
  explicit parking_lot(std::function<void()> changed) : changed_(std::move(changed)) {}

  bool parking() const noexcept { return parking_; }
  std::size_t parked() const noexcept { return parked_.size(); }

  using ticket = std::list<member*>::iterator;
  ticket join(member* m) { return members_.insert(members_.end(), m); }
  void leave(ticket t) {
    member* m = *t;
    members_.erase(t);
    if (!parked_.empty()) std::erase(parked_, m);
    if (parking_ && changed_) changed_();
  }
  // `m` waits at a request boundary until resume() or hand_over().
  void park(member* m) {
    parked_.push_back(m);
    if (changed_) changed_();
  }

  void start() {
    parking_ = true;
    // A copy: a relay may leave while told.
    const std::vector<member*> all(members_.begin(), members_.end());
    for (member* m : all) m->parking_started();
  }
  std::vector<handed_client> take() {
    std::vector<handed_client> out;
    const auto parked = std::exchange(parked_, {});
    for (member* m : parked) out.push_back(m->hand_over());
    parking_ = false;
    return out;
  }
  void resume() {
    parking_ = false;
    parked_.clear();
    // A copy: a relay may leave while told.
    const std::vector<member*> all(members_.begin(), members_.end());
    for (member* m : all) m->resume();
  }

 private:
  std::function<void()> changed_;
  std::list<member*> members_;
  std::vector<member*> parked_;
  bool parking_ = false;
};

}  // namespace handoff::proxy
