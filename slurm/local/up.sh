#!/usr/bin/env bash
# Start a single-node Slurm on this machine (slurmctld + slurmd + munged), for takd's tests and demos.
#
#   bash slurm/local/up.sh && source "${TAKD_SLURM_BASE:-/tmp/takd-slurm}/env.sh"
#   ...  sbatch / squeue / python -m takd.plan --executor slurm --cluster local ...
#   bash slurm/local/down.sh
#
# Idempotent: installs Debian's slurm-wlm + munge if missing, (re)writes the config, starts only daemons that are not
# running (pid files under $BASE/run), needs no systemd and no terminal. It stops nothing but its own processes.
# No slurmdbd: a small `sacct` stand-in ($BASE/bin/sacct, first in PATH via env.sh) answers submitit's state queries
# from `squeue -t all` and the jobcomp log; without it submitit waits forever on a job that died without a result.
#
# Knobs: TAKD_SLURM_BASE (state dir, default /tmp/takd-slurm), TAKD_SLURM_CPUS (CPUs advertised, default: nproc; may
# exceed it), TAKD_SLURM_FAKE_GPUS (GRES gpu count backed by /dev/null, default 2; only request syntax is exercised).
set -euo pipefail
BASE=${TAKD_SLURM_BASE:-/tmp/takd-slurm}
HOST=$(hostname -s)
CPUS=${TAKD_SLURM_CPUS:-$(nproc)}
GPUS=${TAKD_SLURM_FAKE_GPUS:-2}
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
say() { echo "[slurm up] $*" >&2; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
export PATH=$PATH:/usr/sbin:/sbin

need=0
for b in slurmctld slurmd sbatch squeue scontrol munged; do command -v "$b" >/dev/null || need=1; done
if [ "$need" = 1 ]; then
  say "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge </dev/null >/dev/null
fi

mkdir -p "$BASE"/{etc,state,spool,log,run,munge,dev,bin}
chmod 0700 "$BASE/munge"
gres_node="" ; gres_types=""
: > "$BASE/etc/gres.conf"
if [ "$GPUS" -gt 0 ]; then
  # Slurm 22.05 needs File= for gpu GRES (Count= alone marks the node INVAL): point them at /dev/null.
  for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$BASE/dev/gpu$i"; done
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/gpu[0-%d]\n' "$HOST" "$BASE" $((GPUS - 1)) > "$BASE/etc/gres.conf"
  gres_node="Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"
fi

cat > "$BASE/etc/slurm.conf" <<CONF
# written by takd slurm/local/up.sh: one node, no cgroups, no accounting daemon
ClusterName=takdlocal
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job is held before it may run again (default 120 s)
AuthInfo=socket=$BASE/run/munge.socket,cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
MinJobAge=600
DependencyParameters=kill_invalid_depend
KillWait=5
InactiveLimit=0
$gres_types
NodeName=$HOST CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB $gres_node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

cat > "$BASE/bin/sacct" <<'SACCT'
#!/usr/bin/env bash
# sacct stand-in for a Slurm without slurmdbd: real sacct if it answers, else JobID|State|NodeList rows built from
# `squeue -t all` (jobs slurmctld still remembers) and the jobcomp text log (`sacct -c`).
real=/usr/bin/sacct
if out=$("$real" "$@" 2>/dev/null); then printf '%s\n' "$out"; exit 0; fi
ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) shift; IFS=, read -ra more <<< "$1"; ids+=("${more[@]}") ;;
    -j*) IFS=, read -ra more <<< "${1#-j}"; ids+=("${more[@]}") ;;
    --jobs=*) IFS=, read -ra more <<< "${1#--jobs=}"; ids+=("${more[@]}") ;;
  esac
  shift
done
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do
  row=$(squeue -h -t all -j "$id" -o '%i|%T|%N' 2>/dev/null)
  if [ -n "$row" ]; then printf '%s\n' "$row"; else "$real" -c -n --parsable2 -o JobID,State,NodeList -j "$id" 2>/dev/null | tail -n 1; fi
done
SACCT
chmod +x "$BASE/bin/sacct"
printf 'export SLURM_CONF=%s/etc/slurm.conf\nexport PATH=%s/bin:$PATH\n' "$BASE" "$BASE" > "$BASE/env.sh"
export SLURM_CONF=$BASE/etc/slurm.conf

if ! running "$BASE/run/munged.pid"; then
  [ -s "$BASE/munge/munge.key" ] || dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$BASE/munge/munge.key"
  rm -f "$BASE/run/munge.socket" "$BASE/run/munge.socket.lock"
  munged --force --socket="$BASE/run/munge.socket" --key-file="$BASE/munge/munge.key" \
    --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" --seed-file="$BASE/munge/seed" </dev/null
  for _ in $(seq 50); do [ -S "$BASE/run/munge.socket" ] && break; sleep 0.1; done
fi
running "$BASE/run/slurmctld.pid" || { say "starting slurmctld"; setsid slurmctld -f "$SLURM_CONF" -i </dev/null; }
running "$BASE/run/slurmd.pid" || { say "starting slurmd"; setsid slurmd -f "$SLURM_CONF" </dev/null; }
for i in $(seq 100); do
  state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mixed|allocated) say "node $HOST $state ($CPUS CPUs, $GPUS fake GPUs); source $BASE/env.sh"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
say "node did not become idle; see $BASE/log/slurmctld.log and slurmd.log"; exit 1
