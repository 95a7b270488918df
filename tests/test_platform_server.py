"""The reference platform (tools/platform/server.py) against docs/platform-protocol.md, WITHOUT the collector's
uplink code: the "device" here is a small helper built from gmssl and tools.platform.seal_check primitives,
and the platform runs as its own process (``python -m tools.platform.server``)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from Cryptodome.Util.asn1 import DerOctetString, DerSequence
from gmssl import sm2, sm3

from tests.mqtt_broker import mqtt_broker  # noqa: F401 - pytest fixture
from tools.platform import seal_check as SC

ROOT = Path(__file__).resolve().parents[1]
G = SC.GX.lower() + SC.GY.lower()


# ---- the device side, from primitives -----------------------------------------------------------------


def _sm3(b: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(list(b)))


def _kdf(z: bytes, n: int) -> bytes:
    return bytes.fromhex(sm3.sm3_kdf(z.hex().encode(), n))


def _gm(private_hex: str = "", asn1: bool = False) -> Any:
    return sm2.CryptSM2(private_key=private_hex, public_key="", asn1=asn1)


def sm2_encrypt_der(pub: bytes, msg: bytes) -> bytes:
    """GB/T 32918.4 encryption, GB/T 35276 DER SEQUENCE{x, y, C3, C2}."""
    while True:
        k = secrets.randbelow(SC.N - 2) + 1
        c1 = _gm()._kg(k, G)
        xy = _gm()._kg(k, pub[1:].hex())
        t = _kdf(bytes.fromhex(xy), len(msg))
        if any(t):
            break
    x2, y2 = bytes.fromhex(xy[:64]), bytes.fromhex(xy[64:])
    c2 = bytes(a ^ b for a, b in zip(msg, t))
    c3 = _sm3(x2 + msg + y2)
    return DerSequence([int(c1[:64], 16), int(c1[64:], 16), DerOctetString(c3), DerOctetString(c2)]).encode()


def sm2_sign_der(d: int, pub: bytes, msg: bytes, uid: bytes = b"1234567812345678") -> bytes:
    za = _sm3((8 * len(uid)).to_bytes(2, "big") + uid + SC.A.to_bytes(32, "big") + SC.B.to_bytes(32, "big")
              + bytes.fromhex(G) + pub[1:])
    e = _sm3(za + msg)
    while True:
        sig = _gm(f"{d:064x}", asn1=True).sign(e, f"{secrets.randbelow(SC.N - 2) + 1:064x}")
        if sig:
            return bytes.fromhex(sig)


class Device:
    """A test device: SM2 identity, key messages, sealing uplinks, opening downlinks (with replay check)."""

    def __init__(self, device_id: str, platform_pub: bytes) -> None:
        self.id = device_id
        self.platform_pub = platform_pub
        self.d = secrets.randbelow(SC.N - 2) + 1
        self.pub = bytes.fromhex("04" + _gm()._kg(self.d, G))
        self.key_id = 0
        self.key: bytes | None = None
        self.keys: dict[int, bytes] = {}
        self.seq = 0
        self.cipher = 1
        self.down_seq: dict[int, int] = {}
        self.pending: tuple[int, bytes] | None = None

    def key_message(self, key_id: int | None = None, seq: int = 1, key: bytes | None = None) -> bytes:
        kid = self.key_id + 1 if key_id is None else key_id
        key = key or os.urandom(16)
        enc = sm2_encrypt_der(self.platform_pub, key)
        dev = self.id.encode()
        ts = int(time.time() * 1000)
        fixed = b"SC" + bytes([1, 0, 0, 0x01]) + struct.pack(">IIQ", kid, seq, ts)
        tbs = fixed + bytes([len(dev)]) + dev + struct.pack(">H", len(enc)) + enc
        sig = sm2_sign_der(self.d, self.pub, tbs)
        payload = struct.pack(">H", len(enc)) + enc + struct.pack(">H", len(sig)) + sig
        self.pending = (kid, key)
        return fixed + struct.pack(">I", len(payload)) + bytes([len(dev)]) + dev + payload

    def adopt(self, key_ok: bytes) -> dict[str, Any]:
        assert self.pending is not None
        kid, key = self.pending
        self.keys[kid] = key
        h, body = self.open_down(key_ok)
        assert h["msg_type"] == 0x02 and h["key_id"] == kid
        self.key_id, self.key, self.seq, self.pending = kid, key, 0, None
        return body

    def seal(self, msg_type: int, body: Any, *, seq: int | None = None, cipher: int | None = None,
             key_id: int | None = None) -> bytes:
        kid = self.key_id if key_id is None else key_id
        if seq is None:
            self.seq += 1
            seq = self.seq
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return SC.seal_envelope(self.keys[kid], kid, self.id, msg_type, seq, raw,
                                cipher=cipher or self.cipher, direction=0)

    def open_down(self, env: bytes) -> tuple[dict[str, Any], Any]:
        h, body = SC.open_envelope(env, self.keys)
        assert h["flags"] == 1, "downlink must have the direction bit set"
        last = self.down_seq.get(h["key_id"], 0)
        assert h["seq"] > last, f"downlink replay: seq {h['seq']} after {last}"
        self.down_seq[h["key_id"]] = h["seq"]
        return h, json.loads(body)


def rec(stream: str, seq: int, /, kind: str = "sale", resend: bool = False, **body: Any) -> dict[str, Any]:
    return {"stream": stream, "seq": seq, "kind": kind, "t": round(time.time(), 3), "resend": resend,
            "body": {"mono": 1000.0 + seq, "boot": "b00t", "clock": "synced", **body}}


def batch(records: list[dict[str, Any]], lane: str = "live") -> dict[str, Any]:
    return {"v": 1, "lane": lane, "records": records}


# ---- the platform process ---------------------------------------------------------------------------------


def wait_for(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class PlatformProc:
    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = Path(workdir)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, ready: bool = True) -> PlatformProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.platform.server", "--workdir", str(self.workdir),
                                      "--log-level", "DEBUG", *self.args], cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"platform exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            info = self.info()
            return info if info and info.get("pid") == self.proc.pid and (info["ready"] or not ready) else None

        self.server = wait_for(up, timeout, "platform start")
        self.platform_pub = bytes.fromhex(self.server["platform_pub"])
        return self

    def info(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.workdir / "server.json").read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # interaction

    def register(self, dev: Device) -> Device:
        ddir = Path(self.server["devices_dir"])
        (ddir / f"{dev.id}.pub").write_text(dev.pub.hex() + "\n")
        return dev

    def device(self, name: str) -> Device:
        return self.register(Device(name, self.platform_pub))

    def post(self, device_id: str, env: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
        h = self.server["http"]
        conn = http.client.HTTPConnection(h["host"], h["port"], timeout=timeout)
        try:
            conn.request("POST", f"/sc/v1/{device_id}/up", body=env,
                         headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, Any]:
        h = self.server["http"]
        conn = http.client.HTTPConnection(h["host"], h["port"], timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def control(self, **settings: Any) -> None:
        tmp = self.workdir / "control.json.tmp"
        tmp.write_text(json.dumps(settings))
        os.replace(tmp, self.workdir / "control.json")

    def stats(self) -> dict[str, Any]:
        return json.loads((self.workdir / "stats.json").read_text())

    def dstats(self, dev: Device) -> dict[str, Any]:
        return self.stats()["devices"].get(dev.id, {})

    def received(self, device_id: str | None = None) -> list[dict[str, Any]]:
        p = self.workdir / "received.jsonl"
        lines = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
        return [x for x in lines if device_id is None or x["device_id"] == device_id]

    # exchanges

    def handshake(self, dev: Device, **kw: Any) -> dict[str, Any]:
        status, body = self.post(dev.id, dev.key_message(**kw))
        assert status == 200, (status, body)
        return dev.adopt(body)

    def send(self, dev: Device, msg_type: int, body: Any, **kw: Any) -> tuple[int, Any]:
        status, raw = self.post(dev.id, dev.seal(msg_type, body, **kw))
        if status == 200:
            h, obj = dev.open_down(raw)
            assert h["msg_type"] == 0x81
            return status, obj
        return status, json.loads(raw)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    p = PlatformProc(tmp_path_factory.mktemp("platform"), "--http-port", "0", "--key-grace", "4",
                     "--freeze-hold", "1").start()
    yield p
    rc = p.stop()
    assert rc == 0, p.log()[-3000:]


# ---- HTTP ------------------------------------------------------------------------------------------------


def test_first_start_writes_key_pair(platform):
    key = platform.workdir / "platform.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = (platform.workdir / "platform.pub").read_text().strip()
    assert len(pub) == 130 and pub.startswith("04") and pub == platform.server["platform_pub"]
    d = int(key.read_text().strip(), 16)
    assert _gm()._kg(d, G) == pub[2:]


def test_key_exchange(platform):
    dev = platform.device("GD-KEY-0001")
    t0 = int(time.time() * 1000)
    body = platform.handshake(dev, key_id=5)
    assert body["key_id"] == 5 and abs(body["time"] - t0) < 5000
    st = platform.dstats(dev)
    assert st["keys_accepted"] == 1 and st["key_id"] == 5
    # the key id must increase: the same or a lower id is a replay
    for kid in (5, 4):
        status, raw = platform.post(dev.id, dev.key_message(key_id=kid))
        assert status == 409 and json.loads(raw)["error"] == "replay"
    # a new key: key_ok under it; the old key still works during the grace period (4 s here)
    old_kid = dev.key_id
    platform.handshake(dev, key_id=9)
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 1)]), key_id=old_kid, seq=100)
    assert status == 200 and ack["acks"]["sale:1"] == 1
    wait_for(lambda: old_kid not in platform.dstats(dev)["live_key_ids"], 20, "grace expiry")
    status, notice = platform.send(dev, 0x10, batch([rec("sale:1", 2)]), key_id=old_kid, seq=101)
    assert status == 401 and notice["error"] == "unknown-key" and notice["key_id"] == old_kid
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 2)]))
    assert status == 200 and ack["acks"]["sale:1"] == 2
    assert platform.dstats(dev)["keys_accepted"] == 2


def test_data_batch_persisted_then_acked(platform):
    dev = platform.device("GD-DATA-0001")
    platform.handshake(dev)
    recs = [rec("sale:3", 1, volume=25.31), rec("sale:3", 2, volume=1.5), rec("state", 1, kind="nozzle_state")]
    status, ack = platform.send(dev, 0x10, batch(recs))
    assert status == 200
    assert ack["acks"] == {"sale:3": 2, "state": 1} and ack["sacks"] == {}
    assert ack["seq"] == dev.seq and ack["errors"] == [] and ack["commands"] == []
    assert abs(ack["time"] - time.time() * 1000) < 5000
    got = platform.received(dev.id)
    assert [(r["stream"], r["seq"]) for r in got] == [("sale:3", 1), ("sale:3", 2), ("state", 1)]
    first = got[0]
    assert set(first) == {"device_id", "stream", "seq", "kind", "t", "resend", "lane", "body", "received_at"}
    assert first["lane"] == "live" and first["body"]["volume"] == 25.31 and first["kind"] == "sale"
    db = sqlite3.connect(f"file:{platform.workdir / 'platform.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM records WHERE device_id = ?", (dev.id,)).fetchone()[0] == 3
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    st = platform.dstats(dev)
    assert st["records"] == 3 and st["duplicates"] == 0 and st["acks"] == {"sale:3": 2, "state": 1}
    # backfill lane, cipher 2
    status, ack = platform.send(dev, 0x11, batch([rec("sale:3", 3, resend=True)], lane="backfill"), cipher=2)
    assert status == 200 and ack["acks"]["sale:3"] == 3
    assert platform.received(dev.id)[-1]["lane"] == "backfill" and platform.received(dev.id)[-1]["resend"] is True


def test_duplicate_batch_counted_and_acked(platform):
    dev = platform.device("GD-DUP-0001")
    platform.handshake(dev)
    b = batch([rec("sale:1", i) for i in (1, 2, 3)])
    assert platform.send(dev, 0x10, b)[1]["acks"] == {"sale:1": 3}
    status, ack = platform.send(dev, 0x11, dict(b, lane="backfill"))  # the same records again (lost ack)
    assert status == 200 and ack["acks"] == {"sale:1": 3}
    st = platform.dstats(dev)
    assert st["records"] == 3 and st["duplicates"] == 3 and st["conflicts"] == 0
    assert len(platform.received(dev.id)) == 3
    # same identity, different content: still a duplicate (the first one is kept), flagged as a conflict
    changed = rec("sale:1", 2, volume=99.0)
    assert platform.send(dev, 0x10, batch([changed]))[1]["acks"] == {"sale:1": 3}
    st = platform.dstats(dev)
    assert st["duplicates"] == 4 and st["conflicts"] == 1
    # a record repeated inside one batch
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 4), rec("sale:1", 4)]))
    assert ack["acks"] == {"sale:1": 4} and platform.dstats(dev)["duplicates"] == 5


def test_out_of_order_gives_sacks(platform):
    dev = platform.device("GD-SACK-0001")
    platform.handshake(dev)
    _, ack = platform.send(dev, 0x10, batch([rec("sale:2", 1), rec("sale:2", 2)]))
    assert ack["acks"] == {"sale:2": 2} and ack["sacks"] == {}
    _, ack = platform.send(dev, 0x10, batch([rec("sale:2", 5), rec("sale:2", 6), rec("sale:2", 8)]))
    assert ack["acks"] == {"sale:2": 2} and ack["sacks"] == {"sale:2": [[5, 6], [8, 8]]}
    _, ack = platform.send(dev, 0x11, batch([rec("sale:2", 3, resend=True), rec("sale:2", 4, resend=True)],
                                             lane="backfill"))
    assert ack["acks"] == {"sale:2": 6} and ack["sacks"] == {"sale:2": [[8, 8]]}
    # nothing from seq 1 yet: cumulative 0, everything in sacks
    _, ack = platform.send(dev, 0x10, batch([rec("totals", 3)]))
    assert ack["acks"]["totals"] == 0 and ack["sacks"]["totals"] == [[3, 3]]


def test_eviction_record_makes_the_gap_held(platform):
    dev = platform.device("GD-EVICT-0001")
    platform.handshake(dev)
    _, ack = platform.send(dev, 0x10, batch([rec("sale:4", 1), rec("sale:4", 2), rec("sale:4", 11)]))
    assert ack["acks"]["sale:4"] == 2 and ack["sacks"]["sale:4"] == [[11, 11]]
    ev = rec("event", 1, kind="eviction", stream="sale:4", from_seq=3, to_seq=10, count=8,
             first_totals=None, last_totals=None, reason="ring_full")
    _, ack = platform.send(dev, 0x11, batch([ev], lane="backfill"))
    assert ack["acks"]["sale:4"] == 11 and "sale:4" not in ack["sacks"] and ack["acks"]["event"] == 1
    _, ack = platform.send(dev, 0x10, batch([rec("sale:4", 12)]))
    assert ack["acks"]["sale:4"] == 12
    st = platform.dstats(dev)
    assert st["evicted"] == {"sale:4": 8} and st["acks"]["sale:4"] == 12
    # an eviction of a stream the platform has never seen: 1..5 held
    ev2 = rec("event", 2, kind="eviction", stream="alarm", from_seq=1, to_seq=5, count=5)
    _, ack = platform.send(dev, 0x10, batch([ev2]))
    assert ack["acks"]["alarm"] == 5


def test_invalid_records_reported_and_acknowledged(platform):
    dev = platform.device("GD-ERR-0001")
    platform.handshake(dev)
    bad = rec("sale:1", 2)
    bad["body"] = "not an object"
    no_id = {"stream": "sale:1", "kind": "sale", "t": 1.0, "body": {}}
    _, ack = platform.send(dev, 0x10, batch([rec("sale:1", 1), bad, no_id]))
    assert ack["acks"] == {"sale:1": 2}
    errs = {(e["stream"], e["seq"]): e["error"] for e in ack["errors"]}
    assert "body" in errs[("sale:1", 2)] and "seq" in errs[("sale:1", None)]
    assert len(platform.received(dev.id)) == 1 and platform.dstats(dev)["refused"] == 1
    # a body that is not a batch: malformed notice (authentic, so its sequence number is used up)
    status, notice = platform.send(dev, 0x10, {"records": "nope"})
    assert status == 400 and notice["error"] == "malformed"
    status, notice = platform.send(dev, 0x10, b"\xff not json")
    assert status == 400 and notice["error"] == "malformed"


def test_tampered_envelope_is_auth_reject(platform):
    dev = platform.device("GD-TAMPER-0001")
    platform.handshake(dev)
    before = platform.stats()["rejects"].get("auth", 0)
    env = bytearray(dev.seal(0x10, batch([rec("sale:1", 1)])))
    env[-20] ^= 0x01
    status, raw = platform.post(dev.id, bytes(env))
    notice = json.loads(raw)
    assert status == 401 and notice["error"] == "auth"
    assert notice["type"] == 0x10 and notice["key_id"] == dev.key_id and notice["seq"] == dev.seq
    assert {"detail", "time"} <= set(notice)
    assert platform.dstats(dev)["rejects"] == {"auth": 1}
    assert platform.stats()["rejects"]["auth"] == before + 1
    assert platform.received(dev.id) == []
    # a tampered key message (signature covers the header)
    km = bytearray(dev.key_message())
    km[17] ^= 0x01  # timestamp byte
    status, raw = platform.post(dev.id, bytes(km))
    assert status == 401 and json.loads(raw)["error"] == "auth"


def test_replayed_sequence_is_409(platform):
    dev = platform.device("GD-REPLAY-0001")
    platform.handshake(dev)
    env = dev.seal(0x10, batch([rec("sale:1", 1)]))
    assert platform.post(dev.id, env)[0] == 200
    status, raw = platform.post(dev.id, env)
    assert status == 409 and json.loads(raw)["error"] == "replay"
    status, raw = platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 2)]), seq=dev.seq))
    assert status == 409
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 2)]))  # re-sealed with a new seq
    assert status == 200 and ack["acks"] == {"sale:1": 2}
    assert platform.dstats(dev)["rejects"] == {"replay": 2}


def test_unknown_device_is_401(platform):
    stranger = Device("GD-NOBODY-0001", platform.platform_pub)  # not registered
    status, raw = platform.post(stranger.id, stranger.key_message())
    notice = json.loads(raw)
    assert status == 401 and notice["error"] == "unknown-device" and notice["type"] == 1
    stranger.keys[1], stranger.key_id = os.urandom(16), 1
    status, raw = platform.post(stranger.id, stranger.seal(0x10, batch([rec("sale:1", 1)])))
    assert status == 401 and json.loads(raw)["error"] == "unknown-device"
    assert platform.stats()["rejects"]["unknown-device"] >= 2
    # registered while the platform runs: accepted from then on
    platform.register(stranger)
    platform.handshake(stranger)


def test_malformed_inputs(platform):
    dev = platform.device("GD-MALF-0001")
    platform.handshake(dev)
    env = dev.seal(0x10, batch([rec("sale:1", 1)]))
    for data, reason in ((env[:30], "truncated"), (env + b"x", "malformed"), (b"XX" + env[2:], "malformed"),
                         (env[:2] + b"\x02" + env[3:], "version")):
        status, raw = platform.post(dev.id, data)
        assert (status, json.loads(raw)["error"]) == (400, reason), data[:8]
    # header names another device than the path
    status, raw = platform.post("GD-OTHER", dev.seal(0x10, batch([rec("sale:1", 1)])))
    assert status == 400 and json.loads(raw)["error"] == "malformed"
    # a platform -> device envelope reflected back
    down = SC.seal_envelope(dev.key, dev.key_id, dev.id, 0x10, 500, b"{}", direction=1)
    status, raw = platform.post(dev.id, down)
    assert status == 400 and json.loads(raw)["error"] == "direction"
    # an unknown message type
    status, raw = platform.post(dev.id, dev.seal(0x44, {"x": 1}))
    assert status == 400 and json.loads(raw)["error"] == "malformed"
    status, _ = platform.post(dev.id, b"")
    assert status == 400


def test_heartbeat_stored_and_acked(platform):
    dev = platform.device("GD-HB-0001")
    platform.handshake(dev)
    platform.send(dev, 0x10, batch([rec("sale:1", 1)]))
    hb = {"software": "1.0", "uptime": 12, "queues": {"sale:1": {"unacked": 0}}}
    status, ack = platform.send(dev, 0x20, hb)
    assert status == 200 and ack["acks"] == {"sale:1": 1} and ack["seq"] == dev.seq
    saved = json.loads((platform.workdir / "heartbeats" / f"{dev.id}.json").read_text())
    assert saved["body"] == hb and saved["device_id"] == dev.id
    st = platform.dstats(dev)
    assert st["last_heartbeat"] == saved["received_at"] and st["online"] is True and st["heartbeats"] == 1


def test_commands_in_ack_and_results(platform):
    dev = platform.device("GD-CMD-0001")
    platform.handshake(dev)
    with open(platform.workdir / "commands" / f"{dev.id}.jsonl", "a") as f:
        f.write(json.dumps({"id": "c1", "name": "ping", "args": {}}) + "\n")
        f.write(json.dumps({"id": "c2", "name": "resend", "args": {"stream": "sale:1", "from_seq": 1,
                                                                   "to_seq": 5}}) + "\n")
    _, ack = platform.send(dev, 0x20, {"uptime": 1})
    assert [c["id"] for c in ack["commands"]] == ["c1", "c2"]
    assert ack["commands"][1]["args"] == {"stream": "sale:1", "from_seq": 1, "to_seq": 5}
    assert all(isinstance(c["t"], int) for c in ack["commands"])
    status, ack = platform.send(dev, 0x30, {"id": "c1", "ok": True, "result": {"pong": 1}, "error": None})
    assert status == 200 and [c["id"] for c in ack["commands"]] == ["c2"]  # pending until its result
    lines = [json.loads(x) for x in (platform.workdir / "command_results.jsonl").read_text().splitlines()]
    mine = [x for x in lines if x["device_id"] == dev.id]
    assert mine[0]["id"] == "c1" and mine[0]["ok"] is True and mine[0]["result"] == {"pong": 1}
    platform.send(dev, 0x30, {"id": "c2", "ok": False, "error": "unsupported"})
    assert platform.send(dev, 0x20, {"uptime": 2})[1]["commands"] == []


def test_http_500_injection(platform):
    dev = platform.device("GD-500-0001")
    platform.handshake(dev)
    platform.control(http_500=2)
    for _ in range(2):
        status, raw = platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 1)])))
        assert status == 500 and json.loads(raw)["error"] == "injected"
    assert platform.received(dev.id) == []  # not processed
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 1)]))
    assert status == 200 and ack["acks"] == {"sale:1": 1}
    # the same through GET /control
    status, state = platform.get("/control?http_500=1")
    assert status == 200 and state["injection"]["http_500"] == 1
    assert platform.post(dev.id, dev.seal(0x20, {}))[0] == 500
    assert platform.post(dev.id, dev.seal(0x20, {}))[0] == 200
    assert platform.stats()["injection"]["used"]["http_500"] >= 3


def test_http_delay_drop_and_freeze_injection(platform):
    dev = platform.device("GD-INJ-0001")
    platform.handshake(dev)
    # delay: the records are held but the answer comes too late for the client
    platform.control(http_delay=1.5, http_delay_count=1)
    with pytest.raises(TimeoutError):
        platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 1)])), timeout=0.5)
    assert [r["seq"] for r in platform.received(dev.id)] == [1]
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 1, resend=True)]))
    assert status == 200 and ack["acks"] == {"sale:1": 1} and platform.dstats(dev)["duplicates"] == 1
    # drop_data: discarded unprocessed, the connection closes without an answer
    platform.control(drop_data=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 2)])))
    assert len(platform.received(dev.id)) == 1 and platform.dstats(dev)["dropped"] == 1
    # drop_acks: processed and persisted, no answer
    platform.control(drop_acks=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 2)])))
    assert [r["seq"] for r in platform.received(dev.id)] == [1, 2]
    # freeze: held for --freeze-hold (1 s), then closed; the platform still persists
    platform.control(freeze=True)
    t0 = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        platform.post(dev.id, dev.seal(0x10, batch([rec("sale:1", 3)])))
    assert time.monotonic() - t0 >= 0.9
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        platform.post(dev.id, dev.seal(0x20, {}))
    assert [r["seq"] for r in platform.received(dev.id)] == [1, 2, 3]
    assert platform.stats()["injection"]["freeze"] is True
    platform.control(freeze=False)
    status, ack = platform.send(dev, 0x10, batch([rec("sale:1", 2), rec("sale:1", 3)]))
    assert status == 200 and ack["acks"] == {"sale:1": 3}
    assert platform.dstats(dev)["acks_suppressed"] == 3


def test_restart_keeps_state_and_sigterm_is_clean(tmp_path):
    p = PlatformProc(tmp_path / "pf", "--http-port", "0").start()
    try:
        dev = p.device("GD-RESTART-01")
        p.handshake(dev)
        env = dev.seal(0x10, batch([rec("sale:1", 1), rec("sale:1", 2)]))
        assert p.post(dev.id, env)[0] == 200
        pub = p.platform_pub
        assert p.stop() == 0
        assert "stopped" in p.log()
        p.start()
        assert p.platform_pub == pub  # the key pair is kept
        assert p.post(dev.id, env)[0] == 409  # replay state survived
        status, ack = p.send(dev, 0x10, batch([rec("sale:1", 2), rec("sale:1", 3)]))  # session key survived
        assert status == 200 and ack["acks"] == {"sale:1": 3}
        st = p.dstats(dev)
        assert st["records"] == 3 and st["duplicates"] == 1 and st["keys_accepted"] == 1
        status, raw = p.post(dev.id, dev.key_message(key_id=dev.key_id))  # key id survived
        assert status == 409
        # received.jsonl lost lines and has a torn one (a crash between commit and append): repaired at start
        assert p.stop() == 0
        lines = (p.workdir / "received.jsonl").read_text().splitlines()
        assert len(lines) == 3
        (p.workdir / "received.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
        p.start()
        got = sorted((r["stream"], r["seq"]) for r in p.received(dev.id))
        assert got == [("sale:1", 1), ("sale:1", 2), ("sale:1", 3)]
    finally:
        p.kill()


def test_collector_envelope_code_interoperates(platform):
    """The collector's own envelope code (uplink.envelope, on the device side only) against the platform."""
    from uplink import crypto as C
    from uplink import envelope as E

    priv, pub = C.sm2_generate_keypair()
    dev_id = "GD-UPLINK-0001"
    (Path(platform.server["devices_dir"]) / f"{dev_id}.pub").write_text(pub.hex())
    for cipher, kid in ((E.CIPHER_SM4_GCM, 1), (E.CIPHER_SM4_CBC_HMAC_SM3, 2)):
        session = E.Session.generate(dev_id, kid, cipher=cipher)
        km = E.make_key_message(session, seq=1, device_private_key=priv, platform_public_key=platform.platform_pub)
        status, raw = platform.post(dev_id, km)
        assert status == 200, raw
        h, body = E.open_(raw, {kid: session.key}, direction=E.DIR_DOWNLINK)
        assert h.msg_type == 0x02 and json.loads(body)["key_id"] == kid
        env = E.seal({"msg_type": 0x10, "seq": 1}, json.dumps(batch([rec("sale:9", kid)])).encode(), session)
        status, raw = platform.post(dev_id, env)
        assert status == 200, raw
        h, body = E.open_(raw, {kid: session.key}, direction=E.DIR_DOWNLINK)
        assert h.msg_type == 0x81 and h.cipher == cipher and json.loads(body)["acks"]["sale:9"] == kid


def test_protocol_vector_data_message_accepted(platform):
    """docs/platform-protocol.md §11: the sealed live batch of tests/vectors/data_message.json."""
    path = ROOT / "tests" / "vectors" / "data_message.json"
    if not path.exists():
        pytest.skip("tests/vectors/data_message.json not present")
    v = json.loads(path.read_text())
    dev = platform.device(v["device_id"])
    platform.handshake(dev, key_id=v["key_id"], key=bytes.fromhex(v["session_key"]))
    status, raw = platform.post(dev.id, bytes.fromhex(v["envelope_hex"]))
    assert status == 200, raw
    h, ack = dev.open_down(raw)
    want = json.loads(v["body_json"])["records"]
    for r in want:
        assert r["seq"] in range(ack["acks"][r["stream"]] + 1) or [r["seq"], r["seq"]] in ack["sacks"][r["stream"]]
    got = platform.received(dev.id)
    assert [(r["stream"], r["seq"], r["body"]) for r in got] == [(r["stream"], r["seq"], r["body"]) for r in want]


# ---- MQTT ------------------------------------------------------------------------------------------------


class MqttDevice:
    """The device's MQTT side with paho: clean_session false, retained presence with a last will."""

    def __init__(self, dev: Device, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.dev = dev
        self.down: list[bytes] = []
        self.notices: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=dev.id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        self.c.will_set(f"sc/v1/{dev.id}/status", json.dumps({"device_id": dev.id, "online": False, "t": 0}),
                        qos=1, retain=True)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe([(f"sc/v1/{self.dev.id}/down", 1), (f"sc/v1/{self.dev.id}/notice", 1)])
        client.publish(f"sc/v1/{self.dev.id}/status",
                       json.dumps({"device_id": self.dev.id, "online": True, "t": int(time.time() * 1000)}),
                       qos=1, retain=True)

    def _on_message(self, client, userdata, msg):
        with self.cond:
            if msg.topic.endswith("/down"):
                self.down.append(bytes(msg.payload))
            else:
                self.notices.append(json.loads(msg.payload))
            self.cond.notify_all()

    def publish(self, env: bytes) -> Any:
        return self.c.publish(f"sc/v1/{self.dev.id}/up", env, qos=1)

    def next_raw(self, timeout: float = 10.0) -> bytes:
        with self.cond:
            assert self.cond.wait_for(lambda: self.down, timeout), "no downlink message"
            return self.down.pop(0)

    def next_down(self, timeout: float = 10.0) -> tuple[dict[str, Any], Any]:
        return self.dev.open_down(self.next_raw(timeout))

    def next_notice(self, timeout: float = 10.0) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: self.notices, timeout), "no notice"
            return self.notices.pop(0)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the last will."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_mqtt_end_to_end(tmp_path, mqtt_broker):  # noqa: F811 - the fixture
    p = PlatformProc(tmp_path / "pf", "--mqtt-port", str(mqtt_broker.port), "--http-port", "0").start()
    md = None
    try:
        assert p.server["mqtt"]["subscribed"] is True
        dev = p.device("GD-MQTT-0001")
        md = MqttDevice(dev, mqtt_broker.port)
        wait_for(lambda: (p.dstats(dev).get("presence") or {}).get("online") is True, 10, "presence online")
        # key exchange
        md.publish(dev.key_message())
        assert dev.adopt(md.next_raw())["key_id"] == 1
        # data -> ack on the down topic
        md.publish(dev.seal(0x10, batch([rec("sale:7", 1), rec("sale:7", 2)])))
        h, ack = md.next_down()
        assert h["msg_type"] == 0x81 and ack["acks"] == {"sale:7": 2} and ack["seq"] == dev.seq
        assert [r["seq"] for r in p.received(dev.id)] == [1, 2]
        # tampered -> clear notice
        env = bytearray(dev.seal(0x10, batch([rec("sale:7", 3)])))
        env[-1] ^= 0x80
        md.publish(bytes(env))
        notice = md.next_notice()
        assert notice["error"] == "auth" and notice["seq"] == dev.seq
        # a command appended by an operator is pushed as a 0x82 envelope
        with open(p.workdir / "commands" / f"{dev.id}.jsonl", "a") as f:
            f.write(json.dumps({"id": "m1", "name": "ping", "args": {}}) + "\n")
        h, cmd = md.next_down()
        assert h["msg_type"] == 0x82 and cmd["id"] == "m1" and cmd["name"] == "ping" and "t" in cmd
        md.publish(dev.seal(0x30, {"id": "m1", "ok": True, "result": "pong"}))
        h, ack = md.next_down()
        assert h["msg_type"] == 0x81 and ack["commands"] == []
        assert json.loads((p.workdir / "command_results.jsonl").read_text().splitlines()[-1])["id"] == "m1"
        # platform down: the broker queues the uplink for the platform's persistent session
        assert p.stop() == 0
        md.publish(dev.seal(0x10, batch([rec("sale:7", 3)]))).wait_for_publish(5)  # PUBACK: the broker has it
        p.start()
        h, ack = md.next_down()
        assert ack["acks"] == {"sale:7": 3}
        # broker restart: both sides reconnect, the session key is still good
        connects = p.info()["mqtt"]["connects"]
        mqtt_broker.restart()
        wait_for(lambda: p.info()["mqtt"]["connects"] > connects and p.info()["mqtt"]["subscribed"], 20,
                 "platform reconnect")
        wait_for(lambda: md.c.is_connected(), 20, "device reconnect")
        md.publish(dev.seal(0x10, batch([rec("sale:7", 4)])))
        h, ack = md.next_down(timeout=15)
        assert ack["acks"] == {"sale:7": 4}
        # an unclean loss of the device: the last will makes it offline
        md.crash()
        md = None
        wait_for(lambda: p.dstats(dev)["online"] is False and p.dstats(dev)["presence"]["online"] is False, 20,
                 "last will")
        st = p.dstats(dev)
        assert st["records"] == 4 and st["rejects"] == {"auth": 1} and st["acks"] == {"sale:7": 4}
    finally:
        if md is not None:
            md.close()
        p.kill()


def test_broker_helper_restart_keeps_persistence(mqtt_broker):  # noqa: F811 - the fixture
    """tests/mqtt_broker.py itself: stop/start and kill/start on the same port, persistence kept on SIGTERM."""
    import paho.mqtt.client as mqtt

    def retained(topic: str) -> bytes | None:
        got: list[bytes] = []
        ev = threading.Event()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        c.on_connect = lambda cl, *a: cl.subscribe(topic, 1)
        c.on_subscribe = lambda *a: threading.Timer(0.5, ev.set).start()
        c.on_message = lambda cl, u, m: (got.append(bytes(m.payload)), ev.set())
        c.connect("127.0.0.1", mqtt_broker.port)
        c.loop_start()
        ev.wait(10)
        c.disconnect()
        c.loop_stop()
        return got[0] if got else None

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    c.connect("127.0.0.1", mqtt_broker.port)
    c.loop_start()
    c.publish("t/keep", b"v1", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    port = mqtt_broker.port
    assert mqtt_broker.stop() == 0
    mqtt_broker.start()
    assert mqtt_broker.port == port and mqtt_broker.starts == 2
    assert retained("t/keep") == b"v1"  # saved on SIGTERM, reloaded
    mqtt_broker.kill()
    assert not mqtt_broker.running()
    mqtt_broker.restart()
    assert mqtt_broker.running() and retained("t/keep") == b"v1"
