#!/usr/bin/env bash
# Catching up past the log's retention between two serving SQLite nodes, as a user
# would meet it, side by side with replaying the log:
#
# 1. A new node joins a node whose log was pruned (retention 5): it receives the ROWS
#    rows' states from a snapshot (the peer holds nothing, so every row goes). The same
#    new node joining a node that kept its whole log replays ROWS changes instead. The
#    two wall times (until the new node holds every row) are printed side by side.
# 2. The first new node is stopped, DIFFS rows are updated at the source (more changes
#    than its log keeps), and the node restarts: the two reconcile by row clocks and
#    only the rows that differ travel. Prints the reconciliation's messages and bytes
#    (from the source's log and status) and the wall time until the updates arrive.
#
#   scripts/bench-catch-up.sh [ROWS] [DIFFS]    (default 1000000 and 10; needs sqlite3, bc)
set -euo pipefail
rows=${1:-1000000}
diffs=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p concord --manifest-path "$root/Cargo.toml"
bin="$root/target/release/concord"
work=$(mktemp -d)
trap 'pkill -f "concord serve --dir $work" || true; rm -rf "$work"' EXIT
cd "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
count() { sqlite3 -cmd ".timeout 10000" "$1" "SELECT count(*) FROM customers" 2>/dev/null || echo 0; }
ddl="CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, email TEXT, balance REAL)"
sqlite3 src.db "$ddl;
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
  INSERT INTO customers SELECT i, 'customer ' || i, 'c' || i || '@example.org', i * 0.25 FROM n;"
cp src.db pruned.db
cp src.db kept.db
for n in fresh1 fresh2; do sqlite3 "$n.db" "$ddl"; done

# node NAME DB RETENTION -> prints "listen-port fingerprint http-port"
node() {
  local listen http fp
  listen=$(port); http=$(port)
  fp=$("$bin" init --dir "$work/$1" --sqlite "$2" --tables customers --listen "127.0.0.1:$listen" \
        --http "127.0.0.1:$http" | awk '/fingerprint/ {print $2}')
  sed -i "s/^retention_changes = .*/retention_changes = $3/" "$work/$1/concord.toml"
  echo "$listen $fp $http"
}
peer() { # DIR NAME FINGERPRINT [ADDRESS]
  if [ -n "${4:-}" ]; then
    printf '\n[[peers]]\nname = "%s"\naddress = "%s"\nfingerprint = "%s"\n' "$2" "$4" "$3" >> "$1/concord.toml"
  else
    printf '\n[[peers]]\nname = "%s"\nfingerprint = "%s"\n' "$2" "$3" >> "$1/concord.toml"
  fi
}
read -r lp fp hp <<<"$(node np pruned.db 5)"
read -r lk fk hk <<<"$(node nk kept.db 2000000)"
read -r _ f1 h1 <<<"$(node n1 fresh1.db 2000000)"
read -r _ f2 h2 <<<"$(node n2 fresh2.db 2000000)"
peer np new "$f1"; peer n1 source "$fp" "127.0.0.1:$lp"
peer nk new "$f2"; peer n2 source "$fk" "127.0.0.1:$lk"
status() { curl -s "http://127.0.0.1:$1/v1/status"; }
serve() { "$bin" serve --dir "$work/$1" > "$1.log" 2>&1 & }
serve np; serve nk
entries() { status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["log_entries"])' 2>/dev/null || echo -1; }
until [ "$(entries "$hp")" -ge 0 ] && [ "$(entries "$hp")" -le 5 ]; do sleep 0.5; done
until [ "$(entries "$hk")" -ge "$rows" ]; do sleep 0.5; done
echo "sources ready: pruned log $(entries "$hp") entries, kept log $(entries "$hk") entries"

start=$(now); serve n1
until [ "$(count fresh1.db)" = "$rows" ]; do sleep 0.2; done
snap=$(echo "$(now) - $start" | bc)
start=$(now); serve n2
until [ "$(count fresh2.db)" = "$rows" ]; do sleep 0.2; done
replay=$(echo "$(now) - $start" | bc)
echo "new node, $rows rows: from a snapshot ${snap} s, replaying the log ${replay} s; snapshot / replay = $(echo "scale=2; $snap / $replay" | bc)"
pkill -f "concord serve --dir $work/n2" || true
pkill -f "concord serve --dir $work/nk" || true

pkill -f "concord serve --dir $work/n1"
sleep 1
step=$((rows / diffs))
sql=""
for d in $(seq 0 $((diffs - 1))); do
  sql="$sql UPDATE customers SET email = 'changed $d' WHERE id = $((d * step + step / 2));"
done
sqlite3 -cmd ".timeout 10000" pruned.db "$sql"
until [ "$(entries "$hp")" -le 5 ] && grep -q "pruned the change log" np.log; do sleep 0.5; done
sleep 6   # one more prune round after the last capture
start=$(now); serve n1
until [ "$(sqlite3 -cmd ".timeout 10000" fresh1.db "SELECT count(*) FROM customers WHERE email LIKE 'changed %'" 2>/dev/null || echo 0)" = "$diffs" ]; do sleep 0.1; done
heal=$(echo "$(now) - $start" | bc)
sleep 1
line=$(grep "rows that differ sent" np.log | tail -1)
echo "reconciliation after $diffs rows changed while away: ${heal} s until they arrived"
echo "source log: $line"
status "$hp" | python3 -c 'import json,sys; p=json.load(sys.stdin)["peers"][0]; print("status: reconcile_bytes", p.get("reconcile_bytes"), "snapshot_rows_sent", p["snapshot_rows_sent"], "bytes_sent", p["bytes_sent"], "bytes_received", p["bytes_received"])'
