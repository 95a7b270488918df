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

from collector import logsetup
from collector.statusboard import StatusBoard
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
