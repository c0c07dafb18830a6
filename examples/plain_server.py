#!/usr/bin/env python3
"""A plain HTTP server that knows nothing of handoff: it serves on the socket it finds on fd 3
(as systemd's LISTEN_FDS, and so `handoff run`, pass it) with the standard library, sends no
READY=1, and exits at once on SIGTERM, as most simple servers do. The demo (scripts/demo)
reloads it under keep-alive load directly and with --proxy."""
import http.server
import os
import signal
import socket
import socketserver

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        body = f"hello from {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


sock = socket.socket(fileno=3)
Server.address_family = sock.family
server = Server(sock.getsockname(), Handler, bind_and_activate=False)
server.socket = sock
server.serve_forever()
