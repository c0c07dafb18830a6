#!/usr/bin/env python3
"""The deploy pattern of the articles on zero-downtime restarts, as a restart peer: HAProxy as a
load balancer in front of two instances of the same app on two port slots, with health checks.

  haproxy_lb.py config DIR PUBLIC_PORT SLOT_PORT_1 SLOT_PORT_2   writes DIR/haproxy.cfg
  haproxy_lb.py up DIR APP...       (HAProxy runs) starts APP on slot 1, waits until it is UP
  haproxy_lb.py restart DIR         one restart (below)
  haproxy_lb.py down DIR            SIGTERMs the instances still running

A restart: the new instance starts on the free slot; once HAProxy's health check marks it UP,
the old one is set to drain through HAProxy's runtime API (`set server be/sN state drain` on
the stats socket); once HAProxy has no session on it (at most 10 s) it gets SIGTERM; the
restart is over when it has exited and HAProxy's check sees its slot DOWN (so that the next
restart on that slot waits for a check of the new instance, not a stale one).

An instance gets its slot's socket as systemd would pass it (fd 3, LISTEN_FDS=1, LISTEN_PID),
bound by this script before the app starts, as a socket unit per slot would. Instances run on
core 0 (the app's core in bench/restart_peers) with GOMAXPROCS=1, in sessions of their own.
State (ports, pids, the slot that serves) is in DIR/lb.json. Every wait is bounded.
"""
import json
import os
import signal
import socket
import sys
import time

CHECK_INTERVAL_MS = 100


def state_path(d):
    return os.path.join(d, "lb.json")


def load(d):
    with open(state_path(d)) as f:
        return json.load(f)


def save(d, st):
    with open(state_path(d) + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(state_path(d) + ".tmp", state_path(d))


def runtime(d, command):
    """One command on HAProxy's stats socket (admin level); its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(os.path.join(d, "haproxy.sock"))
        s.sendall(command.encode() + b"\n")
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out.decode()
            out += data


def servers(d):
    """{server name: {"status": ..., "scur": ...}} of backend be, from `show stat`."""
    lines = runtime(d, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "be" and row.get("svname") not in ("BACKEND", None):
            out[row["svname"]] = {"status": row["status"], "scur": int(row["scur"] or 0)}
    return out


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            sys.exit(f"haproxy_lb: {what} not within {timeout} s")
        time.sleep(0.01)


def start_instance(st, slot):
    """Binds the slot's port and starts the app on it with LISTEN_FDS; returns its pid."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", st["ports"][slot]))
    sock.listen(4096)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.sched_setaffinity(0, {0})
            if sock.fileno() == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(sock.fileno(), 3)  # inheritable, unlike the original
            devnull = os.open(os.devnull, os.O_RDWR)
            log = os.open(os.path.join(st["dir"], "apps.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(log, 2)
            env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), GOMAXPROCS="1")
            os.execve(st["app"][0], st["app"], env)
        finally:
            os._exit(127)
    sock.close()
    return pid


def alive(pid):
    """Running, and not a zombie: an instance outlives the `restart` that forked it, and whoever
    inherits it may reap it late."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def config(d, public, port1, port2):
    with open(os.path.join(d, "haproxy.cfg"), "w") as f:
        f.write(f"""global
  nbthread 1
  stats socket {d}/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{public}
  default_backend be
backend be
  option httpchk GET /
  server s1 127.0.0.1:{port1} check inter {CHECK_INTERVAL_MS}ms rise 2 fall 2
  server s2 127.0.0.1:{port2} check inter {CHECK_INTERVAL_MS}ms rise 2 fall 2
""")
    save(d, {"dir": d, "ports": [port1, port2], "pids": [0, 0], "serving": 0, "app": []})


def up(d, app):
    st = load(d)
    st["app"] = app
    wait_for("HAProxy's stats socket", lambda: os.path.exists(os.path.join(d, "haproxy.sock")), 10)
    # Slot 2 is empty: kept out of the rotation until a restart puts an instance there.
    runtime(d, "set server be/s2 state drain")
    st["pids"][0] = start_instance(st, 0)
    st["serving"] = 0
    save(d, st)
    wait_for("s1 UP and s2 DOWN", lambda: (lambda s: s["s1"]["status"] == "UP" and
                                             s["s2"]["status"].startswith("DOWN"))(servers(d)), 20)


def restart(d):
    st = load(d)
    old, new = st["serving"], 1 - st["serving"]
    old_name, new_name = f"s{old + 1}", f"s{new + 1}"
    runtime(d, f"set server be/{new_name} state ready")  # its check is DOWN: no traffic yet
    st["pids"][new] = start_instance(st, new)
    st["serving"] = new
    save(d, st)
    wait_for(f"{new_name} UP", lambda: servers(d)[new_name]["status"] == "UP", 20)
    runtime(d, f"set server be/{old_name} state drain")
    deadline = time.monotonic() + 10
    while servers(d)[old_name]["scur"] > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(st["pids"][old], signal.SIGTERM)
    wait_for(f"pid {st['pids'][old]} exit", lambda: not alive(st["pids"][old]), 30)
    wait_for(f"{old_name} DOWN", lambda: servers(d)[old_name]["status"].startswith("DOWN"), 10)
    st["pids"][old] = 0
    save(d, st)


def down(d):
    st = load(d)
    for pid in st["pids"]:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
    for pid in st["pids"]:
        if pid:
            wait_for(f"pid {pid} exit", lambda p=pid: not alive(p), 30)


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "config":
        config(d, *map(int, sys.argv[3:6]))
    elif cmd == "up":
        up(d, sys.argv[3:])
    elif cmd == "restart":
        restart(d)
    elif cmd == "down":
        down(d)
    else:
        sys.exit(f"haproxy_lb: unknown command {cmd}")
