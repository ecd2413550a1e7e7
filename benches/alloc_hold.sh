#!/usr/bin/env bash
# Holds N idle TURN allocations on a release build of Duet (loopback only) and reports the server's memory per idle
# allocation: VmRSS before and after, divided by N, and the allocations gauge from /metrics.
# Usage: benches/alloc_hold.sh [N=10000]. Needs: cargo build --release, openssl, python3, ulimit -n > N + 100.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat >"$work/duet.toml" <<TOML
data_dir = "$work/data"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[turn]
listen_udp = ["127.0.0.1:0"]
relay_ports = "20000-60000"
allocations_per_credential = 100000
allocations_per_ip = 100000
max_allocations = 100000
[log]
level = "warn"
TOML
target/release/duet serve --config "$work/duet.toml" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 50); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.1; done
turn=$(python3 -c "import json;print(json.loads(open('$work/out').readline())['turn_udp'])")
admin=$(python3 -c "import json;print(json.loads(open('$work/out').readline())['admin'])")
secret=$(python3 -c "import tomllib; print(tomllib.load(open('$work/data/secrets.toml','rb'))['turn_secrets'][0])")
user="$(( $(date +%s) + 3600 )):bench:hold"
pass=$(printf %s "$user" | openssl dgst -sha1 -hmac "$secret" -binary | base64)
cargo build --release --bench alloc_hold -q 2>/dev/null || true
before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
cargo bench -q --bench alloc_hold -- "$turn" duet "$user" "$pass" "$n" 8 &
gen=$!
sleep 6
after=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
active=$(curl -s "http://$admin/metrics" | awk '/^duet_turn_allocations_active\{transport="udp"\}/ {print $2}')
wait $gen
python3 - "$n" "$before" "$after" "$active" <<'PY'
import sys
n, before, after, active = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(f"allocations held: {int(active)} of {n}; server RSS {before/1024:.1f} MiB -> {after/1024:.1f} MiB; "
      f"{(after-before)*1024/max(active,1):.0f} bytes per idle allocation (user space; kernel socket memory not included)")
PY
