#!/usr/bin/env python3
"""Process tests of `handoff run --proxy https`: TLS ends in the supervisor, the app (fd3_app.py)
speaks plaintext on its private socket. Clients the project did not write: curl, `openssl
s_client`, and Python's ssl module. Certificates are made with `openssl` for each test.

Usage: test_proxy_tls.py HANDOFF [unittest arguments]
Environment: HANDOFF_PROXY_TLS_RELOADS (reloads of the keep-alive test, default 10).

Every wait has a deadline; events are lines of the supervisor's log, answers of its control
socket, bytes on a socket, or process exits, never a sleep.
"""
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

from test_proxy import HANDOFF, PY_APP, Supervisor, SupervisorCase, read_response

RELOADS = int(os.environ.get("HANDOFF_PROXY_TLS_RELOADS", "10"))


def make_cert(directory, stem, serial):
    """A self-signed P-256 certificate for localhost and 127.0.0.1 with `serial` (hex)."""
    cert = os.path.join(directory, stem + ".crt")
    key = os.path.join(directory, stem + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-set_serial",
                    "0x" + serial, "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def install(src_cert, src_key, cert, key):
    """The files the supervisor reads, replaced whole (rename) as a deployment would."""
    for src, dst in ((src_cert, cert), (src_key, key)):
        with open(src, "rb") as f:
            data = f.read()
        with open(dst + ".new", "wb") as f:
            f.write(data)
        os.rename(dst + ".new", dst)


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def s_client_serial(port, cafile):
    """The serial of the certificate a new `openssl s_client` connection is shown."""
    r = subprocess.run(f"openssl s_client -connect 127.0.0.1:{port} -servername localhost "
                       f"-CAfile {cafile} -verify_return_error </dev/null 2>/dev/null | "
                       "openssl x509 -noout -serial", shell=True, capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip().lower()


def s_client_session(port, cafile, session, resume, version="-tls1_3"):
    """One `openssl s_client` connection (TLS `version`) sending GET / with Connection: close,
    its session saved to `session` (resume False) or resumed from it. True when s_client says
    "Reused,", False for "New,"."""
    r = subprocess.run(
        "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | "
        f"openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {cafile} "
        f"-verify_return_error -ign_eof {version} {'-sess_in' if resume else '-sess_out'} "
        f"{session}",
        shell=True, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert "HTTP/1.1 200" in out, out
    assert ("\nReused, " in out) != ("\nNew, " in out), out
    return "\nReused, " in out


def read_to_close(s):
    """What `s` receives until the peer closes it (a reset counts as a close)."""
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


class TlsClient:
    """One TLS connection, kept alive, that counts the TCP connections it opened."""

    def __init__(self, port, cafile):
        context = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        # suppress_ragged_eofs off: a close without close_notify raises instead of reading b"".
        self.s = context.wrap_socket(raw, server_hostname="localhost",
                                     suppress_ragged_eofs=False)
        self.connections = 1

    def get(self, path, close=False):
        extra = "Connection: close\r\n" if close else ""
        self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
        return read_response(self.s)

    def serial(self):
        """The serial of the certificate this connection was shown, as `openssl x509` says."""
        pem = ssl.DER_cert_to_PEM_cert(self.s.getpeercert(binary_form=True))
        r = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip().lower()

    def close(self):
        self.s.close()


class ProxyTlsTest(SupervisorCase):
    def setUp(self):
        super().setUp()
        self.cert = os.path.join(self.tmp, "server.crt")
        self.key = os.path.join(self.tmp, "server.key")
        self.cert_a, self.key_a = make_cert(self.tmp, "a", "a001")
        self.cert_b, self.key_b = make_cert(self.tmp, "b", "b002")
        install(self.cert_a, self.key_a, self.cert, self.key)
        # Both self-signed certificates: a client trusts whichever is served.
        self.cafile = os.path.join(self.tmp, "ca.pem")
        with open(self.cafile, "w") as out:
            for c in (self.cert_a, self.cert_b):
                with open(c) as f:
                    out.write(f.read())

    def start(self, args, command):
        self.sup = Supervisor(self.tmp, args, command)
        self.sup.wait_line(r"generation 1 took over", 60)
        return self.sup

    def start_https(self, *extra):
        return self.start(["--proxy", "https", "--tls-cert", self.cert, "--tls-key", self.key,
                           "--ready", "http:///", *extra], ["python3", PY_APP])

    def test_tls_keepalive_survives_reloads(self):
        sup = self.start_https()
        before = sup.status()["proxy"]["accepted"]
        client = TlsClient(sup.port, self.cafile)
        self.assertIn(b"\r\n\r\nhttps", client.get("/proto"))
        done = threading.Event()
        answers, failures, pids = [0], [], set()

        def load():
            # One request after another on the one connection, for as long as reloads go on.
            while not done.is_set():
                try:
                    answer = client.get("/")
                except (OSError, ssl.SSLError) as e:
                    failures.append(repr(e))
                    return
                if not answer.startswith(b"HTTP/1.1 200"):
                    failures.append(answer[:200])
                    return
                answers[0] += 1
                pids.add(answer.rpartition(b"\r\n\r\n")[2].strip())

        worker = threading.Thread(target=load)
        worker.start()
        try:
            for n in range(RELOADS):
                r = sup.reload()
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr + sup.log())
                sup.wait_line(rf"generation {n + 2} took over", 60)
        finally:
            done.set()
            worker.join(60)
        self.assertEqual(failures, [], sup.log())
        self.assertGreater(answers[0], RELOADS)
        # Served by more than one generation, all over the one TCP connection.
        self.assertGreater(len(pids), 1, pids)
        self.assertEqual(client.connections, 1)
        status = sup.status()
        self.assertEqual(status["proxy"]["accepted"] - before, 1)
        self.assertEqual(status["proxy"]["bad_gateway"], 0)
        # The last response before the front closes is followed by close_notify: a clean b"".
        last = client.get("/", close=True)
        self.assertTrue(last.startswith(b"HTTP/1.1 200"), last)
        self.assertIn(b"connection: close", last.lower())
        self.assertEqual(client.s.recv(100), b"")
        client.close()

    def test_curl_several_urls_share_one_connection(self):
        sup = self.start_https()
        url = f"https://localhost:{sup.port}/proto"
        r = subprocess.run(["curl", "-sS", "--cacert", self.cafile, "--resolve",
                            f"localhost:{sup.port}:127.0.0.1", "-w", " connects=%{num_connects}\\n",
                            url, url, url], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split("\n")[:3],
                         ["https connects=1", "https connects=0", "https connects=0"], r.stdout)

    def test_certificate_rotated_by_reload(self):
        sup = self.start_https()
        self.assertEqual(s_client_serial(sup.port, self.cafile), "serial=a001")
        old = TlsClient(sup.port, self.cafile)
        self.assertTrue(old.get("/").startswith(b"HTTP/1.1 200"))
        install(self.cert_b, self.key_b, self.cert, self.key)
        r = sup.reload()
        self.assertEqual(r.returncode, 0, r.stderr + sup.log())
        sup.wait_line(r"generation 2 took over", 60)
        # A new connection is shown the new certificate; the old one still works with its own.
        self.assertEqual(s_client_serial(sup.port, self.cafile), "serial=b002")
        self.assertTrue(old.get("/").startswith(b"HTTP/1.1 200"))
        self.assertEqual(old.serial(), "serial=a001")
        self.assertEqual(old.connections, 1)
        old.close()

    def test_bad_certificate_at_reload_keeps_the_old_one(self):
        sup = self.start_https()
        old = TlsClient(sup.port, self.cafile)
        self.assertTrue(old.get("/").startswith(b"HTTP/1.1 200"))
        other_cert, other_key = make_cert(self.tmp, "c", "c003")
        cases = [
            ("garbage", lambda: write_file(self.cert, "not a certificate\n"),
             "tls certificate " + self.cert),
            ("mismatched", lambda: install(other_cert, self.key_a, self.cert, self.key),
             "tls key " + self.key),
            ("missing", lambda: os.unlink(self.key), "tls key " + self.key),
        ]
        for name, damage, message in cases:
            install(self.cert_a, self.key_a, self.cert, self.key)
            damage()
            r = sup.reload()
            self.assertNotEqual(r.returncode, 0, name)
            self.assertIn(message, r.stderr, name)
            self.assertIn("the certificate in use keeps serving", r.stderr, name)
            # Nothing changed: the first generation serves, with the first certificate.
            gens = [(g["id"], g["state"]) for g in sup.status()["generations"]]
            self.assertEqual(gens, [(1, "serving")], name)
            self.assertEqual(s_client_serial(sup.port, self.cafile), "serial=a001", name)
            self.assertTrue(old.get("/").startswith(b"HTTP/1.1 200"), name)
        # Fixed, the next reload goes through with the new certificate.
        install(self.cert_b, self.key_b, self.cert, self.key)
        r = sup.reload()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(s_client_serial(sup.port, self.cafile), "serial=b002")
        self.assertTrue(old.get("/").startswith(b"HTTP/1.1 200"))
        old.close()

    def test_sessions_resume_across_reloads(self):
        # The front makes a new TLS context at each reload; every one encrypts its tickets with
        # the supervisor's keys, so a session made before a reload resumes after it, also when
        # the reload rotated the certificate; in TLS 1.3 and 1.2. The keys stay in the supervisor.
        sup = self.start_https()
        sup.wait_line(r"holding new TLS session-ticket keys", 10)
        versions = ("-tls1_3", "-tls1_2")
        for v in versions:
            before = os.path.join(self.tmp, f"before{v}.sess")
            self.assertFalse(s_client_session(sup.port, self.cafile, before, False, v), v)
            self.assertTrue(s_client_session(sup.port, self.cafile, before, True, v), v)
        for n, (cert, key) in enumerate([(self.cert_a, self.key_a), (self.cert_b, self.key_b)]):
            install(cert, key, self.cert, self.key)
            r = sup.reload()
            self.assertEqual(r.returncode, 0, r.stderr + sup.log())
            sup.wait_line(rf"generation {n + 2} took over", 60)
            for v in versions:
                before = os.path.join(self.tmp, f"before{v}.sess")
                self.assertTrue(s_client_session(sup.port, self.cafile, before, True, v),
                                f"{v} after reload {n + 1}")
        self.assertEqual(s_client_serial(sup.port, self.cafile), "serial=b002")
        # A session the new certificate's context made resumes too.
        after = os.path.join(self.tmp, "after.sess")
        self.assertFalse(s_client_session(sup.port, self.cafile, after, resume=False))
        self.assertTrue(s_client_session(sup.port, self.cafile, after, resume=True))
        # The app behind the front speaks plaintext and is given no keys, only its socket.
        client = TlsClient(sup.port, self.cafile)
        names = client.get("/fdnames").rpartition(b"\r\n\r\n")[2]
        self.assertNotIn(b"handoff-tls-keys", names)
        client.close()
        # Nor are the public sockets the app's to hold: no "holds no copy of socket" alarm.
        self.assertNotIn("holds no copy", sup.log())

    def test_garbage_and_stalled_handshakes_disturb_no_one(self):
        sup = self.start_https("--header-timeout", "1s")
        good = TlsClient(sup.port, self.cafile)
        self.assertTrue(good.get("/").startswith(b"HTTP/1.1 200"))
        garbage = socket.create_connection(("127.0.0.1", sup.port), timeout=20)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled = socket.create_connection(("127.0.0.1", sup.port), timeout=20)
        # Half a ClientHello: a record header announcing 512 bytes, then 5 of them.
        half = socket.create_connection(("127.0.0.1", sup.port), timeout=20)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03")
        started = time.monotonic()
        # While they wait, the good connection and new ones are served.
        self.assertTrue(good.get("/").startswith(b"HTTP/1.1 200"))
        fresh = TlsClient(sup.port, self.cafile)
        self.assertTrue(fresh.get("/").startswith(b"HTTP/1.1 200"))
        fresh.close()
        # Garbage: an alert at most, never an HTTP answer, then the close.
        self.assertNotIn(b"HTTP/", read_to_close(garbage))
        # The stalled ones are closed at the deadline (1 s), not before.
        for s in (stalled, half):
            self.assertEqual(read_to_close(s), b"")
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertTrue(good.get("/").startswith(b"HTTP/1.1 200"))
        self.assertGreaterEqual(sup.status()["proxy"]["tls_handshake_failures"], 3)
        for s in (garbage, stalled, half):
            s.close()
        good.close()

    def test_https_options_are_checked_at_start(self):
        control = os.path.join(self.tmp, "c.sock")
        base = [HANDOFF, "run", "--control", control, "-l", "127.0.0.1:0"]
        cases = [
            (["--proxy", "https", "--tls-cert", self.cert], "needs --tls-cert FILE and --tls-key"),
            (["--proxy", "http", "--tls-cert", self.cert, "--tls-key", self.key],
             "need --proxy https"),
            (["--proxy", "https", "--tls-cert", self.cert, "--tls-key",
              os.path.join(self.tmp, "absent.key")], "tls key " + os.path.join(self.tmp, "absent.key")),
        ]
        for args, message in cases:
            r = subprocess.run([*base, *args, "--", "true"], capture_output=True, text=True,
                               timeout=20)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(message, r.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[2:]], verbosity=2)
