#!/usr/bin/env python3
"""A Python HTTP app (http.server, one thread per connection) that loses no request when
`handoff run` (or systemd) replaces it: the recipe of docs/apps.md.

It serves the socket on fd 3 (LISTEN_FDS), sends READY=1 to NOTIFY_SOCKET once it serves, and
drains on SIGTERM: it stops accepting (the socket stays open in the supervisor and the next
generation), answers the next request of every connection with `Connection: close`, and exits
once every connection is closed, or after DRAIN_GRACE seconds for clients that stay silent.

The listening socket must be non-blocking (`handoff run --nonblocking`, systemd's
`NonBlocking=yes`): socketserver polls, then accepts, and on a blocking socket shared with
another generation that took the connection first, accept() would block for good.
"""
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time

# How long a draining process waits for each keep-alive client's next request; keep it below
# the supervisor's --stop-timeout.
DRAIN_GRACE = 5.0

draining = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def setup(self):
        # Headers and body are two writes: without TCP_NODELAY, Nagle's algorithm holds the
        # second until the client's delayed ACK (40 ms per keep-alive request).
        self.disable_nagle_algorithm = self.request.family != socket.AF_UNIX
        super().setup()

    def end_headers(self):
        if draining.is_set():
            # send_header() notes it: the connection is closed after this response.
            self.send_header("Connection", "close")
        super().end_headers()

    def do_GET(self):
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Counts its open connections, so that a drain knows when it is over."""

    daemon_threads = True

    def __init__(self, sock):
        self.address_family = sock.family
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.open = 0
        self.changed = threading.Condition()

    def process_request(self, request, client_address):
        with self.changed:
            self.open += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        super().shutdown_request(request)
        with self.changed:
            self.open -= 1
            self.changed.notify_all()

    def wait_closed(self, timeout):
        with self.changed:
            return self.changed.wait_for(lambda: self.open == 0, timeout)


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), path)


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", 0)) < 1:
        sys.exit("app.py: no socket in LISTEN_FDS")
    # Blocked before any thread starts, so that sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = Server(socket.socket(fileno=3))
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    loop.start()
    notify("READY=1")

    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    draining.set()
    server.shutdown()  # the accept loop has ended; the connections' threads run on
    server.socket.close()  # our copy only
    server.wait_closed(DRAIN_GRACE)
    # Daemon threads of connections still open (silent clients) end with the process.


if __name__ == "__main__":
    main()
