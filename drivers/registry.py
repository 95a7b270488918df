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
    listener: str | None = None  # "module:Class" run for mode "listen" (never writes to the line)
    nozzle_range: tuple[int, int] = (1, 15)  # logical nozzle numbers the protocol can carry

    def poller_class(self, mode: str = "master"):
        """The class a driver process runs for this protocol in ``mode`` (master or listen)."""
        target = self.listener if mode == "listen" else self.poller
        if not target:
            raise ValueError(f"protocol {self.name} has no {mode} mode")
        module, _, cls = target.partition(":")
        return getattr(importlib.import_module(module), cls)


PROTOCOLS: dict[str, ProtocolSpec] = {
    "dart": ProtocolSpec(
        "dart", "drivers.dart.poller:DartPoller", ("master", "listen"),
        serial={"baud": 9600, "data_bits": 8, "parity": "odd", "stop_bits": 1, "response_timeout": 0.05,
                "inter_command_gap": 0.0, "poll_interval": 0.25, "offline_after": 5},
        address_range=(0x50, 0x6F), max_pumps=32, listener="drivers.dart.listener:DartListener",
    ),
    # Gilbarco two-wire current loop: 5787 baud 8E1, the loop echoes what the controller sends;
    # pumps 1-16 (16 is nibble 0 on the wire). Totals of 6+ grades take ~400 ms at 5787 baud.
    "gilbarco": ProtocolSpec(
        "gilbarco", "drivers.gilbarco.poller:GilbarcoPoller", ("master", "listen"),
        serial={"baud": 5787, "data_bits": 8, "parity": "even", "stop_bits": 1, "echo_suppression": True,
                "response_timeout": 0.1, "inter_command_gap": 0.01, "poll_interval": 0.25, "offline_after": 5},
        address_range=(1, 16), max_pumps=16, listener="drivers.gilbarco.listener:GilbarcoListener",
    ),
    # Sinopec IC-card dispenser <-> station PC (reference §5.3): FA frames, CRC-16/ARC. B1 is the
    # dispenser address (any byte but 0xFA; the PC is usually 0, options.pc_address); the logical
    # nozzle is one byte, numbered across the station. 38H totals can take ~110 ms of wire time.
    "sinopec": ProtocolSpec(
        "sinopec", "drivers.sinopec.poller:SinopecPoller", ("master", "listen"),
        serial={"baud": 9600, "data_bits": 8, "parity": "none", "stop_bits": 1, "response_timeout": 0.3,
                "inter_command_gap": 0.02, "poll_interval": 0.25, "offline_after": 5},
        address_range=(1, 0xF9), max_pumps=32, listener="drivers.sinopec.listener:SinopecListener",
        nozzle_range=(1, 255),
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
