#!/usr/bin/env python3
"""Process tests of `handoff run --proxy`: real supervisors, real apps that know nothing of
handoff, `handoff check` as the load, real reloads.

Usage: test_proxy.py HANDOFF [unittest arguments, e.g. -k keepalive]
Environment: HANDOFF_GO_APP (the built tests/proxy/go_app; its tests are skipped without it),
HANDOFF_PROXY_SECONDS (load duration of the reload tests, default 30).

Every wait has a deadline; events are lines of the supervisor's log, answers of its control
socket, or process exits, never a sleep.
"""
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HANDOFF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HANDOFF", "handoff")
HERE = os.path.dirname(os.path.abspath(__file__))
PY_APP = os.path.join(HERE, "fd3_app.py")
GO_APP = os.environ.get("HANDOFF_GO_APP", "")
SECONDS = int(os.environ.get("HANDOFF_PROXY_SECONDS", "30"))
CONNECTIONS = 10


class Supervisor:
    """`handoff run` in its own session; its log read line by line on a thread."""

    def __init__(self, tmp, args, command, port_args=("-l", "127.0.0.1:0"), binary=None,
                 stop_timeout="10s"):
        self.control = os.path.join(tmp, "control.sock")
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [binary or HANDOFF, "run", "--name", "proxytest", "--control", self.control,
             "--stop-timeout", stop_timeout, *port_args, *args, "--", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_line(r"holding tcp 127\.0\.0\.1:(\d+)", 20)
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_line(self, pattern, timeout, start=0):
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    line = self.lines[i]
                    if line is None:
                        raise AssertionError(f"supervisor exited before /{pattern}/:\n{self.log()}")
                    if re.search(pattern, line):
                        return line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no /{pattern}/ within {timeout} s:\n{self.log()}")
                self.cond.wait(left)

    def log(self):
        with self.cond:
            return "".join(l for l in self.lines if l is not None)

    def ctl(self, *args, timeout=60):
        return subprocess.run([HANDOFF, *args, "--control", self.control], capture_output=True,
                              text=True, timeout=timeout)

    def status(self):
        r = self.ctl("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def reload(self):
        return self.ctl("reload", timeout=90)

    def stop(self):
        if self.proc.poll() is None:
            self.ctl("stop", timeout=60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def check(url, seconds, mode, json_path, reload_cmd=None, extra=()):
    cmd = [HANDOFF, "check", url, "--duration", f"{seconds}s", "-c", str(CONNECTIONS),
           "--mode", mode, "--json", json_path, "-q", *extra]
    if reload_cmd:
        # Back to back: check starts the next reload once the last one returned.
        cmd += ["--reload-cmd", reload_cmd, "--reload-every", "100ms"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if not os.path.exists(json_path):
        raise AssertionError(f"check exited {r.returncode} without {json_path}: {r.stderr}")
    with open(json_path) as f:
        return json.load(f), r


def http_request(port, request, timeout=10):
    """One raw exchange on a new connection: the bytes until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def install_binary(source, path):
    """A copy of `source` renamed over `path`, as a package upgrade leaves a binary."""
    nxt = path + ".next"
    shutil.copyfile(source, nxt)
    os.chmod(nxt, 0o755)
    os.rename(nxt, path)


class Responses:
    """Responses with a Content-Length body, read in order from one kept connection: bytes
    that arrive past one response (the next one, sent back to back) wait for the next call."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed; unread: {self.pending!r}")
        self.pending += data

    def next(self):
        while b"\r\n\r\n" not in self.pending:
            self._fill()
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = content_length(head)
        while len(rest) < length:
            self._fill()
            head, _, rest = self.pending.partition(b"\r\n\r\n")
        self.pending = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]


def content_length(head):
    """The Content-Length of a response head (status line and fields), 0 without one."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return length


def read_response(s):
    """One response with a Content-Length body from a kept connection: head and body, whole."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = s.recv(65536)
        if not data:
            return answer
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    length = content_length(head)
    while len(body) < length:
        data = s.recv(65536)
        if not data:
            break
        body += data
    return head + b"\r\n\r\n" + body


class SupervisorCase(unittest.TestCase):
    """A test with a directory of its own and at most one supervisor (self.sup), stopped at
    the end whatever happened."""

    def setUp(self):
        self.tmpdir = tempfile.TemporaryDirectory()
        self.tmp = self.tmpdir.name
        self.sup = None

    def tearDown(self):
        if self.sup:
            # Gracefully first: the apps are in process groups of their own.
            try:
                self.sup.stop()
            finally:
                self.sup.kill()
        self.tmpdir.cleanup()


class ProxyTest(SupervisorCase):

    def start(self, args, command, **kw):
        self.sup = Supervisor(self.tmp, args, command, **kw)
        self.sup.wait_line(r"generation 1 took over", 60)
        return self.sup

    def reload_under_load(self, args, command, mode, min_reloads, seconds=SECONDS):
        sup = self.start(args, command)
        url = f"http://127.0.0.1:{sup.port}/"
        # How many connections check opens with no reload at all: the count to match.
        before = sup.status()["proxy"]["accepted"]
        calm, _ = check(url, 1, mode, os.path.join(self.tmp, "calm.json"))
        self.assertEqual(calm["failed"], 0)
        baseline = sup.status()["proxy"]["accepted"] - before
        before += baseline
        reload_cmd = f"{HANDOFF} reload --control {sup.control}"
        result, r = check(url, seconds, mode, os.path.join(self.tmp, "load.json"), reload_cmd)
        status = sup.status()
        restarts = result["restarts"]
        ok = [x for x in restarts if x["success"]]
        self.assertGreaterEqual(len(ok), min_reloads, r.stdout + sup.log())
        self.assertEqual(len(ok), len(restarts), restarts)
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["failed"], 0, r.stdout)
        self.assertEqual(status["proxy"]["bad_gateway"], 0)
        self.assertEqual(status["proxy"]["unavailable"], 0)
        accepted = status["proxy"]["accepted"] - before
        if mode == "keepalive":
            # No connection opened by the client after its first ones: check's own count, and
            # the connections the front accepted.
            self.assertEqual(result["reconnects"], 0, r.stdout)
            self.assertEqual(accepted, baseline, f"{accepted} connections for {baseline}")
        else:
            self.assertGreater(accepted, len(restarts))
        self.assertEqual(sup.stop(), 0, sup.log())
        # Every generation's private socket is gone with it.
        self.assertEqual([f for f in os.listdir(self.tmp) if ".g" in f], [])
        return result

    # ---- the Python app on fd 3: exits at once on SIGTERM, never sends READY=1 -------------

    def test_python_fd3_keepalive(self):
        self.reload_under_load(["--proxy", "http", "--ready", "http:///"],
                               ["python3", PY_APP], "keepalive", 5)

    def test_python_fd3_close(self):
        self.reload_under_load(["--proxy", "http", "--ready", "http:///"],
                               ["python3", PY_APP], "close", 5)

    def test_python_fd3_tcp_upstream_keepalive(self):
        self.reload_under_load(["--proxy", "http", "--upstream", "fds:tcp", "--ready", "http:///"],
                               ["python3", PY_APP], "keepalive", 5)

    # ---- the Python app that binds $PORT itself ---------------------------------------------

    def test_python_port_keepalive(self):
        self.reload_under_load(["--proxy", "http", "--upstream", "port", "--ready", "tcp"],
                               ["python3", PY_APP, "--port"], "keepalive", 5)

    def test_python_port_close(self):
        self.reload_under_load(["--proxy", "http", "--upstream", "port", "--ready", "tcp"],
                               ["python3", PY_APP, "--port"], "close", 5)

    # ---- the idiomatic Go app: go-systemd, READY=1, Shutdown ---------------------------------

    @unittest.skipUnless(GO_APP, "HANDOFF_GO_APP not built (golang-go missing)")
    def test_go_keepalive(self):
        self.reload_under_load(["--proxy", "http"], [GO_APP], "keepalive", 20, 2 * SECONDS)

    @unittest.skipUnless(GO_APP, "HANDOFF_GO_APP not built (golang-go missing)")
    def test_go_close(self):
        self.reload_under_load(["--proxy", "http"], [GO_APP], "close", 20, 2 * SECONDS)

    # ---- --proxy tcp ----------------------------------------------------------------------

    def test_tcp_proxy_keepalive(self):
        # A keep-alive HTTP connection relayed as bytes stays with its generation; the check
        # counts only requests, so a reload under tcp proxying loses none while the old
        # generation lives (--stop-timeout), and new connections go to the new one.
        sup = self.start(["--proxy", "tcp", "--ready", "http:///"], ["python3", PY_APP])
        url = f"http://127.0.0.1:{sup.port}/"
        reload_cmd = f"{HANDOFF} reload --control {sup.control}"
        result, r = check(url, 8, "close", os.path.join(self.tmp, "load.json"), reload_cmd)
        self.assertGreaterEqual(len(result["restarts"]), 1)
        self.assertEqual(result["failed"], 0, r.stdout)
        self.assertEqual(sup.stop(), 0)

    # ---- tunnels, bodies, failures ---------------------------------------------------------

    def test_upgrade_tunnel_survives_a_reload(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], ["python3", PY_APP])
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=20)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        s.sendall(b"before")
        self.assertEqual(s.recv(100), b"before")
        r = sup.reload()
        self.assertEqual(r.returncode, 0, r.stderr)
        # The old generation still has our tunnel: it is not stopped while the tunnel is open.
        st = sup.status()
        old = [g for g in st["generations"] if g["id"] == 1][0]
        self.assertEqual(old["state"], "retiring")
        self.assertEqual(old["requests_in_flight"], 1)
        s.sendall(b"after")
        self.assertEqual(s.recv(100), b"after")
        s.close()
        # Closed by the client: the old generation drains and is stopped at once.
        sup.wait_line(r"generation 1: sent SIGTERM", 20)
        self.assertEqual(sup.stop(), 0)

    def test_large_post_streamed_during_a_reload(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], ["python3", PY_APP])
        size = 10 * 1024 * 1024
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"y" * 65536
        sent = 0
        # Half the body, then a reload that completes while the rest is on its way.
        while sent < size // 2:
            s.sendall(chunk)
            sent += len(chunk)
        mark = len(sup.lines)
        reload = subprocess.Popen([HANDOFF, "reload", "--control", sup.control],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sup.wait_line(r"generation 2 took over", 60, start=mark)
        while sent < size:
            s.sendall(chunk)
            sent += len(chunk)
        answer = read_response(s)
        s.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        self.assertTrue(answer.endswith(f"{size}\n".encode()), answer)
        self.assertEqual(reload.wait(timeout=60), 0)
        sup.wait_line(r"generation 1: sent SIGTERM", 20)
        self.assertEqual(sup.stop(), 0)

    def test_reload_that_crashes_at_start_changes_nothing(self):
        modes = os.path.join(self.tmp, "modes")
        with open(modes, "w") as f:
            f.write("serve\ncrash\nhang\nserve\n")
        sup = self.start(["--proxy", "http", "--ready", "http:///", "--ready-timeout", "3s"],
                         ["python3", PY_APP, modes])
        url = f"http://127.0.0.1:{sup.port}/"
        first = http_request(sup.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # A crash at start: the reload fails, generation 1 keeps serving.
        r = sup.reload()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("before it was ready", r.stderr)
        # Never ready (accepts nothing): failed at --ready-timeout, generation 1 keeps serving,
        # under load, with nothing lost.
        reload_cmd = f"{HANDOFF} reload --control {sup.control}"
        result, out = check(url, 5, "keepalive", os.path.join(self.tmp, "load.json"), None,
                            ["--reload-cmd", reload_cmd, "--reload-at", "500ms"])
        self.assertEqual(result["failed"], 0, out.stdout)
        self.assertFalse(result["restarts"][0]["success"])
        self.assertIn("not ready within 3s", sup.log())
        again = http_request(sup.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(first.split(b"X-Served-By: ")[1][:5], again.split(b"X-Served-By: ")[1][:5])
        st = sup.status()
        self.assertEqual([g["id"] for g in st["generations"] if g["state"] == "serving"], [1])
        self.assertEqual(sup.stop(), 0)

    def test_app_dying_mid_response(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], ["python3", PY_APP])
        # Half a response, then the app dies: the client connection is cut (the status line
        # went out, so no 502 can follow), counted as a 502, and the app is restarted by the
        # supervisor; the next request is served.
        out = http_request(sup.port, b"GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertLess(len(out.split(b"\r\n\r\n", 1)[1]), 1000)
        sup.wait_line(r"exited with status 3", 20)
        again = http_request(sup.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(again.startswith(b"HTTP/1.1 200"), again)
        self.assertEqual(sup.status()["proxy"]["bad_gateway"], 1)
        self.assertEqual(sup.stop(), 0)

    def test_no_generation_ready_is_503_with_retry_after(self):
        modes = os.path.join(self.tmp, "modes")
        with open(modes, "w") as f:
            f.write("hang\n")
        self.sup = Supervisor(self.tmp, ["--proxy", "http", "--ready", "http:///",
                                         "--ready-timeout", "30s", "--queue-timeout", "300ms"],
                              ["python3", PY_APP, modes])
        self.sup.wait_line(r"generation 1: started", 20)
        out = http_request(self.sup.port,
                           b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 503"), out)
        self.assertIn(b"Retry-After:", out)

    def test_a_request_waits_for_a_generation_that_becomes_ready(self):
        # The first start never gets ready and is killed; the restart serves. A request sent
        # meanwhile waits (--queue-timeout), as it would in the backlog in direct mode.
        modes = os.path.join(self.tmp, "modes")
        with open(modes, "w") as f:
            f.write("hang\nserve\n")
        self.sup = Supervisor(self.tmp, ["--proxy", "http", "--ready", "http:///",
                                         "--ready-timeout", "1s", "--queue-timeout", "60s"],
                              ["python3", PY_APP, modes])
        self.sup.wait_line(r"generation 1: started", 20)
        out = http_request(self.sup.port,
                           b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 50)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertEqual(self.sup.status()["proxy"]["unavailable"], 0)

    def test_upstream_connections_are_limited_and_expire(self):
        # Six requests at once, 400 ms each at the app (a thread per connection), under
        # --upstream-max-connections 2: the front holds two connections to the app and queues
        # the other requests, so the six take three rounds (one without the limit); once idle
        # past --upstream-idle-timeout, the pooled connections are closed.
        self.sup = Supervisor(self.tmp, ["--proxy", "http", "--ready", "http:///",
                                         "--upstream-max-connections", "2",
                                         "--upstream-idle-timeout", "300ms"],
                              ["python3", PY_APP])
        self.sup.wait_line(r"generation 1 took over", 60)
        answers = []
        request = b"GET /slow?ms=400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        threads = [threading.Thread(target=lambda: answers.append(
            http_request(self.sup.port, request, 60))) for _ in range(6)]
        began = time.monotonic()
        for t in threads:
            t.start()
        most_open = 0
        while any(t.is_alive() for t in threads):
            generation = self.sup.status()["generations"][-1]
            most_open = max(most_open, generation["upstream_connections"])
            time.sleep(0.02)
        for t in threads:
            t.join()
        took = time.monotonic() - began
        self.assertEqual([a[:12] for a in answers], [b"HTTP/1.1 200"] * 6,
                         f"{answers}\n{self.sup.status()}\n{self.sup.log()}")
        self.assertLessEqual(most_open, 2)
        self.assertGreaterEqual(took, 1.2, "the requests did not wait for the two connections")
        deadline = time.monotonic() + 20
        while self.sup.status()["generations"][-1]["upstream_connections"] > 0:
            self.assertLess(time.monotonic(), deadline,
                            f"pooled connections never expired: {self.sup.status()}")
            time.sleep(0.05)
        self.assertEqual(self.sup.status()["proxy"]["bad_gateway"], 0)

    # ---- options --------------------------------------------------------------------------

    def test_probe_of_a_held_socket_is_refused(self):
        for ready in (["--ready", "tcp"], ["--ready", "http://127.0.0.1:{port}/health"]):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            args = [a.replace("{port}", str(port)) for a in ready]
            r = subprocess.run([HANDOFF, "run", "--control", os.path.join(self.tmp, "c.sock"),
                                "-l", f"127.0.0.1:{port}", *args, "--", "true"],
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("the supervisor holds that socket", r.stderr)
        r = subprocess.run([HANDOFF, "run", "--control", os.path.join(self.tmp, "c.sock"),
                            "-l", "127.0.0.1:0", "--proxy", "http", "--ready", "tcp", "--", "true"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("proves nothing", r.stderr)
        # The form that works with --proxy (host and port ignored), not http://PATH.
        self.assertIn("--ready http:///PATH", r.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
