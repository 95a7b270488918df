"""Forecourts for the Gilbarco and listen-mode end-to-end tests: the collector configuration and
the simulator processes (pump loops, POS masters, bus taps) built together, run with the same
``tests.harness.Station`` observation helpers as the DART station tests."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from collector.config import load
from tests.harness import Station
from tools import station
from tools.forecourt import dart_bus, gilbarco_loop, listen_port, start_sims  # noqa: F401  (re-exported for the tests)

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
        self.sims += start_sims(self.sim_list, self.log)

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
    from tools.sim.common import control

    control(link, command)








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
