"""Which protocols exist, their default serial profile and address range, and where their poller lives.

Kept free of heavy imports: the configuration checker and the supervisor read it before any
driver module is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    poller: str  # "module:Class"
    modes: tuple[str, ...]
    serial: dict = field(default_factory=dict)
    address_range: tuple[int, int] = (0, 255)
    max_pumps: int = 32
    tanks: bool = False  # a tank-gauge console: the port has ``tanks:`` instead of ``pumps:``

    def poller_class(self):
        module, _, cls = self.poller.partition(":")
        return getattr(importlib.import_module(module), cls)


PROTOCOLS: dict[str, ProtocolSpec] = {
    "dart": ProtocolSpec(
        "dart", "drivers.dart.poller:DartPoller", ("master",),
        serial={"baud": 9600, "data_bits": 8, "parity": "odd", "stop_bits": 1, "response_timeout": 0.05,
                "inter_command_gap": 0.002, "poll_interval": 0.25, "offline_after": 5},
        address_range=(0x50, 0x6F), max_pumps=32,
    ),
    # Veeder-Root TLS (and VR-compatible) tank gauge console, computer format. 7-O-1 is the field
    # default; big reports take seconds at 9600 baud, so the timeout is to the first byte and the read
    # then extends while bytes keep coming. poll_interval is the idle tick of the loop; what is read
    # when is set by the tank keys of the port (inventory_interval, delivery_interval ...).
    "vr": ProtocolSpec(
        "vr", "drivers.vr.poller:VRPoller", ("master",),
        serial={"baud": 9600, "data_bits": 7, "parity": "odd", "stop_bits": 1, "response_timeout": 2.0,
                "inter_command_gap": 0.05, "poll_interval": 0.25, "offline_after": 3},
        address_range=(0, 0), max_pumps=0, tanks=True,
    ),
}
