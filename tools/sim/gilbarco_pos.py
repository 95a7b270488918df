"""Gilbarco two-wire POS / forecourt controller simulator: the existing master of a current loop.

It is what a listen-mode collector overhears. On its own pseudo-terminal (a bus tap connects it to
the pump-loop simulator, which must run with ``"pos_controlled": true``) it does what a station
controller does (reference §2.8), stripping the loop's echo of its own bytes before each reply:

* polls every pump with ``0n``;
* ``7n`` CALL: authorises with ``1n`` (optionally after a price change ``2n`` + ``Dn`` + block,
  every ``price_every`` authorisations);
* ``9n`` BUSY: reads the money on the display with ``6n``;
* ``An``/``Bn`` end of transaction: reads the transaction (``4n``; asked again on the next visits
  if the read failed, since the pump shows idle once it sent it) and then, with ``read_totals``,
  the totals (``5n``).

Spec (JSON)::

    {"name": "g01", "link": "/tmp/x/tty-g01-pos", "pumps": [1, 2], "digits": 6,
     "poll_interval": 0.05, "response_timeout": 0.3, "gap": 0.01, "echo": true,
     "read_totals": true, "price_every": 0, "status": null}

Counters and the sales it read go to ``<link>.status.json``. Control (datagram socket at
``<link>.ctl``): ``pause on|off`` (the POS stops and resumes polling; ``"paused": true`` in the spec
starts it paused).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

from drivers.gilbarco import codec as gc
from drivers.gilbarco.codec import CommandCode, PumpState
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty


class GilbarcoPos:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.pumps = list(spec["pumps"])
        self.digits = spec.get("digits", 6)
        self.poll_interval = spec.get("poll_interval", 0.05)
        self.response_timeout = spec.get("response_timeout", 0.5)
        self.gap = spec.get("gap", 0.01)
        self.echo = spec.get("echo", True)
        self.read_totals = spec.get("read_totals", True)
        self.price_every = spec.get("price_every", 0)
        self.status_path = spec.get("status") or spec["link"] + ".status.json"
        self.pty = SimPty(spec["link"])
        self.ctl_path = spec["link"] + ".ctl"
        self.state: dict[int, PumpState | None] = {p: None for p in self.pumps}
        self.handled_eot: dict[int, bool] = {p: False for p in self.pumps}
        self.unread: dict[int, int] = {p: 0 for p in self.pumps}  # failed transaction reads to retry
        self.sales: list[dict] = []
        self.stats = {"polls": 0, "timeouts": 0, "collisions": 0, "authorised": 0, "transactions": 0,
                      "totals_reads": 0, "price_changes": 0}
        self.paused = bool(spec.get("paused", False))  # start paused, resume with "pause off"
        self.running = True
        self._published = 0.0

    # ---------------------------------------------------------------- one exchange

    def _drain(self) -> None:
        while self.pty.read():
            pass

    def exchange(self, data: bytes, complete) -> bytes | None:
        """Send bytes, strip their echo, return the reply once ``complete(reply)`` (None on timeout)."""
        time.sleep(self.gap)
        self._drain()
        self.pty.write(data)
        echo = len(data) if self.echo else 0
        buf = b""
        deadline = time.monotonic() + self.response_timeout + len(data) * 0.002
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select((self.pty.master,), (), (), left)
            if r:
                buf += self.pty.read()
                if len(buf) >= echo and complete(buf[echo:]):
                    break
                deadline = max(deadline, time.monotonic() + 0.02)
        try:
            reply = gc.strip_echo(data[:echo], buf)
        except gc.EchoMismatchError:
            if buf:
                self.stats["collisions"] += 1
            return None
        return reply if complete(reply) else None

    def command(self, code: int, pump: int) -> bytes | None:
        cmd = gc.encode_command(code, pump)
        if code in (CommandCode.AUTHORIZE, CommandCode.STOP):
            return self.exchange(cmd, lambda r: True)
        if code in (CommandCode.STATUS, CommandCode.DATA_NEXT):
            return self.exchange(cmd, lambda r: len(r) >= 1)
        if code == CommandCode.REALTIME_MONEY:
            return self.exchange(cmd, lambda r: len(r) >= (8 if self.digits == 8 else 6))
        return self.exchange(cmd, lambda r: len(r) >= 4 and r[0] == gc.STX and gc.ETX in r)

    # ---------------------------------------------------------------- the controller's loop

    def visit(self, pump: int) -> None:
        self.stats["polls"] += 1
        reply = self.command(CommandCode.STATUS, pump)
        if not reply:
            self.stats["timeouts"] += 1
            return
        try:
            state = gc.StatusReply.decode(reply[:1]).state
        except gc.GilbarcoCodecError:
            return
        self.state[pump] = state
        if state not in (PumpState.PEOT, PumpState.FEOT):
            self.handled_eot[pump] = False
        if self.unread[pump]:  # the last read failed and the pump may already show idle: ask again
            self._read_sale(pump)
        elif state == PumpState.CALL:
            if self.price_every and self.stats["authorised"] % self.price_every == self.price_every - 1:
                self._price_change(pump)
            self.command(CommandCode.AUTHORIZE, pump)
            self.stats["authorised"] += 1
        elif state == PumpState.BUSY:
            self.command(CommandCode.REALTIME_MONEY, pump)
        elif state in (PumpState.PEOT, PumpState.FEOT) and not self.handled_eot[pump]:
            self.handled_eot[pump] = True
            self._read_sale(pump)

    def _read_sale(self, pump: int) -> None:
        raw = self.command(CommandCode.TRANSACTION, pump)
        try:
            txn = gc.TransactionReply.decode(raw) if raw is not None else None
        except gc.GilbarcoCodecError:
            txn = None
        if txn is None:
            self.unread[pump] = self.unread[pump] + 1 if self.unread[pump] < 5 else 0
            return
        self.unread[pump] = 0
        self.stats["transactions"] += 1
        sale = {"pump": pump, "grade": txn.grade, "volume": txn.volume, "money": txn.money, "ppu": txn.ppu}
        if self.read_totals:
            for _ in range(2):
                raw = self.command(CommandCode.TOTALS, pump)
                try:
                    totals = gc.TotalsReply.decode(raw) if raw is not None else None
                except gc.GilbarcoCodecError:
                    totals = None
                if totals is not None:
                    self.stats["totals_reads"] += 1
                    sale["vol_total"] = next((g.volume for g in totals.grades if g.grade == txn.grade), None)
                    break
        self.sales.append(sale)

    def _price_change(self, pump: int) -> None:
        """Re-send the current level-1 price of grade 1 (a no-op change, but the full 2n/Dn/block dance)."""
        raw = self.command(CommandCode.TOTALS, pump)
        try:
            price = gc.TotalsReply.decode(raw).grades[0].ppu1 if raw else None
        except (gc.GilbarcoCodecError, IndexError):
            price = None
        if price is None:
            return
        ready = self.command(CommandCode.DATA_NEXT, pump)
        if ready and ready[0] == gc.StatusReply(PumpState.SEND_DATA, pump).encode()[0]:
            self.exchange(gc.PriceChangeBlock(1, price, 1, self.digits).encode(), lambda r: True)
            self.stats["price_changes"] += 1

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < 0.2:
            return
        self._published = now
        state = {"pid": os.getpid(), "updated": time.time(), "port": self.name, "paused": self.paused,
                 "stats": self.stats, "sales": self.sales[-500:],
                 "states": {str(p): (s.name if s is not None else None) for p, s in self.state.items()}}
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
                    for pump in self.pumps:
                        if not self.running:
                            break
                        self.visit(pump)
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
    return launch("tools.sim.gilbarco_pos", spec, log, spec["link"] + ".ctl", f"Gilbarco POS simulator {spec['name']}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "POS spec as JSON text or @file")
    GilbarcoPos(json.loads(text)).run()


if __name__ == "__main__":
    main()
