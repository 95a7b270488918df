"""Gilbarco two-wire (current-loop) protocol: the pure codec.

Owns the command byte ``CCCC PPPP``, the status reply ``SSSS PPPP``, data words (``0xE0|digit``)
and control words (``0xF0|x``), the nibble LRC and the data-length word, every block both ways
(transaction, totals, real-time money, special function 010 and its ASCII reply, price change,
preset), echo suppression, and the capture decoder. No I/O, no clocks: pollers, the pump
simulator and the technician's ``collector decode`` import this module and keep no copy of it.

Conventions (reference §2):

* Pump numbers are 1..16 everywhere in this API. In a command or status byte pump 16 is low nibble
  0; in the transaction reply's pump-identifier word it is ``pump - 1`` (16 = F).
* Grades are 1-based here (``grade 1`` is sent as ``E0``).
* Numbers are sent least significant digit first, one digit per data word. Integers are raw
  (no decimal point); scaling is the poller's job.
* Blocks: ``FF [DL] body FB LRC F0``. ``LRC = 0xE0 | nibble_lrc(FF..FB)``. Controller -> pump
  blocks carry the data-length word ``DL = 0xE0 | (-(n+2) mod 16)``, n = words after DL up to and
  including FB; pump -> controller blocks do not.
* ``digits`` is the pump's display mode: 6 (PPU 4 digits, volume/money 6, totals 8) or 8 (PPU 6,
  volume/money 8, totals 12).

Directions: ``"ctrl"`` = controller -> pump, ``"pump"`` = pump -> controller. The aliases
``pc``/``controller`` and ``disp``/``dispenser`` and ``auto`` (= None, a merged capture of the loop)
are accepted so one CLI vocabulary serves every protocol.

The collector is read-only: it sends only the commands in ``READ_COMMANDS`` (plus ``2n`` with the
special-function 010 block). Authorise, stop, price-change and preset encoders exist for the
simulator and the tests.

Unclear in the reference and decided here:

* The word after FF in a transaction reply (F1 in the samples) is emitted as F1 and ignored on
  decode; fields are found by their control words (Mexican implementation), so 6- and 8-digit
  replies both parse. The pump-identifier block (F8) is kept whole in ``pump_words``.
* Totals records are decoded by position (``F6 g F9 vol FA money cw price1 cw price2``) whatever the
  control word in front of each price; the encoder writes F4 and F5 there [U].
* The special-function code digits are sent in written order ("010" reads the same both ways).
* The 2-character check of the special-function ASCII reply is kept, not verified (rule unknown).
* A halt (3n) and authorise (1n) are assumed to get no reply (lischn022 waits for none).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from drivers.checksum import nibble_lrc

CTRL = "ctrl"
PUMP = "pump"
_DIRECTION_ALIASES = {
    "ctrl": CTRL, "controller": CTRL, "pc": CTRL, "master": CTRL,
    "pump": PUMP, "disp": PUMP, "dispenser": PUMP,
}


class GilbarcoCodecError(ValueError):
    """Bytes or values that do not follow the Gilbarco two-wire protocol."""


class EchoMismatchError(GilbarcoCodecError):
    """The loop did not echo what the controller sent: a collision (or a short read)."""

    def __init__(self, message: str, sent: bytes, received: bytes, index: int) -> None:
        super().__init__(message)
        self.sent = sent
        self.received = received
        self.index = index  # first byte that differs (== len(received) when the echo is short)


def normalize_direction(direction: str | None) -> str | None:
    if direction is None or direction == "auto":
        return None
    norm = _DIRECTION_ALIASES.get(str(direction).lower())
    if norm is None:
        raise GilbarcoCodecError(f"direction must be 'ctrl', 'pump' or None, not {direction!r}")
    return norm


class CommandCode(IntEnum):
    STATUS = 0x0
    AUTHORIZE = 0x1
    DATA_NEXT = 0x2  # "listen": pump answers Dn, then the controller sends a block
    STOP = 0x3
    TRANSACTION = 0x4
    TOTALS = 0x5
    REALTIME_MONEY = 0x6


READ_COMMANDS = frozenset({CommandCode.STATUS, CommandCode.TRANSACTION, CommandCode.TOTALS,
                           CommandCode.REALTIME_MONEY})

COMMAND_NAMES = {
    CommandCode.STATUS: "status request",
    CommandCode.AUTHORIZE: "authorise",
    CommandCode.DATA_NEXT: "data to follow",
    CommandCode.STOP: "stop",
    CommandCode.TRANSACTION: "transaction request",
    CommandCode.TOTALS: "totals request",
    CommandCode.REALTIME_MONEY: "real-time money request",
}


class PumpState(IntEnum):
    DATA_ERROR = 0x0
    OFF = 0x6  # idle
    CALL = 0x7  # nozzle lifted, not authorised
    AUTHORIZED = 0x8
    BUSY = 0x9  # delivering
    PEOT = 0xA  # end of transaction, preset reached
    FEOT = 0xB  # end of transaction
    STOPPED = 0xC
    SEND_DATA = 0xD  # waiting for a data block


STX = 0xFF
ETX = 0xF0
LRC_NEXT = 0xFB
CW_PRESET_VOLUME = 0xF1
CW_PRESET_MONEY = 0xF2
CW_LEVEL_1 = 0xF4
CW_LEVEL_2 = 0xF5
CW_GRADE = 0xF6
CW_PPU = 0xF7
CW_PRESET = 0xF8  # preset value (controller -> pump); pump identifier (transaction reply)
CW_VOLUME = 0xF9
CW_MONEY = 0xFA
CW_SPECIAL = 0xFE

CONTROL_WORDS = {
    STX: "start", ETX: "end", LRC_NEXT: "LRC next", CW_PRESET_VOLUME: "preset volume / F1",
    CW_PRESET_MONEY: "preset money", CW_LEVEL_1: "price level 1", CW_LEVEL_2: "price level 2",
    CW_GRADE: "grade", CW_PPU: "unit price", CW_PRESET: "preset value / pump id", CW_VOLUME: "volume",
    CW_MONEY: "money", CW_SPECIAL: "special function",
}

# digits mode -> (PPU digits, volume/money digits, totals digits, totals price digits)
MODES = {6: (4, 6, 8, 4), 8: (6, 8, 12, 6)}
MAX_BLOCK = 1024  # longest block accepted (totals for 16 grades in 8-digit mode = 676 words)
SPECIAL_REPLY_LEN = 19


# ---------------------------------------------------------------- words and numbers


def _as_bytes(value) -> bytes:
    """bytes(value) for bytes-like input only (``bytes(5)`` would silently make five zeros)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise GilbarcoCodecError(f"expected bytes, got {type(value).__name__}")


def pump_nibble(pump: int) -> int:
    """Low nibble of a command/status byte for pump 1..16 (16 -> 0)."""
    if not isinstance(pump, int) or isinstance(pump, bool) or not 1 <= pump <= 16:
        raise GilbarcoCodecError(f"pump {pump!r} out of range 1..16")
    return pump & 0x0F


def pump_from_nibble(nibble: int) -> int:
    return 16 if nibble == 0 else nibble


def _check_int(value: int, low: int, high: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise GilbarcoCodecError(f"{name}={value!r} out of range {low}..{high}")
    return value


def digit_words(value: int, count: int, name: str = "value") -> bytes:
    """``count`` data words for ``value``, least significant digit first."""
    _check_int(value, 0, 10**count - 1, name)
    out = bytearray()
    for _ in range(count):
        value, digit = divmod(value, 10)
        out.append(0xE0 | digit)
    return bytes(out)


def words_value(words, name: str = "value") -> int:
    """Integer from data words, least significant digit first. Nibbles above 9 are an error."""
    value = 0
    for word in reversed(list(words)):
        digit = word & 0x0F
        if word & 0xF0 != 0xE0 or digit > 9:
            raise GilbarcoCodecError(f"{name}: {word:02X} is not a decimal data word")
        value = value * 10 + digit
    return value


def data_length_word(words_after: int) -> int:
    """DL word of a controller block; ``words_after`` counts words after DL up to and including FB."""
    return 0xE0 | ((-(words_after + 2)) & 0x0F)


def lrc_word(words: bytes) -> int:
    """The LRC data word for a block from FF up to and including FB."""
    return 0xE0 | nibble_lrc(words)


def build_block(body: bytes, *, length_word: bool) -> bytes:
    """``FF [DL] body FB LRC F0``. ``body`` holds only data and control words other than FF/FB/F0."""
    body = bytes(body)
    for word in body:
        if word < 0xE0 or word in (STX, ETX, LRC_NEXT):
            raise GilbarcoCodecError(f"{word:02X} cannot appear inside a block body")
    head = bytes((STX, data_length_word(len(body) + 1))) if length_word else bytes((STX,))
    words = head + body + bytes((LRC_NEXT,))
    return words + bytes((lrc_word(words), ETX))


@dataclass(frozen=True)
class Block:
    """A checked block: ``body`` is the words between FF (and DL) and FB."""

    body: bytes
    length_word: int | None = None
    length_ok: bool = True


def parse_block(data: bytes, *, length_word: bool, check_length: bool = True) -> Block:
    """Check framing and LRC of one block. ``length_word`` for controller -> pump blocks."""
    data = _as_bytes(data)
    minimum = 5 if length_word else 4
    if len(data) < minimum:
        raise GilbarcoCodecError(f"block too short ({len(data)} words)")
    if len(data) > MAX_BLOCK:
        raise GilbarcoCodecError(f"block too long ({len(data)} words)")
    if data[0] != STX:
        raise GilbarcoCodecError(f"block must start with FF, not {data[0]:02X}")
    if data[-1] != ETX:
        raise GilbarcoCodecError(f"block must end with F0, not {data[-1]:02X}")
    if data[-3] != LRC_NEXT:
        raise GilbarcoCodecError(f"FB expected before the LRC, found {data[-3]:02X}")
    if data[-2] & 0xF0 != 0xE0:
        raise GilbarcoCodecError(f"LRC must be a data word, found {data[-2]:02X}")
    inner = data[1:-3]
    for i, word in enumerate(inner, start=1):
        if word < 0xE0 or word in (STX, ETX, LRC_NEXT):
            raise GilbarcoCodecError(f"word {i} ({word:02X}) is not allowed inside a block")
    expected = lrc_word(data[:-2])
    if data[-2] != expected:
        raise GilbarcoCodecError(f"LRC mismatch: received {data[-2]:02X}, computed {expected:02X}")
    if not length_word:
        return Block(inner)
    dl = inner[0] if inner else -1
    if dl & 0xF0 != 0xE0:
        raise GilbarcoCodecError(f"data-length word expected after FF, found {dl:02X}")
    ok = dl == data_length_word(len(inner))
    if check_length and not ok:
        raise GilbarcoCodecError(
            f"data-length word {dl:02X} wrong: {data_length_word(len(inner)):02X} expected")
    return Block(inner[1:], dl, ok)


def segments(body: bytes) -> list[tuple[int, bytes]]:
    """Split a block body into (control word, following data words)."""
    out: list[tuple[int, bytearray]] = []
    for word in body:
        if word >= 0xF0:
            out.append((word, bytearray()))
        elif not out:
            raise GilbarcoCodecError(f"data word {word:02X} before any control word")
        else:
            out[-1][1].append(word)
    return [(cw, bytes(words)) for cw, words in out]


def _first(segs: list[tuple[int, bytes]], *words: int) -> tuple[int, bytes] | None:
    for seg in segs:
        if seg[0] in words:
            return seg
    return None


def _level_word(level: int) -> int:
    if level == 1:
        return CW_LEVEL_1
    if level == 2:
        return CW_LEVEL_2
    raise GilbarcoCodecError(f"price level {level!r} must be 1 or 2")


def _grade_word(grade: int) -> int:
    return 0xE0 | (_check_int(grade, 1, 16, "grade") - 1)


def _mode(digits: int) -> tuple[int, int, int, int]:
    mode = MODES.get(digits)
    if mode is None:
        raise GilbarcoCodecError(f"digits mode must be 6 or 8, not {digits!r}")
    return mode


# ---------------------------------------------------------------- single bytes


@dataclass(frozen=True)
class Command:
    """Controller -> pump command byte ``CCCC PPPP``. ``code`` is a CommandCode (or 7..15 raw)."""

    code: int
    pump: int

    def encode(self) -> bytes:
        _check_int(self.code, 0, 15, "command code")
        return bytes(((self.code << 4) | pump_nibble(self.pump),))

    @property
    def name(self) -> str:
        try:
            return COMMAND_NAMES[CommandCode(self.code)]
        except ValueError:
            return f"unknown command {self.code:X}"

    @classmethod
    def decode(cls, data: bytes | int) -> Command:
        byte = _single(data)
        code = byte >> 4
        try:
            code = CommandCode(code)
        except ValueError:
            pass
        return cls(code, pump_from_nibble(byte & 0x0F))


def _single(data: bytes | int) -> int:
    if isinstance(data, int) and not isinstance(data, bool):
        if not 0 <= data <= 0xFF:
            raise GilbarcoCodecError(f"{data!r} is not a byte")
        return data
    data = _as_bytes(data)
    if len(data) != 1:
        raise GilbarcoCodecError(f"expected exactly one byte, got {len(data)}")
    return data[0]


def encode_command(code: int, pump: int) -> bytes:
    return Command(code, pump).encode()


def status_request(pump: int) -> bytes:
    return Command(CommandCode.STATUS, pump).encode()


def transaction_request(pump: int) -> bytes:
    return Command(CommandCode.TRANSACTION, pump).encode()


def totals_request(pump: int) -> bytes:
    return Command(CommandCode.TOTALS, pump).encode()


def realtime_money_request(pump: int) -> bytes:
    return Command(CommandCode.REALTIME_MONEY, pump).encode()


def data_next(pump: int) -> bytes:
    """``2n``: the pump answers ``Dn`` and then expects a block (special function 010 for us)."""
    return Command(CommandCode.DATA_NEXT, pump).encode()


def reply_length(code: int, *, digits: int = 6, grades: int = 1) -> int:
    """Bytes the pump sends after the echo of a command (0 = none; 2n: the Dn status only)."""
    money = _mode(digits)[1]
    lengths = {
        CommandCode.STATUS: 1, CommandCode.AUTHORIZE: 0, CommandCode.DATA_NEXT: 1, CommandCode.STOP: 0,
        CommandCode.TRANSACTION: 33 if digits == 6 else 39,
        CommandCode.TOTALS: (30 if digits == 6 else 42) * grades + 4,
        CommandCode.REALTIME_MONEY: money,
    }
    try:
        return lengths[CommandCode(code)]
    except ValueError as err:
        raise GilbarcoCodecError(f"no reply known for command code {code!r}") from err


@dataclass(frozen=True)
class StatusReply:
    """Pump -> controller status byte ``SSSS PPPP``."""

    state: PumpState
    pump: int

    def encode(self) -> bytes:
        try:
            state = PumpState(self.state)
        except ValueError as err:
            raise GilbarcoCodecError(f"unknown pump state {self.state!r}") from err
        return bytes(((state << 4) | pump_nibble(self.pump),))

    @property
    def name(self) -> str:
        try:
            return PumpState(self.state).name
        except ValueError:
            return f"unknown state {self.state!r}"

    @classmethod
    def decode(cls, data: bytes | int) -> StatusReply:
        byte = _single(data)
        try:
            state = PumpState(byte >> 4)
        except ValueError as err:
            raise GilbarcoCodecError(f"{byte:02X} is not a status byte (state {byte >> 4:X} unknown)") from err
        return cls(state, pump_from_nibble(byte & 0x0F))


def decode_status_reply(data: bytes | int) -> StatusReply:
    return StatusReply.decode(data)


@dataclass(frozen=True)
class RealTimeMoneyReply:
    """Reply to ``6n``: the money on the display, 6 or 8 data words LSD first, no framing."""

    money: int
    digits: int = 6

    def encode(self) -> bytes:
        return digit_words(self.money, _mode(self.digits)[1], "money")

    @classmethod
    def decode(cls, data: bytes) -> RealTimeMoneyReply:
        data = _as_bytes(data)
        if len(data) not in (6, 8):
            raise GilbarcoCodecError(f"real-time money reply must be 6 or 8 words, got {len(data)}")
        return cls(words_value(data, "money"), len(data))


# ---------------------------------------------------------------- pump -> controller blocks


@dataclass(frozen=True)
class TransactionReply:
    """Reply to ``4n``: 33 words (6-digit mode) or 39 (8-digit mode).

    ``pump_words`` are the nibbles after F8 (5 in the samples); word 2 is ``pump - 1`` (16 = F),
    the others are not understood [U] and default to 0.
    """

    pump: int
    grade: int
    price_level: int
    ppu: int
    volume: int
    money: int
    digits: int = 6
    pump_words: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_int(self.pump, 1, 16, "pump")
        if self.pump_words is None:
            object.__setattr__(self, "pump_words", (0, (self.pump - 1) & 0x0F, 0, 0, 0))
        try:
            words = tuple(self.pump_words)
        except TypeError as err:
            raise GilbarcoCodecError(f"pump_words {self.pump_words!r} must be a sequence of nibbles") from err
        object.__setattr__(self, "pump_words", words)
        if len(words) < 2 or any(not isinstance(w, int) or not 0 <= w <= 15 for w in words):
            raise GilbarcoCodecError(f"pump_words {words!r} must be 2+ nibbles")
        if words[1] != (self.pump - 1) & 0x0F:
            raise GilbarcoCodecError(f"pump_words[1]={words[1]:X} does not name pump {self.pump}")

    def encode(self) -> bytes:
        ppu_digits, digits, _, _ = _mode(self.digits)
        body = (bytes((CW_PRESET_VOLUME, CW_PRESET)) + bytes(0xE0 | w for w in self.pump_words)
                + bytes((CW_GRADE, _grade_word(self.grade), _level_word(self.price_level), CW_PPU))
                + digit_words(self.ppu, ppu_digits, "ppu")
                + bytes((CW_VOLUME,)) + digit_words(self.volume, digits, "volume")
                + bytes((CW_MONEY,)) + digit_words(self.money, digits, "money"))
        return build_block(body, length_word=False)

    @classmethod
    def decode(cls, data: bytes) -> TransactionReply:
        segs = segments(parse_block(data, length_word=False).body)
        pid = _first(segs, CW_PRESET)
        grade = _first(segs, CW_GRADE)
        level = _first(segs, CW_LEVEL_1, CW_LEVEL_2)
        ppu = _first(segs, CW_PPU)
        volume = _first(segs, CW_VOLUME)
        money = _first(segs, CW_MONEY)
        missing = [name for name, seg in (("F8 pump id", pid), ("F6 grade", grade), ("F4/F5 level", level),
                                          ("F7 price", ppu), ("F9 volume", volume), ("FA money", money))
                   if seg is None]
        if missing:
            raise GilbarcoCodecError(f"transaction reply lacks {', '.join(missing)}")
        if len(pid[1]) < 2:
            raise GilbarcoCodecError("transaction reply: pump identifier needs 2+ words")
        if len(grade[1]) != 1:
            raise GilbarcoCodecError(f"transaction reply: grade has {len(grade[1])} words, not 1")
        shape = (len(ppu[1]), len(volume[1]), len(money[1]))
        digits = next((d for d, m in MODES.items() if m[0] == shape[0] and m[1] == shape[1] == shape[2]), None)
        if digits is None:
            raise GilbarcoCodecError(f"transaction reply: price/volume/money digits {shape} fit neither mode")
        words = tuple(w & 0x0F for w in pid[1])
        return cls(
            pump=words[1] + 1, grade=(grade[1][0] & 0x0F) + 1,
            price_level=1 if level[0] == CW_LEVEL_1 else 2,
            ppu=words_value(ppu[1], "ppu"), volume=words_value(volume[1], "volume"),
            money=words_value(money[1], "money"), digits=digits, pump_words=words,
        )


@dataclass(frozen=True)
class GradeTotals:
    grade: int
    volume: int
    money: int
    ppu1: int = 0  # price level 1 (cash)
    ppu2: int = 0  # price level 2 (credit)


@dataclass(frozen=True)
class TotalsReply:
    """Reply to ``5n``: ``FF`` + one record per grade + ``FB LRC F0`` (30·N+4 or 42·N+4 words)."""

    grades: tuple[GradeTotals, ...] = ()
    digits: int = 6

    def encode(self) -> bytes:
        _, _, total_digits, price_digits = _mode(self.digits)
        body = bytearray()
        for g in self.grades:
            body += bytes((CW_GRADE, _grade_word(g.grade), CW_VOLUME)) + digit_words(g.volume, total_digits, "volume")
            body += bytes((CW_MONEY,)) + digit_words(g.money, total_digits, "money")
            body += bytes((CW_LEVEL_1,)) + digit_words(g.ppu1, price_digits, "ppu1")
            body += bytes((CW_LEVEL_2,)) + digit_words(g.ppu2, price_digits, "ppu2")
        return build_block(bytes(body), length_word=False)

    @classmethod
    def decode(cls, data: bytes) -> TotalsReply:
        segs = segments(parse_block(data, length_word=False).body)
        if len(segs) % 5:
            raise GilbarcoCodecError(f"totals reply: {len(segs)} fields is not 5 per grade")
        grades = []
        digits = None
        for i in range(0, len(segs), 5):
            (g_cw, g), (v_cw, vol), (m_cw, money), (_, p1), (_, p2) = segs[i:i + 5]
            if (g_cw, v_cw, m_cw) != (CW_GRADE, CW_VOLUME, CW_MONEY) or len(g) != 1:
                raise GilbarcoCodecError(f"totals record {i // 5}: expected F6 g F9 .. FA ..")
            mode = next((d for d, m in MODES.items() if (len(vol), len(money), len(p1), len(p2))
                         == (m[2], m[2], m[3], m[3])), None)
            if mode is None or (digits is not None and mode != digits):
                raise GilbarcoCodecError(f"totals record {i // 5}: field lengths fit no (common) mode")
            digits = mode
            grades.append(GradeTotals((g[0] & 0x0F) + 1, words_value(vol, "volume"), words_value(money, "money"),
                                      words_value(p1, "ppu1"), words_value(p2, "ppu2")))
        return cls(tuple(grades), digits or 6)


def decode_transaction_reply(data: bytes) -> TransactionReply:
    return TransactionReply.decode(data)


def decode_totals_reply(data: bytes) -> TotalsReply:
    return TotalsReply.decode(data)


def decode_pump_block(data: bytes) -> TransactionReply | TotalsReply:
    """A pump -> controller block: totals if its first field is F6 (or it is empty), else a sale."""
    segs = segments(parse_block(data, length_word=False).body)
    if not segs or segs[0][0] == CW_GRADE:
        return TotalsReply.decode(data)
    return TransactionReply.decode(data)


@dataclass(frozen=True)
class SpecialFunctionReply:
    """The pump's 19-byte answer to special function 010: ASCII with bit 7 set.

    ``":" + data (14 chars) + check (2 chars) + CR LF``. Byte 9 (``data[8]``) is the totals decimal
    mode, bytes 10..13 the per-nozzle hundredths flags, byte 14 (``data[13]``) the lifted nozzle.
    """

    data: str
    check: str = "00"

    def encode(self) -> bytes:
        if not isinstance(self.data, str) or len(self.data) != 14 or not _printable(self.data):
            raise GilbarcoCodecError(f"data must be 14 printable ASCII characters, got {self.data!r}")
        if not isinstance(self.check, str) or len(self.check) != 2 or not _printable(self.check):
            raise GilbarcoCodecError(f"check must be 2 printable ASCII characters, got {self.check!r}")
        text = (":" + self.data + self.check + "\r\n").encode("ascii")
        return bytes(c | 0x80 for c in text)

    @property
    def totals_decimal_mode(self) -> int:
        """0: one decimal; 1: hundredths fetched separately; 2: two decimals, no millions digit."""
        return ord(self.data[8]) & 0x0F

    @property
    def lifted_nozzle(self) -> int:
        """Currently lifted nozzle, 0 = none."""
        return ord(self.data[13]) & 0x0F

    @property
    def hundredths(self) -> tuple[int, int, int, int]:
        return tuple(ord(c) & 0x0F for c in self.data[9:13])  # type: ignore[return-value]

    @classmethod
    def decode(cls, data: bytes) -> SpecialFunctionReply:
        data = _as_bytes(data)
        if len(data) != SPECIAL_REPLY_LEN:
            raise GilbarcoCodecError(f"special-function reply must be 19 bytes, got {len(data)}")
        if any(b < 0x80 for b in data):
            raise GilbarcoCodecError("special-function reply bytes must have bit 7 set")
        text = bytes(b & 0x7F for b in data)
        if text[0:1] != b":" or text[17:19] != b"\r\n":
            raise GilbarcoCodecError(f"special-function reply must be ':' .. CR LF, got {text!r}")
        body = text[1:17].decode("ascii")
        if not _printable(body):
            raise GilbarcoCodecError(f"special-function reply has non-printable characters: {text!r}")
        return cls(body[:14], body[14:16])


def _printable(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in text)


# ---------------------------------------------------------------- controller -> pump blocks


@dataclass(frozen=True)
class PriceChangeBlock:
    """``FF DL F4|F5 F6 E(grade-1) F7 price FB LRC F0`` (4 price digits; 6 in 8-digit mode)."""

    grade: int
    price: int
    price_level: int = 1
    digits: int = 6

    def encode(self) -> bytes:
        body = (bytes((_level_word(self.price_level), CW_GRADE, _grade_word(self.grade), CW_PPU))
                + digit_words(self.price, _mode(self.digits)[0], "price"))
        return build_block(body, length_word=True)

    @classmethod
    def decode(cls, data: bytes, *, check_length: bool = True) -> PriceChangeBlock:
        return _decode_controller(data, check_length, PriceChangeBlock)


@dataclass(frozen=True)
class PresetBlock:
    """``FF DL F1|F2 [F4|F5] [F6 Egrade] F8 value FB LRC F0``; kind "volume" (F1) or "money" (F2).

    ``value_digits``: 5 or 6 in 6-digit mode, 8 in 8-digit mode.
    """

    value: int
    kind: str = "money"
    value_digits: int = 6
    price_level: int | None = None
    grade: int | None = None

    def encode(self) -> bytes:
        if self.kind not in ("volume", "money"):
            raise GilbarcoCodecError(f"preset kind {self.kind!r} must be 'volume' or 'money'")
        if self.value_digits not in (5, 6, 8):
            raise GilbarcoCodecError(f"preset value_digits {self.value_digits!r} must be 5, 6 or 8")
        body = bytearray((CW_PRESET_VOLUME if self.kind == "volume" else CW_PRESET_MONEY,))
        if self.price_level is not None:
            body.append(_level_word(self.price_level))
        if self.grade is not None:
            body += bytes((CW_GRADE, _grade_word(self.grade)))
        body.append(CW_PRESET)
        body += digit_words(self.value, self.value_digits, "preset value")
        return build_block(bytes(body), length_word=True)

    @classmethod
    def decode(cls, data: bytes, *, check_length: bool = True) -> PresetBlock:
        return _decode_controller(data, check_length, PresetBlock)


@dataclass(frozen=True)
class SpecialFunctionBlock:
    """``FF DL FE code-digits FB LRC F0``; "010" reads the lifted nozzle and totals decimals."""

    code: str = "010"

    def encode(self) -> bytes:
        if not isinstance(self.code, str) or not self.code or not self.code.isdigit() or not self.code.isascii():
            raise GilbarcoCodecError(f"special-function code {self.code!r} must be decimal digits")
        return build_block(bytes((CW_SPECIAL,)) + bytes(0xE0 | int(c) for c in self.code), length_word=True)

    @classmethod
    def decode(cls, data: bytes, *, check_length: bool = True) -> SpecialFunctionBlock:
        return _decode_controller(data, check_length, SpecialFunctionBlock)


SPECIAL_FUNCTION_010 = SpecialFunctionBlock("010").encode()


def decode_controller_block(data: bytes, *, check_length: bool = True):
    """A controller -> pump block: PriceChangeBlock, PresetBlock or SpecialFunctionBlock."""
    return _decode_controller(data, check_length, None)


def _decode_controller(data: bytes, check_length: bool, want: type | None):
    segs = segments(parse_block(data, length_word=True, check_length=check_length).body)
    if not segs:
        raise GilbarcoCodecError("empty controller block")
    first = segs[0][0]
    if first in (CW_LEVEL_1, CW_LEVEL_2):
        result = _decode_price(segs)
    elif first in (CW_PRESET_VOLUME, CW_PRESET_MONEY):
        result = _decode_preset(segs)
    elif first == CW_SPECIAL:
        if len(segs) != 1 or not segs[0][1]:
            raise GilbarcoCodecError("special-function block must be FE + code digits")
        result = SpecialFunctionBlock("".join(str(words_value(bytes((w,)), "code")) for w in segs[0][1]))
    else:
        raise GilbarcoCodecError(f"unknown controller block starting with {first:02X}")
    if want is not None and not isinstance(result, want):
        raise GilbarcoCodecError(f"expected a {want.__name__}, found a {type(result).__name__}")
    return result


def _decode_price(segs: list[tuple[int, bytes]]) -> PriceChangeBlock:
    if len(segs) != 3 or segs[0][1] or segs[1][0] != CW_GRADE or len(segs[1][1]) != 1 or segs[2][0] != CW_PPU:
        raise GilbarcoCodecError("price-change block must be F4|F5 F6 g F7 price")
    digits = next((d for d, m in MODES.items() if m[0] == len(segs[2][1])), None)
    if digits is None:
        raise GilbarcoCodecError(f"price-change block: {len(segs[2][1])} price digits fit neither mode")
    return PriceChangeBlock((segs[1][1][0] & 0x0F) + 1, words_value(segs[2][1], "price"),
                            1 if segs[0][0] == CW_LEVEL_1 else 2, digits)


def _decode_preset(segs: list[tuple[int, bytes]]) -> PresetBlock:
    kind = "volume" if segs[0][0] == CW_PRESET_VOLUME else "money"
    rest = list(segs[1:])
    if segs[0][1]:
        raise GilbarcoCodecError("preset type word takes no data")
    level = None
    grade = None
    if rest and rest[0][0] in (CW_LEVEL_1, CW_LEVEL_2) and not rest[0][1]:
        level = 1 if rest.pop(0)[0] == CW_LEVEL_1 else 2
    if rest and rest[0][0] == CW_GRADE:
        g = rest.pop(0)[1]
        if len(g) != 1:
            raise GilbarcoCodecError("preset grade takes one word")
        grade = (g[0] & 0x0F) + 1
    if len(rest) != 1 or rest[0][0] != CW_PRESET or len(rest[0][1]) not in (5, 6, 8):
        raise GilbarcoCodecError("preset block must end with F8 + 5, 6 or 8 digits")
    return PresetBlock(words_value(rest[0][1], "preset value"), kind, len(rest[0][1]), level, grade)


# ---------------------------------------------------------------- echo


def strip_echo(sent: bytes, received: bytes) -> bytes:
    """Remove the controller's own bytes, echoed by the two-wire loop, from the front of a reply.

    Raises EchoMismatchError when the echo differs from what was sent (a collision on the loop,
    e.g. another master transmitting) or when fewer bytes than were sent came back.
    """
    sent, received = _as_bytes(sent), _as_bytes(received)
    for i, byte in enumerate(sent):
        if i >= len(received):
            raise EchoMismatchError(
                f"echo incomplete: sent {len(sent)} byte(s), {len(received)} came back", sent, received, i)
        if received[i] != byte:
            raise EchoMismatchError(
                f"echo mismatch at byte {i}: sent {byte:02X}, loop carried {received[i]:02X} (collision?)",
                sent, received, i)
    return received[len(sent):]


# ---------------------------------------------------------------- capture / passive decoding


def _jsonable(value):
    if isinstance(value, IntEnum):
        return value.name
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex(" ").upper()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


def message_to_dict(message) -> dict:
    """A JSON-able view of a message dataclass: ``type`` plus its fields."""
    out = {"type": type(message).__name__}
    out.update(_jsonable(message))
    if isinstance(message, Command):
        out["code"] = int(message.code)
        out["name"] = message.name
    elif isinstance(message, StatusReply):
        out["state_code"] = int(message.state)
    elif isinstance(message, SpecialFunctionReply):
        out["totals_decimal_mode"] = message.totals_decimal_mode
        out["lifted_nozzle"] = message.lifted_nozzle
    return out


@dataclass(frozen=True)
class LoopEvent:
    """One item seen on the loop: a decoded message, or bytes that could not be decoded."""

    offset: int
    raw: bytes
    direction: str  # "ctrl" or "pump"
    message: object | None = None
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        item = {"offset": self.offset, "raw": _jsonable(self.raw), "direction": self.direction,
                "valid": self.error is None}
        if self.message is not None:
            item["message"] = message_to_dict(self.message)
        if self.error is not None:
            item["error"] = self.error
        if self.note is not None:
            item["note"] = self.note
        return item


_NEED = object()  # the buffer ends before the item does
_NOT_SPECIAL = object()  # bytes that are not a special-function reply
_STATE_VALUES = frozenset(int(s) for s in PumpState)


class LoopDecoder:
    """Incremental decoder for bytes seen on a two-wire loop; never raises on data.

    ``direction=None`` (a merged capture: commands, echoes and replies interleaved) follows the
    conversation: each command says what reply to expect; a missing reply is tolerated. With
    ``"ctrl"`` or ``"pump"`` the stream holds one direction only. ``feed`` returns the events
    completed so far; ``flush`` decides whatever is left (end of a capture).

    ``echo=True`` (merged captures only) is for a stream that carries each controller item twice,
    as sent and as echoed by the loop (a tap on both lines of the controller's UART, or a relay that
    copies both directions): an immediate identical copy of a command byte or a controller block is
    consumed as its echo (an event with ``note="echo"``). A stream without echoes decodes the same,
    except that a DATA_ERROR reply to ``0n`` (the byte ``0n`` itself) is taken for the echo.
    """

    def __init__(self, direction: str | None = None, echo: bool = False) -> None:
        self.direction = normalize_direction(direction)
        self.echo = bool(echo) and self.direction is None
        self._echo_of = b""
        self._buf = bytearray()
        self._base = 0
        self._expect: tuple = ("cmd",)

    def feed(self, chunk: bytes) -> list[LoopEvent]:
        try:
            self._buf += _as_bytes(chunk)
        except GilbarcoCodecError as err:
            return [LoopEvent(self._base + len(self._buf), b"", PUMP, error=str(err))]
        return self._run(final=False)

    def flush(self) -> list[LoopEvent]:
        events = self._run(final=True)
        self._expect = ("cmd",)
        self._echo_of = b""
        return events

    # -- machinery

    def _run(self, final: bool) -> list[LoopEvent]:
        events: list[LoopEvent] = []
        while self._buf:
            step = self._step(final)
            if step is _NEED:
                break
            if step is not None:
                events.append(step)
        return events

    def _take(self, count: int) -> tuple[int, bytes]:
        offset = self._base
        raw = bytes(self._buf[:count])
        del self._buf[:count]
        self._base += count
        return offset, raw

    def _event(self, count: int, direction: str, message=None, error=None, note=None) -> LoopEvent:
        offset, raw = self._take(count)
        return LoopEvent(offset, raw, direction, message, error, note)

    def _step(self, final: bool):
        if self.direction == CTRL:
            return self._controller_item(final)
        if self.direction == PUMP:
            return self._pump_item(final)
        if self._echo_of:
            echo, self._echo_of = self._echo_of, b""
            n = min(len(echo), len(self._buf))
            if self._buf[:n] == echo[:n]:
                if n == len(echo):
                    return self._event(n, CTRL, note="echo")
                if not final:
                    self._echo_of = echo
                    return _NEED
        kind = self._expect[0]
        if kind == "cmd":
            return self._controller_item(final)
        byte = self._buf[0]
        result = None  # None: the expected reply is not there; this byte is the next command
        if kind == "status":
            if byte & 0x0F == pump_nibble(self._expect[1]) and (byte >> 4) in _STATE_VALUES:
                result = self._event(1, PUMP, StatusReply.decode(byte))
        elif kind == "block":
            if byte == STX:
                decoder = TransactionReply.decode if self._expect[2] == CommandCode.TRANSACTION else TotalsReply.decode
                result = self._pump_block(final, decoder)
        elif kind == "money":
            result = self._money(final, required=False)
        elif kind == "special":
            if byte == 0xBA:
                result = self._special(final, required=False)
        if result is not _NEED:
            self._expect = ("cmd",)
        return result

    def _extract_block(self, final: bool):
        """(length, error) of the block at the front of the buffer, or _NEED."""
        buf = self._buf
        for i in range(1, len(buf)):
            word = buf[i]
            if word < 0xE0:
                return i, "non-word byte inside a block"
            if word == STX:
                return i, "new block started before F0"
            if word == ETX:
                return i + 1, None
            if i + 1 >= MAX_BLOCK:
                return i + 1, "block longer than any reply"
        if final:
            return len(buf), "incomplete block at end of data"
        return _NEED

    def _controller_item(self, final: bool):
        byte = self._buf[0]
        if byte == STX:
            found = self._extract_block(final)
            if found is _NEED:
                return _NEED
            length, error = found
            if error:
                return self._event(length, CTRL, error=error)
            raw = bytes(self._buf[:length])
            try:
                message = decode_controller_block(raw, check_length=False)
            except GilbarcoCodecError as err:
                return self._event(length, CTRL, error=str(err))
            dl_ok = parse_block(raw, length_word=True, check_length=False).length_ok
            note = None if dl_ok else "data-length word does not follow the rule"
            if isinstance(message, SpecialFunctionBlock) and self.direction is None:
                self._expect = ("special",)
            if self.echo:
                self._echo_of = raw
            return self._event(length, CTRL, message, note=note)
        if byte >= 0xE0:
            run = 1
            while run < len(self._buf) and self._buf[run] >= 0xE0 and self._buf[run] != STX:
                run += 1
            if run == len(self._buf) and not final:
                return _NEED
            return self._event(run, CTRL if self.direction == CTRL else PUMP,
                               error="data/control words outside a block")
        command = Command.decode(byte)
        if self.direction is None:
            code = command.code
            if code == CommandCode.STATUS:
                self._expect = ("status", command.pump)
            elif code == CommandCode.DATA_NEXT:
                self._expect = ("status", command.pump)
            elif code in (CommandCode.TRANSACTION, CommandCode.TOTALS):
                self._expect = ("block", command.pump, code)
            elif code == CommandCode.REALTIME_MONEY:
                self._expect = ("money", command.pump)
            if self.echo:
                self._echo_of = bytes((byte,))
        return self._event(1, CTRL, command)

    def _pump_block(self, final: bool, decoder):
        found = self._extract_block(final)
        if found is _NEED:
            return _NEED
        length, error = found
        if error:
            return self._event(length, PUMP, error=error)
        try:
            message = decoder(bytes(self._buf[:length]))
        except GilbarcoCodecError as err:
            return self._event(length, PUMP, error=str(err))
        return self._event(length, PUMP, message)

    def _money(self, final: bool, required: bool):
        run = 0
        while run < len(self._buf) and run < 8 and 0xE0 <= self._buf[run] <= 0xEF:
            run += 1
        if run == len(self._buf) and run < 8 and not final:
            return _NEED
        if run == 0:
            return None if not required else self._event(1, PUMP, error="not a data word")
        try:
            return self._event(run, PUMP, RealTimeMoneyReply.decode(bytes(self._buf[:run])))
        except GilbarcoCodecError as err:
            return self._event(run, PUMP, error=str(err))

    def _special(self, final: bool, required: bool):
        if len(self._buf) < SPECIAL_REPLY_LEN and not final:
            plausible = all(b >= 0x80 for b in self._buf)
            if plausible:
                return _NEED
        try:
            message = SpecialFunctionReply.decode(bytes(self._buf[:SPECIAL_REPLY_LEN]))
        except GilbarcoCodecError:
            return None if not required else _NOT_SPECIAL
        return self._event(SPECIAL_REPLY_LEN, PUMP, message)

    def _pump_item(self, final: bool):
        byte = self._buf[0]
        if byte == STX:
            return self._pump_block(final, decode_pump_block)
        if 0xE0 <= byte <= 0xEF:
            return self._money(final, required=True)
        if byte == 0xBA:
            special = self._special(final, required=True)
            if special is not _NOT_SPECIAL:
                return special
        if byte >= 0xF0:
            return self._event(1, PUMP, error="control word outside a block")
        try:
            return self._event(1, PUMP, StatusReply.decode(byte))
        except GilbarcoCodecError as err:
            return self._event(1, PUMP, error=str(err))



def decode_capture(data: bytes, direction: str | None = None) -> list[dict]:
    """Every item in a capture of the loop, as JSON-able dicts in stream order.

    Each dict has ``offset``, ``raw`` (hex), ``direction`` ("ctrl" or "pump"), ``valid`` and either
    ``message`` (``type`` + fields) or ``error``; ``note`` flags oddities (e.g. a wrong data-length
    word). ``direction=None`` treats the capture as the merged conversation on the loop. Never
    raises on data; raises GilbarcoCodecError only for an invalid ``direction``.
    """
    decoder = LoopDecoder(direction)
    events = decoder.feed(data) + decoder.flush()
    return [event.to_dict() for event in events]
