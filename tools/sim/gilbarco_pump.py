"""Gilbarco two-wire pump simulator: one process per current loop, 1-16 pumps on a pseudo-terminal.

Speaks the bytes of ``drivers.gilbarco.codec`` (imported, never copied). Like a real two-wire loop
it ECHOES every byte the master sends before any reply (``"echo": false`` models an RS-485
variant without echo). Answers ``0n`` with the status byte, ``4n`` with the transaction block,
``5n`` with the totals block (one record per grade), ``6n`` with the money on the display, and
``2n`` with ``Dn`` ("send data"), after which it takes one block (price change, preset or special
function 010, which it answers with the 19-byte ASCII reply). Blocks carry a correct LRC.

Customers lift, fuel and hang up on their own schedule whether anyone polls or not: OFF (6) ->
CALL (7) -> AUTHORIZED (8) -> BUSY (9) -> FEOT (B; PEOT (A) when a preset stopped the fill). The
end-of-transaction state holds until the transaction is read (``4n``) or the next customer lifts.
Totals of the grade advance at the end of each fill. Every completed sale is appended to the
ground-truth JSON-lines file (``port, address, nozzle (= grade), volume, amount, price, vol_total,
amt_total, t``). ``1n`` (authorise), ``2n`` (data) and ``3n`` (stop) are recorded there as
violations: the collector must never send them. With ``"pos_controlled": true`` a POS drives the
loop: those commands are legitimate and acted on, and a customer waits for ``1n`` before fuelling.

Spec (JSON): ``{"name", "link", "truth", "seed", "gap": [s, s], "fill_seconds": [s, s],
"volume": [l, l], "pace", "max_sales", "digits": 6|8, "echo": true, "pos_controlled": false,
"patience": s, "closed": false, "pumps": [{"address": 1-16, "nozzles": [{"number": grade 1-16, "price",
"vol_total", "amt_total"}]}]}``. Integers are raw (volume, amount, price and totals 2 decimals).

Control (datagram socket at ``<link>.ctl``): ``silence <address|all> on|off`` (the loop still
echoes, the pump does not answer), ``collide <n>`` (garble the echo of the next n command bytes,
as another transmitter on the loop would; the pump does not act on them), ``close``, ``open``.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import time

from drivers.gilbarco import codec as gc
from drivers.gilbarco.codec import CommandCode, PumpState
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty

EOT_STATES = (PumpState.PEOT, PumpState.FEOT)


class SimGrade:
    def __init__(self, spec: dict) -> None:
        self.number = spec["number"]
        self.price = spec.get("price", 785)
        self.vol_total = spec.get("vol_total", 1_000_000)
        self.amt_total = spec.get("amt_total", 7_850_000)


class SimPump:
    def __init__(self, spec: dict, loop: GilbarcoLoop) -> None:
        self.loop = loop
        self.address = spec["address"]
        self.grades = {n["number"]: SimGrade(n) for n in spec["nozzles"]}
        self.state = PumpState.OFF
        self.phase = "idle"
        self.grade = next(iter(self.grades))
        self.fill = (0, 0)  # volume, money of the current / last fill
        self.last: gc.TransactionReply | None = None
        self.preset: gc.PresetBlock | None = None
        self.authorized = False
        self.silent = False
        self.next_event = time.monotonic() + loop.rng.uniform(0.2, loop.gap[1])
        self.target = 0
        self.fill_started = 0.0
        self.fill_duration = 1.0
        self.lifted_at = 0.0

    # ---------------------------------------------------------------- the forecourt

    def step(self, now: float) -> None:
        loop = self.loop
        if now < self.next_event:
            return
        if self.phase == "idle":
            if not loop.open_for_business():
                self.next_event = now + 0.5
                return
            loop.started += 1
            self.grade = loop.rng.choice(list(self.grades))
            self.state, self.phase = PumpState.CALL, "call"
            self.fill = (0, 0)
            self.authorized = False
            self.lifted_at = now
            self.next_event = now + loop.rng.uniform(0.1, 0.4) * loop.pace
        elif self.phase == "call":
            if loop.pos_controlled and not self.authorized:
                if now - self.lifted_at > loop.patience:  # nobody authorised: the customer gives up
                    self.state, self.phase = PumpState.OFF, "idle"
                    self.next_event = now + loop.rng.uniform(*loop.gap)
                else:
                    self.next_event = now + 0.05
                return
            self.state, self.phase = PumpState.AUTHORIZED, "authorized"
            self.next_event = now + 0.1 * loop.pace
        elif self.phase == "authorized":
            self.state, self.phase = PumpState.BUSY, "busy"
            self.target = int(loop.rng.uniform(*loop.volume) * 100)
            price = self.grades[self.grade].price
            if self.preset is not None:
                limit = self.preset.value if self.preset.kind == "volume" else self.preset.value * 100 // max(price, 1)
                self.target = min(self.target, limit)
            self.fill_started, self.fill_duration = now, loop.rng.uniform(*loop.fill_seconds)
            self.next_event = now + 0.1
        elif self.phase == "busy":
            done = min(1.0, (now - self.fill_started) / self.fill_duration)
            volume = int(self.target * done)
            self.fill = (volume, self._money(volume))
            if done < 1.0:
                self.next_event = now + 0.1
                return
            self._complete()
            self.phase, self.next_event = "idle", now + loop.rng.uniform(*loop.gap)

    def _money(self, volume: int) -> int:
        return (volume * self.grades[self.grade].price + 50) // 100  # 2 dp x 2 dp -> 2 dp, rounded

    def _complete(self, stopped: bool = False) -> None:
        g = self.grades[self.grade]
        volume, money = self.fill
        g.vol_total += volume
        g.amt_total += money
        preset_hit = self.preset is not None and not stopped
        self.state = PumpState.PEOT if preset_hit else PumpState.FEOT
        self.preset = None
        self.authorized = False
        self.last = gc.TransactionReply(self.address, g.number, 1, g.price, volume, money, self.loop.digits)
        self.loop.record_sale({"port": self.loop.name, "address": self.address, "nozzle": g.number,
                               "volume": volume, "amount": money, "price": g.price,
                               "vol_total": g.vol_total, "amt_total": g.amt_total, "t": round(time.time(), 3)})

    # ---------------------------------------------------------------- the loop

    def on_command(self, command: gc.Command) -> bytes:
        """The reply to one command byte (the echo is the loop's business, not the pump's)."""
        loop = self.loop
        code = command.code
        if code == CommandCode.STATUS:
            return gc.StatusReply(self.state, self.address).encode()
        if code == CommandCode.TRANSACTION:
            last = self.last or gc.TransactionReply(self.address, self.grade, 1, self.grades[self.grade].price, 0, 0,
                                                    loop.digits)
            if self.state in EOT_STATES:
                self.state = PumpState.OFF  # read: back to idle
            return last.encode()
        if code == CommandCode.TOTALS:
            return gc.TotalsReply(tuple(gc.GradeTotals(g.number, g.vol_total, g.amt_total, g.price, g.price)
                                        for g in self.grades.values()), loop.digits).encode()
        if code == CommandCode.REALTIME_MONEY:
            return gc.RealTimeMoneyReply(self.fill[1], loop.digits).encode()
        if not loop.pos_controlled:
            loop.record_violation(self.address, command.name, command.encode())
        if code == CommandCode.AUTHORIZE:
            if loop.pos_controlled and self.state == PumpState.CALL:
                self.authorized = True
            return b""
        if code == CommandCode.STOP:
            if loop.pos_controlled and self.phase == "busy":
                self._complete(stopped=True)
                self.phase, self.next_event = "idle", time.monotonic() + loop.rng.uniform(*loop.gap)
            return b""
        if code == CommandCode.DATA_NEXT:
            loop.block_for = self
            return gc.StatusReply(PumpState.SEND_DATA, self.address).encode()
        return b""

    def on_block(self, raw: bytes) -> bytes:
        loop = self.loop
        try:
            block = gc.decode_controller_block(raw, check_length=False)
        except gc.GilbarcoCodecError as exc:
            loop.record_violation(self.address, f"undecodable block: {exc}", raw)
            return b""
        if not loop.pos_controlled:
            loop.record_violation(self.address, f"data block {type(block).__name__}", raw)
        if isinstance(block, gc.SpecialFunctionBlock):
            lifted = self.grade if self.state in (PumpState.CALL, PumpState.AUTHORIZED, PumpState.BUSY) else 0
            # data[8] = 2: totals with two decimals; data[13]: the lifted nozzle (reference §2.6)
            return gc.SpecialFunctionReply(f"031010002" f"0000{lifted % 10}", "00").encode()
        if loop.pos_controlled:
            if isinstance(block, gc.PriceChangeBlock) and block.grade in self.grades:
                self.grades[block.grade].price = block.price
            elif isinstance(block, gc.PresetBlock):
                self.preset = block
        return b""


class GilbarcoLoop:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.rng = random.Random(spec.get("seed", 1))
        self.gap = tuple(spec.get("gap", (2.0, 8.0)))
        self.fill_seconds = tuple(spec.get("fill_seconds", (3.0, 10.0)))
        self.volume = tuple(spec.get("volume", (5.0, 60.0)))
        self.pace = spec.get("pace", 1.0)
        self.max_sales = spec.get("max_sales")
        self.digits = spec.get("digits", 6)
        self.echo = spec.get("echo", True)
        self.pos_controlled = bool(spec.get("pos_controlled", False))
        self.patience = spec.get("patience", 20.0)
        self.started = 0
        self.closed = bool(spec.get("closed", False))  # no customers until "open"
        self.truth = open(spec["truth"], "a", buffering=1)
        self.pumps = {p["address"]: SimPump(p, self) for p in spec["pumps"]}
        self.pty = SimPty(spec["link"])
        self.ctl_path = spec["link"] + ".ctl"
        self.block_for: SimPump | None = None  # a pump that answered Dn and waits for a block
        self.block = bytearray()
        self.block_deadline = 0.0
        self.collide = 0
        self.sales = 0
        self.violations = 0
        self.echoed = 0

    def open_for_business(self) -> bool:
        return not self.closed and (self.max_sales is None or self.started < self.max_sales)

    def record_sale(self, sale: dict) -> None:
        self.sales += 1
        self.truth.write(json.dumps(sale) + "\n")

    def record_violation(self, address: int, what: str, data: bytes) -> None:
        self.violations += 1
        self.truth.write(json.dumps({"violation": what, "port": self.name, "address": address, "data": data.hex()}) + "\n")

    def on_bytes(self, data: bytes) -> None:
        out = bytearray()
        for byte in data:
            if self.collide:
                self.collide -= 1
                if self.echo:
                    out.append(byte ^ 0x5A)  # two transmitters at once: the loop carries neither byte
                continue
            if self.echo:
                out.append(byte)
                self.echoed += 1
            out += self._on_byte(byte)
        if out:
            self.pty.write(bytes(out))

    def _on_byte(self, byte: int) -> bytes:
        if self.block_for is not None and (self.block or byte == gc.STX):
            if time.monotonic() > self.block_deadline and self.block:
                self.block.clear()
            self.block.append(byte)
            if byte != gc.ETX and len(self.block) < gc.MAX_BLOCK:
                return b""
            pump, raw = self.block_for, bytes(self.block)
            self.block_for = None
            self.block.clear()
            return b"" if pump.silent else pump.on_block(raw)
        self.block_for = None
        if byte >= 0xE0:
            return b""  # stray data/control word outside a block
        command = gc.Command.decode(byte)
        pump = self.pumps.get(command.pump)
        if pump is None or pump.silent:
            return b""
        reply = pump.on_command(command)
        if self.block_for is not None:
            self.block_deadline = time.monotonic() + 1.0
        return reply

    def on_control(self, text: str) -> None:
        words = text.split()
        if words[:1] == ["silence"] and len(words) == 3:
            targets = self.pumps.values() if words[1] == "all" else [self.pumps[int(words[1], 0)]]
            for p in targets:
                p.silent = words[2] == "on"
        elif words[:1] == ["collide"] and len(words) == 2:
            self.collide = int(words[1])
        elif words == ["close"]:
            self.closed = True
        elif words == ["open"]:
            self.closed = False

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.pty.master, selectors.EVENT_READ, "line")
        ctl = bind_control(self.ctl_path)
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        running = [True]
        signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "closed", True))
        try:
            while running[0]:
                now = time.monotonic()
                for p in self.pumps.values():
                    p.step(now)
                wait = max(0.0, min(p.next_event for p in self.pumps.values()) - time.monotonic())
                for key, _ in sel.select(timeout=wait):
                    if key.data == "line":
                        data = self.pty.read()
                        if data:
                            self.on_bytes(data)
                    else:
                        self.on_control(ctl.recv(256).decode(errors="replace"))
        finally:
            ctl.close()
            os.unlink(self.ctl_path)
            self.pty.close()
            self.truth.close()


def start(spec: dict, log=None) -> subprocess.Popen:
    """Start a loop simulator; returns once its pty link and control socket exist."""

    return launch("tools.sim.gilbarco_pump", spec, log, spec["link"] + ".ctl", f"Gilbarco loop simulator {spec['name']}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "loop spec as JSON text or @file")
    GilbarcoLoop(json.loads(text)).run()


if __name__ == "__main__":
    main()
