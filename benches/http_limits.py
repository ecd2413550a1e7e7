#!/usr/bin/env python3
"""Slowloris and header-memory figures of the HTTP listener (issue 7 item 5), as the security review measured them.

    cargo build -p duet && python3 benches/http_limits.py [PATH_TO_DUET]

Boots `duet serve` (default header_read_timeout 10 s, max_connections_per_ip 256) in a temporary directory on
127.0.0.1:0, then: 40 slowloris sockets (idle, or a partial head trickled a line every 2 s) from 40 addresses;
200 connections each sending a 400 KB unterminated header from 200 addresses (RSS before and after); 300 idle
connections from one address. Loopback only; needs no privileges. Prints three lines.
"""
import subprocess, json, socket, time, sys, os, resource, tempfile
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
tmp = tempfile.mkdtemp()
with open(os.path.join(tmp, "config.toml"), "w") as f:
    f.write(f'data_dir = "{tmp}/data"\n[http]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
            '[turn]\nlisten_udp = ["127.0.0.1:0"]\n')
duet = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "target", "debug", "duet")
p = subprocess.Popen([duet, "serve", "--config", os.path.join(tmp, "config.toml")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
ready = json.loads(p.stdout.readline())
host, port = ready["http"].rsplit(":", 1); port = int(port)
def rss(): return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1])
def conn(src="127.0.0.1"):
    s = socket.socket(); s.bind((src, 0)); s.connect((host, port)); s.setblocking(False); return s
def closed(s):
    try:
        d = s.recv(65536)
        return d == b"" or d.startswith(b"HTTP/1.1 431") or closed(s) if d else True
    except BlockingIOError: return False
    except OSError: return True
base = rss()
# 1) 40 slowloris sockets (idle, trickled partial heads), default header_read_timeout 10 s.
socks = []
for i in range(40):
    s = conn(f"127.0.1.{i+1}")
    if i % 2: s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    socks.append(s)
t0 = time.time(); done = {}
while time.time() - t0 < 20 and len(done) < 40:
    for i, s in enumerate(socks):
        if i in done: continue
        if closed(s): done[i] = time.time() - t0
        elif i % 2 and int((time.time()-t0)*2) % 4 == 0:
            try: s.send(b"X-a: b\r\n")
            except OSError: done[i] = time.time() - t0
    time.sleep(0.25)
print(f"slowloris: {len(done)}/40 closed by the server, last after {max(done.values()):.1f} s")
# 2) 200 connections each with a 400 KB unterminated header (from 200 addresses).
socks = []
for i in range(200):
    s = conn(f"127.0.2.{i+1}")
    try:
        s.setblocking(True); s.settimeout(2); s.sendall(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 400_000)
    except OSError: pass
    s.setblocking(False); socks.append(s)
time.sleep(1)
n = sum(closed(s) for s in socks)
print(f"400 KB heads: {n}/200 closed within about 1 s; RSS {base} -> {rss()} KiB")
# 3) 300 idle connections from one address (per-IP cap 256).
socks = [conn() for _ in range(300)]
time.sleep(1)
n = sum(closed(s) for s in socks)
print(f"300 idle from one address: {n} closed at once (cap 256)")
p.kill()
