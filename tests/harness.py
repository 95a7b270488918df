"""A simulated station for end-to-end tests: simulators on ptys, the real daemon as a process,
and waits on observable conditions (store contents, status files) instead of fixed sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from collector.config import load
from collector.statusboard import read_all
from store.ringstore import open_readonly
from tools import station
from tools.sim.common import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(gap=(0.4, 1.2), fill_seconds=(0.3, 0.8), volume=(2.0, 40.0), poll_interval=0.05, response_timeout=0.2)


class Station:
    def __init__(self, workdir, ports=4, seed=3, uplink=None, uplink_options=None, platform_extra=(), **kw):
        self.workdir = str(workdir)
        params = dict(FAST, **kw)
        defects = params.pop("defects", {})
        self.broker = self.platform = None
        if uplink:
            self._start_platform(uplink, uplink_options or {}, platform_extra, params)
        self.cfg_path, self.specs = station.make_station(self.workdir, ports=ports, seed=seed, **params)
        for spec in self.specs:
            for pump in spec.get("pumps", ()):
                if (spec["name"], pump["address"]) in defects:
                    pump["defect"] = defects[(spec["name"], pump["address"])]
        self.cfg = load(self.cfg_path)
        self.truth_path = self.specs[0]["truth"]
        self.sims: list[subprocess.Popen] = []
        self.daemon: subprocess.Popen | None = None
        self.log = open(os.path.join(self.workdir, "daemon.log"), "a")

    def _start_platform(self, transport, options, platform_extra, params):
        from tools.platform_run import Platform, uplink_config

        if transport == "mqtt":
            from tools.broker import MosquittoBroker, mosquitto_path

            if mosquitto_path() is None:
                import pytest

                pytest.skip("mosquitto is not installed (make test installs it as root on Debian)")
            self.broker = MosquittoBroker(os.path.join(self.workdir, "broker")).start()
        self.platform = Platform(os.path.join(self.workdir, "platform"), http=transport == "http",
                                 mqtt_port=self.broker.port if self.broker else None, extra=platform_extra).start()
        self.platform.register("SIM-STATION-001", os.path.join(self.workdir, "device.key"))
        extra = dict(params.pop("extra", None) or {})
        extra["uplink"] = uplink_config(self.workdir, transport, self.platform,
                                        self.broker.port if self.broker else None, **options)
        params["extra"] = extra

    def platform_sales(self):
        """Sales the platform received: (device, stream, seq) -> body, and the raw list."""
        got = [r for r in self.platform.received() if r["kind"] == "sale"]
        return got

    def wait_delivered(self, timeout=60):
        """Every sale in the store is held by the platform."""
        def done():
            stored = {(f"sale:{n}", q) for n, q in self.conn().execute(
                "SELECT nozzle, seq FROM records WHERE kind='sale'")}
            held = {(r["stream"], r["seq"]) for r in self.platform_sales()}
            return stored and stored <= held
        return self.wait_for(done, timeout, "every stored sale delivered to the platform")

    # processes
    def start_sims(self):
        self.sims = station.start_simulators(self.specs, self.log)

    def start_daemon(self):
        self.daemon = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", self.cfg_path],
                                       stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.wait_for(lambda: self.supervisor().get("children", {}).get("store", {}).get("pid"), 20, "daemon start")

    def stop_daemon(self, timeout=30):
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(timeout=timeout)

    def kill_daemon(self):
        os.killpg(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait()

    def close_forecourt(self):
        for spec in self.specs:
            control(spec["link"], "close")

    def control(self, port, command):
        control(next(s["link"] for s in self.specs if s["name"] == port), command)

    def close(self):
        if self.platform:
            self.platform.stop()
        if self.broker:
            self.broker.stop()
        if self.daemon and self.daemon.poll() is None:
            try:
                os.killpg(self.daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.daemon.wait()
        for p in self.sims:
            p.terminate()
        for p in self.sims:
            p.wait(timeout=10)
        self.log.close()

    # observation
    def uplink_board(self) -> dict:
        return read_all(self.cfg.runtime_dir).get("uplink", {})

    def uplink_pid(self):
        return self.supervisor().get("children", {}).get("uplink", {}).get("pid")

    def supervisor(self) -> dict:
        return read_all(self.cfg.runtime_dir).get("supervisor", {})

    def board(self, port) -> dict:
        return read_all(self.cfg.runtime_dir).get(f"port-{port}", {})

    def truth(self):
        return station.read_truth(self.truth_path)

    def tank_truth(self):
        """The tank console simulator's ground truth: its finished deliveries."""
        from tools.sim.vr_console import read_deliveries

        return read_deliveries(os.path.join(self.workdir, "tank_truth.jsonl"))

    def conn(self):
        return open_readonly(self.cfg.store.path)

    def compare(self):
        return station.compare(self.truth()[0], self.cfg, self.conn())

    def records(self, kind):
        return [json.loads(b) for (b,) in self.conn().execute(
            "SELECT body FROM records WHERE kind=? ORDER BY id", (kind,))]

    def wait_for(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = condition()
            except FileNotFoundError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def wait_all_captured(self, timeout=30):
        """Close the forecourt, let running fills end, and wait until the store has every sale."""
        self.close_forecourt()
        self.wait_for(lambda: self.all_idle(), timeout, "every pump idle")
        return self.wait_for(lambda: (lambda r: r if r["missing"] == 0 else None)(self.compare()), timeout,
                             "every completed sale in the store")

    def all_idle(self):
        for port in self.cfg.ports:
            pumps = self.board(port.name).get("pumps", {})
            if any(p.get("status") in ("filling", "authorized") for p in pumps.values()):
                return False
        before = len(self.truth()[0])
        return before == len(self.truth()[0])
