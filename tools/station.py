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
DEVICE_ID = "SIM-STATION-001"


def make_station(workdir: str, ports: int = 32, seed: int = 7, *, sides=(1, 2), nozzles=(1, 4),
                 gap=(2.0, 8.0), fill_seconds=(3.0, 10.0), volume=(5.0, 60.0), max_sales=None,
                 poll_interval=0.25, response_timeout=0.2, sales_per_nozzle=2000, extra: dict | None = None,
                 closed: bool = False,
                 tanks: bool = False, tank_port: dict | None = None, tank_sim: dict | None = None):
    """Write ``collector.yaml`` in ``workdir``; return (config path, list of simulator specs).

    ``tanks``: add a VR tank console (port ``atg``, one tank per grade, every nozzle drawing from the
    tank of its grade) and its simulator spec (``"kind": "vr"``, last in the list); ``tank_port`` and
    ``tank_sim`` override keys of the console's port configuration and of its simulator spec."""
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
                if tanks:
                    ncfgs[-1]["tank"] = (number - 1) % len(GRADES) + 1
                nspecs.append({"number": number, "price": price, "vol_total": rng.randint(10**6, 10**8),
                               "amt_total": rng.randint(10**7, 10**9)})
                nozzle_id += 1
            pump_cfgs.append({"address": address, "nozzles": ncfgs})
            pump_specs.append({"address": address, "nozzles": nspecs})
        port_cfgs.append({"name": name, "device": link, "protocol": "dart", "mode": "master",
                          "poll_interval": poll_interval, "response_timeout": response_timeout, "pumps": pump_cfgs})
        specs.append({"name": name, "link": link, "truth": os.path.join(workdir, "truth.jsonl"),
                      "seed": seed * 1000 + i, "gap": list(gap), "fill_seconds": list(fill_seconds),
                      "volume": list(volume), "max_sales": max_sales, "closed": closed, "pumps": pump_specs})
    if tanks:
        port_cfg, spec = _tank_console(workdir, port_cfgs, tank_port, tank_sim)
        port_cfgs.append(port_cfg)
        specs.append(spec)
    config = {
        "station": {"device_id": DEVICE_ID, "name": "模拟加油站 Simulated Station", "credit_code": CREDIT_CODE},
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


def _tank_console(workdir: str, port_cfgs: list[dict], port: dict | None, sim: dict | None) -> tuple[dict, dict]:
    """The VR console port (one 30 000 L tank per grade) and its simulator spec."""
    link = os.path.join(workdir, "tty-atg")
    tanks = [{"number": i + 1, "grade": {"code": code, "name": name}, "capacity": 30000.0, "product_code": str(i + 1)}
             for i, (code, name, _) in enumerate(GRADES)]
    cfg = {"name": "atg", "device": link, "protocol": "vr", "response_timeout": 1.0, "inter_command_gap": 0.0,
           "inventory_interval": 2.0, "delivery_interval": 10.0, "alarm_interval": 5.0,
           "derived_delivery": {"start_rise": 100.0, "min_volume": 300.0, "settle": 10.0, "grace": 30.0},
           "reconciliation": {"interval": 60.0, "tolerance_abs": 20.0, "boundary_wait": 10.0},
           "tanks": tanks, **(port or {})}
    mapping = [{"port": p["name"], "address": pump["address"], "nozzle": n["number"], "tank": n["tank"]}
               for p in port_cfgs for pump in p.get("pumps", []) for n in pump["nozzles"] if "tank" in n]
    spec = {"kind": "vr", "name": "atg", "link": link, "truth": os.path.join(workdir, "tank_truth.jsonl"),
            "sales": os.path.join(workdir, "truth.jsonl"), "units": 2, "nozzle_tanks": mapping,
            "tanks": [{"number": t["number"], "product": t["product_code"], "label": f"GRADE {t['grade']['code']}",
                       "capacity": t["capacity"], "volume": 12000.0 + 1000.0 * t["number"], "temperature": 18.0}
                      for t in tanks],
            "events": [], **(sim or {})}
    return cfg, spec


def start_simulators(specs: list[dict], log=None) -> list[subprocess.Popen]:
    """One simulator process per bus (or tank console, ``"kind": "vr"``); returns once every pty link exists."""
    procs = []
    for spec in specs:
        module = "tools.sim.vr_console" if spec.get("kind") == "vr" else "tools.sim.dart_pump"
        procs.append(subprocess.Popen([sys.executable, "-m", module, "--spec", json.dumps(spec)],
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
            end = b["raw"][3]
            if end is None:  # stored without totals (a POS that never read them): no chain to check
                prev = None
                continue
            if prev is not None and end - b["raw"][0] != prev:
                chain_breaks += 1
            prev = end
    return {"sold": len(truth_sales), "stored": sum(stored.values()), "missing": len(missing),
            "duplicated": duplicated, "chain_breaks": chain_breaks, "missing_list": missing[:10]}
