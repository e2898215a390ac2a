#!/usr/bin/env bash
# Every figure of issue 11's table in one run, each side by side with what it is
# compared to (native logical replication, the untracked table, the raw file), one
# after another on this machine. BENCHMARKS.md's summary table is this script's output.
#
#   CONCORD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
#   CONCORD_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
#   scripts/bench-issue11.sh [ROWS]          # ROWS: the large transaction, default 1000000
#
# Needs PostgreSQL with wal_level = logical and MariaDB with its row-based binary log
# (what .ci/run configures). Every step creates its own databases and drops them.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CONCORD_TEST_POSTGRES_URL:?set CONCORD_TEST_POSTGRES_URL}"
: "${CONCORD_TEST_MYSQL_URL:?set CONCORD_TEST_MYSQL_URL}"
ROWS=${1:-1000000}
cargo build --release -q -p concord-conformance --example pgbench --example appwrite \
  -p concord-node --example pglatency --example netbench -p concord
E=target/release/examples

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(git rev-parse --short HEAD); $(date -u '+%F %T') UTC; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. PostgreSQL -> PostgreSQL through two nodes over TLS: single-row latency, then one $ROWS-row transaction, beside native logical replication"
$E/pglatency --writes 200 --bulk "$ROWS"
echo "== 2. the application's own writes on a tracked table / untracked (100k rows, one transaction)"
$E/appwrite --rows 100000 --repeat 3
echo "== 3. apply rates into PostgreSQL and MariaDB (100k inserts, then updates, in process)"
$E/pgbench --rows 100000 --targets pg,mysql --skip-native
echo "== 4. SQLite -> SQLite over the network: rate / raw insert rate, longest application commit while it syncs"
$E/netbench throughput --rows "$ROWS" --txn 10000 --reps 1 --procs
echo "== 5. SQLite: apply 100k remote inserts / updates (criterion)"
cargo bench -q -p concord-sqlite --bench apply -- --noplot 2>&1 | grep -E "^[a-z_]+/|time:" || true
echo "== end $(date -u '+%T') UTC; load $(cut -d' ' -f1-3 /proc/loadavg)"
