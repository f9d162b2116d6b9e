#!/usr/bin/env python3
"""What a Redis shard-channel subscription costs the server (docs/cluster.md §4).

Starts its own redis-server on 127.0.0.1 (in memory, no persistence), makes one connection
SSUBSCRIBE to 100 000 and then 1 000 000 channels `fedbroker.id.N` (one channel per command, as
fedbroker's subscriber connection sends them, pipelined 1 000 at a time), and prints the growth
of `used_memory` and `used_memory_rss` per subscription and the subscriptions made per second.

    python3 bench/redis-subscriptions.py [--port 46999]
"""
import re
import socket
import subprocess
import sys
import time

PORT = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 46999


def info():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    s.sendall(b"INFO memory\r\n")
    data = b""
    deadline = time.time() + 10
    while b"used_memory_rss:" not in data and time.time() < deadline:
        data += s.recv(65536)
    s.close()
    used = int(re.search(rb"used_memory:(\d+)", data).group(1))
    rss = int(re.search(rb"used_memory_rss:(\d+)", data).group(1))
    return used, rss


def subscribe(sub, first, end, batch=1000):
    for start in range(first, end, batch):
        stop = min(end, start + batch)
        channels = (b"fedbroker.id.%d" % i for i in range(start, stop))
        sub.sendall(b"".join(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(c), c) for c in channels))
        buf = b""
        while buf.count(b"ssubscribe") < stop - start:
            chunk = sub.recv(1 << 20)
            if not chunk:
                sys.exit("redis-server closed the connection")
            buf += chunk


def main():
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(PORT), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 10
        while True:
            try:
                sub = socket.create_connection(("127.0.0.1", PORT), timeout=30)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
        base = info()
        t0 = time.time()
        subscribe(sub, 0, 100_000)
        t1 = time.time()
        at_100k = info()
        subscribe(sub, 100_000, 1_000_000)
        t2 = time.time()
        at_1m = info()
        for label, (used, rss), n, secs in (
            ("100 000", at_100k, 100_000, t1 - t0),
            ("1 000 000", at_1m, 1_000_000, t2 - t0),
        ):
            print(
                f"{label} subscriptions: used_memory +{(used - base[0]) / n:.0f} B each, "
                f"rss +{(rss - base[1]) / n:.0f} B each, {n / secs:,.0f} a second"
            )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
