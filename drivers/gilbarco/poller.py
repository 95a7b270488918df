"""Gilbarco two-wire master-mode poller: owns one current loop (default 5787 baud 8E1), polls every
pump on it, and turns what the pumps say into durable sales, nozzle states, totals and alarms.

Read-only by construction: the only commands it can send are ``0n`` status, ``4n`` transaction,
``5n`` totals and ``6n`` real-time money (``_exchange`` refuses anything else): never ``1n``
authorise, ``2n`` data (price, preset, special function) or ``3n`` stop.

The loop echoes every byte the controller sends. With ``echo_suppression`` (the default for this
protocol) the echo is removed with ``codec.strip_echo`` before the reply is parsed; an echo that
differs from what was sent is a collision (another transmitter on the loop): it is counted, the
reply is discarded and the command is tried again on the next visit. No echo at all counts as no
reply.

Sale: on the status edge into PEOT/FEOT (``An``/``Bn``) read the transaction (``4n``), then the
totals (``5n``); the grade in the transaction is the logical nozzle (configuration maps it to the
station nozzle), and the totals of that grade are the sale's volume and money totalizers. One
durable sale goes through ``records.sale`` (metering checks, totals-chain gap record). On first
contact and every ``totals_snapshot_interval`` the totals of an idle pump are read and compared with
the chain (``records.reading_gap``). ``offline_after`` silent polls make a pump offline
(``pump_offline`` plus one ``nozzle_offline`` per nozzle).

Port options: ``digits`` (6 or 8, the pump's display mode; learned from the first transaction or
totals reply anyway).

Nozzle states: Gilbarco says which grade was used only in the transaction. While a pump calls,
is authorised or delivers, the state goes to its one nozzle if it has one, else to every nozzle of
the pump with ``nozzle_known: false``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from drivers import gbt9081, records
from drivers.base import last_sales, poll_cycles
from drivers.gilbarco import codec as gc
from drivers.gilbarco.codec import CommandCode, PumpState
from drivers.serialport import Line

EOT_STATES = (PumpState.PEOT, PumpState.FEOT)
IDLE_STATES = (PumpState.OFF, PumpState.CALL)  # totals cannot move under these
MAX_CAPTURE_TRIES = 20  # visits without an answer (collisions excluded) before a sale is given up
COLLISION = object()

STATUS_NAMES = {
    PumpState.DATA_ERROR: "error", PumpState.OFF: "idle", PumpState.CALL: "calling",
    PumpState.AUTHORIZED: "authorized", PumpState.BUSY: "filling", PumpState.PEOT: "completed",
    PumpState.FEOT: "completed", PumpState.STOPPED: "stopped", PumpState.SEND_DATA: "send_data",
}


def nozzle_states(pump_cfg, online: bool, state, grade: int | None) -> dict[int, tuple[str, dict | None]]:
    """Station nozzle id -> (records state, detail) for one Gilbarco pump (shared with the listener)."""
    out = {}
    single = len(pump_cfg.nozzles) == 1
    for n in pump_cfg.nozzles:
        detail = None
        if not online:
            s = records.OFFLINE
        elif state in (PumpState.DATA_ERROR, PumpState.STOPPED):
            s = records.ERROR
        elif state in (PumpState.CALL, PumpState.AUTHORIZED, PumpState.BUSY):
            if single or grade == n.number:
                s = {PumpState.CALL: records.CALLING, PumpState.AUTHORIZED: records.AUTHORIZED,
                     PumpState.BUSY: records.FUELLING}[state]
            elif grade is None:
                s = {PumpState.CALL: records.CALLING, PumpState.AUTHORIZED: records.AUTHORIZED,
                     PumpState.BUSY: records.FUELLING}[state]
                detail = {"nozzle_known": False}
            else:
                s = records.IDLE
        else:
            s = records.IDLE
        out[n.id] = (s, detail)
    return out


@dataclass
class Capture:
    """A sale being read after An/Bn."""

    txn: gc.TransactionReply | None = None
    totals: dict | None = None  # grade -> (vol_total, amt_total)
    tries: int = 0


@dataclass
class Pump:
    cfg: object
    digits: int = 6
    online: bool = False
    heard_once: bool = False
    silent: int = 0
    state: PumpState | None = None
    grade: int | None = None  # active grade when known
    live_money: int | None = None
    capture: Capture | None = None
    eot_handled: bool = False
    need_totals: str | None = None  # why the totals of an idle pump are to be read
    next_snapshot: float = 0.0
    totals: dict = field(default_factory=dict)  # grade -> [vol_total, amt_total, ppu1]
    chain: dict = field(default_factory=dict)  # grade -> (vol_total, amt_total) at the last stored sale
    last: dict = field(default_factory=dict)  # grade -> (volume, money, vol_total) of the last stored sale
    states: dict = field(default_factory=dict)  # station nozzle id -> state
    sales: int = 0
    price: int | None = None


class GilbarcoPoller:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.profile = ctx.port.serial
        digits = int(ctx.port.options.get("digits", 6))
        self.pumps = [Pump(p, digits=digits) for p in ctx.port.pumps]
        self.line: Line | None = None
        self.stats = {"polls": 0, "timeouts": 0, "bad_frames": 0, "collisions": 0, "no_echo": 0, "cycles": 0,
                      "sales": 0, "cycle_ms": 0.0, "started": time.time(), "first_poll": None}

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        ctx = self.ctx
        self.line = Line(self.port.device, self.profile)
        ctx.log.info("polling %d Gilbarco pump(s) on %s", len(self.pumps), self.port.device)
        self._restore_chain()
        try:
            poll_cycles(ctx, self.pumps, self._visit, self.stats, self._publish, self.profile.poll_interval)
        finally:
            self._publish(force=True)
            self.line.close()

    def _restore_chain(self) -> None:
        """The totalizers at each nozzle's last stored sale, so the chain continues across restarts."""
        for pump, n, sale in last_sales(self.ctx, ((p, n) for p in self.pumps for n in p.cfg.nozzles)):
            raw = sale.get("raw") or []
            if len(raw) == 5 and raw[3] is not None:
                pump.chain[n.number] = (raw[3], raw[4])
                pump.last[n.number] = (raw[0], raw[1], raw[3])

    # ---------------------------------------------------------------- the line

    def _exchange(self, pump: Pump, code: int):
        """One command, its reply without the echo: bytes, None (no reply) or COLLISION."""
        if code not in gc.READ_COMMANDS:  # never happens by construction; refuse rather than write to a pump
            self.ctx.log.error("refused to send non-read command %X to pump %d", code, pump.cfg.address)
            return None
        line = self.line
        command = gc.encode_command(code, pump.cfg.address)
        echo = len(command) if self.profile.echo_suppression else 0
        if self.profile.inter_command_gap:
            time.sleep(self.profile.inter_command_gap)
        line.flush_input()  # a late reply to an earlier command must not pass for this one's echo
        line.write(command)
        # time to the first reply byte, plus the reply's own wire time (totals of 6 grades: ~350 ms)
        expected = echo + gc.reply_length(code, digits=pump.digits, grades=max(1, len(pump.cfg.nozzles)))
        deadline = time.monotonic() + self.profile.response_timeout + expected * line.byte_time
        buf = b""
        while True:
            chunk = line.read_available(deadline - time.monotonic())
            if not chunk:
                break
            buf += chunk
            n = min(len(buf), echo)
            if buf[:n] != command[:n]:
                break  # the echo already differs: a collision, no need to wait
            if self._complete(code, buf[echo:], pump.digits):
                break
            deadline = max(deadline, time.monotonic() + 4 * line.byte_time + 0.002)
        if echo:
            try:
                reply = gc.strip_echo(command, buf)
            except gc.EchoMismatchError as exc:
                if not buf:
                    self.stats["no_echo"] += 1
                    return None
                self.stats["collisions"] += 1
                self.ctx.log.debug("pump %d: %s", pump.cfg.address, exc)
                return COLLISION
        else:
            reply = buf
        if not reply:
            return None
        if code == CommandCode.REALTIME_MONEY and len(reply) in (6, 8):
            return reply
        return reply if self._complete(code, reply, pump.digits) else None

    @staticmethod
    def _complete(code: int, reply: bytes, digits: int) -> bool:
        if code == CommandCode.STATUS:
            return len(reply) >= 1
        if code in (CommandCode.TRANSACTION, CommandCode.TOTALS):
            return len(reply) >= 4 and reply[0] == gc.STX and gc.ETX in reply
        if code == CommandCode.REALTIME_MONEY:
            return len(reply) >= (8 if digits == 8 else 6) and (digits != 8 or len(reply) >= 8)
        return True

    # ---------------------------------------------------------------- one pump visit

    def _visit(self, pump: Pump) -> None:
        self.stats["polls"] += 1
        if self.stats["first_poll"] is None:
            self.stats["first_poll"] = time.time()
        reply = self._exchange(pump, CommandCode.STATUS)
        if reply is COLLISION:
            return
        if reply is None:
            self.stats["timeouts"] += 1
            self._silence(pump)
            return
        try:
            status = gc.StatusReply.decode(reply[:1])
        except gc.GilbarcoCodecError as exc:
            self.stats["bad_frames"] += 1
            self.ctx.log.warning("pump %d: %s", pump.cfg.address, exc)
            return
        if status.pump != pump.cfg.address:
            self.stats["bad_frames"] += 1
            return
        self._heard(pump)
        self._on_status(pump, status.state)
        if pump.capture is not None:
            self._advance_capture(pump)
        elif pump.state == PumpState.BUSY:
            money = self._exchange(pump, CommandCode.REALTIME_MONEY)
            if isinstance(money, bytes):
                try:
                    pump.live_money = gc.RealTimeMoneyReply.decode(money).money
                except gc.GilbarcoCodecError:
                    self.stats["bad_frames"] += 1
        if pump.capture is None and time.monotonic() >= pump.next_snapshot and pump.next_snapshot:
            pump.need_totals = "periodic"
        if pump.need_totals and pump.capture is None and pump.state in IDLE_STATES:
            self._read_idle_totals(pump)
        self._update_states(pump)

    def _on_status(self, pump: Pump, state: PumpState) -> None:
        previous = pump.state
        pump.state = state
        if state in EOT_STATES:
            if not pump.eot_handled and pump.capture is None:
                pump.capture = Capture()
        else:
            pump.eot_handled = False
        if state == PumpState.BUSY:
            if pump.capture is not None:
                self.ctx.log.error("pump %d started a new fill before its last sale was read", pump.cfg.address)
                pump.capture = None
            if previous != PumpState.BUSY:
                pump.live_money = None
        if state != previous and state in (PumpState.OFF, PumpState.CALL):
            pump.grade = None  # a new customer: the grade is known again from the transaction
        if len(pump.cfg.nozzles) == 1:
            pump.grade = pump.cfg.nozzles[0].number

    def _read_totals(self, pump: Pump) -> dict | None:
        reply = self._exchange(pump, CommandCode.TOTALS)
        if not isinstance(reply, bytes):
            return None
        try:
            totals = gc.TotalsReply.decode(reply)
        except gc.GilbarcoCodecError as exc:
            self.stats["bad_frames"] += 1
            self.ctx.log.warning("pump %d totals: %s", pump.cfg.address, exc)
            return None
        pump.digits = totals.digits
        out = {}
        for g in totals.grades:
            out[g.grade] = (g.volume, g.money)
            pump.totals[g.grade] = [g.volume, g.money, g.ppu1]
        return out

    def _advance_capture(self, pump: Pump) -> None:
        cap = pump.capture
        collisions = self.stats["collisions"]
        if cap.txn is None:
            reply = self._exchange(pump, CommandCode.TRANSACTION)
            if isinstance(reply, bytes):
                try:
                    txn = gc.TransactionReply.decode(reply)
                except gc.GilbarcoCodecError as exc:
                    self.stats["bad_frames"] += 1
                    self.ctx.log.warning("pump %d transaction: %s", pump.cfg.address, exc)
                else:
                    if txn.pump == pump.cfg.address:
                        cap.txn = txn
                        pump.digits = txn.digits
                        pump.grade = txn.grade
                        pump.price = txn.ppu
                    else:
                        self.stats["bad_frames"] += 1
        if cap.txn is not None and cap.totals is None:
            cap.totals = self._read_totals(pump)
        if cap.txn is None or cap.totals is None:
            cap.tries += self.stats["collisions"] == collisions  # a garbled loop is no reason to give up
            if cap.tries >= MAX_CAPTURE_TRIES:
                self.ctx.log.error("pump %d: could not read its last sale; the totals chain will show it",
                                   pump.cfg.address)
                pump.capture = None
                pump.eot_handled = True
            return
        pump.capture = None
        pump.eot_handled = True
        self._store_sale(pump, cap.txn, cap.totals)

    def _store_sale(self, pump: Pump, txn: gc.TransactionReply, totals: dict) -> None:
        ctx = self.ctx
        nozzle_cfg = next((n for n in pump.cfg.nozzles if n.number == txn.grade), None)
        if nozzle_cfg is None:
            ctx.log.error("pump %d sold grade %d, which is not configured", pump.cfg.address, txn.grade)
            ctx.capture([records.alarm("unconfigured_nozzle", port=self.port.name, pump=pump.cfg.address,
                                       logical_nozzle=txn.grade, volume=txn.volume, amount=txn.money)])
            return
        if txn.grade not in totals:
            ctx.log.error("pump %d: totals reply has no grade %d", pump.cfg.address, txn.grade)
            return
        vol_total, amt_total = totals[txn.grade]
        start = pump.chain.get(txn.grade)
        again = pump.last.get(txn.grade) == (txn.volume, txn.money, vol_total)
        if start and start == (vol_total, amt_total) and (txn.volume == 0 or again):
            return  # no fuel, or the stored sale again (a restart while the pump still shows it)
        raw = records.RawSale(volume=txn.volume, amount=txn.money, price=txn.ppu, vol_total=vol_total,
                              amt_total=amt_total)
        sale, raised = records.sale(ctx.station, self.port, pump.cfg, nozzle_cfg, raw,
                                    start[0] if start else None, start[1] if start else None, ctx.tolerance)
        gaps = [r for r in raised if r["kind"] == "gap"]
        results = ctx.capture([*gaps, sale, *[r for r in raised if r["kind"] != "gap"]])
        pump.chain[txn.grade] = (vol_total, amt_total)
        pump.last[txn.grade] = (txn.volume, txn.money, vol_total)
        if not results[len(gaps)][2]:
            pump.sales += 1
            self.stats["sales"] += 1

    def _read_idle_totals(self, pump: Pump) -> None:
        """Start-up / periodic totals: snapshot records, and a gap record if the chain moved unseen."""
        before = pump.state
        totals = self._read_totals(pump)
        if totals is None:
            return
        again = self._exchange(pump, CommandCode.STATUS)  # the totals count only if the pump stayed idle
        try:
            after = gc.StatusReply.decode(again[:1]).state if isinstance(again, bytes) and again else None
        except gc.GilbarcoCodecError:
            after = None
        if after is not None:
            self._on_status(pump, after)
        out = []
        for n in pump.cfg.nozzles:
            pair = totals.get(n.number)
            if pair is None:
                continue
            out.append(records.totals(n, self.port.name, pump.cfg.address, pair[0], pair[1], pump.need_totals))
            if before in IDLE_STATES and after in IDLE_STATES:
                found = records.reading_gap(self.port, pump.cfg, n, pump.chain.get(n.number), pair, self.ctx.tolerance)
                if found:
                    out.insert(0, found)
                    pump.chain[n.number] = pair
                pump.chain.setdefault(n.number, pair)
        if out:
            self.ctx.capture(out)
        pump.need_totals = None
        pump.next_snapshot = time.monotonic() + self.ctx.config.totals_snapshot_interval

    # ---------------------------------------------------------------- online / offline / states

    def _heard(self, pump: Pump) -> None:
        pump.silent = 0
        if not pump.online:
            pump.online = True
            first = not pump.heard_once
            pump.heard_once = True
            self.ctx.capture([records.event("pump_online", port=self.port.name, pump=pump.cfg.address, first=first)])
            pump.need_totals = "startup" if first else "reconnect"  # re-read totals before trusting anything

    def _silence(self, pump: Pump) -> None:
        pump.silent += 1
        went = pump.online and pump.silent >= self.profile.offline_after
        never = not pump.heard_once and pump.silent == self.profile.offline_after
        if went or never:
            pump.online = False
            pump.capture = None
            pump.state = None
            self.ctx.capture([records.alarm("pump_offline", port=self.port.name, pump=pump.cfg.address,
                                            nozzles=[n.id for n in pump.cfg.nozzles], silent_polls=pump.silent),
                              *gbt9081.offline_alarms(self.port.name, pump.cfg, pump.silent)])
            self._update_states(pump)

    def _update_states(self, pump: Pump) -> None:
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
        for p in self.pumps:
            live = None
            n = next((n for n in p.cfg.nozzles if n.number == p.grade), None)
            if p.live_money is not None and p.state == PumpState.BUSY and n is not None:
                ppu = (p.totals.get(n.number) or [0, 0, 0])[2]  # volume = money / price (reference §2.7)
                d = n.decimals
                volume = p.live_money * 10 ** (d.price + d.volume - d.amount) // ppu if ppu else 0
                live = [volume, p.live_money]
            pumps[f"{p.cfg.address:#x}"] = {
                "online": p.online, "status": STATUS_NAMES.get(p.state) if p.state is not None else None,
                "nozzle": p.grade or 0, "price": p.price, "live": live, "live_money": p.live_money,
                "sales": p.sales, "digits": p.digits,
                "nozzles": {str(n.id): {"state": p.states.get(n.id), "totals": (p.totals.get(n.number) or [None, None])[:2],
                                        "number": n.number, "grade": n.grade_code} for n in p.cfg.nozzles},
            }
        self.ctx.board.publish({"port": self.port.name, "protocol": "gilbarco", "mode": "master",
                                "device": self.port.device, "pid": os.getpid(), "updated": time.time(),
                                "stats": self.stats,
                                "line": {"rx": self.line.rx_bytes, "tx": self.line.tx_bytes,
                                         "byte_time_us": round(self.line.byte_time * 1e6, 1)},
                                "pumps": pumps}, force=force)
