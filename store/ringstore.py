"""The SQLite ring store: schema, durable batched inserts with per-stream rings, and read queries.

Only the store writer process (``store.writer``) calls the write methods; everything else opens
the file read-only through ``open_readonly``. A record's identity is (device, stream, seq):
``seq`` is assigned here, per stream, and never reused, even after eviction. A record may also
carry a natural ``key`` (a sale's end totalizer, say) so that a driver re-submitting the same
sale after a crash gets the already-stored seq back instead of a duplicate.

Ring rule: a stream holds at most ``capacity`` records. Inserting into a full stream removes its
oldest record. If that record was already acknowledged by the platform, that is the normal life
of a ring. If it was not, the loss is counted in ``streams.evicted_unsent`` and an ``eviction``
record (range, count, first and last totalizers) is written to the ``event`` stream, which is
itself uploaded: eviction is never silent.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass

SCHEMA_VERSION = 1
UNSENT, SENT, ACKED = 0, 1, 2
EVENT_STREAM = "event"
NEARLY_FULL = 0.8

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1,
    count INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    evicted_unsent INTEGER NOT NULL DEFAULT 0,
    evicted_acked INTEGER NOT NULL DEFAULT 0,
    nearly_full INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    nozzle INTEGER,
    key TEXT,
    t REAL NOT NULL,
    body TEXT NOT NULL,
    upload INTEGER NOT NULL DEFAULT 0,
    acked_at REAL,
    UNIQUE (stream, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS records_natural_key ON records (stream, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_pending ON records (upload, stream, seq) WHERE upload < 2;
CREATE INDEX IF NOT EXISTS records_nozzle ON records (nozzle, t) WHERE nozzle IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    lane TEXT NOT NULL,
    msg_seq INTEGER,
    records INTEGER NOT NULL,
    result TEXT NOT NULL,
    latency_ms REAL,
    detail TEXT
);
"""
UPLOAD_HISTORY = 5000


class StoreError(Exception):
    """A write the store could not make durable (disk full, I/O error). Nothing was committed."""


@dataclass(frozen=True)
class PutResult:
    stream: str
    seq: int
    duplicate: bool

    def as_json(self) -> list:
        return [self.stream, self.seq, self.duplicate]


def _connect(path: str, cache_kib: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    return conn


def open_readonly(path: str, cache_kib: int = 256) -> sqlite3.Connection:
    """A read-only connection with a small page cache (CLI, uplink reads)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.execute("PRAGMA query_only=1")
    return conn


class RingStore:
    """The writer's handle on the store. Not thread-safe; one per writer process."""

    def __init__(self, path: str, sales_per_nozzle: int = 2000, records_per_stream: int = 20000,
                 cache_kib: int = 1024) -> None:
        self.path = path
        self.sales_per_nozzle = sales_per_nozzle
        self.records_per_stream = records_per_stream
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.conn = _connect(path, cache_kib)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # every commit fsyncs the WAL: durable on return
        self.conn.execute("PRAGMA wal_autocheckpoint=256")
        self.conn.executescript(SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._streams: dict[str, list] = {}
        for row in self.conn.execute("SELECT stream, kind, capacity, next_seq, count, nearly_full FROM streams"):
            self._streams[row[0]] = list(row[1:])

    def close(self) -> None:
        self.conn.close()

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"

    # -------------------------------------------------------------- writes

    def put_batch(self, records: list[dict]) -> list[PutResult]:
        """Insert records in one transaction; return when it is committed and fsynced."""
        snapshot = {k: list(v) for k, v in self._streams.items()}
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            evictions: dict[str, dict] = {}
            results = [self._put(rec, evictions) for rec in records]
            for ev in evictions.values():
                self._insert(EVENT_STREAM, "eviction", None, None, time.time(), ev, evictions=None)
            self.conn.execute("COMMIT")
            return results
        except sqlite3.Error as exc:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._streams = snapshot
            raise StoreError(str(exc)) from exc

    def _stream(self, stream: str, kind: str) -> list:
        state = self._streams.get(stream)
        if state is None:
            capacity = self.sales_per_nozzle if kind == "sale" else self.records_per_stream
            family = "sale" if kind == "sale" else stream.split(":")[0]
            self.conn.execute("INSERT INTO streams (stream, kind, capacity) VALUES (?, ?, ?)", (stream, family, capacity))
            state = self._streams[stream] = [family, capacity, 1, 0, 0]
        return state

    def _put(self, rec: dict, evictions: dict) -> PutResult:
        stream, kind, key = rec["stream"], rec["kind"], rec.get("key")
        if key is not None:
            row = self.conn.execute("SELECT seq FROM records WHERE stream=? AND key=?", (stream, key)).fetchone()
            if row:
                return PutResult(stream, row[0], True)
        seq = self._insert(stream, kind, rec.get("nozzle"), key, rec["t"], rec["body"], evictions)
        return PutResult(stream, seq, False)

    def _insert(self, stream: str, kind: str, nozzle, key, t: float, body: dict, evictions) -> int:
        state = self._stream(stream, kind)
        _, capacity, seq, count, nearly_full = state
        if count >= capacity:
            self._evict_oldest(stream, evictions)
            count -= 1
        self.conn.execute(
            "INSERT INTO records (stream, seq, kind, nozzle, key, t, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (stream, seq, kind, nozzle, key, t, json.dumps(body, separators=(",", ":"), ensure_ascii=False)),
        )
        state[2], state[3] = seq + 1, count + 1
        self.conn.execute("UPDATE streams SET next_seq=?, count=? WHERE stream=?", (seq + 1, count + 1, stream))
        if stream != EVENT_STREAM:
            self._watch_fill(stream, state)
        return seq

    def _evict_oldest(self, stream: str, evictions: dict | None) -> None:
        row = self.conn.execute(
            "SELECT id, seq, upload, body FROM records WHERE stream=? ORDER BY seq LIMIT 1", (stream,)
        ).fetchone()
        if row is None:
            return
        rid, seq, upload, body = row
        self.conn.execute("DELETE FROM records WHERE id=?", (rid,))
        if upload == ACKED:
            self.conn.execute("UPDATE streams SET evicted_acked = evicted_acked + 1 WHERE stream=?", (stream,))
            return
        self.conn.execute("UPDATE streams SET evicted_unsent = evicted_unsent + 1 WHERE stream=?", (stream,))
        if evictions is None:  # the event stream evicting its own unsent record: counted above
            return
        totals = _totals_of(json.loads(body))
        ev = evictions.get(stream)
        if ev is None:
            evictions[stream] = {"stream": stream, "from_seq": seq, "to_seq": seq, "count": 1,
                                 "first_totals": totals, "last_totals": totals, "reason": "ring full of unsent records"}
        else:
            ev["to_seq"], ev["count"], ev["last_totals"] = seq, ev["count"] + 1, totals

    def _watch_fill(self, stream: str, state: list) -> None:
        """Raise an alarm once when a stream's unacknowledged records pass 80 % of its ring."""
        kind, capacity, _, count, nearly_full = state
        if count < capacity * NEARLY_FULL and not nearly_full:
            return
        unacked = self.conn.execute(
            "SELECT count(*) FROM records WHERE stream=? AND upload < 2", (stream,)).fetchone()[0]
        flag = 1 if unacked >= capacity * NEARLY_FULL else (0 if unacked < capacity * 0.7 else nearly_full)
        if flag != nearly_full:
            state[4] = flag
            self.conn.execute("UPDATE streams SET nearly_full=? WHERE stream=?", (flag, stream))
            if flag:
                self._insert(EVENT_STREAM, "alarm", None, None, time.time(),
                             {"alarm": "ring_nearly_full", "stream": stream, "unacked": unacked, "capacity": capacity},
                             evictions=None)

    def mark_acked(self, stream: str, up_to_seq: int) -> int:
        """Cumulative platform acknowledgement of a stream. Returns how many records changed."""
        return self.apply_acks({stream: up_to_seq}, {})

    def apply_acks(self, acks: dict[str, int], sacks: dict[str, list], log: list[dict] | None = None) -> int:
        """The platform's acknowledgements in one transaction: cumulative per stream (every seq up to
        the value) and selective ranges above it; plus upload-history lines. Returns records changed."""
        now = time.time()
        changed = 0
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for stream, up_to in acks.items():
                changed += self.conn.execute(
                    "UPDATE records SET upload=2, acked_at=? WHERE stream=? AND seq<=? AND upload<2",
                    (now, stream, int(up_to))).rowcount
                self.conn.execute("UPDATE streams SET acked_seq=max(acked_seq, ?) WHERE stream=?", (int(up_to), stream))
            for stream, ranges in sacks.items():
                for lo, hi in ranges:
                    changed += self.conn.execute(
                        "UPDATE records SET upload=2, acked_at=? WHERE stream=? AND seq BETWEEN ? AND ? AND upload<2",
                        (now, stream, int(lo), int(hi))).rowcount
            for entry in log or ():
                self.conn.execute(
                    "INSERT INTO uploads (t, lane, msg_seq, records, result, latency_ms, detail) VALUES (?,?,?,?,?,?,?)",
                    (entry.get("t", now), entry["lane"], entry.get("msg_seq"), entry.get("records", 0),
                     entry["result"], entry.get("latency_ms"), entry.get("detail")))
            if log:
                self.conn.execute("DELETE FROM uploads WHERE id <= (SELECT max(id) FROM uploads) - ?", (UPLOAD_HISTORY,))
            self.conn.execute("COMMIT")
        except (sqlite3.Error, KeyError, TypeError, ValueError) as exc:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreError(str(exc)) from exc
        return changed

    def max_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]

    def last_sales(self, streams: list[str]) -> dict[str, dict]:
        out = {}
        for stream in streams:
            row = self.conn.execute(
                "SELECT seq, body FROM records WHERE stream=? AND kind='sale' ORDER BY seq DESC LIMIT 1", (stream,)
            ).fetchone()
            if row:
                out[stream] = {"seq": row[0], **json.loads(row[1])}
        return out

    def last_identities(self, nozzles: list[int]) -> dict[str, dict]:
        """The newest GB/T 9081 ``identity`` record of each nozzle (drivers.gbt9081 restores from it)."""
        out = {}
        for nozzle in nozzles:
            row = self.conn.execute(
                "SELECT body FROM records WHERE nozzle=? AND kind='identity' ORDER BY id DESC LIMIT 1", (int(nozzle),)
            ).fetchone()
            if row:
                out[str(nozzle)] = json.loads(row[0])
        return out


def _totals_of(body: dict) -> dict | None:
    if "vol_total" in body:
        return {"vol_total": body.get("vol_total"), "amt_total": body.get("amt_total")}
    return None


# ------------------------------------------------------------------ read queries (CLI, tests, uplink)


def stream_summary(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT s.stream, s.kind, s.capacity, s.count, s.next_seq - 1, s.acked_seq, s.evicted_unsent, "
        "(SELECT count(*) FROM records r WHERE r.stream = s.stream AND r.upload < 2), "
        "(SELECT min(t) FROM records r WHERE r.stream = s.stream AND r.upload < 2) "
        "FROM streams s ORDER BY s.stream").fetchall()
    keys = ("stream", "kind", "capacity", "count", "last_seq", "acked_seq", "evicted_unsent", "unacked", "oldest_unacked_t")
    return [dict(zip(keys, r)) for r in rows]


def sales(conn: sqlite3.Connection, nozzle: int | None = None, last: int | None = None) -> list[dict]:
    sql = "SELECT stream, seq, nozzle, t, body, upload FROM records WHERE kind='sale'"
    args: list = []
    if nozzle is not None:
        sql += " AND nozzle=?"
        args.append(nozzle)
    sql += " ORDER BY t DESC, id DESC"
    if last:
        sql += " LIMIT ?"
        args.append(last)
    rows = conn.execute(sql, args).fetchall()
    out = [{"stream": s, "seq": q, "nozzle": n, "t": t, "upload": ("unsent", "sent", "acked")[u], **json.loads(b)}
           for s, q, n, t, b, u in rows]
    out.reverse()
    return out


def uploads(conn: sqlite3.Connection, last: int = 20) -> list[dict]:
    rows = conn.execute("SELECT t, lane, msg_seq, records, result, latency_ms, detail FROM uploads "
                        "ORDER BY id DESC LIMIT ?", (last,)).fetchall()
    keys = ("t", "lane", "msg_seq", "records", "result", "latency_ms", "detail")
    return [dict(zip(keys, r)) for r in reversed(rows)]
