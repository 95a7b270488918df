"""The uplink worker process: reads unacknowledged records from the store in per-stream order, seals
them in SM4 envelopes and delivers them to the platform over MQTT or HTTP, on a live lane and a
backfill lane, marking them delivered only on the platform's acknowledgement.

One thread runs everything (HTTP adds two I/O threads): a selector waits on the store's commit
notifications and the transport, with a timeout equal to the next timer (batch window, ack timeout,
backfill pacing, heartbeat, retry). Memory is bounded: at most ``inflight`` batches in flight, the
live lane reads at most one batch ahead, and the backlog stays in SQLite.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from collector import clock, logsetup
from collector.statusboard import StatusBoard, read_all
from store import protocol as store_protocol
from store.client import StoreClient, StoreUnavailable
from store.ringstore import open_readonly, stream_summary
from uplink import envelope as env
from uplink import keys as keymod

log = logsetup.get("uplink")

MSG_KEY_OK, MSG_DATA, MSG_BACKFILL, MSG_HEARTBEAT, MSG_RESULT, MSG_ACK, MSG_COMMAND = 0x02, 0x10, 0x11, 0x20, 0x30, 0x81, 0x82
RETRY_PAUSES = (1.0, 2.0, 4.0)
MAX_BATCH_BYTES = 256 * 1024
BACKFILL_BATCH_FACTOR = 4  # backfill batches may hold 4 x batch_max records: fewer envelopes, fewer acks
SOFTWARE_VERSION = "0.1.0"


@dataclass
class Batch:
    seq: int
    lane: str
    ids: list[int]
    keys: list[tuple[str, int]]
    sent: float
    tries: int = 0
    forced: bool = False  # a resend command: send even if acknowledged


@dataclass
class Retry:
    ids: list[int]
    not_before: float
    tries: int
    forced: bool = False


@dataclass
class Counters:
    sent: int = 0
    acked: int = 0
    retries: int = 0
    batches: int = 0
    notices: dict = field(default_factory=dict)


class Uplink:
    def __init__(self, config, stop_flag) -> None:
        self.config = config
        self.cfg = config.uplink
        self.device_id = config.station.device_id
        self.stop_flag = stop_flag
        self.db = open_readonly(config.store.path, cache_kib=256)
        self.store = StoreClient(os.path.join(config.runtime_dir, store_protocol.SOCKET_NAME))
        self.board = StatusBoard(config.runtime_dir, "uplink", min_interval=1.0)
        self.device_private, self.device_public = keymod.load_or_create_device_key(self.cfg.device_key)
        self.platform_public = keymod.load_public_key(self.cfg.platform_public_key)
        self.key_counter = keymod.KeyCounter(self.cfg.state_dir)
        self.transport = self._make_transport()
        self.sel = selectors.DefaultSelector()
        self.sub: socket.socket | None = None
        # session state
        self.state = "down"  # down -> keying -> ready
        self.session: env.Session | None = None
        self.pending_session: env.Session | None = None
        self.keys: OrderedDict[int, bytes] = OrderedDict()  # key id -> key, for opening downlink
        self.tx_seq = 0
        self.key_sent_at = 0.0
        self.session_started = 0.0
        self.downlink_guard = env.ReplayGuard()
        # delivery state
        self.inflight: dict[int, Batch] = {}
        self.queued_ids: set[int] = set()
        self.retries: deque[Retry] = deque()
        self.live_cursor = 0
        self.backfill_cursor = 0
        self.backfill_end = 0
        self.live_due: float | None = None
        self.tokens = float(self.cfg.batch_max)
        self.tokens_at = time.monotonic()
        self.hold_backfill_until = 0.0
        self.next_heartbeat = 0.0
        self.connected_since: float | None = None
        self.counters = Counters()
        self.last_error: tuple[float, str] | None = None
        self.commands_done: OrderedDict[str, bool] = OrderedDict()
        self.clock_state: dict = {}
        self.started = time.time()

    # ---------------------------------------------------------------- setup

    def _make_transport(self):
        from uplink.transport import HttpTransport, MqttTransport

        if self.cfg.transport == "mqtt":
            return MqttTransport(self.device_id, self.cfg.mqtt_host, self.cfg.mqtt_port, self.cfg.keepalive,
                                 self.cfg.inflight, self.cfg.mqtt_tls)
        return HttpTransport(self.device_id, self.cfg.http_url, self.cfg.http_timeout)

    def _subscribe(self) -> None:
        delay = 0.05
        while not self.stop_flag():
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(os.path.join(self.config.runtime_dir, store_protocol.SOCKET_NAME))
                s.send(store_protocol.encode({"op": "subscribe", "id": 0}))
                s.settimeout(5)
                s.recv(store_protocol.MAX_MESSAGE)
                s.setblocking(False)
                self.sub = s
                self.sel.register(s, selectors.EVENT_READ, "store")
                return
            except OSError:
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        clock.use_runtime_dir(self.config.runtime_dir)
        self._subscribe()
        self.transport.start()
        registered_fd = None
        registered_events = 0
        log.info("uplink %s to %s starting", self.cfg.transport,
                 self.cfg.http_url or f"{self.cfg.mqtt_host}:{self.cfg.mqtt_port}")
        try:
            while not self.stop_flag():
                fd = self.transport.fileno()
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.transport.wants_write() else 0)
                if fd != registered_fd or events != registered_events:
                    if registered_fd is not None:
                        try:
                            self.sel.unregister(registered_fd)
                        except (KeyError, ValueError, OSError):
                            pass
                    registered_fd = None
                    if fd is not None:
                        self.sel.register(fd, events, "transport")
                        registered_fd, registered_events = fd, events
                timeout = max(0.0, min(self._next_deadline(), time.monotonic() + 5.0) - time.monotonic())
                readable = writable = False
                for key, mask in self.sel.select(timeout):
                    if key.data == "store":
                        self._drain_store_notifications()
                    else:
                        readable = readable or bool(mask & selectors.EVENT_READ)
                        writable = writable or bool(mask & selectors.EVENT_WRITE)
                self.transport.pump(readable, writable)
                self._handle_transport_events()
                self._tick()
        finally:
            self.transport.stop()
            self._publish(force=True)

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [self.transport.next_deadline(), self.next_heartbeat if self.state == "ready" else now + 5]
        if self.live_due is not None:
            deadlines.append(self.live_due)
        if self.inflight:
            deadlines.append(min(b.sent for b in self.inflight.values()) + self.cfg.ack_timeout)
        if self.state == "ready" and self._backfill_may_have_work():
            deadlines.append(max(self.hold_backfill_until, now + self._token_wait()))
        if self.retries:
            deadlines.append(min(r.not_before for r in self.retries))
        if self.state == "keying":
            deadlines.append(self.key_sent_at + self.cfg.ack_timeout)
        return min(deadlines)

    def _drain_store_notifications(self) -> None:
        while True:
            try:
                data = self.sub.recv(store_protocol.MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:  # the store writer restarted: subscribe again
                self.sel.unregister(self.sub)
                self.sub.close()
                self._subscribe()
                break
        if self.state == "ready" and self.live_due is None:
            self.live_due = time.monotonic() + self.cfg.batch_window

    # ---------------------------------------------------------------- transport events

    def _handle_transport_events(self) -> None:
        events = self.transport.events
        while events:
            event = events.popleft()
            kind = event[0]
            if kind == "connected":
                log.info("connected to the platform over %s", self.cfg.transport)
                self.connected_since = time.time()
                self._start_session()
            elif kind == "disconnected":
                self._error(f"disconnected: {event[1]}")
                self._lost_link()
            elif kind == "down":
                self._on_downlink(event[1])
            elif kind == "notice":
                self._on_notice(event[1])
            elif kind == "failed":
                self._on_send_failed(event[1], event[2])
            elif kind == "error":
                self._error(event[1])

    def _lost_link(self) -> None:
        self.state = "down"
        self.connected_since = None
        now = time.monotonic()
        for batch in list(self.inflight.values()):  # not the batch's fault: retry at once after re-keying
            self.retries.append(Retry(batch.ids, now, batch.tries, batch.forced))
        self.inflight.clear()

    def _start_session(self) -> None:
        self.pending_session = keymod.new_session(self.device_id, self.key_counter, self.cfg.cipher)
        self.keys[self.pending_session.key_id] = self.pending_session.key
        while len(self.keys) > 3:
            self.keys.popitem(last=False)
        message = env.make_key_message(self.pending_session, seq=1, device_private_key=self.device_private,
                                       platform_public_key=self.platform_public)
        self.state = "keying" if self.session is None or self.state != "ready" else self.state
        self.key_sent_at = time.monotonic()
        if not self._send_raw(message, tag=("key", self.pending_session.key_id)):
            self._error("could not send the key message")

    def _on_downlink(self, data: bytes) -> None:
        try:
            header, body = env.open_(data, self.keys, direction=env.DIR_DOWNLINK)
            self.downlink_guard.accept(header)
            msg = json.loads(body)
        except env.EnvelopeError as exc:
            self._error(f"downlink envelope rejected: {type(exc).__name__}: {exc}")
            return
        except ValueError as exc:
            self._error(f"downlink body is not JSON: {exc}")
            return
        if header.msg_type == MSG_KEY_OK:
            self._on_key_ok(header, msg)
        elif header.msg_type == MSG_ACK:
            self._on_ack(msg)
        elif header.msg_type == MSG_COMMAND:
            self._on_commands([msg])
        else:
            self._error(f"unknown downlink message type {header.msg_type:#x}")

    def _on_key_ok(self, header, msg: dict) -> None:
        pending = self.pending_session
        if pending is None or header.key_id != pending.key_id:
            return
        self.session, self.pending_session = pending, None
        self.tx_seq = 1  # the key message used 1
        self.session_started = time.monotonic()
        self._calibrate(msg.get("time"))
        if self.state != "ready":
            self.state = "ready"
            # everything captured so far and not acknowledged is backlog; new commits are live
            self.live_cursor = self._max_id()
            self.backfill_cursor = 0
            self.backfill_end = self.live_cursor
            self.next_heartbeat = time.monotonic()
        log.info("session key %d accepted by the platform", header.key_id)

    def _on_notice(self, notice: dict) -> None:
        error = str(notice.get("error", "unknown"))
        self.counters.notices[error] = self.counters.notices.get(error, 0) + 1
        self._error(f"platform rejected a message: {error} {notice.get('detail', '')}".strip())
        tag = notice.get("tag")
        if tag is not None and tag in self.inflight:
            self._on_send_failed(tag, f"rejected: {error}")
        if error in ("auth", "unknown-key", "unknown-device") and self.transport.connected:
            if self.state != "keying" or time.monotonic() - self.key_sent_at > 1.0:
                self._start_session()
        elif error == "replay" and tag in self.inflight:
            pass  # the retry re-seals with a new sequence number

    def _error(self, text: str) -> None:
        self.last_error = (time.time(), text)
        log.warning("%s", text)

    # ---------------------------------------------------------------- acks and time

    def _on_ack(self, msg: dict) -> None:
        acks = {str(k): int(v) for k, v in (msg.get("acks") or {}).items()}
        sacks = {str(k): [[int(a), int(b)] for a, b in v] for k, v in (msg.get("sacks") or {}).items()}
        batch = self.inflight.pop(msg.get("seq"), None)
        logs = []
        if batch is not None:
            latency = (time.monotonic() - batch.sent) * 1000
            logs.append({"lane": batch.lane, "msg_seq": batch.seq, "records": len(batch.ids), "result": "acked",
                         "latency_ms": round(latency, 1)})
            self.queued_ids.difference_update(batch.ids)
            self.counters.acked += len(batch.ids)
        try:
            if acks or sacks or logs:
                self.store.request({"op": "acks", "acks": acks, "sacks": sacks, "log": logs})
        except StoreUnavailable as exc:
            self._error(f"could not record acknowledgements: {exc}")  # records get re-sent: harmless
        for err in msg.get("errors") or ():
            self._error(f"platform refused record {err}")
        self._calibrate(msg.get("time"))
        if msg.get("commands"):
            self._on_commands(msg["commands"])

    def _calibrate(self, platform_ms) -> None:
        if not isinstance(platform_ms, (int, float)):
            return
        offset = platform_ms - time.time() * 1000
        self.clock_state = {"synced_at": time.time(), "offset_ms": round(offset, 1)}
        path = os.path.join(self.config.runtime_dir, "clock.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.clock_state, f)
        os.replace(tmp, path)
        if self.cfg.set_system_clock and abs(offset) > 1000:
            try:
                time.clock_settime(time.CLOCK_REALTIME, platform_ms / 1000)
                os.system("hwclock --systohc >/dev/null 2>&1")  # noqa: S605 - fixed command, keeps the RTC honest
                log.warning("system clock set from the platform (offset %.0f ms)", offset)
            except OSError as exc:
                self._error(f"could not set the clock: {exc}")

    # ---------------------------------------------------------------- commands

    def _on_commands(self, commands: list) -> None:
        for cmd in commands:
            cid = str(cmd.get("id"))
            if cid in self.commands_done:
                continue
            self.commands_done[cid] = True
            while len(self.commands_done) > 256:
                self.commands_done.popitem(last=False)
            name = cmd.get("name")
            args = cmd.get("args") or {}
            result: dict = {"id": cid, "ok": True}
            if name == "ping":
                result["result"] = {"time": int(time.time() * 1000)}
            elif name == "sync_time":
                self.next_heartbeat = time.monotonic()
            elif name == "resend":
                try:
                    rows = self.db.execute(
                        "SELECT id FROM records WHERE stream=? AND seq BETWEEN ? AND ? ORDER BY seq",
                        (str(args["stream"]), int(args["from_seq"]), int(args["to_seq"]))).fetchall()
                    ids = [r[0] for r in rows]
                    for i in range(0, len(ids), self.cfg.batch_max):
                        self.retries.append(Retry(ids[i:i + self.cfg.batch_max], time.monotonic(), 0, forced=True))
                    wanted = int(args["to_seq"]) - int(args["from_seq"]) + 1
                    result["result"] = {"queued": len(ids), "missing": max(0, wanted - len(ids))}
                except (KeyError, ValueError, TypeError) as exc:
                    result = {"id": cid, "ok": False, "error": f"bad arguments: {exc}"}
            else:
                result = {"id": cid, "ok": False, "error": "unsupported"}
            self._send_message(MSG_RESULT, result)

    # ---------------------------------------------------------------- sending

    def _send_raw(self, envelope_bytes: bytes, tag=None) -> bool:
        from uplink.transport import HttpTransport

        if isinstance(self.transport, HttpTransport):
            return self.transport.send(envelope_bytes, tag)
        return self.transport.send(envelope_bytes)

    def _seal(self, msg_type: int, body: dict) -> tuple[int, bytes]:
        self.tx_seq += 1
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return self.tx_seq, env.seal({"msg_type": msg_type, "seq": self.tx_seq}, data, self.session)

    def _send_message(self, msg_type: int, body: dict) -> None:
        if self.state != "ready":
            return
        seq, data = self._seal(msg_type, body)
        self._send_raw(data, tag=seq)

    def _rows(self, ids: list[int], forced: bool) -> list[tuple]:
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id, stream, seq, kind, t, body FROM records WHERE id IN ({marks})"
        if not forced:
            sql += " AND upload < 2"
        return self.db.execute(sql + " ORDER BY id", ids).fetchall()

    def _send_batch(self, rows: list[tuple], lane: str, tries: int = 0, forced: bool = False) -> bool:
        # The store keeps each body as compact JSON text: it is spliced into the batch as it is, not
        # parsed and serialised again (that was most of the uplink's CPU in a backlog drain).
        parts = []
        size = 0
        used = []
        resend = "true" if lane == "backfill" else "false"
        for rid, stream, seq, kind, t, body in rows:
            size += len(body) + 80
            if parts and size > MAX_BATCH_BYTES:
                break
            parts.append(f'{{"stream":{json.dumps(stream)},"seq":{int(seq)},"kind":{json.dumps(kind)},'
                         f'"t":{float(t)!r},"resend":{resend},"body":{body}}}')
            used.append((rid, stream, seq))
        text = f'{{"v":1,"lane":"{lane}","records":[{",".join(parts)}]}}'
        self.tx_seq += 1
        seq_no = self.tx_seq
        data = env.seal({"msg_type": MSG_DATA if lane == "live" else MSG_BACKFILL, "seq": seq_no},
                        text.encode(), self.session)
        if not self._send_raw(data, tag=seq_no):
            return False  # the sequence number is simply spent
        ids = [u[0] for u in used]
        self.inflight[seq_no] = Batch(seq_no, lane, ids, [(u[1], u[2]) for u in used], time.monotonic(), tries, forced)
        self.queued_ids.update(ids)
        self.counters.sent += len(ids)
        self.counters.batches += 1
        if len(used) < len(rows):  # what did not fit goes back to the backlog
            self.retries.appendleft(Retry([r[0] for r in rows[len(used):]], time.monotonic(), tries, forced))
        return True

    def _token_wait(self) -> float:
        need = min(self.cfg.batch_max, 50)
        return max(0.0, (need - self.tokens) / self.cfg.backfill_rate)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(2.0 * self.cfg.batch_max * BACKFILL_BATCH_FACTOR,
                          self.tokens + (now - self.tokens_at) * self.cfg.backfill_rate)
        self.tokens_at = now

    def _backfill_may_have_work(self) -> bool:
        return bool(self.retries) or self.backfill_cursor < self.backfill_end

    def _tick(self) -> None:
        now = time.monotonic()
        self._check_timeouts(now)
        if self.state == "keying" and now - self.key_sent_at > self.cfg.ack_timeout and self.transport.connected:
            self._error("no answer to the key message; sending a new one")
            self._start_session()
        if self.state == "ready":
            if self.live_due is not None and now >= self.live_due:
                self.live_due = None
                self._send_live()
            self._send_backfill(now)
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.cfg.heartbeat_interval
                self._send_message(MSG_HEARTBEAT, self.health())
            if now - self.session_started > self.cfg.key_rotation and self.pending_session is None:
                self._start_session()
        self._publish()

    def _send_live(self) -> None:
        while len(self.inflight) < self.cfg.inflight:
            rows = self.db.execute(
                "SELECT id, stream, seq, kind, t, body FROM records WHERE id > ? AND upload < 2 ORDER BY id LIMIT ?",
                (self.live_cursor, self.cfg.batch_max)).fetchall()
            if not rows:
                return
            self.live_cursor = rows[-1][0]
            if not self._send_batch(rows, "live"):
                self.backfill_end = max(self.backfill_end, self.live_cursor)  # not sent: the backfill takes it
                return
            self.backfill_end = max(self.backfill_end, self.live_cursor)
        self.live_due = time.monotonic() + self.cfg.batch_window  # more waiting: come back soon

    def _send_backfill(self, now: float) -> None:
        if now < self.hold_backfill_until:
            return
        self._refill()
        while True:
            lanes = sum(1 for b in self.inflight.values() if b.lane == "backfill")
            if lanes >= self.cfg.backfill_inflight or len(self.inflight) >= self.cfg.inflight:
                return
            if self.tokens < min(self.cfg.batch_max, 50):
                return
            retry = next((r for r in self.retries if r.not_before <= now), None)
            if retry is not None:
                self.retries.remove(retry)
                self.queued_ids.difference_update(retry.ids)
                rows = self._rows(retry.ids, retry.forced)
                if rows and self._send_batch(rows, "backfill", retry.tries, retry.forced):
                    self.tokens -= len(rows)
                continue
            if self.backfill_cursor >= self.backfill_end:
                return
            size = self.cfg.batch_max * BACKFILL_BATCH_FACTOR
            rows = self.db.execute(
                "SELECT id, stream, seq, kind, t, body FROM records WHERE id > ? AND id <= ? AND upload < 2 "
                "ORDER BY id LIMIT ?", (self.backfill_cursor, self.backfill_end, size * 2)).fetchall()
            rows = [r for r in rows if r[0] not in self.queued_ids][:size]
            if not rows:
                self.backfill_cursor = self.backfill_end
                return
            self.backfill_cursor = rows[-1][0]
            if self._send_batch(rows, "backfill"):
                self.tokens -= len(rows)

    def _check_timeouts(self, now: float) -> None:
        for batch in [b for b in self.inflight.values() if now - b.sent > self.cfg.ack_timeout]:
            self._on_send_failed(batch.seq, f"no acknowledgement within {self.cfg.ack_timeout:.0f} s")

    def _on_send_failed(self, tag, reason: str) -> None:
        if isinstance(tag, tuple):  # the key message itself failed (HTTP)
            self._error(f"key message failed: {reason}")
            self.key_sent_at = time.monotonic() - self.cfg.ack_timeout + min(5.0, self.cfg.ack_timeout)
            return
        batch = self.inflight.pop(tag, None)
        if batch is None:
            return
        tries = batch.tries + 1
        self.counters.retries += 1
        self._error(f"batch {batch.seq} ({batch.lane}, {len(batch.ids)} records) failed: {reason}")
        try:
            self.store.request({"op": "acks", "acks": {}, "sacks": {}, "log": [
                {"lane": batch.lane, "msg_seq": batch.seq, "records": len(batch.ids), "result": "failed",
                 "detail": reason[:200]}]})
        except StoreUnavailable:
            pass
        now = time.monotonic()
        if tries < 3:
            not_before = now + RETRY_PAUSES[tries - 1]
        else:  # three failures: the batch stays queued for the next cycle
            not_before = now + self.cfg.retry_cycle
            self.hold_backfill_until = max(self.hold_backfill_until, now + min(self.cfg.retry_cycle, 5.0))
        self.retries.append(Retry(batch.ids, not_before, tries, batch.forced))

    def _max_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]

    # ---------------------------------------------------------------- health

    def health(self) -> dict:
        boards = read_all(self.config.runtime_dir)
        sup = boards.get("supervisor", {})
        queues = {}
        now = time.time()
        for s in stream_summary(self.db):
            if s["unacked"] or s["evicted_unsent"]:
                queues[s["stream"]] = {"unacked": s["unacked"], "last_seq": s["last_seq"], "acked_seq": s["acked_seq"],
                                       "evicted_unsent": s["evicted_unsent"],
                                       "oldest_unacked_age": round(now - s["oldest_unacked_t"], 1) if s["oldest_unacked_t"] else None}
        pss = 0
        pids = [c.get("pid") for c in sup.get("children", {}).values() if c.get("pid")] + [sup.get("pid")]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
                            break
            except (OSError, TypeError):
                continue
        st = os.statvfs(os.path.dirname(self.config.store.path))
        store_kib = sum(os.path.getsize(self.config.store.path + sfx) // 1024 for sfx in ("", "-wal")
                        if os.path.exists(self.config.store.path + sfx))
        ports = {}
        for port in self.config.ports:
            b = boards.get(f"port-{port.name}", {})
            stats = b.get("stats", {})
            ports[port.name] = {"online": sum(1 for p in b.get("pumps", {}).values() if p.get("online")),
                                "pumps": len(port.pumps), "polls": stats.get("polls"), "timeouts": stats.get("timeouts"),
                                "bad_frames": stats.get("bad_frames")}
        return {
            "software": SOFTWARE_VERSION, "config": self.config.digest, "uptime": round(now - self.started),
            "uplink": {"transport": self.cfg.transport, "state": self.state},
            "connected_since": int(self.connected_since * 1000) if self.connected_since else None,
            "queues": queues,
            "clock": {"quality": clock.quality(), **self.clock_state},
            "memory": {"pss_kib": pss},
            "flash": {"free_kib": st.f_bavail * st.f_frsize // 1024, "store_kib": store_kib},
            "restarts": {role: {"restarts": c.get("restarts", 0), "last_exit": c.get("last_exit")}
                         for role, c in sup.get("children", {}).items()},
            "ports": ports,
            "platform_rejects": dict(self.counters.notices),
            "last_error": {"t": int(self.last_error[0] * 1000), "text": self.last_error[1]} if self.last_error else None,
            "sent": self.counters.sent, "acked": self.counters.acked, "retries": self.counters.retries,
        }

    def _publish(self, force: bool = False) -> None:
        if self.state != getattr(self, "_published_state", None):
            self._published_state = self.state
            force = True  # the CLI and the tests see a state change at once
        self.board.publish({
            "pid": os.getpid(), "updated": time.time(), "state": self.state, "transport": self.cfg.transport,
            "key_id": self.session.key_id if self.session else None, "inflight": len(self.inflight),
            "retry_batches": len(self.retries), "sent": self.counters.sent, "acked": self.counters.acked,
            "retries": self.counters.retries, "batches": self.counters.batches,
            "platform_rejects": self.counters.notices,
            "last_error": {"t": self.last_error[0], "text": self.last_error[1]} if self.last_error else None,
            "connected_since": self.connected_since, "clock": self.clock_state,
        }, force=force)


def main(config) -> int:
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Uplink(config, lambda: stop[0]).run()
    return 0
