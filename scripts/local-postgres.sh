#!/usr/bin/env bash
# local-postgres.sh -- a throwaway PostgreSQL for batchseg's tests (tests/pg) and demos.
#
#   bash scripts/local-postgres.sh start   # install if missing, initdb, start; prints export lines
#                                          # (also written to $BATCHSEG_PG_DIR/env.sh)
#   bash scripts/local-postgres.sh env     # prints the export lines again
#   bash scripts/local-postgres.sh stop    # stops OUR server (our data folder) only
#
# Own data folder, port 5433, loopback only, trust authentication, durability off: for tests
# only. Debian's own cluster (15/main) is never touched. Run as root; initdb and the server
# run as user postgres, so the data folder's parents must be traversable by it (/tmp is).
#
# Knobs: BATCHSEG_PG_DIR (default /tmp/batchseg-pg), BATCHSEG_PG_PORT (5433),
#        BATCHSEG_PG_DB / BATCHSEG_PG_USER (batchseg), BATCHSEG_PG_NO_APT=1 never runs apt-get.
# The URL: postgresql+psycopg://batchseg@127.0.0.1:5433/batchseg (BATCHSEG_TEST_PG_URL).
set -euo pipefail
DIR=${BATCHSEG_PG_DIR:-/tmp/batchseg-pg}
PORT=${BATCHSEG_PG_PORT:-5433}
DB=${BATCHSEG_PG_DB:-batchseg}
ROLE=${BATCHSEG_PG_USER:-batchseg}
URL="postgresql+psycopg://$ROLE@127.0.0.1:$PORT/$DB"
T0=$(date +%s%N)
log() { printf '[local-postgres %6dms] %s\n' $((($(date +%s%N) - T0) / 1000000)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
as_postgres() { runuser -u postgres -- "$@"; }
exports() {
  cat <<EOF
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=$ROLE PGDATABASE=$DB
export BATCHSEG_TEST_PG_URL=$URL
EOF
}

cmd_stop() {
  local bin; bin=$(pg_bin)
  if [ -n "$bin" ] && [ -f "$DIR/data/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true
    log "stopped"
  else
    log "not running"
  fi
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (initdb and the server run as user postgres)"
  if [ -z "$(pg_bin)" ] || ! id postgres >/dev/null 2>&1; then
    [ "${BATCHSEG_PG_NO_APT:-0}" = 1 ] && die "postgresql is not installed (BATCHSEG_PG_NO_APT=1)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the postinst makes cluster 15/main but cannot start it without systemd; we never use it
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    log "postgresql installed"
  fi
  local bin; bin=$(pg_bin)
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  install -d -o postgres -g postgres -m 0700 "$DIR/data"
  install -d -o postgres -g postgres -m 0755 "$DIR/run" "$DIR/log"
  if [ ! -s "$DIR/data/PG_VERSION" ]; then
    # initdb refuses root; --no-sync halves its time and durability does not matter here
    as_postgres "$bin/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
      >"$DIR/log/initdb.log" 2>&1 || { cat "$DIR/log/initdb.log" >&2; die "initdb failed"; }
    cat >>"$DIR/data/postgresql.conf" <<EOF
# batchseg scripts/local-postgres.sh: a test server
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/run'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
EOF
    log "initdb done"
  fi
  if as_postgres "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    log "already running (pid $(head -n1 "$DIR/data/postmaster.pid"))"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT is taken; set BATCHSEG_PG_PORT"
    rm -f "$DIR/data/postmaster.pid"   # left by a crash or a reboot
    as_postgres "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/log/postgres.log" -w -t 30 start >/dev/null ||
      { tail -n 20 "$DIR/log/postgres.log" >&2; die "the server did not start"; }
    log "started (pid $(head -n1 "$DIR/data/postmaster.pid"))"
  fi
  psql_() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$DIR/run" -p "$PORT" -U postgres -d postgres "$@"; }
  [ "$(psql_ -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ] ||
    psql_ -c "CREATE ROLE \"$ROLE\" LOGIN CREATEDB"
  [ "$(psql_ -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" = 1 ] ||
    psql_ -c "CREATE DATABASE \"$DB\" OWNER \"$ROLE\""
  exports >"$DIR/env.sh"
  log "ready: $URL"
  exports
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) exports ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
