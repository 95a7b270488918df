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
from tools.sim.dart_pump import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(gap=(0.4, 1.2), fill_seconds=(0.3, 0.8), volume=(2.0, 40.0), poll_interval=0.05, response_timeout=0.2)


class Station:
    def __init__(self, workdir, ports=4, seed=3, **kw):
        self.workdir = str(workdir)
        params = dict(FAST, **kw)
        defects = params.pop("defects", {})
        self.cfg_path, self.specs = station.make_station(self.workdir, ports=ports, seed=seed, **params)
        for spec in self.specs:
            for pump in spec["pumps"]:
                if (spec["name"], pump["address"]) in defects:
                    pump["defect"] = defects[(spec["name"], pump["address"])]
        self.cfg = load(self.cfg_path)
        self.truth_path = self.specs[0]["truth"]
        self.sims: list[subprocess.Popen] = []
        self.daemon: subprocess.Popen | None = None
        self.log = open(os.path.join(self.workdir, "daemon.log"), "a")

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
    def supervisor(self) -> dict:
        return read_all(self.cfg.runtime_dir).get("supervisor", {})

    def board(self, port) -> dict:
        return read_all(self.cfg.runtime_dir).get(f"port-{port}", {})

    def truth(self):
        return station.read_truth(self.truth_path)

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
