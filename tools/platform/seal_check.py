"""Independent platform-side implementation of the "SC" v1 envelope (docs/platform-envelope.md).

Owns: opening device envelopes, opening device key messages and sealing platform -> device envelopes for
the reference platform and for tests.  It is written from the document alone, directly on
``cryptography`` (SM4, HMAC-SM3) and gmssl (SM3 for the KDFs and hashes, SM2 point arithmetic and
signature check) plus pycryptodomex's DER reader (a gmssl dependency).  It deliberately does NOT import
``uplink.envelope`` or ``uplink.crypto``: the tests cross-check the two so that they prove the
document, not just the symmetry of one implementation.

Command line (hex in, hex out)::

    python -m tools.platform.seal_check envelope --key 7=0123456789abcdeffedcba9876543210 HEX
    python -m tools.platform.seal_check keymsg --platform-key D_HEX --device-pub 04XY_HEX HEX
    python -m tools.platform.seal_check seal --key 7=KEY_HEX --device-id ID --type 0x81 --seq 1 BODY_HEX
"""

from __future__ import annotations

import argparse
import hmac as std_hmac
import os
import struct
import sys
import time
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "SealCheckError",
    "cbc_keys",
    "main",
    "open_envelope",
    "open_key_message",
    "seal_envelope",
    "sm2_decrypt_der",
    "sm2_verify_der",
]

# ---- constants copied from the document -----------------------------------------------------------
MAGIC = b"\x53\x43"
VERSION = 0x01
CIPHERS = {0: "key-message", 1: "SM4-GCM", 2: "SM4-CBC+HMAC-SM3"}
KEY_MSG_TYPE = 0x01
FIXED = 27
KDF_LABEL = b"SCENV1-CBC-HMAC-SM3"
DEFAULT_ID = b"1234567812345678"
MAX_PAYLOAD = 4194304

# SM2 recommended curve, GB/T 32918.5
P = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)
A = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC", 16)
B = int("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93", 16)
N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
GX = "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"
GY = "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0"


class SealCheckError(Exception):
    """Any rejection. ``reason``: truncated, malformed, version, unknown-key, auth or direction."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---- header --------------------------------------------------------------------------------------


def _read_header(data: bytes) -> tuple[dict[str, Any], int]:
    if len(data) < 2:
        raise SealCheckError("truncated", "no magic")
    if data[0:2] != MAGIC:
        raise SealCheckError("malformed", "magic")
    if len(data) < 3:
        raise SealCheckError("truncated", "no version")
    if data[2] != VERSION:
        raise SealCheckError("version", str(data[2]))
    if len(data) < FIXED:
        raise SealCheckError("truncated", "fixed header")
    h = {
        "version": data[2],
        "flags": data[3],
        "cipher": data[4],
        "msg_type": data[5],
        "key_id": int.from_bytes(data[6:10], "big"),
        "seq": int.from_bytes(data[10:14], "big"),
        "timestamp_ms": int.from_bytes(data[14:22], "big"),
        "payload_length": int.from_bytes(data[22:26], "big"),
    }
    n = data[26]
    if h["flags"] > 1:
        raise SealCheckError("malformed", "reserved flags")
    if h["cipher"] not in CIPHERS:
        raise SealCheckError("malformed", "cipher id")
    if (h["cipher"] == 0) is not (h["msg_type"] == KEY_MSG_TYPE):
        raise SealCheckError("malformed", "cipher 0 <-> type 0x01")
    if n < 1 or n > 64:
        raise SealCheckError("malformed", "device id length")
    if len(data) < FIXED + n:
        raise SealCheckError("truncated", "device id")
    dev = data[FIXED : FIXED + n]
    if min(dev) < 0x21 or max(dev) > 0x7E:
        raise SealCheckError("malformed", "device id characters")
    h["device_id"] = dev.decode("ascii")
    plen = h["payload_length"]
    if plen > MAX_PAYLOAD:
        raise SealCheckError("malformed", "payload length")
    if h["cipher"] == 1 and plen < 28:
        raise SealCheckError("malformed", "GCM payload length")
    if h["cipher"] == 2 and (plen < 64 or (plen - 48) % 16 != 0):
        raise SealCheckError("malformed", "CBC payload length")
    end = FIXED + n + plen
    if len(data) < end:
        raise SealCheckError("truncated", "payload")
    if len(data) > end:
        raise SealCheckError("malformed", "trailing bytes")
    return h, FIXED + n


def _sm3_gm(data: bytes) -> bytes:
    from gmssl import sm3

    return bytes.fromhex(sm3.sm3_hash(list(data)))


def _kdf_gm(z: bytes, klen: int) -> bytes:
    from gmssl import sm3

    return bytes.fromhex(sm3.sm3_kdf(z.hex().encode(), klen))


def cbc_keys(session_key: bytes) -> tuple[bytes, bytes]:
    """Cipher-2 keys per the document: KDF(session_key || label, 48) split 16 / 32."""
    k = _kdf_gm(session_key + KDF_LABEL, 48)
    return k[0:16], k[16:48]


# ---- open / seal ---------------------------------------------------------------------------------


def open_envelope(data: bytes, keys: dict[int, bytes]) -> tuple[dict[str, Any], bytes]:
    """Open a cipher-1 or cipher-2 envelope with ``keys[key_id]``; returns ``(header_dict, body)``."""
    data = bytes(data)
    h, hl = _read_header(data)
    if h["cipher"] == 0:
        raise SealCheckError("malformed", "key message given to open_envelope")
    key = keys.get(h["key_id"])
    if key is None or len(key) != 16:
        raise SealCheckError("unknown-key", str(h["key_id"]))
    aad, rest = data[:hl], data[hl:]
    if h["cipher"] == 1:
        nonce, ct, tag = rest[:12], rest[12:-16], rest[-16:]
        d = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        d.authenticate_additional_data(aad)
        try:
            body = d.update(ct) + d.finalize()
        except InvalidTag:
            raise SealCheckError("auth", "GCM tag") from None
        return h, body
    ek, mk = cbc_keys(key)
    iv, ct, mac = rest[:16], rest[16:-32], rest[-32:]
    m = c_hmac.HMAC(mk, hashes.SM3())
    m.update(aad + iv + ct)
    try:
        m.verify(mac)
    except InvalidSignature:
        raise SealCheckError("auth", "HMAC-SM3") from None
    d = Cipher(algorithms.SM4(ek), modes.CBC(iv)).decryptor()
    padded = d.update(ct) + d.finalize()
    u = padding.PKCS7(128).unpadder()
    try:
        body = u.update(padded) + u.finalize()
    except ValueError:
        raise SealCheckError("malformed", "padding") from None
    return h, body


def seal_envelope(
    session_key: bytes,
    key_id: int,
    device_id: str,
    msg_type: int,
    seq: int,
    body: bytes,
    *,
    cipher: int = 1,
    timestamp_ms: int | None = None,
    direction: int = 1,
    nonce: bytes | None = None,
) -> bytes:
    """Seal an envelope (default: platform -> device, direction 1). ``nonce`` only for test vectors."""
    if cipher not in (1, 2) or msg_type == KEY_MSG_TYPE:
        raise ValueError("cipher must be 1 or 2 and msg_type not 0x01")
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    dev = device_id.encode("ascii")
    if not 1 <= len(dev) <= 64 or min(dev) < 0x21 or max(dev) > 0x7E:
        raise ValueError("device id must be 1..64 printable ASCII characters")
    if direction not in (0, 1):
        raise ValueError("direction must be 0 or 1")
    if cipher == 1:
        iv = nonce if nonce is not None else os.urandom(12)
        plen = 12 + len(body) + 16
    else:
        iv = nonce if nonce is not None else os.urandom(16)
        plen = 16 + (len(body) // 16 + 1) * 16 + 32
    hdr = (
        MAGIC
        + bytes([VERSION, direction, cipher, msg_type])
        + struct.pack(">IIQI", key_id, seq, timestamp_ms, plen)
        + bytes([len(dev)])
        + dev
    )
    if cipher == 1:
        e = Cipher(algorithms.SM4(session_key), modes.GCM(iv)).encryptor()
        e.authenticate_additional_data(hdr)
        ct = e.update(body) + e.finalize()
        return hdr + iv + ct + e.tag
    ek, mk = cbc_keys(session_key)
    p = padding.PKCS7(128).padder()
    e = Cipher(algorithms.SM4(ek), modes.CBC(iv)).encryptor()
    ct = e.update(p.update(body) + p.finalize()) + e.finalize()
    m = c_hmac.HMAC(mk, hashes.SM3())
    m.update(hdr + iv + ct)
    return hdr + iv + ct + m.finalize()


# ---- SM2 (minimal, independent) -------------------------------------------------------------------


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < P and 0 <= y < P and (y * y - x * x * x - A * x - B) % P == 0


def _pub_xy(pub: bytes) -> tuple[int, int]:
    if len(pub) == 65 and pub[0] == 4:
        pub = pub[1:]
    if len(pub) != 64:
        raise SealCheckError("malformed", "device public key length")
    x, y = int.from_bytes(pub[:32], "big"), int.from_bytes(pub[32:], "big")
    if not _on_curve(x, y):
        raise SealCheckError("malformed", "device public key not on curve")
    return x, y


def _gm_sm2(private_hex: str = "", public_hex: str = "", asn1: bool = False) -> Any:
    from gmssl import sm2

    c = sm2.CryptSM2(private_key=private_hex, public_key="", mode=1, asn1=asn1)
    c.public_key = public_hex  # set after construction: gmssl's lstrip("04") would corrupt it
    return c


def sm2_decrypt_der(private_key: bytes, der: bytes) -> bytes:
    """GB/T 35276 SEQUENCE{x, y, C3, C2} -> plaintext, with C1 on-curve and C3 checks."""
    from Cryptodome.Util.asn1 import DerOctetString, DerSequence

    try:
        seq = DerSequence().decode(der, strict=True)
        if len(seq) != 4 or not isinstance(seq[0], int) or not isinstance(seq[1], int):
            raise ValueError("shape")
        c3 = DerOctetString().decode(seq[2], strict=True).payload
        c2 = DerOctetString().decode(seq[3], strict=True).payload
    except (ValueError, TypeError, IndexError, EOFError) as exc:
        raise SealCheckError("malformed", f"SM2 ciphertext DER ({exc})") from None
    x1, y1 = seq[0], seq[1]
    if not _on_curve(x1, y1):
        raise SealCheckError("auth", "C1 not on curve")
    if len(c3) != 32 or not c2:
        raise SealCheckError("malformed", "C3/C2 length")
    d = int.from_bytes(private_key, "big")
    if not 1 <= d <= N - 2:
        raise SealCheckError("malformed", "platform private key")
    xy = _gm_sm2()._kg(d, f"{x1:064x}{y1:064x}")
    t = _kdf_gm(bytes.fromhex(xy), len(c2))
    if not any(t):
        raise SealCheckError("auth", "KDF zero")
    m = bytes(a ^ b for a, b in zip(c2, t, strict=True))
    x2, y2 = bytes.fromhex(xy[:64]), bytes.fromhex(xy[64:128])
    if not std_hmac.compare_digest(_sm3_gm(x2 + m + y2), c3):
        raise SealCheckError("auth", "C3 mismatch")
    return m


def sm2_verify_der(pub: bytes, msg: bytes, sig: bytes, user_id: bytes = DEFAULT_ID) -> bool:
    """SM2 signature (DER r,s) with e = SM3(Z_A || msg)."""
    from Cryptodome.Util.asn1 import DerSequence

    x, y = _pub_xy(pub)
    try:
        rs = DerSequence().decode(sig, strict=True)
        ok = len(rs) == 2 and all(isinstance(v, int) and 0 < v < N for v in rs)
    except (ValueError, TypeError, IndexError, EOFError):
        ok = False
    if not ok:
        return False
    za_in = (
        (8 * len(user_id)).to_bytes(2, "big")
        + user_id
        + A.to_bytes(32, "big")
        + B.to_bytes(32, "big")
        + bytes.fromhex(GX + GY)
        + x.to_bytes(32, "big")
        + y.to_bytes(32, "big")
    )
    e = _sm3_gm(_sm3_gm(za_in) + msg)
    try:
        return bool(_gm_sm2(public_hex=f"{x:064x}{y:064x}", asn1=True).verify(sig.hex(), e))
    except Exception:  # gmssl has no error handling of its own; any failure means "not valid"
        return False


def open_key_message(
    data: bytes, platform_private_key: bytes, device_public_key: bytes, user_id: bytes = DEFAULT_ID
) -> tuple[int, bytes]:
    """Verify the device signature, decrypt the session key; returns ``(key_id, session_key)``."""
    data = bytes(data)
    h, hl = _read_header(data)
    if h["cipher"] != 0:
        raise SealCheckError("malformed", "not a key message")
    if h["flags"] != 0:
        raise SealCheckError("direction", "key message must be device -> platform")
    body = data[hl:]
    if len(body) < 2:
        raise SealCheckError("malformed", "key payload")
    clen = int.from_bytes(body[0:2], "big")
    enc = body[2 : 2 + clen]
    if len(enc) != clen or len(body) < 4 + clen:
        raise SealCheckError("malformed", "C length")
    slen = int.from_bytes(body[2 + clen : 4 + clen], "big")
    sig = body[4 + clen :]
    if len(sig) != slen:
        raise SealCheckError("malformed", "S length")
    hdr = data[:hl]
    tbs = hdr[0:22] + hdr[26:] + clen.to_bytes(2, "big") + enc
    if not sm2_verify_der(device_public_key, tbs, sig, user_id):
        raise SealCheckError("auth", "device signature")
    key = sm2_decrypt_der(platform_private_key, enc)
    if len(key) != 16:
        raise SealCheckError("malformed", "session key length")
    return h["key_id"], key


# ---- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="seal_check", description="SC v1 envelope checker (platform side)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("envelope", help="open a cipher 1/2 envelope")
    o.add_argument("--key", action="append", default=[], help="KEYID=HEX (repeatable)")
    o.add_argument("hex", help="envelope as hex, or - for stdin")
    k = sub.add_parser("keymsg", help="open a key message")
    k.add_argument("--platform-key", required=True, help="platform SM2 private key, hex")
    k.add_argument("--device-pub", required=True, help="device SM2 public key 04||X||Y, hex")
    k.add_argument("--user-id", default=DEFAULT_ID.decode())
    k.add_argument("hex", help="key message as hex, or - for stdin")
    s = sub.add_parser("seal", help="seal a platform -> device envelope")
    s.add_argument("--key", required=True, help="KEYID=HEX")
    s.add_argument("--device-id", required=True)
    s.add_argument("--type", type=lambda v: int(v, 0), required=True)
    s.add_argument("--seq", type=int, required=True)
    s.add_argument("--cipher", type=int, default=1)
    s.add_argument("body_hex")
    a = ap.parse_args(argv)

    def read_hex(v: str) -> bytes:
        return bytes.fromhex((sys.stdin.read() if v == "-" else v).strip())

    try:
        if a.cmd == "envelope":
            keys = {int(i): bytes.fromhex(kh) for i, kh in (x.split("=", 1) for x in a.key)}
            h, body = open_envelope(read_hex(a.hex), keys)
            print(h)
            print(body.hex())
        elif a.cmd == "keymsg":
            kid, key = open_key_message(
                read_hex(a.hex), bytes.fromhex(a.platform_key), bytes.fromhex(a.device_pub), a.user_id.encode()
            )
            print(f"key_id={kid} session_key={key.hex()}")
        else:
            kid, kh = a.key.split("=", 1)
            env = seal_envelope(
                bytes.fromhex(kh), int(kid), a.device_id, a.type, a.seq, bytes.fromhex(a.body_hex), cipher=a.cipher
            )
            print(env.hex())
    except SealCheckError as exc:
        print(f"REJECTED {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
