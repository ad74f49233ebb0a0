#!/usr/bin/env bash
# Base backups, restore and promotion of the registry corpus's PostgreSQL cluster, timed.
#   bench/pg-restore-time.sh EMBASSY_BIN DAY0_DB DAY1_DB [WORK]
# (DAY0_DB/DAY1_DB: the corpus's day0/db and day1/db, e.g. bench/out/corpus-full/day{0,1}/db.)
# Must run as root; everything runs as the postgres user (PostgreSQL runs restore_command as
# itself, so the vault, key file and passphrase file live in a folder it owns).
#  1. starts PostgreSQL 15 on a copy of day 0, `embassy pg base-backup` (WAL inside), stops it;
#  2. the same on a copy of day 1 into the same dataset: its new_bytes_stored is what a base
#     backup after the day of change adds (relation files page by page, pg_wal not included);
#  3. `embassy restore --latest` into a new folder, starts PostgreSQL on it, waits until it
#     accepts writes, compares per-table row counts with day 1;
#  4. `embassy standby`, starts it, `embassy promote`, timed;
#  5. day 1 again with `embassy pg stream` running: a `--wal-streamed` base backup, then pgbench
#     for $REPLAY_SECONDS (default 30) s, then `embassy restore --latest` timed until the server
#     accepts writes, with the WAL it replayed through wal-fetch (MB and MB/s).
# Prints one line per step; the work folder is removed at the end unless KEEP=1.
set -euo pipefail
EXE=$(readlink -f "${1:?usage: pg-restore-time.sh EMBASSY_BIN DAY0_DB DAY1_DB [WORK]}")
D0=$(readlink -f "${2:?day0 db}")
D1=$(readlink -f "${3:?day1 db}")
W=${4:-/work/pgcorpus/restore-time}
PGBIN=/usr/lib/postgresql/15/bin
rm -rf "$W"; mkdir -p "$W"
cp -a "$D0" "$W/d0"; cp -a "$D1" "$W/d1"
printf 'bench-passphrase' > "$W/pass"
mkdir -p "$W/sock" "$W/restores"
chown -R postgres: "$W"
cp "$EXE" "$W/embassy"; chown postgres: "$W/embassy"
PORT=${BENCH_PGPORT:-55441}
pg() { runuser -u postgres -- "$@"; }
emb() { runuser -u postgres -- env HOME="$W" "$W/embassy" --site "$W/site" --key-file "$W/vault.key" \
          --passphrase-file "$W/pass" --state-dir "$W/state" --quiet "$@"; }
start() { pg "$PGBIN/pg_ctl" -D "$1" -w -l "$W/$(basename "$1").log" -o \
          "-c listen_addresses='' -k $W/sock -p $2 -c wal_level=replica -c max_wal_senders=4" start >/dev/null; }
stop() { [ -f "$1/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null || true; }
psql_() { pg "$PGBIN/psql" -X -At -h "$W/sock" -p "$1" -d registry -c "$2"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
started=()
cleanup() { for d in "${started[@]}"; do stop "$d"; done; [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
COUNTS="SELECT string_agg(n, ' ' ORDER BY n) FROM (SELECT relname || '=' || \
  (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM ' || quote_ident(schemaname) || '.' || quote_ident(relname), false, true, '')))[1]::text AS n \
  FROM pg_stat_user_tables) q"

SUMMARY='import json, sys
v = json.load(sys.stdin)["version"]
print("%.0f MB in the version, %d new chunks, %.1f MB new stored" % (v["bytes"] / 1e6, v["new_chunks"], v["new_bytes_stored"] / 1e6))'
emb init >/dev/null
CONN="host=$W/sock port=$PORT user=postgres dbname=registry"
for day in d0 d1; do
  start "$W/$day" "$PORT"; started+=("$W/$day")
  [ "$day" = d1 ] && WANT=$(psql_ "$PORT" "$COUNTS")
  t=$(now)
  out=$(emb --json pg base-backup registry --conninfo "$CONN")
  echo "[pg-restore-time] base backup of $day: $(since "$t") s; $(echo "$out" | python3 -c "$SUMMARY")"
  stop "$W/$day"
done
t=$(now)
emb restore registry --latest --to "$W/restores/latest" >/dev/null
echo "[pg-restore-time] restore --latest wrote the data directory in $(since "$t") s"
start "$W/restores/latest" $((PORT + 1)); started+=("$W/restores/latest")
until [ "$(psql_ $((PORT + 1)) 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.1; done
echo "[pg-restore-time] restore --latest until it accepts writes: $(since "$t") s"
GOT=$(psql_ $((PORT + 1)) "$COUNTS")
[ "$GOT" = "$WANT" ] && echo "[pg-restore-time] row counts of every table equal day 1" || { echo "row counts differ"; exit 1; }
stop "$W/restores/latest"
emb standby registry --to "$W/restores/standby" >/dev/null
start "$W/restores/standby" $((PORT + 2)); started+=("$W/restores/standby")
until psql_ $((PORT + 2)) 'SELECT 1' >/dev/null 2>&1; do sleep 0.1; done
t=$(now)
emb promote registry --data "$W/restores/standby" >/dev/null
echo "[pg-restore-time] promote: $(since "$t") s until it accepts writes; $(psql_ $((PORT + 2)) "SELECT 'timeline ' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")"

# 5. A restore that replays streamed WAL.
stop "$W/restores/standby"
start "$W/d1" "$PORT"; started+=("$W/d1")
runuser -u postgres -- env HOME="$W" "$W/embassy" --site "$W/site" --key-file "$W/vault.key" \
  --passphrase-file "$W/pass" --state-dir "$W/state" --quiet pg stream registry \
  --conninfo "host=$W/sock port=$PORT user=postgres" --slot embassy_bench --create-slot \
  --durable-log "$W/durable.log" 2>"$W/stream.err" &
STREAM=$!
durable() { sort -n "$W/durable.log" 2>/dev/null | tail -1 | cut -d' ' -f1; }
until [ -n "$(durable)" ]; do sleep 0.2; done
out=$(emb --json pg base-backup registry --conninfo "$CONN" --wal-streamed)
STOP_LSN=$(echo "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["stop_lsn"])')
pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -n -c 4 -j 2 -T "${REPLAY_SECONDS:-30}" registry >/dev/null
WANT=$(psql_ "$PORT" "$COUNTS")
END=$(psql_ "$PORT" "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
until [ "$(durable)" -ge "$END" ] 2>/dev/null; do sleep 0.2; done
kill -TERM "$STREAM"; wait "$STREAM" || true
stop "$W/d1"

STOP_NUM=$(python3 -c "h, l = '$STOP_LSN'.split('/'); print(int(h, 16) << 32 | int(l, 16))")
t=$(now)
emb restore registry --latest --to "$W/restores/replay" >/dev/null
written=$(since "$t"); t2=$(now)
start "$W/restores/replay" $((PORT + 3)); started+=("$W/restores/replay")
until [ "$(psql_ $((PORT + 3)) 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.1; done
secs=$(since "$t"); replay=$(since "$t2")
MB=$(echo "($END - $STOP_NUM) / 1000000" | bc)
echo "[pg-restore-time] restore --latest with $MB MB of streamed WAL after the base backup: $secs s until it accepts writes ($written s writing the data directory, $replay s starting and replaying through wal-fetch)"
GOT=$(psql_ $((PORT + 3)) "$COUNTS")
[ "$GOT" = "$WANT" ] && echo "[pg-restore-time] row counts of every table equal the source's at the end of the load" || { echo "row counts differ"; exit 1; }

