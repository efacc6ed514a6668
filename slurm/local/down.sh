#!/usr/bin/env bash
# Stop the local Slurm started by up.sh: cancel its jobs, then stop slurmd, slurmctld, munged by their pid files.
set -uo pipefail
BASE=${TAKD_SLURM_BASE:-/tmp/takd-slurm}
export SLURM_CONF=$BASE/etc/slurm.conf PATH=$PATH:/usr/sbin:/sbin
stop() {
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
  scancel --state=PENDING,RUNNING --full 2>/dev/null || true
fi
stop "$BASE/run/slurmd.pid"; stop "$BASE/run/slurmctld.pid"; stop "$BASE/run/munged.pid"
echo "[slurm down] stopped ($BASE kept; rm -rf it to start from scratch)" >&2
