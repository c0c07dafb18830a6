// What a C++ user writes on Beast by hand, for bench/http_peers: the ceiling of handoff::http
// on Beast. One thread, C++20 coroutines on the concrete io_context executor (no type erasure,
// no strand), one flat_buffer per connection, a request_parser<empty_body> per request, a
// prepared response written with async_write. No timeouts, no limits beyond Beast's defaults,
// no drain: everything handoff::http adds is what this lacks.
//
//   beast_hello 127.0.0.1:PORT
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <string>

namespace asio = boost::asio;
namespace http = boost::beast::http;
using executor = asio::io_context::executor_type;
using tcp_socket = asio::basic_stream_socket<asio::ip::tcp, executor>;
using tcp_acceptor = asio::basic_socket_acceptor<asio::ip::tcp, executor>;
template <class T>
using task = asio::awaitable<T, executor>;
constexpr asio::use_awaitable_t<executor> use_task;

namespace {

std::string realistic_body() {  // the body of bench/http_peers' /realistic
  std::string body;
  char row[64];
  for (int i = 0; i < 32; ++i) {
    std::snprintf(row, sizeof row, "row %02d abcdefghijklmnopqrstuvwx\n", i);
    body += row;
  }
  return body;
}

task<void> serve(tcp_socket socket, const std::string& realistic) {
  socket.set_option(asio::ip::tcp::no_delay(true));
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> hello{http::status::ok, 11};
  hello.set(http::field::content_type, "text/plain");
  hello.body() = "hello from beast\n";
  hello.prepare_payload();
  http::response<http::string_body> api{http::status::ok, 11};
  api.set(http::field::content_type, "text/plain; charset=utf-8");
  api.set(http::field::cache_control, "private, max-age=60");
  api.set("X-Content-Type-Options", "nosniff");
  api.set("X-Frame-Options", "DENY");
  api.set(http::field::vary, "Accept-Encoding");
  api.body() = realistic;
  api.prepare_payload();
  for (;;) {
    http::request_parser<http::empty_body> parser;
    boost::system::error_code ec;
    co_await http::async_read(socket, buffer, parser, asio::redirect_error(use_task, ec));
    if (ec) co_return;
    auto& res = parser.get().target() == "/realistic" ? api : hello;
    res.keep_alive(parser.get().keep_alive());
    co_await http::async_write(socket, res, asio::redirect_error(use_task, ec));
    if (ec || !res.keep_alive()) co_return;
  }
}

task<void> listen(tcp_acceptor& acceptor, const std::string& realistic) {
  for (;;) {
    auto socket = co_await acceptor.async_accept(use_task);
    asio::co_spawn(acceptor.get_executor(), serve(std::move(socket), realistic), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: beast_hello HOST:PORT\n");
    return 2;
  }
  const std::string where = argv[1];
  const auto colon = where.rfind(':');
  asio::io_context io(1);
  tcp_acceptor acceptor(io.get_executor(),
                        {asio::ip::make_address(where.substr(0, colon)),
                         static_cast<unsigned short>(std::stoi(where.substr(colon + 1)))});
  const std::string realistic = realistic_body();
  asio::co_spawn(io, listen(acceptor, realistic), asio::detached);
  io.run();
}
