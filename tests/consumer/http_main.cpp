// A user's HTTP server built against an installed handoff::http: starts, drains, exits.
#include <cstdio>

#include "handoff/activation.hpp"
#include "handoff/http/server.hpp"

int main() {
  namespace http = handoff::http;
  auto sockets = handoff::socket_set::from_environment().value();
  const int fd = sockets.listen("http=127.0.0.1:0").value();
  http::server server({}, [](http::request_context& ctx) -> boost::asio::awaitable<http::response> {
    co_return http::response{boost::beast::http::status::ok, ctx.req().version()};
  });
  server.add_listener(handoff::duplicate_fd(fd).value());
  server.start();
  const auto report = server.drain(std::chrono::seconds(1));
  std::printf("consumer_http: started and drained (%s)\n", report.clean() ? "clean" : "aborted");
  return report.clean() ? 0 : 1;
}
