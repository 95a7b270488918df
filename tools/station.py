"""A simulated station: the collector configuration and the matching simulator specs, generated
together so that the demo, the tests and the benchmarks describe one forecourt the same way."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import yaml

GRADES = [("92", "92号汽油", 785), ("95", "95号汽油", 838), ("98", "98号汽油", 918), ("0", "0号柴油", 752)]
CREDIT_CODE = "91440300MA5F123452"


def make_station(workdir: str, ports: int = 32, seed: int = 7, *, sides=(1, 2), nozzles=(1, 4),
                 gap=(2.0, 8.0), fill_seconds=(3.0, 10.0), volume=(5.0, 60.0), max_sales=None,
                 poll_interval=0.25, response_timeout=0.2, sales_per_nozzle=2000, extra: dict | None = None):
    """Write ``collector.yaml`` in ``workdir``; return (config path, list of simulator specs)."""
    rng = random.Random(seed)
    os.makedirs(workdir, exist_ok=True)
    port_cfgs, specs = [], []
    nozzle_id = 1
    for i in range(1, ports + 1):
        name = f"p{i:02d}"
        link = os.path.join(workdir, f"tty-{name}")
        pump_cfgs, pump_specs = [], []
        for s in range(rng.randint(*sides)):
            address = 0x50 + s
            count = rng.randint(*nozzles)
            ncfgs, nspecs = [], []
            for number in range(1, count + 1):
                code, gname, price = GRADES[(number - 1) % len(GRADES)]
                ncfgs.append({"number": number, "id": nozzle_id, "grade": {"code": code, "name": gname},
                              "decimals": {"volume": 2, "amount": 2, "price": 2, "totals": 2}})
                nspecs.append({"number": number, "price": price, "vol_total": rng.randint(10**6, 10**8),
                               "amt_total": rng.randint(10**7, 10**9)})
                nozzle_id += 1
            pump_cfgs.append({"address": address, "nozzles": ncfgs})
            pump_specs.append({"address": address, "nozzles": nspecs})
        port_cfgs.append({"name": name, "device": link, "protocol": "dart", "mode": "master",
                          "poll_interval": poll_interval, "response_timeout": response_timeout, "pumps": pump_cfgs})
        specs.append({"name": name, "link": link, "truth": os.path.join(workdir, "truth.jsonl"),
                      "seed": seed * 1000 + i, "gap": list(gap), "fill_seconds": list(fill_seconds),
                      "volume": list(volume), "max_sales": max_sales, "pumps": pump_specs})
    config = {
        "station": {"device_id": "SIM-STATION-001", "name": "模拟加油站 Simulated Station", "credit_code": CREDIT_CODE},
        "store": {"path": os.path.join(workdir, "store.db"), "sales_per_nozzle": sales_per_nozzle},
        "runtime_dir": os.path.join(workdir, "run"),
        "log_level": "info",
        "ports": port_cfgs,
    }
    if extra:
        config.update(extra)
    path = os.path.join(workdir, "collector.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
    return path, specs


def start_simulators(specs: list[dict], log=None) -> list[subprocess.Popen]:
    """One simulator process per bus; returns once every pty link exists."""
    procs = []
    for spec in specs:
        procs.append(subprocess.Popen([sys.executable, "-m", "tools.sim.dart_pump", "--spec", json.dumps(spec)],
                                      stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL))
    deadline = time.monotonic() + 20
    for spec in specs:
        while not os.path.exists(spec["link"] + ".ctl"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator for {spec['name']} did not start")
            time.sleep(0.02)
    return procs


def read_truth(path: str) -> tuple[list[dict], list[dict]]:
    sales, violations = [], []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    (violations if "violation" in rec else sales).append(rec)
    return sales, violations


def compare(truth_sales: list[dict], config, conn) -> dict:
    """Ground truth against the store: sold, stored, missing, duplicated, chain breaks."""
    by_pump = {(port.name, pump.address, n.number): n.id for port, pump, n in config.nozzles()}
    stored: dict[tuple, int] = {}
    for body, in conn.execute("SELECT body FROM records WHERE kind='sale'"):
        b = json.loads(body)
        key = (b["nozzle"], b["raw"][3])
        stored[key] = stored.get(key, 0) + 1
    missing = [s for s in truth_sales if (by_pump.get((s["port"], s["address"], s["nozzle"])), s["vol_total"]) not in stored]
    duplicated = sum(c - 1 for c in stored.values() if c > 1)
    chain_breaks = 0
    for (nozzle,) in conn.execute("SELECT DISTINCT nozzle FROM records WHERE kind='sale'"):
        prev = None
        for (body,) in conn.execute("SELECT body FROM records WHERE kind='sale' AND nozzle=? ORDER BY seq", (nozzle,)):
            b = json.loads(body)
            if prev is not None and b["raw"][3] - b["raw"][0] != prev:
                chain_breaks += 1
            prev = b["raw"][3]
    return {"sold": len(truth_sales), "stored": sum(stored.values()), "missing": len(missing),
            "duplicated": duplicated, "chain_breaks": chain_breaks, "missing_list": missing[:10]}
