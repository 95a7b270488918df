"""Number encodings shared by the protocol codecs: packed BCD and scaled decimals."""

from __future__ import annotations

from decimal import Decimal


class BCDError(ValueError):
    """A byte that should hold two decimal digits does not."""


def bcd_to_int(data: bytes) -> int:
    """Packed BCD, most significant byte first. Raises BCDError on a nibble above 9."""
    value = 0
    for byte in data:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise BCDError(f"not BCD: {data.hex()}")
        value = value * 100 + hi * 10 + lo
    return value


def int_to_bcd(value: int, length: int) -> bytes:
    """Packed BCD of ``length`` bytes, most significant first. Raises ValueError if it does not fit."""
    if value < 0 or value >= 10 ** (2 * length):
        raise ValueError(f"{value} does not fit in {length} BCD bytes")
    out = bytearray(length)
    for i in range(length - 1, -1, -1):
        value, lo = divmod(value, 10)
        value, hi = divmod(value, 10)
        out[i] = (hi << 4) | lo
    return bytes(out)


def scaled(raw: int, decimals: int) -> Decimal:
    """An integer as sent by a pump, with the decimal point placed from configuration."""
    return Decimal(raw).scaleb(-decimals)
