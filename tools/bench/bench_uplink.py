"""Uplink benchmarks: sale end -> platform ack latency, backlog drain rate with live latency during
the drain, and the uplink process's memory. Real daemon, real reference platform, loopback.

    .venv/bin/python -m tools.bench.bench_uplink [--transport mqtt|http] [--quick]

Latency is measured on the device: ``acked_at - t`` of each sale in the store, where ``t`` is the
capture time (the driver builds the record right after reading the sale's totals, i.e. at sale end)
and ``acked_at`` is when the platform's ack was recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from store.ringstore import RingStore, open_readonly
from tools import station
from tools.broker import MosquittoBroker, mosquitto_path
from tools.platform_run import Platform, uplink_config


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def prefill(db_path: str, nozzles: int, per_nozzle: int) -> None:
    """A backlog as a long outage leaves it: ``per_nozzle`` unsent sales on each of ``nozzles`` streams."""
    store = RingStore(db_path, sales_per_nozzle=per_nozzle)
    now = time.time() - 3600
    body = {"station": "bench", "price": 7.85, "volume": 30.0, "amount": 235.5, "vol_total": 0, "amt_total": 0,
            "flags": [], "raw": [3000, 23550, 785, 0, 0], "mono": 0.0, "boot": "bench", "clock": "rtc"}
    for start in range(0, per_nozzle, 500):
        batch = []
        for n in range(1, nozzles + 1):
            for i in range(start, min(per_nozzle, start + 500)):
                batch.append({"stream": f"sale:{900 + n}", "kind": "sale", "nozzle": 900 + n, "key": f"b{n}-{i}",
                              "t": now + i, "body": dict(body, nozzle=900 + n, vol_total=i)})
        store.put_batch(batch)
    store.close()


def run(transport: str, duration: float, backlog: tuple[int, int]) -> dict:
    work = tempfile.mkdtemp(prefix="bench-uplink-")
    broker = MosquittoBroker(os.path.join(work, "broker")).start() if transport == "mqtt" else None
    platform = Platform(os.path.join(work, "platform"), http=transport == "http",
                        mqtt_port=broker.port if broker else None).start()
    platform.register(station.DEVICE_ID, os.path.join(work, "device.key"))
    cfg_path, specs = station.make_station(
        work, ports=4, seed=5, gap=(1.0, 3.0), fill_seconds=(0.5, 1.5), poll_interval=0.1,
        sales_per_nozzle=max(2000, backlog[1]),
        extra={"uplink": uplink_config(work, transport, platform, broker.port if broker else None,
                                       heartbeat_interval=10)})
    if backlog[0]:
        prefill(os.path.join(work, "store.db"), *backlog)
    sims = station.start_simulators(specs)
    log = open(os.path.join(work, "daemon.log"), "w")
    daemon = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", cfg_path],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict = {"transport": transport, "backlog": backlog[0] * backlog[1]}
    try:
        conn = None
        while conn is None:
            try:
                conn = open_readonly(os.path.join(work, "store.db"))
            except FileNotFoundError:
                time.sleep(0.1)
        start = time.monotonic()
        drained_at = None
        uplink_pss = []
        while time.monotonic() - start < duration or (backlog[0] and drained_at is None
                                                      and time.monotonic() - start < duration + 300):
            time.sleep(0.5)
            if backlog[0] and drained_at is None:
                left = conn.execute("SELECT count(*) FROM records WHERE nozzle > 900 AND upload < 2").fetchone()[0]
                if left == 0:
                    drained_at = time.monotonic()
            try:
                with open(os.path.join(work, "run", "supervisor.json")) as f:
                    pid = json.load(f)["children"].get("uplink", {}).get("pid")
            except (OSError, ValueError):
                continue
            if pid:
                try:
                    uplink_pss.append(pss_kib(pid))
                except OSError:
                    pass
        first_ack = conn.execute("SELECT min(acked_at) FROM records WHERE nozzle > 900").fetchone()[0]
        last_ack = conn.execute("SELECT max(acked_at) FROM records WHERE nozzle > 900").fetchone()[0]
        # live = captured after the first acknowledgement of this run (the uplink was up); earlier ones
        # were backlog by definition
        up_since = conn.execute("SELECT min(acked_at) FROM records").fetchone()[0] or 0
        live = [r[0] for r in conn.execute(
            "SELECT acked_at - t FROM records WHERE kind='sale' AND nozzle < 900 AND acked_at IS NOT NULL AND t > ?",
            (up_since,))]
        out.update({
            "live_sales": len(live),
            "latency_p50_ms": round(pct(live, 50) * 1000, 1), "latency_p99_ms": round(pct(live, 99) * 1000, 1),
            "latency_max_ms": round(max(live, default=float("nan")) * 1000, 1),
            "uplink_pss_kib_median": int(statistics.median(uplink_pss)) if uplink_pss else None,
            "uplink_pss_kib_max": max(uplink_pss) if uplink_pss else None,
        })
        if backlog[0] and first_ack and last_ack:
            n = backlog[0] * backlog[1]
            out["drain_seconds"] = round(last_ack - first_ack, 1)
            out["drain_sales_per_s"] = round(n / max(0.001, last_ack - first_ack))
            during = [r[0] for r in conn.execute(
                "SELECT acked_at - t FROM records WHERE kind='sale' AND nozzle < 900 AND acked_at BETWEEN ? AND ?",
                (first_ack, last_ack))]
            out["live_during_drain"] = len(during)
            out["live_during_drain_p50_ms"] = round(pct(during, 50) * 1000, 1)
            out["live_during_drain_p99_ms"] = round(pct(during, 99) * 1000, 1)
        dev = platform.stats().get("devices", {}).get(station.DEVICE_ID, {})
        out["platform_duplicates"] = dev.get("duplicates")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
        for p in sims:
            p.terminate()
        platform.stop()
        if broker:
            broker.stop()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", choices=["mqtt", "http"], default="mqtt" if mosquitto_path() else "http")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    quiet = run(args.transport, 20 if args.quick else 60, (0, 0))
    backlog = (32, 500) if args.quick else (32, 2000)
    drain = run(args.transport, 10, backlog)
    print(json.dumps({"latency_no_backlog": quiet, "drain": drain}, indent=1))
    print(f"\nuplink over {args.transport}")
    print(f"  sale end -> ack, no backlog: p50 {quiet['latency_p50_ms']} ms, p99 {quiet['latency_p99_ms']} ms "
          f"({quiet['live_sales']} sales)")
    print(f"  drain of {drain['backlog']} queued sales: {drain.get('drain_sales_per_s')} sales/s "
          f"({drain.get('drain_seconds')} s)")
    print(f"  live sales during the drain: p50 {drain.get('live_during_drain_p50_ms')} ms, "
          f"p99 {drain.get('live_during_drain_p99_ms')} ms ({drain.get('live_during_drain')} sales)")
    print(f"  uplink PSS: median {quiet['uplink_pss_kib_median']} KiB idle-ish, max {drain['uplink_pss_kib_max']} KiB "
          f"while draining")
    return 0


if __name__ == "__main__":
    sys.exit(main())
