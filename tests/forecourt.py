"""Forecourts for the Gilbarco and listen-mode end-to-end tests: the collector configuration and
the simulator processes (pump loops, POS masters, bus taps) built together, run with the same
``tests.harness.Station`` observation helpers as the DART station tests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import yaml

from collector.config import load
from tests.harness import FAST, ROOT, Station
from tools import station

GRADES = station.GRADES
DECIMALS = {"volume": 2, "amount": 2, "price": 2, "totals": 2}


class Forecourt(Station):
    """A station whose configuration and simulators the caller describes.

    ``ports``: list of ``{"port": <collector port config>, "sims": [(module, spec), ...]}``; the
    simulators of each port start in order (a POS after its pump loop, a tap after both). Pump
    simulators write ``truth``; every spec with a ``link`` is waited for.
    """

    broker = platform = None  # Station's optional uplink companions: none here

    def __init__(self, workdir, ports: list[dict], extra: dict | None = None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.truth_path = os.path.join(self.workdir, "truth.jsonl")
        config = {
            "station": {"device_id": "SIM-STATION-002", "name": "模拟加油站 Forecourt", "credit_code": station.CREDIT_CODE},
            "store": {"path": os.path.join(self.workdir, "store.db")},
            "runtime_dir": os.path.join(self.workdir, "run"),
            "log_level": "info",
            "ports": [p["port"] for p in ports],
        }
        config.update(extra or {})
        self.cfg_path = os.path.join(self.workdir, "collector.yaml")
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
        self.cfg = load(self.cfg_path)
        self.sim_list = [sim for p in ports for sim in p["sims"]]
        self.specs = [spec for module, spec in self.sim_list if module.endswith("_pump")]
        self.sims: list[subprocess.Popen] = []
        self.daemon = None
        self.log = open(os.path.join(self.workdir, "daemon.log"), "a")

    def start_sims(self):
        for module, spec in self.sim_list:
            wait = (spec.get("status") or spec["tap"] + ".tap.json") if "tap" in spec else spec["link"] + ".ctl"
            if os.path.exists(wait) and "tap" in spec:
                os.unlink(wait)
            self.sims.append(subprocess.Popen([sys.executable, "-m", module, "--spec", json.dumps(spec)], cwd=ROOT,
                                              stdout=self.log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 20
            while not os.path.exists(wait):
                if time.monotonic() > deadline or self.sims[-1].poll() is not None:
                    raise RuntimeError(f"simulator {module} did not start")
                time.sleep(0.02)

    def open_forecourt(self):
        """Let customers in (simulators started with ``"closed": true``), once the collector polls."""
        for spec in self.specs:
            station_control(spec["link"], "open")

    def close_forecourt(self):
        for spec in self.specs:
            station_control(spec["link"], "close")

    def control(self, port, command):
        station_control(next(s["link"] for s in self.specs if s["name"] == port), command)


def station_control(link: str, command: str) -> None:
    from tools.sim.dart_pump import control

    control(link, command)


def gilbarco_loop(workdir, name: str, pumps=3, grades=(1, 3), seed: int = 5, first_id: int = 1,
                  mode: str = "master", options: dict | None = None, **sim) -> tuple[dict, dict]:
    """(collector port config, pump simulator spec) for one Gilbarco loop; ``pumps``: a count
    (pumps 1..n) or a list of pump numbers (16 is nibble 0 on the wire)."""
    rng = random.Random(seed)
    link = os.path.join(str(workdir), f"tty-{name}")
    port_pumps, sim_pumps = [], []
    nid = first_id
    for address in (range(1, pumps + 1) if isinstance(pumps, int) else pumps):
        ncfg, nsim = [], []
        for grade in range(1, rng.randint(*grades) + 1):
            code, gname, price = GRADES[(grade - 1) % len(GRADES)]
            ncfg.append({"number": grade, "id": nid, "grade": {"code": code, "name": gname}, "decimals": DECIMALS})
            nsim.append({"number": grade, "price": price, "vol_total": rng.randint(10**5, 10**7),
                         "amt_total": rng.randint(10**6, 5 * 10**7)})
            nid += 1
        port_pumps.append({"address": address, "nozzles": ncfg})
        sim_pumps.append({"address": address, "nozzles": nsim})
    port = {"name": name, "device": link, "protocol": "gilbarco", "mode": mode, "poll_interval": 0.05,
            "response_timeout": 0.2, "pumps": port_pumps}
    if options:
        port["options"] = options
    spec = {"name": name, "link": link, "truth": os.path.join(str(workdir), "truth.jsonl"), "seed": seed,
            "gap": list(FAST["gap"]), "fill_seconds": list(FAST["fill_seconds"]), "volume": list(FAST["volume"]),
            "pumps": sim_pumps}
    spec.update(sim)
    return port, spec


def listen_port(workdir, port: dict, pump_spec: dict, pump_module: str, pos_module: str, pos: dict | None = None,
                baud: int = 0, bits: int = 11) -> dict:
    """A port in listen mode: the pump simulator (run ``pos_controlled``), a POS master driving it
    (started paused: resume it with ``"pause off"`` once the collector listens), and the bus tap
    the collector opens (``port["device"]``). Returns ``{"port", "sims", "tap", "pos"}``."""
    name = port["name"]
    tap_link = port["device"]
    bus_link = os.path.join(str(workdir), f"tty-{name}-bus")
    pos_link = os.path.join(str(workdir), f"tty-{name}-pos")
    pump_spec = dict(pump_spec, link=bus_link, pos_controlled=True)
    pos_spec = {"name": name, "link": pos_link, "pumps": [p["address"] for p in port["pumps"]], "paused": True}
    pos_spec.update(pos or {})
    tap_spec = {"name": name, "master": pos_link, "bus": bus_link, "tap": tap_link, "baud": baud, "bits": bits,
                "truth": pump_spec["truth"]}
    port = dict(port, mode="listen")
    return {"port": port, "sims": [(pump_module, pump_spec), (pos_module, pos_spec), ("tools.sim.bus_tap", tap_spec)],
            "tap": tap_spec, "pos": pos_spec}


def dart_bus(workdir, name: str, sides: int = 2, nozzles=(1, 2), seed: int = 9, first_id: int = 1,
             mode: str = "master", options: dict | None = None, **sim) -> tuple[dict, dict]:
    """(collector port config, DART pump simulator spec) for one DART bus; sides 0x50.."""
    rng = random.Random(seed)
    link = os.path.join(str(workdir), f"tty-{name}")
    port_pumps, sim_pumps = [], []
    nid = first_id
    for s in range(sides):
        ncfg, nsim = [], []
        for number in range(1, rng.randint(*nozzles) + 1):
            code, gname, price = GRADES[(number - 1) % len(GRADES)]
            ncfg.append({"number": number, "id": nid, "grade": {"code": code, "name": gname}, "decimals": DECIMALS})
            nsim.append({"number": number, "price": price, "vol_total": rng.randint(10**6, 10**8),
                         "amt_total": rng.randint(10**7, 10**9)})
            nid += 1
        port_pumps.append({"address": 0x50 + s, "nozzles": ncfg})
        sim_pumps.append({"address": 0x50 + s, "nozzles": nsim})
    port = {"name": name, "device": link, "protocol": "dart", "mode": mode, "poll_interval": 0.05,
            "response_timeout": 0.2, "pumps": port_pumps}
    if options:
        port["options"] = options
    spec = {"name": name, "link": link, "truth": os.path.join(str(workdir), "truth.jsonl"), "seed": seed,
            "gap": list(FAST["gap"]), "fill_seconds": list(FAST["fill_seconds"]), "volume": list(FAST["volume"]),
            "pumps": sim_pumps}
    spec.update(sim)
    return port, spec


def truth_by_nozzle(forecourt: Station) -> dict[int, list[dict]]:
    """Ground-truth sales per station nozzle id, in the order the pumps sold them."""
    ids = {(p.name, pump.address, n.number): n.id for p, pump, n in forecourt.cfg.nozzles()}
    out: dict[int, list[dict]] = {}
    for s in forecourt.truth()[0]:
        out.setdefault(ids[(s["port"], s["address"], s["nozzle"])], []).append(s)
    return out


def stored_by_nozzle(forecourt: Station, kind: str = "sale") -> dict[int, list[dict]]:
    """Stored records of a sale stream kind (sale or gap) per nozzle, in store order."""
    out: dict[int, list[dict]] = {}
    for (body,) in forecourt.conn().execute(
            "SELECT body FROM records WHERE kind=? ORDER BY stream, seq", (kind,)):
        b = json.loads(body)
        out.setdefault(b["nozzle"], []).append(b)
    return out
