"""``collector demo``: a simulated station driven by the real daemon, ending in a ground-truth check.

Starts one DART pump simulator per port on pseudo-terminals, writes the station's configuration,
runs ``collector run`` as a separate process (its real supervisor, store writer and drivers),
shows a compact live view, then closes the forecourt, lets the last fills finish and be captured,
stops the daemon with SIGTERM and compares the simulators' ground truth with the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tools import station


def _live(cfg, started: float, truth_path: str) -> str:
    from collector.statusboard import read_all

    boards = read_all(cfg.runtime_dir)
    states: dict[str, int] = {}
    sales = online = pumps = 0
    for port in cfg.ports:
        b = boards.get(f"port-{port.name}", {})
        sales += b.get("stats", {}).get("sales", 0)
        for p in b.get("pumps", {}).values():
            pumps += 1
            online += bool(p.get("online"))
            for n in p.get("nozzles", {}).values():
                states[n.get("state") or "?"] = states.get(n.get("state") or "?", 0) + 1
    sold = len(station.read_truth(truth_path)[0])
    st = " ".join(f"{k}:{v}" for k, v in sorted(states.items()))
    tk = _tank_live(cfg, boards)
    return f"{time.monotonic() - started:5.0f}s sold {sold:5d} captured {sales:5d} pumps {online}/{pumps}{tk} {st}"[:79]


def _tank_live(cfg, boards) -> str:
    """`` tanks 4 dlv 1 var -0.3`` for the live line: tanks online, deliveries stored, last variance."""
    out = ""
    for port in cfg.ports:
        b = boards.get(f"port-{port.name}", {})
        if getattr(port, "console", None) is None:
            continue
        tanks = sum(1 for t in b.get("tanks", {}).values() if t.get("volume") is not None) if b.get("online") else 0
        stats = b.get("stats", {})
        variances = [r.get("variance", 0.0) for r in b.get("recon", {}).values()]
        worst = max(variances, key=abs, default=0.0)
        out += f" tanks {tanks} dlv {stats.get('deliveries', 0) + stats.get('derived_deliveries', 0)} var {worst:+.1f}"
    return out


def _tank_options(duration: float) -> dict:
    """The demo's tank console: a delivery the console reports at 1/4 of the run, one it does not at 1/2."""
    interval = max(10.0, duration / 3)
    return {"tanks": True,
            "tank_port": {"inventory_interval": 1.0, "delivery_interval": 2.0,
                          "derived_delivery": {"start_rise": 100.0, "min_volume": 300.0, "settle": 3.0, "grace": 5.0},
                          "reconciliation": {"interval": interval, "tolerance_abs": 20.0, "boundary_wait": interval}},
            "tank_sim": {"events": [{"at": duration / 4, "do": "deliver 1 3000 4 report"},
                                    {"at": duration / 2, "do": "deliver 2 2000 4 noreport"}]}}


def _tank_summary(cfg, conn, workdir: str) -> bool:
    """Deliveries: the console simulator's truth against the store; reconciliation records and variance."""
    from tools.sim.vr_console import read_deliveries

    truth = read_deliveries(os.path.join(workdir, "tank_truth.jsonl"))
    stored = [json.loads(b) for (b,) in conn.execute("SELECT body FROM records WHERE stream='delivery' ORDER BY id")]
    recon = [json.loads(b) for (b,) in conn.execute("SELECT body FROM records WHERE stream='recon' ORDER BY id")]
    alarms = conn.execute("SELECT count(*) FROM records WHERE stream='alarm' AND body LIKE '%wetstock_variance%'"
                          ).fetchone()[0]
    derived = sum(1 for d in stored if d.get("derived"))
    worst = max((abs(r["variance"]) for r in recon), default=0.0)
    print(f"  deliveries (console's truth)    {len(truth)} ({sum(1 for d in truth if d['reported'])} reported by it)")
    print(f"  deliveries stored               {len(stored)} ({len(stored) - derived} reported, {derived} derived)")
    print(f"  reconciliation records          {len(recon)}, max |variance| {worst:.2f} L, {alarms} alarm(s)")
    by_tank = sorted(d["tank"] for d in truth)
    return by_tank == sorted(d["tank"] for d in stored)


def _open_when_polled(cfg, specs: list[dict], daemon, timeout: float = 60.0) -> None:
    """Customers come in only once the collector polls (or listens on) every port: a sale finished
    before the collector started is, in listen mode, already acknowledged by the POS."""
    from collector.statusboard import read_all
    from tools.sim.common import control

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        boards = read_all(cfg.runtime_dir)
        if all(boards.get(f"port-{p.name}", {}).get("stats", {}).get("first_poll") for p in cfg.ports):
            break
        time.sleep(0.2)
    for spec in specs:
        if spec.get("kind") != "vr":
            control(spec["link"], "open")


def _start_platform(workdir: str, choice: str):
    """The reference platform (and a Mosquitto broker for MQTT). auto: MQTT when mosquitto is installed."""
    if choice == "none":
        return None, None, "none"
    from tools.broker import MosquittoBroker, mosquitto_path
    from tools.platform_run import Platform

    transport = choice if choice != "auto" else ("mqtt" if mosquitto_path() else "http")
    broker = MosquittoBroker(os.path.join(workdir, "broker")).start() if transport == "mqtt" else None
    platform = Platform(os.path.join(workdir, "platform"), http=transport == "http",
                        mqtt_port=broker.port if broker else None).start()
    platform.register(station.DEVICE_ID, os.path.join(workdir, "device.key"))
    return broker, platform, transport


def _platform_sales(platform) -> int:
    return platform.stats().get("devices", {}).get(station.DEVICE_ID, {}).get("records_by_kind", {}).get("sale") \
        or sum(1 for r in platform.received() if r.get("kind") == "sale")


def _uplink_summary(cfg, conn, platform, sold: int) -> bool:
    """Ground truth -> store -> platform."""
    delivered = conn.execute("SELECT count(*) FROM records WHERE kind='sale' AND upload=2").fetchone()[0]
    received = [r for r in platform.received() if r.get("kind") == "sale"]
    unique = {(r["stream"], r["seq"]) for r in received}
    dev = platform.stats().get("devices", {}).get(station.DEVICE_ID, {})
    lost = sold - len(unique)
    print(f"  delivered (acknowledged)        {delivered}")
    print(f"  received by the platform        {len(unique)} unique")
    print(f"  duplicates received             {dev.get('duplicates', 0)} (harmless: de-duplicated by identity)")
    print(f"  lost on the way                 {lost}")
    print(f"  platform rejects                {dev.get('rejects', {}) or 0}")
    return lost == 0 and len(received) == len(unique)


def main(args) -> int:
    workdir = args.workdir or tempfile.mkdtemp(prefix="collector-demo-")
    keep = bool(args.workdir)
    if args.workdir and os.path.exists(os.path.join(workdir, "truth.jsonl")):
        for name in ("truth.jsonl", "tank_truth.jsonl", "store.db", "store.db-wal", "store.db-shm"):
            try:
                os.unlink(os.path.join(workdir, name))
            except FileNotFoundError:
                pass
    broker, platform, transport = _start_platform(workdir, getattr(args, "uplink", "none"))
    extra = {}
    if platform is not None:
        from tools.platform_run import uplink_config

        extra["extra"] = {"uplink": uplink_config(workdir, transport, platform, broker.port if broker else None)}
    mixed = getattr(args, "mix", False)
    if mixed:
        from tools import forecourt

        cfg_path, sim_list = forecourt.make_mixed_station(
            workdir, ports=args.ports, seed=args.seed, gap=(2.0 * args.pace, 8.0 * args.pace),
            fill_seconds=(3.0 * args.pace, 10.0 * args.pace), extra=extra.get("extra"))
        specs = [spec for module, spec in sim_list if module.endswith("_pump")]
        for spec in specs:
            spec["closed"] = True
    else:
        cfg_path, specs = station.make_station(workdir, ports=args.ports, seed=args.seed, closed=True,
                                               gap=(2.0 * args.pace, 8.0 * args.pace),
                                               fill_seconds=(3.0 * args.pace, 10.0 * args.pace),
                                               **(_tank_options(args.duration) if getattr(args, "tanks", False) else {}),
                                               **extra)
    from collector.config import load

    cfg = load(cfg_path)
    print(f"demo: {len(cfg.ports)} ports, {sum(len(p.pumps) for p in cfg.ports)} pump sides, "
          f"{len(cfg.nozzles())} nozzles; uplink {transport}; files in {workdir}")
    log = open(os.path.join(workdir, "daemon.log"), "w")
    if mixed:
        kinds: dict[str, int] = {}
        for port in cfg.ports:
            kinds[f"{port.protocol} {port.mode}"] = kinds.get(f"{port.protocol} {port.mode}", 0) + 1
        print("demo: mixed station: " + ", ".join(f"{n} x {k}" for k, n in kinds.items()))
        sims = forecourt.start_sims(sim_list, log)
    else:
        sims = station.start_simulators(specs)
    daemon = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", cfg_path],
                              stdout=log, stderr=subprocess.STDOUT)
    _open_when_polled(cfg, specs, daemon)
    started = time.monotonic()
    interrupted = False
    try:
        while time.monotonic() - started < args.duration:
            if daemon.poll() is not None:
                print(f"demo: the daemon exited early ({daemon.returncode}); see {workdir}/daemon.log")
                break
            time.sleep(1.0)
            if not args.quiet:
                line = _live(cfg, started, specs[0]["truth"])
                if platform is not None:
                    line = f"{line[:64]} | platform {_platform_sales(platform):5d}"
                print(line, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ndemo: interrupted; closing the forecourt")
    if mixed:  # closing time: no new customers, running fills finish
        forecourt.close_forecourt(sim_list)
    else:
        for p in sims:
            p.send_signal(signal.SIGUSR1)
    truth_path = specs[0]["truth"]
    from store.ringstore import open_readonly

    deadline = time.monotonic() + 30
    result = None
    while time.monotonic() < deadline:
        time.sleep(1.0)
        try:
            result = station.compare(station.read_truth(truth_path)[0], cfg, open_readonly(cfg.store.path))
        except FileNotFoundError:
            continue
        if result["missing"] == 0 and time.monotonic() - started > args.duration + 11:
            break  # every fill that could still be running (<= 10 s) has ended and been captured
    if platform is not None:  # let the uplink deliver what the store holds
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _platform_sales(platform) < (result or {}).get("stored", 0):
            time.sleep(0.5)
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
    for p in sims:
        p.terminate()
    for p in sims:
        p.wait(timeout=10)
    log.close()
    sales, violations = station.read_truth(truth_path)
    conn = open_readonly(cfg.store.path)
    result = station.compare(sales, cfg, conn)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    print("demo summary")
    print(f"  sold (simulators' ground truth) {result['sold']}")
    print(f"  stored                          {result['stored']}")
    print(f"  missing                         {result['missing']}")
    print(f"  duplicated                      {result['duplicated']}")
    print(f"  totalizer chain breaks          {result['chain_breaks']}")
    print(f"  write commands sent to pumps    {len(violations)}")
    print(f"  store integrity                 {integrity}")
    tanks_ok = _tank_summary(cfg, conn, workdir) if getattr(args, "tanks", False) else True
    uplink_ok = True
    if platform is not None:
        uplink_ok = _uplink_summary(cfg, conn, platform, result["sold"])
        platform.stop()
    if broker is not None:
        broker.stop()
    print(f"  daemon exit code                {daemon.returncode}")
    if result["missing_list"]:
        print("  first missing:", json.dumps(result["missing_list"][:3]))
    ok = (result["missing"] == 0 and result["duplicated"] == 0 and not violations and integrity == "ok"
          and result["sold"] > 0 and tanks_ok and uplink_ok)
    if not keep and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not keep:
        print(f"  files kept for inspection in {workdir}")
    return 0 if ok or interrupted and result["missing"] == 0 else 1
