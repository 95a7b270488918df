"""Live state that processes publish for the technician CLI: small JSON files on the runtime tmpfs.

Each process owns one file and replaces it atomically (write, rename), at most every ``min_interval``
seconds unless forced, so the CLI sees a whole picture and flash is never touched.
"""

from __future__ import annotations

import json
import os
import time


class StatusBoard:
    def __init__(self, runtime_dir: str, name: str, min_interval: float = 0.5) -> None:
        self.path = os.path.join(runtime_dir, f"{name}.json")
        self.min_interval = min_interval
        self._last = 0.0

    def publish(self, state: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, separators=(",", ":"), ensure_ascii=False)
        os.replace(tmp, self.path)


def read_all(runtime_dir: str, prefix: str = "") -> dict[str, dict]:
    out = {}
    try:
        names = sorted(os.listdir(runtime_dir))
    except OSError:
        return out
    for name in names:
        if name.endswith(".json") and name.startswith(prefix) and not name.endswith(".tmp"):
            try:
                with open(os.path.join(runtime_dir, name)) as f:
                    out[name[:-5]] = json.load(f)
            except (OSError, ValueError):
                continue
    return out
