"""Sinopec IC-card dispenser simulator: 1-N dispensers (card modules) on one line, each with 1-4
nozzles, on a pseudo-terminal.

Speaks the bytes of ``drivers.sinopec.codec`` (imported, never copied) and follows the dispenser
firmware of reference §5.3 (PM30210403, ``PosMessage_Polling`` and friends):

* every 30H gets one reply: 31H real-time information (idle, card inserted, fuelling progress), or
  the oldest unacknowledged 32H transaction record, or a 33H download request when the 30H's
  price-table / station-information versions differ from the dispenser's own;
* after a fill the dispenser answers 31H three more times (the firmware's SENDEOT) before offering
  the record; while fuelling it alternates 31H and any pending upload;
* a 32H upload is offered once and then waits for the PC's 32H acknowledgement; without one it is
  offered again after ``resend_after`` seconds (the firmware's 8 s timer). The acknowledgement has
  no reply. An acknowledgement that carries a TTC must name the record in flight;
* 38H totals are answered only while no nozzle is fuelling (the firmware checks its idle flag);
* 3AH information; 3EH read by TTC answers the 32H record or 3FH no such record;
* any other PC command (list download answers, card checks, error acknowledgement) is written to
  the ground truth as a violation: a read-only collector never sends one.

Customers (card holders or cash) arrive on their own schedule whether anyone polls or not. Every
completed sale is a ground-truth JSON line: ``{"port", "address", "nozzle", "volume", "amount",
"price", "vol_total", "amt_total", "ttc", "t"}`` (integers in the protocol's units: 0.01 L, fen,
fen/L). The simulator's own counters (uploads, acknowledgements, resends, 3EH reads...) go to a
JSON status file, ``<link>.status.json`` unless the spec names one.

Spec (JSON)::

    {"name": "p01", "link": "/tmp/x/tty-p01", "truth": "/tmp/x/truth.jsonl", "seed": 1,
     "gap": [2, 8], "fill_seconds": [3, 10], "volume": [5, 60], "pace": 1.0, "max_sales": null,
     "card_share": 0.5, "resend_after": 8.0, "status": null,
     "pumps": [{"address": 1, "name": "DISP-01", "station_id": 4401, "ttc": 1000,
                "versions": {"price_table": 3, "station_info": 1},
                "nozzles": [{"number": 1, "price": 785, "vol_total": 1000000, "amt_total": 7850000,
                             "grade": 1092}]}]}

Control (datagram socket at ``<link>.ctl``): ``silence <address|all> on|off``; ``close`` (no new
customers) and ``open``; ``skip <address> <n>``: the next n records of that dispenser are
acknowledged by someone else (never uploaded, still readable by 3EH: a TTC gap the collector must
read back); ``forget <address> <n>``: the next n records are lost (3EH answers 3FH); ``deaf
<address|all> on|off``: ignore acknowledgements, so every upload is offered again and again;
``sell <address|all> [nozzle]``: a cash sale completes at once, with no fuelling state on the line
(tests use it to have a record pending at a chosen moment).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import selectors
import signal
import subprocess
import time
from collections import OrderedDict, deque

from drivers.sinopec import codec as sc
from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty

EOT_REPLIES = 3  # the firmware's SENDEOT: 31H three times after a fill before offering the record
MAX_RECORDS = 5000


def _now_bcd() -> tuple[int, int]:
    now = dt.datetime.now()
    return int(now.strftime("%Y%m%d")), int(now.strftime("%H%M%S"))


class SimNozzle:
    def __init__(self, spec: dict) -> None:
        self.number = spec["number"]
        self.price = spec.get("price", 785)
        self.vol_total = spec.get("vol_total", 1_000_000)
        self.amt_total = spec.get("amt_total", 7_850_000)
        self.grade = spec.get("grade", 1092)


class SimDispenser:
    def __init__(self, spec: dict, line: SinopecLine) -> None:
        self.line = line
        self.address = spec["address"]
        self.name = spec.get("name", f"DISP-{self.address:02d}")
        self.station_id = spec.get("station_id", 4401)
        self.province = spec.get("province", 44)
        self.city = spec.get("city", 3)
        self.superior = spec.get("superior_unit", 1000)
        self.versions = sc.ListVersions(**spec.get("versions", {"price_table": 3, "station_info": 1}))
        self.nozzles = {n["number"]: SimNozzle(n) for n in spec["nozzles"]}
        self.ttc = spec.get("ttc", 1000)  # the last TTC used
        self.store: OrderedDict[int, sc.TransactionRecord] = OrderedDict()
        self.unsent: deque[int] = deque()  # TTCs waiting for upload, oldest first
        self.uploading: int | None = None
        self.upload_sent = 0.0
        self.reading: int | None = None  # record sent in answer to 3EH, waiting for its acknowledgement
        self.eot = 0
        self.busy_toggle = 0
        self.download_until = 0.0
        self.silent = False
        self.deaf = False
        self.skip = 0
        self.forget = 0
        # the forecourt
        self.phase = "idle"  # idle, card, fuelling
        self.card = None  # (asn, balance)
        self.nozzle: SimNozzle | None = None
        self.target = 0
        self.fill_started = 0.0
        self.fill_duration = 1.0
        self.next_event = time.monotonic() + line.rng.uniform(0.2, line.gap[1])
        # counters for the status file
        self.uploads: dict[int, int] = {}
        self.acked: list[int] = []
        self.resends = 0
        self.reads: list[int] = []
        self.no_such: list[int] = []
        self.download_requests = 0
        self.totals_unanswered = 0
        self.bad_acks = 0
        self.ignored_acks = 0
        self.last_time: int | None = None

    # ---------------------------------------------------------------- the forecourt

    def step(self, now: float) -> None:
        line = self.line
        if now < self.next_event:
            return
        line._dirty = True
        if self.phase == "idle":
            if not line.open_for_business():
                self.next_event = now + 0.5
                return
            line.started += 1
            self.nozzle = line.rng.choice(list(self.nozzles.values()))
            if line.rng.random() < line.card_share:
                asn = bytes.fromhex("1000") + line.rng.getrandbits(64).to_bytes(8, "big")
                self.card = (asn, line.rng.randint(10_000, 500_000))
                self.phase, self.next_event = "card", now + line.rng.uniform(0.2, 0.6) * line.pace
            else:
                self.card = None
                self._start_fill(now)
        elif self.phase == "card":
            self._start_fill(now)
        elif self.phase == "fuelling":
            if now - self.fill_started < self.fill_duration:
                self.next_event = now + 0.25
                return
            self._complete()
            self.phase, self.next_event = "idle", now + line.rng.uniform(*line.gap)

    def sell(self, nozzle: int | None = None) -> None:
        """A whole cash sale at once (no fuelling state on the line): the record is simply there."""
        if self.phase != "idle":
            return
        self.nozzle = self.nozzles[nozzle] if nozzle else self.line.rng.choice(list(self.nozzles.values()))
        self.card = None
        self.target = int(self.line.rng.uniform(*self.line.volume) * 100)
        self._complete()

    def _start_fill(self, now: float) -> None:
        line = self.line
        self.target = int(line.rng.uniform(*line.volume) * 100)
        self.fill_started, self.fill_duration = now, line.rng.uniform(*line.fill_seconds)
        self.phase, self.next_event = "fuelling", now + 0.25

    def _progress(self) -> tuple[int, int]:
        done = min(1.0, (time.monotonic() - self.fill_started) / self.fill_duration)
        volume = int(self.target * done)
        return volume, self._amount(volume)

    def _amount(self, volume: int) -> int:
        return (volume * self.nozzle.price + 50) // 100  # 0.01 L x fen/L -> fen, rounded

    def _complete(self) -> None:
        n = self.nozzle
        volume = self.target
        amount = self._amount(volume)
        n.vol_total += volume
        n.amt_total += amount
        self.ttc += 1
        date, hms = _now_bcd()
        asn, balance = self.card if self.card else (bytes(10), 0)
        record = sc.TransactionRecord(
            ttc=self.ttc, trans_type=0x00 if self.card else 0x07, date=date, time=hms, card_asn=asn,
            card_balance=max(0, balance - amount), amount=amount, card_ctc=self.ttc & 0xFFFF,
            card_tac=bytes(4), psam_gmac=bytes(4), psam_tac=bytes(4), psam_asn=bytes(10),
            psam_tid=bytes.fromhex("440300000001"), psam_ttc=self.ttc, debit_source=0, settlement_unit=0,
            card_type=1 if self.card else 0, key_version=0x01, nozzle=n.number, grade_code=n.grade,
            volume=volume, price=n.price, employee=0, volume_total=n.vol_total)
        if self.forget:
            self.forget -= 1
        else:
            self.store[self.ttc] = record
            while len(self.store) > MAX_RECORDS:
                self.store.popitem(last=False)
            if self.skip:
                self.skip -= 1
            else:
                self.unsent.append(self.ttc)
        self.eot = EOT_REPLIES
        self.phase, self.card = "idle", None
        self.line.record_sale({"port": self.line.name, "address": self.address, "nozzle": n.number,
                               "volume": volume, "amount": amount, "price": n.price,
                               "vol_total": n.vol_total, "amt_total": n.amt_total, "ttc": self.ttc,
                               "t": round(time.time(), 3)})

    # ---------------------------------------------------------------- the line

    def _realtime(self) -> sc.RealTimeInfo:
        if self.phase == "fuelling":
            volume, amount = self._progress()
            return sc.RealTimeInfo((sc.Fuelling(self.nozzle.number, 0, amount, volume, self.nozzle.price),))
        if self.phase == "card":
            asn, balance = self.card
            return sc.RealTimeInfo(tuple(sc.CardInserted(n, asn, 0, balance) for n in self.nozzles))
        return sc.RealTimeInfo()

    def on_frame(self, frame: sc.Frame, now: float) -> sc._Message | None:
        """The reply to a frame addressed to this dispenser, or None."""
        if self.silent:
            return None
        try:
            msg = sc.decode_message(frame, sc.PC)
        except sc.SinopecCodecError as exc:
            self.line.record_violation(self.address, f"undecodable frame: {exc}", frame.data)
            return None
        if self.uploading is not None and now - self.upload_sent > self.line.resend_after:
            self.uploading = None  # the firmware's ResetTradeFlg: offer it again on a later poll
            self.reading = None
        if self.download_until and now > self.download_until:
            self.download_until = 0.0
        if isinstance(msg, sc.GeneralQuery):
            return self._on_poll(msg, now)
        if isinstance(msg, sc.TransactionAck):
            self._on_ack(msg)
            return None
        if isinstance(msg, sc.TotalsRequest):
            if self.phase == "fuelling":
                self.totals_unanswered += 1
                return None
            return sc.TotalsReply(tuple(sc.NozzleTotal(n.number, n.vol_total) for n in self.nozzles.values()))
        if isinstance(msg, sc.InfoRequest):
            date, hms = _now_bcd()
            return sc.InfoReply(self.name, self.province, self.city, self.superior, self.station_id,
                                date * 1_000_000 + hms, tuple(self.nozzles), self.versions)
        if isinstance(msg, sc.ReadRecordRequest):
            self.reads.append(msg.ttc)
            record = self.store.get(msg.ttc)
            if record is None:
                self.no_such.append(msg.ttc)
                return sc.NoSuchRecord(msg.ttc)
            self.reading = msg.ttc
            self.upload_sent = now
            return record
        self.line.record_violation(self.address, f"write command {frame.command:02X}H", frame.data)
        return None

    def _on_poll(self, msg: sc.GeneralQuery, now: float) -> sc._Message:
        self.last_time = msg.time
        v = msg.versions
        if not self.download_until and (v.price_table != self.versions.price_table
                                        or v.station_info != self.versions.station_info):
            self.download_requests += 1
            self.download_until = now + self.line.resend_after
            kind = 4 if v.price_table != self.versions.price_table else 5
            return sc.RawMessage(0x33, bytes((kind,)) + v.base_blacklist.to_bytes(2, "big"), sc.DISP)
        if self.phase == "fuelling":
            self.busy_toggle ^= 1
            if self.busy_toggle:
                return self._realtime()
        if self.eot:
            self.eot -= 1
            return self._realtime()
        while self.unsent and self.unsent[0] not in self.store:
            self.unsent.popleft()  # fell out of the record store
        if self.unsent and self.uploading is None:
            ttc = self.unsent[0]
            if self.uploads.get(ttc):
                self.resends += 1
            self.uploads[ttc] = self.uploads.get(ttc, 0) + 1
            self.uploading, self.upload_sent = ttc, now
            return self.store[ttc]
        return self._realtime()

    def _on_ack(self, msg: sc.TransactionAck) -> None:
        if self.deaf:
            self.ignored_acks += 1
            return
        if not msg.accepted:  # the PC rejects the record (a T-MAC error): it will be offered again
            self.reading = None
            return
        if msg.ttc is not None:  # a long acknowledgement names its record
            if msg.ttc == self.reading:
                self.reading = None
            elif msg.ttc == self.uploading:
                self._advance()
            else:
                self.bad_acks += 1
            return
        if self.reading is not None:  # the firmware's order: a 3EH read first, then the upload
            self.reading = None
        elif self.uploading is not None:
            self._advance()
        else:
            self.bad_acks += 1

    def _advance(self) -> None:
        ttc = self.uploading
        self.uploading = None
        if self.unsent and self.unsent[0] == ttc:
            self.unsent.popleft()
        self.acked.append(ttc)

    def status(self) -> dict:
        return {"ttc": self.ttc, "phase": self.phase, "unsent": list(self.unsent)[:50],
                "uploading": self.uploading, "uploads": {str(k): v for k, v in list(self.uploads.items())[-200:]},
                "acked": self.acked[-200:], "acks": len(self.acked), "resends": self.resends,
                "reads": self.reads[-200:], "no_such": self.no_such[-200:],
                "download_requests": self.download_requests, "totals_unanswered": self.totals_unanswered,
                "bad_acks": self.bad_acks, "ignored_acks": self.ignored_acks, "last_time": self.last_time,
                "silent": self.silent, "deaf": self.deaf}


class SinopecLine:
    def __init__(self, spec: dict) -> None:
        self.name = spec["name"]
        self.rng = random.Random(spec.get("seed", 1))
        self.gap = tuple(spec.get("gap", (2.0, 8.0)))
        self.fill_seconds = tuple(spec.get("fill_seconds", (3.0, 10.0)))
        self.volume = tuple(spec.get("volume", (5.0, 60.0)))
        self.pace = spec.get("pace", 1.0)
        self.max_sales = spec.get("max_sales")
        self.card_share = spec.get("card_share", 0.5)
        self.resend_after = spec.get("resend_after", 8.0)
        self.pc_address = spec.get("pc_address")  # None: answer any PC
        self.started = 0
        self.closed = bool(spec.get("closed", False))  # no customers until "open"
        self.truth = open(spec["truth"], "a", buffering=1)
        self.status_path = spec.get("status") or spec["link"] + ".status.json"
        self.dispensers = {p["address"]: SimDispenser(p, self) for p in spec["pumps"]}
        self.pty = SimPty(spec["link"])
        self.framer = sc.SinopecFramer()
        self.ctl_path = spec["link"] + ".ctl"
        self.sales = 0
        self.violations = 0
        self.frames = 0
        self.bad_frames = 0
        self._dirty = True
        self._published = 0.0

    def open_for_business(self) -> bool:
        return not self.closed and (self.max_sales is None or self.started < self.max_sales)

    def record_sale(self, sale: dict) -> None:
        self.sales += 1
        self._dirty = True
        self.truth.write(json.dumps(sale) + "\n")

    def record_violation(self, address: int, what: str, data: bytes) -> None:
        self.violations += 1
        self.truth.write(json.dumps({"violation": what, "port": self.name, "address": address,
                                     "data": bytes(data).hex()}) + "\n")

    def on_bytes(self, data: bytes) -> None:
        now = time.monotonic()
        for frame in self.framer.feed(data):
            if isinstance(frame, sc.FramingError):
                if frame.reason != "noise outside a frame":
                    self.bad_frames += 1
                continue
            self.frames += 1
            d = self.dispensers.get(frame.b1)
            if d is None or (self.pc_address is not None and frame.b2 != self.pc_address):
                continue
            reply = d.on_frame(frame, now)
            self._dirty = True
            if reply is not None:
                self.pty.write(sc.encode_message(reply, dispenser=d.address, pc=frame.b2, frame_no=frame.b3))

    def on_control(self, text: str) -> None:
        words = text.split()
        self._dirty = True

        def targets(word):
            return self.dispensers.values() if word == "all" else [self.dispensers[int(word, 0)]]

        if words[:1] == ["silence"] and len(words) == 3:
            for d in targets(words[1]):
                d.silent = words[2] == "on"
        elif words[:1] == ["deaf"] and len(words) == 3:
            for d in targets(words[1]):
                d.deaf = words[2] == "on"
        elif words[:1] in (["skip"], ["forget"]) and len(words) == 3:
            for d in targets(words[1]):
                setattr(d, words[0], getattr(d, words[0]) + int(words[2]))
        elif words[:1] == ["sell"] and len(words) in (2, 3):
            for d in targets(words[1]):
                d.sell(int(words[2]) if len(words) == 3 else None)
        elif words == ["close"]:
            self.closed = True
        elif words == ["open"]:
            self.closed = False

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self._dirty or now - self._published < 0.2):
            return
        self._dirty, self._published = False, now
        state = {"pid": os.getpid(), "updated": time.time(), "port": self.name, "sales": self.sales,
                 "started": self.started, "closed": self.closed, "violations": self.violations,
                 "frames": self.frames, "bad_frames": self.bad_frames,
                 "busy": any(d.phase != "idle" for d in self.dispensers.values()),
                 "dispensers": {str(a): d.status() for a, d in self.dispensers.items()}}
        tmp = f"{self.status_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.status_path)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.pty.master, selectors.EVENT_READ, "line")
        ctl = bind_control(self.ctl_path)
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        running = [True]
        signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "closed", True))
        self.publish(force=True)
        try:
            while running[0]:
                now = time.monotonic()
                for d in self.dispensers.values():
                    d.step(now)
                wait = max(0.0, min(min(d.next_event for d in self.dispensers.values()) - time.monotonic(), 0.2))
                for key, _ in sel.select(timeout=wait):
                    if key.data == "line":
                        data = self.pty.read()
                        if data:
                            self.on_bytes(data)
                    else:
                        self.on_control(ctl.recv(256).decode(errors="replace"))
                        self.publish(force=True)  # a test acting on a command sees its effect at once
                self.publish()
        finally:
            self.publish(force=True)
            ctl.close()
            os.unlink(self.ctl_path)
            self.pty.close()
            self.truth.close()


# ---------------------------------------------------------------- for tests, the demo and the station


def status(spec: dict) -> dict:
    with open(spec.get("status") or spec["link"] + ".status.json") as f:
        return json.load(f)


def start(spec: dict, log=None) -> subprocess.Popen:
    """Start one dispenser-line simulator; returns once its pty link and control socket exist."""
    return launch("tools.sim.sinopec_pump", spec, log, spec["link"] + ".ctl", f"sinopec simulator {spec['name']}")


def make_port(workdir: str, name: str, first_nozzle_id: int = 1, *, mode: str = "master", seed: int = 7,
              dispensers=(1, 2), nozzles=(1, 4), truth: str | None = None, pc_address: int = 0,
              gap=(2.0, 8.0), fill_seconds=(3.0, 10.0), volume=(5.0, 60.0), max_sales=None, card_share=0.5,
              resend_after=8.0, poll_interval=0.25, response_timeout=0.3, pos: dict | None = None,
              tap: dict | None = None) -> tuple[dict, dict]:
    """One Sinopec line of a simulated station: the collector's port (a ``ports:`` entry) and the
    simulator specs to start with ``start_port``.

    ``mode="master"``: the collector polls the dispensers' pty. ``mode="listen"``: a POS master
    simulator polls the dispensers through a bus tap, and the collector opens the tap's copy of
    the line. Nozzle ids are allocated from ``first_nozzle_id``; ``port["pumps"]`` tells how many
    were used. Returns (port config dict, specs dict with keys ``pump`` and, in listen mode,
    ``pos`` and ``tap``).
    """
    from tools.station import GRADES

    rng = random.Random(seed)
    truth = truth or os.path.join(workdir, "truth.jsonl")
    bus_link = os.path.join(workdir, f"tty-{name}" if mode == "master" else f"tty-{name}-bus")
    pump_cfgs, pump_specs = [], []
    nozzle_id = first_nozzle_id
    for i in range(rng.randint(*dispensers)):
        address = 1 + i
        ncfgs, nspecs = [], []
        for number in range(1, rng.randint(*nozzles) + 1):
            code, gname, price = GRADES[(number - 1) % len(GRADES)]
            ncfgs.append({"number": number, "id": nozzle_id, "grade": {"code": code, "name": gname},
                          "decimals": {"volume": 2, "amount": 2, "price": 2, "totals": 2}})
            nspecs.append({"number": number, "price": price, "vol_total": rng.randint(10**6, 10**8),
                           "amt_total": rng.randint(10**7, 10**9), "grade": 1000 + int(code)})
            nozzle_id += 1
        pump_cfgs.append({"address": address, "name": f"DISP-{address:02d}", "nozzles": ncfgs})
        pump_specs.append({"address": address, "name": f"{name.upper()}-D{address:02d}", "ttc": rng.randint(1, 50000),
                           "station_id": 4401, "nozzles": nspecs})
    specs: dict = {"pump": {"name": name, "link": bus_link, "truth": truth, "seed": seed * 1000 + 17,
                            "gap": list(gap), "fill_seconds": list(fill_seconds), "volume": list(volume),
                            "max_sales": max_sales, "card_share": card_share, "resend_after": resend_after,
                            "pumps": pump_specs}}
    device = bus_link
    if mode == "listen":
        pos_link = os.path.join(workdir, f"tty-{name}-pos")
        device = os.path.join(workdir, f"tty-{name}")
        specs["pos"] = {"name": name, "link": pos_link, "pc_address": pc_address,
                        "dispensers": [p["address"] for p in pump_specs], **(pos or {})}
        specs["tap"] = {"master": pos_link, "bus": bus_link, "tap": device, "truth": truth,
                        "status": device + ".tap.json", "name": name, **(tap or {})}
    port = {"name": name, "device": device, "protocol": "sinopec", "mode": mode, "poll_interval": poll_interval,
            "response_timeout": response_timeout, "options": {"pc_address": pc_address}, "pumps": pump_cfgs}
    return port, specs


def start_port(specs: dict, log=None) -> list:
    """Start the simulators of a ``make_port`` line in order (dispensers, POS, tap); returns the processes."""
    procs = [start(specs["pump"], log)]
    if "tap" in specs:
        from tools.sim import bus_tap, sinopec_pos

        procs.append(sinopec_pos.start(specs["pos"], log))
        procs.append(bus_tap.start(specs["tap"], log))
    return procs


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "line spec as JSON text or @file")
    SinopecLine(json.loads(text)).run()


if __name__ == "__main__":
    main()
