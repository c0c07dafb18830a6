#!/bin/bash
# Runs inside the systemd-harness container (Debian 12, systemd 252 as PID 1), with the package
# at $1: install it with dpkg, enable and start the units it ships, reload each service under load
# with `systemctl reload` while `handoff check` counts failed requests, then remove and purge it
# and compare the file system with what it was before.
set -uo pipefail
deb=$1
passed=0 failed=0
check() {  # check DESCRIPTION EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then
    passed=$((passed + 1)); echo "ok: $1"
  else
    failed=$((failed + 1)); echo "FAILED: $1: expected '$2', got '$3'"
  fi
}
prop() { systemctl show -P "$2" "$1"; }
# Everything on the root file system but what changes by itself or belongs to dpkg's and
# systemd's own bookkeeping, and the .wants directories that `systemctl enable` makes (disable
# takes the links out of them, and leaves them).
snapshot() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
    -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/dpkg \
    -o -path /var/lib/systemd -o -path /scenarios -o -path /deb \) -prune -o -print |
    grep -v '^/etc/systemd/system/[^/]*\.wants$' | sort
}
# A failed-request count of 0 from `handoff check`'s JSON report.
failed_requests() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$1"; }

before=$(snapshot)
dpkg -i "$deb" >/tmp/dpkg-i.log 2>&1
check "dpkg -i installs the package (Depends met by Debian 12)" "0" "$?"
cat /tmp/dpkg-i.log
check "the command runs from the PATH" 0 "$(handoff --help >/dev/null; echo $?)"
check "ldconfig knows the shared libraries" yes \
  "$(ldconfig -p | grep -q 'libhandoff_http.so.0 ' && echo yes)"

systemctl enable --now example-run.socket example-upgrade.socket 2>&1
check "the sockets are enabled" "enabled enabled" \
  "$(systemctl is-enabled example-run.socket) $(systemctl is-enabled example-upgrade.socket)"

# handoff run under its .socket unit: each `systemctl reload` is `handoff reload`, which returns
# once the new generation serves.
timeout 60 handoff check http://127.0.0.1:8081/ --duration 8s --connections 8 --mode keepalive \
  --reload-cmd 'systemctl reload example-run.service' --reload-every 1s --fail-on-errors \
  --json /tmp/run.json >/tmp/run.out 2>&1
status=$?
cat /tmp/run.out
check "example-run: handoff check under 'systemctl reload' every second exits 0" 0 "$status"
check "example-run: no failed request" 0 "$(failed_requests /tmp/run.json)"
check "example-run: still active under its first supervisor" active "$(prop example-run.service ActiveState)"

# The self-upgrading service: `systemctl reload` is SIGHUP, and the old process hands the service
# over to the new one (MAINPID=).
first=$(exec 3<>/dev/tcp/127.0.0.1/8080; printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3; timeout 10 cat <&3 | tail -n 1)
main=$(prop example-upgrade.service MainPID)
check "example-upgrade: socket-activated, answered by MainPID" "hello from pid $main version 1" "$first"
timeout 60 handoff check http://127.0.0.1:8080/ --duration 8s --connections 8 --mode keepalive \
  --reload-cmd 'systemctl reload example-upgrade.service' --reload-every 2s --fail-on-errors \
  --json /tmp/upgrade.json >/tmp/upgrade.out 2>&1
status=$?
cat /tmp/upgrade.out
check "example-upgrade: handoff check under 'systemctl reload' every 2 s exits 0" 0 "$status"
check "example-upgrade: no failed request" 0 "$(failed_requests /tmp/upgrade.json)"
check "example-upgrade: active, under another main process" "active changed" \
  "$(prop example-upgrade.service ActiveState) $([ "$(prop example-upgrade.service MainPID)" != "$main" ] && echo changed)"

dpkg -r handoff >/tmp/dpkg-r.log 2>&1
check "dpkg -r removes it" 0 "$?"
cat /tmp/dpkg-r.log
check "dpkg -r: no process of the package left" "" "$(pgrep -f '/usr/bin/(handoff|example_server)')"
check "dpkg -r: no unit enabled for a removed file" "" \
  "$(find /etc/systemd -name 'example-*' 2>/dev/null)"
check "dpkg -r: systemd no longer knows the units" "not-found not-found" \
  "$(prop example-run.service LoadState) $(prop example-upgrade.socket LoadState)"
dpkg -P handoff >/tmp/dpkg-p.log 2>&1
check "dpkg -P purges it" 0 "$?"
check "dpkg knows no handoff after the purge" "" "$(find /var/lib/dpkg/info -name 'handoff.*')"
after=$(snapshot)
check "the file system is as before the install" "" "$(diff <(echo "$before") <(echo "$after"))"

echo "package scenarios: $passed passed, $failed failed"
[ "$failed" = 0 ]
