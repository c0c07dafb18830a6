#!/usr/bin/env python3
"""`handoff reexec` between two builds: the binary of an older commit of this repository
(tests/supervisor/build_old_handoff builds it) and the one under test, renamed in turn over the
path the supervisor runs from, as a package upgrade and a downgrade leave it, under load by
`handoff check` (a client that never retries). Each `handoff reexec` is asked by the binary
just installed, so the clients of both builds talk to the supervisors of both.

The commits:
  3103c1e  the first `handoff reexec`: writes and reads state version 1 only, refuses a
           re-exec with --proxy;
  9c1d1ae  state version 2: the connections of --proxy http cross the exec.
A build under test without a front still writes version 1, so direct mode goes both ways with
3103c1e; --proxy http goes both ways with 9c1d1ae; and a downgrade to 3103c1e with --proxy http
is refused at the probe, the old image serving on.

Usage: test_reexec_two_builds.py HANDOFF OLD_BUILDS [unittest arguments]
OLD_BUILDS holds <commit>/handoff; a test whose binary is not there is skipped, with the reason
(the build step, reexec.two_builds.build, says why it built nothing: e.g. a shallow clone).

Every wait has a deadline; events are lines of the supervisor's log, answers of its control
socket, or process exits, never a sleep.
"""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proxy"))
import test_proxy  # noqa: E402  (its Supervisor; it reads argv[1] as HANDOFF the same way)
from test_proxy import HANDOFF, PY_APP, read_response  # noqa: E402

OLD_BUILDS = sys.argv[2] if len(sys.argv) > 2 else ""
V1 = "3103c1e"
V2 = "9c1d1ae"


def old_build(commit):
    return os.path.join(OLD_BUILDS, commit, "handoff")


def need(*commits):
    missing = [c for c in commits if not os.access(old_build(c), os.X_OK)]
    return unittest.skipIf(
        missing, f"no build of {' '.join(missing)} in {OLD_BUILDS} (see reexec.two_builds.build)")


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TwoBuildsTest(test_proxy.SupervisorCase):
    def setUp(self):
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "bin"))
        self.binary = os.path.join(self.tmp, "bin", "handoff")

    def install(self, source):
        test_proxy.install_binary(source, self.binary)

    def start(self, first, args):
        """`handoff run` from the path, with the first build there: with --proxy, readiness is
        probed on the app's own socket; without, the app says READY=1 itself."""
        self.install(first)
        proxy = "--proxy" in args
        if proxy:
            args = [*args, "--ready", "http:///"]
        else:
            os.environ["FD3_APP_NOTIFY"] = "1"  # the supervisor's environment, and its apps'
        try:
            self.sup = test_proxy.Supervisor(self.tmp, args, [sys.executable, PY_APP],
                                             binary=self.binary)
        finally:
            os.environ.pop("FD3_APP_NOTIFY", None)
        self.sup.wait_line(r"generation 1 took over", 60)
        return self.sup

    def app_pids(self):
        return [p["pid"] for g in self.sup.status()["generations"] for p in g["processes"]]

    def running_image(self):
        """The build the supervisor's pid runs now."""
        return digest(f"/proc/{self.sup.proc.pid}/exe")

    def script(self, sequence):
        """What check runs as its "reload": the next build of `sequence` renamed over the path,
        then `handoff reexec` by that build; after the last one, nothing (it exits 0). Each
        outcome goes to a file of its own."""
        path = os.path.join(self.tmp, "reexec.sh")
        count = os.path.join(self.tmp, "count")
        cases = "\n".join(f"  {i}) src={b} ;;" for i, b in enumerate(sequence))
        with open(path, "w") as f:
            f.write(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0)
case $n in
{cases}
  *) exit 0 ;;
esac
cp "$src" {self.binary}.next && mv {self.binary}.next {self.binary} || exit 9
{self.binary} reexec --control {self.sup.control} >{self.tmp}/out.$n 2>&1
status=$?
echo $status >{self.tmp}/status.$n
echo $((n + 1)) >{count}
exit $status
""")
        os.chmod(path, 0o755)
        return path, count

    def outcome(self, n):
        with open(os.path.join(self.tmp, f"status.{n}")) as f:
            status = int(f.read())
        with open(os.path.join(self.tmp, f"out.{n}")) as f:
            return status, f.read()

    def check(self, script, seconds, when=("--reload-every", "100ms")):
        """A keep-alive load for `seconds`, running `script` back to back (by default) or
        once (`when` = --reload-at D)."""
        json_path = os.path.join(self.tmp, "load.json")
        cmd = [HANDOFF, "check", f"http://127.0.0.1:{self.sup.port}/", "--duration",
               f"{seconds}s", "-c", str(test_proxy.CONNECTIONS), "--rate", "500", "--mode",
               "keepalive", "--json", json_path, "-q", "--reload-cmd", script, *when]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        self.assertTrue(os.path.exists(json_path), r.stderr)
        with open(json_path) as f:
            return json.load(f), r

    def there_and_back(self, first, args, sequence):
        """Starts on `first`, then re-execs into each build of `sequence` in turn under a
        keep-alive load: every re-exec succeeds, no request fails, no connection is opened
        again, the supervisor's pid and the app's pids stay, and the last build runs."""
        sup = self.start(first, args)
        pid = sup.proc.pid
        apps = self.app_pids()
        self.assertTrue(apps)
        self.assertEqual(self.running_image(), digest(first))
        # One re-exec onto the same build first, timed: the load lasts long enough for all of
        # the sequence one after the other (seconds each on a busy machine, up to three times
        # more under load).
        script, count = self.script([first])
        started = time.monotonic()
        r = subprocess.run([script], capture_output=True, text=True, timeout=90)
        self.assertEqual(r.returncode, 0, self.outcome(0)[1] + sup.log())
        seconds = max(8, int(len(sequence) * 3.5 * (time.monotonic() - started)) + 6)
        for f in (count, "status.0", "out.0"):
            os.remove(os.path.join(self.tmp, f))
        script, count = self.script(sequence)
        result, r = self.check(script, seconds)
        outcomes = [self.outcome(n) for n in range(len(sequence))
                    if os.path.exists(os.path.join(self.tmp, f"status.{n}"))]
        self.assertEqual(len(outcomes), len(sequence), f"{outcomes}\n{r.stdout}\n{sup.log()}")
        for n, (status, out) in enumerate(outcomes):
            self.assertEqual(status, 0, f"re-exec {n + 1} into {sequence[n]}: {out}\n{sup.log()}")
        self.assertEqual(len([x for x in result["restarts"] if not x["success"]]), 0,
                         r.stdout + sup.log())
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["failed"], 0, r.stdout + sup.log())
        self.assertEqual(result["reconnects"], 0, r.stdout)
        # The same pid, now running the last build; the app never restarted.
        self.assertIsNone(sup.proc.poll(), sup.log())
        status = sup.status()
        self.assertEqual(status["pid"], pid)
        self.assertEqual(self.running_image(), digest(sequence[-1]))
        self.assertEqual(self.app_pids(), apps, "the app was restarted")
        self.assertEqual(len(re.findall(r"re-executed: ", sup.log())), len(sequence) + 1)
        # The state machine carries on in the last build: a reload, then a clean stop.
        rr = sup.reload()
        self.assertEqual(rr.returncode, 0, rr.stdout + rr.stderr + sup.log())
        self.assertNotEqual(self.app_pids(), apps)
        self.assertEqual(sup.stop(), 0, sup.log())

    @need(V1)
    def test_direct_v1_to_current_and_back(self):
        old = old_build(V1)
        self.there_and_back(old, [], [HANDOFF, old, HANDOFF, old])

    @need(V2)
    def test_proxy_http_v2_to_current_and_back(self):
        old = old_build(V2)
        self.there_and_back(old, ["--proxy", "http"], [HANDOFF, old, HANDOFF, old])

    @need(V1)
    def test_proxy_http_downgrade_to_v1_is_refused_at_the_probe(self):
        self.downgrade_refused(old_build(V1), "http", 1, 2)

    @need(V2)
    def test_proxy_tcp_downgrade_to_v2_is_refused_at_the_probe(self):
        # --proxy tcp writes version 3 (its connections carry their upstream connection); a
        # build that reads 2 would take them for HTTP clients.
        self.downgrade_refused(old_build(V2), "tcp", 2, 3)

    def downgrade_refused(self, old, mode, reads, writes):
        sup = self.start(HANDOFF, ["--proxy", mode])
        pid = sup.proc.pid
        apps = self.app_pids()
        kept = socket.create_connection(("127.0.0.1", sup.port), timeout=30)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(kept).startswith(b"HTTP/1.1 200"))
        # Under load, 3103c1e renamed over the path, then its `handoff reexec`.
        script, count = self.script([old])
        result, r = self.check(script, 6, ("--reload-at", "1s"))
        status, out = self.outcome(0)
        self.assertEqual(status, 1, out)
        self.assertRegex(out, rf"reads state versions 1 to {reads}; this one writes version "
                              rf"{writes}")
        self.assertIn("keeps running", out)
        self.assertEqual([x["success"] for x in result["restarts"]], [False], r.stdout)
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["failed"], 0, r.stdout + sup.log())
        self.assertEqual(result["reconnects"], 0, r.stdout)
        # Refused before anything was parked: the image, the pid, the app and the connections
        # are the ones from before.
        self.assertNotIn("parking", sup.log())
        self.assertEqual(self.running_image(), digest(HANDOFF))
        self.assertEqual(sup.status()["pid"], pid)
        self.assertEqual(sup.status()["reexecs"], 0)
        self.assertEqual(self.app_pids(), apps)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(read_response(kept).startswith(b"HTTP/1.1 200"))
        kept.close()
        self.assertEqual(sup.stop(), 0, sup.log())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[3:]], verbosity=2)
