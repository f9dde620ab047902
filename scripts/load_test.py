#!/usr/bin/env python
"""Load test for a running MAHT-Net MONAI Label server: N concurrent clients send infer requests
for a fixed time; prints requests/s, latency percentiles, errors and the server's memory.

    make serve STUDIES=/path/to/films &                     # or any running server
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 16 --seconds 60

Loopback only (the URL must name 127.0.0.1/localhost): this is a test of our own server, not a
tool to load someone else's. Every request must get an answer: a success, or an explicit 4xx/5xx
with a message; a connection error or a client timeout counts as unanswered. Memory is the
server process's resident set size (found by its listening port, or ``--pid``), sampled every
second; the growth between the first and the last quarter of the run is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import requests

MAX_CLIENTS = 64
MAX_SECONDS = 600
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_pid(port: int) -> int | None:
    """The process listening on ``port`` (needs permission to see it), else ``None``."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return conn.pid
    except psutil.AccessDenied:
        return None
    return None


def _rss_sampler(pid: int | None, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    import psutil

    if pid is None:
        return
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return
        samples.append((time.monotonic(), rss / 2**20))
        stop.wait(1.0)


def run_load(url: str, model: str, images: list[str], clients: int = 16, seconds: float = 60.0, timeout: float = 120.0, pid: int | None = None) -> dict:
    """Drive ``clients`` threads for ``seconds``; returns the figures (see the module docstring).

    Raises:
        ValueError: a non-loopback URL, or counts/durations outside the bounds.
    """
    host = urllib.parse.urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{url}: the load test only targets a server on this machine ({', '.join(LOOPBACK)})")
    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS} and seconds 0..{MAX_SECONDS}")
    if not images:
        raise ValueError("no image ids to request")
    pid = pid or server_pid(urllib.parse.urlparse(url).port or 80)
    results: list[tuple[float, int | str]] = []  # (latency s, status code or error name)
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.monotonic() < end:
            image = images[i % len(images)]
            i += clients
            start = time.monotonic()
            try:
                r = session.post(f"{url}/infer/{model}", params={"image": image, "output": "json"}, timeout=timeout)
                outcome: int | str = r.status_code
            except requests.Timeout:
                outcome = "timeout"
            except requests.ConnectionError:
                outcome = "connection error"
            with lock:
                results.append((time.monotonic() - start, outcome))

    stop, rss = threading.Event(), []
    sampler = threading.Thread(target=_rss_sampler, args=(pid, stop, rss), daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    stop.set()
    sampler.join(timeout=5)
    try:
        alive = requests.get(f"{url}/info/", timeout=30).status_code == 200
    except requests.RequestException:
        alive = False

    latencies = np.array([lat for lat, _ in results])
    outcomes = Counter(str(o) for _, o in results)
    ok = sum(n for o, n in outcomes.items() if o == "200")
    answered = sum(n for o, n in outcomes.items() if o.isdigit())
    rss_mb = [m for _, m in rss]
    quarter = max(1, len(rss_mb) // 4)
    return {
        "url": url,
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(results),
        "ok": ok,
        "answered": answered,
        "unanswered": len(results) - answered,
        "outcomes": dict(outcomes),
        "requests_per_s": round(len(results) / wall, 2),
        "latency_s": {p: (round(float(np.percentile(latencies, q)), 3) if latencies.size else None) for p, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "server_pid": pid,
        "rss_mb": {
            "first": round(rss_mb[0], 1) if rss_mb else None,
            "max": round(max(rss_mb), 1) if rss_mb else None,
            "last": round(rss_mb[-1], 1) if rss_mb else None,
            "growth_first_to_last_quarter": round(float(np.mean(rss_mb[-quarter:]) - np.mean(rss_mb[:quarter])), 1) if rss_mb else None,
        },
        "server_alive_after": alive,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="maht_net")
    ap.add_argument("--images", nargs="+", help="image ids (default: every image in the server's datastore)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    ap.add_argument("--pid", type=int, help="server process id for memory sampling (default: found by port)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    images = args.images
    if not images:
        images = sorted(requests.get(f"{args.url}/datastore/?output=all", timeout=30).json().get("objects", {}))
    try:
        result = run_load(args.url, args.model, images, args.clients, args.seconds, args.timeout, args.pid)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lat, mem = result["latency_s"], result["rss_mb"]
    print(
        f"{result['clients']} clients, {result['seconds']} s: {result['requests']} requests ({result['requests_per_s']}/s), "
        f"{result['ok']} ok, {result['unanswered']} unanswered, outcomes {result['outcomes']}\n"
        f"latency p50 {lat['p50']} s, p95 {lat['p95']} s, p99 {lat['p99']} s, max {lat['max']} s\n"
        f"server RSS (MB, with children): first {mem['first']}, max {mem['max']}, last {mem['last']}, "
        f"growth first->last quarter {mem['growth_first_to_last_quarter']}; alive after: {result['server_alive_after']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["unanswered"] == 0 and result["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
