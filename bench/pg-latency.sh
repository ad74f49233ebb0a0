#!/usr/bin/env bash
# Data-loss window of continuous WAL: for each commit, the time until its WAL is durable on the
# required sites, at pgbench's default mix with 4 clients over loopback (PostgreSQL 15 started by
# the test). Prints p50/p99/max for one local site, then two local sites that must both hold
# every object. See crates/postgres/tests/latency.rs for the method.
#   bench/pg-latency.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
for sites in 1 2; do
  EMBASSY_BENCH_SECONDS="$secs" EMBASSY_BENCH_SITES="$sites" \
    cargo test --release -p embassy-postgres --test latency -- --ignored --nocapture 2>&1 |
    grep -E '^sites=|panicked|FAILED' || true
done
