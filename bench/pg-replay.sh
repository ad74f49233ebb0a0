#!/usr/bin/env bash
# WAL replay: embassy's fetch helper against pgBackRest's asynchronous archive-get, on the same
# cluster and the same WAL, in one run.
#   bench/pg-replay.sh EMBASSY_BIN [WORK]        (as root; see bench/README.md)
# Environment: SCALE (pgbench -i scale of the load after the base backups; 64 writes about
# 1 GB of WAL), BASE_SCALE (pgbench -i scale of a `registry` database loaded before the base
# backups, so they hold it: 80 is about 1.2 GB; default 0, none), PROCESS_MAX (pgBackRest's archive-get/-push processes, default 2),
# PGBR_COMPRESS (pgBackRest's compress-type, default zst), DIRECT=1 (also time embassy without
# the helper: `--prefetch 0`, every WAL file fetched by its own process), KEEP=1 keeps WORK.
#  1. a fresh PostgreSQL 15 cluster archives with `pgbackrest archive-push` (archive-async=y,
#     process-max) while `embassy pg stream` streams the same WAL into a local vault;
#  2. a pgBackRest full backup and an `embassy pg base-backup --wal-streamed`, then the load
#     (pgbench -i -s SCALE); waits until both hold all of it; a plain `pg_basebackup` of the
#     final state is timed as the reference RTO (a local copy, no replay); the cluster stops;
#  3. `pgbackrest restore` (restore_command = archive-get, async, process-max) and
#     `embassy restore --latest` (restore_command = wal-fetch with its fetch helper), each
#     started and timed until it accepts writes; row counts checked against the source.
# Prints, per tool: WAL replayed (MB), replay seconds (server start to accepting writes), replay
# throughput (MB/s of WAL) and RTO (restore command start to accepting writes); the load average.
set -euo pipefail
echo "[pg-replay] load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
EXE=$(readlink -f "${1:?usage: pg-replay.sh EMBASSY_BIN [WORK]}")
W=${2:-/tmp/embassy-pg-replay}
SCALE=${SCALE:-64}
BASE_SCALE=${BASE_SCALE:-0}
PROCESS_MAX=${PROCESS_MAX:-2}
PGBIN=/usr/lib/postgresql/15/bin
[ "$(id -u)" = 0 ] || { echo "pg-replay.sh: run as root" >&2; exit 1; }
command -v pgbackrest >/dev/null || apt-get install -y pgbackrest
rm -rf "$W"; mkdir -p "$W"/{sock,restores,pgbr-repo,pgbr-spool,pgbr-log}
printf 'bench-passphrase' > "$W/pass"
cp "$EXE" "$W/embassy"
PORT=${BENCH_PGPORT:-55461}
export PGBACKREST_CONFIG="$W/pgbackrest.conf"
cat > "$PGBACKREST_CONFIG" <<EOF
[global]
repo1-path=$W/pgbr-repo
spool-path=$W/pgbr-spool
lock-path=$W/pgbr-spool
log-path=$W/pgbr-log
archive-async=y
compress-type=${PGBR_COMPRESS:-zst}
start-fast=y
log-level-console=warn
[global:archive-push]
process-max=$PROCESS_MAX
[global:archive-get]
process-max=$PROCESS_MAX
[bench]
pg1-path=$W/src
pg1-port=$PORT
pg1-socket-path=$W/sock
EOF
chown -R postgres: "$W"
pg() { runuser -u postgres -- env PGBACKREST_CONFIG="$PGBACKREST_CONFIG" "$@"; }
pgbr() { pg pgbackrest --stanza=bench "$@"; }
emb() { pg env HOME="$W" "$W/embassy" --site "$W/site" --key-file "$W/vault.key" \
          --passphrase-file "$W/pass" --state-dir "$W/state" --quiet "$@"; }
start() { pg "$PGBIN/pg_ctl" -D "$1" -w -t 3600 -l "$W/$(basename "$1").log" -o \
          "-c listen_addresses='' -k $W/sock -p $2" start >/dev/null; }
stop() { [ -f "$1/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null || true; }
psql_() { pg "$PGBIN/psql" -X -At -h "$W/sock" -p "$1" -d postgres -c "$2"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
lsn() { python3 -c "h, l = '$1'.split('/'); print(int(h, 16) << 32 | int(l, 16))"; }
open_wait() { until [ "$(psql_ "$1" 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done; }
started=()
STREAM=
# The streamer runs under runuser, which does not always pass SIGTERM on: signal its child too
# (a streamer left behind kept retrying for an hour after a run).
stop_stream() {
  pkill -TERM -P "$STREAM" 2>/dev/null || true
  kill -TERM "$STREAM" 2>/dev/null || true
  wait "$STREAM" 2>/dev/null || true
  STREAM=
}
cleanup() {
  [ -n "$STREAM" ] && stop_stream || true
  for d in "${started[@]}"; do stop "$d"; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
COUNTS="SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts"

# 1. The cluster, archiving through pgBackRest and streamed by embassy.
pg "$PGBIN/initdb" -D "$W/src" -A trust -U postgres >/dev/null
cat >> "$W/src/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = 'pgbackrest --stanza=bench archive-push %p'
max_wal_size = 4GB
EOF
start "$W/src" "$PORT"; started+=("$W/src")
pgbr stanza-create >/dev/null
emb init >/dev/null
pg env HOME="$W" "$W/embassy" --site "$W/site" --key-file "$W/vault.key" \
  --passphrase-file "$W/pass" --state-dir "$W/state" --quiet pg stream bench \
  --conninfo "host=$W/sock port=$PORT user=postgres" --slot embassy_bench --create-slot \
  --durable-log "$W/durable.log" 2>"$W/stream.err" &
STREAM=$!
durable() { sort -n "$W/durable.log" 2>/dev/null | tail -1 | cut -d' ' -f1; }
until [ -n "$(durable)" ]; do sleep 0.2; done

# 2. Base backups (of a registry loaded first, with BASE_SCALE), then the load.
if [ "$BASE_SCALE" -gt 0 ]; then
  psql_ "$PORT" 'CREATE DATABASE registry' >/dev/null
  t=$(now); pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -i -s "$BASE_SCALE" -q registry >/dev/null 2>&1
  psql_ "$PORT" CHECKPOINT >/dev/null
  echo "[pg-replay] registry before the base backups (pgbench -i -s $BASE_SCALE): $(psql_ "$PORT" "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database"), $(since "$t") s"
fi
t=$(now); pgbr backup --type=full >/dev/null; echo "[pg-replay] pgBackRest full backup: $(since "$t") s"
t=$(now); emb pg base-backup bench --conninfo "host=$W/sock port=$PORT user=postgres dbname=postgres" --wal-streamed >/dev/null
echo "[pg-replay] embassy base backup: $(since "$t") s"
START=$(lsn "$(psql_ "$PORT" 'SELECT pg_current_wal_lsn()')")
t=$(now); pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
echo "[pg-replay] load (pgbench -i -s $SCALE): $(since "$t") s"
WANT=$(psql_ "$PORT" "$COUNTS")
END=$(lsn "$(psql_ "$PORT" 'SELECT pg_current_wal_lsn()')")
LAST=$(psql_ "$PORT" 'SELECT pg_walfile_name(pg_switch_wal())')
MB=$(echo "scale=1; ($END - $START) / 1000000" | bc)
until [ "$(durable)" -ge "$END" ] 2>/dev/null; do sleep 0.2; done
until [ "$(psql_ "$PORT" 'SELECT last_archived_wal FROM pg_stat_archiver')" \> "$LAST" ] \
   || [ "$(psql_ "$PORT" 'SELECT last_archived_wal FROM pg_stat_archiver')" = "$LAST" ]; do sleep 0.2; done
echo "[pg-replay] $MB MB of WAL after the base backups, held by both"
stop_stream
t=$(now)
pg "$PGBIN/pg_basebackup" -h "$W/sock" -p "$PORT" -D "$W/restores/plain" -X stream -c fast
start "$W/restores/plain" $((PORT + 1)); started+=("$W/restores/plain"); open_wait $((PORT + 1))
PLAIN=$(since "$t")
echo "[pg-replay] reference: local pg_basebackup copy of the final state, until it accepts writes: $PLAIN s"
stop "$W/restores/plain"; rm -rf "$W/restores/plain"
stop "$W/src"

# 3. The restores, one after the other.
report() { # tool rto replay
  echo "[pg-replay] $1: RTO $2 s (restore + replay until it accepts writes), replay $3 s, $(echo "scale=1; $MB / $3" | bc) MB/s of WAL, RTO $(echo "scale=2; $2 / $PLAIN" | bc)x the plain copy"
}
check() { [ "$(psql_ "$1" "$COUNTS")" = "$WANT" ] || { echo "[pg-replay] $2: row counts differ" >&2; exit 1; }; }
t=$(now)
pgbr restore --pg1-path="$W/restores/pgbr" >/dev/null
t2=$(now)
start "$W/restores/pgbr" $((PORT + 2)); started+=("$W/restores/pgbr"); open_wait $((PORT + 2))
report "pgBackRest $(pgbackrest version | cut -d' ' -f2) archive-get (archive-async, process-max=$PROCESS_MAX)" "$(since "$t")" "$(since "$t2")"
check $((PORT + 2)) pgBackRest
stop "$W/restores/pgbr"; rm -rf "$W/restores/pgbr"
t=$(now)
emb restore bench --latest --to "$W/restores/embassy" >/dev/null
t2=$(now)
start "$W/restores/embassy" $((PORT + 3)); started+=("$W/restores/embassy"); open_wait $((PORT + 3))
report "embassy wal-fetch (fetch helper)" "$(since "$t")" "$(since "$t2")"
check $((PORT + 3)) embassy
# The restore's wal-fetch keeps its log in its own state folder below --state-dir.
cat "$W"/state/wal-fetch/embassy.wal-fetch-*/wal-fetch.log | grep -c 'vault unlocked' \
  | sed 's/^/[pg-replay] embassy vault unlocks during the replay: /'
echo "[pg-replay] load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
if [ "${DIRECT:-0}" = 1 ]; then
  stop "$W/restores/embassy"; rm -rf "$W/restores/embassy" "$W/restores/embassy.wal-fetch"
  t=$(now)
  emb restore bench --latest --to "$W/restores/embassy" >/dev/null 2>&1
  sed -i 's/--prefetch 16/--prefetch 0/' "$W/restores/embassy/postgresql.auto.conf"
  t2=$(now)
  start "$W/restores/embassy" $((PORT + 3)); open_wait $((PORT + 3))
  report "embassy wal-fetch without the helper (--prefetch 0)" "$(since "$t")" "$(since "$t2")"
  check $((PORT + 3)) "embassy --prefetch 0"
  echo "[pg-replay] load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
fi
