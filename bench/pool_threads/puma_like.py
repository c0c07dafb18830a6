#!/usr/bin/env python3
"""An HTTP/1.1 app with puma's threading (5.x/6.x), for bench/pool_threads/run.

N worker threads and one reactor thread. The reactor watches the listening socket and every
idle keep-alive connection; a connection with a request goes to the todo queue; a worker
serves it, then waits up to FAST_TRACK (puma's FAST_TRACK_KA_TIMEOUT, 0.2 s) for the next
request on the same connection and serves that inline (up to MAX_FAST_INLINE requests while
others wait, as puma's max_fast_inline), else gives the connection back to the reactor.

The listening socket is fd 3 (LISTEN_FDS, as handoff run --proxy http hands it). Each request
takes WORK seconds (default 0.005). Sends READY=1 when it listens.
"""
import os
import queue
import select
import selectors
import socket
import sys
import threading
import time

THREADS = int(os.environ.get("THREADS", "4"))
WORK = float(os.environ.get("WORK", "0.005"))
FAST_TRACK = 0.2
MAX_FAST_INLINE = 10

listener = socket.socket(fileno=3)
listener.setblocking(False)
todo = queue.Queue()
back_to_reactor = queue.Queue()
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


def reactor():
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                os.read(wake_r, 4096)
                while True:
                    try:
                        conn, buf = back_to_reactor.get_nowait()
                    except queue.Empty:
                        break
                    sel.register(conn, selectors.EVENT_READ, buf)
            elif key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                sel.register(conn, selectors.EVENT_READ, b"")
            else:
                sel.unregister(key.fileobj)
                todo.put((key.fileobj, key.data))


def read_request(conn, buf):
    """A whole header (no bodies here); None when the peer closed."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def worker():
    while True:
        conn, buf = todo.get()
        served = 0
        while True:
            try:
                request, buf = read_request(conn, buf)
            except OSError:
                request = None
            if request is None:
                conn.close()
                break
            time.sleep(WORK)
            body = b"ok"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body)
            served += 1
            if buf:
                continue
            fast = not (served >= MAX_FAST_INLINE and todo.qsize() > 0)
            if fast and select.select([conn], [], [], FAST_TRACK)[0]:
                continue
            back_to_reactor.put((conn, buf))
            os.write(wake_w, b"x")
            break


threading.Thread(target=reactor, daemon=True).start()
for _ in range(THREADS):
    threading.Thread(target=worker, daemon=True).start()
notify("READY=1")
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    sys.exit(0)
