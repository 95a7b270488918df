"""Tests of uplink.envelope against the document (docs/platform-envelope.md) and against the independent
platform-side implementation tools/platform/seal_check.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.platform import seal_check as SC
from uplink import crypto as C
from uplink import envelope as E

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# Worked vectors of docs/platform-envelope.md
# ------------------------------------------------------------------------------------------------

V_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
V_KEY_ID = 7
V_DEV = "GD-440106-0001"
V_TS = 1767225600000  # 2026-01-01T00:00:00.000Z
V_SEQ = 42
V_TYPE = 0x10
V_BODY = b'{"nozzle":3,"vol":"25.31","amt":"200.00"}'
V_NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
V_IV = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
V_GCM = (
    "534301000110000000070000002a0000019b76daa800000000450e47442d3434303130362d30303031"
    "a0a1a2a3a4a5a6a7a8a9aaab"
    "90913c97dce0a32694e54fc6113404f3a49d8da4c39f71f34c38c84bb19f2e03cf6f6e1cf0b87afabd"
    "8952fc6497aa29cef0681de9a0ba36fe"
)
V_CBC_ENC_KEY = "6beb472e0c58096c72351e2f5f83ea2a"
V_CBC_MAC_KEY = "1669168c56dd14eb26e7cf14fe96adee043993c5215ead26dacde4fe43fb8f80"
V_CBC = (
    "534301000210000000070000002a0000019b76daa800000000600e47442d3434303130362d30303031"
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "039c9dde70d061b0878755eaa6a051334498722dff70127a3d8bb8e79dce0e915dde294a4efccae8d87e7276ea90a9a8"
    "6b301502f4df785780ee9f4db760e612a35627fa1820e297916e40655b434440"
)
# key message: device key = GB/T 32918.5 example key, platform key = arbitrary test key
V_DEV_PRIV = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
V_DEV_PUB = bytes.fromhex(
    "0409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020"
    "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13"
)
V_PLAT_PRIV = bytes.fromhex("5AD9E9B5A9CC4BA1B52A7C0D4D7A1B9DC6B74B7C3F0F3A6E4E1D2C3B4A596877")
V_PLAT_PUB = bytes.fromhex(
    "04eadd763da060537a8c86a22d5f63e6dfbc61c2e52b95259e9e84fc6ddcfc0b8f"
    "a70054156506e8b8ad188f0eb4d9e289484a704d7b2b96dffbe4c1c781eadcdb"
)
V_K_ENC = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
V_K_SIG = 0x6CB28D99385C175C94F94E934817663FC176D925DD72B727260DBAAE1FB2F96F
V_KEYMSG = (
    "53430100000100000007000000010000019b76daa800000000c60e47442d3434303130362d30303031"
    "007b"
    "3079022004ebfc718e8d1798620432268e77feb6415e2ede0e073c0f4f640ecd2e149a73022100e858f9d81e5430a5"
    "7b36daab8f950a3c64e6ee6a63094d99283aff767e124df0042006d97a01cb31fc123c597fd01280691da68a7e2e90"
    "02c5efd1345684e362e89c0410c91095e1f63541a55c3f82734dc40ec7"
    "0047"
    "3045022100a26d89a57ef78085244ac9186265b6826dc6480e175fb44a58e3582e3f187d730220163b91d9d74ca19f"
    "ebeaf07df82f91c064f04f75b7029a26e7a7d6b137993648"
)

KEYS = {V_KEY_ID: V_KEY}


def _fields(**kw: object) -> dict[str, object]:
    return {"msg_type": V_TYPE, "seq": V_SEQ, "timestamp_ms": V_TS, **kw}


def _vector_gcm() -> bytes:
    return E.seal(_fields(), V_BODY, E.Session(V_DEV, V_KEY_ID, V_KEY, E.CIPHER_SM4_GCM), nonce=V_NONCE)


def _vector_cbc() -> bytes:
    return E.seal(_fields(), V_BODY, E.Session(V_DEV, V_KEY_ID, V_KEY, E.CIPHER_SM4_CBC_HMAC_SM3), nonce=V_IV)


def _vector_keymsg() -> bytes:
    return E.make_key_message(
        E.Session(V_DEV, V_KEY_ID, V_KEY),
        seq=1,
        device_private_key=V_DEV_PRIV,
        platform_public_key=V_PLAT_PUB,
        timestamp_ms=V_TS,
        k_encrypt=V_K_ENC,
        k_sign=V_K_SIG,
    )


# ------------------------------------------------------------------------------------------------
# Vectors
# ------------------------------------------------------------------------------------------------


def test_vector_keys() -> None:
    assert C.sm2_public_key_from_private(V_DEV_PRIV) == V_DEV_PUB
    assert C.sm2_public_key_from_private(V_PLAT_PRIV) == V_PLAT_PUB
    enc, mac = E.derive_cbc_keys(V_KEY)
    assert enc.hex() == V_CBC_ENC_KEY and mac.hex() == V_CBC_MAC_KEY
    assert SC.cbc_keys(V_KEY) == (enc, mac)
    # the documented KDF, spelled out
    z = V_KEY + b"SCENV1-CBC-HMAC-SM3"
    assert (C.sm3(z + b"\x00\x00\x00\x01") + C.sm3(z + b"\x00\x00\x00\x02"))[:48] == enc + mac


def test_vector_gcm_reproduces_exactly() -> None:
    env = _vector_gcm()
    assert env.hex() == V_GCM
    hdr, body = E.open_(env, KEYS)
    assert body == V_BODY
    assert (hdr.device_id, hdr.msg_type, hdr.seq, hdr.timestamp_ms, hdr.cipher, hdr.key_id, hdr.flags) == (
        V_DEV, V_TYPE, V_SEQ, V_TS, 1, V_KEY_ID, 0,
    )
    assert hdr.payload_length == 12 + len(V_BODY) + 16
    h2, b2 = SC.open_envelope(bytes.fromhex(V_GCM), KEYS)
    assert b2 == V_BODY and h2 == hdr.to_dict()


def test_vector_cbc_reproduces_exactly() -> None:
    env = _vector_cbc()
    assert env.hex() == V_CBC
    hdr, body = E.open_(env, KEYS)
    assert body == V_BODY and hdr.cipher == 2 and hdr.payload_length == 16 + 48 + 32
    assert SC.open_envelope(env, KEYS)[1] == V_BODY
    sealed = SC.seal_envelope(
        V_KEY, V_KEY_ID, V_DEV, V_TYPE, V_SEQ, V_BODY, cipher=2, timestamp_ms=V_TS, direction=0, nonce=V_IV
    )
    assert sealed.hex() == V_CBC
    # MAC and ciphertext spelled out with the primitives
    hl = 27 + len(V_DEV)
    enc, mac = bytes.fromhex(V_CBC_ENC_KEY), bytes.fromhex(V_CBC_MAC_KEY)
    assert env[-32:] == C.hmac_sm3(mac, env[:-32])
    assert C.sm4_cbc_decrypt(enc, V_IV, env[hl + 16 : -32]) == V_BODY


def test_vector_keymsg_reproduces_exactly() -> None:
    km = _vector_keymsg()
    assert km.hex() == V_KEYMSG
    hdr, key = E.open_key_message(km, platform_private_key=V_PLAT_PRIV, device_public_key=V_DEV_PUB)
    assert key == V_KEY and hdr.key_id == V_KEY_ID and hdr.seq == 1 and hdr.cipher == 0 and hdr.msg_type == 1
    assert SC.open_key_message(km, V_PLAT_PRIV, V_DEV_PUB) == (V_KEY_ID, V_KEY)


def test_document_contains_the_vectors() -> None:
    docs = [p for p in (ROOT / "docs/platform-envelope.md", ROOT / "docs/platform-protocol.md") if p.exists()]
    if not docs:
        pytest.skip("neither docs/platform-envelope.md nor docs/platform-protocol.md exists")
    text = re.sub(r"\s+", "", "".join(p.read_text(encoding="utf-8") for p in docs)).lower()
    for name, value in {
        "SM4-GCM envelope": V_GCM,
        "SM4-CBC envelope": V_CBC,
        "key message": V_KEYMSG,
        "enc key": V_CBC_ENC_KEY,
        "mac key": V_CBC_MAC_KEY,
        "platform public key": V_PLAT_PUB.hex(),
    }.items():
        assert value in text, f"{name} vector missing from the document"


# ------------------------------------------------------------------------------------------------
# Round trips and cross-implementation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", [E.CIPHER_SM4_GCM, E.CIPHER_SM4_CBC_HMAC_SM3])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1024, 5000])
def test_round_trip_and_independent_verifier(cipher: int, n: int) -> None:
    s = E.Session.generate("DEV-A", 3, cipher)
    body = os.urandom(n)
    env = E.seal({"msg_type": 0x21, "seq": 9}, body, s)
    hdr, out = E.open_(env, {3: s.key})
    assert out == body and hdr.cipher == cipher and hdr.seq == 9 and hdr.direction == E.DIR_UPLINK
    h2, out2 = SC.open_envelope(env, {3: s.key})
    assert out2 == body and h2 == hdr.to_dict()


@pytest.mark.parametrize("cipher", [1, 2])
def test_envelope_opens_what_the_platform_seals(cipher: int) -> None:
    key = os.urandom(16)
    env = SC.seal_envelope(key, 11, "DEV-B", 0x81, 5, b'{"cmd":"restart"}', cipher=cipher)
    hdr, body = E.open_(env, lambda dev, kid: key if (dev, kid) == ("DEV-B", 11) else None, direction=E.DIR_DOWNLINK)
    assert body == b'{"cmd":"restart"}' and hdr.direction == E.DIR_DOWNLINK and hdr.msg_type == 0x81
    with pytest.raises(E.WrongDirection):
        E.open_(env, {11: key}, direction=E.DIR_UPLINK)


def test_platform_side_session_seals_downlink() -> None:
    s = E.Session.generate("DEV-C", 1, direction=E.DIR_DOWNLINK)
    env = E.seal({"msg_type": 0x82, "seq": 1}, b"cfg", s)
    assert SC.open_envelope(env, {1: s.key})[0]["flags"] == 1
    assert E.open_(env, {1: s.key}, direction=E.DIR_DOWNLINK)[1] == b"cfg"


def test_fresh_nonce_per_message() -> None:
    s = E.Session.generate("DEV-A", 1)
    a = E.seal(_fields(), b"same", s)
    b = E.seal(_fields(), b"same", s)
    hl = 27 + 5
    assert a[hl : hl + 12] != b[hl : hl + 12] and a != b


def test_default_timestamp_is_now() -> None:
    import time

    s = E.Session.generate("DEV-A", 1)
    hdr, _ = E.open_(E.seal({"msg_type": 0x10, "seq": 1}, b"", s), {1: s.key})
    assert abs(hdr.timestamp_ms - time.time() * 1000) < 5000


def test_key_message_with_generated_keys_and_custom_user_id() -> None:
    dev_priv, dev_pub = C.sm2_generate_keypair()
    plat_priv, plat_pub = C.sm2_generate_keypair()
    s = E.Session.generate("DEV-K", 100)
    km = E.make_key_message(
        s, seq=1, device_private_key=dev_priv, platform_public_key=plat_pub, user_id=b"DEV-K@station"
    )
    hdr, key = E.open_key_message(
        km, platform_private_key=plat_priv, device_public_key=lambda d: dev_pub, user_id=b"DEV-K@station"
    )
    assert key == s.key and hdr.key_id == 100
    assert SC.open_key_message(km, plat_priv, dev_pub, b"DEV-K@station") == (100, s.key)
    with pytest.raises(E.AuthenticationFailed):
        E.open_key_message(km, platform_private_key=plat_priv, device_public_key=dev_pub)  # default ID


# ------------------------------------------------------------------------------------------------
# Rejections
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", ["gcm", "cbc"])
def test_every_tampered_byte_is_rejected(vector: str) -> None:
    env = bytes.fromhex(V_GCM if vector == "gcm" else V_CBC)
    for pos in range(len(env)):
        bad = bytearray(env)
        bad[pos] ^= 0x01
        with pytest.raises(E.EnvelopeError) as ei:
            E.open_(bytes(bad), KEYS)
        with pytest.raises(SC.SealCheckError):
            SC.open_envelope(bytes(bad), KEYS)
        if pos == 5 or 10 <= pos < 22 or pos >= 27:  # type, seq, timestamp, device id, payload
            assert isinstance(ei.value, E.AuthenticationFailed), (pos, ei.value)
        elif 6 <= pos < 10:  # key id
            assert isinstance(ei.value, E.UnknownKeyId), (pos, ei.value)


def test_header_fields_are_authenticated() -> None:
    env = bytearray(bytes.fromhex(V_GCM))
    env[13] ^= 0x01  # seq 42 -> 43
    with pytest.raises(E.AuthenticationFailed):
        E.open_(bytes(env), KEYS)
    env = bytearray(bytes.fromhex(V_CBC))
    env[3] = 1  # direction flipped (reflection)
    with pytest.raises(E.AuthenticationFailed):
        E.open_(bytes(env), KEYS)


def test_tampered_body_and_tag() -> None:
    for env in (bytes.fromhex(V_GCM), bytes.fromhex(V_CBC)):
        for pos in (-1, -20, 45, 60):
            bad = bytearray(env)
            bad[pos] ^= 0x80
            with pytest.raises(E.AuthenticationFailed):
                E.open_(bytes(bad), KEYS)


def test_wrong_key_id_and_wrong_key() -> None:
    with pytest.raises(E.UnknownKeyId):
        E.open_(bytes.fromhex(V_GCM), {8: V_KEY})
    with pytest.raises(E.UnknownKeyId):
        E.open_(bytes.fromhex(V_CBC), lambda dev, kid: None)
    with pytest.raises(E.AuthenticationFailed):
        E.open_(bytes.fromhex(V_GCM), {V_KEY_ID: os.urandom(16)})
    with pytest.raises(E.AuthenticationFailed):
        E.open_(bytes.fromhex(V_CBC), {V_KEY_ID: os.urandom(16)})
    with pytest.raises(SC.SealCheckError, match="unknown-key"):
        SC.open_envelope(bytes.fromhex(V_GCM), {8: V_KEY})


def test_bad_version_magic_truncation_trailing() -> None:
    env = bytes.fromhex(V_GCM)
    with pytest.raises(E.UnsupportedVersion):
        E.open_(env[:2] + b"\x02" + env[3:], KEYS)
    with pytest.raises(E.MalformedEnvelope):
        E.open_(b"SD" + env[2:], KEYS)
    for cut in range(len(env)):
        with pytest.raises(E.TruncatedEnvelope):
            E.open_(env[:cut], KEYS)
        with pytest.raises(SC.SealCheckError, match="truncated"):
            SC.open_envelope(env[:cut], KEYS)
    with pytest.raises(E.MalformedEnvelope, match="trailing"):
        E.open_(env + b"\x00", KEYS)


def test_malformed_headers() -> None:
    env = bytearray(bytes.fromhex(V_GCM))
    cases = {
        3: 0x02,  # reserved flag bit
        4: 0x03,  # unknown cipher
        26: 0x00,  # empty device id
    }
    for pos, val in cases.items():
        bad = bytearray(env)
        bad[pos] = val
        with pytest.raises(E.MalformedEnvelope):
            E.open_(bytes(bad), KEYS)
    bad = bytearray(env)
    bad[27] = 0x20  # space in device id
    with pytest.raises(E.MalformedEnvelope):
        E.open_(bytes(bad), KEYS)
    bad = bytearray(env)
    bad[5] = E.MSG_TYPE_KEY  # type 0x01 with cipher 1
    with pytest.raises(E.MalformedEnvelope):
        E.open_(bytes(bad), KEYS)


def test_key_message_and_data_envelope_are_not_interchangeable() -> None:
    with pytest.raises(E.MalformedEnvelope):
        E.open_(bytes.fromhex(V_KEYMSG), KEYS)
    with pytest.raises(E.MalformedEnvelope):
        E.open_key_message(bytes.fromhex(V_GCM), platform_private_key=V_PLAT_PRIV, device_public_key=V_DEV_PUB)


def test_key_message_rejections() -> None:
    km = bytes.fromhex(V_KEYMSG)
    hl = 27 + len(V_DEV)

    def open_km(data: bytes, **kw: object) -> tuple[E.Header, bytes]:
        args: dict[str, object] = {"platform_private_key": V_PLAT_PRIV, "device_public_key": V_DEV_PUB, **kw}
        return E.open_key_message(data, **args)  # type: ignore[arg-type]

    for pos in (6, 9, 13, 20, hl - 1, hl + 10, hl + 100, len(km) - 1):  # key id, seq, ts, dev id, C, S
        bad = bytearray(km)
        bad[pos] ^= 0x01
        with pytest.raises(E.AuthenticationFailed):
            open_km(bytes(bad))
        with pytest.raises(SC.SealCheckError, match="auth"):
            SC.open_key_message(bytes(bad), V_PLAT_PRIV, V_DEV_PUB)
    other_priv, other_pub = C.sm2_generate_keypair()
    with pytest.raises(E.AuthenticationFailed):
        open_km(km, device_public_key=other_pub)
    with pytest.raises(E.AuthenticationFailed):
        open_km(km, platform_private_key=other_priv)
    with pytest.raises(SC.SealCheckError, match="auth"):
        SC.open_key_message(km, other_priv, V_DEV_PUB)
    with pytest.raises(E.UnknownDevice):
        open_km(km, device_public_key=lambda dev: None)
    bad = bytearray(km)
    bad[hl + 1] ^= 0x01  # C length
    with pytest.raises(E.MalformedEnvelope):
        open_km(bytes(bad))
    bad = bytearray(km)
    bad[3] = 1  # downlink key message
    with pytest.raises(E.WrongDirection):
        open_km(bytes(bad))


def test_seal_validates_fields() -> None:
    s = E.Session.generate("DEV-A", 1)
    for bad in ({"seq": -1}, {"seq": 2**32}, {"msg_type": 256}, {"timestamp_ms": 2**64}, {"flags": 2}):
        with pytest.raises(ValueError):
            E.seal({**_fields(), **bad}, b"", s)
    with pytest.raises(ValueError):
        E.seal(_fields(msg_type=E.MSG_TYPE_KEY), b"", s)
    with pytest.raises(ValueError):
        E.seal(_fields(device_id="OTHER"), b"", s)
    with pytest.raises(ValueError):
        E.seal(_fields(), b"", s, nonce=bytes(16))
    with pytest.raises(ValueError):
        E.Session("bad id", 1, bytes(16))
    with pytest.raises(ValueError):
        E.Session("DEV", 1, bytes(15))
    with pytest.raises(ValueError):
        E.Session("DEV", 1, bytes(16), cipher=0)
    assert "key" not in repr(E.Session("DEV", 1, bytes(16))).replace("key_id", "")


# ------------------------------------------------------------------------------------------------
# Replay rule
# ------------------------------------------------------------------------------------------------


def test_replay_guard_sequence_numbers() -> None:
    s = E.Session.generate("DEV-R", 5)
    guard = E.ReplayGuard()
    envs = [E.seal({"msg_type": 0x10, "seq": n}, b"x", s) for n in (1, 2, 3)]
    for env in envs[:2]:
        hdr, _ = E.open_(env, {5: s.key})
        guard.accept(hdr)
    hdr2, _ = E.open_(envs[1], {5: s.key})
    with pytest.raises(E.ReplayError):
        guard.accept(hdr2)  # replayed
    hdr1, _ = E.open_(envs[0], {5: s.key})
    with pytest.raises(E.ReplayError):
        guard.check(hdr1)  # older
    guard.accept(E.open_(envs[2], {5: s.key})[0])
    # other key id / other direction / other device: independent counters
    s2 = E.Session.generate("DEV-R", 6)
    guard.accept(E.open_(E.seal({"msg_type": 0x10, "seq": 1}, b"", s2), {6: s2.key})[0])
    down = E.Session("DEV-R", 5, s.key, direction=E.DIR_DOWNLINK)
    guard.accept(E.open_(E.seal({"msg_type": 0x81, "seq": 1}, b"", down), {5: s.key})[0])
    snap = guard.snapshot()
    assert snap[("DEV-R", 5, 0)] == 3 and snap[("DEV-R", 6, 0)] == 1 and snap[("DEV-R", 5, 1)] == 1
    restored = E.ReplayGuard(snap)
    with pytest.raises(E.ReplayError):
        restored.accept(hdr2)
    restored.forget("DEV-R", 5)
    restored.accept(hdr2)


def test_replay_guard_key_ids() -> None:
    guard = E.ReplayGuard()
    hdr, _ = E.open_key_message(bytes.fromhex(V_KEYMSG), platform_private_key=V_PLAT_PRIV, device_public_key=V_DEV_PUB)
    guard.accept(hdr)
    with pytest.raises(E.ReplayError, match="key id"):
        guard.accept(hdr)


# ------------------------------------------------------------------------------------------------
# Fuzzing: parsers never raise anything but their own exception class
# ------------------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=300))
def test_fuzz_garbage(data: bytes) -> None:
    for prefix in (b"", b"SC\x01", bytes.fromhex(V_GCM)[:27]):
        try:
            E.open_(prefix + data, KEYS)
        except E.EnvelopeError:
            pass
        try:
            SC.open_envelope(prefix + data, KEYS)
        except SC.SealCheckError:
            pass


@_FUZZ
@given(
    st.sampled_from([V_GCM, V_CBC]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 250),
    st.binary(max_size=8),
)
def test_fuzz_mutated_envelopes(vec: str, edits: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    env = bytearray(bytes.fromhex(vec))
    for pos, val in edits:
        if pos < len(env):
            env[pos] = val
    data = bytes(env[: max(cut, 0)] if cut < len(env) else env) + tail
    try:
        hdr, body = E.open_(data, KEYS)
    except E.EnvelopeError:
        ok_e = False
    else:
        ok_e = True
        assert body == V_BODY and data == bytes.fromhex(vec)
    try:
        SC.open_envelope(data, KEYS)
    except SC.SealCheckError:
        assert not ok_e
    else:
        assert ok_e


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 250), st.integers(0, 255)), min_size=1, max_size=3), st.binary(max_size=4))
def test_fuzz_mutated_key_messages(edits: list[tuple[int, int]], tail: bytes) -> None:
    km = bytearray(bytes.fromhex(V_KEYMSG))
    for pos, val in edits:
        if pos < len(km):
            km[pos] = val
    data = bytes(km) + tail
    try:
        _hdr, key = E.open_key_message(data, platform_private_key=V_PLAT_PRIV, device_public_key=V_DEV_PUB)
    except E.EnvelopeError:
        pass
    else:
        assert key == V_KEY and data == bytes.fromhex(V_KEYMSG)
    try:
        SC.open_key_message(data, V_PLAT_PRIV, V_DEV_PUB)
    except SC.SealCheckError:
        pass


@settings(max_examples=100, deadline=None, database=None)
@given(
    body=st.binary(max_size=600),
    seq=st.integers(0, 2**32 - 1),
    ts=st.integers(0, 2**64 - 1),
    msg_type=st.integers(2, 255),
    key_id=st.integers(0, 2**32 - 1),
    dev=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
    cipher=st.sampled_from([1, 2]),
    direction=st.sampled_from([0, 1]),
)
def test_fuzz_round_trip(
    body: bytes, seq: int, ts: int, msg_type: int, key_id: int, dev: str, cipher: int, direction: int
) -> None:
    s = E.Session(dev, key_id, os.urandom(16), cipher, direction)
    env = E.seal({"msg_type": msg_type, "seq": seq, "timestamp_ms": ts}, body, s)
    hdr, out = E.open_(env, {key_id: s.key}, direction=direction)
    assert out == body
    assert (hdr.device_id, hdr.seq, hdr.timestamp_ms, hdr.msg_type, hdr.key_id) == (dev, seq, ts, msg_type, key_id)
    h2, out2 = SC.open_envelope(env, {key_id: s.key})
    assert out2 == body and h2 == hdr.to_dict()


def test_seal_check_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert SC.main(["envelope", "--key", f"7={V_KEY.hex()}", V_GCM]) == 0
    assert V_BODY.hex() in capsys.readouterr().out
    assert SC.main(["envelope", "--key", f"8={V_KEY.hex()}", V_GCM]) == 1
    assert SC.main(["keymsg", "--platform-key", V_PLAT_PRIV.hex(), "--device-pub", V_DEV_PUB.hex(), V_KEYMSG]) == 0
    assert f"session_key={V_KEY.hex()}" in capsys.readouterr().out


def test_document_openssl_commands_run(tmp_path: Path) -> None:
    """Runs the document's openssl shell block (section 10) and checks its output."""
    import shutil
    import subprocess

    docs = [p for p in (ROOT / "docs/platform-envelope.md", ROOT / "docs/platform-protocol.md") if p.exists()]
    blocks = [b for p in docs for b in re.findall(r"```bash\n(.*?)```", p.read_text(encoding="utf-8"), re.S)]
    script = next((b for b in blocks if "openssl pkeyutl -decrypt" in b and V_GCM in b), None)
    if script is None:
        pytest.skip("the document's openssl block is not present")
    for tool in ("bash", "xxd", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    res = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, timeout=120)
    if res.returncode != 0 and b"nknown cipher" in res.stderr:
        pytest.skip(f"openssl CLI lacks an SM algorithm: {res.stderr.decode()[:200]}")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert out.count(V_BODY.decode()) == 2
    assert f"enc_key={V_CBC_ENC_KEY} mac_key={V_CBC_MAC_KEY}" in out
    assert V_CBC[-64:] in out
    assert "Signature Verified Successfully" in out
    assert V_KEY.hex() in out
