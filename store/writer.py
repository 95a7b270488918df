"""The store writer process: the only process that writes the SQLite store.

It listens on a Unix SOCK_SEQPACKET socket. Every wake-up it drains all pending requests from
all clients, writes them in one transaction (group commit: one fsync for many drivers), and
only then answers each client. A client holding an answer knows its records are on flash.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import time

from collector import logsetup
from store import protocol
from store.ringstore import RingStore, StoreError

log = logsetup.get("store")


def _quarantine_if_corrupt(path: str) -> str | None:
    """Move a store that fails its integrity check aside, keeping it for forensics."""
    if not os.path.exists(path):
        return None
    import sqlite3

    try:
        conn = sqlite3.connect(path)
        ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        conn.close()
    except sqlite3.DatabaseError:
        ok = False
    if ok:
        return None
    aside = f"{path}.corrupt-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


class StoreWriter:
    def __init__(self, db_path: str, socket_path: str, sales_per_nozzle: int, records_per_stream: int) -> None:
        self.socket_path = socket_path
        aside = _quarantine_if_corrupt(db_path)
        self.store = RingStore(db_path, sales_per_nozzle, records_per_stream)
        if aside:
            log.error("store failed its integrity check; moved to %s and started a new one", aside)
            self.store.put_batch([{"stream": "event", "kind": "event", "t": time.time(),
                                   "body": {"event": "store_recovered", "moved_to": aside}}])
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.commits = 0
        self.records = 0
        self.subscribers: set[socket.socket] = set()

    def serve(self) -> None:
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.socket_path + ".tmp")
        os.chmod(self.socket_path + ".tmp", 0o660)
        listener.listen(64)
        os.replace(self.socket_path + ".tmp", self.socket_path)  # clients never see a half-ready socket
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, None)
        wake_r, wake_w = os.pipe()  # SIGTERM wakes select at once instead of at its timeout
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        signal.signal(signal.SIGTERM, self._stop)
        log.info("store ready at %s", self.store.path)
        while not self.stopping:
            ready = self.sel.select(timeout=5.0)
            batch: list[tuple[socket.socket, dict]] = []
            for key, _ in ready:
                if key.data == "wake":
                    os.read(wake_r, 512)
                elif key.data is None:
                    self._accept(key.fileobj)
                else:
                    self._drain(key.fileobj, batch)
            if batch:
                self._handle(batch)
        self.store.close()
        log.info("store closed after %d commits, %d records", self.commits, self.records)

    def _stop(self, *_):
        self.stopping = True

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, "client")

    def _drain(self, conn: socket.socket, batch: list) -> None:
        while True:
            try:
                data = conn.recv(protocol.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(conn)
                self.subscribers.discard(conn)
                conn.close()
                return
            try:
                batch.append((conn, protocol.decode(data)))
            except ValueError as exc:
                self._reply(conn, {"error": f"bad request: {exc}"})

    def _handle(self, batch: list) -> None:
        puts = [(conn, req) for conn, req in batch if req.get("op") == "put"]
        if puts:
            records = []
            try:
                for _, req in puts:
                    recs = req["records"]
                    for r in recs:
                        if not isinstance(r.get("stream"), str) or not isinstance(r.get("kind"), str) \
                                or not isinstance(r.get("body"), dict):
                            raise ValueError("record needs stream, kind and body")
                    records.extend(recs)
                results = self.store.put_batch(records)
            except (StoreError, KeyError, ValueError, TypeError) as exc:
                log.error("commit of %d records failed: %s", len(records), exc)
                for conn, req in puts:
                    self._reply(conn, {"id": req.get("id"), "error": str(exc)})
            else:
                self.commits += 1
                self.records += len(records)
                self._notify()
                i = 0
                for conn, req in puts:
                    n = len(req["records"])
                    self._reply(conn, {"id": req.get("id"), "results": [r.as_json() for r in results[i:i + n]]})
                    i += n
        for conn, req in batch:
            op = req.get("op")
            if op == "put":
                continue
            try:
                if op == "ack":
                    reply = {"changed": self.store.mark_acked(str(req["stream"]), int(req["seq"]))}
                elif op == "acks":
                    reply = {"changed": self.store.apply_acks(req.get("acks") or {}, req.get("sacks") or {},
                                                              req.get("log"))}
                elif op == "subscribe":
                    self.subscribers.add(conn)
                    reply = {"subscribed": True, "max_id": self.store.max_id()}
                elif op == "last_sales":
                    reply = {"sales": self.store.last_sales([str(s) for s in req["streams"]])}
                elif op == "last_identities":
                    reply = {"identities": self.store.last_identities([int(n) for n in req["nozzles"]])}
                elif op == "ping":
                    reply = {"pong": True, "commits": self.commits}
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except (StoreError, KeyError, ValueError, TypeError) as exc:
                reply = {"error": str(exc)}
            reply["id"] = req.get("id")
            self._reply(conn, reply)

    def _notify(self) -> None:
        """Tell subscribers (the uplink) that records were committed. Never blocks: a subscriber that
        is behind misses a wake-up, not a record (it reads by id)."""
        if not self.subscribers:
            return
        message = protocol.encode({"event": "committed", "max_id": self.store.max_id()})
        for conn in list(self.subscribers):
            try:
                conn.send(message)
            except BlockingIOError:
                pass
            except OSError:
                self.subscribers.discard(conn)

    def _reply(self, conn: socket.socket, obj: dict) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(2.0)
            conn.send(protocol.encode(obj))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, None):
                log.warning("reply to a client failed: %s", exc)
        finally:
            try:
                conn.setblocking(False)
            except OSError:
                pass


def main(config) -> int:
    writer = StoreWriter(config.store.path, os.path.join(config.runtime_dir, protocol.SOCKET_NAME),
                         config.store.sales_per_nozzle, config.store.records_per_stream)
    writer.serve()
    return 0
