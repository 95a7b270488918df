"""Durable commit latency of the store (WAL, synchronous=FULL: every commit fsyncs).

(a) ``RingStore.put_batch`` directly, one sale per commit, 2000 commits (``--quick`` 300): p50/p99.
(b) Through the store writer process (``store.writer.StoreWriter``, the daemon's only SQLite writer)
    and ``StoreClient.put`` round trips, with 1, 8 and 32 concurrent client processes, each putting one
    sale per request in a loop for 5 s (``--quick`` 2 s): p50/p99 round trip, commits/s (the writer's own
    counter) and records/s. records/commit > 1 is group commit at work.

Sales are real ``drivers.records.sale`` records (about 0.6 KB of JSON), one nozzle stream per client,
with a natural key as the driver sends them. The store lives in a temporary directory; the script
says whether that is on the same filesystem as /work.

    python -m tools.bench.bench_commit [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import ROOT, TICKS, cpu_ticks, header, pct, table  # noqa: E402

CLIENT_COUNTS = (1, 8, 32)


def make_sale(nozzle_id: int, n: int) -> dict:
    from collector.config import Decimals, MeteringTolerance, NozzleConfig, PumpConfig, StationConfig
    from drivers import records

    station = StationConfig("BENCH-001", "模拟加油站 Bench Station", "91440300MA5F123452")
    nozzle = NozzleConfig(number=1, id=nozzle_id, grade_code="92", grade_name="92号汽油", decimals=Decimals())
    pump = PumpConfig(address=0x50, nozzles=(nozzle,))
    port = SimpleNamespace(name=f"p{nozzle_id:02d}")
    volume = 3000 + n % 1000
    vol_total = 10_000_000 + n * 4000
    raw = records.RawSale(volume=volume, amount=(volume * 785 + 50) // 100, price=785, vol_total=vol_total,
                          amt_total=vol_total * 8)
    sale, _ = records.sale(station, port, pump, nozzle, raw, None, None, MeteringTolerance())
    return sale


# ------------------------------------------------------------------ helper processes (hidden roles)


def role_writer(db: str, sock: str) -> int:
    from store.writer import StoreWriter

    StoreWriter(db, sock, 2000, 20000).serve()
    return 0


def role_client(sock: str, nozzle: int, go: str, seconds: float, out: str) -> int:
    from store.client import StoreClient

    client = StoreClient(sock)
    client.request({"op": "ping"})  # connected before the start line
    with open(f"{out}.ready", "w"):
        pass
    while not os.path.exists(go):
        time.sleep(0.002)
    with open(go) as f:
        start_at = float(f.read())
    while time.time() < start_at:
        time.sleep(0.001)
    lat = []
    n = 0
    end = start_at + seconds
    template = make_sale(nozzle, 0)
    while time.time() < end:
        sale = dict(template, key=f"{template['key']}:{n}")  # a new natural key: a new sale, cheaply
        t = time.perf_counter()
        client.request({"op": "put", "records": [sale]})
        lat.append(time.perf_counter() - t)
        n += 1
    client.close()
    with open(out, "w") as f:
        json.dump(lat, f)
    return 0


def bench_fsync(tmp: str, n: int) -> dict:
    """Reference: overwrite 4 KiB of a file and fsync it, the floor under any durable commit."""
    path = os.path.join(tmp, "fsync.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    block = os.urandom(4096)
    lat = []
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 4096)
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return {"n": n, "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "rate": n / sum(lat)}


# ------------------------------------------------------------------ (a) direct


def bench_direct(tmp: str, commits: int) -> dict:
    from store.ringstore import RingStore

    db = os.path.join(tmp, "direct.db")
    store = RingStore(db)
    sales = [make_sale(1 + i % 8, i) for i in range(commits + 20)]
    for s in sales[:20]:  # warm-up: schema, streams, page cache
        store.put_batch([s])
    lat = []
    for s in sales[20:]:
        t = time.perf_counter()
        store.put_batch([s])
        lat.append(time.perf_counter() - t)
    store.close()
    return {"n": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "rate": len(lat) / sum(lat)}


# ------------------------------------------------------------------ (b) through the writer


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.bench.bench_commit", *args], cwd=ROOT,
                            start_new_session=True)


def _end(p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def bench_writer(tmp: str, clients: int, seconds: float) -> dict:
    from store.client import StoreClient

    run = tempfile.mkdtemp(dir=tmp, prefix=f"w{clients}-")
    db, sock = os.path.join(run, "store.db"), os.path.join(run, "store.sock")
    writer = _spawn(["--role", "writer", "--db", db, "--sock", sock])
    procs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if writer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("store writer did not start")
            time.sleep(0.01)
        outs = [os.path.join(run, f"lat-{i}.json") for i in range(clients)]
        go = os.path.join(run, "go")
        for i in range(clients):
            procs.append(_spawn(["--role", "client", "--sock", sock, "--nozzle", str(i + 1),
                                 "--go", go, "--seconds", str(seconds), "--out", outs[i]]))
        deadline = time.monotonic() + 60
        while not all(os.path.exists(o + ".ready") for o in outs):  # every client imported and connected
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a client did not start")
            time.sleep(0.01)
        start_at = time.time() + 0.2
        with open(go + ".tmp", "w") as f:
            f.write(repr(start_at))
        os.replace(go + ".tmp", go)
        probe = StoreClient(sock)
        while time.time() < start_at - 0.02:
            time.sleep(0.005)
        c0 = probe.request({"op": "ping"})["commits"]
        k0, w0 = cpu_ticks(writer.pid) or 0, time.monotonic()
        while time.time() < start_at + seconds:
            time.sleep(0.01)
        c1 = probe.request({"op": "ping"})["commits"]
        writer_cpu = 100.0 * ((cpu_ticks(writer.pid) or 0) - k0) / TICKS / (time.monotonic() - w0)
        probe.close()
        for p in procs:
            p.wait(timeout=30)
        lat: list[float] = []
        for o in outs:
            with open(o) as f:
                lat.extend(json.load(f))
    finally:
        for p in procs:
            _end(p)
        _end(writer)
    commits = c1 - c0
    return {"clients": clients, "puts": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99),
            "commits_s": commits / seconds, "records_s": len(lat) / seconds,
            "per_commit": len(lat) / commits if commits else float("nan"), "writer_cpu": writer_cpu,
            "writer_ms_per_record": writer_cpu / 100 * seconds / len(lat) * 1e3 if lat else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 direct commits, 2 s per client count")
    ap.add_argument("--role", choices=("writer", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--sock", help=argparse.SUPPRESS)
    ap.add_argument("--nozzle", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "writer":
        return role_writer(args.db, args.sock)
    if args.role == "client":
        return role_client(args.sock, args.nozzle, args.go, args.seconds, args.out)

    commits = 300 if args.quick else 2000
    seconds = 2.0 if args.quick else 5.0
    header("bench_commit: durable commit latency of the store (WAL, synchronous=FULL)")
    tmp = tempfile.mkdtemp(prefix="collector-bench-commit-")
    same = os.stat(tmp).st_dev == os.stat("/work").st_dev if os.path.exists("/work") else None
    print(f"   store in {tmp} ({'same filesystem as /work' if same else 'NOT the filesystem of /work' if same is not None else '/work absent'})",
          flush=True)
    try:
        f = bench_fsync(tmp, commits // 4)
        d = bench_direct(tmp, commits)
        print("\n(a) RingStore.put_batch, one sale per commit, in-process (and the raw fsync floor)")
        table([[name, r["n"], f"{r['p50'] * 1e3:.3f}", f"{r['p99'] * 1e3:.3f}", f"{r['max'] * 1e3:.1f}", f"{r['rate']:.0f}"]
               for name, r in (("put_batch([1 sale])", d), ("4 KiB pwrite+fsync", f))],
              ["operation", "n", "p50 ms", "p99 ms", "max ms", "per s"])
        rows = []
        for n in CLIENT_COUNTS:
            r = bench_writer(tmp, n, seconds)
            rows.append(r)
            print(f"   {n} client(s): {r['records_s']:.0f} records/s", flush=True)
        print(f"\n(b) StoreClient.put round trip through the writer process, one sale per put, {seconds:.0f} s each")
        table([[r["clients"], r["puts"], f"{r['p50'] * 1e3:.2f}", f"{r['p99'] * 1e3:.2f}", f"{r['commits_s']:.0f}",
                f"{r['records_s']:.0f}", f"{r['per_commit']:.1f}", f"{r['writer_cpu']:.0f}",
                f"{r['writer_ms_per_record']:.2f}"] for r in rows],
              ["clients", "puts", "p50 ms", "p99 ms", "commits/s", "records/s", "records/commit", "writer CPU %",
               "writer CPU ms/record"])
        one = rows[0]
        print(f"\n  put_batch p50 / fsync p50 = {d['p50'] / f['p50']:.1f}"
              f"\n  round trip overhead over a direct commit at 1 client: p50 {one['p50'] / d['p50']:.2f}x; "
              f"records/s at {rows[-1]['clients']} clients vs 1: {rows[-1]['records_s'] / one['records_s']:.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
