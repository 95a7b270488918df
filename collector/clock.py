"""The one clock source: wall time, monotonic time, boot id and the clock-quality flag of every record.

The quality says how far a record's wall time can be trusted: ``unsynced`` (the system clock was
never set from the RTC or the platform), ``rtc`` (set from the hardware clock at boot), ``synced``
(calibrated against the platform recently). The uplink writes the sync state to the runtime
directory; everyone else only reads it here.
"""

from __future__ import annotations

import json
import os
import time

_BOOT_ID: str | None = None
_SYNC_FILE: str | None = None
_cache: tuple[float, str] = (0.0, "rtc")  # (mtime of the sync file, quality)
SYNC_VALID_FOR = 6 * 3600 + 600  # a platform sync older than this degrades to "rtc"


def now() -> float:
    return time.time()


def monotonic() -> float:
    return time.monotonic()


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = "unknown"
    return _BOOT_ID


def use_runtime_dir(runtime_dir: str) -> None:
    global _SYNC_FILE
    _SYNC_FILE = os.path.join(runtime_dir, "clock.json")


def quality() -> str:
    """unsynced | rtc | synced. Cheap: re-reads the sync file only when it changed."""
    global _cache
    if _SYNC_FILE is None:
        return "rtc"
    try:
        mtime = os.stat(_SYNC_FILE).st_mtime
    except OSError:
        return "rtc"
    if mtime != _cache[0]:
        try:
            with open(_SYNC_FILE) as f:
                state = json.load(f)
            q = "synced" if now() - float(state.get("synced_at", 0)) < SYNC_VALID_FOR else "rtc"
        except (OSError, ValueError):
            q = "rtc"
        _cache = (mtime, q)
    return _cache[1]


def stamp() -> dict:
    """The time fields every record carries."""
    return {"t": round(now(), 3), "mono": round(monotonic(), 3), "boot": boot_id(), "clock": quality()}
