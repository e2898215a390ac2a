#!/usr/bin/env bash
# A large value between two SQLite nodes, as a user would meet it: two `concord serve`
# processes on loopback, a row with a MiB-sized BLOB written by the sqlite3 shell, then
# a small row after it. Prints how long until both rows are at the peer (and that the
# value arrived byte for byte), and each node's peak resident memory (VmHWM) against
# its resident memory before the write.
#
#   scripts/bench-large-value.sh [MIB]        (default 100; needs sqlite3 and bc)
#
# It builds the release binary first and works in a temporary directory.
set -euo pipefail
mib=${1:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p concord --manifest-path "$root/Cargo.toml"
bin="$root/target/release/concord"
work=$(mktemp -d)
trap 'pkill -f "concord serve --dir $work" || true; rm -rf "$work"' EXIT
cd "$work"
for n in a b; do sqlite3 "$n.db" "CREATE TABLE files(id INTEGER PRIMARY KEY, name TEXT, content BLOB)"; done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port); pb=$(port)
fa=$("$bin" init --dir "$work/na" --sqlite a.db --tables files --listen 127.0.0.1:$pa --http 127.0.0.1:$(port) | awk '/fingerprint/ {print $2}')
fb=$("$bin" init --dir "$work/nb" --sqlite b.db --tables files --listen 127.0.0.1:$pb --http 127.0.0.1:$(port) | awk '/fingerprint/ {print $2}')
printf '\n[[peers]]\nname = "b"\nfingerprint = "%s"\n' "$fb" >> na/concord.toml
printf '\n[[peers]]\nname = "a"\naddress = "127.0.0.1:%s"\nfingerprint = "%s"\n' "$pa" "$fa" >> nb/concord.toml
"$bin" serve --dir "$work/na" > a.log 2>&1 &
"$bin" serve --dir "$work/nb" > b.log 2>&1 &
sleep 2
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
pids=$(pgrep -f "concord serve --dir $work" | tr '\n' ' ')
for p in $pids; do echo "node $p idle: VmRSS $(rss "$p" VmRSS) kB"; done
start=$(date +%s.%N)
sqlite3 -cmd ".timeout 10000" a.db \
  "INSERT INTO files VALUES (1, 'big', randomblob($mib * 1048576)); INSERT INTO files VALUES (2, 'after', NULL);"
until [ "$(sqlite3 -cmd ".timeout 10000" b.db "SELECT count(*) FROM files" 2>/dev/null)" = 2 ]; do
  sleep 0.2
  if [ "$(echo "$(date +%s.%N) - $start > 600" | bc)" = 1 ]; then echo "timed out"; cat a.log b.log; exit 1; fi
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
same=$(sqlite3 a.db "ATTACH 'b.db' AS b; SELECT (SELECT hex(sha3(content)) FROM main.files WHERE id = 1) = (SELECT hex(sha3(content)) FROM b.files WHERE id = 1)" 2>/dev/null || echo "?")
[ "$same" = "?" ] && same=$(cmp <(sqlite3 a.db "SELECT hex(content) FROM files WHERE id = 1") <(sqlite3 b.db "SELECT hex(content) FROM files WHERE id = 1") && echo 1 || echo 0)
echo "value of $mib MiB and the row after it at the peer in ${elapsed} s; identical: $same"
for p in $pids; do echo "node $p peak: VmHWM $(rss "$p" VmHWM) kB"; done
