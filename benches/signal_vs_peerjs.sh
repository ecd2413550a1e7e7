#!/usr/bin/env bash
# Side-by-side signaling load: the same load generator (benches/signal_load.rs) against peerjs-server (npm `peer`,
# Node.js) and against Duet's peerjs mode, one after the other in the same run, on loopback; plus Duet's native
# protocol under the same relay load. Each measurement gets a freshly started server. Prints one RESULT line per
# measurement and a table of medians over the runs with ratios.
#
# Usage: benches/signal_vs_peerjs.sh [runs]        (default 3)
#   env: CONNECTIONS=20000  idle sockets per server
#        HOLD=65            seconds they are held (longer than both servers' 60 s alive timeout)
#        PAIRS=100          relay client pairs (at least rate/80, so no socket sends more than 40/s, under the
#                           50/s per-socket limit of Duet's default config)
#        RATES="5000 20000" total signals/s, one relay measurement per rate
#        DURATION=20        relay seconds measured         NATIVE=1     also Duet's native protocol (relay; 0: skip)
#        NATIVE_IDLE=1      also Duet native idle (creates CONNECTIONS/2 bookings first; 0: skip)
#        OUT=file           keep the RESULT lines (JSON, one per line) there
#        DUET_BIN=path      the duet binary (default target/release/duet, built here); DUET_TAG=-x names it in
#                           the labels (duet-peerjs-x), e.g. for a patched build
#        SERVERS="peerjs-server duet-peerjs duet-native"   which servers to measure
#        MODES="idle relay" which measurements to run
# Needs: node + npm (installs peer@$PEER_VERSION into benches/node, git-ignored), cargo, python3, curl.
# Ports (127.0.0.1 only): peerjs-server 29100; duet 29180 (http) 29181 (admin) 29182 (turn udp).
# Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
PEER_VERSION=1.0.2
CONNECTIONS=${CONNECTIONS:-20000}
HOLD=${HOLD:-65}
PAIRS=${PAIRS:-100}
RATES=${RATES:-5000 20000}
DURATION=${DURATION:-20}
NATIVE=${NATIVE:-1}
NATIVE_IDLE=${NATIVE_IDLE:-1}
DUET_BIN=${DUET_BIN:-target/release/duet}
DUET_TAG=${DUET_TAG:-}
SERVERS=${SERVERS:-peerjs-server duet-peerjs duet-native}
MODES=${MODES:-idle relay}
PEER_PORT=29100
DUET_PORT=29180

# 20 000 sockets need 20 000 descriptors in the server and as many in the clients (the load generator spreads
# them over worker processes). Raise the soft limit as far as the hard one allows; a server process can hold no
# more sockets than that limit minus its own descriptors.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
out=${OUT:-$work/results.jsonl}
: >"$out"
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- peerjs-server, pinned, into benches/node -------------------------------------------------------------------
node_dir=benches/node
peer_js=$node_dir/node_modules/peer/dist/bin/peerjs.js
installed=$(node -p "try { require('./$node_dir/node_modules/peer/package.json').version } catch { '' }")
if [[ $installed != "$PEER_VERSION" ]]; then
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "peer@$PEER_VERSION" >&2
fi

# --- Duet (release) and the load generator ---------------------------------------------------------------------
if [[ $DUET_BIN == target/release/duet ]]; then cargo build --release --bin duet >&2; fi
load=$(cargo bench --bench signal_load --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "signal_load" and m.get("executable"):
        print(m["executable"])')
[[ -x $load ]] || { echo "signal_load bench binary not found" >&2; exit 1; }

wait_http() { # url
  for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "server at $1 did not come up" >&2; exit 1
}

start_peerjs() {
  node "$peer_js" --port "$PEER_PORT" --host 127.0.0.1 --key peerjs --path / --concurrent_limit 100000 \
    --alive_timeout 60000 >"$work/peerjs.log" 2>&1 &
  server_pid=$!
  wait_http "http://127.0.0.1:$PEER_PORT/"
}

start_duet() {
  rm -rf "$work/duet-data"
  cat >"$work/duet.toml" <<TOML
data_dir = "$work/duet-data"
[http]
listen = "127.0.0.1:$DUET_PORT"
# 20 000 idle sockets from 127.0.0.2.. at 5 000 per address: above the default connection caps.
max_connections = 100000
max_connections_per_ip = 100000
[admin]
listen = "127.0.0.1:$((DUET_PORT + 1))"
[turn]
listen_udp = ["127.0.0.1:$((DUET_PORT + 2))"]
relay_ports = "53000-53099"
[signaling]
max_connections_per_ip = 100000
messages_per_second = 50
[signaling.peerjs]
enabled = true
concurrent_limit = 100000
alive_timeout = "60s"
[log]
level = "warn"
TOML
  "$DUET_BIN" serve --config "$work/duet.toml" >"$work/duet.out" 2>"$work/duet.err" &
  server_pid=$!
  for _ in $(seq 100); do grep -q '"event":"ready"' "$work/duet.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '"event":"ready"' "$work/duet.out" || { cat "$work/duet.err" >&2; exit 1; }
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  sleep 2 # let loopback sockets of the previous run settle
}

measure() { # run server(peerjs-server|duet-peerjs|duet-native) mode args...
  local run=$1 server=$2 mode=$3; shift 3
  local target
  case $server in
    peerjs-server) start_peerjs; target=(--url "ws://127.0.0.1:$PEER_PORT/") ;;
    duet-peerjs) start_duet; target=(--url "ws://127.0.0.1:$DUET_PORT/") ;;
    duet-native)
      start_duet
      target=(--proto native --url "http://127.0.0.1:$DUET_PORT" --api-key-file "$work/duet-data/api-key") ;;
  esac
  echo "== run $run: $server $mode $* (load average $(cut -d" " -f1-3 /proc/loadavg))" >&2
  local line
  local label=$server
  [[ $server == duet-* ]] && label=$server$DUET_TAG
  line=$("$load" "$mode" "${target[@]}" --server-pid "$server_pid" --label "$label" "$@" |
    grep '^RESULT ' | tail -1) || true
  stop_server
  [[ -n $line ]] || { echo "no RESULT from $server $mode" >&2; return; }
  echo "$line"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1][7:]); r["run"]=int(sys.argv[2]); print(json.dumps(r))' \
    "$line" "$run" >>"$out"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
peer_version=$(node -p "require('./$node_dir/node_modules/peer/package.json').version")
echo "versions: node $(node --version), peer $peer_version,"\
  "$("$DUET_BIN" --version) ($DUET_BIN); RLIMIT_NOFILE $(ulimit -n)"
idle_servers=() relay_servers=()
for s in $SERVERS; do
  [[ $MODES == *idle* ]] && [[ $s != duet-native || $NATIVE_IDLE == 1 ]] && idle_servers+=("$s")
  [[ $MODES == *relay* ]] && [[ $s != duet-native || $NATIVE == 1 ]] && relay_servers+=("$s")
done
for run in $(seq "$runs"); do
  i=0
  for server in ${idle_servers[@]+"${idle_servers[@]}"}; do
    # A fresh range of source addresses per idle measurement: the previous one's ports sit in TIME_WAIT.
    base=$((2 + ((run - 1) * ${#idle_servers[@]} + i) * (CONNECTIONS / 5000 + 1)))
    measure "$run" "$server" idle --connections "$CONNECTIONS" --hold "$HOLD" --source-base "$base"
    i=$((i + 1))
  done
  for rate in $RATES; do
    for server in ${relay_servers[@]+"${relay_servers[@]}"}; do
      pairs=$(( PAIRS > (rate + 79) / 80 ? PAIRS : (rate + 79) / 80 ))
      measure "$run" "$server" relay --pairs "$pairs" --rate "$rate" --duration "$DURATION"
    done
  done
done

echo
python3 - "$out" "$CONNECTIONS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
n_conn = sys.argv[2]
def med(mode, label, key, rate=None):
    v = [r[key] for r in rows if r["mode"] == mode and r["label"] == label
         and rate in (None, r.get("target_rate")) and r.get(key) is not None]
    return statistics.median(v) if v else None
def fmt(x, nd):
    return "-" if x is None else f"{x:,.{nd}f}"
def ratio(d, p):
    return "-" if d is None or p in (None, 0) else f"{d / p:.2f}"
present = list(dict.fromkeys(r["label"] for r in rows))
duet = next((s for s in present if s.startswith("duet-peerjs")), None)
runs = len({r["run"] for r in rows})
both = duet is not None and "peerjs-server" in present
head = f"| metric (median of {runs}) | " + " | ".join(present) + (f" | {duet} / peerjs-server |" if both else " |")
print(head); print("|" + "---|" * (len(present) + 1 + both))
def line(name, mode, key, nd=1, rate=None, scale=1.0):
    vals = {s: med(mode, s, key, rate) for s in present}
    vals = {s: (v * scale if v is not None else None) for s, v in vals.items()}
    cells = [fmt(v, nd) for v in vals.values()]
    tail = f" | {ratio(vals.get(duet), vals.get('peerjs-server'))} |" if both else " |"
    print(f"| {name} | " + " | ".join(cells) + tail)
if any(r["mode"] == "idle" for r in rows):
    line(f"idle: held connections (of {n_conn})", "idle", "held", 0)
    line("idle: opened in (s)", "idle", "open_secs", 1)
    line("idle: server RSS idle (MiB)", "idle", "rss_before_kib", 1, scale=1 / 1024)
    line("idle: server RSS all held (MiB)", "idle", "rss_held_kib", 1, scale=1 / 1024)
    line("idle: RSS per connection (KiB)", "idle", "kib_per_conn", 2)
    line("idle: server CPU while opening + holding (s)", "idle", "server_cpu_s", 2)
for rate in sorted({r["target_rate"] for r in rows if r["mode"] == "relay"}):
    t = f"relay {rate:.0f}/s"
    line(f"{t}: achieved signals/s", "relay", "achieved_rate", 0, rate)
    line(f"{t}: lost", "relay", "lost", 0, rate)
    line(f"{t}: latency p50 (us)", "relay", "p50_us", 0, rate)
    line(f"{t}: latency p99 (us)", "relay", "p99_us", 0, rate)
    line(f"{t}: latency p99.9 (us)", "relay", "p999_us", 0, rate)
    line(f"{t}: latency max (us)", "relay", "max_us", 0, rate)
    line(f"{t}: server CPU s per 1000 signals", "relay", "server_cpu_s_per_1000", 4, rate)
    line(f"{t}: server RSS (MiB)", "relay", "server_rss_kib", 1, rate, scale=1 / 1024)
    line(f"{t}: client CPU (s)", "relay", "client_cpu_s", 2, rate)
PY
echo "raw results: $out"
