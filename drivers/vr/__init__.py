"""Veeder-Root "VR" tank gauge protocol. ``drivers.vr.codec`` is the pure codec (framing, checksum,
parsers, encoders); the serial driver, the console simulator and the CLI decoder all build on it."""

from drivers.vr.codec import (
    ERROR_FRAME,
    ERROR_FRAME_EMULATOR,
    ETX,
    SOH,
    VRFrameError,
    VRFramer,
    build_request,
    build_set_clock,
    decode_capture,
    encode_response,
    parse_request,
    parse_response,
)

__all__ = [
    "ERROR_FRAME", "ERROR_FRAME_EMULATOR", "ETX", "SOH", "VRFrameError", "VRFramer", "build_request",
    "build_set_clock", "decode_capture", "encode_response", "parse_request", "parse_response",
]
