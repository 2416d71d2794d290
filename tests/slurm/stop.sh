#!/usr/bin/env bash
# Stops the test cluster that tests/slurm/start.sh started: both slurmd, slurmctld, then munged.
set -uo pipefail

stop() {  # stop NAME PIDFILE: SIGTERM the daemon named in PIDFILE and wait for it to exit
    local pid
    [ -s "$2" ] || return 0
    pid="$(cat "$2")"
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || { echo "stopped $1"; return 0; }
        sleep 1
    done
    echo "tests/slurm/stop.sh: $1 (pid $pid) still runs after 30 s" >&2
    return 1
}

status=0
for pidfile in /run/slurmd.pid /run/slurmd-*.pid; do  # /run/slurmd.pid: a slurmd of the one-node version
    stop "slurmd ($(basename "$pidfile" .pid))" "$pidfile" || status=1
done
stop slurmctld /run/slurmctld.pid || status=1
stop munged /run/munge/munged.pid || status=1
exit $status
