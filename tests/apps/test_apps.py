#!/usr/bin/env python3
"""Process tests of the drain recipes of docs/apps.md (examples/apps/<lang>): each app runs
directly under `handoff run` (no --proxy), is reloaded RELOADS times while `handoff check` sends
keep-alive or new-connection-per-request load that never retries, and must fail no request.

Usage: test_apps.py HANDOFF [unittest arguments]
       test_apps.py HANDOFF --without   the same load against the apps without their recipe
                                        (tests/proxy/go_app, tests/proxy/fd3_app.py,
                                        node_without_recipe.js): prints the failures, asserts
                                        nothing (the evidence in docs/apps.md)
       test_apps.py HANDOFF --with      the same figures for the recipes
                                        (either one followed by go, python, node: those only)
Environment: HANDOFF_GO_DRAIN_APP (the built examples/apps/go; its tests are skipped without it),
HANDOFF_GO_APP (tests/proxy/go_app, for --without). Node tests are skipped without `node`.

Waits are on lines of the supervisor's log and on process exits, never a sleep.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

HANDOFF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HANDOFF", "handoff")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "proxy"))
from test_proxy import Supervisor  # noqa: E402  (handoff run in its own session, its log read)

RELOADS = 10
CONNECTIONS = 10
# Load per test: time for RELOADS reloads one after the other on a busy machine, sanitized
# supervisor included (node and python start in up to about 1 s each).
SECONDS = {"go": 8, "python": 25, "node": 30}
GO_DRAIN_APP = os.environ.get("HANDOFF_GO_DRAIN_APP", "")
NODE = shutil.which("node") or ""

# Each app: (handoff run arguments, command), with and without its recipe.
APPS = {
    "go": ([], [GO_DRAIN_APP]),
    "python": (["--nonblocking"], ["python3", os.path.join(ROOT, "examples/apps/python/app.py")]),
    "node": ([], [NODE, os.path.join(ROOT, "examples/apps/node/app.js")]),
}
WITHOUT = {
    "go": ([], [os.environ.get("HANDOFF_GO_APP", "")]),
    "python": (["--ready", "delay:300ms"], ["python3", os.path.join(ROOT, "tests/proxy/fd3_app.py")]),
    "node": ([], [NODE, os.path.join(HERE, "node_without_recipe.js")]),
}


def reload_under_load(tmp, args, command, mode, seconds):
    """RELOADS reloads under load; returns check's JSON, its output, the supervisor's log and
    its exit status. Each reload is a SIGHUP to the supervisor; the next one waits until the
    new generation took over and the old one stopped, and all must be over before the load."""
    sup = Supervisor(tmp, args, command)
    try:
        sup.wait_line(r"generation 1 took over", 60)
        out = os.path.join(tmp, "check.json")
        load = subprocess.Popen(
            [HANDOFF, "check", f"http://127.0.0.1:{sup.port}/", "--duration", f"{seconds}s",
             "-c", str(CONNECTIONS), "--mode", mode, "--json", out, "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        began = time.monotonic()
        try:
            for n in range(1, RELOADS + 1):
                with sup.cond:
                    mark = len(sup.lines)
                os.kill(sup.proc.pid, signal.SIGHUP)
                sup.wait_line(rf"generation {n + 1} took over", seconds, start=mark)
                sup.wait_line(rf"generation {n}: stopped", seconds, start=mark)
                if load.poll() is not None:
                    raise AssertionError(f"the load ({seconds} s) ended before reload {n} of "
                                         f"{RELOADS} was over:\n{sup.log()}")
            reloads_s = time.monotonic() - began
            stdout, stderr = load.communicate(timeout=seconds + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.communicate()
        if not os.path.exists(out):
            raise AssertionError(f"check exited {load.returncode} without its report: {stderr}")
        with open(out) as f:
            result = json.load(f)
        result["reloads_s"] = reloads_s
        status = sup.stop()
        return result, stdout + stderr, sup.log(), status
    finally:
        sup.kill()


class AppsTest(unittest.TestCase):
    def setUp(self):
        # The supervisor's log pipe is read by a thread until the process is gone.
        warnings.simplefilter("ignore", ResourceWarning)
        self.tmpdir = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmpdir.cleanup)

    def run_app(self, lang, mode):
        args, command = APPS[lang]
        result, out, log, status = reload_under_load(self.tmpdir.name, args, command, mode,
                                                          SECONDS[lang])
        self.assertGreater(result["requests"], 0)
        self.assertEqual(result["failed"], 0, f"{result['outcomes']}\n{out}")
        self.assertEqual(status, 0, log)

    @unittest.skipUnless(GO_DRAIN_APP, "HANDOFF_GO_DRAIN_APP not built (golang-go missing)")
    def test_go_keepalive(self):
        self.run_app("go", "keepalive")

    @unittest.skipUnless(GO_DRAIN_APP, "HANDOFF_GO_DRAIN_APP not built (golang-go missing)")
    def test_go_close(self):
        self.run_app("go", "close")

    def test_python_keepalive(self):
        self.run_app("python", "keepalive")

    def test_python_close(self):
        self.run_app("python", "close")

    @unittest.skipUnless(NODE, "node not installed (Debian's nodejs)")
    def test_node_keepalive(self):
        self.run_app("node", "keepalive")

    @unittest.skipUnless(NODE, "node not installed (Debian's nodejs)")
    def test_node_close(self):
        self.run_app("node", "close")


def measure(apps, only):
    """Failed requests and reconnects of each app and mode: the figures of docs/apps.md."""
    for lang, (args, command) in apps.items():
        if only and lang not in only:
            continue
        if not command[0]:
            print(f"{lang}: skipped (not built or not installed)")
            continue
        for mode in ("keepalive", "close"):
            with tempfile.TemporaryDirectory() as tmp:
                result, _, _, _ = reload_under_load(tmp, args, command, mode, SECONDS[lang])
            failures = {k: v for k, v in result["outcomes"].items() if k != "ok" and v}
            print(f"{lang:7} {mode:9} requests {result['requests']:7} failed {result['failed']:4} "
                  f"reconnects {result['reconnects']} reloads in {result['reloads_s']:.1f} s {failures}", flush=True)


if __name__ == "__main__":
    if sys.argv[2:3] == ["--without"]:
        measure(WITHOUT, sys.argv[3:])
    elif sys.argv[2:3] == ["--with"]:
        measure(APPS, sys.argv[3:])
    else:
        unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
