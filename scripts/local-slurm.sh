#!/usr/bin/env bash
# local-slurm.sh -- a real one-node Slurm cluster on localhost for batchseg's tests and demos.
#
#   bash scripts/local-slurm.sh start   # install if missing, configure, start, wait for an idle node;
#                                       # prints the path of an env file that exports SLURM_CONF
#   bash scripts/local-slurm.sh env     # prints `export SLURM_CONF=...` (eval it)
#   bash scripts/local-slurm.sh status  # exit 0 when our controller answers and the node is usable
#   bash scripts/local-slurm.sh stop    # cancel our jobs, stop ONLY the daemons this script started
#
# Debian 12 (slurm-wlm 22.05 + munge), run as root, no systemd and no cgroups needed.
# `start` is idempotent: running daemons are kept, a changed config restarts ours.
#
# Knobs (environment):
#   BATCHSEG_SLURM_DIR            config, state, logs, pid files         (default /tmp/batchseg-slurm)
#   BATCHSEG_SLURM_CPUS           CPUs the node advertises (may exceed the real cores)   (default 8)
#   BATCHSEG_SLURM_MEM_MB         RealMemory the node advertises, MB                      (default 8000)
#   BATCHSEG_SLURM_GPUS           fake GPUs (char devices, so CUDA_VISIBLE_DEVICES is set) (default 2)
#   BATCHSEG_SLURM_MAX_ARRAY_SIZE MaxArraySize; small on purpose so that batchseg's chunking of
#                                 large arrays runs for real in the tests                 (default 10)
#   BATCHSEG_SLURM_ACCOUNTING     1: also run MariaDB + slurmdbd so that sacct works     (default 0)
#   BATCHSEG_SLURM_MIN_JOB_AGE    seconds finished jobs stay visible to squeue/scontrol  (default 300)
#   BATCHSEG_SLURM_CTLD_PORT / _SLURMD_PORT / _DBD_PORT / _MYSQL_PORT   (6817 / 6818 / 6819 / 3307)
#   BATCHSEG_SLURM_NO_APT         1: never run apt-get                                   (default 0)
#   BATCHSEG_SLURM_LINK_ETC       0: leave /etc/slurm alone (a second instance beside another) (default 1)
set -euo pipefail

DIR=${BATCHSEG_SLURM_DIR:-/tmp/batchseg-slurm}
CPUS=${BATCHSEG_SLURM_CPUS:-8}
MEM=${BATCHSEG_SLURM_MEM_MB:-8000}
GPUS=${BATCHSEG_SLURM_GPUS:-2}
MAX_ARRAY=${BATCHSEG_SLURM_MAX_ARRAY_SIZE:-10}
ACCT=${BATCHSEG_SLURM_ACCOUNTING:-0}
MIN_JOB_AGE=${BATCHSEG_SLURM_MIN_JOB_AGE:-300}
CTLD_PORT=${BATCHSEG_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${BATCHSEG_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${BATCHSEG_SLURM_DBD_PORT:-6819}
MYSQL_PORT=${BATCHSEG_SLURM_MYSQL_PORT:-3307}
NO_APT=${BATCHSEG_SLURM_NO_APT:-0}
LINK_ETC=${BATCHSEG_SLURM_LINK_ETC:-1}
NODE=localhost            # slurmd runs with -N localhost: the machine's hostname never matters
CONF=$DIR/etc/slurm.conf
ENV_FILE=$DIR/env.sh
SBIN=/usr/sbin
export PATH=$PATH:/usr/sbin:/sbin
export SLURM_CONF=$CONF   # for our own client calls; slurmdbd finds slurmdbd.conf next to it

T0=$(date +%s%N)
log() { printf '[local-slurm %6dms] %s\n' $((($(date +%s%N) - T0) / 1000000)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ process helpers
# A zombie (exited, not yet reaped: PID 1 in a container may reap late) counts as stopped.
is_running() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st%% *}
  [ -n "$st" ] && [ "$st" != Z ]
}
# ours PIDFILE COMM: the pid file names a live process whose command is COMM. The name check
# keeps us from ever signalling a recycled PID that now belongs to someone else.
ours() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n1 "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && is_running "$pid"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
poll() {  # poll TENTHS CMD...: retry CMD every 0.1 s
  local n=$1; shift
  for ((k = 0; k < n; k++)); do "$@" && return 0; sleep 0.1; done
  return 1
}
# Start a daemon with stdio on /dev/null and no inherited descriptors above 2: munged and
# mariadbd keep whatever they inherit, and a daemon holding the caller's pipe hangs CI.
detach() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
  done
  exec "$@" </dev/null >/dev/null 2>&1
}
run_detached() { (detach "$@"); }        # for programs that daemonize themselves
run_background() { (detach "$@") & }     # for programs that stay in the foreground
stop_daemons() {  # stop_daemons NAME...: TERM those we started, wait up to 15 s, then KILL
  local name pid pids=() left=()
  for name in "$@"; do
    if ours "$DIR/pids/$name.pid" "$name"; then
      pid=$(head -n1 "$DIR/pids/$name.pid")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" && pids+=("$pid")
    fi
  done
  for ((k = 0; k < 150; k++)); do
    left=()
    for pid in "${pids[@]}"; do is_running "$pid" && left+=("$pid"); done
    [ ${#left[@]} = 0 ] && break
    sleep 0.1
  done
  for pid in "${left[@]}"; do log "pid $pid ignored TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; done
  for name in "$@"; do rm -f "$DIR/pids/$name.pid"; done
}
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true; }

# ------------------------------------------------------------------ stop
cmd_stop() {
  if ours "$DIR/pids/slurmctld.pid" slurmctld && ctld_up; then
    local jobs
    jobs=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      poll 150 test -z "$(squeue -h 2>/dev/null)" || true
    fi
  fi
  stop_daemons slurmd slurmctld slurmdbd
  stop_daemons mariadbd munged
  # the /etc/slurm links point into our folder only while we run
  local f
  for f in slurm.conf gres.conf; do
    if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$DIR/etc/$f" ]; then rm -f "/etc/slurm/$f"; fi
  done
  log "stopped"
}

cmd_status() {
  ours "$DIR/pids/slurmctld.pid" slurmctld || { echo "slurmctld not running (ours)"; return 1; }
  ctld_up || { echo "slurmctld not answering"; return 1; }
  local st; st=$(node_state)
  echo "node $NODE: ${st:-unknown}"
  case "$st" in idle* | mixed* | allocated* | completing*) return 0 ;; esac
  return 1
}

# ------------------------------------------------------------------ start
install_missing() {
  local pkgs=()
  [ -x $SBIN/slurmctld ] || pkgs+=(slurmctld)
  [ -x $SBIN/slurmd ] || pkgs+=(slurmd)
  command -v sbatch >/dev/null || pkgs+=(slurm-client)
  [ -x $SBIN/munged ] || pkgs+=(munge)
  if [ "$ACCT" = 1 ]; then
    [ -x $SBIN/slurmdbd ] || pkgs+=(slurmdbd)
    [ -x $SBIN/mariadbd ] || pkgs+=(mariadb-server)
  fi
  [ ${#pkgs[@]} = 0 ] && return 0
  [ "$NO_APT" = 1 ] && die "missing packages: ${pkgs[*]} (BATCHSEG_SLURM_NO_APT=1)"
  log "apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: a handful of packages instead of ~40. The postinsts cannot start
  # services without systemd (policy-rc.d says no); that is harmless, we start them below.
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  log "installed"
}

start_munge() {
  munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
  if munge_works; then
    ours "$DIR/pids/munged.pid" munged || log "using a munged this script did not start"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    runuser -u munge -- $SBIN/mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  # systemd's RuntimeDirectory would make these; without it we must
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  run_detached runuser -u munge -- $SBIN/munged --force
  poll 50 munge_works || die "munged did not start; see /var/log/munge/munged.log"
  cp /run/munge/munged.pid "$DIR/pids/munged.pid"
  log "munged started (pid $(cat "$DIR/pids/munged.pid"))"
}

start_accounting() {
  local sock=$DIR/mysql-run/mysqld.sock
  sql() { mariadb --no-defaults -S "$sock" -uroot "$@"; }
  install -d -o mysql -g mysql -m 0750 "$DIR/mysql" "$DIR/mysql-run"
  if ! ours "$DIR/pids/mariadbd.pid" mariadbd; then
    if [ ! -d "$DIR/mysql/mysql" ]; then
      mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install-db.log" 2>&1 ||
        die "mariadb-install-db failed; see $DIR/log/mariadb-install-db.log"
    fi
    port_open "$MYSQL_PORT" && die "port $MYSQL_PORT is taken; set BATCHSEG_SLURM_MYSQL_PORT"
    run_background setsid setpriv --reuid=mysql --regid=mysql --init-groups $SBIN/mariadbd --no-defaults \
      --datadir="$DIR/mysql" --socket="$sock" --pid-file="$DIR/mysql-run/mysqld.pid" \
      --bind-address=127.0.0.1 --port="$MYSQL_PORT" --log-error="$DIR/mysql-run/mysqld.err" \
      --skip-log-bin --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=0
    poll 300 sql -e 'SELECT 1' >/dev/null 2>&1 || die "mariadbd did not start; see $DIR/mysql-run/mysqld.err"
    cp "$DIR/mysql-run/mysqld.pid" "$DIR/pids/mariadbd.pid"
    log "mariadbd started (pid $(cat "$DIR/pids/mariadbd.pid"))"
  fi
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF, mode 0600, owned by SlurmUser
  local new=$DIR/etc/slurmdbd.conf.new
  (umask 077 && cat >"$new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/pids/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  )
  if cmp -s "$new" "$DIR/etc/slurmdbd.conf"; then rm -f "$new"; else
    mv "$new" "$DIR/etc/slurmdbd.conf"
    stop_daemons slurmdbd
  fi
  if ! ours "$DIR/pids/slurmdbd.pid" slurmdbd; then
    port_open "$DBD_PORT" && die "port $DBD_PORT is taken; set BATCHSEG_SLURM_DBD_PORT"
    run_detached $SBIN/slurmdbd
    poll 300 port_open "$DBD_PORT" || die "slurmdbd not listening; see $DIR/log/slurmdbd.log"
    log "slurmdbd started (pid $(cat "$DIR/pids/slurmdbd.pid"))"
  fi
}

write_config() {  # prints 1 when slurm.conf or gres.conf changed
  local conf gres acct changed=0
  if [ "$ACCT" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  conf=$(mktemp)
  cat >"$conf" <<EOF
# written by batchseg scripts/local-slurm.sh: a one-node test cluster
ClusterName=batchseg
# "localhost" is replaced by the short hostname; the address part avoids any name lookup
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays the restart of a requeued job (default 120 s; 2 would be refused)
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
# no cgroups: linuxproc still kills a job's whole process tree on cancel and time limit
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct
# one line per finished job even without slurmdbd (sacct needs slurmdbd)
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default each job gets the whole node's memory and jobs run one at a time
DefMemPerCPU=100
# advertise more CPUs than the machine has: test tasks mostly sleep
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# the first job starts ~1 s after the daemons, a requeued one ~cred_expire+1 s after requeue
SchedulerParameters=bf_interval=1,sched_interval=2
MaxArraySize=$MAX_ARRAY
GresTypes=gpu
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
# finished jobs stay visible to squeue -t all and scontrol for this long
MinJobAge=$MIN_JOB_AGE
# seconds from SIGTERM to SIGKILL at the time limit or on scancel (default 30)
KillWait=5
OverTimeLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM $([ "$GPUS" -gt 0 ] && echo "Gres=gpu:$GPUS") State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  gres=$(mktemp)
  {
    echo "AutoDetect=off"
    if [ "$GPUS" -gt 0 ]; then
      # Plain files are refused ("not a valid character or block device") and then no
      # CUDA_VISIBLE_DEVICES is set; char devices with /dev/null's numbers are accepted.
      for ((k = 0; k < GPUS; k++)); do
        [ -c "$DIR/fakegpu/nvidia$k" ] || { rm -f "$DIR/fakegpu/nvidia$k"; mknod -m 666 "$DIR/fakegpu/nvidia$k" c 1 3; }
      done
      echo "NodeName=$NODE Name=gpu File=$DIR/fakegpu/nvidia[0-$((GPUS - 1))]"
    fi
  } >"$gres"
  cmp -s "$conf" "$CONF" || { mv "$conf" "$CONF"; changed=1; }
  cmp -s "$gres" "$DIR/etc/gres.conf" || { mv "$gres" "$DIR/etc/gres.conf"; changed=1; }
  rm -f "$conf" "$gres"
  chmod 644 "$CONF" "$DIR/etc/gres.conf"
  echo "$changed"
}

link_etc() {
  # Jobs and tools that never saw SLURM_CONF still find our cluster, unless the machine has
  # its own /etc/slurm/slurm.conf, which we leave alone.
  local f
  mkdir -p /etc/slurm
  for f in slurm.conf gres.conf; do
    if [ -L "/etc/slurm/$f" ] || [ ! -e "/etc/slurm/$f" ]; then
      ln -sfn "$DIR/etc/$f" "/etc/slurm/$f"
    else
      log "NOTE: /etc/slurm/$f is a real file, left alone; use SLURM_CONF=$CONF"
    fi
  done
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  install_missing
  mkdir -p "$DIR"/{etc,state,spool,log,pids,fakegpu}
  chmod 755 "$DIR"
  start_munge
  [ "$ACCT" = 1 ] && start_accounting
  local changed
  changed=$(write_config)
  [ "$LINK_ETC" = 1 ] && link_etc
  printf 'export SLURM_CONF=%q\n' "$CONF" >"$ENV_FILE"

  if [ "$changed" = 1 ] && { ours "$DIR/pids/slurmd.pid" slurmd || ours "$DIR/pids/slurmctld.pid" slurmctld; }; then
    log "config changed: restarting our slurmctld and slurmd"
    stop_daemons slurmd slurmctld
  fi
  if ! ours "$DIR/pids/slurmctld.pid" slurmctld; then
    port_open "$CTLD_PORT" && die "port $CTLD_PORT is taken (a slurmctld we did not start?); set BATCHSEG_SLURM_CTLD_PORT"
    # -i: start even when old state files cannot be read
    run_detached $SBIN/slurmctld -f "$CONF" -i
    log "slurmctld started"
  fi
  poll 150 ctld_up || die "slurmctld does not answer; see $DIR/log/slurmctld.log"
  if ! ours "$DIR/pids/slurmd.pid" slurmd; then
    port_open "$SLURMD_PORT" && die "port $SLURMD_PORT is taken (a slurmd we did not start?); set BATCHSEG_SLURM_SLURMD_PORT"
    run_detached $SBIN/slurmd -f "$CONF" -N "$NODE"
    log "slurmd started"
  fi
  local st=""
  node_ready() {
    st=$(node_state)
    case "$st" in
      idle* | mixed* | allocated* | completing*) return 0 ;;
      down* | drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    return 1
  }
  poll 300 node_ready || { scontrol show node "$NODE" >&2 || true; die "node is '$st'; see $DIR/log/slurmd.log"; }
  log "ready: node $NODE $st, daemons $(cat "$DIR"/pids/*.pid 2>/dev/null | tr '\n' ' ')"
  echo "$ENV_FILE"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
