#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the tests: installs slurm-wlm and munge with apt when missing,
# writes /etc/slurm/slurm.conf (this machine's CPUs and memory, one partition), starts munged, slurmctld and
# slurmd, and waits until `sinfo` shows the node ready. Safe to run again: what already runs is left running.
# Needs root (as in CI). Stop it with tests/slurm/stop.sh.
#
#   SLURM_TEST_PARTITION  partition name (default: debug)
#   SLURM_START_TIMEOUT   seconds to wait for the node (default: 60)
set -euo pipefail

PARTITION="${SLURM_TEST_PARTITION:-debug}"
TIMEOUT_S="${SLURM_START_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
NODE="$(hostname -s)"

fail() {
    echo "tests/slurm/start.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root (it installs packages and starts the SLURM daemons); run it with sudo"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge with apt..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || fail "apt-get update failed; this script needs Debian's package servers"
    apt-get install -y -q slurm-wlm munge || fail "apt-get install slurm-wlm munge failed (see above)"
fi

# munge: the key, then the daemon as user munge
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force || fail "munged did not start; see /var/log/munge/munged.log"
fi

# slurm.conf: one node (this machine), one partition; no cgroups (no systemd here), no accounting database
cpus="$(nproc)"
memory_mb="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
new_conf="$(mktemp)"
cat >"$new_conf" <<EOF
# Written by tests/slurm/start.sh: a one-node test cluster.
ClusterName=mura-test
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s): short, so the preemption test is quick
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# look at pending jobs every 2 s (defaults: 60 s and 30 s), so a requeued job starts once it is eligible
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=false
if ! cmp -s "$new_conf" "$CONF"; then
    install -m 0644 "$new_conf" "$CONF"
    conf_changed=true
fi
rm -f "$new_conf"

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

restart() {  # restart PIDFILE: stop the daemon named in PIDFILE so that it starts again with the new slurm.conf
    running "$1" || return 0
    kill "$(cat "$1")"
    for _ in $(seq 30); do running "$1" || return 0; sleep 1; done
    fail "could not stop the daemon of $1 to load the new slurm.conf"
}
if $conf_changed; then  # `scontrol reconfigure` leaves some settings (AuthInfo) as they were
    restart /run/slurmd.pid
    restart /run/slurmctld.pid
fi
running /run/slurmctld.pid || slurmctld || fail "slurmctld did not start; see ${LOG_DIR}/slurmctld.log"
running /run/slurmd.pid || slurmd || fail "slurmd did not start; see ${LOG_DIR}/slurmd.log"

# wait for the node: idle, or busy with jobs (mixed/allocated); bring it back if it was left down or drained
deadline=$((SECONDS + TIMEOUT_S))
while true; do
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle | mixed | allocated) break ;;
        down* | drain* | drained*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        fail "node ${NODE} not ready after ${TIMEOUT_S}s (sinfo says: '${state:-no answer}'); see ${LOG_DIR}/slurmctld.log and ${LOG_DIR}/slurmd.log"
    fi
    sleep 1
done
echo "SLURM test cluster up: node ${NODE} (${cpus} CPUs, ${memory_mb} MB), partition ${PARTITION} (${state})"
