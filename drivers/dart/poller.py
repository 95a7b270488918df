"""DART master-mode poller: owns one RS-485 line, polls every pump side on it, and turns what the
pumps say into durable sales, nozzle states, totalizer snapshots and alarms.

Read-only by construction: the only commands it can send are CD1 return-status / parameters /
identity / filling-information and CD101 return-totals (``_send`` refuses anything else). A sale
is taken at FILLING COMPLETED (DC1 5 or 6): filling information (DC2 + DC3), then the volume and
amount totals of that nozzle (DC101), then one durable sale with both totalizers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from drivers import gbt9081, records
from drivers.base import last_sales, poll_cycles
from drivers.dart import codec as dart
from drivers.serialport import Line


def _is_read(msg) -> bool:
    """The only messages this poller may ever send: reads."""
    if isinstance(msg, dart.Command):
        return msg.dcc in dart.READ_ONLY_DCC
    return isinstance(msg, dart.RequestTotals)


MAX_FRAMES_PER_VISIT = 8
MAX_COMMAND_TRIES = 3


@dataclass
class Capture:
    """A sale being collected after FILLING COMPLETED."""

    nozzle: int = 0  # logical nozzle
    price: int | None = None
    fill: tuple[int, int] | None = None  # volume, amount
    vol_total: int | None = None
    amt_total: int | None = None
    info_asked: bool = False  # CD1 04 acknowledged: the next DC2 is the answer
    totals_asked: bool = False


@dataclass
class PumpSide:
    cfg: object
    online: bool = False
    heard_once: bool = False
    silent: int = 0
    tx_out: int = 0
    last_rx: tuple | None = None
    status: int | None = None
    nozzle: int = 0
    nozzle_out: bool = False
    price: int | None = None
    live: tuple[int, int] | None = None
    identity: int | None = None
    commands: deque = field(default_factory=deque)
    tries: int = 0
    capture: Capture | None = None
    totals: dict = field(default_factory=dict)  # logical nozzle -> [vol_total, amt_total]
    chain: dict = field(default_factory=dict)  # logical nozzle -> (vol_total, amt_total) at the last stored sale
    states: dict = field(default_factory=dict)  # station nozzle id -> state
    next_snapshot: float = 0.0
    sales: int = 0


class DartPoller:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.profile = ctx.port.serial
        self.sides = [PumpSide(p) for p in ctx.port.pumps]
        self.by_address = {s.cfg.address: s for s in self.sides}
        self.line: Line | None = None
        self.framer = dart.Framer()
        self.identities = gbt9081.IdentityTracker(ctx, [n.id for p in ctx.port.pumps for n in p.nozzles])
        self.last_stored: dict[tuple[int, int], tuple] = {}  # (address, nozzle) -> volume, amount, vol_total
        self.stats = {"polls": 0, "timeouts": 0, "bad_frames": 0, "naks": 0, "cycles": 0, "sales": 0,
                      "duplicates": 0, "cycle_ms": 0.0, "started": time.time(), "first_poll": None}

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        ctx = self.ctx
        self.line = Line(self.port.device, self.profile)
        ctx.log.info("polling %d pump(s) on %s", len(self.sides), self.port.device)
        self._restore_chain()
        try:
            poll_cycles(ctx, self.sides, self._visit, self.stats, self._publish, self.profile.poll_interval)
        finally:
            self._publish(force=True)
            self.line.close()

    def _restore_chain(self) -> None:
        """The totalizers at each nozzle's last stored sale, so the chain continues across restarts."""
        for side, n, sale in last_sales(self.ctx, ((s, n) for s in self.sides for n in s.cfg.nozzles)):
            raw = sale.get("raw") or []
            if len(raw) == 5:
                side.chain[n.number] = (raw[3], raw[4])
                self.last_stored[(side.cfg.address, n.number)] = (raw[0], raw[1], raw[3])

    # ---------------------------------------------------------------- one pump visit

    def _visit(self, side: PumpSide) -> None:
        for _ in range(10):  # a capture in progress gets several rounds in one visit
            if side.commands:
                self._send_next_command(side)
            if not self._poll(side):
                return
            self._advance_capture(side)
            if not (side.capture and side.commands):
                break
        self._maybe_snapshot(side)

    def _exchange(self, side: PumpSide, frame_bytes: bytes) -> dart.Frame | None:
        """Send one frame, return the pump's reply frame (or None on timeout / garbage)."""
        if self.profile.inter_command_gap:
            time.sleep(self.profile.inter_command_gap)
        self.line.write(frame_bytes)
        deadline = time.monotonic() + self.profile.response_timeout + len(frame_bytes) * self.line.byte_time
        while True:
            chunk = self.line.read_available(deadline - time.monotonic())
            if not chunk:
                self.framer.clear()
                return None
            for item in self.framer.feed(chunk):
                if isinstance(item, dart.BadFrame):
                    self.stats["bad_frames"] += 1
                    continue
                if item.address == side.cfg.address and item.kind != "poll":
                    return item
            # keep reading: reply not complete yet (the deadline extends by the bytes still arriving)
            deadline = max(deadline, time.monotonic() + 4 * self.line.byte_time + 0.002)

    def _poll(self, side: PumpSide) -> bool:
        """Poll until the pump has nothing more to say. False if it did not answer."""
        address = side.cfg.address
        for _ in range(MAX_FRAMES_PER_VISIT):
            self.stats["polls"] += 1
            if self.stats["first_poll"] is None:
                self.stats["first_poll"] = time.time()
            reply = self._exchange(side, dart.poll(address))
            if reply is None:
                self.stats["timeouts"] += 1
                self._silence(side)
                return False
            self._heard(side)
            if reply.kind != "data":
                return True
            self.line.write(dart.ack(address, reply.tx))
            if side.last_rx == (reply.tx, reply.data):
                self.stats["duplicates"] += 1  # the pump repeated a frame whose ACK it missed
                continue
            side.last_rx = (reply.tx, reply.data)
            self._handle(side, reply.data)
        return True

    def _send_next_command(self, side: PumpSide) -> None:
        """Send the first queued command frame: one read message, or a tuple of them in one frame."""
        entry = side.commands[0]
        messages = entry if isinstance(entry, tuple) else (entry,)
        if not all(_is_read(m) for m in messages):
            side.commands.popleft()  # never happens by construction; refuse rather than write to a pump
            self.ctx.log.error("refused to send a non-read command %r", entry)
            return
        frame = dart.data_frame(side.cfg.address, side.tx_out, dart.build(list(messages)))
        reply = self._exchange(side, frame)
        if reply is not None and reply.kind == "ack" and reply.tx == side.tx_out:
            side.commands.popleft()
            side.tries = 0
            side.tx_out = (side.tx_out + 1) & 0x0F
            if side.capture:
                for msg in messages:
                    if isinstance(msg, dart.Command) and msg.dcc == dart.DCC_RETURN_FILLING_INFO:
                        side.capture.info_asked = True
                    elif isinstance(msg, dart.RequestTotals):
                        side.capture.totals_asked = True
            return
        if reply is not None and reply.kind == "nak":
            self.stats["naks"] += 1
            side.tx_out = 0
        side.tries += 1
        if side.tries >= MAX_COMMAND_TRIES:
            side.commands.popleft()
            side.tries = 0
            if side.capture:  # ask again from the start
                side.capture = Capture(nozzle=side.capture.nozzle)
                self._ask_for_sale(side)

    # ---------------------------------------------------------------- what the pump says

    def _handle(self, side: PumpSide, data: bytes) -> None:
        try:
            transactions = dart.split_transactions(data)
        except dart.DartError as exc:
            self.stats["bad_frames"] += 1
            self.ctx.log.warning("pump %#x: %s", side.cfg.address, exc)
            return
        for t in transactions:
            try:
                msg = dart.decode_from_pump(t)
            except dart.DartError as exc:
                self.stats["bad_frames"] += 1
                self.ctx.log.warning("pump %#x: %s", side.cfg.address, exc)
                continue
            if isinstance(msg, dart.PumpStatus):
                self._on_status(side, msg.status)
            elif isinstance(msg, dart.NozzleStatus):
                if msg.nozzle:
                    side.nozzle = msg.nozzle
                side.nozzle_out = msg.nozzle_out
                side.price = msg.price
            elif isinstance(msg, dart.FillingInfo):
                side.live = (msg.volume, msg.amount)
                cap = side.capture
                if cap and cap.info_asked and cap.fill is None:
                    cap.fill = (msg.volume, msg.amount)
                    cap.price = side.price
                    cap.nozzle = side.nozzle or cap.nozzle
            elif isinstance(msg, dart.TotalCounters):
                self._on_totals(side, msg)
            elif isinstance(msg, dart.PumpAlarm):
                self.ctx.capture([records.alarm(dart.ALARM_NAMES.get(msg.alarm, f"dart_alarm_{msg.alarm}"),
                                                port=self.port.name, pump=side.cfg.address, code=msg.alarm)])
            elif isinstance(msg, dart.PumpIdentity):
                if msg.identity != side.identity:  # GB/T 9081 identity of each nozzle: DART gives the pump's
                    side.identity = msg.identity
                    found = [r for n in side.cfg.nozzles for r in self.identities.update(
                        self.port.name, side.cfg.address, n.id,
                        self.identities.merged(n.id, pump_identity=f"{msg.identity:010d}"))]
                    if found:
                        self.ctx.capture(found)
        self._update_states(side)

    def _on_status(self, side: PumpSide, status: int) -> None:
        previous = side.status
        side.status = status
        if status in (dart.FILLING_COMPLETED, dart.MAX_REACHED):
            if previous not in (dart.FILLING_COMPLETED, dart.MAX_REACHED) and side.capture is None:
                side.capture = Capture(nozzle=side.nozzle)
                self._ask_for_sale(side)
        elif side.capture is not None and status in (dart.AUTHORIZED, dart.FILLING):
            self.ctx.log.error("pump %#x started a new fill before its last sale was read", side.cfg.address)
            side.capture = None
        if status in (dart.RESET, dart.AUTHORIZED, dart.FILLING):
            side.live = side.live if status == dart.FILLING else None

    def _ask_for_sale(self, side: PumpSide) -> None:
        # A completed sale jumps the queue (the next customer may lift within seconds), and when the
        # nozzle is known its totals are asked in the same frame: one exchange instead of three.
        info = dart.Command(dart.DCC_RETURN_FILLING_INFO)
        n = side.capture.nozzle if side.capture else 0
        if n:
            side.commands.appendleft((info, dart.RequestTotals(n), dart.RequestTotals(n + dart.AMOUNT_COUNTER_OFFSET)))
        else:
            side.commands.appendleft(info)

    def _on_totals(self, side: PumpSide, msg: dart.TotalCounters) -> None:
        if msg.counter == dart.PUMP_TOTAL_COUNTER:
            return
        amount_family = msg.counter > dart.AMOUNT_COUNTER_OFFSET
        number = msg.counter - dart.AMOUNT_COUNTER_OFFSET if amount_family else msg.counter
        pair = side.totals.setdefault(number, [None, None])
        pair[1 if amount_family else 0] = msg.total
        cap = side.capture
        if cap and cap.totals_asked and number == cap.nozzle:
            if amount_family:
                cap.amt_total = msg.total
            else:
                cap.vol_total = msg.total

    def _advance_capture(self, side: PumpSide) -> None:
        cap = side.capture
        if cap is None:
            return
        if cap.fill is not None and not cap.totals_asked and not any(
                isinstance(c, (dart.RequestTotals, tuple)) for c in side.commands):
            nozzle = cap.nozzle or 1
            side.commands.appendleft(dart.RequestTotals(nozzle + dart.AMOUNT_COUNTER_OFFSET))
            side.commands.appendleft(dart.RequestTotals(nozzle))
        if cap.fill is None or cap.vol_total is None or cap.amt_total is None:
            return
        nozzle_cfg = next((n for n in side.cfg.nozzles if n.number == cap.nozzle), None)
        side.capture = None
        if nozzle_cfg is None:
            self.ctx.log.error("pump %#x sold on logical nozzle %d, which is not configured", side.cfg.address, cap.nozzle)
            self.ctx.capture([records.alarm("unconfigured_nozzle", port=self.port.name, pump=side.cfg.address,
                                            logical_nozzle=cap.nozzle, volume=cap.fill[0], amount=cap.fill[1])])
            return
        start = side.chain.get(cap.nozzle)
        raw = records.RawSale(volume=cap.fill[0], amount=cap.fill[1], price=cap.price or 0,
                              vol_total=cap.vol_total, amt_total=cap.amt_total)
        again = self.last_stored.get((side.cfg.address, cap.nozzle)) == (raw.volume, raw.amount, raw.vol_total)
        if start and start[0] == raw.vol_total and (raw.volume == 0 or again):
            return  # no fuel, or the stored sale again (a restart while the pump still shows it)
        sale, raised = records.sale(self.ctx.station, self.port, side.cfg, nozzle_cfg, raw,
                                    start[0] if start else None, start[1] if start else None, self.ctx.tolerance)
        gaps = [r for r in raised if r["kind"] == "gap"]
        results = self.ctx.capture([*gaps, sale, *[r for r in raised if r["kind"] != "gap"]])
        side.chain[cap.nozzle] = (raw.vol_total, raw.amt_total)
        self.last_stored[(side.cfg.address, cap.nozzle)] = (raw.volume, raw.amount, raw.vol_total)
        if not results[len(gaps)][2]:
            side.sales += 1
            self.stats["sales"] += 1

    # ---------------------------------------------------------------- online / offline / states

    def _heard(self, side: PumpSide) -> None:
        side.silent = 0
        if not side.online:
            side.online = True
            first = not side.heard_once
            side.heard_once = True
            self.ctx.capture([records.event("pump_online", port=self.port.name, pump=side.cfg.address, first=first)])
            side.commands.clear()
            side.commands.append(dart.Command(dart.DCC_RETURN_STATUS))
            side.commands.append(dart.Command(dart.DCC_RETURN_IDENTITY))
            for n in side.cfg.nozzles:
                side.commands.append(dart.RequestTotals(n.number))
                side.commands.append(dart.RequestTotals(n.number + dart.AMOUNT_COUNTER_OFFSET))
            side.next_snapshot = time.monotonic() + 2.0  # record the startup totals once they are in

    def _silence(self, side: PumpSide) -> None:
        side.silent += 1
        if side.online and side.silent >= self.profile.offline_after:
            side.online = False
            side.capture = None
            side.status = None
            side.last_rx = None
            nozzles = [n.id for n in side.cfg.nozzles]
            self.ctx.capture([records.alarm("pump_offline", port=self.port.name, pump=side.cfg.address,
                                            nozzles=nozzles, silent_polls=side.silent),
                              *gbt9081.offline_alarms(self.port.name, side.cfg, side.silent)])
            self._update_states(side)
        elif not side.heard_once and side.silent == self.profile.offline_after:
            self.ctx.capture([records.alarm("pump_offline", port=self.port.name, pump=side.cfg.address,
                                            nozzles=[n.id for n in side.cfg.nozzles], silent_polls=side.silent),
                              *gbt9081.offline_alarms(self.port.name, side.cfg, side.silent)])
            self._update_states(side)

    def _update_states(self, side: PumpSide) -> None:
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
                out.append(records.nozzle_state(n.id, state, self.port.name, side.cfg.address, previous))
        if out:
            self.ctx.capture(out)

    def _maybe_snapshot(self, side: PumpSide) -> None:
        if not side.online or side.capture or side.next_snapshot == 0.0 or time.monotonic() < side.next_snapshot:
            return
        snaps = []
        idle = side.status not in (dart.FILLING, dart.AUTHORIZED, dart.FILLING_COMPLETED, dart.MAX_REACHED)
        for n in side.cfg.nozzles:
            pair = side.totals.get(n.number)
            if pair and pair[0] is not None:
                snaps.append(records.totals(n, self.port.name, side.cfg.address, pair[0], pair[1], "periodic"))
                if idle:
                    found = records.reading_gap(self.port, side.cfg, n, side.chain.get(n.number), tuple(pair),
                                                self.ctx.tolerance)
                    if found:
                        snaps.insert(0, found)
                        side.chain[n.number] = tuple(pair)
                side.chain.setdefault(n.number, (pair[0], pair[1]))
        if snaps:
            self.ctx.capture(snaps)
        side.next_snapshot = time.monotonic() + self.ctx.config.totals_snapshot_interval
        if side.status not in (dart.FILLING, dart.AUTHORIZED):
            for n in side.cfg.nozzles:  # refresh for the next snapshot
                side.commands.append(dart.RequestTotals(n.number))
                side.commands.append(dart.RequestTotals(n.number + dart.AMOUNT_COUNTER_OFFSET))

    def _publish(self, force: bool = False) -> None:
        pumps = {}
        for side in self.sides:
            pumps[f"{side.cfg.address:#x}"] = {
                "online": side.online, "status": dart.STATUS_NAMES.get(side.status, None) if side.status is not None else None,
                "nozzle": side.nozzle, "nozzle_out": side.nozzle_out, "price": side.price, "live": side.live,
                "sales": side.sales, "identity": side.identity,
                "nozzles": {str(n.id): {"state": side.states.get(n.id), "totals": side.totals.get(n.number),
                                        "number": n.number, "grade": n.grade_code} for n in side.cfg.nozzles},
            }
        self.ctx.board.publish({"port": self.port.name, "protocol": "dart", "mode": "master",
                                "device": self.port.device, "pid": __import__("os").getpid(),
                                "updated": time.time(), "stats": self.stats,
                                "line": {"rx": self.line.rx_bytes, "tx": self.line.tx_bytes,
                                         "byte_time_us": round(self.line.byte_time * 1e6, 1)},
                                "pumps": pumps}, force=force)
