#!/usr/bin/env bash
# Runs a command in a network namespace of its own whose only interface is `lo` (brought up), so that a daemon and
# a browser started by that command see 127.0.0.1 and ::1 and nothing else of the machine: every ICE candidate
# Chromium gathers is on loopback, and nothing can leave the machine.
#
#   tests/browser/run-in-netns.sh COMMAND [ARG...]
#
# Everything the command starts (the duet daemon, node, chromium) inherits the namespace, which disappears when the
# last of them exits. Needs `unshare` (util-linux) and `ip` (iproute2); as root it uses `unshare --net`, otherwise
# it tries an unprivileged user namespace (`unshare --map-root-user --net`). Exits 97 when no namespace can be made.
# Inside, DUET_NETNS=1 is set.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi

if [ "${DUET_NETNS:-}" = 1 ]; then
  # Inside the new namespace: bring up loopback, check that nothing else is there, run the command.
  ip link set lo up
  # (/sys/class/net would show the namespace that mounted sysfs, not ours: ask `ip`.)
  others=$(ip -o link show | awk -F": " '{print $2}' | grep -vx lo || true)
  if [ -n "$others" ]; then
    echo "run-in-netns: unexpected interfaces in the namespace: $others" >&2
    exit 97
  fi
  exec "$@"
fi

for tool in unshare ip; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run-in-netns: '$tool' not found (apt-get install util-linux iproute2)" >&2
    exit 97
  fi
done

if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
  flags=(--net)
elif unshare --map-root-user --net true 2>/dev/null; then
  flags=(--map-root-user --net)
else
  echo "run-in-netns: cannot create a network namespace here (unshare --net failed; not root, and no user namespaces)" >&2
  exit 97
fi
DUET_NETNS=1 exec unshare "${flags[@]}" -- "$0" "$@"
