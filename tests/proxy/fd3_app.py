#!/usr/bin/env python3
"""A plain HTTP app that knows nothing of handoff: it serves on the socket it finds on fd 3
(unix or TCP, as systemd's LISTEN_FDS passes it), sends no READY=1, and exits at once on
SIGTERM, dropping whatever it was doing. With --port it binds 127.0.0.1:$PORT itself instead.
With FD3_APP_NOTIFY=1 in its environment it sends READY=1 to NOTIFY_SOCKET once it serves (for
`handoff run` without --proxy, where --ready cannot probe the sockets the supervisor holds; an
environment variable, as handoff 3103c1e refused app arguments that begin with "--").

Paths: /            200, "PID\\n" (header X-Served-By: PID)
       POST any     200, the number of body bytes read
       /slow?ms=N   answers after N ms
       /die         sends half a response, then the process exits (status 3)
       /proto       200, the request's X-Forwarded-Proto ("-" without one)
       /fdnames     200, the LISTEN_FDNAMES it was started with ("-" without)
       Upgrade: echo  101, then echoes bytes until the client closes (a WebSocket stand-in)

argv[1] (optional): a mode file; its first line, read at start, says "serve" (default),
"crash" (exit 1 at once) or "hang" (never accept).
"""
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading
import time

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

mode = "serve"
args = [a for a in sys.argv[1:] if not a.startswith("--")]
if args and os.path.exists(args[0]):
    with open(args[0]) as f:
        lines = f.read().split("\n")
    mode = lines[0].strip() or "serve"
    # One mode per start: the next start reads the next line.
    with open(args[0], "w") as f:
        f.write("\n".join(lines[1:]))
if mode == "crash":
    sys.exit(1)
if mode == "hang":
    threading.Event().wait()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def reply(self, body, status=200):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", str(os.getpid()))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        if self.path.startswith("/slow"):
            ms = int(self.path.split("ms=")[1]) if "ms=" in self.path else 500
            time.sleep(ms / 1000)
        if self.path == "/proto":
            self.reply(self.headers.get("X-Forwarded-Proto", "-"))
            return
        if self.path == "/fdnames":
            self.reply(os.environ.get("LISTEN_FDNAMES", "-"))
            return
        if self.path == "/die":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            os._exit(3)
        self.reply(f"{os.getpid()}\n")

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        total = 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            total += len(chunk)
            left -= len(chunk)
        self.reply(f"{total}\n")


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


if "--port" in sys.argv:
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)
else:
    sock = socket.socket(fileno=3)
    Server.address_family = sock.family
    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket = sock
if os.environ.get("FD3_APP_NOTIFY") == "1" and os.environ.get("NOTIFY_SOCKET"):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(b"READY=1")
server.serve_forever()
