#!/usr/bin/env python3
"""RSS per idle keep-alive connection: opens N connections to a proxy, sends one request
on each (so each has been through a full exchange), lets them sit idle, and reports
(RSS with N idle connections - RSS before) / N for the proxy's processes.

    python3 bench/idle_conns.py --pid PID --port PORT [--conns 10000]
"""
import argparse, resource, socket, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, action="append")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--settle", type=float, default=3.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rss = lambda: sum(rss_kib(p) for p in a.pid)
    # Warm up once so allocator arenas and code pages are already counted.
    s = socket.create_connection(("127.0.0.1", a.port)); s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()); s.recv(65536); s.close()
    time.sleep(0.5)
    before = rss()
    socks = []
    req = f"GET {a.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for i in range(a.conns):
        s = socket.create_connection(("127.0.0.1", a.port))
        s.sendall(req)
        socks.append(s)
        if len(socks) % 500 == 0:
            for t in socks[-500:]:
                t.recv(65536)
    for t in socks[len(socks) - len(socks) % 500:]:
        t.recv(65536)
    time.sleep(a.settle)
    after = rss()
    print(f"{a.conns} idle connections: RSS {before} KiB -> {after} KiB, "
          f"{(after - before) * 1024 / a.conns:.0f} bytes per connection")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
