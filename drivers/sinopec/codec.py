"""Sinopec IC-card dispenser <-> station PC protocol ("中石化POS协议"): the pure codec.

Owns the FA frame (header, BCD length, CRC-16/ARC, FA stuffing, resync on a lone FA), the stream
framer, and every message 30H..3FH in both directions as dataclasses with integer fields in raw
units (scaling is the poller's job). No I/O, no clocks: pollers, the dispenser simulator and the
technician's ``collector decode`` all import this module; none of them keeps a copy of it.

Frame (reference §5.3.1)::

    FA | B1 | B2 | B3 | LEN_H LEN_L (BCD, 4 digits) | DATA (LEN bytes, DATA[0] = command) | CRC_H CRC_L

* PC -> dispenser: B1 = dispenser address, B2 = PC address, B3 = frame number / control.
  Dispenser -> PC: B1 = PC address, B2 = dispenser address, B3 echoed.
* CRC-16/ARC (``drivers.checksum.crc16_arc``, init 0) over B1..end of DATA before stuffing, sent
  high byte first.
* From the first DATA byte through the CRC every 0xFA is doubled. Header bytes are never stuffed,
  so an 0xFA can never be B1..LEN; a receiver that sees one restarts there.
* A lone 0xFA (0xFA followed by anything but 0xFA) is always the start of a new frame.

Directions: ``"pc"`` = PC -> dispenser, ``"disp"`` = dispenser -> PC. The same command byte is used
both ways for 32H, 33H..36H, 38H and 3AH, so decoding those needs the direction. The aliases
``controller``/``ctrl`` (= pc) and ``pump``/``dispenser`` (= disp) and ``auto`` (= None) are
accepted so one CLI vocabulary serves every protocol.

Choices where the reference is silent or unclear (see the module-level notes by each message):

* 32H acknowledgement from the PC: ``32 | result (1) | TTC (4, big-endian)``. The dispenser
  firmware (PM30210403 ``PosMessage_ReadPOSTrade``) reads only the first byte after the command:
  0 = accepted, anything else = rejected (it logs a T-MAC error and sends the record again). The
  TTC after it names the record being acknowledged so a simulator (and a log reader) can check the
  acknowledgement matches the upload; that firmware ignores it. A 1-byte acknowledgement (result
  only, as another PC may send) decodes with ``ttc=None``.
* Dates and times (30H, 32H, 3AH) are packed BCD and are kept as the decimal integers they spell
  (``20240115``, ``143005``, ``20240115143005``); ``.datetime`` properties convert when valid.
* Identifiers (card ASN, PSAM ASN/TID, TAC, GMAC, reserved bytes) stay ``bytes``.
* 3AH superior-unit and station-ID are read as big-endian integers (the firmware copies stored
  bytes); the 7 list-version bytes follow the firmware's CheckListVersion layout.
* The longest DATA accepted or produced is 240 bytes (the firmware's receiver limit).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, fields
from typing import ClassVar

from drivers.checksum import crc16_arc
from drivers.numbers import BCDError, bcd_to_int, int_to_bcd

SOF = 0xFA
MAX_DATA_LEN = 240
PC = "pc"
DISP = "disp"
AMBIGUOUS = "ambiguous"

_DIRECTION_ALIASES = {
    "pc": PC, "controller": PC, "ctrl": PC, "master": PC,
    "disp": DISP, "dispenser": DISP, "pump": DISP,
}

# command byte -> (name PC->dispenser, name dispenser->PC); None = never sent that way
COMMANDS: dict[int, tuple[str | None, str | None]] = {
    0x30: ("general query", None),
    0x31: (None, "real-time information"),
    0x32: ("transaction acknowledgement", "transaction upload"),
    0x33: ("download data length", "download request"),
    0x34: ("download data segment", "download segment request"),
    0x35: ("grey-card query result", "grey-card unlock request"),
    0x36: ("black/white list result", "black/white list query"),
    0x38: ("totals request", "totals reply"),
    0x3A: ("information request", "information reply"),
    0x3B: (None, "dispenser internal error"),
    0x3C: ("error acknowledgement", None),
    0x3E: ("read record by TTC", None),
    0x3F: (None, "no such record"),
}

# 32H transaction type, low nibble (firmware CRVaribles.h); high nibble holds flags
TRANSACTION_TYPES = {
    0x0: "normal card", 0x1: "grey record", 0x2: "card error, transaction valid", 0x3: "grey unlock",
    0x4: "clear grey flag", 0x5: "logon", 0x6: "logoff", 0x7: "non-card (cash)",
    0x8: "price received", 0x9: "limited card", 0xA: "reserved", 0xB: "online abnormal",
    0xC: "non-card self-service", 0xD: "host authorised", 0xE: "authorisation cancelled",
    0xF: "over-fuelling",
}
TRANSACTION_FLAGS = {0x80: "card error", 0x40: "local list", 0x20: "offline", 0x10: "card TAC read"}

RT_CARD = 0x01  # 31H nozzle record: card inserted
RT_FUELLING = 0x02  # 31H nozzle record: fuelling


class SinopecCodecError(ValueError):
    """Bytes or values that do not follow the Sinopec card-dispenser protocol."""


def normalize_direction(direction: str | None) -> str | None:
    """``"pc"``, ``"disp"`` or None (infer). Raises SinopecCodecError on anything else."""
    if direction is None or direction == "auto":
        return None
    norm = _DIRECTION_ALIASES.get(str(direction).lower())
    if norm is None:
        raise SinopecCodecError(f"direction must be 'pc', 'disp' or None, not {direction!r}")
    return norm


def infer_direction(command: int) -> str | None:
    """The only direction a command byte can travel, or None when both (or neither) are possible."""
    names = COMMANDS.get(command)
    if names is None:
        return None
    to_disp, to_pc = names
    if to_disp and not to_pc:
        return PC
    if to_pc and not to_disp:
        return DISP
    return None


def command_name(command: int, direction: str | None = None) -> str:
    names = COMMANDS.get(command)
    if names is None:
        return f"unknown {command:02X}H"
    direction = normalize_direction(direction)
    if direction == PC:
        return names[0] or f"{command:02X}H (not sent PC->dispenser)"
    if direction == DISP:
        return names[1] or f"{command:02X}H (not sent dispenser->PC)"
    return " / ".join(n for n in names if n)


# ---------------------------------------------------------------- small helpers


def _int_bytes(value: int, size: int, name: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * size):
        raise SinopecCodecError(f"{name}={value!r} does not fit in {size} byte(s)")
    return value.to_bytes(size, "big")


def _fixed_bytes(value: bytes, size: int, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise SinopecCodecError(f"{name} must be {size} bytes, got {value!r}")
    return bytes(value)


def _bcd_bytes(value: int, size: int, name: str) -> bytes:
    try:
        return int_to_bcd(value, size)
    except (ValueError, TypeError) as err:
        raise SinopecCodecError(f"{name}={value!r} does not fit in {size} BCD bytes") from err


def _bcd_value(data: bytes, name: str) -> int:
    try:
        return bcd_to_int(data)
    except BCDError as err:
        raise SinopecCodecError(f"{name} is not BCD: {data.hex(' ').upper()}") from err


def _as_bytes(value) -> bytes:
    """bytes(value) for bytes-like input only (``bytes(5)`` would silently make five zeros)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise SinopecCodecError(f"expected bytes, got {type(value).__name__}")


def _to_datetime(value: int, digits: int) -> _dt.datetime | None:
    text = f"{value:0{digits}d}"
    try:
        if digits == 14:
            return _dt.datetime.strptime(text, "%Y%m%d%H%M%S")
        return _dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None


def datetime_to_bcd_int(moment: _dt.datetime) -> int:
    """``datetime(2024, 1, 15, 14, 30, 5)`` -> ``20240115143005`` (the 7-byte BCD time fields)."""
    return int(moment.strftime("%Y%m%d%H%M%S"))


class _Reader:
    """Cursor over a payload; every shortfall becomes a SinopecCodecError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, size: int, name: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise SinopecCodecError(
                f"{self.what}: {name} needs {size} byte(s) at offset {self.pos}, payload has {len(self.data)}"
            )
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def uint(self, size: int, name: str) -> int:
        return int.from_bytes(self.take(size, name), "big")

    def bcd(self, size: int, name: str) -> int:
        return _bcd_value(self.take(size, name), f"{self.what}: {name}")

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SinopecCodecError(
                f"{self.what}: {len(self.data) - self.pos} unexpected trailing byte(s) "
                f"{self.data[self.pos:].hex(' ').upper()}"
            )


# ---------------------------------------------------------------- frame layer


@dataclass(frozen=True)
class Frame:
    """One frame, unstuffed. ``data[0]`` is the command. ``raw``/``offset`` are set by the framer."""

    b1: int
    b2: int
    b3: int
    data: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)
    offset: int = field(default=-1, compare=False, repr=False)

    @property
    def command(self) -> int:
        return self.data[0] if self.data else -1

    @property
    def payload(self) -> bytes:
        return self.data[1:]

    @property
    def crc(self) -> int:
        return frame_crc(self.b1, self.b2, self.b3, self.data)

    def encode(self) -> bytes:
        return encode_frame(self.b1, self.b2, self.b3, self.data)

    def addresses(self, direction: str) -> tuple[int, int]:
        """(dispenser address, PC address) given who sent the frame."""
        direction = normalize_direction(direction)
        if direction is None:
            raise SinopecCodecError("addresses need a direction")
        return (self.b1, self.b2) if direction == PC else (self.b2, self.b1)


@dataclass(frozen=True)
class FramingError:
    """Bytes the framer could not accept, and why. Returned by the framer as an event, never raised.

    ``frame`` is filled when a complete frame arrived with a wrong CRC (``received_crc`` then holds
    the CRC on the wire, ``frame.crc`` the one computed).
    """

    reason: str
    raw: bytes
    offset: int = -1
    frame: Frame | None = None
    received_crc: int | None = None


def frame_crc(b1: int, b2: int, b3: int, data: bytes) -> int:
    return crc16_arc(bytes((b1, b2, b3)) + _bcd_bytes(len(data), 2, "LEN") + _as_bytes(data))


def _stuff(data: bytes) -> bytes:
    return data.replace(b"\xfa", b"\xfa\xfa")


def encode_frame(b1: int, b2: int, b3: int, data: bytes) -> bytes:
    """Wire bytes of a frame: header, BCD length, stuffed DATA and CRC (high byte first)."""
    for name, value in (("B1", b1), ("B2", b2), ("B3", b3)):
        _int_bytes(value, 1, name)
        if value == SOF:
            raise SinopecCodecError(f"{name}=0xFA cannot be sent: header bytes are never stuffed")
    data = _as_bytes(data)
    if not 1 <= len(data) <= MAX_DATA_LEN:
        raise SinopecCodecError(f"DATA must be 1..{MAX_DATA_LEN} bytes (command included), got {len(data)}")
    header = bytes((b1, b2, b3)) + _bcd_bytes(len(data), 2, "LEN")
    crc = crc16_arc(header + data)
    return bytes((SOF,)) + header + _stuff(data + crc.to_bytes(2, "big"))


_HUNT, _HEADER, _BODY = 0, 1, 2


class SinopecFramer:
    """Splits a byte stream into frames. Accepts any chunking, noise and glued frames; never raises.

    ``feed(chunk)`` returns the frames and FramingError events completed by that chunk, in stream
    order. ``flush()`` reports a trailing partial frame or noise (end of a capture) and resets.
    Bytes between frames are reported as noise in runs of at most ``max_noise`` bytes.
    """

    def __init__(self, max_data_len: int = MAX_DATA_LEN, max_noise: int = 256) -> None:
        self.max_data_len = max_data_len
        self.max_noise = max_noise
        self._pos = 0  # stream offset of the next byte fed
        self._noise = bytearray()
        self._noise_at = 0
        self._start_hunt()

    def _start_hunt(self) -> None:
        self._state = _HUNT
        self._raw = bytearray()
        self._header = bytearray()
        self._body = bytearray()
        self._need = 0
        self._fa_pending = False
        self._start = -1

    def _start_frame(self, at: int) -> None:
        self._state = _HEADER
        self._raw = bytearray((SOF,))
        self._header = bytearray()
        self._body = bytearray()
        self._fa_pending = False
        self._start = at

    def _flush_noise(self, out: list) -> None:
        if self._noise:
            out.append(FramingError("noise outside a frame", bytes(self._noise), self._noise_at))
            self._noise = bytearray()

    def feed(self, chunk: bytes) -> list[Frame | FramingError]:
        out: list[Frame | FramingError] = []
        try:
            data = _as_bytes(chunk)
        except SinopecCodecError as err:
            return [FramingError(str(err), b"", self._pos)]
        for byte in data:
            self._byte(byte, out)
            self._pos += 1
        return out

    def flush(self) -> list[Frame | FramingError]:
        out: list[Frame | FramingError] = []
        self._flush_noise(out)
        if self._state != _HUNT:
            out.append(FramingError("incomplete frame at end of data", bytes(self._raw), self._start))
        self._start_hunt()
        return out

    def reset(self) -> None:
        self._noise = bytearray()
        self._start_hunt()

    def _byte(self, byte: int, out: list) -> None:
        pos = self._pos
        if self._state == _HUNT:
            if byte == SOF:
                self._flush_noise(out)
                self._start_frame(pos)
            else:
                if not self._noise:
                    self._noise_at = pos
                self._noise.append(byte)
                if len(self._noise) >= self.max_noise:
                    self._flush_noise(out)
            return

        if self._state == _HEADER:
            if byte == SOF:
                out.append(FramingError("0xFA inside the header: frame restarted", bytes(self._raw), self._start))
                self._start_frame(pos)
                return
            self._raw.append(byte)
            self._header.append(byte)
            if len(self._header) == 5:
                length_field = bytes(self._header[3:5])
                try:
                    length = bcd_to_int(length_field)
                except BCDError:
                    length = -1
                if not 1 <= length <= self.max_data_len:
                    out.append(FramingError(
                        f"bad LEN field {length_field.hex(' ').upper()}", bytes(self._raw), self._start))
                    self._start_hunt()
                    return
                self._need = length + 2
                self._state = _BODY
            return

        # _BODY: unstuff DATA + CRC
        self._raw.append(byte)
        if self._fa_pending:
            self._fa_pending = False
            if byte != SOF:
                # a lone FA: the frame in progress was cut short; that FA opened a new frame
                out.append(FramingError("frame cut short by a lone 0xFA", bytes(self._raw[:-2]), self._start))
                self._start_frame(pos - 1)
                self._raw.append(byte)
                self._header.append(byte)
                return
            self._body.append(SOF)
        elif byte == SOF:
            self._fa_pending = True
            return
        else:
            self._body.append(byte)
        if len(self._body) == self._need:
            self._complete(out)

    def _complete(self, out: list) -> None:
        b1, b2, b3 = self._header[0], self._header[1], self._header[2]
        data = bytes(self._body[:-2])
        received = (self._body[-2] << 8) | self._body[-1]
        frame = Frame(b1, b2, b3, data, raw=bytes(self._raw), offset=self._start)
        computed = crc16_arc(bytes(self._header) + data)
        if computed == received:
            out.append(frame)
        else:
            out.append(FramingError(
                f"CRC mismatch: received {received:04X}, computed {computed:04X}",
                bytes(self._raw), self._start, frame=frame, received_crc=received))
        self._start_hunt()


def decode_frame(raw: bytes) -> Frame:
    """Exactly one complete, CRC-valid frame; anything else raises SinopecCodecError."""
    raw = _as_bytes(raw)
    framer = SinopecFramer()
    events = framer.feed(raw) + framer.flush()
    frames = [e for e in events if isinstance(e, Frame)]
    errors = [e for e in events if isinstance(e, FramingError)]
    if errors:
        raise SinopecCodecError(errors[0].reason)
    if len(frames) != 1:
        raise SinopecCodecError(f"expected one frame, found {len(frames)}")
    return frames[0]


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class ListVersions:
    """The 7 list/price-table version bytes of 30H and 3AH (firmware CheckListVersion order)."""

    base_blacklist: int = 0  # 2 bytes
    add_blacklist: int = 0
    del_blacklist: int = 0
    whitelist: int = 0
    price_table: int = 0
    station_info: int = 0

    SIZE: ClassVar[int] = 7

    def encode(self) -> bytes:
        return (_int_bytes(self.base_blacklist, 2, "base_blacklist")
                + _int_bytes(self.add_blacklist, 1, "add_blacklist")
                + _int_bytes(self.del_blacklist, 1, "del_blacklist")
                + _int_bytes(self.whitelist, 1, "whitelist")
                + _int_bytes(self.price_table, 1, "price_table")
                + _int_bytes(self.station_info, 1, "station_info"))

    @classmethod
    def decode(cls, data: bytes) -> ListVersions:
        if len(data) != cls.SIZE:
            raise SinopecCodecError(f"list versions must be 7 bytes, got {len(data)}")
        return cls(int.from_bytes(data[0:2], "big"), data[2], data[3], data[4], data[5], data[6])


class _Message:
    COMMAND: ClassVar[int]
    DIRECTION: ClassVar[str]

    def encode_payload(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode_data(self) -> bytes:
        """DATA of the frame: command byte + payload."""
        return bytes((self.COMMAND,)) + self.encode_payload()

    @property
    def direction(self) -> str:
        return self.DIRECTION


@dataclass(frozen=True)
class GeneralQuery(_Message):
    """30H PC -> dispenser: poll. Current time (7 BCD, YYYYMMDDhhmmss) + list versions."""

    time: int
    versions: ListVersions = field(default_factory=ListVersions)

    COMMAND: ClassVar[int] = 0x30
    DIRECTION: ClassVar[str] = PC

    @classmethod
    def at(cls, moment: _dt.datetime, versions: ListVersions | None = None) -> GeneralQuery:
        return cls(datetime_to_bcd_int(moment), versions or ListVersions())

    @property
    def datetime(self) -> _dt.datetime | None:
        return _to_datetime(self.time, 14)

    def encode_payload(self) -> bytes:
        return _bcd_bytes(self.time, 7, "time") + self.versions.encode()

    @classmethod
    def decode_payload(cls, payload: bytes) -> GeneralQuery:
        r = _Reader(payload, "30H")
        time = r.bcd(7, "time")
        versions = ListVersions.decode(r.take(7, "versions"))
        r.done()
        return cls(time, versions)


@dataclass(frozen=True)
class CardInserted:
    """31H nozzle record, state 01: a card is in the reader (19 bytes when info length is 16)."""

    nozzle: int
    asn: bytes  # card application serial number, 10 bytes
    card_status: int  # 2 bytes
    balance: int  # 4 bytes
    extra: bytes = b""  # card information beyond the 16 standard bytes (info length > 16)

    STATE: ClassVar[int] = RT_CARD

    def encode(self) -> bytes:
        info = (_fixed_bytes(self.asn, 10, "asn") + _int_bytes(self.card_status, 2, "card_status")
                + _int_bytes(self.balance, 4, "balance") + _as_bytes(self.extra))
        return bytes((RT_CARD,)) + _int_bytes(self.nozzle, 1, "nozzle") + _int_bytes(len(info), 1, "info length") + info


@dataclass(frozen=True)
class Fuelling:
    """31H nozzle record, state 02: fuelling in progress (11 bytes)."""

    nozzle: int
    unit: int  # settlement unit (0 = yuan, 1 = points; high nibble = payment mode)
    amount: int  # 3 bytes
    volume: int  # 3 bytes
    price: int  # 2 bytes

    STATE: ClassVar[int] = RT_FUELLING

    def encode(self) -> bytes:
        return (bytes((RT_FUELLING,)) + _int_bytes(self.nozzle, 1, "nozzle") + _int_bytes(self.unit, 1, "unit")
                + _int_bytes(self.amount, 3, "amount") + _int_bytes(self.volume, 3, "volume")
                + _int_bytes(self.price, 2, "price"))


@dataclass(frozen=True)
class RealTimeInfo(_Message):
    """31H dispenser -> PC, the reply to every 30H: count, then one record per nozzle.

    ``nozzles == ()`` is idle (payload ``00``). Records are CardInserted or Fuelling.
    """

    nozzles: tuple[CardInserted | Fuelling, ...] = ()

    COMMAND: ClassVar[int] = 0x31
    DIRECTION: ClassVar[str] = DISP

    @property
    def idle(self) -> bool:
        return not self.nozzles

    def encode_payload(self) -> bytes:
        return _int_bytes(len(self.nozzles), 1, "count") + b"".join(n.encode() for n in self.nozzles)

    @classmethod
    def decode_payload(cls, payload: bytes) -> RealTimeInfo:
        r = _Reader(payload, "31H")
        count = r.uint(1, "count")
        records: list[CardInserted | Fuelling] = []
        for i in range(count):
            state = r.uint(1, f"record {i} state")
            nozzle = r.uint(1, f"record {i} nozzle")
            if state == RT_CARD:
                info_len = r.uint(1, f"record {i} info length")
                if info_len < 16:
                    raise SinopecCodecError(f"31H: card info length {info_len} < 16")
                asn = r.take(10, "asn")
                status = r.uint(2, "card status")
                balance = r.uint(4, "balance")
                extra = r.take(info_len - 16, "card info")
                records.append(CardInserted(nozzle, asn, status, balance, extra))
            elif state == RT_FUELLING:
                unit = r.uint(1, "unit")
                amount = r.uint(3, "amount")
                volume = r.uint(3, "volume")
                price = r.uint(2, "price")
                records.append(Fuelling(nozzle, unit, amount, volume, price))
            else:
                raise SinopecCodecError(f"31H: unknown nozzle state {state:02X}")
        r.done()
        return cls(tuple(records))


# (field name, size, kind) of the 95-byte record; kind: "u" big-endian int, "bcd", "b" raw bytes
_RECORD_LAYOUT: tuple[tuple[str, int, str], ...] = (
    ("ttc", 4, "u"),
    ("trans_type", 1, "u"),
    ("date", 4, "bcd"),
    ("time", 3, "bcd"),
    ("card_asn", 10, "b"),
    ("card_balance", 4, "u"),
    ("amount", 3, "u"),
    ("card_ctc", 2, "u"),
    ("card_tac", 4, "b"),
    ("psam_gmac", 4, "b"),
    ("psam_tac", 4, "b"),
    ("psam_asn", 10, "b"),
    ("psam_tid", 6, "b"),
    ("psam_ttc", 4, "u"),
    ("debit_source", 1, "u"),
    ("settlement_unit", 1, "u"),
    ("card_type", 1, "u"),
    ("key_version", 1, "u"),
    ("nozzle", 1, "u"),
    ("grade_code", 2, "u"),
    ("volume", 3, "u"),
    ("price", 2, "u"),
    ("employee", 1, "u"),
    ("volume_total", 4, "u"),
    ("reserved", 11, "b"),
    ("trans_tac", 4, "b"),
)
RECORD_SIZE = sum(size for _, size, _ in _RECORD_LAYOUT)
assert RECORD_SIZE == 95


@dataclass(frozen=True)
class TransactionRecord(_Message):
    """32H dispenser -> PC: the 95-byte Sinopec transaction record (upload, or reply to 3EH).

    Numbers are big-endian binary in raw units (probably fen, 0.01 L and fen/L [U]); ``date`` is
    CCYYMMDD and ``time`` hhmmss as the decimal value of their BCD bytes. ``key_version`` holds the
    card key index (bits 7-4) and key version (bits 3-0). ``volume_total`` is the nozzle's volume
    totalizer (泵码) after this sale.
    """

    ttc: int
    trans_type: int
    date: int
    time: int
    card_asn: bytes
    card_balance: int
    amount: int
    card_ctc: int
    card_tac: bytes
    psam_gmac: bytes
    psam_tac: bytes
    psam_asn: bytes
    psam_tid: bytes
    psam_ttc: int
    debit_source: int
    settlement_unit: int
    card_type: int
    key_version: int
    nozzle: int
    grade_code: int
    volume: int
    price: int
    employee: int
    volume_total: int
    reserved: bytes = bytes(11)
    trans_tac: bytes = bytes(4)

    COMMAND: ClassVar[int] = 0x32
    DIRECTION: ClassVar[str] = DISP

    @property
    def datetime(self) -> _dt.datetime | None:
        return _to_datetime(self.date * 1_000_000 + self.time, 14) if self.time < 1_000_000 else None

    @property
    def type_name(self) -> str:
        return trans_type_name(self.trans_type)

    def encode_payload(self) -> bytes:
        out = bytearray()
        for name, size, kind in _RECORD_LAYOUT:
            value = getattr(self, name)
            if kind == "u":
                out += _int_bytes(value, size, name)
            elif kind == "bcd":
                out += _bcd_bytes(value, size, name)
            else:
                out += _fixed_bytes(value, size, name)
        return bytes(out)

    @classmethod
    def decode_payload(cls, payload: bytes) -> TransactionRecord:
        if len(payload) != RECORD_SIZE:
            raise SinopecCodecError(f"32H record must be {RECORD_SIZE} bytes, got {len(payload)}")
        r = _Reader(payload, "32H record")
        values = {}
        for name, size, kind in _RECORD_LAYOUT:
            if kind == "u":
                values[name] = r.uint(size, name)
            elif kind == "bcd":
                values[name] = r.bcd(size, name)
            else:
                values[name] = r.take(size, name)
        return cls(**values)


def trans_type_name(value: int) -> str:
    name = TRANSACTION_TYPES.get(value & 0x0F, "unknown")
    flags = [text for bit, text in TRANSACTION_FLAGS.items() if value & bit]
    return name + (f" ({', '.join(flags)})" if flags else "")


@dataclass(frozen=True)
class TransactionAck(_Message):
    """32H PC -> dispenser: acknowledgement of an uploaded record.

    Payload ``result (1) | TTC (4)``; result 0 = accepted. See the module notes for why.
    ``ttc=None`` encodes (and decodes) the 1-byte form.
    """

    ttc: int | None
    result: int = 0

    COMMAND: ClassVar[int] = 0x32
    DIRECTION: ClassVar[str] = PC

    @property
    def accepted(self) -> bool:
        return self.result == 0

    def encode_payload(self) -> bytes:
        out = _int_bytes(self.result, 1, "result")
        if self.ttc is not None:
            out += _int_bytes(self.ttc, 4, "ttc")
        return out

    @classmethod
    def decode_payload(cls, payload: bytes) -> TransactionAck:
        if len(payload) == 1:
            return cls(None, payload[0])
        if len(payload) == 5:
            return cls(int.from_bytes(payload[1:5], "big"), payload[0])
        raise SinopecCodecError(f"32H acknowledgement must be 1 or 5 bytes, got {len(payload)}")


@dataclass(frozen=True)
class TotalsRequest(_Message):
    """38H PC -> dispenser: read the nozzle volume totalizers. No payload."""

    COMMAND: ClassVar[int] = 0x38
    DIRECTION: ClassVar[str] = PC

    def encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_payload(cls, payload: bytes) -> TotalsRequest:
        _Reader(payload, "38H request").done()
        return cls()


@dataclass(frozen=True)
class NozzleTotal:
    nozzle: int
    volume_total: int  # 4 bytes


@dataclass(frozen=True)
class TotalsReply(_Message):
    """38H dispenser -> PC: count, then per nozzle: logical nozzle (1) + volume total (4)."""

    totals: tuple[NozzleTotal, ...] = ()

    COMMAND: ClassVar[int] = 0x38
    DIRECTION: ClassVar[str] = DISP

    def encode_payload(self) -> bytes:
        out = bytearray(_int_bytes(len(self.totals), 1, "count"))
        for t in self.totals:
            out += _int_bytes(t.nozzle, 1, "nozzle") + _int_bytes(t.volume_total, 4, "volume_total")
        return bytes(out)

    @classmethod
    def decode_payload(cls, payload: bytes) -> TotalsReply:
        r = _Reader(payload, "38H reply")
        count = r.uint(1, "count")
        totals = tuple(NozzleTotal(r.uint(1, "nozzle"), r.uint(4, "volume total")) for _ in range(count))
        r.done()
        return cls(totals)


@dataclass(frozen=True)
class InfoRequest(_Message):
    """3AH PC -> dispenser: read dispenser information. No payload."""

    COMMAND: ClassVar[int] = 0x3A
    DIRECTION: ClassVar[str] = PC

    def encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_payload(cls, payload: bytes) -> InfoRequest:
        _Reader(payload, "3AH request").done()
        return cls()


@dataclass(frozen=True)
class InfoReply(_Message):
    """3AH dispenser -> PC (layout from the firmware's PosMessage_AskInfo [S]).

    name 12 bytes (space padded; decoded as GBK, a superset of ASCII) | province 1 | city 1 |
    superior unit 4 | station ID 4 | time 7 BCD | nozzle count 1 | logical nozzles | list
    versions 7 | vendor-defined bytes (none in that firmware).
    """

    name: str
    province: int
    city: int
    superior_unit: int
    station_id: int
    time: int
    nozzles: tuple[int, ...] = ()
    versions: ListVersions = field(default_factory=ListVersions)
    vendor: bytes = b""

    COMMAND: ClassVar[int] = 0x3A
    DIRECTION: ClassVar[str] = DISP

    @property
    def datetime(self) -> _dt.datetime | None:
        return _to_datetime(self.time, 14)

    def encode_payload(self) -> bytes:
        try:
            name = self.name.encode("gbk")
        except (UnicodeEncodeError, AttributeError) as err:
            raise SinopecCodecError(f"name {self.name!r} is not GBK text") from err
        if len(name) > 12:
            raise SinopecCodecError(f"name {self.name!r} is longer than 12 bytes")
        return (name.ljust(12, b" ") + _int_bytes(self.province, 1, "province") + _int_bytes(self.city, 1, "city")
                + _int_bytes(self.superior_unit, 4, "superior_unit") + _int_bytes(self.station_id, 4, "station_id")
                + _bcd_bytes(self.time, 7, "time") + _int_bytes(len(self.nozzles), 1, "nozzle count")
                + b"".join(_int_bytes(n, 1, "nozzle") for n in self.nozzles) + self.versions.encode()
                + _as_bytes(self.vendor))

    @classmethod
    def decode_payload(cls, payload: bytes) -> InfoReply:
        r = _Reader(payload, "3AH reply")
        name = r.take(12, "name").decode("gbk", errors="replace").rstrip(" \x00")
        province = r.uint(1, "province")
        city = r.uint(1, "city")
        superior = r.uint(4, "superior unit")
        station = r.uint(4, "station id")
        time = r.bcd(7, "time")
        count = r.uint(1, "nozzle count")
        nozzles = tuple(r.take(count, "nozzles"))
        versions = ListVersions.decode(r.take(7, "versions"))
        return cls(name, province, city, superior, station, time, nozzles, versions, r.rest())


@dataclass(frozen=True)
class DispenserError(_Message):
    """3BH dispenser -> PC: internal error report. Layout not public; kept raw."""

    data: bytes = b""

    COMMAND: ClassVar[int] = 0x3B
    DIRECTION: ClassVar[str] = DISP

    def encode_payload(self) -> bytes:
        return _as_bytes(self.data)

    @classmethod
    def decode_payload(cls, payload: bytes) -> DispenserError:
        return cls(bytes(payload))


@dataclass(frozen=True)
class ErrorAck(_Message):
    """3CH PC -> dispenser: acknowledgement of a 3BH. Layout not public; kept raw (usually empty)."""

    data: bytes = b""

    COMMAND: ClassVar[int] = 0x3C
    DIRECTION: ClassVar[str] = PC

    def encode_payload(self) -> bytes:
        return _as_bytes(self.data)

    @classmethod
    def decode_payload(cls, payload: bytes) -> ErrorAck:
        return cls(bytes(payload))


@dataclass(frozen=True)
class ReadRecordRequest(_Message):
    """3EH PC -> dispenser: send the record with this TTC (answer: 32H record or 3FH)."""

    ttc: int

    COMMAND: ClassVar[int] = 0x3E
    DIRECTION: ClassVar[str] = PC

    def encode_payload(self) -> bytes:
        return _int_bytes(self.ttc, 4, "ttc")

    @classmethod
    def decode_payload(cls, payload: bytes) -> ReadRecordRequest:
        r = _Reader(payload, "3EH")
        ttc = r.uint(4, "ttc")
        r.done()
        return cls(ttc)


@dataclass(frozen=True)
class NoSuchRecord(_Message):
    """3FH dispenser -> PC: no record with this TTC."""

    ttc: int

    COMMAND: ClassVar[int] = 0x3F
    DIRECTION: ClassVar[str] = DISP

    def encode_payload(self) -> bytes:
        return _int_bytes(self.ttc, 4, "ttc")

    @classmethod
    def decode_payload(cls, payload: bytes) -> NoSuchRecord:
        r = _Reader(payload, "3FH")
        ttc = r.uint(4, "ttc")
        r.done()
        return cls(ttc)


@dataclass(frozen=True)
class RawMessage:
    """A command this codec does not parse (33H..36H list/card management, unknown codes)."""

    command: int
    payload: bytes
    direction: str

    def encode_data(self) -> bytes:
        return _int_bytes(self.command, 1, "command") + _as_bytes(self.payload)


Message = (GeneralQuery | RealTimeInfo | TransactionRecord | TransactionAck | TotalsRequest | TotalsReply
           | InfoRequest | InfoReply | DispenserError | ErrorAck | ReadRecordRequest | NoSuchRecord | RawMessage)

_MESSAGE_CLASSES = (GeneralQuery, RealTimeInfo, TransactionRecord, TransactionAck, TotalsRequest, TotalsReply,
                    InfoRequest, InfoReply, DispenserError, ErrorAck, ReadRecordRequest, NoSuchRecord)
_DECODERS = {(cls.COMMAND, cls.DIRECTION): cls for cls in _MESSAGE_CLASSES}


def decode_message(frame_or_data: Frame | bytes, direction: str | None = None) -> Message:
    """Parse a frame's DATA (command + payload) into its message dataclass.

    ``direction`` is required for commands used both ways (32H, 33H..36H, 38H, 3AH); for the
    others it is inferred, and a contradicting direction is an error.
    """
    data = _as_bytes(frame_or_data.data if isinstance(frame_or_data, Frame) else frame_or_data)
    if not data:
        raise SinopecCodecError("empty DATA: no command byte")
    direction = normalize_direction(direction)
    command, payload = data[0], data[1:]
    only = infer_direction(command)
    if direction is None:
        if only is None:
            raise SinopecCodecError(f"{command:02X}H is sent both ways: the direction is needed")
        direction = only
    elif only is not None and only != direction:
        raise SinopecCodecError(f"{command:02X}H is never sent {'PC->dispenser' if direction == PC else 'dispenser->PC'}")
    cls = _DECODERS.get((command, direction))
    if cls is None:
        return RawMessage(command, payload, direction)
    return cls.decode_payload(payload)


def encode_message(message: Message, *, dispenser: int, pc: int = 0, frame_no: int = 0) -> bytes:
    """Wire bytes of a message, with B1/B2 ordered by the message's direction."""
    try:
        direction = normalize_direction(message.direction)
        data = message.encode_data()
    except AttributeError as err:
        raise SinopecCodecError(f"not a Sinopec message: {message!r}") from err
    if direction is None:
        raise SinopecCodecError("a message to encode needs a direction")
    if direction == PC:
        return encode_frame(dispenser, pc, frame_no, data)
    return encode_frame(pc, dispenser, frame_no, data)


# ---------------------------------------------------------------- technician view


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex(" ").upper()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)
                if f.name not in ("raw", "offset")}
    return value


def message_to_dict(message: Message) -> dict:
    """A JSON-able view of a message: ``type`` plus its fields; bytes as spaced upper-case hex."""
    out = {"type": type(message).__name__}
    out.update(_jsonable(message))
    if isinstance(message, TransactionRecord):
        out["trans_type_name"] = message.type_name
        out["grade_code_hex"] = f"{message.grade_code:04X}"
    elif isinstance(message, RealTimeInfo):
        out["nozzles"] = [{"type": type(n).__name__, **_jsonable(n)} for n in message.nozzles]
        out["state"] = ("idle" if message.idle else
                        "fuelling" if any(isinstance(n, Fuelling) for n in message.nozzles) else "card inserted")
    elif isinstance(message, RawMessage):
        out["command"] = f"{message.command:02X}H"
    return out


def _parse_view(frame: Frame, direction: str) -> dict:
    try:
        return message_to_dict(decode_message(frame, direction))
    except SinopecCodecError as err:
        return {"error": str(err)}


def _frame_view(frame: Frame, direction: str | None) -> dict:
    command = frame.command
    item: dict = {
        "b1": frame.b1, "b2": frame.b2, "b3": frame.b3, "length": len(frame.data),
        "command": f"{command:02X}H", "crc": f"{frame.crc:04X}",
    }
    only = infer_direction(command)
    if direction is None:
        direction = only
    if direction is None:
        item["direction"] = AMBIGUOUS
        item["command_name"] = command_name(command)
        item["candidates"] = {PC: _parse_view(frame, PC), DISP: _parse_view(frame, DISP)}
        fitting = [d for d, view in item["candidates"].items() if "error" not in view]
        if len(fitting) == 1:
            item["likely"] = fitting[0]  # only one direction parses; still a guess from the bytes
        return item
    item["direction"] = direction
    item["command_name"] = command_name(command, direction)
    dispenser, pc = frame.addresses(direction)
    item["dispenser"] = dispenser
    item["pc"] = pc
    parsed = _parse_view(frame, direction)
    if "error" in parsed:
        item["error"] = parsed["error"]
        item["message"] = None
    else:
        item["message"] = parsed
    return item


def decode_capture(data: bytes, direction: str | None = None) -> list[dict]:
    """Every frame and framing error in a capture, as JSON-able dicts, in stream order.

    Each item has ``kind`` ("frame" or "error"), ``offset``, ``raw`` (hex), ``crc_valid`` and
    ``valid`` (CRC good and a message parsed, in at least one direction when ambiguous).
    Frames add header fields, ``command``/``command_name``, ``direction`` ("pc", "disp" or
    "ambiguous") and ``message`` (or ``candidates`` for both directions when ambiguous, plus
    ``likely`` when only one of them parses). A frame
    with a wrong CRC is still shown, with ``crc_received`` and ``crc_valid: false``. Never raises
    on data; raises SinopecCodecError only for an invalid ``direction`` argument.
    """
    direction = normalize_direction(direction)
    framer = SinopecFramer()
    events = framer.feed(data) + framer.flush()
    items: list[dict] = []
    for event in events:
        if isinstance(event, Frame):
            item = {"kind": "frame", "offset": event.offset, "raw": _jsonable(event.raw), "crc_valid": True}
            item.update(_frame_view(event, direction))
        elif event.frame is not None:
            item = {"kind": "frame", "offset": event.offset, "raw": _jsonable(event.raw), "crc_valid": False,
                    "crc_received": f"{event.received_crc:04X}", "error": event.reason}
            view = _frame_view(event.frame, direction)
            view.pop("error", None)
            item.update(view)
        else:
            item = {"kind": "error", "offset": event.offset, "raw": _jsonable(event.raw), "crc_valid": False,
                    "error": event.reason}
        parsed = "message" in item or any("error" not in v for v in item.get("candidates", {}).values())
        item["valid"] = bool(item["crc_valid"] and "error" not in item and parsed)
        items.append(item)
    return items
