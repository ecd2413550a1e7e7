#!/usr/bin/env bash
# Booking API load, SQLite next to PostgreSQL in one run: builds release, then for each round starts a fresh Duet
# daemon on SQLite (new data directory) and one on PostgreSQL (new database), one after the other, and runs the load
# generator (benches/booking_load.rs) against each: creates/s (closed loop, CLIENTS clients) and joins at an open-loop
# rate of JOIN_RATE/s, with p50/p99 latency. Prints one RESULT line per measurement and a table of medians over the
# rounds with the ratio SQLite / PostgreSQL.
#
# Usage: benches/booking_load.sh [rounds]        (default 3)
#   env: CLIENTS=16  CREATE_SECS=10  JOIN_RATE=1000  JOIN_SECS=10  JOIN_BOOKINGS=200
#        PG_URL=postgres://postgres@127.0.0.1:5432/test   a server where this user may CREATE DATABASE (default:
#                   $DUET_TEST_DATABASE_URL, else that URL); each run gets a database duet_bench_<random>, dropped after
#        BACKENDS="sqlite postgres"   OUT=file (keep the RESULT lines)   DUET_BIN=path (default target/release/duet)
# Needs: cargo, python3, psql. Ports (127.0.0.1 only): 29280 (http) 29281 (admin) 29282 (turn udp).
# Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
CLIENTS=${CLIENTS:-16}
CREATE_SECS=${CREATE_SECS:-10}
JOIN_RATE=${JOIN_RATE:-1000}
JOIN_SECS=${JOIN_SECS:-10}
JOIN_BOOKINGS=${JOIN_BOOKINGS:-200}
PG_URL=${PG_URL:-${DUET_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
BACKENDS=${BACKENDS:-sqlite postgres}
DUET_BIN=${DUET_BIN:-target/release/duet}
PORT=29280

work=$(mktemp -d)
out=${OUT:-$work/results.jsonl}
: >"$out"
server_pid=
db=
drop_db() {
  if [[ -n $db ]]; then psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true; fi
  db=
}
stop_server() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=
  drop_db
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

if [[ $DUET_BIN == target/release/duet ]]; then cargo build --release --bin duet >&2; fi
load=$(cargo bench --bench booking_load --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "booking_load" and m.get("executable"):
        print(m["executable"])')
[[ -x $load ]] || { echo "booking_load bench binary not found" >&2; exit 1; }

start_duet() { # backend
  rm -rf "$work/duet-data"
  local database=
  if [[ $1 == postgres ]]; then
    db=duet_bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    psql -q "$PG_URL" -c "CREATE DATABASE \"$db\"" >/dev/null
    database="[database]
url = \"$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$PG_URL" "$db")\""
  fi
  cat >"$work/duet.toml" <<TOML
data_dir = "$work/duet-data"
[http]
listen = "127.0.0.1:$PORT"
max_connections_per_ip = 10000
[admin]
listen = "127.0.0.1:$((PORT + 1))"
[turn]
listen_udp = ["127.0.0.1:$((PORT + 2))"]
[log]
level = "warn"
$database
TOML
  "$DUET_BIN" serve --config "$work/duet.toml" >"$work/duet.out" 2>"$work/duet.err" &
  server_pid=$!
  for _ in $(seq 100); do grep -q '"event":"ready"' "$work/duet.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '"event":"ready"' "$work/duet.out" || { cat "$work/duet.err" >&2; exit 1; }
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $("$DUET_BIN" --version) ($DUET_BIN); $(psql -tA "$PG_URL" -c 'SHOW server_version' | sed 's/^/PostgreSQL /')"
echo "load: $CLIENTS create clients for $CREATE_SECS s; joins at $JOIN_RATE/s for $JOIN_SECS s over $JOIN_BOOKINGS bookings"

for run in $(seq "$rounds"); do
  for backend in $BACKENDS; do
    start_duet "$backend"
    echo "== round $run: $backend (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    line=$("$load" run --url "http://127.0.0.1:$PORT" --api-key-file "$work/duet-data/api-key" --label "$backend" \
      --clients "$CLIENTS" --create-secs "$CREATE_SECS" --join-rate "$JOIN_RATE" --join-secs "$JOIN_SECS" \
      --join-bookings "$JOIN_BOOKINGS" | grep '^RESULT ' | tail -1) || true
    stop_server
    [[ -n $line ]] || { echo "no RESULT from $backend" >&2; continue; }
    echo "$line"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1][7:]); r["run"]=int(sys.argv[2]); print(json.dumps(r))' \
      "$line" "$run" >>"$out"
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = [("creates_per_s", "creates/s", "{:.0f}"), ("create_p50_ms", "create p50 ms", "{:.2f}"),
        ("create_p99_ms", "create p99 ms", "{:.2f}"), ("joins_per_s", "joins/s", "{:.0f}"),
        ("join_p50_ms", "join p50 ms", "{:.2f}"), ("join_p99_ms", "join p99 ms", "{:.2f}"),
        ("join_max_ms", "join max ms", "{:.1f}"), ("create_errors", "create errors", "{:.0f}"),
        ("join_errors", "join errors", "{:.0f}")]
backends = [b for b in ("sqlite", "postgres") if any(r["label"] == b for r in rows)]
med = {b: {k: statistics.median(r[k] for r in rows if r["label"] == b) for k, _, _ in keys} for b in backends}
print()
print("medians of %d round(s)" % max(r["run"] for r in rows))
print("| metric | " + " | ".join(backends) + (" | SQLite / PostgreSQL |" if len(backends) == 2 else " |"))
print("|---" * (len(backends) + 1 + (len(backends) == 2)) + "|")
for k, name, fmt in keys:
    cells = [fmt.format(med[b][k]) for b in backends]
    if len(backends) == 2:
        a, p = med["sqlite"][k], med["postgres"][k]
        cells.append("{:.2f}".format(a / p) if p else "-")
    print("| %s | %s |" % (name, " | ".join(cells)))
print()
print("runs:")
for r in rows:
    print("  round %d %s: %.0f creates/s (p50 %.2f, p99 %.2f ms); %.0f joins/s at %d/s (p50 %.2f, p99 %.2f, max %.1f ms), errors %d/%d"
          % (r["run"], r["label"], r["creates_per_s"], r["create_p50_ms"], r["create_p99_ms"], r["joins_per_s"],
             r["join_rate"], r["join_p50_ms"], r["join_p99_ms"], r["join_max_ms"], r["create_errors"], r["join_errors"]))
PY
