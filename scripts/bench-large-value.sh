#!/usr/bin/env bash
# A large value between two serving nodes, as a user would meet it: two `concord serve`
# processes on loopback, node a over FROM and node b over TO (sqlite, postgres or mysql),
# a row with a MiB-sized random BLOB written by the store's own shell (sqlite3, psql,
# mariadb), then a small row after it. Prints how long until both rows are at the peer,
# whether the value arrived byte for byte, and each node's peak resident memory (VmHWM)
# against its resident memory before the write, as a multiple of the value's size.
#
#   scripts/bench-large-value.sh [MIB] [FROM] [TO]     (defaults: 100 sqlite sqlite)
#
# Needs sqlite3, bc, xxd and python3; for postgres, psql and the server at
# CONCORD_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres); for
# mysql, the mariadb client and the server at CONCORD_TEST_MYSQL_URL (default
# mysql://root@127.0.0.1:3306/test), whose max_allowed_packet the script raises to 1 GiB
# for the run and sets back at the end (MariaDB's default of 16 MiB cannot hold the
# value: Concord would set its transaction aside, naming the limit). It builds the release binary first and works in a temporary
# directory and temporary databases, removed at the end.
set -euo pipefail
mib=${1:-100}
from=${2:-sqlite}
to=${3:-sqlite}
pg_url=${CONCORD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
my_url=${CONCORD_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p concord --manifest-path "$root/Cargo.toml"
bin="$root/target/release/concord"
work=$(mktemp -d)
tag="concord_bench_$$"
my_host=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname, p.port or 3306, p.username or "root")' "$my_url")
read -r my_h my_p my_u <<< "$my_host"
my() { mariadb -h "$my_h" -P "$my_p" -u "$my_u" --max-allowed-packet=1G "$@"; }
packet=""
cleanup() {
  pkill -f "concord serve --dir $work" || true
  [ -n "$packet" ] && my -e "SET GLOBAL max_allowed_packet = $packet" || true
  for n in a b; do
    psql -q "$pg_url" -c "DROP DATABASE IF EXISTS ${tag}_$n" >/dev/null 2>&1 || true
    my -e "DROP DATABASE IF EXISTS ${tag}_$n" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
bytes=$((mib * 1048576))
head -c "$bytes" /dev/urandom | xxd -p | tr -d '\n' > value.hex
want=$(tr 'a-f' 'A-F' < value.hex | sha256sum | cut -d' ' -f1)

# Per node: create its database and table, and say how to reach it.
url_of() { # kind node
  case $1 in
    sqlite) echo "$work/$2.db" ;;
    postgres) echo "${pg_url%/*}/${tag}_$2" ;;
    mysql) echo "${my_url%/*}/${tag}_$2" ;;
  esac
}
create() { # kind node
  case $1 in
    sqlite) sqlite3 "$2.db" "CREATE TABLE files(id INTEGER PRIMARY KEY, name TEXT, content BLOB)" ;;
    postgres)
      psql -q "$pg_url" -c "CREATE DATABASE ${tag}_$2" >/dev/null
      psql -q "$(url_of postgres "$2")" -c "CREATE TABLE files(id integer PRIMARY KEY, name text, content bytea)" >/dev/null ;;
    mysql)
      [ -n "$packet" ] || packet=$(my -N -e "SELECT @@global.max_allowed_packet")
      my -e "SET GLOBAL max_allowed_packet = 1073741824; CREATE DATABASE ${tag}_$2"
      my "${tag}_$2" -e "CREATE TABLE files(id INT PRIMARY KEY, name TEXT, content LONGBLOB)" ;;
  esac
}
count() { # kind node
  case $1 in
    sqlite) sqlite3 -cmd ".timeout 10000" "$2.db" "SELECT count(*) FROM files" 2>/dev/null ;;
    postgres) psql -tAq "$(url_of postgres "$2")" -c "SELECT count(*) FROM files" 2>/dev/null ;;
    mysql) my -N "${tag}_$2" -e "SELECT count(*) FROM files" 2>/dev/null ;;
  esac
}
value_hash() { # kind node: sha256 of the value's uppercase hex
  case $1 in
    sqlite) sqlite3 "$2.db" "SELECT hex(content) FROM files WHERE id = 1" ;;
    postgres) psql -tAq "$(url_of postgres "$2")" -c "SELECT upper(encode(content, 'hex')) FROM files WHERE id = 1" ;;
    mysql) my -N "${tag}_$2" -e "SELECT HEX(content) FROM files WHERE id = 1" ;;
  esac | tr -d '\n' | sha256sum | cut -d' ' -f1
}
write_value() { # kind node: the large row, then a small one, each its own transaction
  local insert="INSERT INTO files VALUES (1, 'big', " after="INSERT INTO files VALUES (2, 'after', NULL);"
  case $1 in
    sqlite) { printf '.timeout 10000\n%sX'"'" "$insert"; cat value.hex; printf "');\n%s\n" "$after"; } | sqlite3 "$2.db" ;;
    postgres) { printf "%s'\\\\x" "$insert"; cat value.hex; printf "'::bytea);\n%s\n" "$after"; } | psql -q "$(url_of postgres "$2")" >/dev/null ;;
    mysql) { printf "%sX'" "$insert"; cat value.hex; printf "');\n%s\n" "$after"; } | my "${tag}_$2" ;;
  esac
}

create "$from" a
create "$to" b
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port); pb=$(port)
fa=$("$bin" init --dir "$work/na" "--$from" "$(url_of "$from" a)" --tables files --listen 127.0.0.1:$pa --http 127.0.0.1:$(port) | awk '/fingerprint/ {print $2}')
fb=$("$bin" init --dir "$work/nb" "--$to" "$(url_of "$to" b)" --tables files --listen 127.0.0.1:$pb --http 127.0.0.1:$(port) | awk '/fingerprint/ {print $2}')
printf '\n[[peers]]\nname = "b"\nfingerprint = "%s"\n' "$fb" >> na/concord.toml
printf '\n[[peers]]\nname = "a"\naddress = "127.0.0.1:%s"\nfingerprint = "%s"\n' "$pa" "$fa" >> nb/concord.toml
"$bin" serve --dir "$work/na" > a.log 2>&1 &
"$bin" serve --dir "$work/nb" > b.log 2>&1 &
sleep 2
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
pid_a=$(pgrep -f "concord serve --dir $work/na")
pid_b=$(pgrep -f "concord serve --dir $work/nb")
idle_a=$(rss "$pid_a" VmRSS); idle_b=$(rss "$pid_b" VmRSS)
start=$(date +%s.%N)
write_value "$from" a
until [ "$(count "$to" b)" = 2 ]; do
  sleep 0.2
  if [ "$(echo "$(date +%s.%N) - $start > 900" | bc)" = 1 ]; then echo "timed out"; cat a.log b.log; exit 1; fi
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
same=$([ "$(value_hash "$to" b)" = "$want" ] && echo yes || echo NO)
peak_a=$(rss "$pid_a" VmHWM); peak_b=$(rss "$pid_b" VmHWM)
ratio() { echo "scale=2; ($1 - $2) / ($bytes / 1024)" | bc; }
echo "$from -> $to: value of $mib MiB and the row after it at the peer in ${elapsed} s; identical: $same"
echo "sender   ($from): idle ${idle_a} kB, peak ${peak_a} kB: $(ratio "$peak_a" "$idle_a")x the value above idle"
echo "receiver ($to): idle ${idle_b} kB, peak ${peak_b} kB: $(ratio "$peak_b" "$idle_b")x the value above idle"
