"""Sinopec IC-card dispenser <-> station PC protocol (30H..3FH, FA framing).

``codec`` is the pure codec (frames, stream framer, messages both ways, capture decoder); it is
the single copy every poller, simulator and CLI command imports.
"""

from drivers.sinopec.codec import (
    DISP,
    PC,
    SinopecCodecError,
    SinopecFramer,
    decode_capture,
    decode_message,
    encode_message,
)

__all__ = [
    "DISP",
    "PC",
    "SinopecCodecError",
    "SinopecFramer",
    "decode_capture",
    "decode_message",
    "encode_message",
]
