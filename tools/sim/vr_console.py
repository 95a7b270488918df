"""VR tank-gauge console simulator: a TLS-350-like console with N tanks on a pseudo-terminal.

Speaks the computer format of ``drivers.vr.codec`` (imported, never copied): inventory (i201),
deliveries (i202, i20C), tank status (i205), system status (i101), leak tests (i203, i207, i208),
clock (i501, s501), units (i505), labels (i602), product codes (i603), version (i902); anything else
is answered ``9999FF1B`` as real consoles do. With a security code configured it stays silent on a
missing or wrong code; without one, a code in front of the function is read as the function (9999).

The levels move: every sale the dispenser simulators complete (tailed from their ground-truth file,
mapped nozzle -> tank by the spec) lowers its tank; scripted or commanded deliveries raise it at a
given rate; a leak lowers it steadily. A delivery is added to the console's delivery history when it
ends (its start and end volumes are the levels then, sales meanwhile included, as a real console
records them) unless reporting is off, so derived deliveries can be exercised. Every delivery is
appended to the console's own ground-truth JSON-lines file.

With ``tcp_port`` in the spec it listens on 127.0.0.1:PORT like a console's serial-to-TCP card
instead of opening a pty (``<link>`` then only names the control socket).

Control (datagram socket at ``<link>.ctl``), also usable as scripted ``events`` in the spec:
``deliver TANK LITRES SECONDS [report|noreport]``, ``leak TANK LITRES_PER_HOUR``,
``alarm CAT TYPE DEVICE on|off``, ``leaktest TANK pass|fail [SECONDS]``, ``silence on|off``,
``report_deliveries on|off``, ``security CODE|off``, ``clock_offset SECONDS``, ``unsupported CODE on|off``,
``drop`` (TCP: break the connection).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
from collections import deque
from datetime import datetime, timedelta

from drivers.vr import codec as vr
from tools.sim.common import bind_control, spec_text
from tools.sim.pty import SimPty

STATUS_DELIVERY, STATUS_LEAK_TEST = 0x1, 0x2
VERSION_TEXT = "SOFTWARE# 346330-100-B CREATED - 20.01.15.10.00"
SET_DATA = {"S501": 10}  # set commands with fixed-length data: report code -> data characters
STEP = 0.05  # seconds between level updates when nothing else happens


class SimTank:
    def __init__(self, spec: dict) -> None:
        self.number = spec["number"]
        self.product = spec.get("product", str(self.number))
        self.label = spec.get("label", f"TANK {self.number}")[:20]
        self.capacity = float(spec.get("capacity", 30000.0))
        self.max_height = float(spec.get("max_height", 2500.0))  # mm at capacity
        self.volume = float(spec.get("volume", self.capacity / 2))
        self.temperature = float(spec.get("temperature", 18.0))
        self.water = float(spec.get("water", 5.0))  # mm
        self.leak = float(spec.get("leak", 0.0))  # litres per hour
        self.deliveries: list[dict] = []  # in progress
        self.history: deque[vr.Delivery] = deque(maxlen=int(spec.get("history", 10)))
        self.results: dict[int, vr.LeakTestResult] = {}  # last result per test type
        self.last_test: vr.TankLeakTest | None = None
        self.test: dict | None = None  # leak test in progress
        self.inactive = bool(spec.get("inactive", False))  # a tank with no probe: ???????? fields

    @property
    def height(self) -> float:
        return self.volume / self.capacity * self.max_height

    @property
    def tc_volume(self) -> float:
        return self.volume * (1.0 - 0.0012 * (self.temperature - 15.0))

    def snapshot(self) -> dict:
        return {"volume": self.volume, "tc": self.tc_volume, "water": self.water, "temp": self.temperature,
                "height": self.height}

    def status(self) -> int:
        bits = STATUS_DELIVERY if any(d["report"] for d in self.deliveries) else 0
        return bits | (STATUS_LEAK_TEST if self.test else 0)

    def inventory(self) -> vr.TankInventory:
        if self.inactive:
            return vr.TankInventory(self.number, self.product, None, 7)
        return vr.TankInventory(self.number, self.product, self.status(), 7, self.volume, self.tc_volume,
                                max(0.0, self.capacity - self.volume), self.height, self.water, self.temperature,
                                self.water * self.capacity / self.max_height)

    def auto_alarms(self) -> set[int]:
        fill = self.volume / self.capacity
        out = set()
        if fill >= 0.95:
            out.add(7)  # high product
        if fill >= 0.90:
            out.add(4)  # overfill
        if fill < 0.10:
            out.add(5)  # low product
        if fill < 0.20:
            out.add(11)  # delivery needed
        return out


class TcpLine:
    """The console's serial-to-TCP card (TLS-350 TCP/IP option, usually port 10001): one client at a
    time, a new connection replaces the old one."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1)
        self.listener.setblocking(False)
        self.conn: socket.socket | None = None

    def accept(self, sel: selectors.BaseSelector) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.drop(sel)
        conn.setblocking(True)
        self.conn = conn
        sel.register(conn, selectors.EVENT_READ, "line")

    def read(self, sel: selectors.BaseSelector) -> bytes:
        try:
            data = self.conn.recv(4096) if self.conn else b""
        except OSError:
            data = b""
        if not data:
            self.drop(sel)
        return data

    def write(self, data: bytes) -> None:
        if self.conn is not None:
            try:
                self.conn.sendall(data)
            except OSError:
                pass

    def drop(self, sel: selectors.BaseSelector | None) -> None:
        if self.conn is not None:
            if sel is not None:
                sel.unregister(self.conn)
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.drop(None)
        self.listener.close()


class Console:
    def __init__(self, spec: dict, pty=None) -> None:
        self.name = spec.get("name", "atg")
        self.units = int(spec.get("units", 2))
        self.tanks = {t["number"]: SimTank(t) for t in spec["tanks"]}
        self.nozzle_tank = {(m["port"], int(m["address"]), int(m["nozzle"])): int(m["tank"])
                            for m in spec.get("nozzle_tanks", [])}
        self.security = spec.get("security_code") or None
        self.report_deliveries = bool(spec.get("report_deliveries", True))
        self.clock_offset = float(spec.get("clock_offset", 0.0))
        self.unsupported = {c.upper() for c in spec.get("unsupported", [])}
        self.silent = False
        self.alarms: set[tuple[int, int, int]] = set()
        self.sales_path = spec.get("sales")
        self.sales_file = None
        self.sales_buf = b""
        self.sales_from_start = bool(spec.get("sales_from_start", False))
        self.truth = open(spec["truth"], "a", buffering=1) if spec.get("truth") else None
        self.started = time.monotonic()
        self.events = sorted(([float(e["at"]), e["do"]] for e in spec.get("events", [])), key=lambda e: e[0])
        self.last_step = time.monotonic()
        self.buf = bytearray()
        self.sold = 0.0
        self.requests = 0
        if pty is None:
            pty = TcpLine(int(spec["tcp_port"])) if spec.get("tcp_port") else SimPty(spec["link"])
        self.pty = pty  # anything with write(bytes): the pty, a TCP line, or a test's collector
        self.ctl_path = spec.get("link", "") + ".ctl"
        self.sel: selectors.BaseSelector | None = None

    # ---------------------------------------------------------------- time and levels

    def console_now(self) -> datetime:
        return datetime.now() + timedelta(seconds=self.clock_offset)

    def step(self) -> None:
        now = time.monotonic()
        while self.events and now - self.started >= self.events[0][0]:
            self.on_control(self.events.pop(0)[1])
        dt = max(0.0, now - self.last_step)
        self.last_step = now
        for tank in self.tanks.values():
            if tank.leak:
                tank.volume = max(0.0, tank.volume - tank.leak * dt / 3600.0)
            for d in list(tank.deliveries):
                add = min(d["remaining"], d["rate"] * dt) if now < d["end_mono"] else d["remaining"]
                if add > 0:
                    t_new = (tank.volume * tank.temperature + add * d["temperature"]) / (tank.volume + add)
                    tank.volume += add
                    tank.temperature = t_new
                    d["remaining"] -= add
                if d["remaining"] <= 1e-9:
                    self._delivery_done(tank, d)
            if tank.test and now >= tank.test["end_mono"]:
                self._leak_test_done(tank)
        self._read_sales()

    def _read_sales(self) -> None:
        if not self.sales_path:
            return
        if self.sales_file is None:
            try:
                self.sales_file = open(self.sales_path, "rb")
            except FileNotFoundError:
                self.sales_from_start = True  # it did not exist: every line in it will be new
                return
            if not self.sales_from_start:
                self.sales_file.seek(0, os.SEEK_END)
        data = self.sales_file.read()
        if not data:
            return
        self.sales_buf += data
        *lines, self.sales_buf = self.sales_buf.split(b"\n")
        for line in lines:
            try:
                sale = json.loads(line)
                key = (sale["port"], int(sale["address"]), int(sale["nozzle"]))
                litres = sale["volume"] / 100.0
            except (ValueError, KeyError, TypeError):
                continue  # a violation line, or not a sale
            tank = self.tanks.get(self.nozzle_tank.get(key, -1))
            if tank is not None:
                tank.volume = max(0.0, tank.volume - litres)
                self.sold += litres

    def deliver(self, number: int, litres: float, seconds: float, report: bool | None = None) -> None:
        tank = self.tanks[number]
        seconds = max(0.1, seconds)
        tank.deliveries.append({
            "litres": litres, "remaining": litres, "rate": litres / seconds, "start_mono": time.monotonic(),
            "end_mono": time.monotonic() + seconds, "start_wall": time.time(), "start_console": self.console_now(),
            "start": tank.snapshot(), "report": self.report_deliveries if report is None else report,
            "temperature": tank.temperature - 2.0,
        })

    def _delivery_done(self, tank: SimTank, d: dict) -> None:
        tank.deliveries.remove(d)
        end, start = tank.snapshot(), d["start"]
        console_end = self.console_now()
        if d["report"]:
            tank.history.appendleft(vr.Delivery(
                d["start_console"].replace(second=0, microsecond=0), console_end.replace(second=0, microsecond=0), 10,
                start["volume"], start["tc"], start["water"], start["temp"], end["volume"], end["tc"], end["water"],
                end["temp"], start["height"], end["height"]))
        if self.truth:
            self.truth.write(json.dumps({
                "delivery": True, "console": self.name, "tank": tank.number, "volume": d["litres"],
                "reported": d["report"], "start_t": round(d["start_wall"], 3), "end_t": round(time.time(), 3),
                "console_start": d["start_console"].strftime("%Y-%m-%dT%H:%M"),
                "console_end": console_end.strftime("%Y-%m-%dT%H:%M"),
                "level_change": round(end["volume"] - start["volume"], 3)}) + "\n")

    def _leak_test_done(self, tank: SimTank) -> None:
        t = tank.test
        tank.test = None
        passed = t["result"] == "pass"
        rate = 0.0 if passed else 0.9
        tank.results[0] = vr.LeakTestResult(0, 0, t["start"], 1 if passed else 2, rate, t["hours"], tank.volume)
        tank.last_test = vr.TankLeakTest(tank.number, tank.product, t["start"], int(t["hours"]), 4,
                                         t["start_temp"], tank.temperature, t["start_volume"], rate)
        if passed:
            self.alarms.discard((2, 14, tank.number))
        else:
            self.alarms.add((2, 14, tank.number))  # periodic leak test fail

    def active_alarms(self) -> list[tuple[int, int, int]]:
        auto = {(2, a, t.number) for t in self.tanks.values() if not t.inactive for a in t.auto_alarms()}
        return sorted(self.alarms | auto)

    # ---------------------------------------------------------------- the line

    def on_bytes(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            if vr.ESC[0] in self.buf:  # ESC aborts: drop everything up to it
                del self.buf[:self.buf.index(vr.ESC[0]) + 1]
                continue
            start = self.buf.find(vr.SOH)
            if start < 0:
                self.buf.clear()
                return
            del self.buf[:start]
            head = 1 + (6 if self.security else 0) + 6
            again = self.buf.find(vr.SOH, 1)
            if 0 < again < head:  # a new command before this one was complete: it is dropped
                del self.buf[:again]
                continue
            if len(self.buf) < head:
                if len(self.buf) > vr.MAX_REQUEST_CHARS:
                    self.buf.clear()
                return
            function = bytes(self.buf[head - 6:head]).decode("latin-1")
            need = head + SET_DATA.get(function[:4].upper(), 0)
            if function[:1] in "sS" and function[:4].upper() not in SET_DATA:
                cr = self.buf.find(vr.CR, head)
                if cr < 0:
                    return
                need = cr + 1
            if len(self.buf) < need:
                return
            raw = bytes(self.buf[:need])
            del self.buf[:need]
            reply = self.answer(raw)
            if reply:
                self.pty.write(reply)

    def answer(self, raw: bytes) -> bytes | None:
        self.requests += 1
        self.step()
        if self.silent:
            return None
        try:
            req = vr.parse_request(raw, security_code=bool(self.security))
        except vr.VRFrameError:
            return vr.ERROR_FRAME
        if self.security and req.security_code != self.security:
            return None  # security enabled and the code is missing or wrong: no reply at all
        report = req.report.upper()
        if req.function[0] not in "is" or report in self.unsupported:
            return vr.ERROR_FRAME
        now = self.console_now()
        fn = req.function
        tanks = [t for n, t in sorted(self.tanks.items()) if req.device in (0, n)]
        if report == "I201":
            resp = vr.InventoryReport(fn, now, tuple(t.inventory() for t in tanks))
        elif report in ("I202", "I20C"):
            keep = 1 if report == "I20C" else None
            resp = vr.DeliveryReport(fn, now, tuple(
                vr.TankDeliveries(t.number, t.product, tuple(t.history)[:keep]) for t in tanks))
        elif report == "I205":
            active = self.active_alarms()
            resp = vr.TankStatusReport(fn, now, tuple(
                vr.TankAlarmStatus(t.number, tuple(a for c, a, d in active if c == 2 and d == t.number))
                for t in tanks))
        elif report == "I101":
            resp = vr.SystemStatus(fn, now, tuple(vr.SystemAlarm(c, a, d) for c, a, d in self.active_alarms()))
        elif report == "I203":
            resp = vr.LeakTestReport(fn, now, tuple(t.last_test for t in tanks if t.last_test))
        elif report == "I207":
            resp = vr.LeakTestHistory(fn, now, tuple(vr.TankLeakTestHistory(t.number) for t in tanks))
        elif report == "I208":
            resp = vr.LeakTestResults(fn, now, tuple(
                vr.TankLeakTestResults(t.number, tuple(r for _, r in sorted(t.results.items()))) for t in tanks))
        elif report == "I501":
            resp = vr.ClockReport(fn, now, now)
        elif report == "S501":
            resp = vr.ClockSetReply(fn, now, self._set_clock(req.data))
        elif report in ("I505", "I517"):
            resp = vr.SystemUnits(fn, now, vr.UnitSystem(self.units))
        elif report == "I602":
            resp = vr.TankLabels(fn, now, tuple(vr.TankLabel(t.number, t.label) for t in tanks))
        elif report == "I603":
            resp = vr.ProductCodes(fn, now, tuple(vr.TankProductCode(t.number, t.product) for t in tanks))
        elif report == "I902":
            resp = vr.VersionReport(fn, now, VERSION_TEXT)
        else:
            return vr.ERROR_FRAME
        return vr.encode_response(resp)

    def _set_clock(self, data: str) -> datetime | None:
        try:
            when = datetime.strptime(data, "%y%m%d%H%M") if len(data) == 10 and data.isdigit() else None
        except ValueError:
            when = None
        if when is None:
            return None  # ten '?': refused, clock unchanged
        self.clock_offset = (when - datetime.now()).total_seconds()
        return when

    # ---------------------------------------------------------------- control

    def on_control(self, text: str) -> None:
        w = text.split()
        try:
            if w[:1] == ["deliver"]:
                report = None if len(w) < 5 else w[4] == "report"
                self.deliver(int(w[1]), float(w[2]), float(w[3]), report)
            elif w[:1] == ["leak"]:
                self.tanks[int(w[1])].leak = float(w[2])
            elif w[:1] == ["alarm"]:
                key = (int(w[1]), int(w[2]), int(w[3]))
                (self.alarms.add if w[4] == "on" else self.alarms.discard)(key)
            elif w[:1] == ["leaktest"]:
                tank = self.tanks[int(w[1])]
                seconds = float(w[3]) if len(w) > 3 else 2.0
                tank.test = {"result": w[2], "start": self.console_now().replace(second=0, microsecond=0),
                             "end_mono": time.monotonic() + seconds, "hours": 2.0,
                             "start_temp": tank.temperature, "start_volume": tank.volume}
            elif w[:1] == ["silence"]:
                self.silent = w[1] == "on"
            elif w[:1] == ["report_deliveries"]:
                self.report_deliveries = w[1] == "on"
            elif w[:1] == ["security"]:
                self.security = None if w[1] == "off" else w[1]
            elif w[:1] == ["clock_offset"]:
                self.clock_offset = float(w[1])
            elif w == ["drop"] and isinstance(self.pty, TcpLine):  # the TCP connection breaks
                self.pty.drop(self.sel)
            elif w[:1] == ["unsupported"]:
                (self.unsupported.add if w[2] == "on" else self.unsupported.discard)(w[1].upper())
            # "close" / "open" (sent to every simulator by the station tools) mean nothing here
        except (IndexError, KeyError, ValueError):
            pass

    def next_event(self) -> float:
        busy = any(t.deliveries or t.test or t.leak for t in self.tanks.values())
        wait = STEP if busy or self.sales_path else 1.0
        if self.events:
            wait = min(wait, max(0.0, self.started + self.events[0][0] - time.monotonic()))
        return wait

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        self.sel = sel
        tcp = isinstance(self.pty, TcpLine)
        sel.register(self.pty.listener if tcp else self.pty.master, selectors.EVENT_READ, "accept" if tcp else "line")
        ctl = bind_control(self.ctl_path)
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        running = [True]
        signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # "closing time" for pump simulators: not ours
        try:
            while running[0]:
                self.step()
                for key, _ in sel.select(timeout=self.next_event()):
                    if key.data == "accept":
                        self.pty.accept(sel)
                    elif key.data == "line":
                        data = self.pty.read(sel) if tcp else self.pty.read()
                        if data:
                            self.on_bytes(data)
                    else:
                        self.on_control(ctl.recv(256).decode(errors="replace"))
        finally:
            ctl.close()
            os.unlink(self.ctl_path)
            self.pty.close()
            if self.truth:
                self.truth.close()


def read_deliveries(path: str) -> list[dict]:
    """The console's ground truth: one line per finished delivery."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            out = [json.loads(line) for line in f if line.strip()]
    return [d for d in out if d.get("delivery")]


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "console spec as JSON text or @file")
    Console(json.loads(text)).run()


if __name__ == "__main__":
    main()
