"""DART listen mode: overhear the RS-485 bus a station POS drives, never write a byte.

The collector's port is a passive tap: it sees the POS's frames and the pumps' frames in one
stream, in wire order. DART transaction numbers are shared by both directions (CD1/DC1, CD3/DC3),
so direction comes from frame order (reference §1.5, §7):

* ``ADR 20 FA`` is a poll (master). The next frame from ADR - EOT or DATA - is the pump's answer;
  any other frame first means the pump did not answer (``offline_after`` in a row: offline).
* A DATA frame that is not the answer to a poll is a command from the POS; the pump ACKs or NAKs
  it. The ACK after a pump's DATA frame is the POS's.
* When a DATA frame decodes only one way, that way wins over frame order.
* Pumps repeat a DATA block until it is ACKed and the POS repeats a command until it is ACKed: a
  block equal to the last one from the same side and direction (same TX#, same data) is skipped.

Sales come from what the POS reads (§1.5): DC1 FILLING COMPLETED (5, or 6 max reached) opens a
capture on the last selected nozzle (DC3); DC2 gives volume and amount and DC3 the price, whether
sent unsolicited or in answer to the POS's CD1 04; DC101 gives the volume total (COUN = nozzle) and
the amount total (COUN 0x10 + nozzle) when the POS asks CD101. The sale is stored through
``records.sale`` as soon as fill and both totals are in; otherwise when the next fill begins (CD1
AUTHORIZE from the POS, DC1 2 or 4 from the pump; a RESET alone does not move the totals) or
``totals_wait`` seconds (port option, default 3) after the last news of it. Without a volume total the sale is stored
flagged ``no_totals`` and the totals chain advances by its own volume. DC101 readings outside a
sale feed totals snapshots and the reading-gap check; DC9 fills the GB/T 9081 pump identity of
every nozzle of the side; DC5 becomes an alarm.

Never writes: ``Line.write`` is never called; ``line.tx`` on the status board must stay 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from drivers import gbt9081, records
from drivers.base import last_sales
from drivers.dart import codec as dart
from drivers.serialport import Line

COMPLETED = (dart.FILLING_COMPLETED, dart.MAX_REACHED)
BUS_SILENT = 30.0


@dataclass
class Capture:
    nozzle: int
    price: int | None
    touched: float
    fill: tuple[int, int] | None = None
    vol_total: int | None = None
    amt_total: int | None = None
    lifted: bool = False  # a nozzle was lifted since: later DC2/DC3 describe the next customer


@dataclass
class ListenSide:
    cfg: object
    online: bool = False
    heard_once: bool = False
    silent: int = 0
    status: int | None = None
    nozzle: int = 0
    nozzle_out: bool = False
    price: int | None = None
    live: tuple[int, int] | None = None
    identity: int | None = None
    last_pump: tuple | None = None  # (tx, data) of the last DATA block from the pump
    last_master: tuple | None = None  # (tx, data) of the last command block from the POS
    capture: Capture | None = None
    totals: dict = field(default_factory=dict)  # logical nozzle -> [vol_total, amt_total]
    chain: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)  # nozzle -> (volume, amount, vol_total) of the last stored sale
    states: dict = field(default_factory=dict)
    next_snapshot: float = 0.0
    sales: int = 0


class DartListener:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.profile = ctx.port.serial
        self.sides = {p.address: ListenSide(p) for p in ctx.port.pumps}
        self.totals_wait = float(ctx.port.options.get("totals_wait", 3.0))
        self.identities = gbt9081.IdentityTracker(ctx, [n.id for p in ctx.port.pumps for n in p.nozzles])
        self.framer = dart.Framer()
        self.line: Line | None = None
        self.awaiting: int | None = None  # address polled, answer not seen yet
        self.prev: tuple | None = None  # (address, kind, from_pump) of the previous frame
        self.last_rx = time.monotonic()
        self.quiet = False
        self.stats = {"polls": 0, "frames": 0, "pump_blocks": 0, "pos_commands": 0, "pos_writes": 0,
                      "duplicates": 0, "bad_frames": 0, "timeouts": 0, "direction_by_content": 0,
                      "sales": 0, "sales_without_totals": 0, "started": time.time(), "cycle_ms": 0.0}

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        ctx = self.ctx
        self.line = Line(self.port.device, self.profile)
        ctx.log.info("listening to %d DART side(s) on %s (never transmitting)", len(self.sides), self.port.device)
        self._restore_chain()
        try:
            while not ctx.stopping():
                chunk = self.line.read_available(0.1)
                now = time.monotonic()
                if chunk:
                    self.last_rx = now
                    if self.quiet:
                        self.quiet = False
                        ctx.capture([records.event("listen_traffic", port=self.port.name)])
                    for frame in self.framer.feed(chunk):
                        self._on_frame(frame)
                elif not self.quiet and now - self.last_rx > BUS_SILENT:
                    self.quiet = True
                    ctx.capture([records.event("listen_silent", port=self.port.name, seconds=BUS_SILENT)])
                for side in self.sides.values():
                    if side.capture and now - side.capture.touched > self.totals_wait:
                        self._finish(side)
                self._publish()
        finally:
            self._publish(force=True)
            self.line.close()

    def _restore_chain(self) -> None:
        for side, n, sale in last_sales(self.ctx, ((s, n) for s in self.sides.values() for n in s.cfg.nozzles)):
            raw = sale.get("raw") or []
            if len(raw) == 5 and raw[3] is not None:
                side.chain[n.number] = (raw[3], raw[4])
                side.last[n.number] = (raw[0], raw[1], raw[3])

    # ---------------------------------------------------------------- frames and direction

    def _on_frame(self, frame) -> None:
        self.stats["frames"] += 1
        if isinstance(frame, dart.BadFrame):
            self.stats["bad_frames"] += 1
            self.prev = None
            return
        side = self.sides.get(frame.address)
        answer = self.awaiting == frame.address and frame.kind in ("eot", "data")
        if self.awaiting is not None and not answer:
            missed = self.sides.get(self.awaiting)
            if missed is not None:  # polled, and the bus moved on without an answer
                self.stats["timeouts"] += 1
                self._silence(missed)
        self.awaiting = None
        if frame.kind == "poll":
            self.stats["polls"] += 1
            self.awaiting = frame.address
            self.prev = (frame.address, "poll", False)
            return
        if side is None:
            self.prev = (frame.address, frame.kind, answer)
            return
        if frame.kind == "eot":
            self._heard(side)
            self.prev = (frame.address, "eot", True)
            return
        if frame.kind in ("ack", "nak"):
            after_master_data = self.prev == (frame.address, "data", False)
            if after_master_data:
                self._heard(side)  # the pump acknowledged a POS command
            self.prev = (frame.address, frame.kind, after_master_data)
            return
        if frame.kind != "data":
            self.prev = (frame.address, frame.kind, answer)
            return
        from_pump = answer
        try:
            transactions = dart.split_transactions(frame.data)
        except dart.DartError:
            self.stats["bad_frames"] += 1
            self.prev = (frame.address, "data", from_pump)
            return
        fits_pump, fits_master = _fits(transactions, True), _fits(transactions, False)
        if fits_pump != fits_master and fits_pump != from_pump:
            self.stats["direction_by_content"] += 1
            from_pump = fits_pump
        self.prev = (frame.address, "data", from_pump)
        if from_pump:
            self._heard(side)
            if side.last_pump == (frame.tx, frame.data):
                self.stats["duplicates"] += 1
                return
            side.last_pump = (frame.tx, frame.data)
            self.stats["pump_blocks"] += 1
            self._pump_block(side, transactions)
        else:
            if side.last_master == (frame.tx, frame.data):
                self.stats["duplicates"] += 1
                return
            side.last_master = (frame.tx, frame.data)
            self.stats["pos_commands"] += 1
            self._master_block(side, transactions)

    # ---------------------------------------------------------------- what the POS asks

    def _master_block(self, side: ListenSide, transactions) -> None:
        for t in transactions:
            try:
                msg = dart.decode_from_controller(t)
            except dart.DartError:
                self.stats["bad_frames"] += 1
                continue
            if isinstance(msg, dart.Command):
                if msg.dcc not in dart.READ_ONLY_DCC:
                    self.stats["pos_writes"] += 1  # the POS may reset and authorise; we never do
                if msg.dcc == 0x06 and side.capture is not None:
                    self._finish(side)  # the POS authorised the next fill: this sale's totals are history
                elif msg.dcc == dart.DCC_RETURN_FILLING_INFO and side.capture is not None:
                    side.capture.touched = time.monotonic()
            elif isinstance(msg, dart.RequestTotals) and side.capture is not None:
                side.capture.touched = time.monotonic()
            elif isinstance(msg, dart.PriceUpdate):
                self.stats["pos_writes"] += 1
                self.ctx.capture([records.event("price_change", port=self.port.name, pump=side.cfg.address,
                                                prices=list(msg.prices), source="pos")])
            elif not isinstance(msg, dart.Unknown):
                self.stats["pos_writes"] += 1

    # ---------------------------------------------------------------- what the pumps say

    def _pump_block(self, side: ListenSide, transactions) -> None:
        block_fill = None
        for t in transactions:
            try:
                msg = dart.decode_from_pump(t)
            except dart.DartError as exc:
                self.stats["bad_frames"] += 1
                self.ctx.log.warning("pump %#x: %s", side.cfg.address, exc)
                continue
            cap = side.capture
            if isinstance(msg, dart.PumpStatus):
                previous = side.status
                side.status = msg.status
                if msg.status in COMPLETED and previous not in COMPLETED:
                    if cap is not None:
                        self._finish(side)
                    side.capture = Capture(side.nozzle, side.price, time.monotonic(), fill=block_fill)
                elif cap is not None and msg.status in (dart.AUTHORIZED, dart.FILLING):
                    self._finish(side)  # the next fill began (a RESET alone does not move the totals)
                if msg.status in (dart.RESET, dart.AUTHORIZED):
                    side.live = None
            elif isinstance(msg, dart.NozzleStatus):
                if msg.nozzle:
                    side.nozzle = msg.nozzle
                side.nozzle_out = msg.nozzle_out
                side.price = msg.price
                if cap is not None and msg.nozzle_out:
                    cap.lifted = True
                elif cap is not None and not cap.lifted and msg.nozzle in (0, cap.nozzle):
                    cap.price = msg.price
                    cap.touched = time.monotonic()
            elif isinstance(msg, dart.FillingInfo):
                side.live = block_fill = (msg.volume, msg.amount)
                if cap is not None and not cap.lifted:
                    cap.fill = (msg.volume, msg.amount)
                    cap.touched = time.monotonic()
            elif isinstance(msg, dart.TotalCounters):
                self._on_totals(side, msg)
            elif isinstance(msg, dart.PumpAlarm):
                self.ctx.capture([records.alarm(dart.ALARM_NAMES.get(msg.alarm, f"dart_alarm_{msg.alarm}"),
                                                port=self.port.name, pump=side.cfg.address, code=msg.alarm)])
            elif isinstance(msg, dart.PumpIdentity):
                side.identity = msg.identity
                out = []
                for n in side.cfg.nozzles:
                    ident = self.identities.merged(n.id, pump_identity=f"{msg.identity:010d}")
                    out += self.identities.update(self.port.name, side.cfg.address, n.id, ident)
                if out:
                    self.ctx.capture(out)
        cap = side.capture
        if cap is not None and cap.fill is not None and cap.vol_total is not None and cap.amt_total is not None:
            self._finish(side)
        _update_states(self, side)

    def _on_totals(self, side: ListenSide, msg: dart.TotalCounters) -> None:
        if msg.counter == dart.PUMP_TOTAL_COUNTER:
            return
        amount_family = msg.counter > dart.AMOUNT_COUNTER_OFFSET
        number = msg.counter - dart.AMOUNT_COUNTER_OFFSET if amount_family else msg.counter
        pair = side.totals.setdefault(number, [None, None])
        pair[1 if amount_family else 0] = msg.total
        cap = side.capture
        if cap is not None and number == cap.nozzle:
            if amount_family:
                cap.amt_total = msg.total
            else:
                cap.vol_total = msg.total
            cap.touched = time.monotonic()
            return
        if side.status in (dart.AUTHORIZED, dart.FILLING) and number == side.nozzle:
            return  # that nozzle is delivering: its totals may be mid-fill
        nozzle = next((n for n in side.cfg.nozzles if n.number == number), None)
        if nozzle is None or amount_family:
            return
        reading = (pair[0], pair[1])
        out = []
        found = records.reading_gap(self.port, side.cfg, nozzle, side.chain.get(number), reading, self.ctx.tolerance)
        if found:
            out.append(found)
            side.chain[number] = reading
        side.chain.setdefault(number, reading)
        now = time.monotonic()
        if now >= side.next_snapshot:
            out.append(records.totals(nozzle, self.port.name, side.cfg.address, reading[0], reading[1],
                                      "startup" if side.next_snapshot == 0.0 else "periodic"))
            side.next_snapshot = now + self.ctx.config.totals_snapshot_interval
        if out:
            self.ctx.capture(out)

    def _finish(self, side: ListenSide) -> None:
        """Store the captured sale with whatever totals the POS read."""
        ctx = self.ctx
        cap = side.capture
        side.capture = None
        fill = cap.fill or (side.live if not cap.lifted else None)
        if fill is None:
            ctx.log.error("pump %#x completed a fill the POS never read", side.cfg.address)
            return
        nozzle_cfg = next((n for n in side.cfg.nozzles if n.number == cap.nozzle), None)
        if nozzle_cfg is None:
            ctx.capture([records.alarm("unconfigured_nozzle", port=self.port.name, pump=side.cfg.address,
                                       logical_nozzle=cap.nozzle, volume=fill[0], amount=fill[1])])
            return
        start = side.chain.get(cap.nozzle)
        if cap.vol_total is not None:
            again = side.last.get(cap.nozzle) == (fill[0], fill[1], cap.vol_total)
            if start and start[0] == cap.vol_total and (fill[0] == 0 or again):
                return  # no fuel, or the stored sale again
        elif fill[0] == 0:
            return
        else:
            self.stats["sales_without_totals"] += 1
        raw = records.RawSale(volume=fill[0], amount=fill[1], price=cap.price if cap.price is not None else 0,
                              vol_total=cap.vol_total, amt_total=cap.amt_total if cap.vol_total is not None else None)
        with_start = start is not None and cap.vol_total is not None
        sale, raised = records.sale(ctx.station, self.port, side.cfg, nozzle_cfg, raw,
                                    start[0] if with_start else None, start[1] if with_start else None,
                                    ctx.tolerance, extra={"source": "listen"})
        gaps = [r for r in raised if r["kind"] == "gap"]
        results = ctx.capture([*gaps, sale, *[r for r in raised if r["kind"] != "gap"]])
        if cap.vol_total is not None:
            side.chain[cap.nozzle] = (cap.vol_total, cap.amt_total)
            side.last[cap.nozzle] = (fill[0], fill[1], cap.vol_total)
        elif start is not None:  # the totals moved by this sale: keep the chain checkable
            side.chain[cap.nozzle] = (start[0] + fill[0], start[1] + fill[1] if start[1] is not None else None)
        if not results[len(gaps)][2]:
            side.sales += 1
            self.stats["sales"] += 1

    # ---------------------------------------------------------------- online / offline / states

    def _heard(self, side: ListenSide) -> None:
        side.silent = 0
        if not side.online:
            side.online = True
            first = not side.heard_once
            side.heard_once = True
            self.ctx.capture([records.event("pump_online", port=self.port.name, pump=side.cfg.address, first=first)])
            _update_states(self, side)

    def _silence(self, side: ListenSide) -> None:
        side.silent += 1
        went = side.online and side.silent >= self.profile.offline_after
        never = not side.heard_once and side.silent == self.profile.offline_after
        if went or never:
            side.online = False
            side.status = None
            self.ctx.capture([records.alarm("pump_offline", port=self.port.name, pump=side.cfg.address,
                                            nozzles=[n.id for n in side.cfg.nozzles], silent_polls=side.silent),
                              *gbt9081.offline_alarms(self.port.name, side.cfg, side.silent)])
            _update_states(self, side)

    def _publish(self, force: bool = False) -> None:
        pumps = {}
        for side in self.sides.values():
            pumps[f"{side.cfg.address:#x}"] = {
                "online": side.online,
                "status": dart.STATUS_NAMES.get(side.status) if side.status is not None else None,
                "nozzle": side.nozzle, "nozzle_out": side.nozzle_out, "price": side.price, "live": side.live,
                "sales": side.sales, "identity": side.identity,
                "nozzles": {str(n.id): {"state": side.states.get(n.id), "totals": side.totals.get(n.number),
                                        "number": n.number, "grade": n.grade_code} for n in side.cfg.nozzles},
            }
        self.ctx.board.publish({"port": self.port.name, "protocol": "dart", "mode": "listen",
                                "device": self.port.device, "pid": os.getpid(), "updated": time.time(),
                                "stats": self.stats, "quiet": self.quiet,
                                "line": {"rx": self.line.rx_bytes, "tx": self.line.tx_bytes,
                                         "byte_time_us": round(self.line.byte_time * 1e6, 1)},
                                "pumps": pumps}, force=force)


def _fits(transactions, from_pump: bool) -> bool:
    decode = dart.decode_from_pump if from_pump else dart.decode_from_controller
    try:
        return not any(isinstance(decode(t), dart.Unknown) for t in transactions)
    except dart.DartError:
        return False


def _update_states(listener: DartListener, side: ListenSide) -> None:
    out = []
    for n in side.cfg.nozzles:
        if not side.online:
            state = records.OFFLINE
        elif side.status == dart.PUMP_NOT_PROGRAMMED:
            state = records.ERROR
        elif side.nozzle == n.number and side.status == dart.FILLING:
            state = records.FUELLING
        elif side.nozzle == n.number and side.status == dart.AUTHORIZED:
            state = records.AUTHORIZED
        elif side.nozzle == n.number and side.nozzle_out:
            state = records.CALLING
        else:
            state = records.IDLE
        previous = side.states.get(n.id)
        if state != previous:
            side.states[n.id] = state
            out.append(records.nozzle_state(n.id, state, listener.port.name, side.cfg.address, previous))
    if out:
        listener.ctx.capture(out)
