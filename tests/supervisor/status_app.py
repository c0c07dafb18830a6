#!/usr/bin/env python3
"""An app for the tests of the re-exec state (test_reexec_state.cpp) that says what it is doing
in bytes that are not UTF-8: READY=1 with STATUS=caf\\xe9 (Latin-1 "café"; in UTF-8 with
STATUS_APP_UTF8=1 in its environment), and on each SIGUSR1
(forwarded by the supervisor) STATUS=na\\xefve N (Latin-1 "naïve"), N counting from 1. It takes
its listening socket from fd 3 (LISTEN_FDS), answers GET / with X-Served-By: PID and
Connection: close, and exits 0 on SIGTERM."""
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading


def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"hello from pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(os.getpid()))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print("status_app.py: expected one socket by LISTEN_FDS", file=sys.stderr)
        return 2
    listener = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)
    os.close(3)
    server = Server(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket = listener
    # Blocked before any thread starts, and taken by sigwait() here (app.py says why).
    signals = {signal.SIGTERM, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    first = "café".encode("utf-8" if os.environ.get("STATUS_APP_UTF8") else "latin-1")
    notify(b"READY=1\nSTATUS=" + first + b"\n")
    count = 0
    while signal.sigwait(signals) == signal.SIGUSR1:
        count += 1
        notify(b"STATUS=na\xefve %d\n" % count)
    notify(b"STOPPING=1\n")
    server.shutdown()
    thread.join()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
