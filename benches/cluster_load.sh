#!/usr/bin/env bash
# Cluster mode under load (issue 10), in one run: builds release, then per round
#   1. booking: joins (POST /v1/join/{link}) on ONE node on PostgreSQL (no cluster), then on THREE nodes in cluster
#      mode on the same PostgreSQL server, the load generator (benches/booking_load.rs) sending round robin over the
#      three: an open loop at JOIN_RATE/s (latency p50/p99 from each request's due instant) and a closed loop of
#      JOIN_CLIENTS clients (the most joins/s answered);
#   2. signaling: native relay latency (benches/signal_load.rs) on three nodes in cluster mode with every host socket
#      on node 1 and every guest socket on node 1 (same-node) or on node 2 (cross-node: each signal crosses Redis
#      once), at each rate of RATES; and, as a reference, on one node without cluster mode (single).
# Every measurement gets fresh processes: a new PostgreSQL database (dropped afterwards), for cluster mode a
# redis-server of its own on a free port (no persistence), fresh data directories (nodes 2 and 3 get node 1's
# secrets.toml and api-key, as every node of a cluster must). Prints one RESULT line per measurement and tables of
# medians over the rounds with the ratios three nodes / one node and cross-node / same-node.
#
# Usage: benches/cluster_load.sh [rounds]        (default 3)
#   env: JOIN_RATE=1000 JOIN_SECS=10 JOIN_BOOKINGS=200   open-loop joins (over 2 × JOIN_BOOKINGS link tokens)
#        JOIN_WARMUP=3 TIMELINE=0                         seconds of open-loop joins not counted; 1: print the
#                                                         open loop's latency per second on stderr
#        JOIN_CLIENTS=32 JOIN_MAX_SECS=10                 closed-loop (saturated) joins; JOIN_CLIENTS=0 skips them
#        CREATE_SECS=0 CLIENTS=16                         closed-loop creates before the joins (0: skipped)
#        RATES="1000 5000" PAIRS=100 DURATION=20 WARMUP=3 signaling: total signals/s, pairs, seconds measured
#        SIGNAL_SETS="single same-node cross-node"        which signaling measurements
#        PARTS="booking signal"                           which parts
#        PG_URL=postgres://postgres@127.0.0.1:5432/test   a server where this user may CREATE DATABASE (default:
#                     $DUET_TEST_DATABASE_URL, else that URL); each measurement gets a database duet_bench_<random>
#        OUT=file (keep the RESULT lines)   DUET_BIN=path (default target/release/duet, built here)
# Needs: cargo, python3, psql, redis-server, curl. Ports (127.0.0.1 only): node i (1-3) listens on 29380+10i (http),
# +1 (admin), +2 (TURN UDP), relay ports 54i00-54i99; Redis on a free port. Everything started here is stopped on
# exit, and each process has a deadline (the load generators stop by themselves; the script kills what is left).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
JOIN_RATE=${JOIN_RATE:-1000}
JOIN_SECS=${JOIN_SECS:-10}
JOIN_BOOKINGS=${JOIN_BOOKINGS:-200}
JOIN_WARMUP=${JOIN_WARMUP:-3}
TIMELINE=${TIMELINE:-0}
JOIN_CLIENTS=${JOIN_CLIENTS:-32}
JOIN_MAX_SECS=${JOIN_MAX_SECS:-10}
CREATE_SECS=${CREATE_SECS:-0}
CLIENTS=${CLIENTS:-16}
RATES=${RATES:-1000 5000}
PAIRS=${PAIRS:-100}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
SIGNAL_SETS=${SIGNAL_SETS:-single same-node cross-node}
PARTS=${PARTS:-booking signal}
PG_URL=${PG_URL:-${DUET_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}
DUET_BIN=${DUET_BIN:-target/release/duet}
BASE_PORT=29380

for tool in python3 psql redis-server curl; do
  command -v "$tool" >/dev/null || { echo "cluster_load.sh needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
out=${OUT:-$work/results.jsonl}
: >"$out"
pids=() # every process started here (nodes, redis-server), stopped by stop_all
dbs=()  # databases created here, dropped by stop_all
redis_pid=
redis_url=
db_url=
stop_all() {
  local p
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
  pids=()
  redis_pid=
  for p in ${dbs[@]+"${dbs[@]}"}; do
    psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS \"$p\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  dbs=()
}
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $DUET_BIN == target/release/duet ]]; then cargo build --release --bin duet >&2; fi
bench_bin() { # name
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
booking_load=$(bench_bin booking_load)
signal_load=$(bench_bin signal_load)
[[ -x $booking_load && -x $signal_load ]] || { echo "bench binaries not found" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

new_db() { # a fresh database; sets db_url
  local db
  db=duet_bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  psql -q "$PG_URL" -c "CREATE DATABASE \"$db\"" >/dev/null
  dbs+=("$db")
  db_url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' \
    "$PG_URL" "$db")
}

start_redis() { # a redis-server of this run's own on a free port; sets redis_url and redis_pid
  local port
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "redis-server did not listen" >&2; exit 1; }
  redis_url="redis://127.0.0.1:$port"
}

node_pids=()
start_node() { # i database_url redis_url(or empty)
  local i=$1 dir=$work/n$1 port=$((BASE_PORT + 10 * $1))
  local cluster=
  [[ -n $3 ]] && cluster="[cluster]
redis_url = \"$3\"
node_id = \"node-$i\""
  cat >"$dir/duet.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:$port"
max_connections = 100000
max_connections_per_ip = 100000
[admin]
listen = "127.0.0.1:$((port + 1))"
[turn]
listen_udp = ["127.0.0.1:$((port + 2))"]
relay_ports = "54${i}00-54${i}99"
[signaling]
max_connections_per_ip = 100000
messages_per_second = 50
[log]
level = "warn"
[database]
url = "$2"
$cluster
TOML
  "$DUET_BIN" serve --config "$dir/duet.toml" >"$dir/duet.out" 2>"$dir/duet.err" &
  local pid=$!
  pids+=("$pid")
  node_pids+=("$pid")
  for _ in $(seq 150); do grep -q '"event":"ready"' "$dir/duet.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '"event":"ready"' "$dir/duet.out" || { echo "node $i did not start:" >&2; cat "$dir/duet.err" >&2; exit 1; }
  if [[ -n $cluster ]]; then
    for _ in $(seq 100); do
      curl -fs "http://127.0.0.1:$((port + 1))/metrics" | grep -qx 'duet_cluster_redis_up 1' && return 0
      sleep 0.1
    done
    echo "node $i never joined the cluster (duet_cluster_redis_up)" >&2; exit 1
  fi
}

start_nodes() { # count cluster(0|1): fresh database (and Redis), node 1, then nodes 2.. with node 1's secrets
  local n=$1 cluster=$2
  rm -rf "$work"/n*
  node_pids=()
  new_db
  redis_url=
  if [[ $cluster == 1 ]]; then start_redis; fi
  for i in $(seq "$n"); do
    mkdir -p -m 700 "$work/n$i/data"
    if ((i > 1)); then
      install -m 600 "$work/n1/data/secrets.toml" "$work/n1/data/api-key" "$work/n$i/data/"
    fi
    start_node "$i" "$db_url" "$redis_url"
  done
}

http_of() { echo "http://127.0.0.1:$((BASE_PORT + 10 * $1))"; }

record() { # run line [extra JSON members]
  [[ -n $2 ]] || return 0
  echo "$2"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1][7:]); r["run"]=int(sys.argv[2]); r.update(json.loads(sys.argv[3]))
print(json.dumps(r))' "$2" "$1" "${3:-{\}}" >>"$out"
}

bus_messages() { # the nodes' duet_cluster_bus_messages_total, both directions, summed (0 without cluster mode)
  local i sum=0 v
  for i in $(seq "${#node_pids[@]}"); do
    v=$(curl -fs "http://127.0.0.1:$((BASE_PORT + 10 * i + 1))/metrics" |
      awk '/^duet_cluster_bus_messages_total/ {s += $2} END {printf "%d", s}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

booking_round() { # run
  local run=$1 n label urls line
  for n in 1 3; do
    if ((n == 1)); then start_nodes 1 0; label=pg-1node; else start_nodes 3 1; label=pg-3nodes; fi
    urls=()
    for i in $(seq "$n"); do urls+=(--url "$(http_of "$i")"); done
    echo "== round $run: booking $label (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    local timeline=()
    [[ $TIMELINE == 1 ]] && timeline=(--timeline)
    line=$(timeout 300 "$booking_load" run "${urls[@]}" --api-key-file "$work/n1/data/api-key" --label "$label" \
      --clients "$CLIENTS" --create-secs "$CREATE_SECS" --join-rate "$JOIN_RATE" --join-secs "$JOIN_SECS" \
      --join-warmup-secs "$JOIN_WARMUP" ${timeline[@]+"${timeline[@]}"} --join-bookings "$JOIN_BOOKINGS" \
      --join-clients "$JOIN_CLIENTS" --join-max-secs "$JOIN_MAX_SECS" |
      grep '^RESULT ' | tail -1) || true
    stop_all
    [[ -n $line ]] || echo "no RESULT from booking $label" >&2
    record "$run" "$line"
  done
}

signal_round() { # run
  local run=$1 rate set guest line pairs bus
  for rate in $RATES; do
    # At most 40 signals/s per socket, under the 50/s per-socket limit configured above.
    pairs=$((PAIRS > (rate + 79) / 80 ? PAIRS : (rate + 79) / 80))
    for set in $SIGNAL_SETS; do
      case $set in
        single) start_nodes 1 0; guest=$(http_of 1) ;;
        same-node) start_nodes 3 1; guest=$(http_of 1) ;;
        cross-node) start_nodes 3 1; guest=$(http_of 2) ;;
        *) echo "unknown signal set $set" >&2; exit 2 ;;
      esac
      local server=()
      for p in "${node_pids[@]}" ${redis_pid:+"$redis_pid"}; do server+=(--server-pid "$p"); done
      echo "== round $run: signal $set at $rate/s (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      line=$(timeout 300 "$signal_load" relay --proto native --url "$(http_of 1)" --guest-url "$guest" \
        --api-key-file "$work/n1/data/api-key" "${server[@]}" --label "$set" --pairs "$pairs" --rate "$rate" \
        --duration "$DURATION" --warmup "$WARMUP" | grep '^RESULT ' | tail -1) || true
      # Proof of the path: each cross-node signal crosses the bus once (counted out on one node, in on the other:
      # about two per signal, warm-up included), same-node ones not at all.
      bus=$(bus_messages)
      stop_all
      sleep 1 # let the previous run's loopback sockets settle
      [[ -n $line ]] || echo "no RESULT from signal $set at $rate/s" >&2
      record "$run" "$line" "{\"bus_messages\": $bus}"
    done
  done
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $("$DUET_BIN" --version) ($DUET_BIN); $(psql -tA "$PG_URL" -c 'SHOW server_version' | sed 's/^/PostgreSQL /');" \
  "$(redis-server --version | cut -d' ' -f1-3)"
echo "booking: joins at $JOIN_RATE/s for $JOIN_WARMUP s (warm-up) + $JOIN_SECS s over $JOIN_BOOKINGS bookings, then $JOIN_CLIENTS clients" \
  "closed-loop for $JOIN_MAX_SECS s; signaling: $PAIRS+ pairs at ${RATES// //s, }/s, $WARMUP s warm-up + $DURATION s"
for run in $(seq "$rounds"); do
  if [[ $PARTS == *booking* ]]; then booking_round "$run"; fi
  if [[ $PARTS == *signal* ]]; then signal_round "$run"; fi
done

echo
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(pred, key):
    v = [r[key] for r in rows if pred(r) and r.get(key) is not None]
    return statistics.median(v) if v else None
def fmt(x, nd):
    return "-" if x is None else f"{x:,.{nd}f}"
def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"
runs = len({r["run"] for r in rows})
booking = [r for r in rows if "joins_per_s" in r]
if booking:
    labels = [l for l in ("pg-1node", "pg-3nodes") if any(r["label"] == l for r in booking)]
    both = len(labels) == 2
    print(f"booking: medians of {runs} round(s)")
    print("| metric | " + " | ".join(labels) + (" | 3 nodes / 1 node |" if both else " |"))
    print("|---" * (len(labels) + 1 + both) + "|")
    keys = [("creates_per_s", "creates/s", 0), ("create_p99_ms", "create p99 ms", 2),
            ("joins_per_s", "joins/s answered (open loop)", 0), ("join_p50_ms", "join p50 ms", 2),
            ("join_p99_ms", "join p99 ms", 2), ("join_max_ms", "join max ms", 1),
            ("sat_joins_per_s", "joins/s, closed loop (saturated)", 0), ("sat_join_p50_ms", "saturated p50 ms", 2),
            ("sat_join_p99_ms", "saturated p99 ms", 2), ("join_errors", "join errors", 0),
            ("sat_join_errors", "saturated join errors", 0)]
    for k, name, nd in keys:
        vals = [med(lambda r, l=l: r["label"] == l, k) for l in labels]
        if all(v is None for v in vals) or (k.startswith("create") and not any(vals)):
            continue
        print(f"| {name} | " + " | ".join(fmt(v, nd) for v in vals) + (f" | {ratio(vals[1], vals[0])} |" if both else " |"))
    print()
signal = [r for r in rows if r.get("mode") == "relay"]
if signal:
    labels = [l for l in ("single", "same-node", "cross-node") if any(r["label"] == l for r in signal)]
    both = "same-node" in labels and "cross-node" in labels
    print(f"signaling: medians of {runs} round(s)")
    print("| metric | " + " | ".join(labels) + (" | cross / same |" if both else " |"))
    print("|---" * (len(labels) + 1 + both) + "|")
    for rate in sorted({r["target_rate"] for r in signal}):
        for k, name, nd in [("achieved_rate", "achieved signals/s", 0), ("lost", "lost", 0), ("p50_us", "p50 us", 0),
                            ("p99_us", "p99 us", 0), ("p999_us", "p99.9 us", 0), ("max_us", "max us", 0),
                            ("server_cpu_s_per_1000", "server CPU s per 1000 signals (nodes + redis)", 4),
                            ("bus_messages", "cluster bus messages (all nodes, in + out)", 0)]:
            vals = {l: med(lambda r, l=l: r["label"] == l and r["target_rate"] == rate, k) for l in labels}
            tail = f" | {ratio(vals['cross-node'], vals['same-node'])} |" if both else " |"
            print(f"| {rate:.0f}/s: {name} | " + " | ".join(fmt(v, nd) for v in vals.values()) + tail)
    print()
print("runs:")
for r in rows:
    if "joins_per_s" in r:
        print("  round %d %s: %.0f joins/s at %d/s (p50 %.2f, p99 %.2f, max %.1f ms); saturated %s joins/s (p99 %s ms)"
              % (r["run"], r["label"], r["joins_per_s"], r["join_rate"], r["join_p50_ms"], r["join_p99_ms"],
                 r["join_max_ms"], fmt(r.get("sat_joins_per_s"), 0), fmt(r.get("sat_join_p99_ms"), 2)))
    else:
        print("  round %d %s %.0f/s: %.0f/s achieved, p50 %.0f us, p99 %.0f us, max %.0f us, lost %d"
              % (r["run"], r["label"], r["target_rate"], r["achieved_rate"], r["p50_us"], r["p99_us"], r["max_us"],
                 r["lost"]))
PY
echo "raw results: $out"
