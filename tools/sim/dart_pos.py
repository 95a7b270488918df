"""DART POS / forecourt controller simulator: the existing master of a DART RS-485 bus.

It is what a listen-mode collector overhears. On its own pseudo-terminal (a bus tap connects it to
the DART pump simulator, which must run with ``"pos_controlled": true``) it does what a station
controller does (reference §1.5), with the codec of ``drivers.dart.codec``:

* polls every side (``ADR 20 FA``), ACKs each DATA block it gets, keeps its own TX# per side and
  resends a command that was not ACKed (TX# back to 0 after a NAK);
* nozzle lifted (DC3 nozzle out, DC1 1 or 5): CD1 RESET then CD1 AUTHORIZE (the POS may; the
  collector never does);
* FILLING COMPLETED (DC1 5 or 6): CD1 04 return filling information (answered by DC2 + DC3), then,
  with ``read_totals``, CD101 for the nozzle (volume total) and, with ``amount_totals``, CD101
  0x10+nozzle (amount total).

Spec (JSON)::

    {"name": "d01", "link": "/tmp/x/tty-d01-pos", "pumps": [80, 81], "poll_interval": 0.05,
     "response_timeout": 0.2, "gap": 0.005, "read_totals": true, "amount_totals": true,
     "status": null}

Counters and the sales it read go to ``<link>.status.json``. Control (datagram socket at
``<link>.ctl``): ``pause on|off`` (``"paused": true`` in the spec starts it paused).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field

from drivers.dart import codec as dart
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty

MAX_TRIES = 3


@dataclass
class Side:
    address: int
    tx: int = 0
    commands: deque = field(default_factory=deque)
    tries: int = 0
    status: int | None = None
    nozzle: int = 0
    nozzle_out: bool = False
    lift_handled: bool = False
    last_rx: tuple | None = None
    sale: dict | None = None


class DartPos:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.sides = [Side(a) for a in spec["pumps"]]
        self.poll_interval = spec.get("poll_interval", 0.05)
        self.response_timeout = spec.get("response_timeout", 0.2)
        self.gap = spec.get("gap", 0.005)
        self.read_totals = spec.get("read_totals", True)
        self.amount_totals = spec.get("amount_totals", True)
        self.status_path = spec.get("status") or spec["link"] + ".status.json"
        self.pty = SimPty(spec["link"])
        self.ctl_path = spec["link"] + ".ctl"
        self.framer = dart.Framer()
        self.sales: list[dict] = []
        self.stats = {"polls": 0, "timeouts": 0, "commands": 0, "naks": 0, "authorised": 0, "fillings_read": 0,
                      "totals_reads": 0}
        self.paused = bool(spec.get("paused", False))  # start paused, resume with "pause off"
        self.running = True
        self._published = 0.0

    # ---------------------------------------------------------------- the line

    def exchange(self, address: int, data: bytes) -> dart.Frame | None:
        time.sleep(self.gap)
        while self.pty.read():
            pass
        self.framer.clear()
        self.pty.write(data)
        deadline = time.monotonic() + self.response_timeout
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select((self.pty.master,), (), (), left)
            if not r:
                continue
            for item in self.framer.feed(self.pty.read()):
                if isinstance(item, dart.Frame) and item.address == address and item.kind != "poll":
                    return item
            deadline = max(deadline, time.monotonic() + 0.02)
        return None

    def visit(self, side: Side) -> None:
        if side.commands:
            self._send_command(side)
        for _ in range(8):
            self.stats["polls"] += 1
            reply = self.exchange(side.address, dart.poll(side.address))
            if reply is None:
                self.stats["timeouts"] += 1
                return
            if reply.kind != "data":
                return
            time.sleep(self.gap)
            self.pty.write(dart.ack(side.address, reply.tx))
            if side.last_rx == (reply.tx, reply.data):
                continue
            side.last_rx = (reply.tx, reply.data)
            self._handle(side, reply.data)

    def _send_command(self, side: Side) -> None:
        msg = side.commands[0]
        reply = self.exchange(side.address, dart.data_frame(side.address, side.tx, dart.build([msg])))
        if reply is not None and reply.kind == "ack" and reply.tx == side.tx:
            side.commands.popleft()
            side.tries = 0
            side.tx = (side.tx + 1) & 0x0F
            self.stats["commands"] += 1
            return
        if reply is not None and reply.kind == "nak":
            self.stats["naks"] += 1
            side.tx = 0
        side.tries += 1
        if side.tries >= MAX_TRIES:
            side.commands.popleft()
            side.tries = 0

    # ---------------------------------------------------------------- what the pumps say

    def _handle(self, side: Side, data: bytes) -> None:
        try:
            messages = [dart.decode_from_pump(t) for t in dart.split_transactions(data)]
        except dart.DartError:
            return
        completed = False
        for m in messages:
            if isinstance(m, dart.PumpStatus):
                if m.status in (dart.FILLING_COMPLETED, dart.MAX_REACHED) and side.status not in (
                        dart.FILLING_COMPLETED, dart.MAX_REACHED):
                    completed = True
                side.status = m.status
            elif isinstance(m, dart.NozzleStatus):
                if m.nozzle:
                    side.nozzle = m.nozzle
                side.nozzle_out = m.nozzle_out
                if not m.nozzle_out:
                    side.lift_handled = False
                if side.sale is not None:
                    side.sale["price"] = m.price
            elif isinstance(m, dart.FillingInfo):
                if side.sale is not None:
                    side.sale["volume"], side.sale["amount"] = m.volume, m.amount
            elif isinstance(m, dart.TotalCounters) and side.sale is not None:
                key = "amt_total" if m.counter > dart.AMOUNT_COUNTER_OFFSET else "vol_total"
                side.sale[key] = m.total
                self.stats["totals_reads"] += 1
        if completed:
            side.sale = {"address": side.address, "nozzle": side.nozzle}
            self.sales.append(side.sale)
            self.stats["fillings_read"] += 1
            side.commands.append(dart.Command(dart.DCC_RETURN_FILLING_INFO))
            if self.read_totals:
                side.commands.append(dart.RequestTotals(side.nozzle))
                if self.amount_totals:
                    side.commands.append(dart.RequestTotals(side.nozzle + dart.AMOUNT_COUNTER_OFFSET))
        if side.nozzle_out and not side.lift_handled and side.status in (
                dart.RESET, dart.FILLING_COMPLETED, dart.MAX_REACHED):
            side.lift_handled = True
            side.commands.append(dart.Command(0x05))  # RESET
            side.commands.append(dart.Command(0x06))  # AUTHORIZE
            self.stats["authorised"] += 1

    # ---------------------------------------------------------------- loop

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < 0.2:
            return
        self._published = now
        state = {"pid": os.getpid(), "updated": time.time(), "port": self.name, "paused": self.paused,
                 "stats": self.stats, "sales": self.sales[-500:],
                 "status": {str(s.address): s.status for s in self.sides}}
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
                    for side in self.sides:
                        if not self.running:
                            break
                        self.visit(side)
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
    return launch("tools.sim.dart_pos", spec, log, spec["link"] + ".ctl", f"DART POS simulator {spec['name']}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "POS spec as JSON text or @file")
    DartPos(json.loads(text)).run()


if __name__ == "__main__":
    main()
