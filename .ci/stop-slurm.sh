#!/usr/bin/env bash
# Stop the daemons .ci/start-slurm.sh started, by the PIDs it recorded (never by name).
STATE=${BIAPIPE_SLURM_STATE:-/tmp/biapipe-slurm}
for name in slurmd slurmctld munged; do
  f="$STATE/run/$name.pid"
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
echo "[biapipe-slurm] stopped"
