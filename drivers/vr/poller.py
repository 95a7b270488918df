"""Veeder-Root (VR) tank-gauge poller: owns one console port (RS-232, or a serial-to-TCP card at
``socket://host:10001``) and turns what the console reports into durable tank records.

What it asks, one command at a time, each on its own schedule (all configurable on the port):
inventory ``i201`` every few seconds (stored when a tank moved beyond its thresholds, and as a
snapshot at least every ``snapshot_interval``); deliveries ``i202`` (falls back to ``i20C``),
stored once each by tank + start time however often the rolling history is read again; alarms
``i101`` (falls back to ``i205``), stored when they appear and when they clear; leak-test results
``i208``; the console clock ``i501``, set with ``s501`` only when ``set_clock`` is configured.

Deliveries are also found from level rises net of the sales of the tank's nozzles
(``drivers.vr.reconcile``): a rise the console does not report within ``grace`` becomes a derived
delivery. Wet-stock reconciliation per product runs here too, at interval boundaries taken when the
product's nozzles are not fuelling and no delivery is in progress or unresolved.

The only commands it sends are inquiries (``i``) and, when configured, the clock set (``s501``).
Silence is what a console with RS-232 security does on a wrong or missing code: after
``offline_after`` silent requests the port is offline, with an alarm that says so.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from datetime import datetime, timedelta

from drivers import records
from drivers import tank_records as tr
from drivers.serialport import Line
from drivers.vr import codec as vr
from drivers.vr.reconcile import Boundary, ProductBook, Reading, Rise, RiseDetector, SalesFeed

INTER_CHAR_TIMEOUT = 0.5  # seconds of quiet that end a reply already under way
QUIET = 1.0  # seconds without a sale or nozzle change that make a clean reconciliation boundary
REOPEN_DELAY = 5.0  # seconds between attempts to open a device that failed
RECENT_DELIVERIES = 64  # console deliveries remembered for matching with level rises
UNITS = {"metric": 2, "us": 1, "imperial": 3}


class VRPoller:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.port = ctx.port
        self.cfg = ctx.port.console
        self.profile = ctx.port.serial
        self.tanks = {t.number: t for t in self.cfg.tanks}
        self.line: Line | None = None
        self.line_error: str | None = None
        self.framer = vr.VRFramer(terminator=self.cfg.end_of_message, accept_requests=False, strip_parity=True)
        self.metric = tr.Metric(UNITS.get(self.cfg.units, 2))
        self.session = False  # units and identity read since the console last came online
        self.version: str | None = None
        self.online = False
        self.heard_once = False
        self.silent = 0
        self.refused_alarm = False
        self.unsupported: set[str] = set()
        self.warned: set[tuple] = set()
        # inventory
        self.latest: dict[int, dict] = {}  # tank -> last reading (values, console time, times)
        self.stored: dict[int, tuple[dict, float]] = {}  # tank -> (values, mono) of the last stored reading
        # deliveries and rises
        dd = self.cfg.derived_delivery
        self.detectors = {n: RiseDetector(n, dd.start_rise, dd.min_volume, dd.settle, dd.baseline_window)
                          for n in self.tanks}
        self.pending: list[Rise] = []  # settled rises not yet reported by the console nor derived
        self.resolved: deque[Rise] = deque(maxlen=32)  # for reports that arrive after a derived record
        self.recent: dict[str, dict] = {}  # console delivery key -> {tank, start, end, volume, counted}
        self.delivery_reads = 0
        self.last_delivery_read = 0.0
        self.last_delivery: dict[int, dict] = {}
        # alarms, leak tests, clock
        self.active_alarms: set[tuple[int, int, int]] = set()
        self.leak_keys: set[str] = set()
        self.clock: dict = {}
        self.clock_alarm = False
        self.clock_recorded: float | None = None
        # sales and reconciliation
        config = ctx.config
        self.nozzle_tank = {n.id: n.tank for _, _, n in config.nozzles() if n.tank in self.tanks}
        self.feed = SalesFeed(config.store.path, self.nozzle_tank)
        self.books = self._books()
        self.console_t0: datetime | None = None
        self.recon_last: dict[str, dict] = {}
        now = time.monotonic()
        self.due = {"inventory": now, "deliveries": now, "alarms": now, "leak_tests": now, "clock": now}
        self.stats = {"requests": 0, "timeouts": 0, "bad_frames": 0, "refused": 0, "inventory_reads": 0,
                      "stored_readings": 0, "deliveries": 0, "derived_deliveries": 0, "alarms": 0,
                      "leak_tests": 0, "reconciliations": 0, "variance_alarms": 0, "started": time.time()}

    def _books(self) -> list[ProductBook]:
        by_grade: dict[str, list] = {}
        for t in self.cfg.tanks:
            by_grade.setdefault(t.grade_code, []).append(t)
        books = []
        for grade, tanks in by_grade.items():
            numbers = tuple(t.number for t in tanks)
            nozzles = tuple(sorted(n for n, tank in self.nozzle_tank.items() if tank in numbers))
            books.append(ProductBook(grade, tanks[0].grade_name, numbers, nozzles))
        return books

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        ctx = self.ctx
        ctx.log.info("tank console on %s: %d tank(s), %d nozzle(s) mapped", self.port.device, len(self.tanks),
                     len(self.nozzle_tank))
        self._restore_alarms()
        try:
            while not ctx.stopping():
                if self.line is None and not self._open():
                    self._publish()
                    self._sleep(REOPEN_DELAY)
                    continue
                self._tick()
                self._publish()
                self._sleep(self._next_wait())
        finally:
            self._publish(force=True)
            if self.line is not None:
                self.line.close()
            self.feed.close()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.ctx.stopping():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def _next_wait(self) -> float:
        now = time.monotonic()
        dues = [self.due["inventory"]] if not self.online else list(self.due.values())
        wait = min(dues) - now
        if self.pending or any(d.active for d in self.detectors.values()):
            wait = min(wait, 1.0)
        if any(b.waiting_since is not None for b in self.books):
            wait = min(wait, 0.25)
        return max(0.0, min(wait, max(self.profile.poll_interval, 0.05)))

    def _open(self) -> bool:
        try:
            self.line = Line(self.port.device, self.profile)
        except Exception as exc:  # noqa: BLE001 - serial.SerialException, OSError, socket errors
            self.line = None
            if self.line_error != str(exc):
                self.ctx.log.error("cannot open %s: %s", self.port.device, exc)
            self.line_error = str(exc)
            self._silence(f"cannot open {self.port.device}: {exc}")
            return False
        self.line_error = None
        self.framer.reset()
        return True

    def _tick(self) -> None:
        now = time.monotonic()
        if not self.session and not self._session():
            self._schedule("inventory", self.cfg.inventory_interval)
            return
        if now >= self.due["inventory"]:
            self._inventory()
            self._schedule("inventory", self.cfg.inventory_interval)
        if self.online:
            for task, interval in (("deliveries", self.cfg.delivery_interval), ("alarms", self.cfg.alarm_interval),
                                   ("leak_tests", self.cfg.leak_test_interval), ("clock", self.cfg.clock_interval)):
                if time.monotonic() >= self.due[task] and not self.ctx.stopping():
                    getattr(self, f"_{task}")()
                    self._schedule(task, interval)
        self._resolve_rises()
        if self.online and self.cfg.reconciliation.enabled:
            self._reconcile()

    def _schedule(self, task: str, interval: float) -> None:
        self.due[task] = time.monotonic() + interval

    # ---------------------------------------------------------------- the line

    def _ask(self, code: str, tank: int = 0, data: str = ""):
        """One command, one reply: a codec response, an ErrorResponse (9999: not supported), or None
        (silence, or a reply that did not parse)."""
        if self.line is None:
            return None
        function = f"{code}{tank:02d}"
        request = vr.build_request(code, tank, data, security_code=self.cfg.security_code)
        self.line.flush_input()
        self.framer.reset()
        if self.profile.inter_command_gap:
            time.sleep(self.profile.inter_command_gap)
        try:
            self.line.write(request)
        except OSError as exc:
            self.ctx.log.warning("write to %s failed: %s", self.port.device, exc)
            self._drop_line()
            return None
        self.stats["requests"] += 1
        deadline = time.monotonic() + self.profile.response_timeout
        partial = False
        while True:
            try:
                chunk = self.line.read_available(deadline - time.monotonic())
            except OSError as exc:
                self.ctx.log.warning("read from %s failed: %s", self.port.device, exc)
                self._drop_line()
                return None
            events = self.framer.feed(chunk) if chunk else self.framer.flush()
            for ev in events:
                if isinstance(ev, vr.FramingError):
                    self.stats["bad_frames"] += 1
                    self.ctx.log.warning("%s: %s: %r", function, ev.reason, ev.raw[:80])
                    continue
                return self._interpret(ev, function)
            if not chunk:
                break
            partial = True
            deadline = max(deadline, time.monotonic() + INTER_CHAR_TIMEOUT + 32 * self.line.byte_time)
        self.stats["timeouts"] += 1
        if partial:
            try:
                self.line.write(vr.ESC)  # abort whatever the console is still sending
            except OSError:
                pass
            self.stats["bad_frames"] += 1
            self._heard()
            return None
        self._silence()
        return None

    def _interpret(self, ev: vr.Frame, function: str):
        try:
            resp = vr.parse_response(ev.raw, expect=function if ev.kind == "response" else None,
                                     terminator=self.cfg.end_of_message)
        except vr.VRFrameError as exc:
            self.stats["bad_frames"] += 1
            self.ctx.log.warning("%s: bad reply: %s", function, exc)
            self._heard()
            return None
        self._heard()
        if isinstance(resp, vr.ErrorResponse):
            self.stats["refused"] += 1
        return resp

    def _drop_line(self) -> None:
        if self.line is not None:
            try:
                self.line.close()
            except OSError:
                pass
        self.line = None
        self._silence("the line failed")

    def _heard(self) -> None:
        self.silent = 0
        if self.online:
            return
        self.online = True
        first = not self.heard_once
        self.heard_once = True
        self.ctx.capture([records.event("tank_console_online", port=self.port.name, device=self.port.device,
                                        first=first)])
        now = time.monotonic()
        for task in self.due:
            self.due[task] = min(self.due[task], now)

    def _silence(self, reason: str | None = None) -> None:
        self.silent += 1
        if self.silent == self.profile.offline_after and (self.online or not self.heard_once):
            was_online, self.online, self.session = self.online, False, False
            if reason is None:
                reason = (f"no reply to {self.silent} requests: the console is silent. A console with RS-232 "
                          "security stays silent on a wrong or missing security code; check security_code"
                          + (" (one is configured)" if self.cfg.security_code else " (none is configured)")
                          + ", the line settings and the cable")
            self.ctx.log.error("tank console on %s offline: %s", self.port.device, reason)
            self.ctx.capture([records.alarm("tank_console_offline", port=self.port.name, device=self.port.device,
                                            silent_requests=self.silent, was_online=was_online, reason=reason,
                                            tanks=sorted(self.tanks))])
        if self.silent % max(1, self.profile.offline_after) == 0 and "://" in self.port.device and self.line:
            self.line.close()  # a serial-to-TCP card: reconnect
            self.line = None

    # ---------------------------------------------------------------- session

    def _session(self) -> bool:
        """Identity and units, each time the console comes (back) online."""
        ident = self._ask("i902")
        if ident is None and not self.online:
            return False
        if isinstance(ident, vr.VersionReport):
            self.version = ident.text.strip()
        if self.cfg.units == "auto":
            units = None
            for code in ("i505", "i517"):
                resp = self._ask(code)
                if isinstance(resp, vr.SystemUnits):
                    units = int(resp.units)
                    break
                if resp is None and not self.online:
                    return False
            if units is None:
                self._warn_once(("units",), "console does not report its units; assuming metric (set units:)")
            self.metric = tr.Metric(units or 2)
        self.session = True
        self.ctx.log.info("console %s, units %s", self.version or "(no version report)", self.metric.name)
        return True

    def _warn_once(self, key: tuple, message: str, *args) -> bool:
        if key in self.warned:
            return False
        self.warned.add(key)
        self.ctx.log.warning(message, *args)
        return True

    # ---------------------------------------------------------------- inventory

    def _inventory(self) -> None:
        self.feed.poll()  # sales stored so far: before the reading, so the net level can only dip
        resp = self._ask("i201")
        if resp is None:
            return
        if isinstance(resp, vr.ErrorResponse):
            self._refused("i201")
            return
        now, wall = time.monotonic(), time.time()
        self.stats["inventory_reads"] += 1
        out: list[dict] = []
        seen = set()
        for inv in resp.tanks:
            tank = self.tanks.get(inv.tank)
            if tank is None:
                self._warn_once(("tank", inv.tank), "console reports tank %d, which is not configured", inv.tank)
                continue
            seen.add(tank.number)
            values = tr.inventory_values(inv, self.metric)
            if tank.product_code and inv.product != tank.product_code and ("product", tank.number) not in self.warned:
                self._warn_once(("product", tank.number), "tank %d: console product code %r, configured %r",
                                tank.number, inv.product, tank.product_code)
                out.append(records.event("tank_product_mismatch", port=self.port.name, tank=tank.number,
                                         console=inv.product, configured=tank.product_code))
            self.latest[tank.number] = {**values, "console_time": tr.when(resp.console_time), "mono": now,
                                        "t": wall}
            reason = self._store_reason(tank, values, now)
            if reason:
                out.append(tr.inventory(self.port.name, tank, values, resp.console_time, reason, self.metric.name))
                self.stored[tank.number] = (values, now)
            if values["volume"] is not None:
                reading = Reading(now, wall, resp.console_time, values["volume"],
                                  self.feed.dispensed.get(tank.number, 0.0), values["height"])
                detector = self.detectors[tank.number]
                rise = detector.feed(reading)
                if rise is not None:
                    self._on_settled(rise)
                elif detector.discarded is not None:  # too small for a delivery: release what it held
                    small, detector.discarded = detector.discarded, None
                    for held in small.held:
                        self._store_console_delivery(*held, small)
                    book = self._book(tank.number)
                    if small.covered_by and book is not None:  # reported by the console: it counts
                        book.add_delivery(tank.number, small.volume, "console")
        for number in sorted(set(self.tanks) - seen):
            if self._warn_once(("absent", number), "configured tank %d is not in the console's inventory", number):
                out.append(records.event("tank_not_reported", port=self.port.name, tank=number))
        if out:
            self.stats["stored_readings"] += sum(r["kind"] == "inventory" for r in out)
            self.ctx.capture(out)

    def _store_reason(self, tank, values: dict, now: float) -> str | None:
        last = self.stored.get(tank.number)
        if last is None:
            return "start"
        old, when = last
        if old["status"] != values["status"]:
            return "status"
        th = tank.thresholds
        for key, limit in (("volume", th.volume), ("height", th.height), ("water", th.water),
                           ("temperature", th.temperature)):
            a, b = old[key], values[key]
            if (a is None) != (b is None) or (a is not None and abs(a - b) >= limit):
                return "change"
        if now - when >= self.cfg.snapshot_interval:
            return "snapshot"
        return None

    def _refused(self, code: str) -> None:
        """A report every console has was refused: with a security code configured, the console most
        likely has security off and reads the code as the function code."""
        if self.refused_alarm:
            return
        self.refused_alarm = True
        hint = ("the console refuses every command with 9999: RS-232 security is probably off on the console, "
                "so it reads the configured security code as the function code; remove security_code"
                if self.cfg.security_code else "the console refuses the inventory report (9999)")
        self.ctx.log.error("%s refused: %s", code, hint)
        self.ctx.capture([records.alarm("tank_console_refused", port=self.port.name, device=self.port.device,
                                        command=code, reason=hint)])

    # ---------------------------------------------------------------- deliveries

    def _deliveries(self) -> None:
        if "deliveries" in self.unsupported:
            return
        code = "i20C" if "i202" in self.unsupported else "i202"
        resp = self._ask(code)
        if resp is None:
            return
        if isinstance(resp, vr.ErrorResponse):
            self.unsupported.add(code)
            if code == "i20C":
                self.unsupported.add("deliveries")
                self.ctx.log.warning("console reports no deliveries (i202 and i20C refused): deriving them only")
            return
        self.delivery_reads += 1
        self.last_delivery_read = time.monotonic()
        for td in resp.tanks:
            tank = self.tanks.get(td.tank)
            if tank is None:
                continue
            for d in reversed(td.deliveries):  # oldest first, so the store receives them in order
                self._console_delivery(tank, d)

    def _console_delivery(self, tank, d: vr.Delivery) -> None:
        key = tr.delivery_key(tank.number, d.start)
        if key in self.recent:
            return
        volume = self.metric.volume(d.delivered_volume) if d.delivered_volume is not None else None
        entry = {"tank": tank.number, "start": d.start, "end": d.end, "volume": volume, "counted": False}
        self.recent[key] = entry
        if len(self.recent) > RECENT_DELIVERIES * max(1, len(self.tanks)):
            self.recent.pop(next(iter(self.recent)))
        rise = self._matching_rise(tank.number, d.start, d.end)
        if rise is not None:
            entry["matched"] = True
            if rise.covered_by is None:
                rise.covered_by = key
            if rise.settled_mono is None:  # still rising: store it with the rise's figures once settled
                rise.held.append((tank, d))
                return
        new = self._store_console_delivery(tank, d, rise)
        if rise is not None:
            return
        # a delivery no level rise explains (below the rise threshold): counted as the console says,
        # when it ended inside the reconciliation period
        if new and volume is not None and self.console_t0 is not None and d.end is not None and d.end > self.console_t0:
            book = self._book(tank.number)
            if book is not None:
                book.add_delivery(tank.number, volume, "console")
                entry["counted"] = True

    def _store_console_delivery(self, tank, d: vr.Delivery, rise: Rise | None) -> bool:
        """Store a console-reported delivery; with the level rise it matches, add the rise net of sales."""
        extra: dict = {}
        if rise is not None:
            extra = {"adjusted_volume": round(rise.volume, 2), "dispensed_during": round(rise.dispensed, 2)}
            if rise.derived_key:
                extra["supersedes"] = rise.derived_key
        result = self.ctx.capture([tr.delivery(self.port.name, tank, d, self.metric, extra)])
        new = bool(result) and not result[0][2]
        if new:
            self.stats["deliveries"] += 1
            volume = self.metric.volume(d.delivered_volume) if d.delivered_volume is not None else None
            self.last_delivery[tank.number] = {"start": tr.when(d.start), "volume": volume, "derived": False}
        return new

    def _matching_rise(self, tank: int, start, end) -> Rise | None:
        active = self.detectors[tank].active
        found = [r for r in (*self.pending, *self.resolved, *([active] if active else []))
                 if r.tank == tank and r.overlaps(start, end)]
        if not found:
            return None
        # two deliveries close together: the rise no report claims yet, then the one starting nearest
        found.sort(key=lambda r: (r.covered_by is not None, abs((r.console_start - start).total_seconds())))
        return found[0]

    def _on_settled(self, rise: Rise) -> None:
        for key, entry in self.recent.items():
            if entry["tank"] == rise.tank and not entry.get("matched") and rise.overlaps(entry["start"], entry["end"]):
                entry["matched"] = True
                rise.covered_by = key
                rise.counted = entry["counted"]
                break
        self.ctx.log.info("tank %d: level rise of %.1f L settled (%.1f L sold meanwhile)%s", rise.tank,
                          rise.volume, rise.dispensed, f", reported as {rise.covered_by}" if rise.covered_by else "")
        for held in rise.held:
            self._store_console_delivery(*held, rise)
        rise.held.clear()
        self.pending.append(rise)

    def _resolve_rises(self) -> None:
        now = time.monotonic()
        grace = self.cfg.derived_delivery.grace
        no_reports = "deliveries" in self.unsupported
        for rise in list(self.pending):
            if rise.covered_by is None:
                read_since = self.delivery_reads and self.last_delivery_read > rise.settled_mono
                if not no_reports and (now - rise.settled_mono < grace or not read_since):
                    continue
                tank = self.tanks[rise.tank]
                rec = tr.derived_delivery(self.port.name, tank, rise)
                rise.derived_key = rec["key"]
                if self.cfg.derived_delivery.enabled:
                    result = self.ctx.capture([rec])
                    if result and not result[0][2]:
                        self.stats["derived_deliveries"] += 1
                        self.last_delivery[rise.tank] = {"start": rec["body"]["start"],
                                                         "volume": rec["body"]["volume"], "derived": True}
            self.pending.remove(rise)
            self.resolved.append(rise)
            if not rise.counted:
                book = self._book(rise.tank)
                if book is not None:
                    book.add_delivery(rise.tank, rise.volume, "console" if rise.covered_by else "derived")
                rise.counted = True

    # ---------------------------------------------------------------- alarms

    def _restore_alarms(self) -> None:
        """The console alarms this port last left active, so a restart does not report them again."""
        from store.ringstore import open_readonly

        try:
            conn = open_readonly(self.ctx.config.store.path)
        except Exception:  # noqa: BLE001 - no store yet: nothing to restore
            return
        try:
            import json

            rows = conn.execute("SELECT body FROM records WHERE stream='alarm' AND body LIKE '%tank_console_alarm%' "
                                "ORDER BY id").fetchall()
            for (body,) in rows:
                b = json.loads(body)
                if b.get("port") != self.port.name or b.get("alarm") != "tank_console_alarm":
                    continue
                key = (b["category"], b["type"], b["device"])
                if b.get("state") == "active":
                    self.active_alarms.add(key)
                else:
                    self.active_alarms.discard(key)
        except Exception as exc:  # noqa: BLE001 - best effort
            self.ctx.log.warning("could not restore console alarms: %s", exc)
        finally:
            conn.close()

    def _alarms(self) -> None:
        code = "i205" if "i101" in self.unsupported else "i101"
        if code in self.unsupported:
            return
        resp = self._ask(code)
        if resp is None:
            return
        if isinstance(resp, vr.ErrorResponse):
            self.unsupported.add(code)
            return
        if isinstance(resp, vr.SystemStatus):
            current = {(a.category, a.alarm_type, a.device) for a in resp.alarms}
        else:
            current = {(2, a, t.tank) for t in resp.tanks for a in t.alarms}
        out = []
        for cat, typ, dev in sorted(current - self.active_alarms):
            out.append(tr.console_alarm(self.port.name, cat, typ, dev, "active", resp.console_time,
                                        self.tanks.get(dev) if cat == 2 else None))
        for cat, typ, dev in sorted(self.active_alarms - current):
            out.append(tr.console_alarm(self.port.name, cat, typ, dev, "cleared", resp.console_time,
                                        self.tanks.get(dev) if cat == 2 else None))
        self.active_alarms = current
        if out:
            self.stats["alarms"] += sum(r["body"]["state"] == "active" for r in out)
            self.ctx.capture(out)

    # ---------------------------------------------------------------- leak tests

    def _leak_tests(self) -> None:
        if "i208" in self.unsupported:
            return
        resp = self._ask("i208")
        if resp is None:
            return
        if isinstance(resp, vr.ErrorResponse):
            self.unsupported.add("i208")
            return
        for t in resp.tanks:
            tank = self.tanks.get(t.tank)
            if tank is None:
                continue
            for r in t.results:
                rec = tr.leak_test(self.port.name, tank, r, self.metric)
                if rec["key"] in self.leak_keys:
                    continue
                batch = [rec]
                if r.result == 2:
                    batch.append(tr.leak_test_failed(self.port.name, tank, r, self.metric))
                result = self.ctx.capture(batch)
                self.leak_keys.add(rec["key"])
                if result and not result[0][2]:
                    self.stats["leak_tests"] += 1

    # ---------------------------------------------------------------- console clock

    def _clock(self) -> None:
        resp = self._ask("i501")
        if resp is None:
            return
        if isinstance(resp, vr.ErrorResponse):
            self.unsupported.add("i501")
            self.due["clock"] = math.inf
            return
        console = resp.clock or resp.console_time
        local = datetime.now()
        drift = (console - local.replace(second=0, microsecond=0)).total_seconds()
        limit = self.cfg.clock_max_drift
        self.clock = {"console_time": tr.when(console), "drift_s": round(drift), "checked": time.time(),
                      "set_clock": self.cfg.set_clock}
        out = []
        if self.clock_recorded is None or abs(drift - self.clock_recorded) >= 60:
            out.append(tr.console_clock(self.port.name, console, local, drift, "observed", limit))
            self.clock_recorded = drift
        if abs(drift) > limit:
            if not self.clock_alarm:
                self.clock_alarm = True
                out.append(records.alarm("console_clock_drift", port=self.port.name, drift_s=round(drift),
                                         max_drift_s=limit, console_time=tr.when(console),
                                         will_set=self.cfg.set_clock))
            if self.cfg.set_clock:
                out.extend(self._set_clock(console, drift))
        elif self.clock_alarm:
            self.clock_alarm = False
            out.append(records.event("console_clock_drift_cleared", port=self.port.name, drift_s=round(drift)))
        if out:
            self.ctx.capture(out)

    def _set_clock(self, console: datetime, drift: float) -> list[dict]:
        target = (datetime.now() + timedelta(seconds=30)).replace(second=0, microsecond=0)
        resp = self._ask("s501", 0, target.strftime("%y%m%d%H%M"))
        ok = isinstance(resp, vr.ClockSetReply) and resp.accepted
        local = datetime.now()
        action = "set" if ok else "set_failed"
        self.ctx.log.warning("console clock %s: was %s (drift %+.0f s), set to %s", action, console, drift, target)
        if ok:
            self.clock_recorded = None  # record the next reading
            self.due["clock"] = time.monotonic() + 2.0
        return [tr.console_clock(self.port.name, console, local, drift, action, self.cfg.clock_max_drift,
                                 {"set_to": target.strftime("%Y-%m-%dT%H:%M")})]

    # ---------------------------------------------------------------- reconciliation

    def _book(self, tank: int) -> ProductBook | None:
        return next((b for b in self.books if tank in b.tanks), None)

    def _reconcile(self) -> None:
        rc = self.cfg.reconciliation
        now, wall = time.monotonic(), time.time()
        ready = []
        for book in self.books:
            if book.start is not None and wall < book.due:
                continue
            if book.start is None and not (self.delivery_reads or "deliveries" in self.unsupported):
                continue  # the first boundary comes after the console's delivery history was read once
            busy_rise = any(r.tank in book.tanks for r in self.pending) or any(
                self.detectors[t].active for t in book.tanks)
            flagged = any("delivery_in_progress" in (self.latest.get(t) or {}).get("flags", ()) for t in book.tanks)
            if busy_rise or flagged:
                continue
            # a sale shows in the level before it is in the store: wait (a while) for a quiet moment
            if book.waiting_since is None:
                book.waiting_since = now
            act = self.feed.activity(book.nozzles, wall) if book.nozzles else (QUIET, False, False)
            if act is None:  # store unreadable: take the boundary when the wait is over
                act = (0.0, True, False)
            quiet, fuelling, capturing = act
            if capturing:
                continue  # a sale on its way to the store: a second at most
            if (not fuelling and quiet >= min(QUIET, rc.boundary_wait)) or now - book.waiting_since >= rc.boundary_wait:
                ready.append(book)
        if not ready:
            return
        before = self.stats["inventory_reads"]
        self._inventory()  # a fresh reading for the boundary, after the sales stored so far
        self._schedule("inventory", self.cfg.inventory_interval)
        if self.stats["inventory_reads"] == before:
            return
        self._resolve_rises()
        out = []
        for book in ready:
            if any(t not in self.latest for t in book.tanks):
                continue
            if any(r.tank in book.tanks for r in self.pending) or any(self.detectors[t].active for t in book.tanks):
                continue  # the fresh reading started a rise
            boundary = Boundary(now, time.time(), {t: self.latest[t]["volume"] for t in book.tanks
                                                   if self.latest[t]["volume"] is not None},
                                dict(self.feed.dispensed), dict(self.feed.sales))
            if self.console_t0 is None:
                stamp = self.latest[book.tanks[0]].get("console_time")
                self.console_t0 = datetime.strptime(stamp, "%Y-%m-%dT%H:%M") if stamp else datetime.now()
            result = book.close(boundary, rc.tolerance_abs, rc.tolerance_rel)
            book.due = (math.floor(boundary.wall / rc.interval) + 1) * rc.interval
            book.waiting_since = None
            if result is None:
                continue
            out.append(tr.reconciliation(self.port.name, result))
            self.stats["reconciliations"] += 1
            self.recon_last[book.grade] = {k: result[k] for k in ("end_t", "variance", "tolerance",
                                                                  "within_tolerance", "dispensed", "delivered")}
            if not result["within_tolerance"]:
                out.append(tr.variance_alarm(self.port.name, result))
                self.stats["variance_alarms"] += 1
                self.ctx.log.warning("grade %s: wet-stock variance %+.1f L beyond %.1f L", book.grade,
                                     result["variance"], result["tolerance"])
        if out:
            self.ctx.capture(out)

    # ---------------------------------------------------------------- status board

    def _publish(self, force: bool = False) -> None:
        tanks = {}
        for number, tank in self.tanks.items():
            latest = self.latest.get(number) or {}
            det = self.detectors[number]
            tanks[str(number)] = {
                "grade": tank.grade_code, "grade_name": tank.grade_name, "capacity": tank.capacity,
                **{k: latest.get(k) for k in ("volume", "tc_volume", "ullage", "height", "water", "temperature",
                                              "water_volume", "product_code", "flags", "console_time", "t")},
                "alarms": sorted(tr.alarm_name(c, a) for c, a, d in self.active_alarms if c == 2 and d == number),
                "rising": det.active is not None, "pending_delivery": any(r.tank == number for r in self.pending),
                "last_delivery": self.last_delivery.get(number),
                "dispensed": round(self.feed.dispensed.get(number, 0.0), 2),
            }
        self.ctx.board.publish({
            "port": self.port.name, "protocol": "vr", "mode": "master", "device": self.port.device,
            "pid": os.getpid(), "updated": time.time(), "online": self.online, "heard_once": self.heard_once,
            "line_error": self.line_error, "version": self.version, "units": self.metric.name,
            "security_code": bool(self.cfg.security_code), "clock": self.clock,
            "unsupported": sorted(self.unsupported), "stats": self.stats,
            "alarms": [{"category": c, "type": a, "device": d, "name": tr.alarm_name(c, a)}
                       for c, a, d in sorted(self.active_alarms)],
            "line": {"rx": self.line.rx_bytes if self.line else 0, "tx": self.line.tx_bytes if self.line else 0},
            "tanks": tanks, "recon": self.recon_last, "sales_feed_error": self.feed.error,
        }, force=force)
