#!/usr/bin/env python3
"""Interim HTTP/1.1 keep-alive comparison (until weft-bench has its own load generator).

Runs, interleaved for several rounds: direct (wrk -> upstream), weft on each io driver,
nginx (1 worker, upstream keepalive, logs off) and haproxy (1 thread) when installed.
The proxy is pinned to --proxy-cpu, wrk and the upstream share --load-cpu.
Reports medians of requests/s, p50, p99 and the proxy's CPU time per request
(user+sys from /proc/PID/stat of the proxy's processes, divided by requests).

    cargo build --release && python3 bench/foundation.py --rounds 3 --duration 10
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def proc_tree(pid):
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for c in out.split():
            pids += proc_tree(int(c))
    except FileNotFoundError:
        pass
    return pids


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def parse_latency(text, pct):
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1000, "s": 1e6}[unit]


def wrk(port, conns, duration, load_cpu):
    cmd = ["taskset", "-c", str(load_cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n_err = (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return int(m.group(1)) if m else 0, parse_latency(out, 50), parse_latency(out, 99), n_err, out


class System:
    def __init__(self, name, start):
        self.name, self.start = name, start


def weft_system(driver, upstream_port, tmp, flags=None):
    """flags: None for weft's default ring setup, or (coop_taskrun, single_issuer, defer_taskrun)."""
    ring = ""
    if flags is not None:
        ring = "[runtime.uring]\n" + "".join(f"{k} = {str(v).lower()}\n" for k, v in
                                            zip(("coop_taskrun", "single_issuer", "defer_taskrun"), flags))

    def start():
        port, admin = free_port(), free_port()
        cfg = os.path.join(tmp, f"weft-{driver}.toml")
        with open(cfg, "w") as f:
            f.write(f"""[runtime]
workers = 1
io = "{driver}"
{ring}[admin]
address = "127.0.0.1:{admin}"
[http.forwarded]
x_forwarded_for = false
x_forwarded_proto = false
request_id = false
[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
routes = [ {{ match = {{ path_prefix = "/" }}, cluster = "up" }} ]
[clusters.up]
endpoints = ["127.0.0.1:{upstream_port}"]
""")
        p = subprocess.Popen(["taskset", "-c", str(ARGS.proxy_cpu), os.environ.get("WEFT_BIN", os.path.join(ROOT, "target/release/weft")), "ingress",
                              "--config", cfg], stderr=subprocess.DEVNULL, env=dict(os.environ, WEFT_LOG="warn"))
        wait_port(port)
        return p, port
    name = f"weft-{driver}" if flags is None else f"weft-{driver}-" + "".join("1" if f else "0" for f in flags)
    return System(name, start)


def nginx_system(upstream_port, tmp):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        return None

    def start():
        port = free_port()
        d = tempfile.mkdtemp(dir=tmp)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
error_log {d}/error.log crit;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    keepalive_requests 1000000;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        p = subprocess.Popen(["taskset", "-c", str(ARGS.proxy_cpu), nginx, "-c", conf, "-p", d],
                             stderr=subprocess.DEVNULL)
        wait_port(port)
        return p, port
    return System("nginx", start)


def haproxy_system(upstream_port, tmp):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        return None

    def start():
        port = free_port()
        conf = os.path.join(tmp, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server up 127.0.0.1:{upstream_port}
""")
        p = subprocess.Popen(["taskset", "-c", str(ARGS.proxy_cpu), haproxy, "-f", conf], stderr=subprocess.DEVNULL)
        wait_port(port)
        return p, port
    return System("haproxy", start)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", default="50,400")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--body-size", type=int, default=64)
    ap.add_argument("--systems", default="direct,weft-io_uring,weft-epoll,nginx,haproxy")
    ARGS = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="weft-bench-")
    up_port = free_port()
    upstream = subprocess.Popen([os.path.join(ROOT, "target/release/weft-bench"), "upstream", "--listen",
                                 f"127.0.0.1:{up_port}", "--body-size", str(ARGS.body_size), "--cpus", str(ARGS.load_cpu)])
    wait_port(up_port)
    systems = {"direct": System("direct", lambda: (None, up_port)),
               "weft-io_uring": weft_system("io_uring", up_port, tmp),
               "weft-epoll": weft_system("epoll", up_port, tmp),
               "weft-io_uring-000": weft_system("io_uring", up_port, tmp, (False, False, False)),
               "weft-io_uring-110": weft_system("io_uring", up_port, tmp, (True, True, False)),
               "nginx": nginx_system(up_port, tmp),
               "haproxy": haproxy_system(up_port, tmp)}
    chosen = [systems[s] for s in ARGS.systems.split(",") if systems.get(s)]
    results = {}
    try:
        for rnd in range(ARGS.rounds):
            for conns in map(int, ARGS.conns.split(",")):
                for sysm in chosen:
                    proc, port = sysm.start()
                    pids = proc_tree(proc.pid) if proc else []
                    wrk(port, conns, 1, ARGS.load_cpu)  # warm-up: pools, caches
                    before = cpu_ticks(pids)
                    n, p50, p99, errs, _ = wrk(port, conns, ARGS.duration, ARGS.load_cpu)
                    ticks = cpu_ticks(pids) - before
                    rss = rss_kib(pids)
                    if proc:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            proc.wait(5)
                        except subprocess.TimeoutExpired:
                            proc.kill(); proc.wait()
                    cpu_us = (ticks / TCK) * 1e6 / n if (n and proc) else float("nan")
                    results.setdefault((sysm.name, conns), []).append((n / ARGS.duration, p50, p99, cpu_us, errs, rss))
                    print(f"round {rnd+1} {sysm.name:14} c={conns:<4} {n/ARGS.duration:>9.0f} req/s p50 {p50:>7.0f}us "
                          f"p99 {p99:>7.0f}us cpu/req {cpu_us:6.2f}us errors {errs} rss {rss} KiB", file=sys.stderr)
    finally:
        upstream.kill()
    print(f"\n| system | conns | req/s | p50 (us) | p99 (us) | proxy CPU/req (us) | errors |")
    print("|---|---|---|---|---|---|---|")
    for (name, conns), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = lambda i: statistics.median(r[i] for r in rows)
        print(f"| {name} | {conns} | {med(0):.0f} | {med(1):.0f} | {med(2):.0f} | {med(3):.2f} | {sum(r[4] for r in rows)} |")


if __name__ == "__main__":
    main()
