#!/bin/bash
# Runs inside the systemd-harness container (systemd 252 is PID 1). Each scenario sets up units
# the way a user would, drives them with systemctl, and checks what systemd itself reports.
# Binaries: /build/examples/hello_activated, /build/tests/notify_probe (handoff::core only),
# example_server, load_client and handoff; openssl, when the host has it.
set -uo pipefail
passed=0 failed=0
units=/run/systemd/system

check() {  # check DESCRIPTION EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then
    passed=$((passed + 1)); echo "ok: $1"
  else
    failed=$((failed + 1)); echo "FAILED: $1: expected '$2', got '$3'"
  fi
}
prop() { systemctl show -P "$2" "$1"; }
# One HTTP request with bash's /dev/tcp; prints the body's first line.
fetch() {
  exec 3<>"/dev/tcp/$1/$2" || return 1
  printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
  timeout 10 cat <&3 | tail -n 1
  exec 3<&-
}
# Waits (bounded) until process $1 is gone.
wait_gone() { timeout 10 tail --pid="$1" -f /dev/null; }

echo "== socket activation: systemd's socket, our receiving side, READY=1 and STATUS="
cat > $units/hello.socket <<UNIT
[Socket]
ListenStream=127.0.0.1:8080
FileDescriptorName=http
UNIT
cat > $units/hello.service <<UNIT
[Service]
Type=notify
ExecStart=/build/examples/hello_activated --version sd
UNIT
systemctl daemon-reload
systemctl start hello.socket
body=$(fetch 127.0.0.1 8080)   # the first connection starts the service
main=$(prop hello.service MainPID)
check "answer comes from the service's main process" "hello from pid $main version sd" "$body"
check "Type=notify service is active (READY=1 accepted)" active "$(prop hello.service ActiveState)"
check "STATUS= shown by systemd" "serving on tcp://127.0.0.1:8080" "$(prop hello.service StatusText)"
systemctl stop hello.service
check "stop: clean exit after STOPPING=1" success "$(prop hello.service Result)"
body=$(fetch 127.0.0.1 8080)   # the socket stayed; a new connection starts a new instance
check "socket re-activates a new instance" "hello from pid $(prop hello.service MainPID) version sd" "$body"
systemctl stop hello.socket hello.service

echo "== FDSTORE=1: fds kept across restart, returned with FDNAME="
cat > $units/probe.service <<UNIT
[Service]
Type=notify
NotifyAccess=all
FileDescriptorStoreMax=4
ExecStart=/build/tests/notify_probe /run/probe.report
ExecReload=/bin/kill -HUP \$MAINPID
UNIT
systemctl daemon-reload
rm -f /run/probe.report
systemctl start probe.service
check "first start" "starts 1" "$(grep '^starts' /run/probe.report | tail -n 1)"
check "status text" "probe started 1 times" "$(prop probe.service StatusText)"
systemctl restart probe.service
check "stored fd came back by name" "fd state not a socket" "$(grep '^fd' /run/probe.report | tail -n 1)"
check "its content survived the restart" "starts 2" "$(grep '^starts' /run/probe.report | tail -n 1)"

echo "== RELOADING=1 with MONOTONIC_USEC=, then READY=1: systemctl reload returns"
timeout 20 systemctl reload probe.service
check "systemctl reload finished" 0 "$?"
check "the app saw the reload" reloaded "$(tail -n 1 /run/probe.report)"
check "still active after reload" active "$(prop probe.service ActiveState)"

echo "== MAINPID= hand-off with BARRIER=1: the successor becomes the main process"
old=$(prop probe.service MainPID)
systemctl kill --kill-who=main -s USR2 probe.service
wait_gone "$old"
new=$(grep '^successor' /run/probe.report | tail -n 1 | cut -d' ' -f2)
check "the old main process exited" "predecessor $old exits" "$(grep '^predecessor' /run/probe.report | tail -n 1)"
check "systemd's MainPID is the successor's pid" "$new" "$(prop probe.service MainPID)"
check "the service stayed active" active "$(prop probe.service ActiveState)"
systemctl stop probe.service
check "the successor stops cleanly" success "$(prop probe.service Result)"

echo "== deploy/systemd/example-upgrade.*: the self-upgrading service as a user installs it"
install -m 0755 /build/examples/example_server /usr/local/bin/example_server
cp /deploy/example-upgrade.socket /deploy/example-upgrade.service $units/
systemctl daemon-reload
systemctl start example-upgrade.socket
body=$(fetch 127.0.0.1 8080)
check "socket-activated, answered by MainPID" \
  "hello from pid $(prop example-upgrade.service MainPID) version 1" "$body"
/build/tests/load_client 8080 >/run/load.out &
load=$!
pids=$(prop example-upgrade.service MainPID)
# systemd 252 has no Type=notify-reload: `systemctl reload` returns when ExecReload's kill
# exits, which can be before the app's RELOADING=1 arrives. So wait for systemd's own view
# (bounded): MainPID changes when the app's MAINPID= is processed.
wait_mainpid_change() {
  for _ in $(seq 1 300); do
    [ "$(prop example-upgrade.service MainPID)" != "$1" ] &&
      [ "$(prop example-upgrade.service SubState)" = running ] && return 0
    sleep 0.1
  done
  return 1
}
for i in 1 2 3 4 5; do
  old=$(prop example-upgrade.service MainPID)
  timeout 60 systemctl reload example-upgrade.service
  wait_mainpid_change "$old"
  new=$(prop example-upgrade.service MainPID)
  check "reload $i: the hand-over completes, with a new MainPID" \
    "changed active" "$([ "$new" != "$old" ] && echo changed) $(prop example-upgrade.service ActiveState)"
  pids="$pids $new"
done
echo "exit 1" > /tmp/broken && chmod +x /tmp/broken && sed -i '1i #!/bin/sh' /tmp/broken
mv /tmp/broken /usr/local/bin/example_server   # a bad deploy
old=$(prop example-upgrade.service MainPID)
timeout 60 systemctl reload example-upgrade.service
# The failure is reported by READY=1 with STATUS=upgrade failed: wait for it (bounded).
for _ in $(seq 1 300); do
  case "$(prop example-upgrade.service StatusText)" in "upgrade failed"*) break ;; esac
  sleep 0.1
done
check "failed upgrade: the service stays active on the old process" \
  "active $old" "$(prop example-upgrade.service ActiveState) $(prop example-upgrade.service MainPID)"
case "$(prop example-upgrade.service StatusText)" in
  "upgrade failed: pid "*"exited with status 1 before it was ready") status_ok=yes ;;
  *) status_ok="$(prop example-upgrade.service StatusText)" ;;
esac
check "failed upgrade: systemctl status says why" yes "$status_ok"
install -m 0755 /build/examples/example_server /usr/local/bin/example_server
kill -TERM $load; wait $load; load_status=$?
cat /run/load.out
check "no failed request during 5 reloads and a failed one (load_client)" 0 "$load_status"
old=$(prop example-upgrade.service MainPID)
systemctl restart example-upgrade.service
body=$(fetch 127.0.0.1 8080)
check "systemctl restart: a new process serves" \
  "new hello from pid $(prop example-upgrade.service MainPID) version 1" \
  "$([ "$(prop example-upgrade.service MainPID)" != "$old" ] && echo new) $body"
systemctl stop example-upgrade.service example-upgrade.socket
check "stop: every generation gone" "" "$(pgrep -f /usr/local/bin/example_server)"

echo "== deploy/systemd/example-run.*: handoff run under a .socket unit"
install -m 0755 /build/tools/handoff/handoff /usr/local/bin/handoff
cp /deploy/example-run.socket /deploy/example-run.service $units/
systemctl daemon-reload
systemctl start example-run.socket
first=$(fetch 127.0.0.1 8081)
supervisor=$(prop example-run.service MainPID)
check "socket-activated supervisor is active (its READY=1 after the app's)" active \
  "$(prop example-run.service ActiveState)"
case "$first" in "hello from pid "*" version 1") first_ok=yes ;; *) first_ok="$first" ;; esac
check "the app behind it answers on systemd's socket" yes "$first_ok"
/build/tests/load_client 8081 >/run/load-run.out &
load=$!
# The serving generation's pid, as the supervisor reports it. (Right after a reload the old
# generation may still accept a connection or two while it begins to drain, so asking the app
# would not say which generation is current.)
serving_pid() {
  handoff status --control /run/handoff/example.sock | awk '$1 == "pid" && $3 == "ready," {print $2}'
}
for i in 1 2 3 4 5; do
  before=$(serving_pid)
  timeout 60 systemctl reload example-run.service
  reload_status=$?
  after=$(serving_pid)
  check "reload $i: systemctl reload succeeds, a new generation serves, MainPID stays" \
    "0 new $supervisor" \
    "$reload_status $([ -n "$after" ] && [ "$before" != "$after" ] && echo new) $(prop example-run.service MainPID)"
done
# The same app upgrading itself (SIGHUP to the app, not a reload): the supervisor follows its
# MAINPID= and keeps the new process as the generation's main process.
app=$(fetch 127.0.0.1 8081 | cut -d' ' -f4)
kill -HUP "$app"
timeout 10 tail --pid="$app" -f /dev/null
upgraded=$(fetch 127.0.0.1 8081 | cut -d' ' -f4)
check "self-upgrade under handoff run: a new process answers" changed \
  "$([ -n "$upgraded" ] && [ "$upgraded" != "$app" ] && echo changed)"
check "handoff status names it as the generation's process" yes \
  "$(handoff status --control /run/handoff/example.sock | grep -q "pid $upgraded ready" && echo yes)"
printf '#!/bin/sh\nexit 1\n' >/tmp/broken && chmod +x /tmp/broken
mv /tmp/broken /usr/local/bin/example_server   # a bad deploy
before=$(fetch 127.0.0.1 8081)
timeout 60 systemctl reload example-run.service 2>/dev/null
reload_status=$?
check "failed reload: systemctl reload fails, the service stays active, the old generation serves" \
  "failed active $before" \
  "$([ "$reload_status" != 0 ] && echo failed) $(prop example-run.service ActiveState) $(fetch 127.0.0.1 8081)"
install -m 0755 /build/examples/example_server /usr/local/bin/example_server
# A package upgrade of handoff itself: a new file renamed over the path, then handoff reexec.
app=$(serving_pid)
for i in 1 2 3; do
  cp /build/tools/handoff/handoff /usr/local/bin/.handoff.new
  mv /usr/local/bin/.handoff.new /usr/local/bin/handoff
  timeout 60 handoff reexec --control /run/handoff/example.sock >/dev/null
  reexec_status=$?
  check "reexec $i: the new binary runs, MainPID, service state and the app's pid stay" \
    "0 $(stat -c %i /usr/local/bin/handoff) $supervisor active $app" \
    "$reexec_status $(stat -L -c %i /proc/$supervisor/exe) $(prop example-run.service MainPID) $(prop example-run.service ActiveState) $(serving_pid)"
done
timeout 60 systemctl reload example-run.service
check "systemctl reload after the re-execs: succeeds, MainPID stays" "0 $supervisor" \
  "$? $(prop example-run.service MainPID)"
kill -TERM $load; wait $load; load_status=$?
cat /run/load-run.out
check "no failed request during 5 reloads, a failed one and 3 re-execs (load_client)" 0 \
  "$load_status"
systemctl restart example-run.service
check "systemctl restart: active again under a new supervisor" "active changed" \
  "$(prop example-run.service ActiveState) $([ "$(prop example-run.service MainPID)" != "$supervisor" ] && echo changed)"
systemctl stop example-run.service example-run.socket
check "stop: the supervisor and every generation are gone" "" \
  "$(pgrep -f '/usr/local/bin/(handoff|example_server)')"

echo "== handoff run under WatchdogSec=: the supervisor's loop pings systemd"
cat > $units/watchdog-run.service <<UNIT
[Service]
Type=notify
WatchdogSec=1s
ExecStart=/usr/local/bin/handoff run --name wd --control /run/watchdog-run.sock \
    --ready delay:10ms -- /bin/sleep 600
UNIT
systemctl daemon-reload
systemctl start watchdog-run.service
supervisor=$(prop watchdog-run.service MainPID)
# Every WATCHDOG=1 moves systemd's WatchdogTimestamp; wait for four of them (two seconds at a
# ping every half second: twice WatchdogSec), bounded. Without pings systemd kills the
# supervisor after one second instead.
pings=0 last=$(prop watchdog-run.service WatchdogTimestampMonotonic)
for _ in $(seq 1 100); do
  now=$(prop watchdog-run.service WatchdogTimestampMonotonic)
  [ "$now" != "$last" ] && pings=$((pings + 1)) last=$now
  [ "$pings" -ge 4 ] && break
  sleep 0.1
done
check "watchdog: four pings seen, the same supervisor still active, never restarted" \
  "4 active $supervisor 0" \
  "$pings $(prop watchdog-run.service ActiveState) $(prop watchdog-run.service MainPID) $(prop watchdog-run.service NRestarts)"
# The watchdog and NOTIFY_SOCKET cross a re-exec (SIGUSR2): the pings go on from the new image.
kill -USR2 "$supervisor"
for _ in $(seq 1 100); do
  handoff status --control /run/watchdog-run.sock 2>/dev/null | grep -q "re-executed 1 times" && break
  sleep 0.1
done
pings=0 last=$(prop watchdog-run.service WatchdogTimestampMonotonic)
for _ in $(seq 1 100); do
  now=$(prop watchdog-run.service WatchdogTimestampMonotonic)
  [ "$now" != "$last" ] && pings=$((pings + 1)) last=$now
  [ "$pings" -ge 4 ] && break
  sleep 0.1
done
check "watchdog after SIGUSR2 re-exec: re-executed, four more pings, same MainPID, never restarted" \
  "yes 4 active $supervisor 0" \
  "$(handoff status --control /run/watchdog-run.sock | grep -q 're-executed 1 times' && echo yes) $pings $(prop watchdog-run.service ActiveState) $(prop watchdog-run.service MainPID) $(prop watchdog-run.service NRestarts)"
systemctl stop watchdog-run.service

echo "== handoff run --proxy http: handoff reexec under a keep-alive load (handoff check)"
# The client connections cross each exec inside the supervisor; systemd sees one main process
# all along. The load is handoff check, a client that never retries: a connection the front
# dropped would show as a reconnect, a lost request as a failure.
cat > $units/proxy-run.service <<UNIT
[Service]
Type=notify
ExecStart=/usr/local/bin/handoff run --name proxy --control /run/proxy-run.sock \
    --listen 127.0.0.1:8082 --proxy http -- /usr/local/bin/example_server
ExecReload=/usr/local/bin/handoff reload --control /run/proxy-run.sock
KillMode=mixed
UNIT
systemctl daemon-reload
systemctl start proxy-run.service
supervisor=$(prop proxy-run.service MainPID)
proxy_app() {
  handoff status --control /run/proxy-run.sock | awk '$1 == "pid" && $3 == "ready," {print $2}'
}
app=$(proxy_app)
check "the supervisor is active, its app ready" "active yes" \
  "$(prop proxy-run.service ActiveState) $([ -n "$app" ] && echo yes)"
# check's restart command: a new binary renamed over the path, then handoff reexec; three times,
# one after the other, then nothing.
cat > /run/proxy-reexec.sh <<'SCRIPT'
#!/bin/sh
n=$(cat /run/proxy-reexec.count 2>/dev/null || echo 0)
[ "$n" -ge 3 ] && exit 0
cp /build/tools/handoff/handoff /usr/local/bin/.handoff.new || exit 1
mv /usr/local/bin/.handoff.new /usr/local/bin/handoff || exit 1
handoff reexec --control /run/proxy-run.sock >>/run/proxy-reexec.out 2>&1 || exit 1
echo $((n + 1)) >/run/proxy-reexec.count
SCRIPT
chmod +x /run/proxy-reexec.sh
timeout 120 handoff check http://127.0.0.1:8082/ --duration 8s -c 10 --rate 500 --mode keepalive \
  --json /run/proxy-check.json -q --reload-cmd /run/proxy-reexec.sh --reload-every 100ms \
  >/run/proxy-check.out 2>&1
check_status=$?
# check's totals (its list of restarts is long: the script runs every 100 ms, idle after three).
head -n 6 /run/proxy-check.out
cat /run/proxy-reexec.out 2>/dev/null
check "three re-execs under load, each ok (check's exit status 0)" "3 0" \
  "$(cat /run/proxy-reexec.count 2>/dev/null) $check_status"
check "re-execs: the new binary runs, MainPID, service state and the app's pid stay" \
  "$(stat -c %i /usr/local/bin/handoff) $supervisor active $app" \
  "$(stat -L -c %i /proc/$supervisor/exe) $(prop proxy-run.service MainPID) $(prop proxy-run.service ActiveState) $(proxy_app)"
check "handoff check: requests served, 0 failed, 0 reconnects, no failed restart" "yes 0 0 0" \
  "$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("yes" if r["requests"] > 0 else "no", r["failed"], r["reconnects"],
      len([x for x in r["restarts"] if not x["success"]]))' /run/proxy-check.json 2>&1)"
check "the supervisor counts the re-execs" yes \
  "$(handoff status --control /run/proxy-run.sock | grep -q 're-executed 3 times' && echo yes)"
systemctl stop proxy-run.service
check "stop: clean, the supervisor and its app gone" "success " \
  "$(prop proxy-run.service Result) $(pgrep -f 'handoff run --name proxy')"

echo "== handoff run --proxy https: session-ticket keys kept in the fd store across systemctl restart"
# openssl is the host's, bound in by tests/systemd/run (the rootfs has libssl3, not the tool).
if ! command -v openssl >/dev/null; then
  echo "SKIPPED: no openssl in the container: the TLS fd-store scenario did not run"
else
  mkdir -p /run/tls
  # The rootfs has no openssl.cnf, which `openssl req` insists on reading.
  printf '[req]\ndistinguished_name = dn\n[dn]\n' >/run/tls/openssl.cnf
  export OPENSSL_CONF=/run/tls/openssl.cnf
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1 -keyout /run/tls/key.pem -out /run/tls/cert.pem 2>/dev/null
  # One s_client connection sending GET / (Connection: close); the session saved to $1
  # (-sess_out) or resumed from it (-sess_in). Prints "New" or "Reused" and the response's
  # status code.
  tls_session() {
    printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
      timeout 20 openssl s_client -connect 127.0.0.1:8443 -CAfile /run/tls/cert.pem \
        -verify_return_error -ign_eof "$2" "$1" 2>/dev/null |
      awk '/^(New|Reused), / {sub(/,.*/, ""); how=$0} /^HTTP\/1.1 / {code=$2} END {print how, code}'
  }
  # The public socket is not named https: the app behind the front gets its private socket
  # under that name, and example_server would speak TLS on a socket named https.
  cat > $units/tls-run.service <<UNIT
[Service]
Type=notify
FileDescriptorStoreMax=4
ExecStart=/usr/local/bin/handoff run --name tls --control /run/tls-run.sock \
    --listen web=127.0.0.1:8443 --proxy https --tls-cert /run/tls/cert.pem \
    --tls-key /run/tls/key.pem -- /usr/local/bin/example_server
ExecReload=/usr/local/bin/handoff reload --control /run/tls-run.sock
KillMode=mixed
UNIT
  systemctl daemon-reload
  systemctl start tls-run.service
  supervisor=$(prop tls-run.service MainPID)
  check "the supervisor stored its keys: one fd in systemd's store" "active 1" \
    "$(prop tls-run.service ActiveState) $(prop tls-run.service NFileDescriptorStore)"
  check "a first connection: a full handshake, its session saved" "New 200" \
    "$(tls_session /run/tls/first.sess -sess_out)"
  check "resumed from the same supervisor" "Reused 200" "$(tls_session /run/tls/first.sess -sess_in)"
  timeout 60 systemctl reload tls-run.service
  check "after systemctl reload (a new TLS context): resumed" "Reused 200" \
    "$(tls_session /run/tls/first.sess -sess_in)"
  systemctl restart tls-run.service
  check "systemctl restart: a new supervisor, the stored keys came back (still one fd)" \
    "changed active 1" \
    "$([ "$(prop tls-run.service MainPID)" != "$supervisor" ] && echo changed) $(prop tls-run.service ActiveState) $(prop tls-run.service NFileDescriptorStore)"
  check "the new supervisor says it holds the inherited keys" yes \
    "$(journalctl -q -o cat _PID="$(prop tls-run.service MainPID)" | grep -q 'holding the inherited handoff-tls-keys' && echo yes)"
  check "after systemctl restart: the session made before it resumes" "Reused 200" \
    "$(tls_session /run/tls/first.sess -sess_in)"
  # systemd 252 empties the store when the service stops with no job queued (systemd.service(5),
  # FileDescriptorStoreMax=; it has no FileDescriptorStorePreserve=): stop, then start, makes
  # new keys, and every client does one full handshake.
  systemctl stop tls-run.service
  check "systemctl stop: the fd store is emptied" 0 "$(prop tls-run.service NFileDescriptorStore)"
  systemctl start tls-run.service
  check "stop, then start: new keys, the old session gets a full handshake" "New 200" \
    "$(tls_session /run/tls/first.sess -sess_in)"
  systemctl stop tls-run.service
fi

echo "systemd scenarios: $passed passed, $failed failed"
[ "$failed" = 0 ]
