"""Forecourt builders beyond the plain DART station: Gilbarco loops, DART buses, listen-mode lines
(pump simulator + POS master + bus tap) and the mixed station of ``collector demo --mix``. Each
builder returns the collector's port configuration and the simulator specs, built together."""

from __future__ import annotations

import importlib
import os
import random
import subprocess

import yaml

from tools import station

GRADES = station.GRADES
DECIMALS = {"volume": 2, "amount": 2, "price": 2, "totals": 2}
PACE = {"gap": (0.4, 1.2), "fill_seconds": (0.3, 0.8), "volume": (2.0, 40.0)}  # test pace; the demo passes its own


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
            "gap": list(PACE["gap"]), "fill_seconds": list(PACE["fill_seconds"]), "volume": list(PACE["volume"]),
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
            "gap": list(PACE["gap"]), "fill_seconds": list(PACE["fill_seconds"]), "volume": list(PACE["volume"]),
            "pumps": sim_pumps}
    spec.update(sim)
    return port, spec


MIX = ("dart-master", "sinopec-listen", "gilbarco-master", "dart-listen")


def make_mixed_station(workdir: str, ports: int = 8, seed: int = 7, *, gap=(2.0, 8.0), fill_seconds=(3.0, 10.0),
                       volume=(5.0, 60.0), extra: dict | None = None) -> tuple[str, list[tuple[str, dict]]]:
    """A station whose ports cycle through DART master, Sinopec listen (a POS polls the dispensers),
    Gilbarco master and DART listen. Returns (config path, [(simulator module, spec), ...] in start order)."""
    from tools.sim import sinopec_pump

    rng = random.Random(seed)
    pace = {"gap": list(gap), "fill_seconds": list(fill_seconds), "volume": list(volume)}
    port_cfgs, sims = [], []
    nid = 1
    for i in range(ports):
        kind = MIX[i % len(MIX)]
        name = f"p{i + 1:02d}"
        if kind == "sinopec-listen":
            port, specs = sinopec_pump.make_port(workdir, name, nid, mode="listen", seed=seed + i, dispensers=(1, 2),
                                                 nozzles=(1, 4), gap=gap, fill_seconds=fill_seconds, volume=volume)
            sims += [("tools.sim.sinopec_pump", specs["pump"]), ("tools.sim.sinopec_pos", specs["pos"]),
                     ("tools.sim.bus_tap", specs["tap"])]
        elif kind == "gilbarco-master":
            port, spec = gilbarco_loop(workdir, name, pumps=rng.randint(1, 3), grades=(1, 3), seed=seed + i,
                                       first_id=nid, **pace)
            port["poll_interval"] = 0.2
            sims.append(("tools.sim.gilbarco_pump", spec))
        else:
            port, spec = dart_bus(workdir, name, sides=rng.randint(1, 2), nozzles=(1, 4), seed=seed + i,
                                  first_id=nid, **pace)
            port["poll_interval"] = 0.25
            if kind == "dart-listen":
                line = listen_port(workdir, port, spec, "tools.sim.dart_pump", "tools.sim.dart_pos",
                                   pos={"paused": False})
                port = line["port"]
                sims += line["sims"]
            else:
                sims.append(("tools.sim.dart_pump", spec))
        nid += sum(len(p["nozzles"]) for p in port["pumps"])
        port_cfgs.append(port)
    config = {
        "station": {"device_id": station.DEVICE_ID, "name": "模拟加油站 Mixed Forecourt", "credit_code": station.CREDIT_CODE},
        "store": {"path": os.path.join(workdir, "store.db")},
        "runtime_dir": os.path.join(workdir, "run"),
        "log_level": "info",
        "ports": port_cfgs,
        **(extra or {}),
    }
    path = os.path.join(workdir, "collector.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
    return path, sims


def start_sims(sims: list[tuple[str, dict]], log=None) -> list[subprocess.Popen]:
    """Start simulators in order (a POS after its pumps, a tap after both), each waited for."""
    return [importlib.import_module(module).start(spec, log) for module, spec in sims]


def close_forecourt(sims: list[tuple[str, dict]]) -> None:
    """No new customers on any pump simulator; fills under way finish."""
    from tools.sim.common import control

    for module_name, spec in sims:
        if module_name.endswith("_pump"):
            try:
                control(spec["link"], "close")
            except OSError:
                pass
