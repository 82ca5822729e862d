#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine for the `slurm` tests (run as root).
#
#   bash .ci/start-slurm.sh      # installs slurm-wlm + munge via apt if missing, starts
#                                # munged, slurmctld, slurmd; partitions `main` (default)
#                                # and `gpu`; one fake GPU (gres gpu:1 on /dev/null)
#   bash .ci/stop-slurm.sh       # stops exactly the daemons this script started, by PID
#
# Without slurmdbd there is no accounting: the CI profile (.ci/slurm-profile) makes the
# Snakemake plugin poll `squeue`, which needs MinJobAge well above its status interval.
# Notes on the choices (all reproduced in this container):
# - the config must be /etc/slurm/slurm.conf: SLURM_CONF does not reach `srun` inside a job;
# - a fake GPU needs File= (else the node drains with "gres/gpu count reported lower");
# - no systemd/cgroups: proctrack/linuxproc + task/none;
# - EnforcePartLimits=ALL makes impossible jobs fail at sbatch instead of pending forever.
# State, logs and pid files live in $BIAPIPE_SLURM_STATE (default /tmp/biapipe-slurm).
set -euo pipefail
STATE=${BIAPIPE_SLURM_STATE:-/tmp/biapipe-slurm}
t0=$(date +%s)
log() { echo "[biapipe-slurm] $*"; }

is_up() { timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null | grep -qx idle; }

if [ "$(id -u)" != 0 ]; then echo "start-slurm.sh: needs root" >&2; exit 1; fi

if [ -s "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null && is_up; then
  log "already running (state in $STATE)"; exit 0
fi

# --- packages -------------------------------------------------------------------------
missing=0
for b in slurmctld slurmd munged; do [ -x "/usr/sbin/$b" ] || missing=1; done
for b in sbatch sinfo squeue scontrol scancel; do command -v "$b" >/dev/null 2>&1 || missing=1; done
if [ $missing = 1 ]; then
  log "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

mkdir -p "$STATE"/spool/ctld "$STATE"/spool/d "$STATE"/log "$STATE"/run /etc/slurm
unset SLURM_CONF

# --- slurm.conf ------------------------------------------------------------------------
# CPU layout exactly as slurmd detects it (else "Node reconfigured socket/core boundaries");
# RealMemory below the real memory (else the node drains).
hw=$(/usr/sbin/slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=.*//' -e 's/ UpTime=.*//')
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<CONF
# Written by biapipe .ci/start-slurm.sh: a one-node test cluster.
ClusterName=biapipe-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=600
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 $hw RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=/dev/null\n' > /etc/slurm/gres.conf

# --- munge -----------------------------------------------------------------------------
if ! munge -n </dev/null >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/run/munged.pid"   # ours: stop-slurm.sh may stop it
fi

# --- daemons -------------------------------------------------------------------------
/usr/sbin/slurmctld
ok=0; for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && { ok=1; break; }; sleep 0.5; done
[ $ok = 1 ] || { echo "slurmctld did not come up" >&2; tail -20 "$STATE/log/slurmctld.log" >&2; exit 1; }
/usr/sbin/slurmd -N localhost
ok=0; for _ in $(seq 120); do is_up && { ok=1; break; }; sleep 0.5; done
if [ $ok = 0 ]; then
  sinfo -N -o '%N %T %E' >&2 || true; tail -20 "$STATE"/log/*.log >&2; exit 1
fi

# --- smoke test: a GPU job runs and sees its GPU --------------------------------------
jid=$(timeout 60 sbatch --wait --parsable -p gpu --gpus=1 -t 1 --mem=50 -o "$STATE/log/smoke.out" \
  --wrap 'srun -n1 printenv CUDA_VISIBLE_DEVICES') || { echo "smoke job failed" >&2; cat "$STATE/log/smoke.out" >&2; exit 1; }
grep -qx 0 "$STATE/log/smoke.out" || { echo "smoke job saw no GPU" >&2; cat "$STATE/log/smoke.out" >&2; exit 1; }
log "up after $(( $(date +%s) - t0 ))s: partitions $(sinfo -h -o %P | tr '\n' ' ')(smoke job $jid ok)"
