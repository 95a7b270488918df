"""Wet-stock arithmetic for the tank-gauge driver: level rises found net of sales (derived deliveries),
the sales of each tank's nozzles read from the store, and per-product reconciliation intervals.

Runs inside the VR driver process, which already holds every inventory reading with its exact time;
the sales come from the store through a read-only connection (WAL: it never blocks the writer), read
by record id so a change of the wall clock cannot move a sale into the wrong interval.

The quantity everything turns on is the tank's *net* level, ``volume + dispensed so far``: sales
lower the volume and raise the dispensed count by the same litres, so the net level only moves for
deliveries (up), leaks and theft (down) and mis-metering. A sale shows in the volume while the fuel
flows but in the dispensed count only once it is stored, so between the two the net level dips and
then comes back: rises are therefore measured from the recent *maximum* of the net level, which
those dips never lift.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drivers.records import FUELLING

# ------------------------------------------------------------------ level rises


@dataclass(frozen=True)
class Reading:
    mono: float  # collector monotonic time of the reply
    wall: float  # collector wall time of the reply
    console_time: datetime | None
    volume: float  # litres
    dispensed: float  # litres sold from the tank's nozzles since the driver started (cumulative)
    height: float | None = None

    @property
    def net(self) -> float:
        return self.volume + self.dispensed


@dataclass
class Rise:
    """A rise of the net level: a delivery in progress or finished."""

    tank: int
    start: Reading  # the last reading before the rise
    base_net: float  # the net level the rise is measured from
    end: Reading  # the reading at the highest net level so far
    last_rise_mono: float
    settled_mono: float | None = None
    covered_by: str | None = None  # key of the console's delivery record that reports this rise
    derived_key: str | None = None  # key of the derived delivery record stored for it
    counted: bool = False  # already in a reconciliation interval
    held: list = field(default_factory=list)  # console reports waiting for the rise to settle

    @property
    def volume(self) -> float:
        """Delivered litres: the rise of the net level (volume change + sales meanwhile)."""
        return self.end.net - self.base_net

    @property
    def dispensed(self) -> float:
        return self.end.dispensed - self.start.dispensed

    @property
    def resolved(self) -> bool:
        return self.covered_by is not None or self.derived_key is not None

    # what the record builders read
    @property
    def console_start(self) -> datetime | None:
        return self.start.console_time

    @property
    def console_end(self) -> datetime | None:
        return self.end.console_time

    @property
    def start_wall(self) -> float:
        return self.start.wall

    @property
    def end_wall(self) -> float:
        return self.end.wall

    @property
    def start_volume(self) -> float:
        return self.start.volume

    @property
    def end_volume(self) -> float:
        return self.end.volume

    @property
    def start_height(self) -> float | None:
        return self.start.height

    @property
    def end_height(self) -> float | None:
        return self.end.height

    def overlaps(self, start: datetime | None, end: datetime | None, slack_minutes: int = 2) -> bool:
        """Whether a console-reported delivery [start, end] (minute stamps, console clock) is this rise."""
        if start is None or end is None or self.console_start is None:
            return False
        slack = timedelta(minutes=slack_minutes)
        rise_end = self.console_end if self.settled_mono is not None and self.console_end else None
        if rise_end is None:
            rise_end = datetime.max - slack  # still rising: open-ended
        return start <= rise_end + slack and end >= self.console_start - slack


class RiseDetector:
    """Finds rises of one tank's net level; ``feed`` returns a rise once it has settled.

    The reference is the highest net level among readings at least ``settle`` seconds old (within
    ``window``): recent readings are left out so that a slow delivery, rising less than ``start_rise``
    from one reading to the next, still stands out against the level before it began; the maximum
    keeps the dips of sales in flight from looking like a rise when they come back.
    """

    def __init__(self, tank: int, start_rise: float, min_volume: float, settle: float, window: float) -> None:
        self.tank = tank
        self.start_rise = start_rise
        self.min_volume = min_volume
        self.settle = settle
        self.window = max(window, settle)
        self.short = min(settle, self.window / 2)
        self.noise = max(1.0, start_rise / 20.0)
        self.history: deque[Reading] = deque()
        self.active: Rise | None = None
        self.mark = 0.0  # net level at the last rise that counted (beyond the noise)
        self.discarded: Rise | None = None  # the last rise that ended too small to be a delivery

    def reference(self, now: float) -> float | None:
        older = [h.net for h in self.history if h.mono <= now - self.short]
        if older:
            return max(older)
        return self.history[0].net if self.history else None

    def feed(self, r: Reading) -> Rise | None:
        net = r.net
        if self.active is None:
            while self.history and self.history[0].mono < r.mono - self.window:
                self.history.popleft()
            base = self.reference(r.mono)
            if base is not None and net - base >= self.start_rise:
                start = self.history[-1]
                for h in reversed(self.history):  # back to where the level was still at the reference
                    start = h
                    if h.net <= base + self.noise:
                        break
                self.active = Rise(self.tank, start, base, r, r.mono)
                self.mark = net
                return None
            self.history.append(r)
            return None
        rise = self.active
        if net > rise.end.net:
            rise.end = r
        if net > self.mark + self.noise:
            self.mark = net
            rise.last_rise_mono = r.mono
        if r.mono - rise.last_rise_mono < self.settle:
            return None
        self.active = None
        self.history.clear()
        self.history.append(r)
        if rise.volume < self.min_volume:
            self.discarded = rise
            return None
        rise.settled_mono = r.mono
        return rise


# ------------------------------------------------------------------ sales from the store


class SalesFeed:
    """The litres sold from each tank, from the sale and gap records of the nozzles mapped to it.

    Reads forward by record id from where it started: sales stored before the driver started are not
    counted (its intervals begin after). A gap record (fuel that left a nozzle unseen) counts too.
    """

    def __init__(self, store_path: str, nozzle_tank: dict[int, int]) -> None:
        self.path = store_path
        self.nozzle_tank = dict(nozzle_tank)
        self.conn: sqlite3.Connection | None = None
        self.cursor: int | None = None
        self.dispensed: dict[int, float] = {t: 0.0 for t in set(nozzle_tank.values())}
        self.sales: dict[int, int] = {t: 0 for t in set(nozzle_tank.values())}
        self.error: str | None = None

    def _open(self) -> sqlite3.Connection | None:
        if self.conn is None:
            from store.ringstore import open_readonly

            try:
                self.conn = open_readonly(self.path, cache_kib=128)
            except (FileNotFoundError, sqlite3.Error) as exc:
                self.error = str(exc)
                return None
        return self.conn

    def poll(self) -> bool:
        """Add what was stored since the last poll. False when the store could not be read."""
        if not self.nozzle_tank:
            return True
        conn = self._open()
        if conn is None:
            return False
        try:
            if self.cursor is None:
                self.cursor = conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
                return True
            marks = ",".join("?" * len(self.nozzle_tank))
            rows = conn.execute(
                f"SELECT id, nozzle, kind, body FROM records WHERE id > ? AND kind IN ('sale', 'gap') "
                f"AND nozzle IN ({marks}) ORDER BY id", (self.cursor, *self.nozzle_tank)).fetchall()
            top = conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
        except sqlite3.Error as exc:
            self.error = str(exc)
            self.conn.close()
            self.conn = None
            return False
        for _rid, nozzle, kind, body in rows:
            try:
                b = json.loads(body)
                litres = float(b.get("volume") if kind == "sale" else b.get("missed_volume") or 0.0)
            except (ValueError, TypeError):
                continue
            tank = self.nozzle_tank[nozzle]
            self.dispensed[tank] += litres
            self.sales[tank] += kind == "sale"
        self.cursor = max(self.cursor, top, rows[-1][0] if rows else 0)
        self.error = None
        return True

    def activity(self, nozzles, now: float, capture_window: float = 5.0) -> tuple[float, bool, bool] | None:
        """(seconds since any of these nozzles changed state or had a sale stored, one is fuelling, one
        has finished a fill whose sale is not stored yet), from the store; None when it cannot be read.

        A finished sale is in the tank's level before it is in the store: a boundary must not fall
        between the two. A fill in progress lowers a real tank before its sale exists at all."""
        conn = self._open()
        if conn is None:
            return None
        last, fuelling, capturing = 0.0, False, False
        try:
            for nozzle in nozzles:
                rows = conn.execute("SELECT t, kind, body FROM records WHERE nozzle=? AND kind IN ('nozzle_state', 'sale') "
                                    "ORDER BY t DESC, id DESC LIMIT 2", (nozzle,)).fetchall()
                states = [json.loads(b).get("state") if k == "nozzle_state" else "sale" for _, k, b in rows]
                if rows:
                    last = max(last, rows[0][0])
                if states[:1] == [FUELLING]:
                    fuelling = True
                elif len(states) == 2 and states[0] != "sale" and states[1] == FUELLING and now - rows[0][0] < capture_window:
                    capturing = True  # the fill ended; its sale is on its way to the store
        except (sqlite3.Error, ValueError) as exc:
            self.error = str(exc)
            return None
        return now - last, fuelling, capturing

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------ reconciliation intervals


@dataclass
class Boundary:
    mono: float
    wall: float
    volumes: dict[int, float]  # tank -> litres
    dispensed: dict[int, float]  # tank -> cumulative litres sold
    sales: dict[int, int]  # tank -> cumulative sale count


@dataclass
class ProductBook:
    """One product (grade): its tanks, and what came in since the last boundary."""

    grade: str
    grade_name: str
    tanks: tuple[int, ...]
    nozzles: tuple[int, ...]
    start: Boundary | None = None
    delivered: float = 0.0
    deliveries: list = field(default_factory=list)  # (tank, litres, how) counted in this interval
    due: float = 0.0  # wall time of the next boundary
    waiting_since: float | None = None  # monotonic time the due boundary began waiting

    def add_delivery(self, tank: int, litres: float, how: str) -> None:
        self.delivered += litres
        self.deliveries.append((tank, round(litres, 2), how))

    def close(self, end: Boundary, tolerance_abs: float, tolerance_rel: float) -> dict | None:
        """The reconciliation of the interval ending at ``end``, and start the next one there."""
        start, self.start = self.start, end
        delivered, deliveries = self.delivered, self.deliveries
        self.delivered, self.deliveries = 0.0, []
        if start is None:
            return None
        missing = [t for t in self.tanks if t not in start.volumes or t not in end.volumes]
        if missing:
            return None
        v0 = sum(start.volumes[t] for t in self.tanks)
        v1 = sum(end.volumes[t] for t in self.tanks)
        dispensed = sum(end.dispensed.get(t, 0.0) - start.dispensed.get(t, 0.0) for t in self.tanks)
        sales = sum(end.sales.get(t, 0) - start.sales.get(t, 0) for t in self.tanks)
        variance = (v1 - v0) + dispensed - delivered + 0.0
        tolerance = tolerance_abs + tolerance_rel * (dispensed + delivered)
        return {
            "grade": self.grade, "grade_name": self.grade_name, "tanks": list(self.tanks),
            "nozzles": list(self.nozzles), "start_t": round(start.wall, 3), "end_t": round(end.wall, 3),
            "duration_s": round(end.mono - start.mono, 1),
            "start_volume": round(v0, 2), "end_volume": round(v1, 2), "volume_change": round(v1 - v0, 2),
            "dispensed": round(dispensed, 2), "sales": sales, "delivered": round(delivered, 2),
            "deliveries": [{"tank": t, "volume": v, "source": how} for t, v, how in deliveries],
            "expected_end_volume": round(v0 - dispensed + delivered, 2),
            "variance": round(variance, 2) + 0.0, "tolerance": round(tolerance, 2),
            "variance_percent": round(100.0 * variance / (dispensed + delivered), 3) if dispensed + delivered else None,
            "within_tolerance": abs(variance) <= tolerance, "units": "L",
        }
