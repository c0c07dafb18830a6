#!/usr/bin/env python3
"""`handoff reexec` with --proxy http and tcp: the supervisor runs from a copy of the binary in
the test's directory, and each re-exec finds another copy renamed over that path, as a package
upgrade leaves it. The client connections cross the exec at a request boundary, with the bytes
read from them ahead (tcp: once nothing is in flight inside the relay, with their upstream
connections); the app notices nothing.

Usage: test_proxy_reexec.py HANDOFF [unittest arguments, e.g. -k keepalive]
Environment: HANDOFF_GO_APP (the built tests/proxy/go_app; its tests are skipped without it),
HANDOFF_PROXY_SECONDS (the load's shortest duration, default 10; it is made long enough for 10
re-execs one after the other, from the time one takes).

Every wait has a deadline; events are lines of the supervisor's log, answers of its control
socket, or process exits, never a sleep.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_proxy  # noqa: E402  (its Supervisor and helpers; it reads argv[1] the same way)
from test_proxy import HANDOFF, PY_APP, GO_APP, Responses, read_response  # noqa: E402

REEXECS = 10
# The load's shortest duration (longer when one re-exec takes more than half a second).
SECONDS = int(os.environ.get("HANDOFF_PROXY_SECONDS", "10"))


class ProxyReexecTest(test_proxy.SupervisorCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "bin"))
        self.binary = os.path.join(self.tmp, "bin", "handoff")
        self.replace_binary()

    def replace_binary(self):
        """A fresh copy of the real binary renamed over the path the supervisor runs from."""
        test_proxy.install_binary(HANDOFF, self.binary)

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

    def reexecs_under_load(self, args, command, mode, proxy="http"):
        sup = self.start(["--proxy", proxy, *args], command)
        apps = self.app_pids()
        self.assertTrue(apps)
        url = f"http://127.0.0.1:{sup.port}/"
        script, count = self.reexec_script()
        # One re-exec alone first, timed: the load lasts long enough for ten of them one after
        # the other (a sanitized build on a busy machine takes seconds each, and under load up
        # to three times what the one alone took: seen in CI, 1.7 s alone, 5 s under load).
        started = time.monotonic()
        r = subprocess.run([script], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        os.remove(count)
        seconds = max(SECONDS, int(REEXECS * 3.5 * (time.monotonic() - started)) + 10)
        # check runs the script back to back; the script stops re-executing after REEXECS.
        json_path = os.path.join(self.tmp, "load.json")
        cmd = [HANDOFF, "check", url, "--duration", f"{seconds}s", "-c", str(test_proxy.CONNECTIONS),
               "--rate", "500", "--mode", mode, "--json", json_path, "-q", "--reload-cmd", script,
               "--reload-every", "100ms"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
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
        self.assertEqual(status["reexecs"], REEXECS + 1, status)
        self.assertEqual(self.app_pids(), apps, "the app was restarted")
        self.assertIsNone(sup.proc.poll())
        self.assertEqual(self.running_inode(), os.stat(self.binary).st_ino)
        self.assertEqual(len(re.findall(r"re-executed: ", sup.log())), REEXECS + 1)
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

    # The other kinds of private upstream: a TCP socket passed as fd 3, a port the app binds.
    def test_python_tcp_upstream_keepalive_ten_reexecs(self):
        self.reexecs_under_load(["--upstream", "fds:tcp", "--ready", "http:///"],
                                [sys.executable, PY_APP], "keepalive")

    def test_python_port_upstream_keepalive_ten_reexecs(self):
        self.reexecs_under_load(["--upstream", "port", "--ready", "tcp"],
                                [sys.executable, PY_APP, "--port"], "keepalive")

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
        # Slow enough to be in flight still when the probe of the new binary is over.
        s.sendall(b"GET /slow?ms=4000 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /?second HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_in_flight(1)
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        self.assertIn("(1 re-execs)", r.stdout)
        responses = Responses(s)
        first = responses.next()
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), first)
        try:
            second = responses.next()
        except TimeoutError:
            self.fail("no second response:\n" + sup.log())
        self.assertTrue(second.startswith(b"HTTP/1.1 200"), second)
        self.assertIn("1 client connections adopted", sup.log())
        # The second request crossed as bytes read ahead (the relay had read both at once).
        crossed = re.search(r"1 client connections \((\d+) bytes read ahead\)", sup.log())
        self.assertTrue(crossed and int(crossed.group(1)) > 0, sup.log())
        # Half a request at the moment of the next re-exec: the rest comes after it.
        s.sendall(b"GET /?third HTTP/1.1\r\nHost: a\r\n")
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        self.assertEqual(re.findall(r"\((\d+) bytes read ahead\)", sup.log())[-1],
                         str(len(b"GET /?third HTTP/1.1\r\nHost: a\r\n")))
        s.sendall(b"\r\n")
        third = responses.next()
        self.assertTrue(third.startswith(b"HTTP/1.1 200"), third)
        s.close()
        self.assertEqual(self.app_pids(), apps)
        proxy = sup.status()["proxy"]
        self.assertEqual(proxy["bad_gateway"], 0)
        # The front's totals go on across the re-execs: three requests, one connection.
        self.assertEqual((proxy["requests"], proxy["accepted"]), (3, 1), proxy)

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

    def write_binary(self, script):
        nxt = self.binary + ".next"
        with open(nxt, "w") as f:
            f.write(script.replace("REAL", HANDOFF))
        os.chmod(nxt, 0o755)
        os.rename(nxt, self.binary)

    def test_a_build_that_reads_version_1_only_is_refused_at_the_probe(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], [sys.executable, PY_APP])
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(s).startswith(b"HTTP/1.1 200"))
        # An older build, as its probe answers: it reads version 1 only.
        self.write_binary("#!/bin/sh\necho 'handoff-reexec state 1 1 handoff 0.0.9'\n")
        r = self.reexec()
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("handoff 0.0.9 reads state versions 1 to 1; this one writes version 2",
                      r.stdout + r.stderr)
        self.assertIn("keeps running", r.stdout + r.stderr)
        # Refused before anything was parked: the connection goes on at once.
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(s).startswith(b"HTTP/1.1 200"))
        s.close()
        self.assertNotIn("parking", sup.log())

    def test_a_new_image_that_refuses_the_state_gives_the_connections_back(self):
        sup = self.start(["--proxy", "http", "--ready", "http:///"], [sys.executable, PY_APP])
        apps = self.app_pids()
        old = self.running_inode()
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=10)
        s.sendall(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /?second HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_in_flight(1)
        # Passes the probe, then refuses the state (as a build that reads version 1 only and
        # claims more would): the old image comes back with its state and the connections.
        self.write_binary("#!/bin/sh\n[ -n \"$HANDOFF_REEXEC_PROBE\" ] && exec REAL\n"
                          "HANDOFF_STATE_VERSION_MAX=1 exec REAL \"$@\"\n")
        r = self.reexec()
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("refused the state: state version 2", r.stdout + r.stderr)
        self.assertEqual(self.running_inode(), old)
        responses = Responses(s)
        for i in range(2):
            try:
                answer = responses.next()
            except TimeoutError:
                self.fail(f"no response {i + 1}:\n{sup.log()}")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(responses.next().startswith(b"HTTP/1.1 200"))
        s.close()
        self.assertEqual(self.app_pids(), apps)
        self.assertEqual(sup.status()["reexecs"], 0)
        # And a good binary afterwards re-executes as usual.
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())

    def reexec_while_retiring(self, mode, ms):
        """A slow request of `ms` in flight to generation 1, a reload (generation 1 retires
        with it), then a re-exec: the supervisor and the connection the request is on."""
        sup = self.start(["--proxy", mode, "--ready", "http:///"], [sys.executable, PY_APP])
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        s.sendall(f"GET /slow?ms={ms} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        self.wait_in_flight(1)
        r = sup.reload()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        states = {g["id"]: g["state"] for g in sup.status()["generations"]}
        self.assertEqual(states.get(1), "retiring", states)
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        return sup, s

    def test_reexec_during_a_drain(self):
        # Generation 1 is retired with our request in flight: it drains while we re-execute.
        sup, s = self.reexec_while_retiring("http", 5000)
        answer = Responses(s).next()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        # Generation 1 drained and went; generation 2 serves the same connection.
        sup.wait_line(r"generation 1: stopped", 30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(Responses(s).next().startswith(b"HTTP/1.1 200"))
        s.close()
        gens = sup.status()["generations"]
        self.assertEqual([(g["id"], g["state"]) for g in gens], [(2, "serving")], gens)
        self.assertEqual(sup.stop(), 0, sup.log())
        self.assertEqual([f for f in os.listdir(self.tmp) if ".g" in f], [])

    def test_reexec_while_the_app_crashes_and_restarts(self):
        modes = os.path.join(self.tmp, "modes")
        with open(modes, "w") as f:
            f.write("serve\ncrash\ncrash\nserve\n")
        sup = self.start(["--proxy", "http", "--ready", "http:///"],
                         [sys.executable, PY_APP, modes])
        [first] = self.app_pids()
        s = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = Responses(s)
        self.assertTrue(responses.next().startswith(b"HTTP/1.1 200"))
        # The app dies unasked; its restarts crash twice (backoff 100 ms, 200 ms) before one
        # serves again; the re-exec comes in the middle of that.
        os.kill(first, signal.SIGKILL)
        sup.wait_line(r"restarting its process in", 20)
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        # The kept connection's next request waits for the process that serves again.
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = responses.next()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer + sup.log().encode())
        s.close()
        gens = sup.status()["generations"]
        self.assertEqual([(g["id"], g["state"]) for g in gens], [(1, "serving")], gens)
        [now] = self.app_pids()
        self.assertNotEqual(now, first)
        self.assertEqual(gens[0]["processes"][0]["restarts"], 3, gens)
        self.assertEqual(sup.stop(), 0, sup.log())

    # --proxy tcp: each client connection crosses with its upstream connection to the app.
    def test_tcp_python_keepalive_ten_reexecs(self):
        self.reexecs_under_load(["--ready", "http:///"], [sys.executable, PY_APP], "keepalive",
                                proxy="tcp")

    @unittest.skipUnless(GO_APP, "HANDOFF_GO_APP not set (go not installed)")
    def test_tcp_go_close_ten_reexecs(self):
        self.reexecs_under_load([], [GO_APP], "close", proxy="tcp")

    def test_tcp_requests_in_flight_and_half_closes_cross_a_reexec(self):
        sup = self.start(["--proxy", "tcp", "--ready", "http:///"], [sys.executable, PY_APP])
        apps = self.app_pids()
        # A slow request with another behind it: the relay passes both on at once (it knows no
        # requests) and is idle both ways while the app works; the answers come after the
        # re-exec on the same two connections, now the new image's.
        kept = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        kept.sendall(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /?second HTTP/1.1\r\nHost: a\r\n\r\n")
        # The client is done sending (FIN, passed on to the app as a half-close); the answer
        # still has to come back to it through the relay's other direction.
        half = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        half.sendall(b"GET /slow?ms=3000 HTTP/1.0\r\nHost: a\r\n\r\n")
        half.shutdown(socket.SHUT_WR)
        self.wait_in_flight(2)
        self.replace_binary()
        r = self.reexec()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
        self.assertIn("2 client connections adopted", sup.log())
        responses = Responses(kept)
        for i in range(2):
            try:
                answer = responses.next()
            except TimeoutError:
                self.fail(f"no response {i + 1}:\n{sup.log()}")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        whole = b""
        while True:
            data = half.recv(65536)
            if not data:
                break
            whole += data
        self.assertTrue(re.match(rb"HTTP/1\.[01] 200 .*\r\n\r\n", whole, re.S), whole)
        half.close()
        # A new image that refuses the state (a version-2 reader; --proxy tcp writes 3): the
        # old image comes back with its connections, upstream connections included.
        kept.sendall(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_in_flight(1)
        self.write_binary("#!/bin/sh\n[ -n \"$HANDOFF_REEXEC_PROBE\" ] && exec REAL\n"
                          "HANDOFF_STATE_VERSION_MAX=2 exec REAL \"$@\"\n")
        r = self.reexec()
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("refused the state: state version 3", r.stdout + r.stderr)
        try:
            answer = responses.next()
        except TimeoutError:
            self.fail("no response after the refused state:\n" + sup.log())
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(responses.next().startswith(b"HTTP/1.1 200"))
        kept.close()
        self.assertEqual(self.app_pids(), apps)
        proxy = sup.status()["proxy"]
        # Two connections relayed, counted once each across the re-exec and the way back.
        self.assertEqual((proxy["requests"], proxy["accepted"]), (2, 2), proxy)
        self.assertEqual(sup.status()["reexecs"], 1)
        self.assertEqual(sup.stop(), 0, sup.log())

    def test_tcp_reexec_during_a_drain(self):
        # Generation 1 is retired with a relay to it open: the relay crosses, and the new
        # image waits for it before generation 1 counts as drained.
        sup, s = self.reexec_while_retiring("tcp", 4000)
        states = {g["id"]: g["state"] for g in sup.status()["generations"]}
        self.assertEqual(states.get(1), "retiring", (states, sup.log()))
        responses = Responses(s)
        answer = responses.next()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        # The connection stays with generation 1 (a TCP relay never changes its upstream); it
        # drains once the client closes it, then generation 1 goes.
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(responses.next().startswith(b"HTTP/1.1 200"))
        s.close()
        sup.wait_line(r"generation 1: stopped", 30)
        gens = sup.status()["generations"]
        self.assertEqual([(g["id"], g["state"]) for g in gens], [(2, "serving")], gens)
        self.assertEqual(sup.stop(), 0, sup.log())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
