"""DART pump simulator: one process per RS-485 bus, 1-32 pump sides on a pseudo-terminal.

Speaks the bytes of ``drivers.dart.codec`` (imported, never copied): answers polls with EOT or
data, defers command replies to the next poll, numbers its blocks with TX# and repeats a block
until it is ACKed, NAKs a frame with a bad CRC, escapes 0xFA. Simulated customers lift, fuel and
hang up on their own schedule whether anyone polls or not (a pump in stand-alone mode or under a
POS does not wait for the collector). Every completed sale is appended to a ground-truth JSON-lines
file; every command that would change a pump (authorise, preset, price...) is recorded there as a
violation, because the collector must never send one.

With ``"pos_controlled": true`` in the spec a station POS drives the bus (listen-mode tests): CD1
RESET and AUTHORIZE (and CD2-CD5) are legitimate then, not violations; RESET returns the pump to
status 1, AUTHORIZE to status 2, and a customer who lifted a nozzle waits for it (gives up after
``patience`` seconds).

Control (datagram socket at ``<link>.ctl``): ``silence <address|all> on|off``, ``identity <address>
<10 digits>`` (the DC9 identity from now on), ``close`` (no new customers), ``open``.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import time
from collections import OrderedDict, deque

from drivers.dart import codec as dart
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty


class SimNozzle:
    def __init__(self, spec: dict) -> None:
        self.number = spec["number"]
        self.price = spec.get("price", 785)
        self.vol_total = spec.get("vol_total", 1_000_000)
        self.amt_total = spec.get("amt_total", 7_850_000)


class SimPump:
    def __init__(self, spec: dict, bus: DartBus) -> None:
        self.bus = bus
        self.address = spec["address"]
        self.nozzles = {n["number"]: SimNozzle(n) for n in spec["nozzles"]}
        self.identity = spec.get("identity", 1_000_000_000 + self.address)
        self.defect = spec.get("defect")  # "amount": the pump's computer charges 5 % too much
        self.status = dart.RESET
        self.nozzle = 0
        self.nozzle_out = False
        self.fill = (0, 0)
        self.price = next(iter(self.nozzles.values())).price
        self.tx = 0
        self.unacked: bytes | None = None
        self.last_master: tuple | None = None
        self.unsolicited: OrderedDict[int, dart.Transaction] = OrderedDict()
        self.replies: deque[list] = deque(maxlen=16)
        self.silent = False
        self.phase = "idle"
        self.next_event = time.monotonic() + bus.rng.uniform(0.2, bus.gap[1])
        self.target = 0
        self.fill_started = 0.0
        self.fill_duration = 1.0
        self.lifted_at = 0.0

    # ---------------------------------------------------------------- the forecourt

    def _state(self, *messages) -> None:
        for m in messages:
            t = m.encode()
            self.unsolicited.pop(t.code, None)
            self.unsolicited[t.code] = t

    def _dc3(self) -> dart.NozzleStatus:
        return dart.NozzleStatus(self.price, self.nozzle, self.nozzle_out)

    def step(self, now: float) -> None:
        bus = self.bus
        if now < self.next_event:
            return
        if self.phase == "idle":
            if not bus.open_for_business():
                self.next_event = now + 0.5
                return
            bus.started += 1
            n = bus.rng.choice(list(self.nozzles.values()))
            self.nozzle, self.nozzle_out, self.price = n.number, True, n.price
            self.status = dart.RESET
            self.fill = (0, 0)
            self._state(dart.PumpStatus(self.status), self._dc3())
            self.phase, self.next_event = "lifted", now + bus.rng.uniform(0.1, 0.4) * bus.pace
            self.lifted_at = now
        elif self.phase == "lifted":
            if bus.pos_controlled and self.status != dart.AUTHORIZED:  # the POS authorises, or nobody
                if now - self.lifted_at > bus.patience:
                    self.nozzle_out = False
                    self._state(self._dc3())
                    self.phase, self.next_event = "idle", now + bus.rng.uniform(*bus.gap)
                else:
                    self.next_event = now + 0.05
                return
            self.status = dart.AUTHORIZED
            self._state(dart.PumpStatus(self.status))
            self.phase, self.next_event = "authorized", now + 0.1 * bus.pace
        elif self.phase == "authorized":
            self.status = dart.FILLING
            self.target = int(bus.rng.uniform(*bus.volume) * 100)
            self.fill_started, self.fill_duration = now, bus.rng.uniform(*bus.fill_seconds)
            self._state(dart.PumpStatus(self.status))
            self.phase, self.next_event = "filling", now + 0.2
        elif self.phase == "filling":
            done = min(1.0, (now - self.fill_started) / self.fill_duration)
            volume = int(self.target * done)
            self.fill = (volume, self._amount(volume))
            self._state(dart.FillingInfo(*self.fill))
            if done < 1.0:
                self.next_event = now + 0.25
                return
            self._complete()
            self.phase, self.next_event = "idle", now + bus.rng.uniform(*bus.gap)

    def _amount(self, volume: int) -> int:
        amount = (volume * self.price + 50) // 100  # volume 2 dp x price 2 dp -> amount 2 dp, rounded
        return amount * 105 // 100 if self.defect == "amount" else amount

    def _complete(self) -> None:
        n = self.nozzles[self.nozzle]
        volume, amount = self.fill
        n.vol_total += volume
        n.amt_total += amount
        self.nozzle_out = False
        self.status = dart.FILLING_COMPLETED
        self._state(self._dc3(), dart.PumpStatus(self.status), dart.FillingInfo(volume, amount))
        self.bus.record_sale({"port": self.bus.name, "address": self.address, "nozzle": n.number,
                              "volume": volume, "amount": amount, "price": self.price,
                              "vol_total": n.vol_total, "amt_total": n.amt_total, "t": round(time.time(), 3)})

    # ---------------------------------------------------------------- the line

    def on_frame(self, frame) -> bytes | None:
        if self.silent:
            return None
        if isinstance(frame, dart.BadFrame):
            return dart.nak(self.address, frame.tx or 0)
        if frame.kind == "poll":
            if self.unacked is None:
                data = self._next_block()
                if data is None:
                    return dart.eot(self.address, self.tx)
                self.unacked = dart.data_frame(self.address, self.tx, data)
            return self.unacked  # a block repeats until it is ACKed
        if frame.kind == "ack":
            if self.unacked is not None and frame.tx == self.tx:
                self.unacked = None
                self.tx = (self.tx + 1) & 0x0F
            return None
        if frame.kind == "data":
            if self.last_master != (frame.tx, frame.data):
                self.last_master = (frame.tx, frame.data)
                self._on_commands(frame.data)
            return dart.ack(self.address, frame.tx)
        return None

    def _next_block(self) -> bytes | None:
        if self.replies:
            return dart.join_transactions(self.replies.popleft())
        if self.unsolicited:
            data = dart.join_transactions(list(self.unsolicited.values()))
            self.unsolicited.clear()
            return data
        return None

    def _on_commands(self, data: bytes) -> None:
        try:
            messages = [dart.decode_from_controller(t) for t in dart.split_transactions(data)]
        except dart.DartError as exc:
            self.bus.record_violation(self.address, f"undecodable command: {exc}", data)
            return
        for m in messages:
            if isinstance(m, dart.Command) and m.dcc in dart.READ_ONLY_DCC:
                if m.dcc == dart.DCC_RETURN_STATUS:
                    self.replies.append([dart.PumpStatus(self.status).encode(), self._dc3().encode()])
                elif m.dcc == dart.DCC_RETURN_FILLING_INFO:
                    self.replies.append([dart.FillingInfo(*self.fill).encode(), self._dc3().encode()])
                elif m.dcc == dart.DCC_RETURN_IDENTITY:
                    self.replies.append([dart.PumpIdentity(self.identity).encode()])
                elif m.dcc == 0x0F:
                    self.replies.append([dart.PumpPrices(tuple(n.price for n in self.nozzles.values())).encode()])
                else:
                    self.replies.append([dart.PumpStatus(self.status).encode()])
            elif isinstance(m, dart.RequestTotals):
                self.replies.append([self._totals(m.counter).encode()])
            elif self.bus.pos_controlled and not isinstance(m, dart.Unknown):
                self._pos_command(m)
            else:
                self.bus.record_violation(self.address, f"write command {type(m).__name__}", data)

    def _pos_command(self, m) -> None:
        """A write command from the station POS (``pos_controlled`` only)."""
        if isinstance(m, dart.Command) and m.dcc == 0x05:  # RESET
            if self.phase in ("idle", "lifted") and self.status in (dart.RESET, dart.FILLING_COMPLETED, dart.MAX_REACHED):
                self.status = dart.RESET
                self._state(dart.PumpStatus(self.status))
        elif isinstance(m, dart.Command) and m.dcc == 0x06:  # AUTHORIZE
            if self.phase == "lifted" and self.status == dart.RESET:
                self.status = dart.AUTHORIZED
                self._state(dart.PumpStatus(self.status))
                self.next_event = min(self.next_event, time.monotonic())

    def _totals(self, counter: int) -> dart.TotalCounters:
        if counter == dart.PUMP_TOTAL_COUNTER:
            total = sum(n.vol_total for n in self.nozzles.values())
        elif counter > dart.AMOUNT_COUNTER_OFFSET and counter - dart.AMOUNT_COUNTER_OFFSET in self.nozzles:
            total = self.nozzles[counter - dart.AMOUNT_COUNTER_OFFSET].amt_total
        elif counter in self.nozzles:
            total = self.nozzles[counter].vol_total
        else:
            total = 0
        return dart.TotalCounters(counter, total, total, 0)


class DartBus:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.rng = random.Random(spec.get("seed", 1))
        self.gap = tuple(spec.get("gap", (2.0, 8.0)))
        self.fill_seconds = tuple(spec.get("fill_seconds", (3.0, 10.0)))
        self.volume = tuple(spec.get("volume", (5.0, 60.0)))
        self.pace = spec.get("pace", 1.0)
        self.max_sales = spec.get("max_sales")
        self.pos_controlled = bool(spec.get("pos_controlled", False))
        self.patience = spec.get("patience", 20.0)
        self.started = 0
        self.closed = bool(spec.get("closed", False))  # no customers until "open"
        self.truth = open(spec["truth"], "a", buffering=1)
        self.pumps = {p["address"]: SimPump(p, self) for p in spec["pumps"]}
        self.pty = SimPty(spec["link"])
        self.framer = dart.Framer()
        self.ctl_path = spec["link"] + ".ctl"
        self.sales = 0
        self.violations = 0

    def open_for_business(self) -> bool:
        return not self.closed and (self.max_sales is None or self.started < self.max_sales)

    def record_sale(self, sale: dict) -> None:
        self.sales += 1
        self.truth.write(json.dumps(sale) + "\n")

    def record_violation(self, address: int, what: str, data: bytes) -> None:
        self.violations += 1
        self.truth.write(json.dumps({"violation": what, "port": self.name, "address": address, "data": data.hex()}) + "\n")

    def on_bytes(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            address = frame.address
            pump = self.pumps.get(address) if address is not None else None
            if pump is None:
                continue
            reply = pump.on_frame(frame)
            if reply:
                self.pty.write(reply)

    def on_control(self, text: str) -> None:
        words = text.split()
        if words[:1] == ["silence"] and len(words) == 3:
            targets = self.pumps.values() if words[1] == "all" else [self.pumps[int(words[1], 0)]]
            for p in targets:
                p.silent = words[2] == "on"
        elif words[:1] == ["identity"] and len(words) == 3:  # a pump whose main board was swapped
            self.pumps[int(words[1], 0)].identity = int(words[2])
        elif words == ["close"]:
            self.closed = True
        elif words == ["open"]:
            self.closed = False

    def busy(self) -> bool:
        return any(p.phase != "idle" for p in self.pumps.values())

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


def start(spec: dict, log=None):
    """Start one bus simulator; returns once its pty link and control socket exist."""
    return launch("tools.sim.dart_pump", spec, log, spec["link"] + ".ctl", f"DART bus simulator {spec['name']}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "bus spec as JSON text or @file")
    DartBus(json.loads(text)).run()


if __name__ == "__main__":
    main()
