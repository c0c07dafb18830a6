#!/usr/bin/env python3
"""What real apps met under `handoff run` (issue 22, items 16-20), with real processes:
sd_notify libraries that connect to NOTIFY_SOCKET as a path, an app that never notifies, $PORT
in the app's arguments, the listener options systemd has (NoDelay=, Backlog=), a reload asked
for before the first generation is ready.

Usage: test_interop.py HANDOFF [unittest arguments]
Waits are on lines of the supervisor's log and on process exits, never a sleep.
"""
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
import warnings

HANDOFF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HANDOFF", "handoff")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "proxy"))
import test_proxy  # noqa: E402
from test_proxy import Supervisor  # noqa: E402  (handoff run in its own session, its log read)

test_proxy.HANDOFF = HANDOFF
APP = [sys.executable, os.path.join(HERE, "interop_app.py")]


def get(port, path="/"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


class InteropTest(unittest.TestCase):
    def setUp(self):
        warnings.simplefilter("ignore", ResourceWarning)
        tmpdir = tempfile.TemporaryDirectory()
        self.addCleanup(tmpdir.cleanup)
        self.tmp = tmpdir.name
        self.sup = None

    def tearDown(self):
        if self.sup:
            try:
                self.sup.stop()
            finally:
                self.sup.kill()

    def start(self, args, command, ready=r"generation 1 took over", timeout=30, env_port=None,
              **kw):
        # PORT in handoff's own environment (Popen passes os.environ): as a platform sets it.
        saved = os.environ.pop("PORT", None)
        if env_port:
            os.environ["PORT"] = env_port
        try:
            self.sup = Supervisor(self.tmp, args, command, **kw)
        finally:
            os.environ.pop("PORT", None)
            if saved is not None:
                os.environ["PORT"] = saved
        if ready:
            self.sup.wait_line(ready, timeout)
        return self.sup

    # 16: the NOTIFY_SOCKET is a file beside the control socket, 0600, that a library which
    # knows only paths reaches; it survives `handoff reexec` and is gone after the stop.
    def test_notify_socket_is_a_path_that_survives_reexec_and_goes_at_stop(self):
        sup = self.start([], [*APP, "--notify", "raw"])
        path = os.path.join(self.tmp, "control.notify")
        st = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        r = sup.ctl("reexec")
        self.assertEqual(r.returncode, 0, r.stderr + sup.log())
        self.assertTrue(os.path.exists(path))
        r = sup.reload()
        self.assertEqual(r.returncode, 0, r.stderr + sup.log())
        self.assertEqual(sup.stop(), 0, sup.log())
        self.assertFalse(os.path.exists(path), "the notify socket outlived the supervisor")
        self.assertEqual(os.listdir(self.tmp), [])

    def test_libsystemd_and_systemd_notify_reach_the_path(self):
        tools = ["libsystemd"] + (["systemd-notify"] if shutil.which("systemd-notify") else [])
        for how in tools:
            with self.subTest(how):
                sup = self.start([], [*APP, "--notify", how])
                self.assertEqual(sup.status()["generations"][0]["processes"][0]["status"],
                                 "serving")
                self.assertEqual(sup.stop(), 0, sup.log())
                self.sup = None

    def test_abstract_notify_socket_on_request(self):
        sup = self.start(["--notify-socket", "abstract"], [*APP, "--notify", "libsystemd"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "control.notify")))
        self.assertEqual(sup.stop(), 0, sup.log())

    def test_a_stale_notify_socket_of_a_killed_supervisor_is_replaced(self):
        sup = self.start([], [*APP, "--notify", "raw"])
        sup.kill()  # SIGKILL to the whole session: the files stay behind
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "control.notify")))
        self.start([], [*APP, "--notify", "raw"])

    # 17: an app that never notifies is told apart from a slow one, with the ways out.
    def test_a_silent_app_is_told_what_to_use_instead(self):
        sup = self.start(["--ready-timeout", "500ms"], [*APP, "--notify", "none"], ready=None)
        line = sup.wait_line(r"generation 1 failed", 30)
        self.assertIn("nothing at all arrived on NOTIFY_SOCKET", line)
        for alternative in ("--ready delay:", "--ready http:///PATH", "--proxy"):
            self.assertIn(alternative, line)
        self.assertIn("nothing at all arrived", sup.status()["last_start_failure"])

    # 20: a reload before the first generation is ready says so, not "already in progress".
    def test_a_reload_while_the_first_generation_starts_says_so(self):
        sup = self.start([], [*APP, "--notify", "none"], ready=r"generation 1: started pid")
        r = sup.reload()
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("generation 1 (the first) is still starting", r.stderr)
        self.assertNotIn("already in progress", r.stderr)

    # 18: $PORT in the arguments, without `sh -c`.
    def test_port_in_the_arguments_is_expanded(self):
        sup = self.start(["--proxy", "http", "--upstream", "port", "--ready", "tcp"],
                         [*APP, "--notify", "none", "--port", "$PORT", "--gen=${HANDOFF_GENERATION}",
                          "$HOME", "$$PORT"])
        status, body = get(sup.port)
        self.assertEqual(status, 200)
        self.assertEqual(body["argv"][2], "--port")
        self.assertGreater(int(body["argv"][3]), 0)
        self.assertEqual(body["argv"][4:], ["--gen=1", "$HOME", "$PORT"])

    def test_a_named_sockets_port_in_the_arguments_is_expanded(self):
        # Two public sockets: the first one's upstream port is $PORT, web-1's is
        # $HANDOFF_PORT_WEB_1; the app binds both (a generation is routed to once every port
        # it was given has its listener).
        sup = self.start(["-l", "web-1=127.0.0.1:0", "--proxy", "http", "--upstream", "port",
                          "--ready", "delay:200ms"],
                         [*APP, "--notify", "none", "--port", "$PORT", "--also-port",
                          "${HANDOFF_PORT_WEB_1}"])
        line = sup.wait_line(r"holding web-1=tcp 127\.0\.0\.1:\d+", 5)
        status, body = get(int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1)))
        self.assertEqual(status, 200)
        self.assertGreater(int(body["argv"][5]), 0)
        self.assertNotEqual(body["argv"][3], body["argv"][5])

    def test_port_in_the_arguments_without_upstream_port_is_refused(self):
        env = {k: v for k, v in os.environ.items() if k != "PORT"}
        r = subprocess.run([HANDOFF, "run", "--control", os.path.join(self.tmp, "c.sock"),
                            "-l", "127.0.0.1:0", "--", *APP, "--port", "$PORT"],
                           capture_output=True, text=True, timeout=20, env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("$PORT", r.stderr)
        self.assertIn("--upstream port", r.stderr)
        # A PORT of handoff's own environment (a platform's) is the app's: not refused, and
        # left as written for the app (or its shell) to read.
        sup = self.start([], [*APP, "--notify", "raw", "$PORT"], env_port="8765")
        _, body = get(sup.port)
        self.assertEqual(body["argv"][2:], ["$PORT"])

    # 19: --nodelay reaches the app's listener and what it accepts; --backlog the listen queue.
    def test_nodelay_and_backlog_reach_the_socket(self):
        sup = self.start([], [*APP, "--notify", "raw"])
        _, plain = get(sup.port)
        self.assertEqual((plain["nodelay_listener"], plain["nodelay_connection"]), (0, 0))
        sup.stop()
        sup = self.start(["--nodelay", "--backlog", "7"], [*APP, "--notify", "raw"])
        _, body = get(sup.port)
        self.assertNotEqual(body["nodelay_listener"], 0)
        self.assertNotEqual(body["nodelay_connection"], 0)
        # ss: Send-Q of a listening socket is its backlog.
        ss = subprocess.run(["ss", "-ltnH", f"sport = :{sup.port}"], capture_output=True,
                            text=True, timeout=10)
        self.assertEqual(ss.stdout.split()[2], "7", ss.stdout)

    def test_nodelay_reaches_a_tcp_upstream(self):
        sup = self.start(["--proxy", "http", "--upstream", "fds:tcp", "--nodelay"],
                         [*APP, "--notify", "raw"])
        _, body = get(sup.port)
        self.assertNotEqual(body["nodelay_listener"], 0)
        self.assertNotEqual(body["nodelay_connection"], 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
