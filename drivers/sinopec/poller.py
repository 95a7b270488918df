"""Sinopec IC-card dispenser <-> station PC protocol (reference §5.3): the master-mode poller, and the
dispenser state both modes share (the listen mode is ``drivers.sinopec.listener``).

In master mode the collector is the station PC on the line. Read-only by construction: the only
messages it can send are 30H general query, the 32H acknowledgement of a transaction it has
stored, 38H read totals, 3AH read information and 3EH read a record by TTC (``_exchange`` refuses
anything else). The 32H acknowledgement is part of collection: a dispenser offers an
unacknowledged record again and again, and advances to the next one only when acknowledged.

One visit to a dispenser:

1. 3AH information, once per connection (identity event, nozzle list check, list versions);
2. 30H with the current time and the dispenser's own list versions (so it never asks for a list
   download, which this collector would not answer). The reply is 31H real-time information
   (idle / card inserted / fuelling progress -> nozzle states and live progress) or a pending 32H
   transaction;
3. a 32H record is made durable in the store (``ctx.capture`` returns) and only then acknowledged;
   the next 30H may bring the next one. When its TTC is beyond the last one seen, the missing
   TTCs are read back one by one with 3EH first (each stored, then acknowledged); a 3FH "no such
   record" becomes a ``ttc_gap`` alarm, and the volume it carried shows in the totals chain;
4. 38H totals when the dispenser is quiet (no fill, nothing pending), for the totals chain and the
   periodic snapshots. The firmware answers 38H only while idle.

Sale natural key: the record's TTC (``pump_txn``) with its volume totalizer, volume and amount.
Numbers are big-endian binary in the units of the nozzle's configured decimals. The protocol has
no amount totalizer: ``amt_total`` is None.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

from drivers import records
from drivers.base import last_sales, poll_cycles
from drivers.serialport import Line
from drivers.sinopec import codec as sc

READ_ONLY_MESSAGES = (sc.GeneralQuery, sc.TransactionAck, sc.TotalsRequest, sc.InfoRequest, sc.ReadRecordRequest)
NON_FUEL_TYPES = {0x3, 0x4, 0x5, 0x6, 0x8, 0xE}  # grey unlock, clear grey, logon, logoff, price received, auth cancelled
# 31H answers in a row, without a 32H or fuelling, after which no record can be pending: the firmware
# holds an upload back for at most 3 end-of-fill answers (SENDEOT) plus 3 card-inserted answers (SENDCARDIN)
QUIET_POLLS = 8
MAX_RECORDS_PER_VISIT = 8
MAX_GAP_READ = 64  # TTCs read back by 3EH for one gap; older ones are reported unread
TTC_RESET_BACKSTEP = 1000  # a TTC this far below the last one means the dispenser's counter restarted
INFO_RETRY = 30.0


def _digest(value) -> str:
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def option_int(options: dict, name: str, default: int | None, lo: int = 0, hi: int = 255) -> int | None:
    value = options.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"options.{name} must be an integer {lo}..{hi}, got {value!r}")
    return value


@dataclass
class Dispenser:
    cfg: object  # PumpConfig
    by_number: dict  # logical nozzle -> NozzleConfig
    online: bool = False
    heard_once: bool = False
    silent: int = 0
    frame_no: int = 0
    info: sc.InfoReply | None = None
    info_due: float = 0.0
    phase: str | None = None  # idle, card, fuelling (None until the first 31H)
    fuelling: dict = field(default_factory=dict)  # logical nozzle -> (volume, amount, price)
    quiet: int = 0
    last_ttc: int | None = None
    totals: dict = field(default_factory=dict)  # logical nozzle -> volume total (last 38H)
    readings: dict = field(default_factory=dict)  # logical nozzle -> volume total not yet settled with the chain
    chain: dict = field(default_factory=dict)  # logical nozzle -> (vol_total, None) at the last stored sale
    states: dict = field(default_factory=dict)  # station nozzle id -> state
    identity: records.NozzleIdentity | None = None
    totals_due: float = 0.0
    next_snapshot: float = 0.0
    snapshots: int = 0
    sales: int = 0
    records: int = 0
    last_error: bytes | None = None
    warned: set = field(default_factory=set)


class SinopecBase:
    """State, records and status shared by the master poller and the listener."""

    MODE = "master"

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.profile = ctx.port.serial
        self.options = dict(ctx.port.options or {})
        self.dispensers = [Dispenser(p, {n.number: n for n in p.nozzles}) for p in ctx.port.pumps]
        self.by_address = {d.cfg.address: d for d in self.dispensers}
        self.framer = sc.SinopecFramer()
        self.line = None
        self.stats = {"polls": 0, "timeouts": 0, "bad_frames": 0, "cycles": 0, "sales": 0, "records": 0,
                      "acks": 0, "gap_reads": 0, "duplicates": 0, "unanswered_requests": 0, "cycle_ms": 0.0,
                      "started": time.time(), "first_poll": None}

    # ---------------------------------------------------------------- restart

    def _restore_chain(self) -> None:
        """Where each nozzle's totals chain stood, and the last TTC per dispenser, from the store.

        The chain is the latest accounted point of the nozzle: its last sale, its last gap record, or
        its last trusted totals reading (taken while nothing was pending), whichever is newest. Read
        from the store file read-only; when that fails, from the store writer's last sales.
        """
        try:
            self._restore_from_file()
            return
        except Exception as exc:  # no store file yet, or an older layout: the writer's view will do
            self.ctx.log.info("store file not readable for the chain (%s); asking the store writer", exc)
        for d, n, sale in last_sales(self.ctx, ((x, n) for x in self.dispensers for n in x.cfg.nozzles)):
            raw = sale.get("raw") or []
            if len(raw) == 5:
                d.chain[n.number] = (raw[3], raw[4])
            ttc = sale.get("pump_txn")
            if isinstance(ttc, int) and (d.last_ttc is None or ttc > d.last_ttc):
                d.last_ttc = ttc

    def _restore_from_file(self) -> None:
        from store.ringstore import open_readonly

        conn = open_readonly(self.ctx.config.store.path)
        try:
            for d in self.dispensers:
                for n in d.cfg.nozzles:
                    stream = records.sale_stream(n.id)
                    best: tuple[float, tuple] | None = None
                    row = conn.execute("SELECT kind, key, t, body FROM records WHERE stream=? AND kind IN ('sale', 'gap') "
                                       "ORDER BY seq DESC LIMIT 1", (stream,)).fetchone()
                    if row and row[0] == "sale":
                        raw = json.loads(row[3]).get("raw") or []
                        if len(raw) == 5 and raw[3] is not None:
                            best = (row[2], (raw[3], raw[4]))
                    elif row and row[1] and row[1].startswith("gap:"):
                        best = (row[2], (int(row[1].split(":")[2]), None))
                    for t, body in conn.execute("SELECT t, body FROM records WHERE nozzle=? AND kind='totals' "
                                                "ORDER BY t DESC LIMIT 20", (n.id,)):
                        b = json.loads(body)
                        if b.get("trusted") and b.get("port") == self.port.name and isinstance(b.get("raw_total"), int):
                            if best is None or t > best[0]:
                                best = (t, (b["raw_total"], None))
                            break
                    if best:
                        d.chain[n.number] = best[1]
                    row = conn.execute("SELECT body FROM records WHERE stream=? AND kind='sale' ORDER BY seq DESC LIMIT 1",
                                       (stream,)).fetchone()
                    ttc = json.loads(row[0]).get("pump_txn") if row else None
                    if isinstance(ttc, int) and (d.last_ttc is None or ttc > d.last_ttc):
                        d.last_ttc = ttc
                prefix = f"ttc:{self.port.name}:{d.cfg.address}:"
                for (key,) in conn.execute("SELECT key FROM records WHERE stream IN ('event', 'alarm') AND key >= ? "
                                           "AND key < ? ", (prefix, prefix + "~")):
                    ttc = int(key[len(prefix):])
                    if d.last_ttc is None or ttc > d.last_ttc:
                        d.last_ttc = ttc
        finally:
            conn.close()

    # ---------------------------------------------------------------- records

    def _where(self, d: Dispenser) -> dict:
        return {"port": self.port.name, "pump": d.cfg.address}

    def _take_record(self, d: Dispenser, rec: sc.TransactionRecord, source: str) -> bool:
        """Make one 32H record durable (sale, or event for non-fuel records). True if newly stored.

        Records at or below the last TTC (a re-sent record, or an old one read back by the PC) are
        stored without the totals-chain check and do not move the chain.
        """
        ttc = rec.ttc
        in_order = d.last_ttc is None or ttc > d.last_ttc
        if not in_order and ttc + TTC_RESET_BACKSTEP < d.last_ttc:
            self.ctx.capture([records.event("ttc_reset", **self._where(d), last_ttc=d.last_ttc, ttc=ttc)])
            in_order = True
        kind = rec.trans_type & 0x0F
        when = rec.datetime
        extra = {"ttc": ttc, "txn_time": when.isoformat() if when else None, "trans_type": rec.trans_type,
                 "payment": rec.type_name, "pump_grade": rec.grade_code, "source": source}
        nozzle_cfg = d.by_number.get(rec.nozzle)
        new = False
        if kind in NON_FUEL_TYPES:
            ev = records.event("card_record", **self._where(d), logical_nozzle=rec.nozzle, volume_raw=rec.volume,
                               amount_raw=rec.amount, price_raw=rec.price, vol_total_raw=rec.volume_total, **extra)
            ev["key"] = f"ttc:{self.port.name}:{d.cfg.address}:{ttc}"
            new = not self.ctx.capture([ev])[0][2]
        elif nozzle_cfg is None:
            al = records.alarm("unconfigured_nozzle", **self._where(d), logical_nozzle=rec.nozzle, volume=rec.volume,
                               amount=rec.amount, vol_total=rec.volume_total, **extra)
            al["key"] = f"ttc:{self.port.name}:{d.cfg.address}:{ttc}"
            new = not self.ctx.capture([al])[0][2]
        else:
            start = d.chain.get(rec.nozzle) if in_order else None
            raw = records.RawSale(volume=rec.volume, amount=rec.amount, price=rec.price, vol_total=rec.volume_total,
                                  amt_total=None, pump_txn=ttc)
            sale, raised = records.sale(self.ctx.station, self.port, d.cfg, nozzle_cfg, raw,
                                        start[0] if start else None, start[1] if start else None,
                                        self.ctx.tolerance, extra)
            gaps = [r for r in raised if r["kind"] == "gap"]
            alarms = [r for r in raised if r["kind"] != "gap"]
            for a in alarms:  # a re-sent record must not raise its alarms twice
                a["key"] = f"{sale['stream']}:{sale['key']}:{a['body']['alarm']}"
            results = self.ctx.capture([*gaps, sale, *alarms])
            new = not results[len(gaps)][2]
            if in_order:
                d.chain[rec.nozzle] = (rec.volume_total, None)
            if new:
                d.sales += 1
                self.stats["sales"] += 1
        if in_order:
            d.last_ttc = ttc
        if new:
            d.records += 1
            self.stats["records"] += 1
        else:
            self.stats["duplicates"] += 1
        return new

    def _ttc_gap(self, d: Dispenser, first: int, last: int, reason: str) -> None:
        al = records.alarm("ttc_gap", **self._where(d), first_ttc=first, last_ttc=last, missing=last - first + 1,
                           reason=reason)
        al["key"] = f"ttcgap:{self.port.name}:{d.cfg.address}:{first}:{last}"
        self.ctx.capture([al])
        self.ctx.log.warning("dispenser %d: TTC %d..%d missing (%s)", d.cfg.address, first, last, reason)

    def _on_realtime(self, d: Dispenser, msg: sc.RealTimeInfo) -> None:
        fuelling = {n.nozzle: (n.volume, n.amount, n.price) for n in msg.nozzles if isinstance(n, sc.Fuelling)}
        d.fuelling = fuelling
        if fuelling:
            d.phase, d.quiet = "fuelling", 0
            for number in fuelling:
                if number not in d.by_number and ("noz", number) not in d.warned:
                    d.warned.add(("noz", number))
                    self.ctx.capture([records.alarm("unconfigured_nozzle", **self._where(d), logical_nozzle=number)])
        else:
            d.phase = "card" if msg.nozzles else "idle"
            d.quiet += 1
        self._update_states(d)
        self._settle_readings(d)

    def _on_totals(self, d: Dispenser, msg: sc.TotalsReply) -> None:
        """38H totals: snapshots now, and a reading to settle against the totals chain once the
        dispenser is quiet (a record pending at the time of the reading has then been recorded)."""
        for t in msg.totals:
            d.totals[t.nozzle] = t.volume_total
            if t.nozzle in d.by_number:
                d.readings[t.nozzle] = t.volume_total
        # A fill can start and end between two polls, its record still held back: quiet before the
        # reading proves nothing. The reading settles after QUIET_POLLS quiet answers from now on.
        d.quiet = 0
        now = time.monotonic()
        if now >= d.next_snapshot:
            reason = "periodic" if d.snapshots else "startup"
            out = []
            for number, n in d.by_number.items():
                if number in d.totals:
                    rec = records.totals(n, self.port.name, d.cfg.address, d.totals[number], None, reason)
                    rec["body"].update(raw_total=d.totals[number], trusted=False)
                    out.append(rec)
            d.snapshots += 1
            d.next_snapshot = now + self.ctx.config.totals_snapshot_interval
            self.ctx.capture(out)

    def _quiet(self, d: Dispenser) -> bool:
        """Nothing can be pending: no fill, and enough 31H answers since the last 32H."""
        return d.online and d.phase in ("idle", "card") and d.quiet >= QUIET_POLLS

    def _settle_readings(self, d: Dispenser) -> None:
        """Totals read earlier, compared with the chain once every record that could have been
        pending at the reading has been recorded (QUIET_POLLS quiet answers since the reading): an
        advance beyond the chain is fuel sold unseen (a gap record); a nozzle without a chain starts
        one here, kept durable by a trusted totals record for the next restart."""
        if not d.readings or not self._quiet(d):
            return
        out = []
        for number, reading in d.readings.items():
            n = d.by_number[number]
            found = records.reading_gap(self.port, d.cfg, n, d.chain.get(number), (reading, None), self.ctx.tolerance)
            if found:
                out.append(found)
                d.chain[number] = (reading, None)
            elif number not in d.chain:
                d.chain[number] = (reading, None)
                rec = records.totals(n, self.port.name, d.cfg.address, reading, None, "chain_start")
                rec["body"].update(raw_total=reading, trusted=True)
                out.append(rec)
        d.readings.clear()
        if out:
            self.ctx.capture(out)

    def _on_info(self, d: Dispenser, msg: sc.InfoReply) -> None:
        d.info = msg
        out = []
        when = msg.datetime
        info = {"dispenser_name": msg.name, "province": msg.province, "city": msg.city, "superior_unit": msg.superior_unit,
                "station_id": msg.station_id, "nozzles": list(msg.nozzles),
                "versions": sc.message_to_dict(msg)["versions"], "vendor": msg.vendor.hex(" ").upper(),
                "dispenser_time": when.isoformat() if when else None,
                "clock_offset_s": round(when.timestamp() - time.time(), 1) if when else None}
        ev = records.event("dispenser_info", **self._where(d), **info)
        stable = {k: v for k, v in info.items() if k not in ("dispenser_time", "clock_offset_s")}
        ev["key"] = f"info:{self.port.name}:{d.cfg.address}:{_digest(stable)}"  # once per content, across restarts
        out.append(ev)
        ident = records.NozzleIdentity(pump_identity=f"{msg.name}/{msg.station_id}")
        if ident != d.identity:
            for n in d.cfg.nozzles:
                rec = records.identity(n.id, ident, d.identity, self.port.name, d.cfg.address)
                rec["key"] = f"ident:{self.port.name}:{d.cfg.address}:{n.id}:{_digest(d.identity)}:{_digest(ident)}"
                out.append(rec)
            d.identity = ident
        configured = sorted(d.by_number)
        reported = sorted(msg.nozzles)
        if reported != configured and ("config", tuple(reported)) not in d.warned:
            d.warned.add(("config", tuple(reported)))
            out.append(records.alarm("nozzle_config_mismatch", **self._where(d), configured=configured,
                                     reported=reported))
        self.ctx.capture(out)

    def _on_error(self, d: Dispenser, msg: sc.DispenserError) -> None:
        if msg.data != d.last_error:
            d.last_error = msg.data
            self.ctx.capture([records.alarm("dispenser_error", **self._where(d), data=msg.data.hex(" ").upper())])

    def _on_request(self, d: Dispenser, msg: sc.RawMessage) -> None:
        """33H..36H: the dispenser asks the card system for lists or card checks. Never answered."""
        self.stats["unanswered_requests"] += 1
        if ("request", msg.command) not in d.warned:
            d.warned.add(("request", msg.command))
            self.ctx.log.warning("dispenser %d asks %s; the collector never answers it", d.cfg.address,
                                 sc.command_name(msg.command, sc.DISP))

    # ---------------------------------------------------------------- online / offline / states

    def _heard(self, d: Dispenser) -> None:
        d.silent = 0
        if not d.online:
            d.online = True
            first = not d.heard_once
            d.heard_once = True
            d.info = None
            d.info_due = 0.0
            d.totals_due = 0.0
            self.ctx.capture([records.event("pump_online", **self._where(d), first=first)])
            self._update_states(d)

    def _silence(self, d: Dispenser) -> None:
        d.silent += 1
        if (d.online and d.silent >= self.profile.offline_after) or (
                not d.heard_once and d.silent == self.profile.offline_after):
            d.online = False
            d.phase = None
            d.fuelling = {}
            d.quiet = 0
            d.readings.clear()
            self.ctx.capture([records.alarm("pump_offline", **self._where(d), nozzles=[n.id for n in d.cfg.nozzles],
                                            silent_polls=d.silent)])
            self._update_states(d)

    def _update_states(self, d: Dispenser) -> None:
        out = []
        for n in d.cfg.nozzles:
            if not d.online:
                state = records.OFFLINE if d.heard_once or d.silent >= self.profile.offline_after else None
            elif n.number in d.fuelling:
                state = records.FUELLING
            elif d.phase is None:
                state = None
            else:
                state = records.IDLE
            previous = d.states.get(n.id)
            if state is not None and state != previous:
                d.states[n.id] = state
                out.append(records.nozzle_state(n.id, state, self.port.name, d.cfg.address, previous))
        if out:
            self.ctx.capture(out)

    def _publish(self, force: bool = False) -> None:
        pumps = {}
        for d in self.dispensers:
            live = next(iter(d.fuelling.items()), None)
            pumps[f"{d.cfg.address:#x}"] = {
                "online": d.online, "status": d.phase if d.online else ("offline" if d.heard_once else None),
                "nozzle": live[0] if live else 0, "price": live[1][2] if live else None,
                "live": [live[1][0], live[1][1]] if live else None, "sales": d.sales, "records": d.records,
                "last_ttc": d.last_ttc, "name": d.info.name if d.info else None,
                "nozzles": {str(n.id): {"state": d.states.get(n.id), "totals": [d.totals.get(n.number), None],
                                        "chain": (d.chain.get(n.number) or (None,))[0],
                                        "number": n.number, "grade": n.grade_code} for n in d.cfg.nozzles},
            }
        line = self.line
        self.ctx.board.publish({"port": self.port.name, "protocol": "sinopec", "mode": self.MODE,
                                "device": self.port.device, "pid": os.getpid(), "updated": time.time(),
                                "stats": self.stats,
                                "line": {"rx": line.rx_bytes if line else 0, "tx": line.tx_bytes if line else 0,
                                         "byte_time_us": round(line.byte_time * 1e6, 1) if line else None},
                                "pumps": pumps, **self._extra_status()}, force=force)

    def _extra_status(self) -> dict:
        return {}


class SinopecPoller(SinopecBase):
    """Master mode: the collector is the station PC and polls every dispenser on the line."""

    MODE = "master"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.pc = option_int(self.options, "pc_address", 0)
        if self.pc == sc.SOF or self.pc in self.by_address:
            raise ValueError(f"options.pc_address {self.pc} clashes with 0xFA or a dispenser address")
        self.gap_read_max = option_int(self.options, "gap_read_max", MAX_GAP_READ, 0, 10_000)

    def run(self) -> None:
        ctx = self.ctx
        self.line = Line(self.port.device, self.profile)
        ctx.log.info("polling %d Sinopec dispenser(s) on %s as PC %d", len(self.dispensers), self.port.device, self.pc)
        self._restore_chain()
        try:
            poll_cycles(ctx, self.dispensers, self._visit, self.stats, self._publish, self.profile.poll_interval)
        finally:
            self._publish(force=True)
            self.line.close()

    # ---------------------------------------------------------------- one exchange

    def _exchange(self, d: Dispenser, message):
        """Send one read-only message; return the dispenser's decoded reply, None on silence, or
        False for a garbled reply (the dispenser is there but said nothing usable)."""
        if not isinstance(message, READ_ONLY_MESSAGES) or (isinstance(message, sc.TransactionAck) and message.result):
            self.ctx.log.error("refused to send %r: the collector only reads", message)  # never by construction
            return None
        d.frame_no = (d.frame_no + 1) % sc.SOF  # B3 counts 0..F9: a header byte is never 0xFA
        raw = sc.encode_message(message, dispenser=d.cfg.address, pc=self.pc, frame_no=d.frame_no)
        if self.profile.inter_command_gap:
            time.sleep(self.profile.inter_command_gap)
        self.line.write(raw)
        if isinstance(message, sc.TransactionAck):
            return None  # the dispenser does not answer an acknowledgement
        deadline = time.monotonic() + self.profile.response_timeout + len(raw) * self.line.byte_time
        while True:
            chunk = self.line.read_available(deadline - time.monotonic())
            if not chunk:
                self.framer.reset()
                return None
            for item in self.framer.feed(chunk):
                if isinstance(item, sc.FramingError):
                    if item.reason != "noise outside a frame" or item.raw:
                        self.stats["bad_frames"] += 1
                    continue
                if item.b1 != self.pc or item.b2 != d.cfg.address or item.b3 != d.frame_no:
                    continue  # a late answer to an earlier request, or another talker
                try:
                    return sc.decode_message(item, sc.DISP)
                except sc.SinopecCodecError as exc:
                    self.stats["bad_frames"] += 1
                    self.ctx.log.warning("dispenser %d: %s", d.cfg.address, exc)
                    return False
            deadline = max(deadline, time.monotonic() + 4 * self.line.byte_time + 0.002)

    # ---------------------------------------------------------------- one dispenser visit

    def _visit(self, d: Dispenser) -> None:
        now = time.monotonic()
        if d.info is None and now >= d.info_due and (d.online or not d.heard_once):
            reply = self._exchange(d, sc.InfoRequest())
            d.info_due = now + (INFO_RETRY if reply is not None else 5.0)
            if isinstance(reply, sc.InfoReply):
                self._heard(d)
                self._on_info(d, reply)
        if not self._poll(d):
            return
        if self._quiet(d) and time.monotonic() >= d.totals_due:
            reply = self._exchange(d, sc.TotalsRequest())
            if isinstance(reply, sc.TotalsReply):
                self._on_totals(d, reply)
                d.totals_due = time.monotonic() + self.ctx.config.totals_snapshot_interval
            else:
                d.totals_due = time.monotonic() + 2.0

    def _poll(self, d: Dispenser) -> bool:
        """30H until the dispenser has no transaction left to give. False if it did not answer."""
        for _ in range(MAX_RECORDS_PER_VISIT):
            if self.ctx.stopping():
                return False
            self.stats["polls"] += 1
            if self.stats["first_poll"] is None:
                self.stats["first_poll"] = time.time()
            versions = d.info.versions if d.info else sc.ListVersions()
            reply = self._exchange(d, sc.GeneralQuery.at(dt.datetime.now(), versions))
            if reply is None:
                self.stats["timeouts"] += 1
                self._silence(d)
                return False
            self._heard(d)
            if isinstance(reply, sc.TransactionRecord):
                d.quiet = 0
                self._collect(d, reply)
                continue
            if isinstance(reply, sc.RealTimeInfo):
                self._on_realtime(d, reply)
            elif isinstance(reply, sc.DispenserError):
                self._on_error(d, reply)
            elif isinstance(reply, sc.RawMessage):
                d.quiet = 0
                self._on_request(d, reply)
            return True
        return True

    def _collect(self, d: Dispenser, rec: sc.TransactionRecord) -> None:
        """Store one uploaded record, reading back any TTCs skipped before it, then acknowledge it."""
        last = d.last_ttc
        if last is not None and last + 1 < rec.ttc <= last + TTC_RESET_BACKSTEP:
            self._recover(d, last + 1, rec.ttc - 1)
        self._take_record(d, rec, "upload")  # durable first: returns once committed and fsynced
        self._exchange(d, sc.TransactionAck(rec.ttc))
        self.stats["acks"] += 1

    def _recover(self, d: Dispenser, first: int, last: int) -> None:
        if last - first + 1 > self.gap_read_max:
            self._ttc_gap(d, first, last - self.gap_read_max, "too many missing to read back")
            first = last - self.gap_read_max + 1
        missing: list[tuple[int, str]] = []
        recovered = 0
        for ttc in range(first, last + 1):
            if self.ctx.stopping():
                return
            reply = None
            for _ in range(2):
                reply = self._exchange(d, sc.ReadRecordRequest(ttc))
                self.stats["gap_reads"] += 1
                if reply is not None:
                    break
            if isinstance(reply, sc.TransactionRecord) and reply.ttc == ttc:
                self._take_record(d, reply, "read")
                self._exchange(d, sc.TransactionAck(ttc))
                self.stats["acks"] += 1
                recovered += 1
            else:
                missing.append((ttc, "no such record (3FH)" if isinstance(reply, sc.NoSuchRecord) else "no answer"))
        run: list[tuple[int, str]] = []
        for item in [*missing, (None, None)]:  # contiguous runs with one reason become one alarm
            if run and (item[0] is None or item[0] != run[-1][0] + 1 or item[1] != run[-1][1]):
                self._ttc_gap(d, run[0][0], run[-1][0], run[0][1])
                run = []
            if item[0] is not None:
                run.append(item)
        if missing:
            d.totals_due = 0.0  # the totals tell which nozzle the lost records sold on, and how much
        if recovered:
            self.ctx.capture([records.event("ttc_gap_recovered", **self._where(d), first_ttc=first, last_ttc=last,
                                            recovered=recovered, missing=len(missing))])

