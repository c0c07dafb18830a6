#!/usr/bin/env python3
"""A small app in another language for `handoff run`: it takes its listening socket from fd 3
(LISTEN_FDS, as any systemd-activated service would), writes READY=1 to NOTIFY_SOCKET itself,
answers GET / with "hello from pid N" (and X-Served-By: N), and on SIGTERM stops accepting,
finishes the requests in flight and exits 0. Every response says Connection: close, so no
keep-alive connection is ever cut by the drain. socketserver polls, then accepts: run it with
`handoff run --nonblocking`, or its accept can block after another generation took the
connection."""
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading


def notify(message):
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"hello from pid {os.getpid()} (python)\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(os.getpid()))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False
    block_on_close = True


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print("app.py: expected one socket by LISTEN_FDS", file=sys.stderr)
        return 2
    listener = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)
    os.close(3)  # fromfd duplicated it
    server = Server(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket = listener
    # SIGTERM blocked before any thread starts, and taken by sigwait() in this thread. A
    # handler that sets an Event would not do: the kernel may deliver SIGTERM to a serving
    # thread, and the main thread, asleep in Event.wait(), then never runs Python's handler
    # (seen in CI: SIGKILL after the stop timeout, one request cut).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    notify("READY=1\nSTATUS=serving\n")
    signal.sigwait({signal.SIGTERM})
    notify("STOPPING=1\n")
    server.shutdown()  # stops accepting; queued connections stay in the shared socket's queue
    thread.join()
    server.server_close()  # joins the handler threads (block_on_close); closes our copy only
    return 0


if __name__ == "__main__":
    sys.exit(main())
