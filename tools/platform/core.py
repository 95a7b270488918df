"""Reference platform, transport-independent core (docs/platform-protocol.md, docs/platform-envelope.md).

Owns: the platform's durable state (its own SQLite database in the work directory: devices, session keys
with their grace period, replay counters in both directions, records, evictions, refused records,
heartbeats, commands, counters), the processing of one uplink envelope into at most one reply (ack,
key_ok or a clear notice), the acknowledgement arithmetic (cumulative ``acks`` + ``sacks``, evictions
count as held), failure injection state, and the observable files (received.jsonl, stats.json,
heartbeats/, command_results.jsonl).  All cryptography goes through :mod:`tools.platform.seal_check`;
nothing here imports ``uplink``.  The transports (MQTT, HTTP) and the command line are in
:mod:`tools.platform.server`.

Thread safety: every public method takes ``self.lock``; the transports call in from their own threads.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tools.platform import seal_check

log = logging.getLogger("platform")

MSG_KEY = 0x01
MSG_KEY_OK = 0x02
MSG_DATA = 0x10
MSG_BACKFILL = 0x11
MSG_HEARTBEAT = 0x20
MSG_COMMAND_RESULT = 0x30
MSG_ACK = 0x81
MSG_COMMAND = 0x82
TYPE_NAMES = {
    MSG_KEY: "key",
    MSG_DATA: "data",
    MSG_BACKFILL: "backfill",
    MSG_HEARTBEAT: "heartbeat",
    MSG_COMMAND_RESULT: "command_result",
}
UP, DOWN = 0, 1

# docs/platform-protocol.md §1.2; "direction" is not listed there, it is a client error -> 400.
HTTP_STATUS = {
    "malformed": 400,
    "truncated": 400,
    "version": 400,
    "direction": 400,
    "auth": 401,
    "unknown-key": 401,
    "unknown-device": 401,
    "replay": 409,
}

DEFAULT_KEY_GRACE_S = 600.0
DEFAULT_HEARTBEAT_INTERVAL_S = 30.0
SACK_LIMIT = 64  # ranges per stream in one ack (the rest follow once the cumulative point moves)
MAX_SEQ = 2**63 - 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, last_key_id INTEGER NOT NULL DEFAULT -1, cipher INTEGER NOT NULL DEFAULT 1,
    transport TEXT, last_seen INTEGER, presence INTEGER, presence_at INTEGER, presence_t INTEGER);
CREATE TABLE IF NOT EXISTS session_keys (
    device_id TEXT NOT NULL, key_id INTEGER NOT NULL, key BLOB NOT NULL, accepted_at INTEGER NOT NULL,
    expires_at INTEGER, PRIMARY KEY (device_id, key_id));
CREATE TABLE IF NOT EXISTS replay (
    device_id TEXT NOT NULL, key_id INTEGER NOT NULL, direction INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, key_id, direction));
CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, t REAL,
    resend INTEGER NOT NULL, lane TEXT NOT NULL, body TEXT NOT NULL, received_at INTEGER NOT NULL,
    key_id INTEGER NOT NULL, env_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refused (
    device_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, error TEXT NOT NULL,
    record TEXT NOT NULL, received_at INTEGER NOT NULL, PRIMARY KEY (device_id, stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evictions (
    device_id TEXT NOT NULL, stream TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    record_stream TEXT NOT NULL, record_seq INTEGER NOT NULL, received_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
    device_id TEXT PRIMARY KEY, received_at INTEGER NOT NULL, key_id INTEGER, seq INTEGER,
    timestamp_ms INTEGER, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    device_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL, t INTEGER NOT NULL,
    queued INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0, last_delivered_at INTEGER,
    result_at INTEGER, result TEXT, PRIMARY KEY (device_id, id));
CREATE TABLE IF NOT EXISTS counters (
    device_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (device_id, name));
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def device_file_name(device_id: str) -> str:
    """File-name form of a device id: characters outside [A-Za-z0-9._-] and a leading dot are
    percent-encoded (device ids may contain '/', which must not become a path)."""
    q = urllib.parse.quote(device_id, safe="-_.")
    return "%2E" + q[1:] if q.startswith(".") else q


def device_from_file_name(name: str) -> str:
    return urllib.parse.unquote(name)


def topic_safe(device_id: str | None) -> bool:
    """A device id usable in an MQTT topic level (docs allow '/', '+' and '#', MQTT does not)."""
    return bool(device_id) and not any(c in device_id for c in "/+#")


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# ---- keys -------------------------------------------------------------------------------------------


def _on_curve(x: int, y: int) -> bool:
    p, a, b = seal_check.P, seal_check.A, seal_check.B
    return 0 <= x < p and 0 <= y < p and (y * y - x * x * x - a * x - b) % p == 0


def parse_public_key(text: str) -> bytes | None:
    """Hex ``04||X||Y`` (or ``X||Y``) -> 65 bytes, or None when not a point of the SM2 curve."""
    h = "".join(text.split()).lower()
    if len(h) == 128:
        h = "04" + h
    try:
        raw = bytes.fromhex(h)
    except ValueError:
        return None
    if len(raw) != 65 or raw[0] != 4:
        return None
    x, y = int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")
    return raw if _on_curve(x, y) else None


def public_key_from_private(d: int) -> bytes:
    from gmssl import sm2

    if not 1 <= d <= seal_check.N - 2:
        raise ValueError("SM2 private key out of range")
    xy = sm2.CryptSM2(private_key="", public_key="")._kg(d, seal_check.GX.lower() + seal_check.GY.lower())
    pub = bytes.fromhex("04" + xy)
    if parse_public_key(pub.hex()) is None:  # pragma: no cover - arithmetic self-check
        raise ValueError("derived public key is not on the curve")
    return pub


def load_or_create_platform_key(workdir: str, key_file: str | None) -> tuple[bytes, bytes]:
    """Returns ``(private 32 bytes, public 65 bytes)``; writes platform.key (0600) / platform.pub."""
    path = key_file or os.path.join(workdir, "platform.key")
    if not os.path.exists(path):
        if key_file:
            raise FileNotFoundError(f"--platform-key {key_file}: no such file")
        d = secrets.randbelow(seal_check.N - 2) + 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{d:064x}\n")
        log.info("generated the platform SM2 key pair in %s", path)
    with open(path, encoding="ascii") as f:
        d = int("".join(f.read().split()), 16)
    pub = public_key_from_private(d)
    pub_path = os.path.join(workdir, "platform.pub")
    tmp = pub_path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(pub.hex() + "\n")
    os.replace(tmp, pub_path)
    return d.to_bytes(32, "big"), pub


# ---- header peek (only to name the device in a notice; seal_check does the real parsing) ----------


def peek_header(data: bytes) -> dict[str, Any] | None:
    if len(data) < 27 or data[0:2] != b"SC":
        return None
    n = data[26]
    if not 1 <= n <= 64 or len(data) < 27 + n:
        return None
    dev = data[27 : 27 + n]
    if min(dev) < 0x21 or max(dev) > 0x7E:
        return None
    key_id, seq = struct.unpack(">II", data[6:14])
    return {
        "version": data[2],
        "flags": data[3],
        "cipher": data[4],
        "msg_type": data[5],
        "key_id": key_id,
        "seq": seq,
        "device_id": dev.decode("ascii"),
    }


# ---- acknowledgement arithmetic ---------------------------------------------------------------------


class RangeSet:
    """Sorted, disjoint, non-adjacent inclusive ranges of positive integers."""

    __slots__ = ("r",)

    def __init__(self) -> None:
        self.r: list[list[int]] = []

    def add(self, lo: int, hi: int) -> None:
        r = self.r
        if not r or lo > r[-1][1] + 1:
            r.append([lo, hi])
            return
        if lo >= r[-1][0]:  # overlaps or extends the last range (the common, in-order case)
            r[-1][1] = max(r[-1][1], hi)
            return
        out: list[list[int]] = []
        placed = False
        for a, b in r:
            if b < lo - 1:
                out.append([a, b])
            elif a > hi + 1:
                if not placed:
                    out.append([lo, hi])
                    placed = True
                out.append([a, b])
            else:
                lo, hi = min(lo, a), max(hi, b)
        if not placed:
            out.append([lo, hi])
        self.r = out

    def __contains__(self, x: int) -> bool:
        r = self.r
        lo, hi = 0, len(r) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            a, b = r[mid]
            if x < a:
                hi = mid - 1
            elif x > b:
                lo = mid + 1
            else:
                return True
        return False

    def cumulative(self) -> int:
        return self.r[0][1] if self.r and self.r[0][0] <= 1 else 0

    def above(self, limit: int = SACK_LIMIT) -> list[list[int]]:
        rest = self.r[1:] if self.cumulative() else self.r
        return [list(x) for x in rest[:limit]]


# ---- failure injection ------------------------------------------------------------------------------


class Injection:
    """Failure injection (see server.py for the control file / HTTP interface).

    http_500 N        answer HTTP 500 to the next N POSTs (not processed)
    http_delay S      delay every HTTP answer by S seconds (after processing); http_delay_count N limits
                      it to the next N answers (absent: until http_delay is set to 0)
    drop_data N       the next N data/backfill envelopes are discarded unprocessed (MQTT: nothing
                      happens; HTTP: the connection is closed without an answer)
    drop_acks N       the next N data/backfill envelopes are processed and persisted, but not acked
    freeze true       process and persist everything, send no ack / key_ok at all until false
    """

    KEYS = ("http_500", "http_delay", "http_delay_count", "drop_data", "drop_acks", "freeze")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http_500 = 0
        self.http_delay = 0.0
        self.http_delay_count: int | None = None
        self.drop_data = 0
        self.drop_acks = 0
        self.freeze = False
        self.used = {"http_500": 0, "http_delay": 0, "drop_data": 0, "drop_acks": 0, "frozen": 0}

    def apply(self, settings: dict[str, Any]) -> list[str]:
        """Set the keys present in ``settings``; returns the names of unknown keys (ignored)."""
        unknown = []
        with self.lock:
            for k, v in settings.items():
                if k == "http_500":
                    self.http_500 = max(0, int(v))
                elif k == "http_delay":
                    self.http_delay = max(0.0, float(v))
                    if "http_delay_count" not in settings:
                        self.http_delay_count = None
                elif k == "http_delay_count":
                    self.http_delay_count = None if v is None else max(0, int(v))
                elif k == "drop_data":
                    self.drop_data = max(0, int(v))
                elif k == "drop_acks":
                    self.drop_acks = max(0, int(v))
                elif k == "freeze":
                    self.freeze = _truthy(v)
                elif not k.startswith("_"):  # "_comment" and the like
                    unknown.append(k)
        return unknown

    def _take(self, name: str) -> bool:
        with self.lock:
            n = getattr(self, name)
            if n > 0:
                setattr(self, name, n - 1)
                self.used[name] += 1
                return True
            return False

    def take_http_500(self) -> bool:
        return self._take("http_500")

    def take_drop_data(self) -> bool:
        return self._take("drop_data")

    def take_drop_acks(self) -> bool:
        return self._take("drop_acks")

    def take_http_delay(self) -> float:
        with self.lock:
            if self.http_delay <= 0 or self.http_delay_count == 0:
                return 0.0
            if self.http_delay_count is not None:
                self.http_delay_count -= 1
            self.used["http_delay"] += 1
            return self.http_delay

    def frozen(self) -> bool:
        with self.lock:
            return self.freeze

    def note_frozen(self) -> None:
        with self.lock:
            self.used["frozen"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "http_500": self.http_500,
                "http_delay": self.http_delay,
                "http_delay_count": self.http_delay_count,
                "drop_data": self.drop_data,
                "drop_acks": self.drop_acks,
                "freeze": self.freeze,
                "used": dict(self.used),
            }


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


# ---- per-device state ---------------------------------------------------------------------------------


@dataclass
class Device:
    id: str
    last_key_id: int = -1
    keys: dict[int, tuple[bytes, int | None]] = field(default_factory=dict)  # key id -> (key, expires_at)
    replay: dict[tuple[int, int], int] = field(default_factory=dict)  # (key id, direction) -> last seq
    have: dict[str, RangeSet] = field(default_factory=dict)  # records (and refused records) held
    held: dict[str, RangeSet] = field(default_factory=dict)  # have + evicted ranges: what acks report
    evicted: dict[str, int] = field(default_factory=dict)  # stream -> number of seqs reported evicted
    counters: dict[str, int] = field(default_factory=dict)
    cipher: int = 1
    transport: str | None = None
    last_seen: int | None = None
    last_heartbeat: int | None = None
    presence: bool | None = None
    presence_at: int | None = None
    presence_t: int | None = None
    cmd_offset: int = 0
    dirty: set[str] = field(default_factory=set)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
        self.dirty.add(name)


@dataclass
class Reply:
    """What to answer to one uplink envelope.

    ``envelope``: the downlink (ack / key_ok) to publish or return; ``notice``: clear JSON error with
    ``status`` for HTTP; ``pushes``: extra downlinks for MQTT (0x82 commands); ``silent``: answer
    nothing (``reason`` says why: dropped, frozen, drop_acks, error)."""

    device_id: str | None
    status: int = 200
    envelope: bytes | None = None
    notice: dict[str, Any] | None = None
    pushes: list[bytes] = field(default_factory=list)
    silent: bool = False
    reason: str = ""


class Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---- the platform -------------------------------------------------------------------------------------


class Platform:
    def __init__(
        self,
        workdir: str,
        *,
        private_key: bytes,
        public_key: bytes,
        devices_dir: str,
        key_grace_s: float = DEFAULT_KEY_GRACE_S,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        downlink_cipher: int = 1,
        injection: Injection | None = None,
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        self.private_key = private_key
        self.public_key = public_key
        self.devices_dir = devices_dir
        self.key_grace_ms = int(key_grace_s * 1000)
        self.heartbeat_interval_ms = int(heartbeat_interval_s * 1000)
        self.downlink_cipher = downlink_cipher
        self.injection = injection or Injection()
        self.lock = threading.RLock()
        self.devices: dict[str, Device] = {}
        self.global_counters: dict[str, int] = {}
        self.extra_stats: dict[str, Any] = {}  # transports add their own section
        for sub in ("heartbeats", "commands"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        os.makedirs(self.devices_dir, exist_ok=True)
        self.db_path = os.path.join(self.workdir, "platform.db")
        self.db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._load()
        self.closed = False
        self._reconcile_received()
        self.received = open(os.path.join(self.workdir, "received.jsonl"), "a", encoding="utf-8")
        self.results = open(os.path.join(self.workdir, "command_results.jsonl"), "a", encoding="utf-8")
        self._last_online: dict[str, bool] = {}
        self.write_stats()

    # ---- persistence -------------------------------------------------------------------------------

    def _dev(self, device_id: str) -> Device:
        d = self.devices.get(device_id)
        if d is None:
            d = self.devices[device_id] = Device(device_id)
        return d

    def _load(self) -> None:
        now = now_ms()
        q = self.db.execute
        with self._tx():
            q("DELETE FROM session_keys WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            q("DELETE FROM replay WHERE NOT EXISTS (SELECT 1 FROM session_keys k WHERE "
              "k.device_id = replay.device_id AND k.key_id = replay.key_id)")
        for dev, last_kid, cipher, transport, seen, pres, pres_at, pres_t in q(
            "SELECT device_id, last_key_id, cipher, transport, last_seen, presence, presence_at, presence_t "
            "FROM devices"
        ):
            d = self._dev(dev)
            d.last_key_id, d.cipher, d.transport, d.last_seen = last_kid, cipher, transport, seen
            d.presence = None if pres is None else bool(pres)
            d.presence_at, d.presence_t = pres_at, pres_t
        for dev, kid, key, exp in q("SELECT device_id, key_id, key, expires_at FROM session_keys"):
            if exp is not None and exp <= now:
                continue
            self._dev(dev).keys[kid] = (bytes(key), exp)
        for dev, kid, direction, last in q("SELECT device_id, key_id, direction, last_seq FROM replay"):
            self._dev(dev).replay[(kid, direction)] = last
        for table in ("records", "refused"):
            for dev, stream, seq in q(f"SELECT device_id, stream, seq FROM {table} ORDER BY device_id, stream, seq"):
                d = self._dev(dev)
                d.have.setdefault(stream, RangeSet()).add(seq, seq)
                d.held.setdefault(stream, RangeSet()).add(seq, seq)
        for dev, stream, lo, hi in q("SELECT device_id, stream, from_seq, to_seq FROM evictions"):
            d = self._dev(dev)
            d.held.setdefault(stream, RangeSet()).add(lo, hi)
            d.evicted[stream] = d.evicted.get(stream, 0) + hi - lo + 1
        for dev, n in q("SELECT device_id, COUNT(*) FROM records GROUP BY device_id"):
            self._dev(dev).counters["records"] = n
        for dev, name, value in q("SELECT device_id, name, value FROM counters"):
            if dev == "":
                self.global_counters[name] = value
            elif name != "records":
                self._dev(dev).counters[name] = value
        for dev, at in q("SELECT device_id, received_at FROM heartbeats"):
            self._dev(dev).last_heartbeat = at
        for d in self.devices.values():
            d.cmd_offset = 0  # re-read command files; ids already known are ignored

    def _reconcile_received(self) -> None:
        """received.jsonl is appended right after each commit; a crash in between (or in the middle of a
        line) would leave it short of the database for good, since re-sent records are duplicates then.
        At start: drop a partial last line and append the records the database holds but the file lacks."""
        path = os.path.join(self.workdir, "received.jsonl")
        seen: set[tuple[str, str, int]] = set()
        if os.path.exists(path):
            with open(path, "rb+") as f:
                data = f.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    log.warning("received.jsonl: partial last line dropped (%d bytes)", len(data) - end)
                    f.truncate(end)
            for line in data[:end].splitlines():
                try:
                    r = json.loads(line)
                    seen.add((r["device_id"], r["stream"], r["seq"]))
                except (ValueError, KeyError, TypeError):
                    continue
        rows = self.db.execute("SELECT device_id, stream, seq, kind, t, resend, lane, body, received_at FROM records "
                               "ORDER BY received_at, device_id, stream, seq")
        added = 0
        with open(path, "a", encoding="utf-8") as f:
            for dev, stream, seq, kind, t, resend, lane, body, at in rows:
                if (dev, stream, seq) in seen:
                    continue
                f.write(json.dumps({"device_id": dev, "stream": stream, "seq": seq, "kind": kind, "t": t,
                                    "resend": bool(resend), "lane": lane, "body": json.loads(body),
                                    "received_at": at}, separators=(",", ":")) + "\n")
                added += 1
        if added:
            log.warning("received.jsonl: %d record(s) held in the database were missing, appended", added)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _save_counters(self, db: sqlite3.Connection, d: Device | None) -> None:
        if d is None:
            for name, value in self.global_counters.items():
                db.execute("INSERT OR REPLACE INTO counters VALUES ('', ?, ?)", (name, value))
            return
        for name in d.dirty:
            if name != "records":
                db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)", (d.id, name, d.counters[name]))
        d.dirty.clear()

    def _save_device_row(self, db: sqlite3.Connection, d: Device) -> None:
        db.execute(
            "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (d.id, d.last_key_id, d.cipher, d.transport, d.last_seen,
             None if d.presence is None else int(d.presence), d.presence_at, d.presence_t),
        )

    def _next_down_seq(self, db: sqlite3.Connection, d: Device, key_id: int) -> int:
        seq = d.replay.get((key_id, DOWN), 0) + 1
        db.execute("INSERT OR REPLACE INTO replay VALUES (?, ?, ?, ?)", (d.id, key_id, DOWN, seq))
        d.replay[(key_id, DOWN)] = seq
        return seq

    # ---- registration --------------------------------------------------------------------------------

    def device_public_key(self, device_id: str) -> bytes | None:
        """Read at every key message, so devices can be registered while the platform runs."""
        path = os.path.join(self.devices_dir, device_file_name(device_id) + ".pub")
        try:
            with open(path, encoding="ascii") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            return None
        pub = parse_public_key(text)
        if pub is None:
            log.error("%s: not an SM2 public key (hex 04||X||Y); device treated as unknown", path)
        return pub

    # ---- entry point -----------------------------------------------------------------------------------

    def handle_uplink(self, data: bytes, *, transport: str, claimed_device: str | None = None) -> Reply:
        data = bytes(data)
        hdr = peek_header(data)
        dev_id = hdr["device_id"] if hdr else claimed_device
        with self.lock:
            if self.closed:
                return Reply(dev_id, status=503, notice={"error": "internal", "detail": "shutting down"},
                             silent=transport == "mqtt", reason="error")
            self._count_global("messages")
            try:
                if claimed_device is not None and hdr is not None and hdr["device_id"] != claimed_device:
                    raise Reject("malformed", f"device id {hdr['device_id']!r} in the header, "
                                              f"{claimed_device!r} in the {'topic' if transport == 'mqtt' else 'path'}")
                if hdr is not None and hdr["msg_type"] in (MSG_DATA, MSG_BACKFILL) and self.injection.take_drop_data():
                    log.info("%s: injected drop of data envelope seq %s", dev_id, hdr["seq"])
                    self._dev(hdr["device_id"]).bump("dropped")
                    self.write_stats()
                    return Reply(dev_id, silent=True, reason="dropped")
                if hdr is not None and hdr["cipher"] == 0:
                    return self._key_message(data, hdr, transport)
                return self._session_message(data, dev_id, transport)
            except Reject as exc:
                return self._reject(dev_id, hdr, exc.reason, exc.detail)
            except seal_check.SealCheckError as exc:
                return self._reject(dev_id, hdr, exc.reason, str(exc).split(": ", 1)[-1])
            except sqlite3.Error as exc:
                log.exception("%s: database error, message not acknowledged", dev_id)
                self._reload_after_error()
                return Reply(dev_id, status=500, notice={"error": "internal", "detail": str(exc)},
                             silent=transport == "mqtt", reason="error")

    def _reload_after_error(self) -> None:
        """A failed transaction leaves memory ahead of the database: rebuild it from the database."""
        self.devices.clear()
        self.global_counters.clear()
        self._load()

    # ---- rejects ---------------------------------------------------------------------------------------

    def _count_global(self, name: str, n: int = 1) -> None:
        self.global_counters[name] = self.global_counters.get(name, 0) + n

    def _reject(self, dev_id: str | None, hdr: dict[str, Any] | None, reason: str, detail: str) -> Reply:
        notice = {
            "error": reason,
            "type": hdr["msg_type"] if hdr else None,
            "key_id": hdr["key_id"] if hdr else None,
            "seq": hdr["seq"] if hdr else None,
            "detail": detail,
            "time": now_ms(),
        }
        log.warning("reject %s from %s: %s (type %s key %s seq %s)", reason, dev_id or "?", detail,
                    notice["type"], notice["key_id"], notice["seq"])
        self._count_global("reject:" + reason)
        d = self.devices.get(dev_id) if dev_id else None
        if d is None and dev_id and self.device_public_key(dev_id) is not None:
            d = self._dev(dev_id)
        if d is not None:
            d.bump("reject:" + reason)
        try:
            with self._tx() as db:
                self._save_counters(db, d)
                self._save_counters(db, None)
        except sqlite3.Error:
            log.exception("could not persist reject counters")
        self.write_stats()
        return Reply(dev_id, status=HTTP_STATUS.get(reason, 400), notice=notice)

    # ---- key message -------------------------------------------------------------------------------------

    def _key_message(self, data: bytes, hdr: dict[str, Any], transport: str) -> Reply:
        dev_id = hdr["device_id"]
        pub = self.device_public_key(dev_id)
        if pub is None:
            seal_check._read_header(data)  # structural errors first (truncated, malformed, version)
            raise Reject("unknown-device", f"no public key registered for {dev_id!r}")
        key_id, key = seal_check.open_key_message(data, self.private_key, pub)
        d = self._dev(dev_id)
        if key_id <= d.last_key_id:
            raise Reject("replay", f"key id {key_id} not greater than the last accepted {d.last_key_id}")
        now = now_ms()
        new_keys = {kid: (k, now + self.key_grace_ms if exp is None else exp) for kid, (k, exp) in d.keys.items()}
        new_keys[key_id] = (key, None)  # superseded keys keep working for the grace period
        with self._tx() as db:
            d.last_key_id = key_id
            d.transport = transport
            d.last_seen = now
            self._save_device_row(db, d)
            db.execute("UPDATE session_keys SET expires_at = ? WHERE device_id = ? AND expires_at IS NULL",
                       (now + self.key_grace_ms, dev_id))
            db.execute("INSERT OR REPLACE INTO session_keys VALUES (?, ?, ?, ?, NULL)", (dev_id, key_id, key, now))
            d.bump("keys_accepted")
            d.bump("msg:key")
            self._save_counters(db, d)
            seq = self._next_down_seq(db, d, key_id)
            self._refresh_commands(db, dev_id)
            pending = self._pending_commands(db, dev_id) if transport == "mqtt" else []
        d.keys = new_keys
        log.info("%s: key id %d accepted (%s)", dev_id, key_id, transport)
        if self.injection.frozen():
            self.injection.note_frozen()
            self.write_stats()
            return Reply(dev_id, silent=True, reason="frozen")
        body = json.dumps({"key_id": key_id, "time": now_ms()}).encode()
        env = seal_check.seal_envelope(key, key_id, dev_id, MSG_KEY_OK, seq, body, cipher=d.cipher)
        pushes = self._command_envelopes(d, pending)
        self.write_stats()
        return Reply(dev_id, envelope=env, pushes=pushes, reason="key_ok")

    # ---- session messages ------------------------------------------------------------------------------

    def _live_keys(self, d: Device) -> dict[int, bytes]:
        now = now_ms()
        return {kid: k for kid, (k, exp) in d.keys.items() if exp is None or exp > now}

    def _session_message(self, data: bytes, dev_id: str | None, transport: str) -> Reply:
        d = self.devices.get(dev_id) if dev_id else None
        keys = self._live_keys(d) if d else {}
        if not keys and dev_id and self.device_public_key(dev_id) is None:
            seal_check._read_header(data)  # structural errors first
            raise Reject("unknown-device", f"no public key registered for {dev_id!r}")
        h, body = seal_check.open_envelope(data, keys)
        assert d is not None  # open_envelope found a key, so the device is known
        if h["flags"] & 1:
            raise Reject("direction", "platform -> device envelope received on the uplink")
        kid, seq, mtype = h["key_id"], h["seq"], h["msg_type"]
        last = d.replay.get((kid, UP), 0)
        if seq <= last:
            raise Reject("replay", f"sequence number {seq} not greater than the last accepted {last} for key id {kid}")
        d.cipher = h["cipher"]
        d.transport = transport
        if mtype in (MSG_DATA, MSG_BACKFILL):
            return self._data(d, h, body)
        if mtype == MSG_HEARTBEAT:
            return self._heartbeat(d, h, body)
        if mtype == MSG_COMMAND_RESULT:
            return self._command_result(d, h, body)
        self._accept_seq_only(d, h)
        raise Reject("malformed", f"unknown or wrong-direction message type 0x{mtype:02x}")

    def _accept_seq_only(self, d: Device, h: dict[str, Any]) -> None:
        """The envelope was authentic but its body is unusable: still burn its sequence number."""
        with self._tx() as db:
            self._mark_seen(db, d, h)

    def _mark_seen(self, db: sqlite3.Connection, d: Device, h: dict[str, Any]) -> None:
        kid, seq = h["key_id"], h["seq"]
        db.execute("INSERT OR REPLACE INTO replay VALUES (?, ?, ?, ?)", (d.id, kid, UP, seq))
        d.replay[(kid, UP)] = seq
        d.last_seen = now_ms()
        d.bump("msg:" + TYPE_NAMES.get(h["msg_type"], f"0x{h['msg_type']:02x}"))
        self._save_device_row(db, d)

    def _json_body(self, d: Device, h: dict[str, Any], body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._accept_seq_only(d, h)
            raise Reject("malformed", f"body is not JSON: {exc}") from None

    def _data(self, d: Device, h: dict[str, Any], body: bytes) -> Reply:
        batch = self._json_body(d, h, body)
        if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
            self._accept_seq_only(d, h)
            raise Reject("malformed", "batch body must be an object with a 'records' list")
        type_lane = "live" if h["msg_type"] == MSG_DATA else "backfill"
        lane = batch.get("lane", type_lane)
        if lane != type_lane:
            log.warning("%s: batch lane %r in a type 0x%02x envelope", d.id, lane, h["msg_type"])
            d.bump("lane_mismatch")
            lane = type_lane
        now = now_ms()
        new: list[dict[str, Any]] = []
        refused: list[tuple[str, int, str, Any]] = []
        evictions: list[tuple[str, int, int, str, int]] = []
        errors: list[dict[str, Any]] = []
        seen_here: set[tuple[str, int]] = set()
        dups = conflicts = 0
        for rec in batch["records"]:
            ident = _identity(rec)
            if isinstance(ident, str):  # no usable identity: reported, cannot be acknowledged
                errors.append({"stream": rec.get("stream") if isinstance(rec, dict) else None,
                               "seq": rec.get("seq") if isinstance(rec, dict) else None, "error": ident})
                continue
            stream, seq = ident
            have = d.have.get(stream)
            if (stream, seq) in seen_here or (have is not None and seq in have):
                dups += 1
                if self._conflicts(d.id, rec, new):
                    conflicts += 1
                continue
            seen_here.add((stream, seq))
            problem = _validate(rec)
            if problem:
                refused.append((stream, seq, problem, rec))
                errors.append({"stream": stream, "seq": seq, "error": problem})
                continue
            held = d.held.get(stream)
            if held is not None and seq in held:
                log.warning("%s: %s/%d arrived although an eviction record reported it lost", d.id, stream, seq)
                d.bump("after_eviction")
            new.append({
                "device_id": d.id, "stream": stream, "seq": seq, "kind": rec["kind"], "t": rec["t"],
                "resend": bool(rec.get("resend", False)), "lane": lane, "body": rec["body"], "received_at": now,
            })
            if rec["kind"] == "eviction":
                b = rec["body"]
                evictions.append((b["stream"], b["from_seq"], b["to_seq"], stream, seq))
        drop_ack = self.injection.take_drop_acks()
        with self._tx() as db:
            self._mark_seen(db, d, h)
            db.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d.id, r["stream"], r["seq"], r["kind"], r["t"], int(r["resend"]), lane,
                  json.dumps(r["body"], separators=(",", ":"), sort_keys=True), now, h["key_id"], h["seq"])
                 for r in new],
            )
            db.executemany(
                "INSERT INTO refused VALUES (?, ?, ?, ?, ?, ?)",
                [(d.id, s, q, err, json.dumps(rec, separators=(",", ":"), default=str), now)
                 for s, q, err, rec in refused],
            )
            db.executemany("INSERT INTO evictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(d.id, s, lo, hi, rs, rq, now) for s, lo, hi, rs, rq in evictions])
            if new:
                d.bump("records", len(new))
            if dups:
                d.bump("duplicates", dups)
            if conflicts:
                d.bump("conflicts", conflicts)
            if refused:
                d.bump("refused", len(refused))
            self._save_counters(db, d)
            reply_needed = not drop_ack and not self.injection.frozen()
            ack = self._ack_body(db, d, h, errors) if reply_needed else None
            down_seq = self._next_down_seq(db, d, h["key_id"]) if reply_needed else 0
        # committed: now the in-memory view and the ground-truth file
        for r in new:
            d.have.setdefault(r["stream"], RangeSet()).add(r["seq"], r["seq"])
            d.held.setdefault(r["stream"], RangeSet()).add(r["seq"], r["seq"])
        for s, q, _err, _rec in refused:
            d.have.setdefault(s, RangeSet()).add(q, q)
            d.held.setdefault(s, RangeSet()).add(q, q)
        for s, lo, hi, _rs, _rq in evictions:
            d.held.setdefault(s, RangeSet()).add(lo, hi)
            d.evicted[s] = d.evicted.get(s, 0) + hi - lo + 1
            log.warning("%s: eviction reported: %s %d..%d lost on the device", d.id, s, lo, hi)
        for r in new:
            self.received.write(json.dumps(r, separators=(",", ":")) + "\n")
        if new:
            self.received.flush()
        if dups:
            log.info("%s: %d duplicate record(s) in seq %d", d.id, dups, h["seq"])
        return self._finish(d, h, ack, down_seq, drop_ack)

    def _finish(self, d: Device, h: dict[str, Any], ack: dict[str, Any] | None, down_seq: int,
                drop_ack: bool = False) -> Reply:
        if ack is None:
            if drop_ack:
                log.info("%s: injected: ack for seq %d not sent", d.id, h["seq"])
                d.bump("acks_suppressed")
                reason = "drop_acks"
            else:
                self.injection.note_frozen()
                d.bump("acks_suppressed")
                reason = "frozen"
            self.write_stats()
            return Reply(d.id, silent=True, reason=reason)
        # acks carry the current streams, rebuilt after the in-memory update
        ack["acks"], ack["sacks"] = self._acks(d)
        body = json.dumps(ack, separators=(",", ":")).encode()
        key = self._live_keys(d).get(h["key_id"])
        if key is None:  # pragma: no cover - the key opened this envelope an instant ago
            raise Reject("unknown-key", str(h["key_id"]))
        env = seal_check.seal_envelope(key, h["key_id"], d.id, MSG_ACK, down_seq, body, cipher=h["cipher"])
        self.write_stats()
        return Reply(d.id, envelope=env, reason="ack")

    def _acks(self, d: Device) -> tuple[dict[str, int], dict[str, list[list[int]]]]:
        acks: dict[str, int] = {}
        sacks: dict[str, list[list[int]]] = {}
        for stream, rs in sorted(d.held.items()):
            acks[stream] = rs.cumulative()
            above = rs.above()
            if above:
                sacks[stream] = above
        return acks, sacks

    def _ack_body(self, db: sqlite3.Connection, d: Device, h: dict[str, Any],
                  errors: list[dict[str, Any]]) -> dict[str, Any]:
        self._refresh_commands(db, d.id)
        cmds = self._pending_commands(db, d.id)
        now = now_ms()
        for c in cmds:
            db.execute("UPDATE commands SET delivered = delivered + 1, last_delivered_at = ? "
                       "WHERE device_id = ? AND id = ?", (now, d.id, c["id"]))
        return {"acks": {}, "sacks": {}, "seq": h["seq"], "time": now, "commands": cmds, "errors": errors}

    def _conflicts(self, dev_id: str, rec: dict[str, Any], new: list[dict[str, Any]]) -> bool:
        """A duplicate identity whose content differs from what is held (a device bug worth a warning)."""
        stream, seq = rec["stream"], rec["seq"]
        kind, body = rec.get("kind"), rec.get("body")
        held = next((r for r in new if r["stream"] == stream and r["seq"] == seq), None)
        if held is not None:
            same = held["kind"] == kind and held["body"] == body
        else:
            row = self.db.execute("SELECT kind, body FROM records WHERE device_id = ? AND stream = ? AND seq = ?",
                                  (dev_id, stream, seq)).fetchone()
            if row is None:
                return False  # held as refused
            same = row[0] == kind and json.loads(row[1]) == body
        if not same:
            log.warning("%s: %s/%s re-sent with different content (kept the first)", dev_id, stream, seq)
        return not same

    def _heartbeat(self, d: Device, h: dict[str, Any], body: bytes) -> Reply:
        hb = self._json_body(d, h, body)
        if not isinstance(hb, dict):
            self._accept_seq_only(d, h)
            raise Reject("malformed", "heartbeat body must be a JSON object")
        now = now_ms()
        with self._tx() as db:
            self._mark_seen(db, d, h)
            db.execute("INSERT OR REPLACE INTO heartbeats VALUES (?, ?, ?, ?, ?, ?)",
                       (d.id, now, h["key_id"], h["seq"], h["timestamp_ms"], json.dumps(hb)))
            d.bump("heartbeats")
            self._save_counters(db, d)
            frozen = self.injection.frozen()
            ack = None if frozen else self._ack_body(db, d, h, [])
            down_seq = 0 if frozen else self._next_down_seq(db, d, h["key_id"])
        d.last_heartbeat = now
        write_json_atomic(
            os.path.join(self.workdir, "heartbeats", device_file_name(d.id) + ".json"),
            {"device_id": d.id, "received_at": now, "key_id": h["key_id"], "seq": h["seq"],
             "timestamp_ms": h["timestamp_ms"], "body": hb},
        )
        return self._finish(d, h, ack, down_seq)

    def _command_result(self, d: Device, h: dict[str, Any], body: bytes) -> Reply:
        res = self._json_body(d, h, body)
        if not isinstance(res, dict):
            self._accept_seq_only(d, h)
            raise Reject("malformed", "command_result body must be a JSON object")
        now = now_ms()
        with self._tx() as db:
            self._mark_seen(db, d, h)
            if res.get("id") is not None:
                db.execute("UPDATE commands SET result_at = ?, result = ? WHERE device_id = ? AND id = ?",
                           (now, json.dumps(res), d.id, str(res["id"])))
            d.bump("command_results")
            self._save_counters(db, d)
            frozen = self.injection.frozen()
            ack = None if frozen else self._ack_body(db, d, h, [])
            down_seq = 0 if frozen else self._next_down_seq(db, d, h["key_id"])
        line = dict(res)
        line.update(device_id=d.id, received_at=now)
        self.results.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
        self.results.flush()
        log.info("%s: command %s result ok=%s", d.id, res.get("id"), res.get("ok"))
        return self._finish(d, h, ack, down_seq)

    # ---- commands -------------------------------------------------------------------------------------

    def _refresh_commands(self, db: sqlite3.Connection, dev_id: str) -> list[dict[str, Any]]:
        """Read lines appended to commands/<device>.jsonl since the last look; returns the new commands."""
        d = self._dev(dev_id)
        path = os.path.join(self.workdir, "commands", device_file_name(dev_id) + ".jsonl")
        try:
            size = os.path.getsize(path)
        except OSError:
            return []
        if size < d.cmd_offset:  # truncated / replaced: read it again, known ids are ignored
            d.cmd_offset = 0
        if size == d.cmd_offset:
            return []
        with open(path, "rb") as f:
            f.seek(d.cmd_offset)
            chunk = f.read(size - d.cmd_offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line is being written
        d.cmd_offset += end + 1
        added = []
        now = now_ms()
        for raw in chunk[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                c = json.loads(raw)
                if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                    raise ValueError("need an object with a 'name'")
                args = c.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("'args' must be an object")
            except ValueError as exc:
                log.error("%s: bad command line %r: %s", path, raw[:200], exc)
                continue
            cid = str(c.get("id") or f"cmd-{now}-{secrets.token_hex(3)}")
            n = db.execute("SELECT COALESCE(MAX(queued), 0) + 1 FROM commands WHERE device_id = ?", (dev_id,)).fetchone()[0]
            cur = db.execute("INSERT OR IGNORE INTO commands (device_id, id, name, args, t, queued) VALUES (?, ?, ?, ?, ?, ?)",
                             (dev_id, cid, c["name"], json.dumps(args), now, n))
            if cur.rowcount:
                added.append({"id": cid, "name": c["name"], "args": args, "t": now})
                log.info("%s: command %s (%s) queued", dev_id, cid, c["name"])
        return added

    def _pending_commands(self, db: sqlite3.Connection, dev_id: str) -> list[dict[str, Any]]:
        rows = db.execute("SELECT id, name, args, t FROM commands WHERE device_id = ? AND result_at IS NULL "
                          "ORDER BY queued", (dev_id,)).fetchall()
        return [{"id": i, "name": n, "args": json.loads(a), "t": t} for i, n, a, t in rows]

    def _command_envelopes(self, d: Device, cmds: list[dict[str, Any]]) -> list[bytes]:
        if not cmds or d.last_key_id not in d.keys:
            return []
        key = d.keys[d.last_key_id][0]
        out = []
        with self._tx() as db:
            seqs = [self._next_down_seq(db, d, d.last_key_id) for _ in cmds]
        for c, seq in zip(cmds, seqs):
            body = json.dumps(c, separators=(",", ":")).encode()
            out.append(seal_check.seal_envelope(key, d.last_key_id, d.id, MSG_COMMAND, seq, body, cipher=d.cipher))
        return out

    def poll_commands(self) -> list[tuple[str, bytes]]:
        """Housekeeping: pick up new command lines of every device; returns 0x82 envelopes to publish to
        devices last seen on MQTT (the others get their commands in the next ack)."""
        out: list[tuple[str, bytes]] = []
        cdir = os.path.join(self.workdir, "commands")
        with self.lock:
            try:
                names = [n[:-6] for n in os.listdir(cdir) if n.endswith(".jsonl")]
            except OSError:
                return out
            for name in names:
                dev_id = device_from_file_name(name)
                d = self.devices.get(dev_id)
                try:
                    if d is not None and os.path.getsize(os.path.join(cdir, name + ".jsonl")) == d.cmd_offset:
                        continue
                except OSError:
                    continue
                try:
                    with self._tx() as db:
                        added = self._refresh_commands(db, dev_id)
                    d = self.devices[dev_id]
                    if added and d.transport == "mqtt" and not self.injection.frozen():
                        out.extend((dev_id, env) for env in self._command_envelopes(d, added))
                except sqlite3.Error:
                    log.exception("%s: could not queue commands", dev_id)
            if out:
                self.write_stats()
        return out

    # ---- presence / housekeeping -------------------------------------------------------------------------

    def set_presence(self, device_id: str, online: bool, t: int | None) -> None:
        with self.lock:
            d = self._dev(device_id)
            d.presence, d.presence_at, d.presence_t = online, now_ms(), t
            try:
                with self._tx() as db:
                    self._save_device_row(db, d)
            except sqlite3.Error:
                log.exception("%s: could not persist presence", device_id)
            log.info("%s: presence %s", device_id, "online" if online else "offline")
            self.write_stats()

    def online(self, d: Device, now: int | None = None) -> bool:
        """Online while messages arrive; offline after 3 missed heartbeat intervals or when the MQTT last
        will (or the device itself) says so after the last message."""
        now = now_ms() if now is None else now
        activity = d.last_seen or 0
        if d.presence and d.presence_at:
            activity = max(activity, d.presence_at)
        if d.presence is False and (d.presence_at or 0) >= (d.last_seen or 0):
            return False
        return activity > 0 and now - activity <= 3 * self.heartbeat_interval_ms

    def housekeeping(self) -> None:
        """Expire superseded keys after their grace period; rewrite stats when presence changed."""
        with self.lock:
            now = now_ms()
            changed = False
            for d in self.devices.values():
                gone = [kid for kid, (_k, exp) in d.keys.items() if exp is not None and exp <= now]
                if gone:
                    try:
                        with self._tx() as db:
                            for kid in gone:
                                db.execute("DELETE FROM session_keys WHERE device_id = ? AND key_id = ?", (d.id, kid))
                                db.execute("DELETE FROM replay WHERE device_id = ? AND key_id = ?", (d.id, kid))
                    except sqlite3.Error:
                        log.exception("%s: could not delete expired keys", d.id)
                        continue
                    for kid in gone:
                        d.keys.pop(kid, None)
                        d.replay.pop((kid, UP), None)
                        d.replay.pop((kid, DOWN), None)
                        log.info("%s: key id %d deleted after its grace period", d.id, kid)
                    changed = True
                on = self.online(d, now)
                if self._last_online.get(d.id) != on:
                    changed = True
            if changed:
                self.write_stats()

    # ---- stats -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            now = now_ms()
            devices = {}
            for d in self.devices.values():
                c = d.counters
                acks, sacks = self._acks(d)
                on = self.online(d, now)
                self._last_online[d.id] = on
                devices[d.id] = {
                    "records": c.get("records", 0),
                    "duplicates": c.get("duplicates", 0),
                    "conflicts": c.get("conflicts", 0),
                    "refused": c.get("refused", 0),
                    "after_eviction": c.get("after_eviction", 0),
                    "rejects": {k[7:]: v for k, v in sorted(c.items()) if k.startswith("reject:")},
                    "messages": {k[4:]: v for k, v in sorted(c.items()) if k.startswith("msg:")},
                    "keys_accepted": c.get("keys_accepted", 0),
                    "key_id": d.last_key_id if d.last_key_id >= 0 else None,
                    "live_key_ids": sorted(self._live_keys(d)),
                    "heartbeats": c.get("heartbeats", 0),
                    "last_heartbeat": d.last_heartbeat,
                    "last_seen": d.last_seen,
                    "online": on,
                    "presence": None if d.presence is None else {"online": d.presence, "t": d.presence_t,
                                                                 "received_at": d.presence_at},
                    "transport": d.transport,
                    "acks": acks,
                    "sacks": sacks,
                    "evicted": dict(sorted(d.evicted.items())),
                    "dropped": c.get("dropped", 0),
                    "acks_suppressed": c.get("acks_suppressed", 0),
                    "command_results": c.get("command_results", 0),
                    "lane_mismatch": c.get("lane_mismatch", 0),
                }
            g = self.global_counters
            return {
                "time": now,
                "pid": os.getpid(),
                "messages": g.get("messages", 0),
                "rejects": {k[7:]: v for k, v in sorted(g.items()) if k.startswith("reject:")},
                "records": sum(v["records"] for v in devices.values()),
                "duplicates": sum(v["duplicates"] for v in devices.values()),
                "injection": self.injection.snapshot(),
                "devices": devices,
                **self.extra_stats,
            }

    def write_stats(self) -> None:
        try:
            write_json_atomic(os.path.join(self.workdir, "stats.json"), self.stats())
        except OSError:
            log.exception("could not write stats.json")

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.write_stats()
            for f in (self.received, self.results):
                try:
                    f.close()
                except OSError:
                    pass
            self.db.close()


# ---- record validation ----------------------------------------------------------------------------------


def _identity(rec: Any) -> tuple[str, int] | str:
    if not isinstance(rec, dict):
        return "record is not an object"
    stream, seq = rec.get("stream"), rec.get("seq")
    if not isinstance(stream, str) or not stream or len(stream) > 128:
        return "stream must be a non-empty string"
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        return "seq must be an integer >= 1"
    return stream, seq


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate(rec: dict[str, Any]) -> str | None:
    """Problems that make a record invalid (refused, reported in ``errors`` and acknowledged)."""
    if not isinstance(rec.get("kind"), str) or not rec["kind"]:
        return "kind must be a non-empty string"
    if not _is_number(rec.get("t")):
        return "t must be a number (seconds)"
    if "resend" in rec and not isinstance(rec["resend"], bool):
        return "resend must be true or false"
    if not isinstance(rec.get("body"), dict):
        return "body must be an object"
    if rec["kind"] == "eviction":
        b = rec["body"]
        s, lo, hi = b.get("stream"), b.get("from_seq"), b.get("to_seq")
        if not isinstance(s, str) or not s:
            return "eviction: stream must be a non-empty string"
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not 1 <= lo <= hi <= MAX_SEQ:
            return "eviction: need integers 1 <= from_seq <= to_seq"
    return None
