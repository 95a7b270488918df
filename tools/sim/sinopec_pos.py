"""Sinopec station PC ("POS" / back office) simulator: the existing master of a card-dispenser line.

It is what a listen-mode collector overhears. On its own pseudo-terminal (a bus tap connects it to
the dispenser simulator) it does what the station's card system does (reference §5.3):

* reads 3AH information once per dispenser (again every ``info_every`` seconds if set) and polls
  30H with the current time and the dispenser's own list versions (so it never asks for a download);
* takes every 32H transaction, "stores" it, and acknowledges it after ``ack_delay`` seconds
  (``ack_form``: ``"long"`` = result + TTC, ``"short"`` = the 1-byte result only, as a PC that
  follows the firmware literally sends);
* reads 38H totals every ``totals_every`` seconds while the dispenser is idle.

Spec (JSON)::

    {"name": "p01", "link": "/tmp/x/tty-p01-pos", "pc_address": 0, "dispensers": [1, 2],
     "poll_interval": 0.1, "response_timeout": 0.5, "ack_delay": [0.05, 0.3], "ack_form": "long",
     "totals_every": 5.0, "info_every": null, "seed": 1, "status": null}

Its counters (polls, timeouts, acknowledged TTCs per dispenser) go to ``<link>.status.json``.
Control (datagram socket at ``<link>.ctl``): ``pause on|off`` (the PC stops and resumes polling).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import select
import signal
import subprocess
import time

from drivers.sinopec import codec as sc
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty


class PosMaster:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.pc = spec.get("pc_address", 0)
        self.addresses = list(spec["dispensers"])
        self.poll_interval = spec.get("poll_interval", 0.1)
        self.response_timeout = spec.get("response_timeout", 0.5)
        self.ack_delay = tuple(spec.get("ack_delay", (0.05, 0.3)))
        self.ack_form = spec.get("ack_form", "long")
        self.totals_every = spec.get("totals_every", 5.0)
        self.info_every = spec.get("info_every")  # None: 3AH once per dispenser, at start
        self.next_info = {a: 0.0 for a in self.addresses}
        self.rng = random.Random(spec.get("seed", 1))
        self.status_path = spec.get("status") or spec["link"] + ".status.json"
        self.pty = SimPty(spec["link"])
        self.ctl_path = spec["link"] + ".ctl"
        self.framer = sc.SinopecFramer()
        self.frame_no = 0
        self.paused = False
        self.running = True
        self.versions: dict[int, sc.ListVersions] = {}
        self.next_totals = {a: 0.0 for a in self.addresses}
        self.acked: dict[int, list[int]] = {a: [] for a in self.addresses}
        self.totals: dict[int, dict] = {}
        self.stats = {"polls": 0, "timeouts": 0, "records": 0, "acks": 0, "totals_reads": 0}
        self._published = 0.0

    # ---------------------------------------------------------------- one exchange

    def _send(self, address: int, message) -> int:
        self.frame_no = (self.frame_no + 1) % 0xFA
        self.pty.write(sc.encode_message(message, dispenser=address, pc=self.pc, frame_no=self.frame_no))
        return self.frame_no

    def exchange(self, address: int, message):
        frame_no = self._send(address, message)
        deadline = time.monotonic() + self.response_timeout
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                self.framer.reset()
                return None
            r, _, _ = select.select((self.pty.master,), (), (), left)
            if not r:
                continue
            for item in self.framer.feed(self.pty.read()):
                if isinstance(item, sc.Frame) and item.b1 == self.pc and item.b2 == address and item.b3 == frame_no:
                    try:
                        return sc.decode_message(item, sc.DISP)
                    except sc.SinopecCodecError:
                        return None
            deadline = max(deadline, time.monotonic() + 0.05)
        return None

    # ---------------------------------------------------------------- the PC's loop

    def visit(self, address: int) -> None:
        if address not in self.versions or (self.info_every and time.monotonic() >= self.next_info[address]):
            reply = self.exchange(address, sc.InfoRequest())
            if isinstance(reply, sc.InfoReply):
                self.versions[address] = reply.versions
                self.next_info[address] = time.monotonic() + (self.info_every or 0)
        for _ in range(8):
            self.stats["polls"] += 1
            now = dt.datetime.now()
            reply = self.exchange(address, sc.GeneralQuery.at(now, self.versions.get(address)))
            if reply is None:
                self.stats["timeouts"] += 1
                return
            if isinstance(reply, sc.TransactionRecord):
                self.stats["records"] += 1
                time.sleep(self.rng.uniform(*self.ack_delay))  # the PC writes it to its database first
                self._send(address, sc.TransactionAck(reply.ttc if self.ack_form == "long" else None))
                self.stats["acks"] += 1
                self.acked[address].append(reply.ttc)
                continue
            if isinstance(reply, sc.RealTimeInfo) and not any(isinstance(n, sc.Fuelling) for n in reply.nozzles):
                if time.monotonic() >= self.next_totals[address]:
                    totals = self.exchange(address, sc.TotalsRequest())
                    if isinstance(totals, sc.TotalsReply):
                        self.stats["totals_reads"] += 1
                        self.totals[address] = {t.nozzle: t.volume_total for t in totals.totals}
                        self.next_totals[address] = time.monotonic() + self.totals_every
            return

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < 0.2:
            return
        self._published = now
        state = {"pid": os.getpid(), "updated": time.time(), "port": self.name, "paused": self.paused,
                 "stats": self.stats, "acked": {str(a): v[-500:] for a, v in self.acked.items()},
                 "totals": {str(a): v for a, v in self.totals.items()}}
        tmp = f"{self.status_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.status_path)

    def run(self) -> None:
        ctl = bind_control(self.ctl_path)
        ctl.setblocking(False)
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        self.publish(force=True)
        try:
            while self.running:
                start = time.monotonic()
                try:
                    words = ctl.recv(256).decode(errors="replace").split()
                    if words[:1] == ["pause"] and len(words) == 2:
                        self.paused = words[1] == "on"
                except BlockingIOError:
                    pass
                if not self.paused:
                    for address in self.addresses:
                        if not self.running:
                            break
                        self.visit(address)
                        time.sleep(0.02)  # the PC's inter-command gap
                self.publish()
                rest = self.poll_interval - (time.monotonic() - start)
                if rest > 0 and self.running:
                    time.sleep(rest)
        finally:
            self.publish(force=True)
            ctl.close()
            os.unlink(self.ctl_path)
            self.pty.close()


def status(spec: dict) -> dict:
    with open(spec.get("status") or spec["link"] + ".status.json") as f:
        return json.load(f)


def start(spec: dict, log=None) -> subprocess.Popen:
    """Start the POS simulator; returns once its pty link and control socket exist."""
    return launch("tools.sim.sinopec_pos", spec, log, spec["link"] + ".ctl", f"sinopec POS simulator {spec['name']}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "POS spec as JSON text or @file")
    PosMaster(json.loads(text)).run()


if __name__ == "__main__":
    main()
