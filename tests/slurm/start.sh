#!/usr/bin/env bash
# A SLURM test cluster on this machine: installs slurm-wlm and munge with apt when missing, writes
# /etc/slurm/slurm.conf, starts munged, slurmctld and two slurmd, and waits until `sinfo` shows the nodes ready.
# Safe to run again: what already runs is left running. Needs root (as in CI). Stop it with tests/slurm/stop.sh.
#
# The default partition (debug) is one node, this machine (its CPUs and memory). A second slurmd on this machine,
# node <host>-2 with 1 CPU on its own port (Debian builds SLURM with multiple-slurmd support: `scontrol show config`
# says MULTIPLE_SLURMD = Yes), joins this machine's node in a second partition (multinode), so a job there spans
# two nodes as on a real cluster: two slurmd, SLURM_NODEID 0 and 1, one task per node started by srun.
#
#   SLURM_TEST_PARTITION            partition name (default: debug)
#   SLURM_TEST_MULTINODE_PARTITION  the two-node partition's name (default: multinode)
#   SLURM_TEST_SECOND_NODE_PORT     the second slurmd's port (default: 6820; the first uses SLURM's 6818)
#   SLURM_START_TIMEOUT             seconds to wait for the nodes (default: 60)
set -euo pipefail

PARTITION="${SLURM_TEST_PARTITION:-debug}"
MULTINODE_PARTITION="${SLURM_TEST_MULTINODE_PARTITION:-multinode}"
SECOND_NODE_PORT="${SLURM_TEST_SECOND_NODE_PORT:-6820}"
TIMEOUT_S="${SLURM_START_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
NODE="$(hostname -s)"
SECOND_NODE="${NODE}-2"

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

# slurm.conf: this machine as one node (partition debug) and as two (partition multinode, with a second slurmd);
# no cgroups (no systemd here), no accounting database
cpus="$(nproc)"
memory_mb="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
new_conf="$(mktemp)"
cat >"$new_conf" <<EOF
# Written by tests/slurm/start.sh: a test cluster on one machine, as one node and as two.
ClusterName=mura-test
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s): short, so the preemption test is quick
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
# %n: the node's name, so that the two slurmd of this machine keep their state, pid and log apart
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
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
NodeName=${SECOND_NODE} NodeHostname=${NODE} NodeAddr=127.0.0.1 Port=${SECOND_NODE_PORT} CPUs=1 RealMemory=${memory_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=${MULTINODE_PARTITION} Nodes=${NODE},${SECOND_NODE} MaxTime=INFINITE State=UP
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
    for pidfile in /run/slurmd.pid /run/slurmd-*.pid; do  # /run/slurmd.pid: a slurmd of the one-node version
        restart "$pidfile"
    done
    restart /run/slurmctld.pid
fi
running /run/slurmctld.pid || slurmctld || fail "slurmctld did not start; see ${LOG_DIR}/slurmctld.log"
for node in "$NODE" "$SECOND_NODE"; do
    running "/run/slurmd-${node}.pid" || slurmd -N "$node" ||
        fail "slurmd of node ${node} did not start; see ${LOG_DIR}/slurmd-${node}.log"
done

# wait for each node: idle, or busy with jobs (mixed/allocated); bring it back if it was left down or drained
deadline=$((SECONDS + TIMEOUT_S))
for node in "$NODE" "$SECOND_NODE"; do
    while true; do
        state="$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle | mixed | allocated) break ;;
            down* | drain* | drained*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "node ${node} not ready after ${TIMEOUT_S}s (sinfo says: '${state:-no answer}'); see ${LOG_DIR}/slurmctld.log and ${LOG_DIR}/slurmd-${node}.log"
        fi
        sleep 1
    done
done
echo "SLURM test cluster up: node ${NODE} (${cpus} CPUs, ${memory_mb} MB), partition ${PARTITION}; nodes ${NODE} and ${SECOND_NODE} (1 CPU), partition ${MULTINODE_PARTITION}"
