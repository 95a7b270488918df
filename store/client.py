"""Client side of the store writer's socket, used by drivers and the uplink.

``put`` blocks until the writer answers that the records are committed and fsynced, retrying
across writer restarts: a driver keeps its sale until the store has it.
"""

from __future__ import annotations

import secrets
import socket
import time

from collector import logsetup
from store import protocol

log = logsetup.get("store.client")


class StoreUnavailable(Exception):
    pass


class StoreClient:
    def __init__(self, socket_path: str, reply_timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.reply_timeout = reply_timeout
        self._sock: socket.socket | None = None
        self._next_id = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(self.socket_path)
            except OSError:
                s.close()
                raise
            s.settimeout(self.reply_timeout)
            self._sock = s
        return self._sock

    def request(self, obj: dict) -> dict:
        """One request, one answer. Raises StoreUnavailable (the caller decides whether to retry)."""
        self._next_id += 1
        obj = dict(obj, id=self._next_id)
        try:
            sock = self._connect()
            sock.send(protocol.encode(obj))
            while True:
                data = sock.recv(protocol.MAX_MESSAGE)
                if not data:
                    raise ConnectionResetError("store writer closed the connection")
                reply = protocol.decode(data)
                if reply.get("id") == self._next_id:
                    break
        except (OSError, ValueError) as exc:
            self.close()
            raise StoreUnavailable(str(exc)) from None
        if "error" in reply:
            raise StoreUnavailable(reply["error"])
        return reply

    def put(self, records: list[dict], keep_trying=lambda: True) -> list[tuple[str, int, bool]]:
        """Durably store records; retry with backoff while ``keep_trying()`` says so.

        A record without a natural key gets a random one before the first attempt, so a retry after
        an answer was lost (the writer committed, then died or timed out) is recognised as a repeat.
        """
        for rec in records:
            if rec.get("key") is None:
                rec["key"] = "u:" + secrets.token_hex(8)
        delay = 0.05
        warned = False
        while True:
            try:
                reply = self.request({"op": "put", "records": records})
                if warned:
                    log.info("store reachable again")
                return [tuple(r) for r in reply["results"]]
            except StoreUnavailable as exc:
                if not keep_trying():
                    raise
                if not warned:
                    log.warning("store not taking records (%s); holding %d and retrying", exc, len(records))
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def last_sales(self, streams: list[str]) -> dict[str, dict]:
        return self.request({"op": "last_sales", "streams": streams})["sales"]

    def last_identities(self, nozzles: list[int]) -> dict[str, dict]:
        return self.request({"op": "last_identities", "nozzles": list(nozzles)})["identities"]

    def ack(self, stream: str, seq: int) -> int:
        return self.request({"op": "ack", "stream": stream, "seq": seq})["changed"]
