"""What a poller gets from the process that runs it: its port's configuration, a durable capture
call into the store, a status board for the CLI, a logger, and the stop flag.

A poller is a class ``Poller(ctx)`` with ``run()``; it owns its serial line and its timing and
returns when ``ctx.stopping()`` turns true. A listener (``mode: listen``, picked by
``ProtocolSpec.poller_class(mode)``) has the same shape and never writes to its line. A driver for a
GB/T 9081-2023 dispenser also fills ``drivers.gbt9081.Gbt9081Source`` (nozzle unique ID, core-part
IDs, software ID, lock state, safety check) and hands the readings to a
``gbt9081.IdentityTracker``, which turns them into identity / identity_changed events and alarms.
"""

from __future__ import annotations

import os
import time

from collector import logsetup
from collector.statusboard import StatusBoard
from drivers import records
from store.client import StoreClient
from store.protocol import SOCKET_NAME


class DriverContext:
    def __init__(self, config, port, stop_flag) -> None:
        self.config = config
        self.station = config.station
        self.port = port
        self.tolerance = config.tolerance
        self.log = logsetup.get(f"driver.{port.name}")
        self.board = StatusBoard(config.runtime_dir, f"port-{port.name}")
        self.store = StoreClient(os.path.join(config.runtime_dir, SOCKET_NAME))
        self._stop_flag = stop_flag

    def stopping(self) -> bool:
        return self._stop_flag()

    def capture(self, records: list[dict]) -> list[tuple[str, int, bool]]:
        """Durably store records; returns once committed and fsynced (retrying while running)."""
        if not records:
            return []
        return self.store.put(records, keep_trying=lambda: not self.stopping())


def last_sales(ctx: DriverContext, nozzles) -> list[tuple]:
    """Each nozzle's last stored sale as ``(owner, nozzle config, sale body)``, from ``(owner, nozzle)``
    pairs, so a restarted driver continues its totals chain. Empty when the store cannot answer yet:
    the chain then starts from the first totals read."""
    streams = {records.sale_stream(n.id): (owner, n) for owner, n in nozzles}
    try:
        found = ctx.store.last_sales(list(streams))
    except Exception as exc:  # noqa: BLE001 - any store failure means "no history", never a crash
        ctx.log.warning("could not read last sales from the store: %s", exc)
        return []
    return [(*streams[stream], sale) for stream, sale in found.items()]


def poll_cycles(ctx: DriverContext, units, visit, stats: dict, publish, interval: float) -> None:
    """The master-mode loop every poller shares: visit each pump in turn, publish, and sleep what is
    left of ``interval``; returns when the driver is told to stop."""
    while not ctx.stopping():
        start = time.monotonic()
        for unit in units:
            if ctx.stopping():
                break
            visit(unit)
        elapsed = time.monotonic() - start
        stats["cycles"] += 1
        stats["cycle_ms"] = round(elapsed * 1000, 2)
        publish()
        rest = interval - elapsed
        if rest > 0 and not ctx.stopping():
            time.sleep(rest)
