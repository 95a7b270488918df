"""Message envelope of the platform protocol (format "SC" version 1).

Owns: the byte layout of every message exchanged with the supervision platform — a clear, authenticated
header followed by the protected payload — sealing and opening with the session key, the SM2 "key"
message that transports a new session key to the platform, and the receiver-side replay rule.  The
cryptographic primitives are in :mod:`uplink.crypto`; the normative description (with worked test
vectors) is docs/platform-envelope.md, and tools/platform/seal_check.py is an independent implementation
of the same document used by the reference platform and by the tests.

Header (big-endian, 27 + n bytes)::

    off len field
      0   2 magic "SC" (0x53 0x43)
      2   1 version (0x01)
      3   1 flags: bit 0 = direction (0 device->platform, 1 platform->device), bits 1-7 zero
      4   1 cipher id: 0 = key message (SM2), 1 = SM4-GCM, 2 = SM4-CBC + HMAC-SM3
      5   1 message type (0x01 = key message; others: docs/platform-protocol.md)
      6   4 key id (uint32)
     10   4 sequence number (uint32)
     14   8 timestamp, ms since 1970-01-01T00:00:00Z (uint64)
     22   4 payload length L = number of bytes after the header (uint32)
     26   1 device id length n (1..64)
     27   n device id (printable ASCII 0x21..0x7E)

Payload: cipher 1 ``nonce(12) || ciphertext || tag(16)`` with the whole header as AAD; cipher 2
``IV(16) || ciphertext (PKCS#7) || HMAC-SM3(mac_key, header || IV || ciphertext)(32)``; cipher 0
``u16 len || SM2 ciphertext DER || u16 len || SM2 signature DER``.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from uplink import crypto

__all__ = [
    "CBC_KDF_LABEL",
    "CIPHER_KEY_MESSAGE",
    "CIPHER_SM4_CBC_HMAC_SM3",
    "CIPHER_SM4_GCM",
    "DIR_DOWNLINK",
    "DIR_UPLINK",
    "FIXED_HEADER_SIZE",
    "MAGIC",
    "MAX_DEVICE_ID_LEN",
    "MAX_PAYLOAD",
    "MSG_TYPE_KEY",
    "PROTOCOL_VERSION",
    "AuthenticationFailed",
    "EnvelopeError",
    "Header",
    "MalformedEnvelope",
    "ReplayError",
    "ReplayGuard",
    "Session",
    "TruncatedEnvelope",
    "UnknownDevice",
    "UnknownKeyId",
    "UnsupportedVersion",
    "WrongDirection",
    "derive_cbc_keys",
    "make_key_message",
    "open_",
    "open_key_message",
    "parse_header",
    "seal",
]

MAGIC = b"SC"
PROTOCOL_VERSION = 1
FIXED_HEADER_SIZE = 27  # bytes before the device id
MAX_DEVICE_ID_LEN = 64
MAX_PAYLOAD = 4 * 1024 * 1024  # larger payloads are rejected as malformed

CIPHER_KEY_MESSAGE = 0
CIPHER_SM4_GCM = 1
CIPHER_SM4_CBC_HMAC_SM3 = 2

MSG_TYPE_KEY = 0x01

DIR_UPLINK = 0  # device -> platform
DIR_DOWNLINK = 1  # platform -> device
_FLAG_DIRECTION = 0x01

#: Label appended to the session key as the KDF input Z for cipher 2 (ASCII, 19 bytes).
CBC_KDF_LABEL = b"SCENV1-CBC-HMAC-SM3"

_GCM_OVERHEAD = crypto.GCM_NONCE_SIZE + crypto.GCM_TAG_SIZE  # 28
_CBC_OVERHEAD = crypto.SM4_BLOCK_SIZE + crypto.SM3_DIGEST_SIZE  # 48
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_HEADER_STRUCT = struct.Struct(">2sBBBBIIQIB")  # 27 bytes, offsets 0..26
_LEN_OFFSET = 22  # payload length field, excluded from the key-message signature


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class EnvelopeError(Exception):
    """Base class: every failure of parsing/opening an envelope raises a subclass of this."""


class MalformedEnvelope(EnvelopeError):
    """Bad magic, reserved bits set, unknown cipher, bad lengths, trailing bytes, bad inner encoding."""


class TruncatedEnvelope(MalformedEnvelope):
    """The input ends before the header or the declared payload ends."""


class UnsupportedVersion(EnvelopeError):
    """The version byte is not :data:`PROTOCOL_VERSION`."""


class UnknownKeyId(EnvelopeError):
    """No session key is known for (device id, key id)."""


class UnknownDevice(EnvelopeError):
    """No SM2 public key is registered for the device id of a key message."""


class AuthenticationFailed(EnvelopeError):
    """GCM tag, HMAC-SM3, SM2 signature or SM2 C3 check failed: altered data or wrong key."""


class WrongDirection(EnvelopeError):
    """The direction flag is not the one the receiver expects (reflection of a message)."""


class ReplayError(EnvelopeError):
    """Sequence number (or key id) not greater than the last accepted one."""


# --------------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The clear header. ``payload_length`` is the number of bytes that follow the header."""

    device_id: str
    msg_type: int
    seq: int
    timestamp_ms: int
    cipher: int
    key_id: int
    flags: int = DIR_UPLINK
    version: int = PROTOCOL_VERSION
    payload_length: int = 0

    @property
    def direction(self) -> int:
        return self.flags & _FLAG_DIRECTION

    def encode(self) -> bytes:
        """Header bytes (27 + n). Raises ValueError for out-of-range fields."""
        dev = _device_id_bytes(self.device_id)
        for name, value, top in (
            ("version", self.version, 0xFF),
            ("flags", self.flags, 0xFF),
            ("cipher", self.cipher, 0xFF),
            ("msg_type", self.msg_type, 0xFF),
            ("key_id", self.key_id, _U32),
            ("seq", self.seq, _U32),
            ("timestamp_ms", self.timestamp_ms, _U64),
            ("payload_length", self.payload_length, _U32),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise ValueError(f"{name} out of range: {value!r}")
        return (
            _HEADER_STRUCT.pack(
                MAGIC,
                self.version,
                self.flags,
                self.cipher,
                self.msg_type,
                self.key_id,
                self.seq,
                self.timestamp_ms,
                self.payload_length,
                len(dev),
            )
            + dev
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_id_bytes(device_id: str) -> bytes:
    if not isinstance(device_id, str):
        raise ValueError("device_id must be str")
    try:
        raw = device_id.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("device_id must be printable ASCII") from exc
    if not 1 <= len(raw) <= MAX_DEVICE_ID_LEN or any(not 0x21 <= c <= 0x7E for c in raw):
        raise ValueError("device_id must be 1..64 printable ASCII characters without spaces")
    return raw


def parse_header(data: bytes) -> tuple[Header, int]:
    """Parse and validate the clear header; returns ``(header, header_length)``.

    Checks everything that can be checked without a key, including that ``data`` holds exactly the
    declared payload.  Raises :class:`TruncatedEnvelope`, :class:`MalformedEnvelope` or
    :class:`UnsupportedVersion`; never anything else for ``bytes`` input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedEnvelope("envelope must be bytes")
    data = bytes(data)
    if len(data) < 2:
        raise TruncatedEnvelope("shorter than the magic")
    if data[:2] != MAGIC:
        raise MalformedEnvelope("bad magic")
    if len(data) < 3:
        raise TruncatedEnvelope("no version byte")
    if data[2] != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"unsupported envelope version {data[2]}")
    if len(data) < FIXED_HEADER_SIZE:
        raise TruncatedEnvelope("header truncated")
    _magic, version, flags, cipher, msg_type, key_id, seq, ts, length, dev_len = _HEADER_STRUCT.unpack_from(data)
    if flags & ~_FLAG_DIRECTION:
        raise MalformedEnvelope("reserved flag bits set")
    if cipher not in (CIPHER_KEY_MESSAGE, CIPHER_SM4_GCM, CIPHER_SM4_CBC_HMAC_SM3):
        raise MalformedEnvelope(f"unknown cipher id {cipher}")
    if (cipher == CIPHER_KEY_MESSAGE) != (msg_type == MSG_TYPE_KEY):
        raise MalformedEnvelope("cipher 0 is used by, and only by, message type 0x01")
    if not 1 <= dev_len <= MAX_DEVICE_ID_LEN:
        raise MalformedEnvelope("bad device id length")
    hlen = FIXED_HEADER_SIZE + dev_len
    if len(data) < hlen:
        raise TruncatedEnvelope("device id truncated")
    dev = data[FIXED_HEADER_SIZE:hlen]
    if any(not 0x21 <= c <= 0x7E for c in dev):
        raise MalformedEnvelope("device id is not printable ASCII")
    if length > MAX_PAYLOAD:
        raise MalformedEnvelope("payload too large")
    if cipher == CIPHER_SM4_GCM and length < _GCM_OVERHEAD:
        raise MalformedEnvelope("SM4-GCM payload shorter than nonce + tag")
    if cipher == CIPHER_SM4_CBC_HMAC_SM3 and (
        length < _CBC_OVERHEAD + crypto.SM4_BLOCK_SIZE or (length - _CBC_OVERHEAD) % crypto.SM4_BLOCK_SIZE
    ):
        raise MalformedEnvelope("SM4-CBC payload length is not IV + n*16 + MAC")
    if len(data) < hlen + length:
        raise TruncatedEnvelope("payload truncated")
    if len(data) > hlen + length:
        raise MalformedEnvelope("trailing bytes after the payload")
    header = Header(
        device_id=dev.decode("ascii"),
        msg_type=msg_type,
        seq=seq,
        timestamp_ms=ts,
        cipher=cipher,
        key_id=key_id,
        flags=flags,
        version=version,
        payload_length=length,
    )
    return header, hlen


# --------------------------------------------------------------------------------------------------
# Sessions and keys
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A 16-byte SM4 session key known to both ends under (device id, key id).

    ``direction`` is the direction of the envelopes this side *seals* (device: uplink, platform:
    downlink).
    """

    device_id: str
    key_id: int
    key: bytes = field(repr=False)
    cipher: int = CIPHER_SM4_GCM
    direction: int = DIR_UPLINK

    def __post_init__(self) -> None:
        _device_id_bytes(self.device_id)
        if not isinstance(self.key, bytes) or len(self.key) != crypto.SM4_KEY_SIZE:
            raise ValueError("session key must be 16 bytes")
        if not 0 <= self.key_id <= _U32:
            raise ValueError("key_id must be a uint32")
        if self.cipher not in (CIPHER_SM4_GCM, CIPHER_SM4_CBC_HMAC_SM3):
            raise ValueError("session cipher must be 1 (SM4-GCM) or 2 (SM4-CBC + HMAC-SM3)")
        if self.direction not in (DIR_UPLINK, DIR_DOWNLINK):
            raise ValueError("direction must be 0 or 1")

    @classmethod
    def generate(
        cls, device_id: str, key_id: int, cipher: int = CIPHER_SM4_GCM, direction: int = DIR_UPLINK
    ) -> Session:
        """A new session with a fresh random key from ``secrets``."""
        return cls(device_id, key_id, secrets.token_bytes(crypto.SM4_KEY_SIZE), cipher, direction)


def derive_cbc_keys(session_key: bytes) -> tuple[bytes, bytes]:
    """Cipher-2 keys: ``K = KDF(session_key || "SCENV1-CBC-HMAC-SM3", 48)``; enc = K[0:16], mac = K[16:48].

    KDF is the SM3 KDF of GB/T 32918.4 (SM3(Z || 00000001) || SM3(Z || 00000002), truncated).
    """
    if not isinstance(session_key, bytes) or len(session_key) != crypto.SM4_KEY_SIZE:
        raise ValueError("session key must be 16 bytes")
    k = crypto.sm3_kdf(session_key + CBC_KDF_LABEL, 48)
    return k[:16], k[16:]


KeyLookup = Mapping[int, bytes] | Callable[[str, int], "bytes | None"]


def _lookup_key(key_lookup: KeyLookup, header: Header) -> bytes:
    if callable(key_lookup):
        key = key_lookup(header.device_id, header.key_id)
    else:
        key = key_lookup.get(header.key_id)
    if key is None:
        raise UnknownKeyId(f"no session key for device {header.device_id!r} key id {header.key_id}")
    if not isinstance(key, bytes) or len(key) != crypto.SM4_KEY_SIZE:
        raise UnknownKeyId(f"session key for key id {header.key_id} is not 16 bytes")
    return key


# --------------------------------------------------------------------------------------------------
# seal / open
# --------------------------------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def seal(header_fields: Mapping[str, Any], body: bytes, session: Session, *, nonce: bytes | None = None) -> bytes:
    """Seal ``body`` under ``session``.

    ``header_fields``: ``msg_type`` and ``seq`` (required), ``timestamp_ms`` (default: now), optional
    ``device_id`` (must equal the session's) and ``flags`` (default: the session's direction).  The
    cipher and key id come from the session.  ``nonce`` (12 bytes for GCM, 16-byte IV for CBC) exists
    for test vectors only; by default a fresh random value from ``secrets`` is used per message.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be bytes")
    body = bytes(body)
    fields = dict(header_fields)
    if "device_id" in fields and fields["device_id"] != session.device_id:
        raise ValueError("header device_id differs from the session's device id")
    msg_type = fields["msg_type"]
    if msg_type == MSG_TYPE_KEY:
        raise ValueError("message type 0x01 is the key message: use make_key_message()")
    ts = fields.get("timestamp_ms")
    cipher = session.cipher
    if cipher == CIPHER_SM4_GCM:
        iv = secrets.token_bytes(crypto.GCM_NONCE_SIZE) if nonce is None else bytes(nonce)
        if len(iv) != crypto.GCM_NONCE_SIZE:
            raise ValueError("SM4-GCM nonce must be 12 bytes")
        length = _GCM_OVERHEAD + len(body)
    else:
        iv = secrets.token_bytes(crypto.SM4_BLOCK_SIZE) if nonce is None else bytes(nonce)
        if len(iv) != crypto.SM4_BLOCK_SIZE:
            raise ValueError("SM4-CBC IV must be 16 bytes")
        length = _CBC_OVERHEAD + (len(body) // 16 + 1) * 16
    if length > MAX_PAYLOAD:
        raise ValueError("body too large for one envelope")
    header = Header(
        device_id=session.device_id,
        msg_type=msg_type,
        seq=fields["seq"],
        timestamp_ms=_now_ms() if ts is None else ts,
        cipher=cipher,
        key_id=session.key_id,
        flags=fields.get("flags", session.direction),
        payload_length=length,
    )
    hdr = header.encode()
    if header.flags & ~_FLAG_DIRECTION:
        raise ValueError("only flag bit 0 (direction) may be set")
    if cipher == CIPHER_SM4_GCM:
        ct, tag = crypto.sm4_gcm_encrypt(session.key, iv, body, hdr)
        out = hdr + iv + ct + tag
    else:
        enc_key, mac_key = derive_cbc_keys(session.key)
        ct = crypto.sm4_cbc_encrypt(enc_key, iv, body)
        out = hdr + iv + ct + crypto.hmac_sm3(mac_key, hdr + iv + ct)
    return out


def open_(data: bytes, key_lookup: KeyLookup, *, direction: int | None = None) -> tuple[Header, bytes]:
    """Authenticate and decrypt an envelope; returns ``(header, body)``.

    ``key_lookup`` is a mapping ``key_id -> session key`` or a callable ``(device_id, key_id) -> key or
    None``.  ``direction``: if given, the envelope's direction flag must equal it.  Raises only
    :class:`EnvelopeError` subclasses for any ``bytes`` input.  The caller then applies the replay
    rule (:class:`ReplayGuard`) to the returned header.
    """
    header, hlen = parse_header(data)
    data = bytes(data)
    if header.cipher == CIPHER_KEY_MESSAGE:
        raise MalformedEnvelope("this is a key message: use open_key_message()")
    if direction is not None and header.direction != direction:
        raise WrongDirection(f"direction {header.direction}, expected {direction}")
    key = _lookup_key(key_lookup, header)
    hdr = data[:hlen]
    payload = data[hlen:]
    if header.cipher == CIPHER_SM4_GCM:
        nonce = payload[: crypto.GCM_NONCE_SIZE]
        ct = payload[crypto.GCM_NONCE_SIZE : -crypto.GCM_TAG_SIZE]
        tag = payload[-crypto.GCM_TAG_SIZE :]
        try:
            body = crypto.sm4_gcm_decrypt(key, nonce, ct, tag, hdr)
        except crypto.AuthenticationError as exc:
            raise AuthenticationFailed("SM4-GCM tag mismatch") from exc
        return header, body
    enc_key, mac_key = derive_cbc_keys(key)
    iv = payload[: crypto.SM4_BLOCK_SIZE]
    ct = payload[crypto.SM4_BLOCK_SIZE : -crypto.SM3_DIGEST_SIZE]
    mac = payload[-crypto.SM3_DIGEST_SIZE :]
    if not crypto.hmac_sm3_verify(mac_key, hdr + iv + ct, mac):
        raise AuthenticationFailed("HMAC-SM3 mismatch")
    try:
        body = crypto.sm4_cbc_decrypt(enc_key, iv, ct)
    except crypto.PaddingError as exc:  # authentic but badly padded: a sender bug
        raise MalformedEnvelope("bad PKCS#7 padding in an authentic envelope") from exc
    return header, body


# --------------------------------------------------------------------------------------------------
# Key message (cipher 0, type 0x01)
# --------------------------------------------------------------------------------------------------


def _key_tbs(hdr: bytes, enc: bytes) -> bytes:
    """Signed data: the header without its payload-length field (bytes 22..25), then u16 len || enc."""
    return hdr[:_LEN_OFFSET] + hdr[_LEN_OFFSET + 4 :] + struct.pack(">H", len(enc)) + enc


def make_key_message(
    session: Session,
    *,
    seq: int,
    device_private_key: bytes,
    platform_public_key: bytes,
    timestamp_ms: int | None = None,
    user_id: bytes = crypto.DEFAULT_USER_ID,
    k_encrypt: int | None = None,
    k_sign: int | None = None,
) -> bytes:
    """Key message announcing ``session`` to the platform.

    Payload ``u16 len || C || u16 len || S`` where C = SM2 encryption (GB/T 35276 DER) of the 16-byte
    session key to ``platform_public_key`` and S = the device's SM2 signature (DER, Z_A over
    ``user_id``) of ``header[0:22] || header[26:] || u16 len(C) || C`` — this covers device id, key id,
    sequence number, timestamp and the encrypted key.  ``k_encrypt``/``k_sign`` are for test vectors only.
    """
    if session.direction != DIR_UPLINK:
        raise ValueError("key messages are sent by the device (uplink)")
    enc = crypto.sm2_encrypt(platform_public_key, session.key, k=k_encrypt)
    base = Header(
        device_id=session.device_id,
        msg_type=MSG_TYPE_KEY,
        seq=seq,
        timestamp_ms=_now_ms() if timestamp_ms is None else timestamp_ms,
        cipher=CIPHER_KEY_MESSAGE,
        key_id=session.key_id,
        flags=DIR_UPLINK,
    )
    sig = crypto.sm2_sign(device_private_key, _key_tbs(base.encode(), enc), user_id=user_id, k=k_sign)
    payload = struct.pack(">H", len(enc)) + enc + struct.pack(">H", len(sig)) + sig
    hdr = Header(**{**base.to_dict(), "payload_length": len(payload)}).encode()
    return hdr + payload


def open_key_message(
    data: bytes,
    *,
    platform_private_key: bytes,
    device_public_key: bytes | Callable[[str], bytes | None],
    user_id: bytes = crypto.DEFAULT_USER_ID,
) -> tuple[Header, bytes]:
    """Verify and decrypt a key message; returns ``(header, session_key)``.

    ``device_public_key`` is the registered key of the sender, or a callable ``device_id -> key or
    None``.  The signature is checked before decryption.  The caller must then check that the key id is
    greater than the device's last one (:meth:`ReplayGuard.accept`).
    """
    header, hlen = parse_header(data)
    data = bytes(data)
    if header.cipher != CIPHER_KEY_MESSAGE:
        raise MalformedEnvelope("not a key message")
    if header.direction != DIR_UPLINK:
        raise WrongDirection("key messages travel device -> platform")
    payload = data[hlen:]
    if len(payload) < 2:
        raise MalformedEnvelope("key message payload too short")
    (enc_len,) = struct.unpack_from(">H", payload, 0)
    if len(payload) < 2 + enc_len + 2:
        raise MalformedEnvelope("key message: bad encrypted-key length")
    enc = payload[2 : 2 + enc_len]
    (sig_len,) = struct.unpack_from(">H", payload, 2 + enc_len)
    if len(payload) != 4 + enc_len + sig_len:
        raise MalformedEnvelope("key message: bad signature length")
    sig = payload[4 + enc_len :]
    pub = device_public_key(header.device_id) if callable(device_public_key) else device_public_key
    if pub is None:
        raise UnknownDevice(f"no public key registered for device {header.device_id!r}")
    if not crypto.sm2_verify(pub, _key_tbs(data[:hlen], enc), sig, user_id=user_id):
        raise AuthenticationFailed("device signature does not verify")
    try:
        key = crypto.sm2_decrypt(platform_private_key, enc)
    except crypto.SM2Error as exc:
        raise AuthenticationFailed(f"session key does not decrypt: {exc}") from exc
    if len(key) != crypto.SM4_KEY_SIZE:
        raise MalformedEnvelope("transported session key is not 16 bytes")
    return header, key


# --------------------------------------------------------------------------------------------------
# Replay rule (receiver side)
# --------------------------------------------------------------------------------------------------


class ReplayGuard:
    """Receiver-side replay rule, applied to headers *after* :func:`open_` / :func:`open_key_message`.

    * Data envelopes: per (device id, key id, direction) the sequence number must be strictly greater
      than the last accepted one.
    * Key messages: per device the key id must be strictly greater than the last accepted key id.

    State is in memory; a platform persists :meth:`snapshot` (or its own equivalent) so that a restart
    does not reopen the window.  Call :meth:`forget` when a session key is deleted.
    """

    def __init__(self, state: Mapping[tuple[str, int, int], int] | None = None) -> None:
        self._last: dict[tuple[str, int, int], int] = dict(state or {})
        self._lock = threading.Lock()

    @staticmethod
    def _slot(header: Header) -> tuple[tuple[str, int, int], int]:
        if header.cipher == CIPHER_KEY_MESSAGE:
            return (header.device_id, -1, -1), header.key_id
        return (header.device_id, header.key_id, header.direction), header.seq

    def check(self, header: Header) -> None:
        """Raise :class:`ReplayError` if ``header`` would be a replay; do not record it."""
        slot, value = self._slot(header)
        with self._lock:
            last = self._last.get(slot)
        if last is not None and value <= last:
            what = "key id" if header.cipher == CIPHER_KEY_MESSAGE else "sequence number"
            raise ReplayError(f"{what} {value} not greater than last accepted {last}")

    def accept(self, header: Header) -> None:
        """Check and record ``header`` atomically; raises :class:`ReplayError` on replay."""
        slot, value = self._slot(header)
        with self._lock:
            last = self._last.get(slot)
            if last is not None and value <= last:
                what = "key id" if header.cipher == CIPHER_KEY_MESSAGE else "sequence number"
                raise ReplayError(f"{what} {value} not greater than last accepted {last}")
            self._last[slot] = value

    def forget(self, device_id: str, key_id: int) -> None:
        """Drop the sequence state of a deleted session key (both directions)."""
        with self._lock:
            for direction in (DIR_UPLINK, DIR_DOWNLINK):
                self._last.pop((device_id, key_id, direction), None)

    def snapshot(self) -> dict[tuple[str, int, int], int]:
        with self._lock:
            return dict(self._last)
