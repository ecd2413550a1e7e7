#!/usr/bin/env bash
# Side-by-side relay load: the same coturn `turnutils_uclient` load against coturn's `turnserver` and against Duet,
# on loopback, one after the other in the same run. Reports the server CPU time per relayed packet (utime+stime from
# /proc/<pid>/stat, before and after the load), peak RSS, and the client's loss and RTT lines.
#
# Usage: benches/relay_vs_coturn.sh [profile]   profile: paced (default; research/turn.md §4.2 D) | flood (§4.2 E)
# Needs: coturn (turnserver, turnutils_uclient), a release build of duet (cargo build --release), python3.
# Ports used (loopback only): coturn 23478, duet 24478 / 28080 / 29464. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-paced}
case "$profile" in
  paced) load=(-y -m 50 -n 1500 -l 1200 -z 20 -c -X -g) ;;
  flood) load=(-y -m 20 -n 5000 -l 1200 -z 1 -c -X -g) ;;
  *) echo "unknown profile $profile" >&2; exit 2 ;;
esac
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

run_load() { # name pid port user pass
  local name=$1 pid=$2 port=$3 user=$4 pass=$5
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(turnutils_uclient "${load[@]}" -u "$user" -w "$pass" -p "$port" 127.0.0.1 2>&1 | tail -n 8)
  after=$(cpu_ticks "$pid")
  local sent recv lost rtt
  sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' <<<"$out" | tail -1)
  rtt=$(grep -o 'Average round trip delay [0-9.]* ms' <<<"$out" | tail -1)
  # In -y mode each message crosses the server twice (client -> relay A -> relay B -> client).
  python3 - "$name" "$before" "$after" "$ticks" "${sent:-0}" "${recv:-0}" "$(rss_kb "$pid")" "$lost" "$rtt" <<'PY'
import sys
name, b, a, hz, sent, recv, rss, lost, rtt = sys.argv[1:]
cpu = (int(a) - int(b)) / int(hz)
relayed = 2 * int(recv)
per = cpu / relayed * 1e6 if relayed else float('nan')
print(f"{name:7s} cpu={cpu:.2f}s sent={sent} recv={recv} relayed_packets={relayed} cpu_per_packet={per:.2f}us rss_peak={int(rss)/1024:.1f}MiB {lost} {rtt}")
PY
}

# coturn
turnserver -n --log-file=stdout --simple-log --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=23478 \
  --min-port=51000 --max-port=51999 --use-auth-secret --static-auth-secret=benchsecret --realm=duet \
  --fingerprint --allow-loopback-peers --no-cli --no-tls --no-dtls --user-quota=0 >"$work/coturn.log" 2>&1 &
pids+=($!); coturn_pid=$!
# duet
cat >"$work/duet.toml" <<TOML
data_dir = "$work/duet-data"
[http]
listen = "127.0.0.1:28080"
[admin]
listen = "127.0.0.1:29464"
[turn]
listen_udp = ["127.0.0.1:24478"]
relay_ports = "52000-52999"
allocations_per_credential = 1000
allocations_per_ip = 1000
[log]
level = "warn"
TOML
env ${DUET_ENV:-} target/release/duet serve --config "$work/duet.toml" >"$work/duet.out" 2>"$work/duet.err" &
pids+=($!); duet_pid=$!
sleep 1.5
secret=$(python3 -c "import tomllib,sys; print(tomllib.load(open('$work/duet-data/secrets.toml','rb'))['turn_secrets'][0])")
user="$(( $(date +%s) + 3600 )):bench:load"
pass_for() { printf %s "$user" | openssl dgst -sha1 -hmac "$1" -binary | base64; }

echo "profile=$profile load: turnutils_uclient ${load[*]}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
run_load coturn "$coturn_pid" 23478 "$user" "$(pass_for benchsecret)"
run_load duet "$duet_pid" 24478 "$user" "$(pass_for "$secret")"
