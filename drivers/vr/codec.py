"""Veeder-Root "VR" computer-format serial protocol: the one pure codec.

Owns: request building (SOH + [security code] + function code + TT [+ data]), response framing
(SOH + echo + YYMMDDHHmm + data + ``&&`` + 4-hex checksum + ETX, the ``9999`` error frames), a stream
framer that resynchronises on SOH, typed parsers and matching encoders for every report the
collector uses, and ``decode_capture`` for the technician CLI. No I/O, no timing, no state beyond
the framer's buffer. The checksum rule lives in ``drivers.checksum.sum16_ascii``; the driver, the
console simulator in ``tools/`` and the CLI all import this module and nobody carries a copy of it.

Reference: shared/reference/vr_protocol.md beside the repository (§2 requests, §3 responses, §4 checksum, §5 floats,
§6 layouts). Times are the console's naive local time at minute resolution, years 20YY.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from typing import Any

from drivers.checksum import sum16_ascii

__all__ = [
    "SOH", "ETX", "CR", "ESC", "ERROR_FRAME", "ERROR_FRAME_EMULATOR", "MAX_REQUEST_CHARS",
    "VRFrameError", "UnitSystem",
    "Request", "Frame", "FramingError", "Envelope", "VRFramer",
    "SystemAlarm", "SystemStatus", "TankInventory", "InventoryReport", "Delivery", "TankDeliveries",
    "DeliveryReport", "TankAlarmStatus", "TankStatusReport", "TankLeakTest", "LeakTestReport",
    "LeakTestHistoryEntry", "TankLeakTestHistory", "LeakTestHistory", "LeakTestResult",
    "TankLeakTestResults", "LeakTestResults", "CsldResult", "CsldReport", "ClockReport",
    "ClockSetReply", "SystemUnits", "TankLabel", "TankLabels", "TankProductCode", "ProductCodes",
    "VersionReport", "RawResponse", "ErrorResponse", "Response",
    "build_request", "build_set_clock", "parse_request",
    "hex_to_float", "float_to_hex", "checksum_hex",
    "frame_response", "encode_response", "parse_envelope", "parse_response", "is_error_frame",
    "to_jsonable", "decode_capture", "SUPPORTED_REPORTS",
]

SOH = b"\x01"
ETX = b"\x03"
CR = b"\r"
ESC = b"\x1b"
#: "function code not recognised", as the manual and real consoles send it (checksum of SOH 9999).
ERROR_FRAME = b"\x019999FF1B\x03"
#: The same refusal as some emulators send it (checksum of SOH 9999 &&). Accepted, never preferred.
ERROR_FRAME_EMULATOR = b"\x019999&&FECF\x03"
#: The console's command input buffer (reference §1); a longer "request" is not one.
MAX_REQUEST_CHARS = 128

_HEX = frozenset(b"0123456789ABCDEFabcdef")
_HEX_STR = frozenset("0123456789ABCDEFabcdef")
_DEC_STR = frozenset("0123456789")
_FORMAT_LETTERS = "iIsS"
_FUNCTION_RE = re.compile(r"[iIsS][0-9A-Z]{3}[0-9]{2}")
_CODE4_RE = re.compile(r"[iIsS][0-9A-Z]{3}")
# Bytes that may sit between frames without being reported as noise: line ends and NUL padding
# from display-format replies or clients, and an ETX left over from a frame ended early.
_IGNORABLE = b"\r\n\x00\x03"


class VRFrameError(ValueError):
    """A VR frame, request or report that does not follow the protocol. The only parse error."""


class UnitSystem(enum.IntEnum):
    """The console's configured system units (i505/i517 ``U``); floats carry no units of their own."""

    US = 1
    METRIC = 2
    IMPERIAL = 3

    @property
    def volume_unit(self) -> str:
        return {1: "gal", 2: "L", 3: "imp gal"}[self.value]

    @property
    def height_unit(self) -> str:
        # The reference only says "3 = Imperial gallons"; heights and temperatures are assumed to be
        # inches and degrees F there, as on US-unit consoles.
        return {1: "in", 2: "mm", 3: "in"}[self.value]

    @property
    def temperature_unit(self) -> str:
        return {1: "F", 2: "C", 3: "F"}[self.value]


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def hex_to_float(text: str) -> float | None:
    """8 ASCII hex digits (big-endian IEEE-754 single) to a float; ``????????`` (no data) to None."""
    if not isinstance(text, str) or len(text) != 8:
        raise VRFrameError(f"a float field is 8 hex digits, got {text!r}")
    if text == "????????":
        return None
    if not _HEX_STR.issuperset(text):
        raise VRFrameError(f"float field {text!r} is not 8 hex digits")
    return struct.unpack(">f", bytes.fromhex(text))[0]


def float_to_hex(value: float | None) -> str:
    """A float as 8 upper-case hex digits (rounded to single precision); None as ``????????``."""
    if value is None:
        return "????????"
    try:
        return struct.pack(">f", value).hex().upper()
    except (OverflowError, struct.error, TypeError) as exc:
        raise ValueError(f"{value!r} does not fit an IEEE-754 single: {exc}") from None


def checksum_hex(body: bytes) -> str:
    """The 4 hex digits that follow ``body`` (SOH through ``&&`` inclusive) on the wire."""
    return f"{sum16_ascii(body):04X}"


def _stamp_text(when: datetime) -> str:
    if not isinstance(when, datetime):
        raise ValueError(f"expected a datetime, got {when!r}")
    if not 2000 <= when.year <= 2099:
        raise ValueError(f"{when} cannot be sent as YYMMDDHHmm (years 2000-2099 only)")
    return when.strftime("%y%m%d%H%M")


def _parse_stamp(text: str, what: str) -> datetime:
    if len(text) != 10 or not _DEC_STR.issuperset(text):
        raise VRFrameError(f"{what}: {text!r} is not YYMMDDHHmm")
    yy, mo, dd, hh, mi = (int(text[i:i + 2]) for i in range(0, 10, 2))
    try:
        return datetime(2000 + yy, mo, dd, hh, mi)
    except ValueError as exc:
        raise VRFrameError(f"{what}: {text!r} is not a valid date/time ({exc})") from None


def _printable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A command as sent to the console."""

    function: str  # 6 chars: format letter + 3-char report code + 2-digit device, e.g. "i20100"
    data: str = ""
    security_code: str | None = None
    cr: bool = False  # ended with <CR> (set commands with variable-length data)

    @property
    def report(self) -> str:
        return self.function[:4]

    @property
    def device(self) -> int:
        return int(self.function[4:6])


def build_request(code: str, tank: int = 0, data: str = "", *, security_code: str | None = None,
                  cr: bool = False) -> bytes:
    """``SOH [security code] code TT [data] [CR]``, e.g. ``build_request("i201")`` -> ``b"\\x01i20100"``.

    ``code`` is the format letter plus the 3-character report code (``"i201"``, ``"i20C"``, ``"s501"``);
    ``tank`` the 2-digit device number, 0 = all. Inquiries need no terminator; pass ``cr=True`` only
    for set commands whose data is variable-length.
    """
    if not isinstance(code, str) or not _CODE4_RE.fullmatch(code):
        raise ValueError(f"function code must be a format letter (i/I/s/S) + 3 chars, got {code!r}")
    if isinstance(tank, bool) or not isinstance(tank, int) or not 0 <= tank <= 99:
        raise ValueError(f"tank/device number must be 0-99, got {tank!r}")
    if not isinstance(data, str) or not _printable(data):
        raise ValueError(f"request data must be printable ASCII, got {data!r}")
    prefix = ""
    if security_code is not None:
        if not isinstance(security_code, str) or len(security_code) != 6 or not _printable(security_code):
            raise ValueError(f"security code must be 6 printable ASCII characters, got {security_code!r}")
        prefix = security_code
    text = f"{prefix}{code}{tank:02d}{data}"
    if len(text) + 1 + cr > MAX_REQUEST_CHARS:
        raise ValueError(f"request longer than the console's {MAX_REQUEST_CHARS}-character input buffer")
    return SOH + text.encode("ascii") + (CR if cr else b"")


def build_set_clock(when: datetime, *, security_code: str | None = None) -> bytes:
    """``s50100YYMMDDHHmm``: set the console clock (minute resolution; seconds are dropped)."""
    return build_request("s501", 0, _stamp_text(when), security_code=security_code)


def parse_request(frame: bytes, *, security_code: bool | None = None) -> Request:
    """Parse one command (``SOH [code6] function6 [data] [CR]``).

    ``security_code``: True/False when it is known whether a 6-char security code precedes the
    function code; None detects it (the function code pattern at offset 0, else at offset 6).
    """
    raw = _as_bytes(frame)
    if not raw.startswith(SOH):
        raise VRFrameError("request does not start with SOH (0x01)")
    cr = raw.endswith(CR)
    if len(raw) > MAX_REQUEST_CHARS:
        raise VRFrameError(f"{len(raw)} bytes is longer than the console's {MAX_REQUEST_CHARS}-character "
                           "input buffer: not a request")
    text = raw[1:len(raw) - cr].decode("latin-1")
    if not _printable(text):
        raise VRFrameError(f"request contains non-printable characters: {text!r}")
    at_0 = bool(_FUNCTION_RE.fullmatch(text[:6]))
    at_6 = len(text) >= 12 and bool(_FUNCTION_RE.fullmatch(text[6:12]))
    if security_code is None:
        security_code = not at_0 and at_6
    if security_code:
        if not at_6:
            raise VRFrameError(f"no function code after the 6-char security code in {text!r}")
        return Request(function=text[6:12], data=text[12:], security_code=text[:6], cr=cr)
    if not at_0:
        raise VRFrameError(f"{text[:6]!r} is not a function code (letter i/I/s/S + 3 chars + 2 digits)")
    return Request(function=text[:6], data=text[6:], security_code=None, cr=cr)


# --------------------------------------------------------------------------------------------
# Stream framer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One complete unit from the byte stream.

    kind: ``"response"`` (ends in ``&&CCCC``), ``"error"`` (a ``9999`` refusal) or ``"request"``.
    ``terminated`` says whether the ETX/configured terminator was seen. The checksum is not checked
    here: ``parse_response`` / ``decode_capture`` do that.
    """

    kind: str
    raw: bytes
    terminated: bool = True


@dataclass(frozen=True)
class FramingError:
    """Bytes the framer had to discard, and why."""

    reason: str
    raw: bytes


_NEED_MORE = None


class VRFramer:
    """Cuts an arbitrary byte stream into VR frames; never raises on content.

    ``feed(chunk)`` returns the frames and framing errors completed by that chunk; ``flush()``
    ends the stream (or an idle gap) and returns whatever was pending. A frame ends at ``&&`` + 4
    hex + terminator (ETX, or the configured end-of-message characters; both are accepted); a
    ``&&CCCC`` not followed by one is still taken as the end when the next SOH arrives, at
    ``flush()``, or when the checksum is right. Every SOH starts a new frame (resync). Requests
    (SOH + function code, no checksum) end at CR, at the next SOH, or at ``flush()``.

    ``strip_parity`` clears bit 7 of every byte, for reading a 7-bit-with-parity console on an
    8-N-1 port. ``accept_requests=False`` reports any unit that is not a response as an error.
    """

    def __init__(self, *, terminator: bytes = ETX, accept_requests: bool = True,
                 max_frame: int = 65536, strip_parity: bool = False) -> None:
        terminator = bytes(terminator)
        if len(terminator) > 2:
            raise ValueError("the end-of-message terminator is 0-2 characters")
        self._terms = tuple(sorted({t for t in (terminator, ETX) if t}, key=len, reverse=True))
        self._no_term = not terminator
        self.accept_requests = accept_requests
        self.max_frame = max(32, int(max_frame))
        self._parity_table = bytes(b & 0x7F for b in range(256)) if strip_parity else None
        self._buf = bytearray()
        self._scanned = 0  # bytes of the current head unit already scanned without an end

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._scanned = 0

    def feed(self, data: bytes) -> list[Frame | FramingError]:
        chunk = bytes(data)
        if self._parity_table is not None:
            chunk = chunk.translate(self._parity_table)
        self._buf += chunk
        return self._scan(final=False)

    def flush(self) -> list[Frame | FramingError]:
        out = self._scan(final=True)
        if self._buf:  # cannot happen, but never lose bytes silently
            out.append(FramingError("incomplete frame at end of stream", bytes(self._buf)))
            self.reset()
        return out

    # -- internals ---------------------------------------------------------------------------

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._scanned = 0

    def _scan(self, final: bool) -> list[Frame | FramingError]:
        out: list[Frame | FramingError] = []
        buf = self._buf
        while buf:
            start = buf.find(SOH)
            if start != 0:
                junk = bytes(buf) if start < 0 else bytes(buf[:start])
                if junk.strip(_IGNORABLE):
                    out.append(FramingError(f"{len(junk)} byte(s) of noise outside a frame", junk))
                self._consume(len(junk))
                continue
            nxt = buf.find(SOH, max(1, self._scanned))
            closed = final or nxt >= 0
            unit = bytes(buf if nxt < 0 else buf[:nxt])
            result = self._match(unit, closed)
            if result is _NEED_MORE:
                if len(buf) > self.max_frame:
                    out.append(FramingError(f"frame longer than {self.max_frame} bytes without an end",
                                            bytes(buf)))
                    self._consume(len(buf))
                    continue
                self._scanned = max(1, len(buf) - 8)
                break
            length, event = result
            out.append(event)
            self._consume(length)
        return out

    def _end_at(self, unit: bytes, e: int, closed: bool) -> tuple[int, bool] | bool | None:
        """Where a frame whose checksum digits end at ``e`` finishes: (length, terminated), None for
        "need more bytes", False for "this was not the end"."""
        rest = unit[e:]
        for term in self._terms:
            if rest.startswith(term):
                return e + len(term), True
        if not rest:
            return (e, self._no_term) if closed or self._no_term else None
        if not closed and any(t.startswith(rest) for t in self._terms):
            return None
        if self._no_term:
            return e, True
        body = unit[:e - 4]
        if checksum_hex(body).encode() == unit[e - 4:e].upper():
            return e, False
        return False

    def _match(self, unit: bytes, closed: bool) -> tuple[int, Frame | FramingError] | None:
        etx = unit.find(ETX, 1)
        cr = unit.find(CR, 1)
        # A computer-format frame holds no CR and no ETX before its &&CCCC: search only up to the
        # first of them, so the outcome does not depend on how the stream was chunked.
        stops = [i for i in (etx, cr) if i >= 0]
        region = unit[:min(stops) + 1] if stops else unit
        # The manual's refusal: SOH 9999 CCCC (no &&).
        if region[1:5] == b"9999" and region[5:7] != b"&&":
            tail = region[5:9]
            if all(b in _HEX for b in tail):
                if len(tail) == 4:
                    end = self._end_at(unit, 9, closed)
                    if end is None:
                        return _NEED_MORE
                    if end is not False:
                        return end[0], Frame("error", unit[:end[0]], end[1])
                elif not closed and not stops:
                    return _NEED_MORE
        # Computer-format response (or the emulator refusal SOH 9999&&CCCC).
        k = region.find(b"&&", max(1, self._scanned - 8))
        while k >= 0:
            tail = region[k + 2:k + 6]
            if all(b in _HEX for b in tail):
                if len(tail) < 4:
                    if not closed and not stops:
                        return _NEED_MORE
                else:
                    end = self._end_at(unit, k + 6, closed)
                    if end is None:
                        return _NEED_MORE
                    if end is not False:
                        kind = "error" if unit[1:7] == b"9999&&" and k == 5 else "response"
                        return end[0], Frame(kind, unit[:end[0]], end[1])
            k = region.find(b"&&", k + 1)
        # No checksum block: a request, a display-format reply, or a broken frame.
        if self.accept_requests and cr >= 0 and (etx < 0 or cr < etx) and _is_request(unit[:cr + 1]):
            return cr + 1, Frame("request", unit[:cr + 1], True)
        if etx >= 0:
            return etx + 1, FramingError("frame ended by ETX without an &&CCCC checksum block "
                                         "(display format, or damaged)", unit[:etx + 1])
        if not closed:
            return _NEED_MORE
        if self.accept_requests and _is_request(unit):
            return len(unit), Frame("request", unit, False)
        return len(unit), FramingError("incomplete frame (no &&CCCC end before the next SOH or end of "
                                       "stream)", unit)


def _is_request(raw: bytes) -> bool:
    """Whether the framer should call an unchecksummed unit a request.

    A response cut short before ``&&`` also starts SOH + function code; an inquiry (``i``) whose
    "data" opens with a valid YYMMDDHHmm stamp is taken to be such a fragment, not a request.
    """
    try:
        req = parse_request(raw)
    except VRFrameError:
        return False
    if req.function[0] == "i" and len(req.data) >= 10:
        try:
            _parse_stamp(req.data[:10], "stamp")
        except VRFrameError:
            return True
        return False
    return True


# --------------------------------------------------------------------------------------------
# Response envelope
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The common part of every computer-format response, before the report data is interpreted."""

    function: str
    console_time: datetime
    data: str
    checksum: int  # as received
    checksum_computed: int
    terminated: bool

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.checksum_computed

    @property
    def report(self) -> str:
        return self.function[:4]

    @property
    def device(self) -> int:
        return int(self.function[4:6])


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    raise VRFrameError(f"a frame is bytes, got {type(frame).__name__}")


def _strip_terminator(raw: bytes, terminator: bytes) -> tuple[bytes, bool]:
    for term in sorted({t for t in (bytes(terminator), ETX) if t}, key=len, reverse=True):
        if raw.endswith(term):
            return raw[:-len(term)], True
    return raw, False


def _error_frame_check(body: bytes) -> tuple[str, bool] | None:
    """(variant, checksum_ok) when ``body`` (terminator removed) is a 9999 refusal."""
    if body[:5] != SOH + b"9999":
        return None
    if len(body) == 9 and all(b in _HEX for b in body[5:9]):
        return "manual", checksum_hex(body[:5]).encode() == body[5:9].upper()
    if len(body) == 11 and body[5:7] == b"&&" and all(b in _HEX for b in body[7:11]):
        return "emulator", checksum_hex(body[:7]).encode() == body[7:11].upper()
    return None


def is_error_frame(frame: bytes) -> bool:
    """True for ``SOH 9999 CCCC [ETX]`` and ``SOH 9999&&CCCC [ETX]`` (function not supported)."""
    try:
        raw = _as_bytes(frame)
    except VRFrameError:
        return False
    return _error_frame_check(_strip_terminator(raw, ETX)[0]) is not None


def parse_envelope(frame: bytes, *, verify_checksum: bool = True, terminator: bytes = ETX) -> Envelope:
    """Split a response into echo, console time and data, and check the checksum.

    Accepts the frame with or without its terminator (ETX, or ``terminator``). Raises
    ``VRFrameError`` on anything that is not a computer-format response, and, unless
    ``verify_checksum`` is False, on a checksum mismatch.
    """
    raw = _as_bytes(frame)
    if not raw.startswith(SOH):
        raise VRFrameError("response does not start with SOH (0x01)")
    body, terminated = _strip_terminator(raw, terminator)
    k = body.rfind(b"&&")
    if k < 0:
        raise VRFrameError("no '&&' checksum marker: not a computer-format response")
    digits = body[k + 2:]
    if len(digits) != 4 or not all(b in _HEX for b in digits):
        raise VRFrameError(f"'&&' must be followed by exactly 4 hex digits and the end of the frame, "
                           f"got {digits[:12]!r}")
    received = int(digits, 16)
    computed = sum16_ascii(body[:k + 2])
    if verify_checksum and received != computed:
        raise VRFrameError(f"checksum mismatch: frame says {received:04X}, bytes SOH..&& give {computed:04X}")
    text = body[1:k].decode("latin-1")
    if len(text) < 16:
        raise VRFrameError(f"response too short for a 6-char echo and a 10-digit time: {text!r}")
    function = text[:6]
    if not _FUNCTION_RE.fullmatch(function):
        raise VRFrameError(f"echo {function!r} is not a function code")
    console_time = _parse_stamp(text[6:16], f"{function}: console time")
    return Envelope(function, console_time, text[16:], received, computed, terminated)


# --------------------------------------------------------------------------------------------
# Report dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    function: str  # the 6-char echo, e.g. "i20100"
    console_time: datetime  # the console clock when it answered

    @property
    def report(self) -> str:
        return self.function[:4]

    @property
    def device(self) -> int:
        return int(self.function[4:6])


@dataclass(frozen=True)
class SystemAlarm:
    category: int  # AA: 01 system, 02 tank, 03 liquid sensor ... (reference §7)
    alarm_type: int  # NN, meaning depends on the category
    device: int  # TT: tank or sensor number


@dataclass(frozen=True)
class SystemStatus(_Report):
    """i101: every active alarm on the site. A ``000000`` record ("all normal") yields no alarm."""

    alarms: tuple[SystemAlarm, ...] = ()


INVENTORY_FIELDS = ("volume", "tc_volume", "ullage", "height", "water", "temperature", "water_volume",
                    "user_ullage")


@dataclass(frozen=True)
class TankInventory:
    """One tank of an i201 (i20I) inventory. None = ``????????`` (no data) or not sent (see nfields)."""

    tank: int
    product: str  # the single product-code character (map with i603/i602)
    status: int | None = 0  # ssss bitfield; None when sent as ????
    nfields: int = 7  # NN: how many floats the console sent
    volume: float | None = None
    tc_volume: float | None = None
    ullage: float | None = None
    height: float | None = None
    water: float | None = None  # water height
    temperature: float | None = None
    water_volume: float | None = None
    user_ullage: float | None = None  # 8th field on i20I / i21A
    extra: tuple[float | None, ...] = ()  # floats beyond the 8th

    @property
    def delivery_in_progress(self) -> bool:
        return bool((self.status or 0) & 0x1)

    @property
    def leak_test_in_progress(self) -> bool:
        return bool((self.status or 0) & 0x2)

    @property
    def invalid_fuel_height(self) -> bool:
        return bool((self.status or 0) & 0x4)


@dataclass(frozen=True)
class InventoryReport(_Report):
    tanks: tuple[TankInventory, ...] = ()


DELIVERY_FIELDS = ("start_volume", "start_tc_volume", "start_water", "start_temp", "end_volume",
                   "end_tc_volume", "end_water", "end_temp", "start_height", "end_height", "start_mass",
                   "end_mass", "start_density", "end_density")


@dataclass(frozen=True)
class Delivery:
    start: datetime | None
    end: datetime | None
    nfields: int = 10
    start_volume: float | None = None
    start_tc_volume: float | None = None
    start_water: float | None = None  # water height
    start_temp: float | None = None
    end_volume: float | None = None
    end_tc_volume: float | None = None
    end_water: float | None = None
    end_temp: float | None = None
    start_height: float | None = None
    end_height: float | None = None
    start_mass: float | None = None  # 11-14: TLS-4xx i20C only
    end_mass: float | None = None
    start_density: float | None = None
    end_density: float | None = None
    extra: tuple[float | None, ...] = ()

    @property
    def delivered_volume(self) -> float | None:
        if self.start_volume is None or self.end_volume is None:
            return None
        return self.end_volume - self.start_volume

    @property
    def delivered_tc_volume(self) -> float | None:
        if self.start_tc_volume is None or self.end_tc_volume is None:
            return None
        return self.end_tc_volume - self.start_tc_volume


@dataclass(frozen=True)
class TankDeliveries:
    tank: int
    product: str
    deliveries: tuple[Delivery, ...] = ()  # newest first, as the console lists them


@dataclass(frozen=True)
class DeliveryReport(_Report):
    """i202 (stored deliveries) and i20C (most recent delivery only)."""

    tanks: tuple[TankDeliveries, ...] = ()


@dataclass(frozen=True)
class TankAlarmStatus:
    tank: int
    alarms: tuple[int, ...] = ()  # active tank alarm types (reference §7, AA = 02 table)


@dataclass(frozen=True)
class TankStatusReport(_Report):
    """i205: active alarms per tank."""

    tanks: tuple[TankAlarmStatus, ...] = ()


LEAK_TEST_FIELDS = ("start_temp", "end_temp", "start_volume", "leak_rate")


@dataclass(frozen=True)
class TankLeakTest:
    tank: int
    product: str
    start: datetime | None
    duration_hours: int  # HH, read as decimal (the manual does not say; see reference §13)
    nfields: int = 4
    start_temp: float | None = None
    end_temp: float | None = None
    start_volume: float | None = None
    leak_rate: float | None = None  # the "ending rate"
    hourly_changes: tuple[float | None, ...] = ()  # fields 5..NN: hourly cumulative volume changes


@dataclass(frozen=True)
class LeakTestReport(_Report):
    """i203: in-progress / last leak test per tank."""

    tanks: tuple[TankLeakTest, ...] = ()


@dataclass(frozen=True)
class LeakTestHistoryEntry:
    report_type: int  # 00 last passed, 01 fullest passed, 02 fullest periodic monthly pass
    month: int  # 1-12
    test_type: int  # 00 0.20 gph, 01 0.10 gph, 02 gross 3 gph
    start: datetime | None
    duration_hours: float | None
    volume: float | None
    percent_volume: float | None  # % of full volume


@dataclass(frozen=True)
class TankLeakTestHistory:
    tank: int
    entries: tuple[LeakTestHistoryEntry, ...] = ()


@dataclass(frozen=True)
class LeakTestHistory(_Report):
    """i207: leak test history per tank."""

    tanks: tuple[TankLeakTestHistory, ...] = ()


@dataclass(frozen=True)
class LeakTestResult:
    test_type: int  # 00 0.20 gph, 01 0.10 gph, 02 gross 3 gph
    manifolded: int  # 00 no, 01 yes
    start: datetime | None
    result: int  # 00 invalid, 01 passed, 02 failed
    leak_rate: float | None
    duration_hours: float | None
    volume: float | None

    @property
    def passed(self) -> bool:
        return self.result == 1


@dataclass(frozen=True)
class TankLeakTestResults:
    tank: int
    results: tuple[LeakTestResult, ...] = ()


@dataclass(frozen=True)
class LeakTestResults(_Report):
    """i208: last result per leak test type."""

    tanks: tuple[TankLeakTestResults, ...] = ()


@dataclass(frozen=True)
class CsldResult:
    tank: int
    result: int  # 01 PASS, 02 FAIL, 03 no results, 04 invalid, 08 INCR, 09 WARN


@dataclass(frozen=True)
class CsldReport(_Report):
    """i251: CSLD result per tank."""

    tanks: tuple[CsldResult, ...] = ()


@dataclass(frozen=True)
class ClockReport(_Report):
    """i501: the console clock."""

    clock: datetime | None = None


@dataclass(frozen=True)
class ClockSetReply(_Report):
    """s501 reply: the time taken, or None when the console refused it (ten ``?``).

    ``console_time`` is the clock as it was before the change.
    """

    clock: datetime | None = None

    @property
    def accepted(self) -> bool:
        return self.clock is not None


@dataclass(frozen=True)
class SystemUnits(_Report):
    """i505 / i517: the console's system units. ``extra`` keeps any characters after ``U``."""

    units: UnitSystem = UnitSystem.US
    extra: str = ""


@dataclass(frozen=True)
class TankLabel:
    tank: int
    label: str  # 20-char field, trailing spaces removed


@dataclass(frozen=True)
class TankLabels(_Report):
    """i602: tank labels (product names)."""

    tanks: tuple[TankLabel, ...] = ()


@dataclass(frozen=True)
class TankProductCode:
    tank: int
    product: str


@dataclass(frozen=True)
class ProductCodes(_Report):
    """i603: the single product-code character of each tank."""

    tanks: tuple[TankProductCode, ...] = ()


_SOFTWARE_RE = re.compile(r"SOFTWARE#\s*(.*?)\s*(?=CREATED|$)")
_CREATED_RE = re.compile(r"CREATED\s*-\s*(\d\d)\.(\d\d)\.(\d\d)\.(\d\d)\.(\d\d)")


@dataclass(frozen=True)
class VersionReport(_Report):
    """i901 / i902 / i905: the software identification text, kept whole."""

    text: str = ""

    @property
    def software_number(self) -> str | None:
        m = _SOFTWARE_RE.search(self.text)
        return m.group(1) if m else None

    @property
    def created(self) -> datetime | None:
        m = _CREATED_RE.search(self.text)
        if not m:
            return None
        try:
            return _parse_stamp("".join(m.groups()), "CREATED")
        except VRFrameError:
            return None


@dataclass(frozen=True)
class RawResponse(_Report):
    """A valid computer-format response to a function this codec does not interpret."""

    data: str = ""


@dataclass(frozen=True)
class ErrorResponse:
    """``9999``: the console did not recognise / does not support the function code."""

    variant: str = "manual"  # "manual": SOH 9999FF1B ETX; "emulator": SOH 9999&&FECF ETX
    checksum_ok: bool = True


Response = (SystemStatus | InventoryReport | DeliveryReport | TankStatusReport | LeakTestReport
            | LeakTestHistory | LeakTestResults | CsldReport | ClockReport | ClockSetReply | SystemUnits
            | TankLabels | ProductCodes | VersionReport | RawResponse | ErrorResponse)


# --------------------------------------------------------------------------------------------
# Data-section parsing
# --------------------------------------------------------------------------------------------


class _Cursor:
    def __init__(self, data: str, function: str) -> None:
        self.s = data
        self.i = 0
        self.fn = function

    def done(self) -> bool:
        return self.i >= len(self.s)

    def fail(self, what: str, problem: str) -> VRFrameError:
        return VRFrameError(f"{self.fn}: {what} at data offset {self.i}: {problem}")

    def take(self, n: int, what: str) -> str:
        if self.i + n > len(self.s):
            raise self.fail(what, f"data ends ({len(self.s) - self.i} chars left, {n} needed)")
        out = self.s[self.i:self.i + n]
        self.i += n
        return out

    def dec(self, n: int, what: str) -> int:
        text = self.take(n, what)
        if not _DEC_STR.issuperset(text):
            self.i -= n
            raise self.fail(what, f"{text!r} is not {n} decimal digits")
        return int(text)

    def hexnum(self, n: int, what: str, unknown_ok: bool = False) -> int | None:
        text = self.take(n, what)
        if unknown_ok and text == "?" * n:
            return None
        if not _HEX_STR.issuperset(text):
            self.i -= n
            raise self.fail(what, f"{text!r} is not {n} hex digits")
        return int(text, 16)

    def flt(self, what: str) -> float | None:
        text = self.take(8, what)
        try:
            return hex_to_float(text)
        except VRFrameError:
            self.i -= 8
            raise self.fail(what, f"{text!r} is neither 8 hex digits nor ????????") from None

    def floats(self, n: int, what: str) -> list[float | None]:
        return [self.flt(f"{what} float #{j + 1}") for j in range(n)]

    def stamp(self, what: str) -> datetime | None:
        text = self.take(10, what)
        if text == "?" * 10:
            return None
        try:
            return _parse_stamp(text, what)
        except VRFrameError as exc:
            self.i -= 10
            raise self.fail(what, str(exc)) from None

    def char(self, what: str) -> str:
        ch = self.take(1, what)
        if not " " <= ch <= "~":
            self.i -= 1
            raise self.fail(what, f"{ch!r} is not a printable ASCII character")
        return ch


def _split_named(values: list[float | None], names: tuple[str, ...]) -> dict[str, Any]:
    named: dict[str, Any] = {name: (values[j] if j < len(values) else None) for j, name in enumerate(names)}
    return named


def _p_system_status(c: _Cursor) -> dict[str, Any]:
    if len(c.s) % 6:
        raise c.fail("alarm records", f"{len(c.s)} data chars is not a whole number of 6-char records")
    alarms = []
    while not c.done():
        alarm = SystemAlarm(c.dec(2, "alarm category AA"), c.dec(2, "alarm type NN"), c.dec(2, "device TT"))
        if alarm.category:  # 000000 = all normal
            alarms.append(alarm)
    return {"alarms": tuple(alarms)}


def _p_inventory(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        product = c.char("product code p")
        status = c.hexnum(4, "status ssss", unknown_ok=True)
        n = c.hexnum(2, "field count NN")
        values = c.floats(n, f"tank {tank:02d}")
        tanks.append(TankInventory(tank, product, status, n, **_split_named(values, INVENTORY_FIELDS),
                                   extra=tuple(values[len(INVENTORY_FIELDS):])))
    return {"tanks": tuple(tanks)}


def _p_deliveries(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        product = c.char("product code p")
        count = c.dec(2, "delivery count dd")
        deliveries = []
        for j in range(count):
            start = c.stamp(f"tank {tank:02d} delivery {j + 1} start")
            end = c.stamp(f"tank {tank:02d} delivery {j + 1} end")
            n = c.hexnum(2, "field count NN")
            values = c.floats(n, f"tank {tank:02d} delivery {j + 1}")
            deliveries.append(Delivery(start, end, n, **_split_named(values, DELIVERY_FIELDS),
                                       extra=tuple(values[len(DELIVERY_FIELDS):])))
        tanks.append(TankDeliveries(tank, product, tuple(deliveries)))
    return {"tanks": tuple(tanks)}


def _p_tank_status(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        count = c.hexnum(2, "alarm count nn")
        alarms = tuple(c.dec(2, f"tank {tank:02d} alarm type") for _ in range(count))
        tanks.append(TankAlarmStatus(tank, alarms))
    return {"tanks": tuple(tanks)}


def _p_leak_test(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        product = c.char("product code p")
        start = c.stamp("test start")
        hours = c.dec(2, "test duration HH")
        n = c.hexnum(2, "field count NN")
        values = c.floats(n, f"tank {tank:02d}")
        tanks.append(TankLeakTest(tank, product, start, hours, n, **_split_named(values, LEAK_TEST_FIELDS),
                                  hourly_changes=tuple(values[len(LEAK_TEST_FIELDS):])))
    return {"tanks": tuple(tanks)}


def _p_leak_history(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        count = c.hexnum(2, "record count NN")
        entries = []
        for _ in range(count):
            rr = c.dec(2, "report type RR")
            month = c.dec(2, "month nn")
            tt = c.dec(2, "test type tt")
            start = c.stamp("test start")
            hours, volume, percent = c.floats(3, f"tank {tank:02d} history")
            entries.append(LeakTestHistoryEntry(rr, month, tt, start, hours, volume, percent))
        tanks.append(TankLeakTestHistory(tank, tuple(entries)))
    return {"tanks": tuple(tanks)}


def _p_leak_results(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tank = c.dec(2, "tank number TT")
        count = c.hexnum(2, "record count NN")
        results = []
        for _ in range(count):
            tt = c.dec(2, "test type tt")
            mm = c.dec(2, "manifolded mm")
            start = c.stamp("test start")
            rr = c.dec(2, "result RR")
            rate, hours, volume = c.floats(3, f"tank {tank:02d} result")
            results.append(LeakTestResult(tt, mm, start, rr, rate, hours, volume))
        tanks.append(TankLeakTestResults(tank, tuple(results)))
    return {"tanks": tuple(tanks)}


def _p_csld(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tanks.append(CsldResult(c.dec(2, "tank number TT"), c.dec(2, "CSLD result rr")))
    return {"tanks": tuple(tanks)}


def _p_clock(c: _Cursor) -> dict[str, Any]:
    clock = c.stamp("clock YYMMDDHHmm")
    if not c.done():
        raise c.fail("after the clock", "unexpected trailing data")
    return {"clock": clock}


def _p_units(c: _Cursor) -> dict[str, Any]:
    digit = c.dec(1, "system units U")
    try:
        units = UnitSystem(digit)
    except ValueError:
        c.i -= 1
        raise c.fail("system units U", f"{digit} is not 1 (US), 2 (metric) or 3 (imperial)") from None
    return {"units": units, "extra": c.s[c.i:]}


def _p_labels(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tanks.append(TankLabel(c.dec(2, "tank number TT"), c.take(20, "20-char label").rstrip(" ")))
    return {"tanks": tuple(tanks)}


def _p_product_codes(c: _Cursor) -> dict[str, Any]:
    tanks = []
    while not c.done():
        tanks.append(TankProductCode(c.dec(2, "tank number TT"), c.char("product code p")))
    return {"tanks": tuple(tanks)}


def _p_version(c: _Cursor) -> dict[str, Any]:
    return {"text": c.s}


# --------------------------------------------------------------------------------------------
# Data-section encoding
# --------------------------------------------------------------------------------------------


def _e_int(value: Any, width: int, what: str, base: int = 10) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < base ** width:
        raise ValueError(f"{what} must be an int 0..{base ** width - 1}, got {value!r}")
    return f"{value:0{width}d}" if base == 10 else f"{value:0{width}X}"


def _e_char(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 1 or not " " <= value <= "~":
        raise ValueError(f"{what} must be one printable ASCII character, got {value!r}")
    return value


def _e_stamp(value: datetime | None) -> str:
    return "?" * 10 if value is None else _stamp_text(value)


def _e_text(value: Any, what: str, width: int | None = None) -> str:
    if not isinstance(value, str) or not _printable(value):
        raise ValueError(f"{what} must be printable ASCII, got {value!r}")
    if width is not None:
        if len(value) > width:
            raise ValueError(f"{what} is longer than {width} characters: {value!r}")
        value = value.ljust(width)
    return value


def _e_values(obj: Any, names: tuple[str, ...], extra_attr: str) -> str:
    n = obj.nfields
    _e_int(n, 2, "nfields", 16)
    named = [getattr(obj, name) for name in names]
    extra = tuple(getattr(obj, extra_attr))
    if n > len(names) or extra:
        if n != len(names) + len(extra):
            raise ValueError(f"nfields={n} but {len(names)} named fields + {len(extra)} in {extra_attr}")
        values = named + list(extra)
    else:
        late = [name for name, v in zip(names[n:], named[n:]) if v is not None]
        if late:
            raise ValueError(f"nfields={n} but {', '.join(late)} given")
        values = named[:n]
    return f"{n:02X}" + "".join(float_to_hex(v) for v in values)


def _e_system_status(r: SystemStatus) -> str:
    out = []
    for a in r.alarms:
        if a.category == 0:
            raise ValueError("alarm category 00 means 'all normal' and is not an alarm record")
        out.append(_e_int(a.category, 2, "category") + _e_int(a.alarm_type, 2, "alarm type")
                   + _e_int(a.device, 2, "device"))
    return "".join(out)


def _e_inventory(r: InventoryReport) -> str:
    out = []
    for t in r.tanks:
        status = "????" if t.status is None else _e_int(t.status, 4, "status", 16)
        out.append(_e_int(t.tank, 2, "tank") + _e_char(t.product, "product") + status
                   + _e_values(t, INVENTORY_FIELDS, "extra"))
    return "".join(out)


def _e_deliveries(r: DeliveryReport) -> str:
    out = []
    for t in r.tanks:
        out.append(_e_int(t.tank, 2, "tank") + _e_char(t.product, "product")
                   + _e_int(len(t.deliveries), 2, "delivery count"))
        for d in t.deliveries:
            out.append(_e_stamp(d.start) + _e_stamp(d.end) + _e_values(d, DELIVERY_FIELDS, "extra"))
    return "".join(out)


def _e_tank_status(r: TankStatusReport) -> str:
    out = []
    for t in r.tanks:
        out.append(_e_int(t.tank, 2, "tank") + _e_int(len(t.alarms), 2, "alarm count", 16))
        out.extend(_e_int(a, 2, "alarm type") for a in t.alarms)
    return "".join(out)


def _e_leak_test(r: LeakTestReport) -> str:
    return "".join(
        _e_int(t.tank, 2, "tank") + _e_char(t.product, "product") + _e_stamp(t.start)
        + _e_int(t.duration_hours, 2, "duration_hours") + _e_values(t, LEAK_TEST_FIELDS, "hourly_changes")
        for t in r.tanks)


def _e_leak_history(r: LeakTestHistory) -> str:
    out = []
    for t in r.tanks:
        out.append(_e_int(t.tank, 2, "tank") + _e_int(len(t.entries), 2, "record count", 16))
        for e in t.entries:
            out.append(_e_int(e.report_type, 2, "report_type") + _e_int(e.month, 2, "month")
                       + _e_int(e.test_type, 2, "test_type") + _e_stamp(e.start)
                       + float_to_hex(e.duration_hours) + float_to_hex(e.volume)
                       + float_to_hex(e.percent_volume))
    return "".join(out)


def _e_leak_results(r: LeakTestResults) -> str:
    out = []
    for t in r.tanks:
        out.append(_e_int(t.tank, 2, "tank") + _e_int(len(t.results), 2, "record count", 16))
        for e in t.results:
            out.append(_e_int(e.test_type, 2, "test_type") + _e_int(e.manifolded, 2, "manifolded")
                       + _e_stamp(e.start) + _e_int(e.result, 2, "result") + float_to_hex(e.leak_rate)
                       + float_to_hex(e.duration_hours) + float_to_hex(e.volume))
    return "".join(out)


def _e_csld(r: CsldReport) -> str:
    return "".join(_e_int(t.tank, 2, "tank") + _e_int(t.result, 2, "result") for t in r.tanks)


def _e_clock(r: ClockReport | ClockSetReply) -> str:
    return _e_stamp(r.clock)


def _e_units(r: SystemUnits) -> str:
    return f"{UnitSystem(r.units).value}" + _e_text(r.extra, "extra")


def _e_labels(r: TankLabels) -> str:
    return "".join(_e_int(t.tank, 2, "tank") + _e_text(t.label, "label", 20) for t in r.tanks)


def _e_product_codes(r: ProductCodes) -> str:
    return "".join(_e_int(t.tank, 2, "tank") + _e_char(t.product, "product") for t in r.tanks)


def _e_version(r: VersionReport) -> str:
    return _e_text(r.text, "text")


def _e_raw(r: RawResponse) -> str:
    return _e_text(r.data, "data")


# report code (upper case, format letter included) -> (class, data parser, data encoder)
_REPORTS: dict[str, tuple[type, Any, Any]] = {
    "I101": (SystemStatus, _p_system_status, _e_system_status),
    "I201": (InventoryReport, _p_inventory, _e_inventory),
    "I20I": (InventoryReport, _p_inventory, _e_inventory),
    "I21A": (InventoryReport, _p_inventory, _e_inventory),
    "I202": (DeliveryReport, _p_deliveries, _e_deliveries),
    "I20C": (DeliveryReport, _p_deliveries, _e_deliveries),
    "I203": (LeakTestReport, _p_leak_test, _e_leak_test),
    "I205": (TankStatusReport, _p_tank_status, _e_tank_status),
    "I207": (LeakTestHistory, _p_leak_history, _e_leak_history),
    "I208": (LeakTestResults, _p_leak_results, _e_leak_results),
    "I251": (CsldReport, _p_csld, _e_csld),
    "I501": (ClockReport, _p_clock, _e_clock),
    "S501": (ClockSetReply, _p_clock, _e_clock),
    "I505": (SystemUnits, _p_units, _e_units),
    "I517": (SystemUnits, _p_units, _e_units),
    "I602": (TankLabels, _p_labels, _e_labels),
    "I603": (ProductCodes, _p_product_codes, _e_product_codes),
    "I901": (VersionReport, _p_version, _e_version),
    "I902": (VersionReport, _p_version, _e_version),
    "I905": (VersionReport, _p_version, _e_version),
}
#: Report codes (lower-case computer format) that parse_response turns into typed dataclasses.
SUPPORTED_REPORTS = tuple(code[0].lower() + code[1:] for code in _REPORTS)


# --------------------------------------------------------------------------------------------
# Public parse / encode
# --------------------------------------------------------------------------------------------


def parse_response(frame: bytes, *, expect: str | None = None, verify_checksum: bool = True,
                   terminator: bytes = ETX) -> Response:
    """Parse one response frame into its dataclass.

    ``9999`` refusals give ``ErrorResponse``; reports not in ``SUPPORTED_REPORTS`` give
    ``RawResponse``. ``expect``: the 6-char function code sent; a different echo is an error.
    Raises only ``VRFrameError``.
    """
    raw = _as_bytes(frame)
    refusal = _error_frame_check(_strip_terminator(raw, terminator)[0])
    if refusal is not None:
        variant, ok = refusal
        if verify_checksum and not ok:
            raise VRFrameError("9999 error frame with a wrong checksum")
        return ErrorResponse(variant, ok)
    env = parse_envelope(raw, verify_checksum=verify_checksum, terminator=terminator)
    if expect is not None and env.function != expect:
        raise VRFrameError(f"echo {env.function!r} does not answer the request {expect!r}")
    return _interpret(env)


def _interpret(env: Envelope) -> Response:
    entry = _REPORTS.get(env.report.upper())
    if entry is None:
        return RawResponse(env.function, env.console_time, env.data)
    cls, parser, _encoder = entry
    try:
        values = parser(_Cursor(env.data, env.function))
    except VRFrameError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError, struct.error) as exc:  # defensive
        raise VRFrameError(f"{env.function}: malformed data ({exc})") from None
    return cls(env.function, env.console_time, **values)


def frame_response(function: str, console_time: datetime, data: str, *, terminator: bytes = ETX) -> bytes:
    """``SOH + function + YYMMDDHHmm + data + && + checksum + terminator`` for any report."""
    if not isinstance(function, str) or not _FUNCTION_RE.fullmatch(function):
        raise ValueError(f"function must be a 6-char code like 'i20100', got {function!r}")
    body = SOH + (function + _stamp_text(console_time) + _e_text(data, "data") + "&&").encode("ascii")
    return body + checksum_hex(body).encode("ascii") + bytes(terminator)


def encode_response(response: Response, *, terminator: bytes = ETX) -> bytes:
    """The wire frame for a response dataclass: ``parse_response(encode_response(r)) == r``.

    Raises ``ValueError`` when a value cannot be sent (out of range, non-printable, wrong report).
    """
    if isinstance(response, ErrorResponse):
        if response.variant == "emulator":
            return ERROR_FRAME_EMULATOR[:-1] + bytes(terminator)
        if response.variant == "manual":
            return ERROR_FRAME[:-1] + bytes(terminator)
        raise ValueError(f"unknown error frame variant {response.variant!r}")
    if not is_dataclass(response) or not isinstance(response, _Report):
        raise ValueError(f"not a VR response dataclass: {response!r}")
    if not isinstance(response.function, str) or not _FUNCTION_RE.fullmatch(response.function):
        raise ValueError(f"function must be a 6-char code like 'i20100', got {response.function!r}")
    if isinstance(response, RawResponse):
        data = _e_raw(response)
    else:
        entry = _REPORTS.get(response.report.upper())
        if entry is None or not isinstance(response, entry[0]):
            raise ValueError(f"{type(response).__name__} cannot be sent as {response.function!r}")
        data = entry[2](response)
    return frame_response(response.function, response.console_time, data, terminator=terminator)


# --------------------------------------------------------------------------------------------
# JSON and capture decoding (technician CLI: collector decode --protocol vr)
# --------------------------------------------------------------------------------------------

_JSON_PROPERTIES: dict[type, tuple[str, ...]] = {
    TankInventory: ("delivery_in_progress", "leak_test_in_progress", "invalid_fuel_height"),
    Delivery: ("delivered_volume", "delivered_tc_volume"),
    ClockSetReply: ("accepted",),
    LeakTestResult: ("passed",),
    VersionReport: ("software_number", "created"),
}


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts, datetimes to ``YYYY-MM-DDTHH:MM``, enums to ints, NaN/inf to None."""
    if isinstance(obj, datetime):
        return obj.strftime("%Y-%m-%dT%H:%M")
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
        for name in _JSON_PROPERTIES.get(type(obj), ()):
            out[name] = to_jsonable(getattr(obj, name))
        return out
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return _show(obj)
    return obj


def _show(raw: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def decode_capture(data: bytes, *, terminator: bytes = ETX, strip_parity: bool = False) -> list[dict]:
    """Decode a captured byte stream (requests and responses, any number of frames) into JSON-able dicts.

    Each dict has ``kind``: ``"request"``, ``"response"``, ``"error_frame"`` (the 9999 refusal) or
    ``"framing_error"``, and ``raw`` (printable, other bytes as ``\\xNN``). Responses carry
    ``function``, ``report``, ``device``, ``console_time``, ``checksum``, ``checksum_computed``,
    ``checksum_valid``, ``terminated``, ``type`` (the dataclass name), ``fields`` (numbers, None for
    no data) or ``error`` when the data does not parse, ``units`` once an i505/i517 reply has been
    seen, and ``answers_request`` when a request precedes it. Never raises on content.
    """
    framer = VRFramer(terminator=terminator, strip_parity=strip_parity)
    events = framer.feed(_as_bytes(data)) + framer.flush()
    out: list[dict] = []
    units: UnitSystem | None = None
    last_request: Request | None = None
    for ev in events:
        if isinstance(ev, FramingError):
            out.append({"kind": "framing_error", "reason": ev.reason, "raw": _show(ev.raw)})
            continue
        if ev.kind == "request":
            out.append(_request_dict(ev))
            try:
                last_request = parse_request(ev.raw)
            except VRFrameError:  # pragma: no cover - the framer only emits parseable requests
                last_request = None
            continue
        if ev.kind == "error":
            refusal = _error_frame_check(_strip_terminator(ev.raw, terminator)[0])
            variant, ok = refusal if refusal else ("unknown", False)
            item: dict[str, Any] = {
                "kind": "error_frame", "variant": variant, "checksum_valid": ok,
                "terminated": ev.terminated,
                "meaning": "function code not recognised or not supported by this console",
                "raw": _show(ev.raw)}
            if last_request is not None:
                item["answers_request"] = last_request.function
            last_request = None
            out.append(item)
            continue
        item = {"kind": "response", "raw": _show(ev.raw), "terminated": ev.terminated}
        try:
            env = parse_envelope(ev.raw, verify_checksum=False, terminator=terminator)
        except VRFrameError as exc:
            item["error"] = str(exc)
            out.append(item)
            last_request = None
            continue
        item.update({
            "function": env.function, "report": env.report, "device": env.device,
            "console_time": to_jsonable(env.console_time),
            "checksum": f"{env.checksum:04X}", "checksum_computed": f"{env.checksum_computed:04X}",
            "checksum_valid": env.checksum_ok,
        })
        if last_request is not None:
            item["answers_request"] = last_request.function == env.function
            last_request = None
        try:
            parsed = _interpret(env)
        except VRFrameError as exc:
            item["error"] = str(exc)
        else:
            item["type"] = type(parsed).__name__
            body = to_jsonable(parsed)
            body.pop("function", None)
            body.pop("console_time", None)
            item["fields"] = body
            if isinstance(parsed, SystemUnits) and env.checksum_ok:
                units = parsed.units
        if units is not None:
            item["units"] = {"system": units.name, "volume": units.volume_unit,
                             "height": units.height_unit, "temperature": units.temperature_unit}
        out.append(item)
    return out


def _request_dict(ev: Frame) -> dict[str, Any]:
    item: dict[str, Any] = {"kind": "request", "raw": _show(ev.raw)}
    try:
        req = parse_request(ev.raw)
    except VRFrameError as exc:  # pragma: no cover - the framer only emits parseable requests
        item["error"] = str(exc)
        return item
    item.update({"function": req.function, "report": req.report, "device": req.device,
                 "data": req.data, "security_code": req.security_code, "cr": req.cr})
    if req.report.upper() == "S501" and len(req.data) == 10:
        try:
            item["clock"] = to_jsonable(_parse_stamp(req.data, "clock"))
        except VRFrameError as exc:
            item["error"] = str(exc)
    return item
