"""Sinopec card-dispenser protocol, listen mode: overhear an existing station PC <-> dispenser
conversation on a passive tap and never transmit.

The port is opened through ``ReadOnlyLine``, which has no write method at all. Both directions
arrive in wire order on one stream; a frame's direction comes from its header (PC -> dispenser:
B1 = dispenser, B2 = PC; the reverse swaps them). The PC address is ``options.pc_address`` or,
when not configured, learned from the first 30H (only a PC sends 30H).

* 31H replies give nozzle states and live progress, as in master mode.
* A 32H record from a dispenser (an upload, or the answer to the PC's own 3EH) is held until the PC
  acknowledges it; the sale is recorded at the acknowledgement with result 0, matched by the TTC
  in a long acknowledgement, or for a 1-byte acknowledgement by wire order (the last 32H that
  dispenser sent). A rejected record is dropped: the dispenser will offer it again.
* The TTC sequence is the gap detector: a recorded TTC beyond the last one + 1 raises a
  ``ttc_gap`` alarm naming the TTCs that were never seen (the collector was not listening). The
  fuel they carried is found by the totals chain: the next sale on that nozzle, or a 38H reply
  the PC reads while the dispenser is quiet, produces a gap record (``drivers.records``).
* 38H replies feed the totals and the snapshots; 3AH replies the identity.
* A dispenser the PC polls without an answer ``offline_after`` times in a row goes offline. A
  line with no traffic for ``options.silence_after`` seconds (default 30) raises
  ``listen_line_silent`` (tap unplugged, or the PC is off).
"""

from __future__ import annotations

import time

from drivers import records
from drivers.serialport import Line
from drivers.sinopec import codec as sc
from drivers.sinopec.poller import TTC_RESET_BACKSTEP, Dispenser, SinopecBase, option_int

MAX_HELD = 16  # 32H records held per dispenser waiting for the PC's acknowledgement
EXPECTS_REPLY = (sc.GeneralQuery, sc.InfoRequest, sc.ReadRecordRequest)


class ReadOnlyLine:
    """A serial line that can only be read: listen mode has no way to put a byte on the wire."""

    def __init__(self, line: Line) -> None:
        self._line = line
        self.byte_time = line.byte_time

    @property
    def rx_bytes(self) -> int:
        return self._line.rx_bytes

    @property
    def tx_bytes(self) -> int:
        return self._line.tx_bytes

    def read_available(self, timeout: float) -> bytes:
        return self._line.read_available(timeout)

    def close(self) -> None:
        self._line.close()


class SinopecListener(SinopecBase):
    MODE = "listen"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.pc = option_int(self.options, "pc_address", None)
        self.pc_configured = self.pc is not None
        self.silence_after = float(self.options.get("silence_after", 30.0))
        self.held: dict[int, dict[int, sc.TransactionRecord]] = {d.cfg.address: {} for d in self.dispensers}
        self.last_upload: dict[int, sc.TransactionRecord | None] = {d.cfg.address: None for d in self.dispensers}
        self.waiting: dict[int, bool] = {d.cfg.address: False for d in self.dispensers}
        self.last_rx = time.monotonic()
        self.line_silent = False
        self.stats.update({"frames_pc": 0, "frames_disp": 0, "foreign": 0, "unmatched_acks": 0, "rejected": 0})

    def run(self) -> None:
        ctx = self.ctx
        self.line = ReadOnlyLine(Line(self.port.device, self.profile))
        ctx.log.info("listening to %d Sinopec dispenser(s) on %s (PC address %s)", len(self.dispensers),
                     self.port.device, self.pc if self.pc_configured else "learned from the line")
        self._restore_chain()
        try:
            while not ctx.stopping():
                chunk = self.line.read_available(0.1)
                now = time.monotonic()
                if chunk:
                    self.last_rx = now
                    if self.line_silent:
                        self.line_silent = False
                        ctx.capture([records.event("listen_line_active", port=self.port.name)])
                    for item in self.framer.feed(chunk):
                        if isinstance(item, sc.FramingError):
                            if item.reason != "noise outside a frame":
                                self.stats["bad_frames"] += 1
                            continue
                        self._on_frame(item)
                elif not self.line_silent and now - self.last_rx > self.silence_after:
                    self.line_silent = True
                    ctx.capture([records.alarm("listen_line_silent", port=self.port.name,
                                               silent_s=round(now - self.last_rx, 1))])
                self._publish()
        finally:
            self._publish(force=True)
            self.line.close()

    def _quiet(self, d: Dispenser) -> bool:
        return super()._quiet(d) and not self.held[d.cfg.address]  # and every record seen has been acknowledged

    def _extra_status(self) -> dict:
        return {"pc_address": self.pc, "line_silent": self.line_silent}

    # ---------------------------------------------------------------- frames

    def _attribute(self, f: sc.Frame) -> tuple[str | None, Dispenser | None]:
        if self.pc is None and f.command == 0x30 and f.b1 in self.by_address:
            self.pc = f.b2
            self.ctx.log.info("station PC address learned from the line: %d", self.pc)
        if self.pc is not None:
            if f.b2 == self.pc and f.b1 in self.by_address:
                return sc.PC, self.by_address[f.b1]
            if f.b1 == self.pc and f.b2 in self.by_address:
                return sc.DISP, self.by_address[f.b2]
        return None, None

    def _on_frame(self, f: sc.Frame) -> None:
        direction, d = self._attribute(f)
        if d is None:
            self.stats["foreign"] += 1  # another PC address, or a dispenser not configured on this port
            return
        try:
            msg = sc.decode_message(f, direction)
        except sc.SinopecCodecError as exc:
            self.stats["bad_frames"] += 1
            self.ctx.log.warning("dispenser %d: %s", d.cfg.address, exc)
            return
        if direction == sc.PC:
            self.stats["frames_pc"] += 1
            self._from_pc(d, msg)
        else:
            self.stats["frames_disp"] += 1
            self._from_dispenser(d, msg)

    def _from_pc(self, d: Dispenser, msg) -> None:
        address = d.cfg.address
        if isinstance(msg, sc.GeneralQuery):
            self.stats["polls"] += 1
            if self.stats["first_poll"] is None:
                self.stats["first_poll"] = time.time()
        expects = isinstance(msg, EXPECTS_REPLY) or (isinstance(msg, sc.TotalsRequest) and d.phase != "fuelling")
        if self.waiting[address] and expects:
            self.stats["timeouts"] += 1  # the PC asked again: the previous request got no answer
            self._silence(d)
        self.waiting[address] = expects
        if isinstance(msg, sc.TransactionAck):
            self._on_ack(d, msg)

    def _from_dispenser(self, d: Dispenser, msg) -> None:
        address = d.cfg.address
        self.waiting[address] = False
        self._heard(d)
        if isinstance(msg, sc.RealTimeInfo):
            self._on_realtime(d, msg)
        elif isinstance(msg, sc.TransactionRecord):
            d.quiet = 0
            held = self.held[address]
            held.pop(msg.ttc, None)
            held[msg.ttc] = msg
            while len(held) > MAX_HELD:
                held.pop(next(iter(held)))
            self.last_upload[address] = msg
        elif isinstance(msg, sc.TotalsReply):
            self._on_totals(d, msg)
        elif isinstance(msg, sc.InfoReply):
            self._on_info(d, msg)
        elif isinstance(msg, sc.DispenserError):
            self._on_error(d, msg)
        elif isinstance(msg, sc.RawMessage):
            d.quiet = 0  # list download or card check requests, answered by the PC

    def _on_ack(self, d: Dispenser, ack: sc.TransactionAck) -> None:
        address = d.cfg.address
        held = self.held[address]
        if ack.ttc is not None:
            rec = held.pop(ack.ttc, None)
        else:
            rec = self.last_upload[address]
            if rec is not None:
                held.pop(rec.ttc, None)
        if rec is not None and self.last_upload[address] is rec:
            self.last_upload[address] = None
        if rec is None:
            self.stats["unmatched_acks"] += 1  # we joined between the record and its acknowledgement
            return
        if not ack.accepted:
            self.stats["rejected"] += 1
            return
        self.stats["acks"] += 1
        last = d.last_ttc
        if last is not None and last + 1 < rec.ttc <= last + TTC_RESET_BACKSTEP:
            self._ttc_gap(d, last + 1, rec.ttc - 1, "not seen on the line")
        self._take_record(d, rec, "listen")
