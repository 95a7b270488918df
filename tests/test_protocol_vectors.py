"""The data-message vector of docs/platform-protocol.md §11: the device code reproduces it byte for
byte, and the reference platform's independent code opens it."""

import json
from pathlib import Path

from tools.platform import seal_check
from uplink import envelope as env

VECTOR = json.loads((Path(__file__).parent / "vectors" / "data_message.json").read_text())


def test_device_reproduces_the_vector():
    session = env.Session(VECTOR["device_id"], VECTOR["key_id"], bytes.fromhex(VECTOR["session_key"]))
    sealed = env.seal({"msg_type": VECTOR["msg_type"], "seq": VECTOR["seq"], "timestamp_ms": VECTOR["timestamp_ms"]},
                      VECTOR["body_json"].encode(), session, nonce=bytes.fromhex(VECTOR["nonce"]))
    assert sealed.hex() == VECTOR["envelope_hex"]


def test_independent_platform_code_opens_it():
    header, body = seal_check.open_envelope(bytes.fromhex(VECTOR["envelope_hex"]),
                                            {VECTOR["key_id"]: bytes.fromhex(VECTOR["session_key"])})
    assert header["msg_type"] == 0x10 and header["seq"] == 1 and header["device_id"] == VECTOR["device_id"]
    batch = json.loads(body)
    assert batch["records"][0]["stream"] == "sale:3" and batch["records"][0]["body"]["volume"] == 25.31


def test_a_flipped_bit_is_rejected_by_both():
    data = bytearray.fromhex(VECTOR["envelope_hex"])
    data[-20] ^= 0x01
    try:
        env.open_(bytes(data), {VECTOR["key_id"]: bytes.fromhex(VECTOR["session_key"])})
        raise AssertionError("device code accepted a tampered envelope")
    except env.AuthenticationFailed:
        pass
    try:
        seal_check.open_envelope(bytes(data), {VECTOR["key_id"]: bytes.fromhex(VECTOR["session_key"])})
        raise AssertionError("platform code accepted a tampered envelope")
    except seal_check.SealCheckError:
        pass
