#!/usr/bin/env bash
# A one-node SLURM on this machine, for protoscope's tests (pytest -m slurm) and CI.
#   tests/cluster/slurm_up.sh         install slurm-wlm + munge if missing (apt-get, as root), write a
#                                     one-node slurm.conf, start munged, slurmctld, slurmd, wait until idle
#   tests/cluster/slurm_up.sh stop    stop the daemons this script started
# Without systemd and without accounting (no slurmdbd): submitit's sacct calls fail, and protoscope's
# launcher (protoscope.slurm) asks squeue instead. An /etc/slurm/slurm.conf this script did not write
# (a real cluster) is never touched. Exit 0: the node is idle; exit 3: no root or apt, nothing done.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by protoscope tests/cluster/slurm_up.sh"
STATE=${PROTOSCOPE_SLURM_STATE:-/var/lib/protoscope-slurm}
WAIT_S=${PROTOSCOPE_SLURM_WAIT_S:-120}

say() { echo "slurm_up: $*" >&2; }

stop() {
  for d in slurmd slurmctld; do
    if [ -f "$STATE/$d.pid" ] && kill -0 "$(cat "$STATE/$d.pid")" 2>/dev/null; then
      kill "$(cat "$STATE/$d.pid")" && say "stopped $d"
    fi
  done
  if [ -f "$STATE/munged.started" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null && say "stopped munged"
    rm -f "$STATE/munged.started"
  fi
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi

if [ "$(id -u)" != 0 ]; then say "skipped: not root"; exit 3; fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then say "skipped: $CONF belongs to another SLURM"; exit 3; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { say "skipped: slurm-wlm is not installed and there is no apt-get"; exit 3; }
  say "installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the machine's cores: nproc obeys OMP_NUM_THREADS, which the tests set to 1
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
cat > "$CONF" <<CONF
$MARK
ClusterName=protoscope
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Requeued jobs (scontrol requeue, submitit after SIGUSR2) run again; SIGTERM leaves KillWait seconds
# to save the state before SIGKILL.
JobRequeue=1
KillWait=60
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/munged.started"
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq "$WAIT_S"); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  case "$state" in
    idle|mix|alloc) say "node $host is $state ($cpus CPUs)"; exit 0 ;;
    drain*|down*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
say "the node did not become idle within ${WAIT_S}s (state: ${state:-none}); logs in $STATE"
exit 1
