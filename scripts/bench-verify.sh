#!/usr/bin/env bash
# `concord verify` on two SQLite files of ROWS rows that differ in DIFFS rows (a third
# changed, a third missing from the second file, a third only in it), spread over the
# key space. Prints verify's own report (rows, rows that differ, messages and bytes the
# reconciliation took) and the wall time of the whole command (reading both files into
# their digests included).
#
#   scripts/bench-verify.sh [ROWS] [DIFFS]     (default 1000000 and 10; needs sqlite3)
set -euo pipefail
rows=${1:-1000000}
diffs=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p concord --manifest-path "$root/Cargo.toml"
bin="$root/target/release/concord"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sqlite3 "$work/a.db" "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, email TEXT, balance REAL);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
  INSERT INTO customers SELECT i, 'customer ' || i, 'c' || i || '@example.org', i * 0.25 FROM n;"
cp "$work/a.db" "$work/b.db"
step=$((rows / diffs))
sql="BEGIN;"
for d in $(seq 0 $((diffs - 1))); do
  id=$((d * step + step / 2))
  case $((d % 3)) in
    0) sql="$sql UPDATE customers SET email = 'changed' WHERE id = $id;" ;;
    1) sql="$sql DELETE FROM customers WHERE id = $id;" ;;
    2) sql="$sql INSERT INTO customers VALUES ($((rows + d + 1)), 'new', NULL, 0);" ;;
  esac
done
sqlite3 "$work/b.db" "$sql COMMIT;"
start=$(date +%s.%N)
"$bin" verify "$work/a.db" "$work/b.db" | head -1 || true
echo "wall time: $(echo "$(date +%s.%N) - $start" | bc) s"
