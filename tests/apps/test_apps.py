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
Environment: HANDOFF_GO_DRAIN_APP (the built examples/apps/go; its tests are skipped without it),
HANDOFF_GO_APP (tests/proxy/go_app, for --without). Node tests are skipped without `node`.

Waits are on lines of the supervisor's log and on process exits; reloads are paced by
`handoff check --reload-every`, each one waits for the new generation to take over.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import warnings

HANDOFF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HANDOFF", "handoff")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "proxy"))
from test_proxy import Supervisor  # noqa: E402  (handoff run in its own session, its log read)

RELOADS = 10
CONNECTIONS = 10
# Load per test: time for RELOADS reloads back to back on a busy machine (node starts slowest).
SECONDS = {"go": 10, "python": 10, "node": 25}
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
    """RELOADS reloads under load; returns check's JSON, its output, and the supervisor's log."""
    sup = Supervisor(tmp, args, command)
    try:
        sup.wait_line(r"generation 1 took over", 60)
        # One reload per run of the command, RELOADS in all; later runs do nothing.
        counter = os.path.join(tmp, "reloads")
        reload_cmd = (f'n=$(cat {counter} 2>/dev/null || echo 0); [ "$n" -ge {RELOADS} ] && exit 0; '
                      f'echo $((n + 1)) > {counter}; exec {HANDOFF} reload --control {sup.control}')
        out = os.path.join(tmp, "check.json")
        r = subprocess.run(
            [HANDOFF, "check", f"http://127.0.0.1:{sup.port}/", "--duration", f"{seconds}s",
             "-c", str(CONNECTIONS), "--mode", mode, "--json", out, "-q",
             "--reload-cmd", reload_cmd, "--reload-every", "300ms"],
            capture_output=True, text=True, timeout=seconds + 60)
        if not os.path.exists(out):
            raise AssertionError(f"check exited {r.returncode} without its report: {r.stderr}")
        with open(out) as f:
            result = json.load(f)
        ran = int(open(counter).read()) if os.path.exists(counter) else 0
        if ran < RELOADS:
            raise AssertionError(f"only {ran} of {RELOADS} reloads ran in {seconds} s:\n{sup.log()}")
        sup.wait_line(rf"generation {RELOADS + 1} took over", 10)
        status = sup.stop()
        return result, r.stdout + r.stderr, sup.log(), status
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
        restarts = result["restarts"]
        self.assertTrue(all(x["success"] for x in restarts), restarts)
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


def measure(apps):
    """Failed requests and reconnects of each app and mode: the figures of docs/apps.md."""
    for lang, (args, command) in apps.items():
        if not command[0]:
            print(f"{lang}: skipped (not built or not installed)")
            continue
        for mode in ("keepalive", "close"):
            with tempfile.TemporaryDirectory() as tmp:
                result, _, _, _ = reload_under_load(tmp, args, command, mode, SECONDS[lang])
            failures = {k: v for k, v in result["outcomes"].items() if k != "ok" and v}
            print(f"{lang:7} {mode:9} requests {result['requests']:7} failed {result['failed']:4} "
                  f"reconnects {result['reconnects']} {failures}", flush=True)


if __name__ == "__main__":
    if "--without" in sys.argv[2:]:
        measure(WITHOUT)
    elif "--with" in sys.argv[2:]:
        measure(APPS)
    else:
        unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
