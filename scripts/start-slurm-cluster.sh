#!/usr/bin/env bash
# Starts a real Slurm cluster of several nodes on this one machine, for cofe's Slurm tests
# (`cofe run --slurm`), on a Debian machine without systemd (CI, a sandbox).
#
#   eval "$(scripts/start-slurm-cluster.sh)"   # exports SLURM_CONF, COFE_SLURM_DIR, COFE_SLURM_PARTITION,
#                                               # COFE_SLURM_NODE_MEMORY_MB (RealMemory of each node)
#   scripts/start-slurm-cluster.sh --stop       # stops the daemons it started
#
# Progress goes to stderr; stdout carries only the export lines. Run as root. Every start wipes the
# cluster's state folder (a node drained by an earlier run would otherwise stay drained) and
# restarts the daemons. Nodes n1..nN are all this host (NodeAddr=127.0.0.1, one slurmd port each).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live there; a CI shell's PATH may lack them

DIR=${COFE_SLURM_DIR:-/var/lib/cofe-slurm}
NODES=${COFE_SLURM_NODES:-4}
PARTITION=debug
CTLD_PORT=${COFE_SLURM_CTLD_PORT:-16817}
FIRST_SLURMD_PORT=${COFE_SLURM_FIRST_NODE_PORT:-17001}

say() { echo "[slurm-cluster] $*" >&2; }

stop_daemons() {
    for pidfile in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        alive=0
        for pidfile in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do
            [ -e "$pidfile" ] && kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
}

if [ "${1:-}" = "--stop" ]; then
    stop_daemons
    say "stopped"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing slurmctld, slurmd, slurm-client and munge from Debian"
    bash "$(dirname "$0")/apt-install-without-services.sh" slurmctld slurmd slurm-client munge
fi

# munge: slurm's authentication. One daemon for the machine; reuse it if it answers.
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged
    for _ in $(seq 1 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

stop_daemons
rm -rf "$DIR"
mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/run "$DIR"/log

HOST=$(hostname -s)
CPUS=$(nproc)
TOTAL_MB=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
# Every node is this machine: each claims its cores and most of its memory (memory is not a
# consumable with CR_Core; RealMemory only bounds what one job may ask for, so an impossible
# --mem is refused at once).
NODE_MB=$(( TOTAL_MB * 85 / 100 ))
LAST_PORT=$(( FIRST_SLURMD_PORT + NODES - 1 ))

cat > "$DIR/slurm.conf" <<EOF
ClusterName=cofe
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
ReturnToService=2
KillWait=10
MinJobAge=300
SlurmdTimeout=60
NodeName=n[1-$NODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[$FIRST_SLURMD_PORT-$LAST_PORT] CPUs=$CPUS RealMemory=$NODE_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

export SLURM_CONF="$DIR/slurm.conf"
say "starting slurmctld (port $CTLD_PORT) and $NODES slurmd (n1..n$NODES, ports $FIRST_SLURMD_PORT-$LAST_PORT); logs in $DIR/log"
slurmctld -i
for i in $(seq 1 "$NODES"); do
    slurmd -N "n$i"
done

ready=0
for _ in $(seq 1 100); do
    idle=$(timeout 5 sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
    if [ "${idle:-0}" -ge "$NODES" ]; then ready=1; break; fi
    sleep 0.2
done
if [ $ready != 1 ]; then
    say "the nodes did not become idle; sinfo says:"
    timeout 5 sinfo -N -l >&2 || true
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 1
fi
say "cluster up: $NODES nodes of $CPUS CPUs and $NODE_MB MB each, partition $PARTITION"

echo "export SLURM_CONF=$DIR/slurm.conf"
echo "export COFE_SLURM_DIR=$DIR"
echo "export COFE_SLURM_PARTITION=$PARTITION"
echo "export COFE_SLURM_NODE_MEMORY_MB=$NODE_MB"
