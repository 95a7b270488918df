"""Cryptographic primitives of the uplink: SM4, SM3, HMAC-SM3, the SM3 KDF and a hardened SM2.

Owns: every use of the national algorithms (GB/T 32907 SM4, GB/T 32905 SM3, GB/T 32918 SM2) and the
GB/T 35276 DER encodings of SM2 signatures and ciphertexts.  No other module of the collector imports
``cryptography`` or ``gmssl`` directly; they call the functions below.

* SM4 (ECB/CBC/GCM), SM3, HMAC-SM3 and the KDF run on OpenSSL through ``cryptography`` (hundreds of
  MB/s instead of the pure-Python gmssl's ~0.3 MB/s).
* SM2 uses gmssl 3.2.2 for the elliptic-curve arithmetic only, behind a wrapper that fixes its known
  defects: keys are generated here with ``secrets`` (private key in [1, n-2]); public keys are parsed by
  length (exactly one leading 0x04 byte removed, never ``lstrip("04")``) and checked to lie on the curve;
  every nonce k comes from ``secrets`` (gmssl's ``random.choice`` is never used); signatures use Z_A with a
  configurable user ID (default ``1234567812345678``); ciphertexts are C1C3C2 with C1 = 04||X||Y; on
  decryption C1 is checked to be on the curve and C3 is recomputed and compared (gmssl does neither).
  gmssl is imported lazily, only when SM2 is used.

Keys are ``bytes``: SM4 keys 16 bytes, SM2 private keys 32 bytes big-endian, SM2 public keys 65 bytes
``04||X||Y`` (64-byte ``X||Y`` is accepted on input).  Pure-Python SM2 is not constant time; keep it to
a few operations per session (see docs/platform-envelope.md).
"""

from __future__ import annotations

import hmac as _stdlib_hmac
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as _crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "DEFAULT_USER_ID",
    "GCM_NONCE_SIZE",
    "GCM_TAG_SIZE",
    "SM3_DIGEST_SIZE",
    "SM4_BLOCK_SIZE",
    "SM4_KEY_SIZE",
    "SM2P256",
    "AuthenticationError",
    "CryptoError",
    "CryptoUnavailable",
    "Curve",
    "DERError",
    "PaddingError",
    "SM2DecryptionError",
    "SM2Error",
    "SM2InvalidPointError",
    "SM2KeyError",
    "check_backend",
    "hmac_sm3",
    "hmac_sm3_verify",
    "sm2_ciphertext_from_der",
    "sm2_ciphertext_to_der",
    "sm2_decrypt",
    "sm2_decrypt_raw",
    "sm2_encrypt",
    "sm2_encrypt_raw",
    "sm2_generate_keypair",
    "sm2_is_on_curve",
    "sm2_normalize_public_key",
    "sm2_public_key_from_private",
    "sm2_sign",
    "sm2_sign_digest",
    "sm2_signature_from_der",
    "sm2_signature_to_der",
    "sm2_verify",
    "sm2_verify_digest",
    "sm2_z",
    "sm3",
    "sm3_kdf",
    "sm4_cbc_decrypt",
    "sm4_cbc_encrypt",
    "sm4_ecb_decrypt",
    "sm4_ecb_encrypt",
    "sm4_gcm_decrypt",
    "sm4_gcm_encrypt",
]

SM4_KEY_SIZE = 16
SM4_BLOCK_SIZE = 16
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
SM3_DIGEST_SIZE = 32
#: GB/T 35276-2017 default signer identity (16 bytes, ENTL = 0x0080).
DEFAULT_USER_ID = b"1234567812345678"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class CryptoError(Exception):
    """Base class of every error raised by this module."""


class CryptoUnavailable(CryptoError):
    """The OpenSSL behind ``cryptography`` was built without SM3/SM4 (``no-sm3``/``no-sm4``)."""


class AuthenticationError(CryptoError):
    """An SM4-GCM tag or an HMAC-SM3 tag did not verify."""


class PaddingError(CryptoError):
    """PKCS#7 padding is invalid after SM4-CBC decryption."""


class DERError(CryptoError, ValueError):
    """A DER structure is malformed, not minimal, or has trailing bytes."""


class SM2Error(CryptoError):
    """Base class of SM2 errors."""


class SM2KeyError(SM2Error, ValueError):
    """An SM2 private or public key is malformed, out of range or not on the curve."""


class SM2DecryptionError(SM2Error):
    """SM2 decryption failed: malformed ciphertext, wrong key or C3 mismatch (tampering)."""


class SM2InvalidPointError(SM2DecryptionError):
    """C1 of an SM2 ciphertext is not a point of the curve (invalid-curve attack or corruption)."""


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def _sm4_key(key: Any) -> bytes:
    key = _as_bytes(key, "key")
    if len(key) != SM4_KEY_SIZE:
        raise ValueError(f"SM4 key must be {SM4_KEY_SIZE} bytes, got {len(key)}")
    return key


def check_backend() -> None:
    """Raise :class:`CryptoUnavailable` unless SM4 (ECB, CBC, GCM) and SM3 work in this OpenSSL.

    Call once at start-up: distribution builds of ``cryptography`` may link an OpenSSL built with
    ``no-sm3``/``no-sm4``.
    """
    from cryptography.hazmat.backends.openssl import backend

    key = bytes(16)
    checks = {
        "SM4-ECB": backend.cipher_supported(algorithms.SM4(key), modes.ECB()),
        "SM4-CBC": backend.cipher_supported(algorithms.SM4(key), modes.CBC(bytes(16))),
        "SM4-GCM": backend.cipher_supported(algorithms.SM4(key), modes.GCM(bytes(12))),
        "SM3": backend.hash_supported(hashes.SM3()),
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        raise CryptoUnavailable("OpenSSL lacks " + ", ".join(missing))


# --------------------------------------------------------------------------------------------------
# SM4 (GB/T 32907)
# --------------------------------------------------------------------------------------------------


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB without padding (for test vectors and single blocks). ``len(data)`` % 16 must be 0."""
    key = _sm4_key(key)
    data = _as_bytes(data, "data")
    if len(data) % SM4_BLOCK_SIZE:
        raise ValueError("SM4-ECB input must be a multiple of 16 bytes")
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB decryption without padding."""
    key = _sm4_key(key)
    data = _as_bytes(data, "data")
    if len(data) % SM4_BLOCK_SIZE:
        raise ValueError("SM4-ECB input must be a multiple of 16 bytes")
    dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def sm4_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes, *, pad: bool = True) -> bytes:
    """SM4-CBC; with ``pad`` (default) PKCS#7 padding is applied (always 1..16 bytes added)."""
    key = _sm4_key(key)
    iv = _as_bytes(iv, "iv")
    plaintext = _as_bytes(plaintext, "plaintext")
    if len(iv) != SM4_BLOCK_SIZE:
        raise ValueError("SM4-CBC IV must be 16 bytes")
    if pad:
        padder = padding.PKCS7(128).padder()
        plaintext = padder.update(plaintext) + padder.finalize()
    elif len(plaintext) % SM4_BLOCK_SIZE:
        raise ValueError("unpadded SM4-CBC input must be a multiple of 16 bytes")
    enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return enc.update(plaintext) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes, *, pad: bool = True) -> bytes:
    """Inverse of :func:`sm4_cbc_encrypt`; raises :class:`PaddingError` on bad PKCS#7 padding.

    Only call this on authenticated ciphertext (after the MAC check) so that no padding oracle exists.
    """
    key = _sm4_key(key)
    iv = _as_bytes(iv, "iv")
    ciphertext = _as_bytes(ciphertext, "ciphertext")
    if len(iv) != SM4_BLOCK_SIZE:
        raise ValueError("SM4-CBC IV must be 16 bytes")
    if len(ciphertext) % SM4_BLOCK_SIZE or (pad and not ciphertext):
        raise PaddingError("SM4-CBC ciphertext length is not a positive multiple of 16")
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    plaintext = dec.update(ciphertext) + dec.finalize()
    if not pad:
        return plaintext
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(plaintext) + unpadder.finalize()
    except ValueError as exc:
        raise PaddingError("invalid PKCS#7 padding") from exc


def sm4_gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> tuple[bytes, bytes]:
    """SM4-GCM with a 12-byte nonce; returns ``(ciphertext, tag)`` with a 16-byte tag.

    A nonce must never repeat under one key (GCM loses confidentiality and integrity otherwise).
    """
    key = _sm4_key(key)
    nonce = _as_bytes(nonce, "nonce")
    if len(nonce) != GCM_NONCE_SIZE:
        raise ValueError("SM4-GCM nonce must be 12 bytes")
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    if aad:
        enc.authenticate_additional_data(_as_bytes(aad, "aad"))
    ciphertext = enc.update(_as_bytes(plaintext, "plaintext")) + enc.finalize()
    return ciphertext, enc.tag


def sm4_gcm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, tag: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM decryption; raises :class:`AuthenticationError` if the 16-byte tag does not verify."""
    key = _sm4_key(key)
    nonce = _as_bytes(nonce, "nonce")
    tag = _as_bytes(tag, "tag")
    if len(nonce) != GCM_NONCE_SIZE:
        raise ValueError("SM4-GCM nonce must be 12 bytes")
    if len(tag) != GCM_TAG_SIZE:
        raise AuthenticationError("SM4-GCM tag must be 16 bytes")
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    if aad:
        dec.authenticate_additional_data(_as_bytes(aad, "aad"))
    try:
        return dec.update(_as_bytes(ciphertext, "ciphertext")) + dec.finalize()
    except InvalidTag as exc:
        raise AuthenticationError("SM4-GCM tag mismatch") from exc


# --------------------------------------------------------------------------------------------------
# SM3 (GB/T 32905), HMAC-SM3 (GB/T 15852.2), KDF (GB/T 32918.4 clause 5.4.3)
# --------------------------------------------------------------------------------------------------


def sm3(data: bytes) -> bytes:
    """SM3 digest (32 bytes)."""
    h = hashes.Hash(hashes.SM3())
    h.update(_as_bytes(data, "data"))
    return h.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (RFC 2104 construction with SM3, block size 64), 32-byte tag."""
    key = _as_bytes(key, "key")
    if not key:
        raise ValueError("HMAC key must not be empty")
    h = _crypto_hmac.HMAC(key, hashes.SM3())
    h.update(_as_bytes(data, "data"))
    return h.finalize()


def hmac_sm3_verify(key: bytes, data: bytes, tag: bytes) -> bool:
    """Constant-time check of an HMAC-SM3 tag (full 32 bytes only)."""
    key = _as_bytes(key, "key")
    tag = _as_bytes(tag, "tag")
    if not key or len(tag) != SM3_DIGEST_SIZE:
        return False
    h = _crypto_hmac.HMAC(key, hashes.SM3())
    h.update(_as_bytes(data, "data"))
    try:
        h.verify(tag)
    except InvalidSignature:
        return False
    return True


def sm3_kdf(z: bytes, klen: int) -> bytes:
    """The SM2 key-derivation function: ``SM3(Z||ct=1) || SM3(Z||ct=2) || ...`` truncated to klen.

    ``ct`` is a 32-bit big-endian counter starting at 1 (GB/T 32918.4-2016, 5.4.3).
    """
    z = _as_bytes(z, "z")
    if klen < 0 or klen > 32 * 0xFFFFFFFF:
        raise ValueError("klen out of range")
    out = bytearray()
    counter = 1
    while len(out) < klen:
        out += sm3(z + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:klen])


# --------------------------------------------------------------------------------------------------
# SM2 curve parameters and the gmssl bridge
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Short Weierstrass curve y^2 = x^3 + ax + b over F_p with base point G of prime order n (h = 1)."""

    name: str
    p: int
    a: int
    b: int
    n: int
    gx: int
    gy: int

    @property
    def size(self) -> int:
        """Byte length of a field element / scalar (32 for the 256-bit curves)."""
        return (self.p.bit_length() + 7) // 8

    def ecc_table(self) -> dict[str, str]:
        """Curve in the hex-string form gmssl's ``CryptSM2`` expects."""
        w = self.size * 2
        return {
            "n": f"{self.n:0{w}x}",
            "p": f"{self.p:0{w}x}",
            "g": f"{self.gx:0{w}x}{self.gy:0{w}x}",
            "a": f"{self.a:0{w}x}",
            "b": f"{self.b:0{w}x}",
        }


#: The SM2 recommended curve (GB/T 32918.5-2017), a.k.a. sm2p256v1, OID 1.2.156.10197.1.301.
SM2P256 = Curve(
    name="sm2p256v1",
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)

Point = tuple[int, int]


@lru_cache(maxsize=8)
def _gm(curve: Curve) -> Any:
    """A key-less gmssl CryptSM2 used only for point arithmetic (``_kg``, ``_add_point``).

    The empty public key avoids the constructor's ``lstrip("04")``; the instance holds no secrets and its
    methods used here do not mutate it, so it is shared.
    """
    from gmssl import sm2 as gm_sm2  # lazy: only SM2 users pay for the import

    if curve.size != 32:
        raise SM2Error("gmssl supports only 256-bit curves")
    return gm_sm2.CryptSM2(private_key="", public_key="", ecc_table=curve.ecc_table(), mode=1)


def _hex_point(pt: Point) -> str:
    return f"{pt[0]:064x}{pt[1]:064x}"


def _unhex_point(s: str | None) -> Point | None:
    if not s or len(s) < 128:
        return None
    return int(s[:64], 16), int(s[64:128], 16)


def _mul(curve: Curve, k: int, pt: Point) -> Point:
    """k·P for 1 <= k < n and P a point of order n (callers guarantee both)."""
    if not 1 <= k < curve.n:
        raise SM2Error("scalar out of range")
    res = _unhex_point(_gm(curve)._kg(k, _hex_point(pt)))
    if res is None:
        raise SM2Error("scalar multiplication gave the point at infinity")
    return res


def _add(curve: Curve, p1: Point, p2: Point) -> Point | None:
    """P1 + P2 in affine coordinates; ``None`` for the point at infinity."""
    gm = _gm(curve)
    if p1 == p2:
        return _unhex_point(gm._convert_jacb_to_nor(gm._double_point(_hex_point(p1) + "1")))
    if p1[0] == p2[0]:  # P + (-P)
        return None
    return _unhex_point(gm._convert_jacb_to_nor(gm._add_point(_hex_point(p1), _hex_point(p2))))


def sm2_is_on_curve(x: int, y: int, curve: Curve = SM2P256) -> bool:
    """True if (x, y) is an affine point of the curve with coordinates in [0, p)."""
    p = curve.p
    if not (0 <= x < p and 0 <= y < p):
        return False
    return (y * y - (x * x * x + curve.a * x + curve.b)) % p == 0


def _private_scalar(private_key: Any, curve: Curve) -> int:
    private_key = _as_bytes(private_key, "private_key")
    if len(private_key) != curve.size:
        raise SM2KeyError(f"SM2 private key must be {curve.size} bytes")
    d = int.from_bytes(private_key, "big")
    if not 1 <= d <= curve.n - 2:
        raise SM2KeyError("SM2 private key out of range [1, n-2]")
    return d


def _public_point(public_key: Any, curve: Curve) -> Point:
    """Parse a public key by its length: 65 bytes ``04||X||Y`` or 64 bytes ``X||Y``; validate it."""
    public_key = _as_bytes(public_key, "public_key")
    size = curve.size
    if len(public_key) == 2 * size + 1:
        if public_key[0] != 0x04:
            raise SM2KeyError("65-byte SM2 public key must start with 0x04 (uncompressed)")
        body = public_key[1:]  # exactly one prefix byte, never lstrip
    elif len(public_key) == 2 * size:
        body = public_key
    else:
        raise SM2KeyError(f"SM2 public key must be {2 * size + 1} bytes (04||X||Y) or {2 * size} bytes")
    x = int.from_bytes(body[:size], "big")
    y = int.from_bytes(body[size:], "big")
    if not sm2_is_on_curve(x, y, curve):
        raise SM2KeyError("SM2 public key is not a point of the curve")
    return x, y


def _encode_point(pt: Point, curve: Curve) -> bytes:
    return b"\x04" + pt[0].to_bytes(curve.size, "big") + pt[1].to_bytes(curve.size, "big")


def sm2_normalize_public_key(public_key: bytes, curve: Curve = SM2P256) -> bytes:
    """Validate a public key (64 or 65 bytes) and return it as 65 bytes ``04||X||Y``."""
    return _encode_point(_public_point(public_key, curve), curve)


@lru_cache(maxsize=16)
def _derive_public(d: int, curve: Curve) -> Point:
    return _mul(curve, d, (curve.gx, curve.gy))


def sm2_public_key_from_private(private_key: bytes, curve: Curve = SM2P256) -> bytes:
    """Public key ``04||X||Y`` (65 bytes) of a 32-byte private key: P = d·G."""
    return _encode_point(_derive_public(_private_scalar(private_key, curve), curve), curve)


def sm2_generate_keypair(curve: Curve = SM2P256) -> tuple[bytes, bytes]:
    """New key pair ``(private_key 32 bytes, public_key 65 bytes)``; d drawn with ``secrets`` in [1, n-2]."""
    d = secrets.randbelow(curve.n - 2) + 1
    priv = d.to_bytes(curve.size, "big")
    return priv, _encode_point(_derive_public(d, curve), curve)


def _random_k(curve: Curve) -> int:
    return secrets.randbelow(curve.n - 1) + 1  # [1, n-1]


def _fixed_k(k: int, curve: Curve) -> int:
    if not isinstance(k, int) or not 1 <= k < curve.n:
        raise ValueError("k must be an int in [1, n-1]")
    return k


# --------------------------------------------------------------------------------------------------
# DER (GB/T 35276-2017): SM2Signature ::= SEQUENCE { r INTEGER, s INTEGER }
#                        SM2Cipher ::= SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING (32),
#                                                 ciphertext OCTET STRING }
# --------------------------------------------------------------------------------------------------

_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_SEQUENCE = 0x30


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


def _der_integer(v: int) -> bytes:
    if v < 0:
        raise ValueError("only non-negative INTEGERs are used")
    return _der_tlv(_TAG_INTEGER, v.to_bytes(v.bit_length() // 8 + 1, "big"))


class _DerReader:
    """Strict DER reader: definite minimal lengths, minimal non-negative INTEGERs, no trailing bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def tlv(self, tag: int) -> bytes:
        data, pos = self.data, self.pos
        if pos + 2 > len(data):
            raise DERError("truncated DER")
        if data[pos] != tag:
            raise DERError(f"expected DER tag 0x{tag:02x}, got 0x{data[pos]:02x}")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            nbytes = first & 0x7F
            if nbytes == 0 or nbytes > 4:
                raise DERError("unsupported DER length form")
            if pos + nbytes > len(data):
                raise DERError("truncated DER length")
            raw = data[pos : pos + nbytes]
            length = int.from_bytes(raw, "big")
            if raw[0] == 0 or length < 0x80:
                raise DERError("non-minimal DER length")
            pos += nbytes
        if pos + length > len(data):
            raise DERError("truncated DER value")
        self.pos = pos + length
        return data[pos : pos + length]

    def integer(self) -> int:
        v = self.tlv(_TAG_INTEGER)
        if not v:
            raise DERError("empty INTEGER")
        if v[0] & 0x80:
            raise DERError("negative INTEGER")
        if len(v) > 1 and v[0] == 0 and not v[1] & 0x80:
            raise DERError("non-minimal INTEGER")
        return int.from_bytes(v, "big")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DERError("trailing bytes after DER structure")


def sm2_signature_to_der(r: int, s: int) -> bytes:
    """GB/T 35276 signature encoding ``SEQUENCE { INTEGER r, INTEGER s }``."""
    return _der_tlv(_TAG_SEQUENCE, _der_integer(r) + _der_integer(s))


def sm2_signature_from_der(der: bytes) -> tuple[int, int]:
    """Parse ``SEQUENCE { r, s }``; raises :class:`DERError` on anything but strict DER."""
    outer = _DerReader(_as_bytes(der, "der"))
    inner = _DerReader(outer.tlv(_TAG_SEQUENCE))
    outer.end()
    r = inner.integer()
    s = inner.integer()
    inner.end()
    return r, s


def sm2_ciphertext_to_der(raw: bytes, curve: Curve = SM2P256) -> bytes:
    """Convert raw ``04||X||Y||C3||C2`` to the GB/T 35276 ``SEQUENCE { x, y, C3, C2 }``."""
    raw = _as_bytes(raw, "raw")
    size = curve.size
    head = 1 + 2 * size
    if len(raw) <= head + SM3_DIGEST_SIZE or raw[0] != 0x04:
        raise DERError("raw SM2 ciphertext must be 04||X||Y||C3||C2 with a non-empty C2")
    x = int.from_bytes(raw[1 : 1 + size], "big")
    y = int.from_bytes(raw[1 + size : head], "big")
    c3 = raw[head : head + SM3_DIGEST_SIZE]
    c2 = raw[head + SM3_DIGEST_SIZE :]
    body = _der_integer(x) + _der_integer(y) + _der_tlv(_TAG_OCTET_STRING, c3) + _der_tlv(_TAG_OCTET_STRING, c2)
    return _der_tlv(_TAG_SEQUENCE, body)


def sm2_ciphertext_from_der(der: bytes, curve: Curve = SM2P256) -> bytes:
    """Convert GB/T 35276 DER to raw ``04||X||Y||C3||C2``; raises :class:`DERError`."""
    outer = _DerReader(_as_bytes(der, "der"))
    inner = _DerReader(outer.tlv(_TAG_SEQUENCE))
    outer.end()
    x = inner.integer()
    y = inner.integer()
    c3 = inner.tlv(_TAG_OCTET_STRING)
    c2 = inner.tlv(_TAG_OCTET_STRING)
    inner.end()
    if x >= curve.p or y >= curve.p:
        raise DERError("C1 coordinate out of range")
    if len(c3) != SM3_DIGEST_SIZE:
        raise DERError("C3 must be 32 bytes")
    if not c2:
        raise DERError("C2 must not be empty")
    return b"\x04" + x.to_bytes(curve.size, "big") + y.to_bytes(curve.size, "big") + c3 + c2


# --------------------------------------------------------------------------------------------------
# SM2 signature (GB/T 32918.2) with Z_A
# --------------------------------------------------------------------------------------------------


def sm2_z(public_key: bytes, user_id: bytes = DEFAULT_USER_ID, curve: Curve = SM2P256) -> bytes:
    """Z_A = SM3(ENTL_A || ID_A || a || b || x_G || y_G || x_A || y_A), ENTL = bit length of ID (2 bytes)."""
    user_id = _as_bytes(user_id, "user_id")
    if len(user_id) * 8 > 0xFFFF:
        raise ValueError("user ID too long")
    x, y = _public_point(public_key, curve)
    size = curve.size
    parts = [
        (len(user_id) * 8).to_bytes(2, "big"),
        user_id,
        curve.a.to_bytes(size, "big"),
        curve.b.to_bytes(size, "big"),
        curve.gx.to_bytes(size, "big"),
        curve.gy.to_bytes(size, "big"),
        x.to_bytes(size, "big"),
        y.to_bytes(size, "big"),
    ]
    return sm3(b"".join(parts))


def sm2_sign_digest(private_key: bytes, e: bytes, *, curve: Curve = SM2P256, k: int | None = None) -> tuple[int, int]:
    """Raw SM2 signature ``(r, s)`` of the 32-byte value e = SM3(Z_A || M).

    ``k`` is for reproducing test vectors only; in production it is drawn with ``secrets`` per call.
    """
    from gmssl import sm2 as gm_sm2

    d = _private_scalar(private_key, curve)
    e = _as_bytes(e, "e")
    signer = gm_sm2.CryptSM2(private_key=f"{d:064x}", public_key="", ecc_table=curve.ecc_table(), mode=1)
    for _ in range(64):
        kk = _fixed_k(k, curve) if k is not None else _random_k(curve)
        sig = signer.sign(e, f"{kk:064x}")  # gmssl: r = (e + x1) mod n, s = (1+d)^-1 (k - r d) mod n
        if sig is not None:
            r, s = int(sig[:64], 16), int(sig[64:128], 16)
            if 1 <= r < curve.n and 1 <= s < curve.n:
                return r, s
        if k is not None:
            raise SM2Error("fixed k gives r = 0, r + k = n or s = 0; choose another k")
    raise SM2Error("could not produce a signature")  # pragma: no cover - probability ~ 2^-16000


def sm2_verify_digest(public_key: bytes, e: bytes, r: int, s: int, *, curve: Curve = SM2P256) -> bool:
    """Verify a raw SM2 signature ``(r, s)`` of e; never raises on bad signatures."""
    try:
        pa = _public_point(public_key, curve)
    except SM2KeyError:
        return False
    n = curve.n
    if not (isinstance(r, int) and isinstance(s, int) and 1 <= r < n and 1 <= s < n):
        return False
    t = (r + s) % n
    if t == 0:
        return False
    try:
        point = _add(curve, _mul(curve, s, (curve.gx, curve.gy)), _mul(curve, t, pa))
    except SM2Error:
        return False
    if point is None:
        return False
    ev = int.from_bytes(_as_bytes(e, "e"), "big")
    return (ev + point[0]) % n == r


def sm2_sign(
    private_key: bytes,
    message: bytes,
    *,
    user_id: bytes = DEFAULT_USER_ID,
    public_key: bytes | None = None,
    curve: Curve = SM2P256,
    k: int | None = None,
) -> bytes:
    """SM2 signature with SM3 of ``message`` (Z_A over ``user_id``), DER ``SEQUENCE{r, s}``.

    If ``public_key`` is given it must belong to ``private_key`` (checked: a mismatched public key in
    Z_A yields signatures nobody can verify, the symptom of gmssl issue #79).
    """
    derived = sm2_public_key_from_private(private_key, curve)
    if public_key is not None and sm2_normalize_public_key(public_key, curve) != derived:
        raise SM2KeyError("public key does not belong to the private key")
    e = sm3(sm2_z(derived, user_id, curve) + _as_bytes(message, "message"))
    r, s = sm2_sign_digest(private_key, e, curve=curve, k=k)
    return sm2_signature_to_der(r, s)


def sm2_verify(
    public_key: bytes,
    message: bytes,
    signature: bytes,
    *,
    user_id: bytes = DEFAULT_USER_ID,
    curve: Curve = SM2P256,
) -> bool:
    """Verify a DER SM2 signature over ``message``; False for any malformed key or signature."""
    try:
        r, s = sm2_signature_from_der(signature)
        z = sm2_z(public_key, user_id, curve)
    except (DERError, SM2KeyError, TypeError):
        return False
    return sm2_verify_digest(public_key, sm3(z + _as_bytes(message, "message")), r, s, curve=curve)


# --------------------------------------------------------------------------------------------------
# SM2 encryption (GB/T 32918.4), C1C3C2
# --------------------------------------------------------------------------------------------------


def sm2_encrypt_raw(
    public_key: bytes, plaintext: bytes, *, curve: Curve = SM2P256, k: int | None = None
) -> bytes:
    """SM2 encryption, raw output ``C1 || C3 || C2`` with C1 = ``04||x1||y1``.

    ``k`` is for reproducing test vectors only; in production it is drawn with ``secrets``.
    """
    pb = _public_point(public_key, curve)
    plaintext = _as_bytes(plaintext, "plaintext")
    if not plaintext:
        raise ValueError("SM2 plaintext must not be empty")
    size = curve.size
    for _ in range(64):
        kk = _fixed_k(k, curve) if k is not None else _random_k(curve)
        c1 = _mul(curve, kk, (curve.gx, curve.gy))
        x2, y2 = _mul(curve, kk, pb)
        x2b, y2b = x2.to_bytes(size, "big"), y2.to_bytes(size, "big")
        t = sm3_kdf(x2b + y2b, len(plaintext))
        if any(t):
            c2 = bytes(m ^ ti for m, ti in zip(plaintext, t, strict=True))
            c3 = sm3(x2b + plaintext + y2b)
            return _encode_point(c1, curve) + c3 + c2
        if k is not None:
            raise SM2Error("fixed k gives an all-zero KDF output; choose another k")
    raise SM2Error("could not encrypt")  # pragma: no cover


def sm2_decrypt_raw(private_key: bytes, ciphertext: bytes, *, curve: Curve = SM2P256) -> bytes:
    """Decrypt raw ``04||x1||y1 || C3 || C2``.

    Raises :class:`SM2InvalidPointError` if C1 is not on the curve and :class:`SM2DecryptionError` if
    the ciphertext is malformed or C3 does not match (tampering or wrong private key).
    """
    d = _private_scalar(private_key, curve)
    ciphertext = _as_bytes(ciphertext, "ciphertext")
    size = curve.size
    head = 1 + 2 * size
    if len(ciphertext) <= head + SM3_DIGEST_SIZE:
        raise SM2DecryptionError("SM2 ciphertext too short")
    if ciphertext[0] != 0x04:
        raise SM2DecryptionError("C1 must be an uncompressed point (leading 0x04)")
    x1 = int.from_bytes(ciphertext[1 : 1 + size], "big")
    y1 = int.from_bytes(ciphertext[1 + size : head], "big")
    if not sm2_is_on_curve(x1, y1, curve):
        raise SM2InvalidPointError("C1 is not a point of the curve")
    c3 = ciphertext[head : head + SM3_DIGEST_SIZE]
    c2 = ciphertext[head + SM3_DIGEST_SIZE :]
    try:
        x2, y2 = _mul(curve, d, (x1, y1))
    except SM2Error as exc:
        raise SM2DecryptionError("invalid C1") from exc
    x2b, y2b = x2.to_bytes(size, "big"), y2.to_bytes(size, "big")
    t = sm3_kdf(x2b + y2b, len(c2))
    if not any(t):
        raise SM2DecryptionError("KDF output is all zero")
    m = bytes(c ^ ti for c, ti in zip(c2, t, strict=True))
    if not _stdlib_hmac.compare_digest(sm3(x2b + m + y2b), c3):
        raise SM2DecryptionError("C3 mismatch: ciphertext altered or wrong private key")
    return m


def sm2_encrypt(public_key: bytes, plaintext: bytes, *, curve: Curve = SM2P256, k: int | None = None) -> bytes:
    """SM2 encryption, GB/T 35276 DER output ``SEQUENCE { x, y, C3, C2 }``."""
    return sm2_ciphertext_to_der(sm2_encrypt_raw(public_key, plaintext, curve=curve, k=k), curve)


def sm2_decrypt(private_key: bytes, ciphertext: bytes, *, curve: Curve = SM2P256) -> bytes:
    """Decrypt a GB/T 35276 DER SM2 ciphertext; raises :class:`SM2DecryptionError` (or a subclass)."""
    try:
        raw = sm2_ciphertext_from_der(ciphertext, curve)
    except (DERError, TypeError) as exc:
        raise SM2DecryptionError(f"malformed SM2 ciphertext: {exc}") from exc
    return sm2_decrypt_raw(private_key, raw, curve=curve)
