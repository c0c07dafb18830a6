// The seam between the relays (one client connection each: http_relay.hpp, tcp_relay.hpp) and
// the front that knows the generations (front.hpp).
//
// Everything here runs on the front's one io_context thread: a router is never called from two
// threads at once. A relay asks for an upstream connection per request (HTTP) or per client
// connection (TCP, tunnels) and gives it back when that is over; between the two calls the
// request counts as in flight for that connection's generation, which is how the front knows
// when a retired generation has nothing of ours left and may be told to stop.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <cstddef>
#include <optional>

namespace handoff::proxy {

namespace asio = boost::asio;
// Unix or TCP: the upstream of a generation is either (--upstream fds / fds:tcp / port).
using stream = asio::generic::stream_protocol::socket;

// A connection to one generation's upstream socket, lent to one request (or one tunnel).
struct upstream_connection {
  stream socket;
  int generation = 0;
  // Taken from the idle pool rather than opened for this request: the app may have closed it
  // as the request was written (its idle timeout), which a relay may retry (http_relay.hpp).
  bool reused = false;
};

// Where acquire() may take a connection from: a relay retrying a request that a pooled
// connection lost asks for a new one, as the other pooled ones may be just as stale.
enum class connection_source { pool_or_new, new_only };

class router {
 public:
  virtual ~router() = default;
  // A connection to the generation that serves now, for a client of public socket `listener`
  // (its index in the front's list): an idle one of ours that is still open (unless `source`
  // is new_only), else a new one. A connect that fails (nothing of the request was written yet) is
  // tried again on whatever generation serves then, a bounded number of times. nullopt: no
  // generation is ready, or none could be reached; the relay answers 503 with Retry-After.
  virtual asio::awaitable<std::optional<upstream_connection>> acquire(std::size_t listener,
                                                                      connection_source source) = 0;
  // The request (or tunnel) is over. `reusable`: the response was read to its end and neither
  // side asked to close, so the connection may carry another request of its generation (the
  // front closes it instead when that generation is retired).
  virtual void release(upstream_connection connection, bool reusable) = 0;
  // True once the supervisor is stopping: a relay finishes the request in flight, answers it
  // with `Connection: close`, and closes the client connection; an idle one is closed.
  virtual bool closing() const = 0;
};

}  // namespace handoff::proxy
