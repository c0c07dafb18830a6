# shellcheck shell=bash
# Shell functions the bench/ scripts share (sourced, not run): free ports, waiting for a
# listener, and CPU time from /proc.
#
# CPU time is utime+stime in clock ticks (fields 14 and 15 of /proc/PID/stat cover the whole
# thread group, so a multi-threaded server is counted whole). A process that has exited has no
# /proc entry left: its CPU time is read from its parent's cutime+cstime (fields 16 and 17),
# which the kernel adds when the parent reaps it; run_with_cpu runs a command in a subshell
# that is that parent.

clock_hz=$(getconf CLK_TCK)

free_port() {
  # Below the ephemeral range (32768+), and unused in any state, TIME_WAIT included.
  local p=$((10000 + RANDOM % 20000))
  while [ -n "$(ss -tanH "sport = :$p or dport = :$p")" ]; do p=$((10000 + RANDOM % 20000)); done
  echo $p
}

wait_listening() {  # wait_listening PORT: bounded; the server is up when its port listens
  for _ in $(seq 1 500); do [ -n "$(ss -ltnH "sport = :$1")" ] && return 0; sleep 0.01; done
  echo "server on port $1 did not start" >&2
  return 1
}

# server_pids PID [CHILDREN]: PID and its child processes, once it has CHILDREN of them (nginx's
# master forks its workers after it listens); bounded.
server_pids() {
  local want=${2:-0} kids=""
  for _ in $(seq 1 500); do
    kids=$(pgrep -P "$1" | tr '\n' ' ' || true)
    [ "$(echo "$kids" | wc -w)" -ge "$want" ] && break
    sleep 0.01
  done
  echo "$1 $kids"
}

cpu_ticks() {  # cpu_ticks PID...: utime+stime of the running processes, in clock ticks
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $t
}

kernel_ticks() {  # kernel_ticks PID...: stime alone (the part of cpu_ticks spent in the kernel)
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $15}' "/proc/$p/stat"))); done
  echo $t
}

# run_with_cpu OUT CMD...: runs CMD (stdout and stderr to OUT) and prints "TICKS SECONDS": its
# utime+stime in clock ticks and the wall time it took. CMD's exit status is not checked; the
# caller reads OUT.
run_with_cpu() {
  (
    out=$1
    shift
    start=$EPOCHREALTIME
    "$@" >"$out" 2>&1 || true
    end=$EPOCHREALTIME
    # Fields 16 and 17 counted from 1; comm (field 2) is "bash", without spaces.
    read -r -a stat <"/proc/$BASHPID/stat"
    echo "$((stat[15] + stat[16])) $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f", b - a}')"
  )
}

# percent_of_core TICKS SECONDS: CPU time as % of one core over that wall time.
percent_of_core() { awk -v t="$1" -v s="$2" -v hz="$clock_hz" 'BEGIN {printf "%.0f", t / hz / s * 100}'; }

# us_per_request TICKS REQUESTS: CPU time per request, in microseconds.
us_per_request() {
  awk -v t="$1" -v n="$2" -v hz="$clock_hz" 'BEGIN {printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0)}'
}

# check_summary JSON: "ok requests_per_s p50_ms p99_ms failed" from `handoff check --json`
# (requests/s over the configured duration, not the run's tail).
check_summary() {
  python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
print(j["ok"], int(j["ok"] / j["duration_s"]), j["latency_ms"]["p50"], j["latency_ms"]["p99"], j["failed"])' "$1"
}
