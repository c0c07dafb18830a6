#!/usr/bin/env python3
"""`handoff reexec` with --proxy http: the supervisor runs from a copy of the binary in the
test's directory, and each re-exec finds another copy renamed over that path, as a package
upgrade leaves it. The client connections cross the exec at a request boundary, with the bytes
read from them ahead; the app notices nothing.

Usage: test_proxy_reexec.py HANDOFF [unittest arguments, e.g. -k keepalive]
Environment: HANDOFF_GO_APP (the built tests/proxy/go_app; its tests are skipped without it),
HANDOFF_PROXY_SECONDS (how long the load runs, default 20; the 10 re-execs are done within it).

Every wait has a deadline; events are lines of the supervisor's log, answers of its control
socket, or process exits, never a sleep.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_proxy  # noqa: E402  (its Supervisor and helpers; it reads argv[1] the same way)
from test_proxy import HANDOFF, PY_APP, GO_APP, read_response  # noqa: E402

REEXECS = 10
# The load's duration: the ten re-execs are done well within it (a few hundred ms each).
SECONDS = int(os.environ.get("HANDOFF_PROXY_SECONDS", "20"))


class ProxyReexecTest(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.TemporaryDirectory()
        self.tmp = self.tmpdir.name
        self.sup = None
        os.makedirs(os.path.join(self.tmp, "bin"))
        self.binary = os.path.join(self.tmp, "bin", "handoff")
        self.replace_binary()

    def tearDown(self):
        if self.sup:
            try:
                self.sup.stop()
            finally:
                self.sup.kill()
        self.tmpdir.cleanup()

    def replace_binary(self):
        """A fresh copy of the real binary renamed over the path the supervisor runs from."""
        nxt = self.binary + ".next"
        shutil.copyfile(HANDOFF, nxt)
        os.chmod(nxt, 0o755)
        os.rename(nxt, self.binary)

    def start(self, args, command, **kw):
        self.sup = test_proxy.Supervisor(self.tmp, args, command, binary=self.binary, **kw)
        self.sup.wait_line(r"generation 1 took over", 60)
        return self.sup

    def app_pids(self):
        return [p["pid"] for g in self.sup.status()["generations"] for p in g["processes"]]

    def running_inode(self):
        return os.stat(f"/proc/{self.sup.proc.pid}/exe").st_ino

    def reexec(self):
        return self.sup.ctl("reexec", timeout=90)

    def reexec_script(self):
        """What `handoff check` runs as its "reload": a new copy of the binary, then reexec;
        after REEXECS of them, nothing more (it exits 0 without a re-exec)."""
        script = os.path.join(self.tmp, "reexec.sh")
        count = os.path.join(self.tmp, "count")
        with open(script, "w") as f:
            f.write(f"""#!/bin/sh
set -e
n=$(cat {count} 2>/dev/null || echo 0)
[ "$n" -ge {REEXECS} ] && exit 0
cp {HANDOFF} {self.binary}.next && mv {self.binary}.next {self.binary}
{HANDOFF} reexec --control {self.sup.control}
echo $((n + 1)) > {count}
""")
        os.chmod(script, 0o755)
        return script, count

    def reexecs_under_load(self, args, command, mode):
        sup = self.start(["--proxy", "http", *args], command)
        apps = self.app_pids()
        self.assertTrue(apps)
        url = f"http://127.0.0.1:{sup.port}/"
        script, count = self.reexec_script()
        # check runs the script back to back until the duration ends; the script stops
        # re-executing after REEXECS, so the duration bounds the test, not the count.
        json_path = os.path.join(self.tmp, "load.json")
        cmd = [HANDOFF, "check", url, "--duration", f"{SECONDS}s", "-c", str(test_proxy.CONNECTIONS),
               "--mode", mode, "--json", json_path, "-q", "--reload-cmd", script,
               "--reload-every", "100ms"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120)
        self.assertTrue(os.path.exists(json_path), r.stderr)
        with open(json_path) as f:
            result = json.load(f)
        with open(count) as f:
            done = int(f.read())
        self.assertEqual(done, REEXECS, r.stdout + sup.log())
        restarts = result["restarts"]
        self.assertEqual([x for x in restarts if not x["success"]], [], sup.log())
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["failed"], 0, r.stdout + sup.log())
        if mode == "keepalive":
            # Counted at the client: no connection opened after the first ones.
            self.assertEqual(result["reconnects"], 0, r.stdout)
        status = sup.status()
        self.assertEqual(status["reexecs"], REEXECS, status)
        self.assertEqual(self.app_pids(), apps, "the app was restarted")
        self.assertIsNone(sup.proc.poll())
        self.assertEqual(self.running_inode(), os.stat(self.binary).st_ino)
        self.assertEqual(len(re.findall(r"re-executed: ", sup.log())), REEXECS)
        # The state machine carries on: a reload after the re-execs, then a clean stop.
        rr = sup.reload()
        self.assertEqual(rr.returncode, 0, rr.stdout + rr.stderr + sup.log())
        self.assertEqual(sup.stop(), 0, sup.log())
        self.assertEqual([f for f in os.listdir(self.tmp) if ".g" in f], [])
        return result

    def test_python_keepalive_ten_reexecs(self):
        self.reexecs_under_load(["--ready", "http:///"], [sys.executable, PY_APP], "keepalive")

    def test_python_close_ten_reexecs(self):
        self.reexecs_under_load(["--ready", "http:///"], [sys.executable, PY_APP], "close")

    @unittest.skipUnless(GO_APP, "HANDOFF_GO_APP not set (go not installed)")
    def test_go_keepalive_ten_reexecs(self):
        self.reexecs_under_load([], [GO_APP], "keepalive")

    @unittest.skipUnless(GO_APP, "HANDOFF_GO_APP not set (go not installed)")
    def test_go_close_ten_reexecs(self):
        self.reexecs_under_load([], [GO_APP], "close")

    def wait_in_flight(self, count, timeout=20):
        """Until the serving generation has `count` requests of ours in flight (status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gens = self.sup.status()["generations"]
            if sum(g.get("requests_in_flight", 0) for g in gens) >= count:
                return
            time.sleep(0.02)
        self.fail(f"no {count} requests in flight within {timeout} s")

    def test_slow_request_and_pipelined_one_cross_a_reexec(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], [sys.executable, PY_APP])
        apps = self.app_pids()
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=10)
        # A slow request with a second one right behind it, in one segment: the relay reads
        # both, sends the first upstream, and holds the second.
        s.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /?second HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_in_flight(1)
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        self.assertIn("(1 re-execs)", r.stdout)
        first = read_response(s)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), first)
        try:
            second = read_response(s)
        except TimeoutError:
            self.fail("no second response:\n" + sup.log())
        self.assertTrue(second.startswith(b"HTTP/1.1 200"), second)
        self.assertIn("1 client connections adopted", sup.log())
        # Half a request at the moment of the next re-exec: the rest comes after it.
        s.sendall(b"GET /?third HTTP/1.1\r\nHost: a\r\n")
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        s.sendall(b"\r\n")
        third = read_response(s)
        self.assertTrue(third.startswith(b"HTTP/1.1 200"), third)
        s.close()
        self.assertEqual(self.app_pids(), apps)
        self.assertEqual(sup.status()["proxy"]["bad_gateway"], 0)

    def test_a_tunnel_makes_the_reexec_give_up_and_nothing_is_lost(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], [sys.executable, PY_APP],
                         stop_timeout="1s")
        tunnel = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        tunnel.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += tunnel.recv(4096)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        kept = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(kept).startswith(b"HTTP/1.1 200"))
        self.replace_binary()
        r = self.reexec()
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("still inside a request or a tunnel", r.stdout + r.stderr)
        # Both connections carry on in the same image, and new ones are accepted.
        tunnel.sendall(b"ping")
        echoed = b""
        while len(echoed) < 4:
            echoed += tunnel.recv(4)
        self.assertEqual(echoed, b"ping")
        kept.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(kept).startswith(b"HTTP/1.1 200"))
        with socket.create_connection(("127.0.0.1", sup.port), timeout=30) as fresh:
            fresh.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(read_response(fresh).startswith(b"HTTP/1.1 200"))
        tunnel.close()
        kept.close()
        self.assertEqual(sup.status()["reexecs"], 0)

    def test_tcp_proxy_refuses_reexec(self):
        sup = self.start(["--proxy", "tcp", "--ready", "http:///"], [sys.executable, PY_APP])
        r = self.reexec()
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("not available with --proxy tcp", r.stdout + r.stderr)
        self.assertIsNone(sup.proc.poll())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
