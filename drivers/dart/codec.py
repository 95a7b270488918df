"""DART line and application codec: bytes on the RS-485 wire <-> frames <-> transactions.

Pure: no I/O, no clocks. Used by the poller, the pump simulator and ``collector decode``.

Line layer (level 2): ``ADR CTRL SF`` control frames and ``ADR CTRL DATA.. CRC-1 CRC-2 ETX SF``
data frames; CRC-16/ARC over ADR..last data byte, sent low byte first; a 0xFA inside data or CRC
is sent as ``10 FA``. Application layer (level 3): ``TRANS LNG DATA`` transactions, packed BCD.
TRANS numbers are shared between directions (CD1/DC1...), so decoding a transaction needs to know
who sent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.checksum import crc16_arc
from drivers.numbers import BCDError, bcd_to_int, int_to_bcd

ETX = 0x03
DLE = 0x10
SF = 0xFA

KIND_BY_CTRL_HIGH = {0x2: "poll", 0x3: "data", 0x4: "iap", 0x5: "nak", 0x7: "eot", 0xC: "ack", 0xE: "ackpoll"}
CTRL_HIGH_BY_KIND = {kind: high for high, kind in KIND_BY_CTRL_HIGH.items()}
MIN_ADDRESS, MAX_ADDRESS = 0x50, 0x6F
MAX_FRAME = 300  # longest body we accept before declaring the stream garbage


class DartError(ValueError):
    """A frame or transaction that does not follow DART."""


class CrcError(DartError):
    def __init__(self, message: str, address: int, tx: int) -> None:
        super().__init__(message)
        self.address = address
        self.tx = tx


@dataclass(frozen=True)
class Frame:
    address: int
    kind: str  # poll, data, ack, nak, eot, ackpoll, iap
    tx: int = 0  # TX# (low nibble of CTRL); 0 for poll
    data: bytes = b""  # application data of a data frame (unescaped, without CRC)

    def encode(self) -> bytes:
        return encode_frame(self)


@dataclass(frozen=True)
class BadFrame:
    """Bytes the framer could not accept, with the reason. Never raised by the framer: returned."""

    raw: bytes
    reason: str
    address: int | None = None  # known when the frame was well formed but its CRC was wrong
    kind: str | None = None
    tx: int | None = None


# ---------------------------------------------------------------- line layer


def _escape(body: bytes) -> bytes:
    return body.replace(b"\xfa", b"\x10\xfa")


def encode_frame(frame: Frame) -> bytes:
    if not 0 <= frame.address <= 0xFF:
        raise DartError(f"address {frame.address} out of range")
    if not 0 <= frame.tx <= 0x0F:
        raise DartError(f"TX# {frame.tx} out of range")
    high = CTRL_HIGH_BY_KIND.get(frame.kind)
    if high is None:
        raise DartError(f"unknown frame kind {frame.kind!r}")
    ctrl = (high << 4) | (0 if frame.kind == "poll" else frame.tx)
    if frame.kind != "data":
        return bytes((frame.address, ctrl, SF))
    covered = bytes((frame.address, ctrl)) + frame.data
    crc = crc16_arc(covered)
    return _escape(covered + bytes((crc & 0xFF, crc >> 8))) + bytes((ETX, SF))


def poll(address: int) -> bytes:
    return encode_frame(Frame(address, "poll"))


def ack(address: int, tx: int) -> bytes:
    return encode_frame(Frame(address, "ack", tx))


def nak(address: int, tx: int) -> bytes:
    return encode_frame(Frame(address, "nak", tx))


def eot(address: int, tx: int) -> bytes:
    return encode_frame(Frame(address, "eot", tx))


def data_frame(address: int, tx: int, data: bytes) -> bytes:
    return encode_frame(Frame(address, "data", tx, data))


def decode_body(body: bytes) -> Frame:
    """One frame's bytes without the trailing SF, still escaped. Raises DartError."""
    if len(body) < 2:
        raise DartError(f"frame too short: {body.hex(' ')}")
    address, ctrl = body[0], body[1]
    kind = KIND_BY_CTRL_HIGH.get(ctrl >> 4)
    if kind is None:
        raise DartError(f"unknown control byte 0x{ctrl:02X}")
    if kind != "data":
        if len(body) != 2:
            raise DartError(f"{kind} frame with {len(body) - 2} extra bytes")
        return Frame(address, kind, 0 if kind == "poll" else ctrl & 0x0F)
    if body[-1] != ETX:
        raise DartError("data frame without ETX")
    raw = body[:-1].replace(b"\x10\xfa", b"\xfa")
    if len(raw) < 4:
        raise DartError("data frame too short for its CRC")
    covered, crc_bytes = raw[:-2], raw[-2:]
    expected = crc16_arc(covered)
    received = crc_bytes[0] | (crc_bytes[1] << 8)
    if expected != received:
        raise CrcError(f"CRC mismatch: frame says {received:04X}, computed {expected:04X}", address, ctrl & 0x0F)
    return Frame(address, kind, ctrl & 0x0F, bytes(covered[2:]))


class Framer:
    """Cuts a byte stream into frames at each unescaped SF. Bounded; never raises on garbage."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Frame | BadFrame]:
        self._buf += chunk
        out: list[Frame | BadFrame] = []
        start = 0
        buf = self._buf
        i = 0
        while i < len(buf):
            if buf[i] == SF and not (i > start and buf[i - 1] == DLE):
                body = bytes(buf[start:i])
                try:
                    out.append(decode_body(body))
                except CrcError as exc:
                    out.append(BadFrame(body + b"\xfa", str(exc), exc.address, "data", exc.tx))
                except DartError as exc:
                    out.append(BadFrame(body + b"\xfa", str(exc)))
                start = i + 1
            elif i - start >= MAX_FRAME:
                out.append(BadFrame(bytes(buf[start:i]), f"no frame end within {MAX_FRAME} bytes"))
                start = i
            i += 1
        del buf[:start]
        return out

    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()


def decode_frames(data: bytes) -> list[Frame | BadFrame]:
    """All frames in a complete capture; a trailing fragment comes back as a BadFrame."""
    framer = Framer()
    out = framer.feed(data)
    if framer.pending():
        out.append(BadFrame(bytes(framer._buf), "incomplete frame at end of capture"))
    return out


# ---------------------------------------------------------------- application layer


@dataclass(frozen=True)
class Transaction:
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        if len(self.data) > 255:
            raise DartError("transaction longer than 255 bytes")
        return bytes((self.code, len(self.data))) + self.data


def split_transactions(data: bytes) -> list[Transaction]:
    out = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise DartError(f"truncated transaction header at byte {i}")
        code, length = data[i], data[i + 1]
        if i + 2 + length > len(data):
            raise DartError(f"transaction 0x{code:02X} says {length} bytes, only {len(data) - i - 2} left")
        out.append(Transaction(code, bytes(data[i + 2 : i + 2 + length])))
        i += 2 + length
    return out


def join_transactions(transactions: list[Transaction]) -> bytes:
    return b"".join(t.encode() for t in transactions)


# Pump status codes (DC1)
PUMP_NOT_PROGRAMMED, RESET, AUTHORIZED, FILLING, FILLING_COMPLETED, MAX_REACHED, SWITCHED_OFF, SUSPENDED = (
    0, 1, 2, 4, 5, 6, 7, 8,
)
STATUS_NAMES = {
    0: "not_programmed", 1: "reset", 2: "authorized", 4: "filling", 5: "filling_completed",
    6: "max_reached", 7: "switched_off", 8: "suspended",
}
# CD1 command codes (DCC). The collector only ever sends the read ones.
DCC_RETURN_STATUS, DCC_RETURN_PARAMETERS, DCC_RETURN_IDENTITY, DCC_RETURN_FILLING_INFO = 0x00, 0x02, 0x03, 0x04
DCC_NAMES = {
    0x00: "return_status", 0x02: "return_parameters", 0x03: "return_identity",
    0x04: "return_filling_information", 0x05: "reset", 0x06: "authorize", 0x08: "stop",
    0x0A: "switch_off", 0x0D: "suspend", 0x0E: "resume", 0x0F: "return_prices",
}
READ_ONLY_DCC = frozenset({DCC_RETURN_STATUS, DCC_RETURN_PARAMETERS, DCC_RETURN_IDENTITY, DCC_RETURN_FILLING_INFO, 0x0F})
ALARM_NAMES = {
    0x01: "cpu_reset", 0x03: "ram_error", 0x04: "prom_checksum", 0x06: "pulser_error", 0x07: "pulser_current",
    0x09: "emergency_stop", 0x0A: "power_failure", 0x0B: "pressure_lost", 0x0C: "blend_ratio",
    0x0D: "low_leak", 0x0E: "high_leak", 0x0F: "hose_leak",
}
AMOUNT_COUNTER_OFFSET = 0x10  # CD101 COUN 0x11-0x18: the amount-total family of nozzle 1-8 [S]
PUMP_TOTAL_COUNTER = 0x09


# Pump -> controller messages


@dataclass(frozen=True)
class PumpStatus:  # DC1
    status: int
    code = 0x01

    def encode(self) -> Transaction:
        return Transaction(self.code, bytes((self.status,)))


@dataclass(frozen=True)
class FillingInfo:  # DC2
    volume: int
    amount: int
    code = 0x02

    def encode(self) -> Transaction:
        return Transaction(self.code, int_to_bcd(self.volume, 4) + int_to_bcd(self.amount, 4))


@dataclass(frozen=True)
class NozzleStatus:  # DC3
    price: int
    nozzle: int  # selected logical nozzle, 0 = none
    nozzle_out: bool
    code = 0x03

    def encode(self) -> Transaction:
        nozio = (self.nozzle & 0x0F) | (0x10 if self.nozzle_out else 0)
        return Transaction(self.code, int_to_bcd(self.price, 3) + bytes((nozio,)))


@dataclass(frozen=True)
class PumpAlarm:  # DC5
    alarm: int
    code = 0x05

    def encode(self) -> Transaction:
        return Transaction(self.code, bytes((self.alarm,)))


@dataclass(frozen=True)
class PumpIdentity:  # DC9
    identity: int  # 10 digits
    code = 0x09

    def encode(self) -> Transaction:
        return Transaction(self.code, int_to_bcd(self.identity, 5))


@dataclass(frozen=True)
class TotalCounters:  # DC101
    counter: int
    total: int
    meter1: int
    meter2: int
    code = 0x65

    def encode(self) -> Transaction:
        return Transaction(
            self.code,
            bytes((self.counter,)) + int_to_bcd(self.total, 5) + int_to_bcd(self.meter1, 5) + int_to_bcd(self.meter2, 5),
        )


@dataclass(frozen=True)
class PumpPrices:  # DC103
    prices: tuple[int, ...]
    code = 0x67

    def encode(self) -> Transaction:
        return Transaction(self.code, b"".join(int_to_bcd(p, 3) for p in self.prices))


# Controller -> pump messages


@dataclass(frozen=True)
class Command:  # CD1
    dcc: int
    code = 0x01

    def encode(self) -> Transaction:
        return Transaction(self.code, bytes((self.dcc,)))


@dataclass(frozen=True)
class AllowedNozzles:  # CD2
    nozzles: tuple[int, ...]
    code = 0x02

    def encode(self) -> Transaction:
        return Transaction(self.code, bytes(self.nozzles))


@dataclass(frozen=True)
class PresetVolume:  # CD3
    volume: int
    code = 0x03

    def encode(self) -> Transaction:
        return Transaction(self.code, int_to_bcd(self.volume, 4))


@dataclass(frozen=True)
class PresetAmount:  # CD4
    amount: int
    code = 0x04

    def encode(self) -> Transaction:
        return Transaction(self.code, int_to_bcd(self.amount, 4))


@dataclass(frozen=True)
class PriceUpdate:  # CD5
    prices: tuple[int, ...]
    code = 0x05

    def encode(self) -> Transaction:
        return Transaction(self.code, b"".join(int_to_bcd(p, 3) for p in self.prices))


@dataclass(frozen=True)
class RequestTotals:  # CD101
    counter: int
    code = 0x65

    def encode(self) -> Transaction:
        return Transaction(self.code, bytes((self.counter,)))


@dataclass(frozen=True)
class Unknown:
    code: int
    data: bytes = field(default=b"")

    def encode(self) -> Transaction:
        return Transaction(self.code, self.data)


def _need(t: Transaction, length: int, name: str) -> None:
    if len(t.data) != length:
        raise DartError(f"{name} needs {length} data bytes, got {len(t.data)}")


def _bcd(data: bytes, name: str) -> int:
    try:
        return bcd_to_int(data)
    except BCDError as exc:
        raise DartError(f"{name}: {exc}") from None


def _triples(t: Transaction, name: str) -> tuple[int, ...]:
    if len(t.data) % 3:
        raise DartError(f"{name} length {len(t.data)} is not a multiple of 3")
    return tuple(_bcd(t.data[i : i + 3], name) for i in range(0, len(t.data), 3))


def decode_from_pump(t: Transaction):
    """A pump -> controller (DC) transaction as a message object. Raises DartError."""
    c = t.code
    if c == 0x01:
        _need(t, 1, "DC1")
        if t.data[0] not in STATUS_NAMES:
            raise DartError(f"DC1 status {t.data[0]} is not a DART pump status")
        return PumpStatus(t.data[0])
    if c == 0x02:
        _need(t, 8, "DC2")
        return FillingInfo(_bcd(t.data[:4], "DC2 volume"), _bcd(t.data[4:], "DC2 amount"))
    if c == 0x03:
        _need(t, 4, "DC3")
        nozio = t.data[3]
        return NozzleStatus(_bcd(t.data[:3], "DC3 price"), nozio & 0x0F, bool(nozio & 0x10))
    if c == 0x05:
        _need(t, 1, "DC5")
        return PumpAlarm(t.data[0])
    if c == 0x09:
        _need(t, 5, "DC9")
        return PumpIdentity(_bcd(t.data, "DC9"))
    if c == 0x65:
        _need(t, 16, "DC101")
        return TotalCounters(
            t.data[0], _bcd(t.data[1:6], "DC101 total"), _bcd(t.data[6:11], "DC101 meter1"),
            _bcd(t.data[11:16], "DC101 meter2"),
        )
    if c == 0x67:
        return PumpPrices(_triples(t, "DC103"))
    return Unknown(c, t.data)


def decode_from_controller(t: Transaction):
    """A controller -> pump (CD) transaction as a message object. Raises DartError."""
    c = t.code
    if c == 0x01:
        _need(t, 1, "CD1")
        if t.data[0] not in DCC_NAMES:
            raise DartError(f"CD1 command {t.data[0]} is not a DART command code")
        return Command(t.data[0])
    if c == 0x02:
        if not t.data or any(not 1 <= n <= 15 for n in t.data):
            raise DartError("CD2 nozzle numbers must be 1-15")
        return AllowedNozzles(tuple(t.data))
    if c == 0x03:
        _need(t, 4, "CD3")
        return PresetVolume(_bcd(t.data, "CD3"))
    if c == 0x04:
        _need(t, 4, "CD4")
        return PresetAmount(_bcd(t.data, "CD4"))
    if c == 0x05:
        return PriceUpdate(_triples(t, "CD5"))
    if c == 0x65:
        _need(t, 1, "CD101")
        return RequestTotals(t.data[0])
    return Unknown(c, t.data)


def build(messages) -> bytes:
    """Message objects -> the data field of one DATA frame."""
    return join_transactions([m.encode() for m in messages])


# ---------------------------------------------------------------- capture decoding (technician CLI)

_NAMES_FROM_PUMP = {0x01: "DC1", 0x02: "DC2", 0x03: "DC3", 0x05: "DC5", 0x09: "DC9", 0x65: "DC101", 0x67: "DC103"}
_NAMES_FROM_CONTROLLER = {0x01: "CD1", 0x02: "CD2", 0x03: "CD3", 0x04: "CD4", 0x05: "CD5", 0x65: "CD101"}


def _message_json(msg, name: str) -> dict:
    out: dict = {"trans": name}
    if isinstance(msg, Unknown):
        out["trans"] = f"0x{msg.code:02X}"
        out["data"] = msg.data.hex()
        return out
    for key, value in msg.__dict__.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    if isinstance(msg, PumpStatus):
        out["status_name"] = STATUS_NAMES.get(msg.status, "unknown")
    elif isinstance(msg, Command):
        out["command_name"] = DCC_NAMES.get(msg.dcc, "unknown")
    elif isinstance(msg, PumpAlarm):
        out["alarm_name"] = ALARM_NAMES.get(msg.alarm, "unknown")
    return out


def _interpret(transactions: list[Transaction], from_pump: bool) -> list[dict] | None:
    names = _NAMES_FROM_PUMP if from_pump else _NAMES_FROM_CONTROLLER
    decode = decode_from_pump if from_pump else decode_from_controller
    out = []
    for t in transactions:
        try:
            msg = decode(t)
        except DartError:
            return None
        out.append(_message_json(msg, names.get(t.code, "")))
    return out


def decode_capture(data: bytes, direction: str = "auto") -> list[dict]:
    """Frames of a capture as JSON-able dicts. ``direction``: pump, controller or auto.

    With ``auto`` each data frame is read both ways; the ways its transactions fit are given
    (``from_pump`` / ``from_controller``), and ``direction`` says which, or ``ambiguous``.
    """
    if direction not in ("auto", "pump", "controller"):
        raise ValueError("direction must be auto, pump or controller")
    out: list[dict] = []
    for frame in decode_frames(data):
        if isinstance(frame, BadFrame):
            bad = {"valid": False, "crc_ok": False if frame.address is not None else None,
                   "error": frame.reason, "raw": frame.raw.hex(" ")}
            if frame.address is not None:
                bad.update(address=frame.address, kind=frame.kind, tx=frame.tx)
            out.append(bad)
            continue
        item: dict = {"valid": True, "crc_ok": True if frame.kind == "data" else None,
                      "address": frame.address, "kind": frame.kind, "tx": frame.tx}
        if frame.kind == "data":
            try:
                transactions = split_transactions(frame.data)
            except DartError as exc:
                item["error"] = str(exc)
                item["data"] = frame.data.hex(" ")
                out.append(item)
                continue
            ways = {}
            if direction in ("auto", "pump"):
                ways["from_pump"] = _interpret(transactions, True)
            if direction in ("auto", "controller"):
                ways["from_controller"] = _interpret(transactions, False)
            fitting = [k for k, v in ways.items() if v is not None]
            if len(fitting) == 1:
                item["direction"] = "pump" if fitting[0] == "from_pump" else "controller"
                item["transactions"] = ways[fitting[0]]
            elif not fitting:
                item["direction"] = "unknown"
                item["error"] = "transactions fit neither direction"
                item["transactions"] = [{"trans": f"0x{t.code:02X}", "data": t.data.hex()} for t in transactions]
            else:
                item["direction"] = "ambiguous"
                item.update({k: v for k, v in ways.items()})
        out.append(item)
    return out
