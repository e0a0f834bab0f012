#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for ablate's cluster tests and for trying
# `ablate submit --slurm` without a cluster. Debian 12 (or newer), run as root, no systemd
# needed: every daemon is started by hand and stopped by the PID in its pid file.
#
#   scripts/slurm-local.sh up      install Debian's slurm packages if missing, write the
#                                  config, start munged, slurmctld and slurmd, wait for the
#                                  node to be idle. Prints "started" or "already up".
#   scripts/slurm-local.sh down    cancel every job, stop the daemons (by PID).
#   scripts/slurm-local.sh check   exit 0 when the cluster answers, 1 otherwise.
#
# Exit codes: 0 ok; 3 this machine cannot host it (not root, no apt-get); 1 anything else.
set -euo pipefail

STATE=/var/lib/slurm/ablate-local
CONF=/etc/slurm/slurm.conf
PIDS=/run/slurm-ablate

log() { echo "slurm-local: $*" >&2; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The controller and node daemons run and the node takes jobs. The pid files are checked
# first: sinfo against a controller that is down retries for seconds.
answers() {
    alive "$PIDS/slurmctld.pid" && alive "$PIDS/slurmd.pid" || return 1
    case "$(sinfo -h -n localhost -o %t 2>/dev/null | head -1)" in
    idle | mix | alloc) return 0 ;;
    *) return 1 ;;
    esac
}

install() {
    if command -v sbatch >/dev/null 2>&1 && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] &&
        [ -x /usr/sbin/munged ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install Slurm here (needs root and apt-get)"
        exit 3
    fi
    log "installing slurmctld slurmd slurm-client munge from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    local cpus mem
    cpus=$(nproc)
    # More memory than slurmd detects drains the node: declare 80% of it.
    mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm "$PIDS"
    cat >"$CONF" <<EOF
# Written by ablate's scripts/slurm-local.sh: one node, for tests.
ClusterName=ablate-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start_munge() {
    if alive /run/munge/munged.pid && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge
    chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "munged did not answer"
    exit 1
}

wait_for() { # seconds, description, command...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "timed out waiting for $what"
    exit 1
}

up() {
    if answers; then
        echo "already up"
        return 0
    fi
    install
    write_config
    start_munge
    if ! alive "$PIDS/slurmctld.pid"; then
        /usr/sbin/slurmctld
        wait_for 30 "slurmctld" sh -c 'scontrol ping | grep -q UP'
    fi
    if ! alive "$PIDS/slurmd.pid"; then
        /usr/sbin/slurmd -N localhost
    fi
    # A node that was down when the controller started comes back with ReturnToService=2;
    # resume it in case the controller kept an older state.
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 30 "the node to be idle" answers
    echo "started"
}

stop_pid() { # pid file
    local f=$1 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

down() {
    if command -v scancel >/dev/null 2>&1 && alive "$PIDS/slurmctld.pid"; then
        scancel --user="$(id -un)" >/dev/null 2>&1 || true
    fi
    stop_pid "$PIDS/slurmd.pid"
    stop_pid "$PIDS/slurmctld.pid"
    stop_pid /run/munge/munged.pid
    echo "stopped"
}

case "${1:-}" in
up) up ;;
down) down ;;
check) answers ;;
*)
    echo "usage: $0 up|down|check" >&2
    exit 2
    ;;
esac
