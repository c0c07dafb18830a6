#!/usr/bin/env python3
"""An app for tests/apps/test_interop.py, written the way real apps do what handoff meets:

  --notify raw             connects to NOTIFY_SOCKET as a file path, with no '@' handling (as
                           Ruby's sd_notify gem does): fails on an abstract socket
  --notify libsystemd      libsystemd's sd_notify(3), through ctypes
  --notify systemd-notify  the systemd-notify(1) tool, from a child process
  --notify none            never notifies (uvicorn, Node, puma without the gem)
  --port N                 binds 127.0.0.1:N itself (N from `-- app --port $PORT`), else
                           serves the socket on fd 3 (LISTEN_FDS)
  --also-port N            binds and serves 127.0.0.1:N too (a second public socket's port)

Every request gets 200 and a JSON body: its pid, its arguments, TCP_NODELAY of its listener
and of the accepted connection. SIGTERM: exit 0.
"""
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def option(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def notify(how, text):
    if how == "raw":
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(os.environ["NOTIFY_SOCKET"])  # a path: "@..." gives ENOENT
            s.sendall(text.encode())
    elif how == "libsystemd":
        if ctypes.CDLL("libsystemd.so.0").sd_notify(0, text.encode()) <= 0:
            sys.exit("sd_notify failed")
    elif how == "systemd-notify":
        subprocess.run(["systemd-notify", *text.strip().split("\n")], check=True)


def nodelay(s):
    if s.family == socket.AF_UNIX:
        return None
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def main():
    port = option("--port")
    if port is not None:
        listener = socket.create_server(("127.0.0.1", int(port)))
    else:
        listener = socket.socket(fileno=3)
    also = option("--also-port")
    if also is not None:
        second = socket.create_server(("127.0.0.1", int(also)))
        threading.Thread(target=serve, args=(second,), daemon=True).start()
    notify(option("--notify", "raw"), "READY=1\nSTATUS=serving\n")
    serve(listener)


def serve(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            body = json.dumps({"pid": os.getpid(), "argv": sys.argv[1:],
                               "nodelay_listener": nodelay(listener),
                               "nodelay_connection": nodelay(conn)}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\n\r\n" + body)


if __name__ == "__main__":
    main()
