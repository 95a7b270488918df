"""Tests for drivers.vr.codec: the public vectors, checksum rule, error frames, inactive tanks,
encode/decode round trips, framer resynchronisation and garbage resistance."""

from __future__ import annotations

import json
import struct
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.checksum import sum16_ascii
from drivers.vr.codec import (
    DELIVERY_FIELDS,
    ERROR_FRAME,
    ERROR_FRAME_EMULATOR,
    INVENTORY_FIELDS,
    LEAK_TEST_FIELDS,
    ClockReport,
    ClockSetReply,
    CsldReport,
    CsldResult,
    Delivery,
    DeliveryReport,
    ErrorResponse,
    Frame,
    FramingError,
    InventoryReport,
    LeakTestHistory,
    LeakTestHistoryEntry,
    LeakTestReport,
    LeakTestResult,
    LeakTestResults,
    ProductCodes,
    RawResponse,
    Request,
    SystemAlarm,
    SystemStatus,
    SystemUnits,
    TankAlarmStatus,
    TankDeliveries,
    TankInventory,
    TankLabel,
    TankLabels,
    TankLeakTest,
    TankLeakTestHistory,
    TankLeakTestResults,
    TankProductCode,
    TankStatusReport,
    UnitSystem,
    VersionReport,
    VRFrameError,
    VRFramer,
    build_request,
    build_set_clock,
    checksum_hex,
    decode_capture,
    encode_response,
    float_to_hex,
    frame_response,
    hex_to_float,
    is_error_frame,
    parse_envelope,
    parse_request,
    parse_response,
)

VECTORS_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "vr_given.json"
VECTORS = json.loads(VECTORS_PATH.read_text(encoding="utf-8")) if VECTORS_PATH.is_file() else None
ABSENT = f"VR vectors not found at {VECTORS_PATH} (shared/vectors/vr_given.json beside the repo)"
needs_vectors = pytest.mark.skipif(VECTORS is None, reason=ABSENT)


def _frame_params():
    if VECTORS is None:
        return [pytest.param(None, id="vectors-absent", marks=pytest.mark.skip(reason=ABSENT))]
    return [pytest.param(v, id=v["id"]) for v in VECTORS["frames"]]


def _raw(vector) -> bytes:
    return vector["raw"].encode("latin-1")


INVENTORY_1 = (b"\x01i20100200410001201100020744DB800044DAE00045072000420341ED0000000042831DB700000000"
               b"&&EF32\x03")
STATUS_1 = b"\x01i101002312301342020402&&FB3B\x03"
T0 = datetime(2024, 5, 6, 7, 8)


# --------------------------------------------------------------------------------------------
# The public vectors
# --------------------------------------------------------------------------------------------

# Vector key -> codec key where the vector file's informal names differ from the dataclass fields.
ALIASES = {"type": "alarm_type", "tank_or_sensor": "device"}


def assert_matches(expected, actual, path="decoded"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key == "fields":  # the codec flattens the named floats into the record
                assert_matches(value, actual, f"{path}.fields")
                continue
            name = ALIASES.get(key, key)
            assert name in actual, f"{path}.{key} missing from {sorted(actual)}"
            assert_matches(value, actual[name], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_matches(e, a, f"{path}[{i}]")
    elif isinstance(expected, str) and isinstance(actual, int) and not isinstance(actual, bool):
        assert int(expected) == actual, f"{path}: {actual!r} != {expected!r}"  # "02" in the vector
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("vector", _frame_params())
def test_vector_decodes_to_stated_values(vector):
    raw = _raw(vector)
    items = decode_capture(raw)
    assert len(items) == 1
    item = items[0]
    assert item["kind"] == "response"
    assert item["checksum"] == vector["checksum_received"]
    assert item["checksum_computed"] == vector["checksum_computed"]
    assert item["checksum_valid"] is vector["checksum_ok"]
    assert "error" not in item, item.get("error")
    json.dumps(items, allow_nan=False)
    assert_matches(vector["decoded"], {**item, **item["fields"]})


@pytest.mark.parametrize("vector", _frame_params())
def test_vector_typed_parse_and_reencode(vector):
    raw = _raw(vector)
    resp = parse_response(raw, expect=vector["decoded"]["function"])
    assert resp.function == vector["decoded"]["function"]
    assert resp.console_time.strftime("%Y-%m-%dT%H:%M") == vector["decoded"]["console_time"]
    # The encoder reproduces the console's bytes exactly (upper-case hex, same field counts).
    assert encode_response(resp) == raw


@pytest.mark.parametrize("vector", _frame_params())
def test_vector_checksum_rule(vector):
    raw = _raw(vector)
    body = raw[:raw.rindex(b"&&") + 2]  # SOH through the second '&', ETX excluded
    assert checksum_hex(body) == vector["checksum_computed"]
    assert (sum(body) + int(vector["checksum_received"], 16)) % 0x10000 == 0
    assert f"{sum16_ascii(body[1:]):04X}" != vector["checksum_received"]  # SOH is inside the sum


@needs_vectors
def test_vector_error_frames_and_floats():
    for frame in VECTORS["other"]["error_frames"].values():
        assert checksum_hex(frame["checksum_of"].encode("latin-1")) == frame["computed"]
        assert parse_response(frame["raw"].encode("latin-1")) == ErrorResponse("manual", True)
    for text, value in VECTORS["other"]["manual_float_examples"].items():
        assert hex_to_float(text) == value
        assert hex_to_float(text.lower()) == value
        assert float_to_hex(value) == text


def test_vector_typed_values():
    inv = parse_response(INVENTORY_1)
    assert isinstance(inv, InventoryReport)
    (t,) = inv.tanks
    assert (t.tank, t.product, t.status, t.nfields) == (1, "1", 2, 7)
    assert t.leak_test_in_progress and not t.delivery_in_progress and not t.invalid_fuel_height
    assert (t.volume, t.tc_volume, t.ullage, t.water, t.water_volume) == (1756.0, 1751.0, 2162.0, 0.0, 0.0)
    assert t.user_ullage is None and t.extra == ()
    status = parse_response(STATUS_1)
    assert status == SystemStatus("i10100", datetime(2023, 12, 30, 13, 42), (SystemAlarm(2, 4, 2),))


@needs_vectors
def test_vector_delivery_details():
    vector = next(v for v in VECTORS["frames"] if v["decoded"]["function"] == "i20200")
    rep = parse_response(_raw(vector))
    assert isinstance(rep, DeliveryReport)
    (tank,) = rep.tanks
    assert len(tank.deliveries) == 10  # dd is decimal: "10", not 16
    first = tank.deliveries[0]
    assert (first.start, first.end) == (datetime(2021, 4, 23, 9, 24), datetime(2021, 4, 23, 9, 33))
    assert first.delivered_volume == 5626.0 - 4612.0
    assert first.delivered_tc_volume == 5601.0 - 4592.0
    assert [d.start for d in tank.deliveries] == sorted((d.start for d in tank.deliveries), reverse=True)


# --------------------------------------------------------------------------------------------
# Checksum, error frames, inactive tanks, requests
# --------------------------------------------------------------------------------------------


def test_wrong_checksum_rejected():
    bad = STATUS_1.replace(b"FB3B", b"FB3A")
    with pytest.raises(VRFrameError, match="checksum mismatch"):
        parse_response(bad)
    altered = STATUS_1.replace(b"i101", b"j101")  # eredden's altered-byte case, same checksum
    with pytest.raises(VRFrameError):
        parse_response(altered)
    # Still decodable for a technician, flagged invalid.
    assert isinstance(parse_response(bad, verify_checksum=False), SystemStatus)
    (item,) = decode_capture(bad)
    assert item["checksum_valid"] is False and item["checksum_computed"] == "FB3B"
    assert item["fields"]["alarms"] == [{"category": 2, "alarm_type": 4, "device": 2}]


def test_lower_case_hex_and_missing_etx_accepted():
    body = INVENTORY_1[:INVENTORY_1.rindex(b"&&") + 2].replace(b"44DB8000", b"44db8000")
    lower = body + checksum_hex(body).lower().encode() + b"\x03"  # as PortVeederRootSim sends it
    assert parse_response(lower) == parse_response(INVENTORY_1)
    assert parse_response(INVENTORY_1[:-1]) == parse_response(INVENTORY_1)
    assert parse_envelope(INVENTORY_1[:-1]).terminated is False


def test_error_frames_recognised():
    assert parse_response(ERROR_FRAME) == ErrorResponse("manual", True)
    assert parse_response(ERROR_FRAME_EMULATOR) == ErrorResponse("emulator", True)
    assert parse_response(ERROR_FRAME, expect="i20C00") == ErrorResponse("manual", True)
    assert parse_response(ERROR_FRAME[:-1]) == ErrorResponse("manual", True)
    assert is_error_frame(ERROR_FRAME) and is_error_frame(ERROR_FRAME_EMULATOR)
    assert not is_error_frame(STATUS_1)
    assert encode_response(ErrorResponse()) == ERROR_FRAME
    assert encode_response(ErrorResponse("emulator")) == ERROR_FRAME_EMULATOR
    with pytest.raises(VRFrameError, match="wrong checksum"):
        parse_response(b"\x019999FF1C\x03")
    assert parse_response(b"\x019999FF1C\x03", verify_checksum=False) == ErrorResponse("manual", False)
    # Request for an unknown code, then the refusal (reference §10.8).
    items = decode_capture(b"\x01i99900" + ERROR_FRAME)
    assert [i["kind"] for i in items] == ["request", "error_frame"]
    assert items[1]["checksum_valid"] is True and items[1]["answers_request"] == "i99900"


def test_inactive_tanks_and_empty_reports():
    data = "01A????07" + "????????" * 7 + "02B000007" + float_to_hex(12.5) + "????????" * 6
    rep = parse_response(frame_response("i20100", T0, data))
    t1, t2 = rep.tanks
    assert t1.status is None and t1.volume is None and t1.temperature is None
    assert t2.status == 0 and t2.volume == 12.5 and t2.tc_volume is None
    assert encode_response(rep) == frame_response("i20100", T0, data)
    # bare frame: valid code, nothing stored
    assert parse_response(frame_response("i20100", T0, "")) == InventoryReport("i20100", T0, ())
    # i20C for a tank with no delivery: dd = 00
    none = parse_response(frame_response("i20C03", T0, "031" + "00"))
    assert none == DeliveryReport("i20C03", T0, (TankDeliveries(3, "1", ()),))
    # i101 with no alarms: no records, or a defensive 000000 record
    assert parse_response(frame_response("i10100", T0, "")).alarms == ()
    assert parse_response(frame_response("i10100", T0, "000000")).alarms == ()
    # refused clock set: ten '?'
    reply = parse_response(frame_response("s50100", T0, "?" * 10))
    assert reply == ClockSetReply("s50100", T0, None) and not reply.accepted


def test_any_field_count_is_consumed_structurally():
    old = "01A0000" + "03" + float_to_hex(1.0) * 3  # older software: NN = 03
    new = "02B0000" + "09" + float_to_hex(2.0) * 9  # newer: 8 named + 1 extra
    t1, t2 = parse_response(frame_response("i20100", T0, old + new)).tanks
    assert (t1.nfields, t1.ullage, t1.height) == (3, 1.0, None)
    assert (t2.nfields, t2.user_ullage, t2.extra) == (9, 2.0, (2.0,))


def test_truncated_and_malformed_data_raise_clear_errors():
    with pytest.raises(VRFrameError, match=r"i20100: .*data ends"):
        parse_response(frame_response("i20100", T0, "01A000007" + "44DB8000"))
    with pytest.raises(VRFrameError, match="not 8 hex digits|neither 8 hex"):
        parse_response(frame_response("i20100", T0, "01A000001" + "44DB80ZZ"))
    with pytest.raises(VRFrameError, match="not a valid date"):
        parse_response(frame_response("i50100", T0, "2513011200"))
    with pytest.raises(VRFrameError, match="does not answer"):
        parse_response(INVENTORY_1, expect="i20200")
    with pytest.raises(VRFrameError, match="SOH"):
        parse_response(b"i20100")
    with pytest.raises(VRFrameError):
        parse_response("not bytes")  # type: ignore[arg-type]
    with pytest.raises(VRFrameError, match="whole number"):
        parse_response(frame_response("i10100", T0, "02040"))


def test_requests():
    assert build_request("i201") == b"\x01i20100"
    assert bytes.fromhex("01 69 32 30 31 30 30") == build_request("i201", 0)
    assert build_request("i201", 3) == b"\x01i20103"
    for code in ("i20C", "i205", "i101", "i501"):
        assert build_request(code) == b"\x01" + code.encode() + b"00"
    assert build_set_clock(datetime(2025, 6, 29, 15, 0, 42)) == b"\x01s501002506291500"
    assert build_request("i201", security_code="123456") == b"\x01123456i20100"
    assert build_request("s611", 1, "ABC", cr=True) == b"\x01s61101ABC\r"
    assert parse_request(b"\x01123456i20100") == Request("i20100", "", "123456", False)
    assert parse_request(b"\x01s501002506291500") == Request("s50100", "2506291500", None, False)
    assert parse_request(b"\x01s61101ABC\r") == Request("s61101", "ABC", None, True)
    req = parse_request(b"\x01i20103")
    assert (req.report, req.device) == ("i201", 3)
    for bad in (lambda: build_request("x201"), lambda: build_request("i201", 100),
                lambda: build_request("i201", security_code="12345"),
                lambda: build_request("i201", data="\x03"), lambda: build_set_clock(datetime(1999, 1, 1))):
        with pytest.raises(ValueError):
            bad()
    for bad_frame in (b"i20100", b"\x01", b"\x01xyz", b"\x01i201", b"\x01" + b"i20100" + b"0" * 200):
        with pytest.raises(VRFrameError):
            parse_request(bad_frame)


def test_units_and_version():
    units = parse_response(frame_response("i50500", T0, "2"))
    assert units == SystemUnits("i50500", T0, UnitSystem.METRIC, "")
    assert (units.units.volume_unit, units.units.height_unit, units.units.temperature_unit) == ("L", "mm", "C")
    assert parse_response(frame_response("i51700", T0, "101")).extra == "01"
    with pytest.raises(VRFrameError, match="not 1"):
        parse_response(frame_response("i50500", T0, "7"))
    items = decode_capture(frame_response("i50500", T0, "1") + INVENTORY_1)
    assert items[1]["units"]["system"] == "US" and items[1]["units"]["volume"] == "gal"
    text = "SOFTWARE# 346333-102-B  CREATED - 13.07.11.09.42"
    ver = parse_response(frame_response("i90200", T0, text))
    assert ver == VersionReport("i90200", T0, text)
    assert ver.software_number == "346333-102-B" and ver.created == datetime(2013, 7, 11, 9, 42)
    raw = parse_response(frame_response("i11300", T0, "ANYTHING"))
    assert raw == RawResponse("i11300", T0, "ANYTHING")


def test_encoder_rejects_unsendable_values():
    with pytest.raises(ValueError, match="nfields"):
        encode_response(InventoryReport("i20100", T0, (TankInventory(1, "A", 0, 2, volume=1.0, ullage=3.0),)))
    with pytest.raises(ValueError):
        encode_response(InventoryReport("i20100", T0, (TankInventory(100, "A"),)))
    with pytest.raises(ValueError):
        encode_response(InventoryReport("i20100", T0, (TankInventory(1, "AB"),)))
    with pytest.raises(ValueError):
        encode_response(InventoryReport("i20100", T0, (TankInventory(1, "A", volume=1e39),)))
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_response(InventoryReport("i20200", T0, ()))
    with pytest.raises(ValueError, match="all normal"):
        encode_response(SystemStatus("i10100", T0, (SystemAlarm(0, 0, 0),)))
    with pytest.raises(ValueError):
        encode_response(TankLabels("i60200", T0, (TankLabel(1, "X" * 21),)))


def test_float_hex_exact_for_every_non_nan_pattern_sample():
    for bits in (0, 0x80000000, 0x3F800000, 0x7F7FFFFF, 0x00000001, 0x7F800000, 0xFF800000, 0xC2C7FAE1):
        text = f"{bits:08X}"
        assert float_to_hex(hex_to_float(text)) == text
    assert hex_to_float("????????") is None and float_to_hex(None) == "????????"
    for bad in ("1234567", "123456789", "1234567G", " 1234567", 12345678):
        with pytest.raises(VRFrameError):
            hex_to_float(bad)  # type: ignore[arg-type]


@given(st.integers(0, 0xFFFFFFFF))
def test_float_hex_round_trip_bits(bits):
    text = f"{bits:08X}"
    value = hex_to_float(text)
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x007FFFFF:
        return  # NaN payloads are not numbers; consoles do not send them
    assert float_to_hex(value) == text
    assert struct.pack(">f", value) == bytes.fromhex(text)


# --------------------------------------------------------------------------------------------
# Hypothesis round trips: encode -> decode for every response type
# --------------------------------------------------------------------------------------------

f32 = st.floats(width=32, allow_nan=False)
opt_f32 = st.none() | f32
stamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59)).map(
    lambda d: d.replace(second=0, microsecond=0))
opt_stamps = st.none() | stamps
tank_no = st.integers(0, 99)
dec2 = st.integers(0, 99)
product = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
tanks_of = lambda s: st.lists(s, max_size=20).map(tuple)  # noqa: E731


def function(code):
    return st.integers(0, 99).map(lambda t: f"{code}{t:02d}")


@st.composite
def named_floats(draw, names, max_n):
    n = draw(st.integers(0, max_n))
    values = draw(st.lists(opt_f32, min_size=n, max_size=n))
    return n, dict(zip(names, values)), tuple(values[len(names):])


@st.composite
def tank_inventory(draw):
    n, named, extra = draw(named_floats(INVENTORY_FIELDS, 12))
    status = draw(st.none() | st.integers(0, 0xFFFF))
    return TankInventory(draw(tank_no), draw(product), status, n, **named, extra=extra)


@st.composite
def delivery(draw):
    n, named, extra = draw(named_floats(DELIVERY_FIELDS, 16))
    return Delivery(draw(opt_stamps), draw(opt_stamps), n, **named, extra=extra)


@st.composite
def leak_test(draw):
    n, named, extra = draw(named_floats(LEAK_TEST_FIELDS, 12))
    return TankLeakTest(draw(tank_no), draw(product), draw(opt_stamps), draw(dec2), n, **named,
                        hourly_changes=extra)


RESPONSES = {
    "i101": st.builds(SystemStatus, function("i101"), stamps,
                      st.lists(st.builds(SystemAlarm, st.integers(1, 99), dec2, dec2), max_size=30).map(tuple)),
    "i201": st.builds(InventoryReport, function("i201"), stamps, tanks_of(tank_inventory())),
    "i20I": st.builds(InventoryReport, function("i20I"), stamps, tanks_of(tank_inventory())),
    "i202": st.builds(DeliveryReport, function("i202"), stamps, tanks_of(
        st.builds(TankDeliveries, tank_no, product, st.lists(delivery(), max_size=12).map(tuple)))),
    "i20C": st.builds(DeliveryReport, function("i20C"), stamps, tanks_of(
        st.builds(TankDeliveries, tank_no, product, st.lists(delivery(), max_size=1).map(tuple)))),
    "i203": st.builds(LeakTestReport, function("i203"), stamps, tanks_of(leak_test())),
    "i205": st.builds(TankStatusReport, function("i205"), stamps, tanks_of(
        st.builds(TankAlarmStatus, tank_no, st.lists(dec2, max_size=30).map(tuple)))),
    "i207": st.builds(LeakTestHistory, function("i207"), stamps, tanks_of(st.builds(
        TankLeakTestHistory, tank_no, st.lists(st.builds(
            LeakTestHistoryEntry, dec2, dec2, dec2, opt_stamps, opt_f32, opt_f32, opt_f32),
            max_size=8).map(tuple)))),
    "i208": st.builds(LeakTestResults, function("i208"), stamps, tanks_of(st.builds(
        TankLeakTestResults, tank_no, st.lists(st.builds(
            LeakTestResult, dec2, dec2, opt_stamps, dec2, opt_f32, opt_f32, opt_f32),
            max_size=8).map(tuple)))),
    "i251": st.builds(CsldReport, function("i251"), stamps, tanks_of(st.builds(CsldResult, tank_no, dec2))),
    "i501": st.builds(ClockReport, function("i501"), stamps, stamps),
    "s501": st.builds(ClockSetReply, function("s501"), stamps, opt_stamps),
    "i505": st.builds(SystemUnits, function("i505"), stamps, st.sampled_from(UnitSystem),
                      st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6)),
    "i602": st.builds(TankLabels, function("i602"), stamps, tanks_of(st.builds(
        TankLabel, tank_no,
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
            lambda s: s.rstrip(" "))))),
    "i603": st.builds(ProductCodes, function("i603"), stamps, tanks_of(st.builds(TankProductCode, tank_no,
                                                                                  product))),
    "i901": st.builds(VersionReport, function("i901"), stamps, printable),
    "i902": st.builds(VersionReport, function("i902"), stamps, printable),
    "raw": st.builds(RawResponse, st.sampled_from(["i11300", "i20600", "i88101", "i21400"]), stamps,
                     printable),
    "error": st.builds(ErrorResponse, st.sampled_from(["manual", "emulator"])),
}


@pytest.mark.parametrize("kind", sorted(RESPONSES))
def test_round_trip(kind):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(RESPONSES[kind], st.sampled_from([b"\x03", b"", b"\r\n"]))
    def check(resp, terminator):
        frame = encode_response(resp, terminator=terminator)
        expect = None if isinstance(resp, ErrorResponse) else resp.function
        assert parse_response(frame, expect=expect, terminator=terminator) == resp
        # The framer returns it whole, whatever the terminator.
        framer = VRFramer(terminator=terminator, accept_requests=False)
        events = framer.feed(frame) + framer.flush()
        assert len(events) == 1 and isinstance(events[0], Frame), events
        assert events[0].raw == frame
        items = decode_capture(frame, terminator=terminator)
        assert len(items) == 1 and "error" not in items[0], items
        json.dumps(items, allow_nan=False)

    check()


# --------------------------------------------------------------------------------------------
# Framer
# --------------------------------------------------------------------------------------------


def _stream() -> bytes:
    parts = [b"\x00\x7f~noise", build_request("i201"), INVENTORY_1, b"\r\n", STATUS_1, ERROR_FRAME,
             b"garbage", ERROR_FRAME_EMULATOR, build_set_clock(T0) + b"\r",
             frame_response("s50100", T0, "2405060708"), build_request("i101", security_code="123456"),
             STATUS_1[:-1], INVENTORY_1[:40], STATUS_1]
    if VECTORS is not None:
        parts += [_raw(v) for v in VECTORS["frames"]]
    return b"".join(parts)


def _split(events):
    frames = [e for e in events if isinstance(e, Frame)]
    # Padding bytes (NUL, CR, LF, ETX) between frames are reported only inside a longer noise run,
    # so compare the noise without them: chunking may separate them from the rest.
    noise = b"".join(e.raw for e in events if isinstance(e, FramingError))
    return frames, noise.translate(None, b"\r\n\x00\x03")


def _reference():
    framer = VRFramer()
    return _split(framer.feed(_stream()) + framer.flush())


def test_framer_glued_stream():
    frames, noise = _reference()
    kinds = [f.kind for f in frames]
    n_vec = 0 if VECTORS is None else len(VECTORS["frames"])
    assert kinds == ["request", "response", "response", "error", "error", "request", "response", "request",
                     "response", "response"] + ["response"] * n_vec
    assert frames[7].raw == b"\x01123456i10100"
    assert frames[8].raw == STATUS_1[:-1] and frames[8].terminated is False
    assert noise == b"\x7f~noisegarbage" + INVENTORY_1[:40]


def test_framer_split_at_every_byte_position():
    stream = _stream()
    expected = _reference()
    for i in range(len(stream) + 1):
        framer = VRFramer()
        got = framer.feed(stream[:i]) + framer.feed(stream[i:]) + framer.flush()
        assert _split(got) == expected, f"split at {i}"


def test_framer_byte_by_byte():
    framer = VRFramer()
    events = []
    for b in _stream():
        events += framer.feed(bytes([b]))
    assert _split(events + framer.flush()) == _reference()


def test_framer_three_way_splits_of_one_frame():
    frame = INVENTORY_1
    for i in range(1, len(frame)):
        for j in range(i, len(frame), 7):
            framer = VRFramer(accept_requests=False)
            events = framer.feed(frame[:i]) + framer.feed(frame[i:j]) + framer.feed(frame[j:])
            assert events == [Frame("response", frame, True)], (i, j)
            assert framer.pending == 0


def test_framer_terminators_and_limits():
    # Custom end-of-message characters replace ETX; split between them.
    frame = INVENTORY_1[:-1] + b"\r\n"
    framer = VRFramer(terminator=b"\r\n")
    assert framer.feed(frame[:-1]) == []
    assert framer.feed(frame[-1:]) == [Frame("response", frame, True)]
    # A console that omits ETX entirely.
    framer = VRFramer(terminator=b"")
    assert framer.feed(INVENTORY_1[:-1]) == [Frame("response", INVENTORY_1[:-1], True)]
    # Default framer: an unterminated frame is finished by flush().
    framer = VRFramer()
    assert framer.feed(INVENTORY_1[:-1]) == []
    assert framer.flush() == [Frame("response", INVENTORY_1[:-1], False)]
    # Trailing junk after a correct checksum still ends the frame.
    framer = VRFramer()
    events = framer.feed(INVENTORY_1[:-1] + b"zz")
    assert events[0] == Frame("response", INVENTORY_1[:-1], False)
    assert isinstance(events[1], FramingError)
    # Overlong garbage after an SOH is dropped, not buffered forever.
    framer = VRFramer(max_frame=100)
    events = framer.feed(b"\x01" + b"A" * 200)
    assert len(events) == 1 and "longer than" in events[0].reason and framer.pending == 0
    # Display-format reply: no checksum, reported as such.
    framer = VRFramer()
    events = framer.feed(b"\x01\r\nI20100\r\nJAN 1, 2024  8:00 AM\r\n\x03")
    assert len(events) == 1 and "display format" in events[0].reason
    # Responses-only mode refuses a bare request.
    framer = VRFramer(accept_requests=False)
    events = framer.feed(b"\x01i20100") + framer.flush()
    assert len(events) == 1 and isinstance(events[0], FramingError)


def test_framer_strips_parity_bit():
    def even_parity(b):
        return b | 0x80 if bin(b).count("1") % 2 else b

    noisy = bytes(even_parity(b) for b in INVENTORY_1)
    assert VRFramer().feed(noisy) != [Frame("response", INVENTORY_1, True)]
    assert VRFramer(strip_parity=True).feed(noisy) == [Frame("response", INVENTORY_1, True)]
    (item,) = decode_capture(noisy, strip_parity=True)
    assert item["checksum_valid"] is True


# --------------------------------------------------------------------------------------------
# Garbage never raises anything but VRFrameError
# --------------------------------------------------------------------------------------------

TOKENS = [b"\x01", b"\x03", b"\r", b"\n", b"&&", b"&", b"9999", b"FF1B", b"FECF", b"i20100", b"i20200",
          b"s50100", b"i10100", b"123456", b"2004100012", b"9913320000", b"?", b"????????", b"0", b"07",
          b"0A", b"FF", b"1", b"A", b"z", b"44DB8000", b"\xff", b"\x81", b"EF32"]
protocolish = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
garbage = st.binary(max_size=400) | protocolish


def _only_frame_errors(fn, data):
    try:
        fn(data)
    except VRFrameError:
        pass


@settings(max_examples=400, deadline=None)
@given(garbage)
def test_garbage_parsers_raise_only_vrframeerror(data):
    _only_frame_errors(parse_response, data)
    _only_frame_errors(lambda d: parse_response(d, verify_checksum=False), data)
    _only_frame_errors(lambda d: parse_response(b"\x01" + d, verify_checksum=False), data)
    _only_frame_errors(parse_envelope, data)
    _only_frame_errors(parse_request, data)
    _only_frame_errors(lambda d: parse_request(b"\x01" + d), data)
    _only_frame_errors(lambda d: hex_to_float(d.decode("latin-1")[:8]), data)
    is_error_frame(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(garbage, max_size=6))
def test_garbage_framer_and_capture_never_raise(chunks):
    framer = VRFramer()
    events = []
    for chunk in chunks:
        events += framer.feed(chunk)
    events += framer.flush()
    assert framer.pending == 0
    # Every input byte is accounted for, in order: in a frame, in a framing error, or dropped as
    # line-end / NUL / ETX padding between frames.
    stream, at = b"".join(chunks), 0
    for e in events:
        assert isinstance(e, (Frame, FramingError))
        found = stream.find(e.raw, at)
        assert found >= 0 and not stream[at:found].strip(b"\r\n\x00\x03"), (e, stream[at:found])
        at = found + len(e.raw)
    assert not stream[at:].strip(b"\r\n\x00\x03")
    items = decode_capture(b"".join(chunks))
    json.dumps(items, allow_nan=False)


DATA_ALPHABET = "0123456789ABCDEFabcdef?&ZQ -"


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["i101", "i201", "i20I", "i202", "i20C", "i203", "i205", "i207", "i208", "i251",
                        "i501", "s501", "i505", "i517", "i602", "i603", "i902", "i113"]),
       stamps, st.text(st.sampled_from(DATA_ALPHABET), max_size=200))
def test_checksum_valid_garbage_data_raises_only_vrframeerror(code, when, data):
    frame = frame_response(code + "00", when, data)
    _only_frame_errors(parse_response, frame)
    (item,) = decode_capture(frame)
    assert item["checksum_valid"] is True
    json.dumps(item, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([INVENTORY_1, STATUS_1, ERROR_FRAME]), st.data())
def test_mutated_frames_raise_only_vrframeerror(frame, data):
    pos = data.draw(st.integers(0, len(frame) - 1))
    op = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
    byte = data.draw(st.binary(min_size=1, max_size=1))
    if op == "replace":
        mutated = frame[:pos] + byte + frame[pos + 1:]
    elif op == "delete":
        mutated = frame[:pos] + frame[pos + 1:]
    elif op == "insert":
        mutated = frame[:pos] + byte + frame[pos:]
    else:
        mutated = frame[:pos]
    _only_frame_errors(parse_response, mutated)
    _only_frame_errors(lambda d: parse_response(d, verify_checksum=False), mutated)
    decode_capture(mutated)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS + [INVENTORY_1, STATUS_1, ERROR_FRAME, ERROR_FRAME_EMULATOR,
                                          INVENTORY_1[:-1], b"\x01i20100", b"\x01s501002506291500\r"]),
                max_size=30).map(b"".join),
       st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_framer_result_does_not_depend_on_chunking(stream, sizes):
    whole = VRFramer()
    expected = _split(whole.feed(stream) + whole.flush())
    framer, events, at, i = VRFramer(), [], 0, 0
    while at < len(stream):
        n = sizes[i % len(sizes)]
        events += framer.feed(stream[at:at + n])
        at, i = at + n, i + 1
    assert _split(events + framer.flush()) == expected
