"""Gilbarco two-wire listen mode: overhear the loop a station POS drives, never write a byte.

The collector's port is a passive tap on the loop: it sees the controller's commands and the
pumps' replies in one stream, in wire order. ``codec.LoopDecoder`` (merged direction, echo
tolerant: a tap that copies both lines of the controller's UART shows every command twice, as sent
and as echoed) follows the conversation; this module turns it into records:

* ``0n`` + status: pump state, nozzle states, online/offline (``offline_after`` polls in a row
  that got no answer);
* ``An``/``Bn`` then the ``4n`` reply: the sale (grade = logical nozzle, price, volume, money);
* the ``5n`` reply that follows: the volume and money totals of that grade -> one durable sale
  through ``records.sale`` (metering checks, totals-chain gap). If the POS does not read totals
  within ``totals_wait`` seconds (port option, default 3), or the pump starts its next fill first,
  the sale is stored without totals and flagged ``no_totals``; the chain then advances by the
  sale's own volume so the next sale with totals is still checked;
* ``5n`` replies while the pump is idle: totals snapshots (first one, then every
  ``totals_snapshot_interval``) and the reading-gap check;
* ``6n`` replies: live money; the special-function reply: the lifted nozzle; a POS price change
  block: a ``price_change`` event.

Never writes: the line is opened like any port (so the technician sees the same settings) and
``Line.write`` is never called; ``line.tx`` on the status board must stay 0.

Limits: a DATA_ERROR status (``0n``, the same byte as the command) cannot be told from an echo and
is ignored. Which grade a calling or busy pump uses is known only from the POS's special-function
010 reads, or after the sale; until then the state goes to every nozzle of the pump
(``nozzle_known: false``), as in master mode.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from drivers import gbt9081, records
from drivers.base import last_sales
from drivers.gilbarco import codec as gc
from drivers.gilbarco.codec import CommandCode, PumpState
from drivers.gilbarco.poller import EOT_STATES, IDLE_STATES, STATUS_NAMES, nozzle_states
from drivers.serialport import Line

QUIET_FLUSH = 0.5  # seconds without a byte: decide whatever the decoder still holds
BUS_SILENT = 30.0  # seconds without a byte: the POS has stopped (or the tap is unplugged)


@dataclass
class Pending:
    txn: gc.TransactionReply
    opened: float


@dataclass
class ListenPump:
    cfg: object
    online: bool = False
    heard_once: bool = False
    awaiting: bool = False  # a status request went out, no answer yet
    silent: int = 0
    state: PumpState | None = None
    grade: int | None = None
    price: int | None = None
    live_money: int | None = None
    eot_pending: bool = False  # An/Bn seen, its transaction not read yet (kept until the POS reads it)
    eot_consumed: bool = False  # the transaction of the current An/Bn was taken
    pending: Pending | None = None
    totals: dict = field(default_factory=dict)  # grade -> [vol_total, amt_total, ppu1]
    chain: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)  # grade -> (volume, money, vol_total) of the last stored sale
    states: dict = field(default_factory=dict)
    next_snapshot: float = 0.0
    sales: int = 0


class GilbarcoListener:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.profile = ctx.port.serial
        self.pumps = {p.address: ListenPump(p) for p in ctx.port.pumps}
        self.totals_wait = float(ctx.port.options.get("totals_wait", 3.0))
        self.decoder = gc.LoopDecoder(None, echo=True)
        self.line: Line | None = None
        self.last_cmd: gc.Command | None = None
        self.last_rx = time.monotonic()
        self.quiet = False
        self.flushed = True
        self.stats = {"polls": 0, "commands": 0, "replies": 0, "echoes": 0, "bad_frames": 0, "timeouts": 0,
                      "sales": 0, "sales_without_totals": 0, "pos_writes": 0, "started": time.time(),
                      "cycle_ms": 0.0}

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        ctx = self.ctx
        self.line = Line(self.port.device, self.profile)
        ctx.log.info("listening to %d Gilbarco pump(s) on %s (never transmitting)", len(self.pumps), self.port.device)
        self._restore_chain()
        try:
            while not ctx.stopping():
                chunk = self.line.read_available(0.1)
                now = time.monotonic()
                if chunk:
                    self.last_rx, self.flushed = now, False
                    if self.quiet:
                        self.quiet = False
                        ctx.capture([records.event("listen_traffic", port=self.port.name)])
                    for event in self.decoder.feed(chunk):
                        self._on_event(event)
                elif not self.flushed and now - self.last_rx > QUIET_FLUSH:
                    self.flushed = True
                    for event in self.decoder.flush():
                        self._on_event(event)
                elif not self.quiet and now - self.last_rx > BUS_SILENT:
                    self.quiet = True
                    ctx.capture([records.event("listen_silent", port=self.port.name, seconds=BUS_SILENT)])
                for pump in self.pumps.values():
                    if pump.pending and now - pump.pending.opened > self.totals_wait:
                        self._finish(pump, None)
                self._publish()
        finally:
            self._publish(force=True)
            self.line.close()

    def _restore_chain(self) -> None:
        for pump, n, sale in last_sales(self.ctx, ((p, n) for p in self.pumps.values() for n in p.cfg.nozzles)):
            raw = sale.get("raw") or []
            if len(raw) == 5 and raw[3] is not None:
                pump.chain[n.number] = (raw[3], raw[4])
                pump.last[n.number] = (raw[0], raw[1], raw[3])

    # ---------------------------------------------------------------- the conversation

    def _on_event(self, event: gc.LoopEvent) -> None:
        if event.note == "echo":
            self.stats["echoes"] += 1
            return
        if event.error is not None or event.message is None:
            self.stats["bad_frames"] += 1
            return
        msg = event.message
        if isinstance(msg, gc.Command):
            self._on_command(msg)
            return
        self.stats["replies"] += 1
        cmd = self.last_cmd
        if isinstance(msg, gc.StatusReply):
            pump = self.pumps.get(msg.pump)
            if pump is not None and msg.state != PumpState.DATA_ERROR:
                self._on_status(pump, msg.state)
        elif isinstance(msg, gc.TransactionReply):
            pump = self.pumps.get(msg.pump)
            if pump is not None:
                self._on_transaction(pump, msg)
        elif isinstance(msg, gc.TotalsReply):
            pump = self.pumps.get(cmd.pump) if cmd is not None and cmd.code == CommandCode.TOTALS else None
            if pump is not None:
                self._on_totals(pump, msg)
        elif isinstance(msg, gc.RealTimeMoneyReply):
            pump = self.pumps.get(cmd.pump) if cmd is not None else None
            if pump is not None:
                pump.live_money = msg.money
        elif isinstance(msg, gc.SpecialFunctionReply):
            pump = self.pumps.get(cmd.pump) if cmd is not None else None
            if pump is not None and msg.lifted_nozzle:
                pump.grade = msg.lifted_nozzle
                self._update_states(pump)
        elif isinstance(msg, gc.PriceChangeBlock):
            self.stats["pos_writes"] += 1
            pump = self.pumps.get(cmd.pump) if cmd is not None else None
            self.ctx.capture([records.event("price_change", port=self.port.name,
                                            pump=pump.cfg.address if pump else None, grade=msg.grade,
                                            price=msg.price, level=msg.price_level, source="pos")])
        elif isinstance(msg, gc.PresetBlock):
            self.stats["pos_writes"] += 1

    def _on_command(self, cmd: gc.Command) -> None:
        self.stats["commands"] += 1
        self.last_cmd = cmd
        if cmd.code not in gc.READ_COMMANDS:
            self.stats["pos_writes"] += 1  # the POS may authorise, stop and set prices; we never do
        if cmd.code != CommandCode.STATUS:
            return
        self.stats["polls"] += 1
        pump = self.pumps.get(cmd.pump)
        if pump is None:
            return
        if pump.awaiting:  # the previous status request to this pump went unanswered
            self.stats["timeouts"] += 1
            self._silence(pump)
        pump.awaiting = True

    def _on_status(self, pump: ListenPump, state: PumpState) -> None:
        pump.awaiting = False
        self._heard(pump)
        previous = pump.state
        pump.state = state
        if state in EOT_STATES:
            if not pump.eot_consumed:
                pump.eot_pending = True
        else:  # a pump shows idle once it sent the transaction: a POS that missed it asks again
            pump.eot_consumed = False
        if state == PumpState.BUSY:
            if pump.pending is not None:  # the next fill started before the POS read the totals
                self._finish(pump, None)
            if previous != PumpState.BUSY:
                pump.live_money = None
        if state != previous and state in (PumpState.OFF, PumpState.CALL):
            pump.grade = None
        if len(pump.cfg.nozzles) == 1:
            pump.grade = pump.cfg.nozzles[0].number
        self._update_states(pump)

    def _on_transaction(self, pump: ListenPump, txn: gc.TransactionReply) -> None:
        if not pump.eot_pending:
            return  # the POS re-read an old transaction (or we joined mid-conversation)
        if pump.pending is not None:
            self._finish(pump, None)
        pump.eot_pending = False
        pump.eot_consumed = True
        pump.grade, pump.price = txn.grade, txn.ppu
        pump.pending = Pending(txn, time.monotonic())

    def _on_totals(self, pump: ListenPump, reply: gc.TotalsReply) -> None:
        totals = {}
        for g in reply.grades:
            totals[g.grade] = (g.volume, g.money)
            pump.totals[g.grade] = [g.volume, g.money, g.ppu1]
        if pump.pending is not None:
            self._finish(pump, totals)
            return
        if pump.state not in IDLE_STATES or pump.eot_pending:
            return
        out = []
        now = time.monotonic()
        snapshot = now >= pump.next_snapshot
        for n in pump.cfg.nozzles:
            pair = totals.get(n.number)
            if pair is None:
                continue
            found = records.reading_gap(self.port, pump.cfg, n, pump.chain.get(n.number), pair, self.ctx.tolerance)
            if found:
                out.append(found)
                pump.chain[n.number] = pair
            pump.chain.setdefault(n.number, pair)
            if snapshot:
                out.append(records.totals(n, self.port.name, pump.cfg.address, pair[0], pair[1],
                                          "startup" if pump.next_snapshot == 0.0 else "periodic"))
        if snapshot:
            pump.next_snapshot = now + self.ctx.config.totals_snapshot_interval
        if out:
            self.ctx.capture(out)

    def _finish(self, pump: ListenPump, totals: dict | None) -> None:
        """Store the pending sale, with the totals of its grade when the POS read them."""
        ctx = self.ctx
        txn = pump.pending.txn
        pump.pending = None
        nozzle_cfg = next((n for n in pump.cfg.nozzles if n.number == txn.grade), None)
        if nozzle_cfg is None:
            ctx.capture([records.alarm("unconfigured_nozzle", port=self.port.name, pump=pump.cfg.address,
                                       logical_nozzle=txn.grade, volume=txn.volume, amount=txn.money)])
            return
        start = pump.chain.get(txn.grade)
        pair = totals.get(txn.grade) if totals else None
        if pair is not None:
            if start and start == pair and (txn.volume == 0 or pump.last.get(txn.grade) == (txn.volume, txn.money, pair[0])):
                return  # no fuel, or the stored sale again
            raw = records.RawSale(txn.volume, txn.money, txn.ppu, pair[0], pair[1])
        else:
            if txn.volume == 0:
                return
            raw = records.RawSale(txn.volume, txn.money, txn.ppu, None, None)
            self.stats["sales_without_totals"] += 1
        sale, raised = records.sale(ctx.station, self.port, pump.cfg, nozzle_cfg, raw,
                                    start[0] if start and pair else None, start[1] if start and pair else None,
                                    ctx.tolerance, extra={"source": "listen"})
        gaps = [r for r in raised if r["kind"] == "gap"]
        results = ctx.capture([*gaps, sale, *[r for r in raised if r["kind"] != "gap"]])
        if pair is not None:
            pump.chain[txn.grade] = pair
            pump.last[txn.grade] = (txn.volume, txn.money, pair[0])
        elif start is not None:  # the totals must have moved by this sale: keep the chain checkable
            pump.chain[txn.grade] = (start[0] + txn.volume, start[1] + txn.money if start[1] is not None else None)
        if not results[len(gaps)][2]:
            pump.sales += 1
            self.stats["sales"] += 1

    # ---------------------------------------------------------------- online / offline / states

    def _heard(self, pump: ListenPump) -> None:
        pump.silent = 0
        if not pump.online:
            pump.online = True
            first = not pump.heard_once
            pump.heard_once = True
            self.ctx.capture([records.event("pump_online", port=self.port.name, pump=pump.cfg.address, first=first)])

    def _silence(self, pump: ListenPump) -> None:
        pump.silent += 1
        went = pump.online and pump.silent >= self.profile.offline_after
        never = not pump.heard_once and pump.silent == self.profile.offline_after
        if went or never:
            pump.online = False
            pump.state = None
            self.ctx.capture([records.alarm("pump_offline", port=self.port.name, pump=pump.cfg.address,
                                            nozzles=[n.id for n in pump.cfg.nozzles], silent_polls=pump.silent),
                              *gbt9081.offline_alarms(self.port.name, pump.cfg, pump.silent)])
            self._update_states(pump)

    def _update_states(self, pump: ListenPump) -> None:
        out = []
        for nid, (state, detail) in nozzle_states(pump.cfg, pump.online, pump.state, pump.grade).items():
            previous = pump.states.get(nid)
            if state != previous:
                pump.states[nid] = state
                out.append(records.nozzle_state(nid, state, self.port.name, pump.cfg.address, previous, detail))
        if out:
            self.ctx.capture(out)

    def _publish(self, force: bool = False) -> None:
        pumps = {}
        for p in self.pumps.values():
            pumps[f"{p.cfg.address:#x}"] = {
                "online": p.online, "status": STATUS_NAMES.get(p.state) if p.state is not None else None,
                "nozzle": p.grade or 0, "price": p.price, "live_money": p.live_money, "sales": p.sales,
                "nozzles": {str(n.id): {"state": p.states.get(n.id), "totals": (p.totals.get(n.number) or [None, None])[:2],
                                        "number": n.number, "grade": n.grade_code} for n in p.cfg.nozzles},
            }
        self.ctx.board.publish({"port": self.port.name, "protocol": "gilbarco", "mode": "listen",
                                "device": self.port.device, "pid": os.getpid(), "updated": time.time(),
                                "stats": self.stats, "quiet": self.quiet,
                                "line": {"rx": self.line.rx_bytes, "tx": self.line.tx_bytes,
                                         "byte_time_us": round(self.line.byte_time * 1e6, 1)},
                                "pumps": pumps}, force=force)
