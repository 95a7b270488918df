"""Gilbarco two-wire (current-loop) protocol.

``codec`` is the pure codec (command/status bytes, data and control words, blocks both ways,
echo suppression, capture decoder); it is the single copy every poller, simulator and CLI
command imports.
"""

from drivers.gilbarco.codec import (
    CTRL,
    PUMP,
    GilbarcoCodecError,
    LoopDecoder,
    decode_capture,
    strip_echo,
)

__all__ = ["CTRL", "PUMP", "GilbarcoCodecError", "LoopDecoder", "decode_capture", "strip_echo"]
