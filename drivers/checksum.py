"""The one checksum library: every CRC, LRC and XOR rule the dispenser and tank protocols use.

Pure functions over bytes. Drivers, simulators and the CLI decoder all import from here;
nobody carries a private copy of a checksum.
"""

from __future__ import annotations


def _reflected_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_ARC_TABLE = _reflected_table(0xA001)
_KERMIT_TABLE = _reflected_table(0x8408)


def crc16_arc(data: bytes, init: int = 0x0000) -> int:
    """CRC-16/ARC (reflected 0x8005, no final XOR). DART, Sinopec card protocol, Sanying, Furen.

    ``init=0xFFFF`` gives CRC-16/MODBUS.
    """
    crc = init
    table = _ARC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def crc16_modbus(data: bytes) -> int:
    return crc16_arc(data, init=0xFFFF)


def crc16_kermit(data: bytes, init: int = 0x0000) -> int:
    """Reflected CCITT 0x8408 (KERMIT-style): Hengshan self-service."""
    crc = init
    table = _KERMIT_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def nibble_lrc(words: bytes) -> int:
    """Gilbarco two-wire LRC: two's complement of the sum of the low nibbles, modulo 16."""
    return (-sum(w & 0x0F for w in words)) & 0x0F


def xor8(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def sum_complement8(data: bytes) -> int:
    """Two's complement of the byte sum, modulo 256 (Hongyang, Lanfeng)."""
    return (-sum(data)) & 0xFF


def sum16_ascii(data: bytes) -> int:
    """Veeder-Root computer-format checksum: 16-bit two's complement of the byte sum."""
    return (-sum(data)) & 0xFFFF
