"""The local wire between the store writer and its clients: one JSON object per SOCK_SEQPACKET message.

Requests: ``{"id": n, "op": "put", "records": [...]}`` -> ``{"id": n, "results": [[stream, seq, dup], ...]}``;
``{"op": "ack", "stream": s, "seq": n}``; ``{"op": "acks", "acks": {stream: seq}, "sacks": {stream: [[a, b]]},
"log": [upload history lines]}``; ``{"op": "subscribe"}`` (then ``{"event": "committed", "max_id": n}`` after
each commit); ``{"op": "last_sales", "streams": [...]}``;
``{"op": "last_identities", "nozzles": [...]}`` -> ``{"identities": {nozzle: body}}``; ``{"op": "ping"}``.
Any failure: ``{"id": n, "error": "..."}`` and nothing of that request was committed.
"""

from __future__ import annotations

import json

MAX_MESSAGE = 1 << 20
SOCKET_NAME = "store.sock"


def encode(obj: dict) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> dict:
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("message is not a JSON object")
    return obj
