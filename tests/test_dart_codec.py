"""DART codec: the public frames of the reference (§1.9), round trips and garbage."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dart import codec as dart


def frames(hexstr):
    return dart.decode_frames(bytes.fromhex(hexstr))


def one(hexstr):
    (f,) = frames(hexstr)
    assert isinstance(f, dart.Frame), f
    return f


def pump_msgs(f):
    return [dart.decode_from_pump(t) for t in dart.split_transactions(f.data)]


def ctrl_msgs(f):
    return [dart.decode_from_controller(t) for t in dart.split_transactions(f.data)]


@pytest.mark.parametrize("hexstr,tx,dcc", [
    ("51 35 01 01 00 A2 50 03 FA", 5, dart.DCC_RETURN_STATUS),
    ("51 3E 01 01 04 A1 B7 03 FA", 0xE, dart.DCC_RETURN_FILLING_INFO),
    ("51 33 01 01 05 62 DB 03 FA", 3, 0x05),
    ("51 36 01 01 06 22 16 03 FA", 6, 0x06),
])
def test_cd1_commands(hexstr, tx, dcc):
    f = one(hexstr)
    assert (f.address, f.kind, f.tx) == (0x51, "data", tx)
    assert ctrl_msgs(f) == [dart.Command(dcc)]
    assert f.encode() == bytes.fromhex(hexstr)


def test_cd2_cd3_cd5_and_cd101():
    assert ctrl_msgs(one("51 32 02 01 01 92 E4 03 FA")) == [dart.AllowedNozzles((1,))]
    assert ctrl_msgs(one("51 35 03 04 99 99 99 99 04 89 03 FA")) == [dart.PresetVolume(99999999)]
    assert ctrl_msgs(one("51 3F 05 03 00 81 23 A8 07 03 FA")) == [dart.PriceUpdate((8123,))]
    assert ctrl_msgs(one("51 34 05 03 00 11 75 45 42 03 FA")) == [dart.PriceUpdate((1175,))]
    assert ctrl_msgs(one("51 30 65 01 01 22 83 03 FA")) == [dart.RequestTotals(1)]


def test_dc3_nozzle_out():
    assert pump_msgs(one("51 3A 03 04 00 81 23 11 26 14 03 FA")) == [dart.NozzleStatus(8123, 1, True)]


def test_real_colombian_sale_frame():
    f = one("51 31 01 01 04 03 04 00 81 23 11 02 08 00 00 04 28 00 00 34 77 03 04 00 81 23 11 83 55 03 FA")
    assert pump_msgs(f) == [dart.PumpStatus(dart.FILLING), dart.NozzleStatus(8123, 1, True),
                            dart.FillingInfo(428, 3477), dart.NozzleStatus(8123, 1, True)]
    assert abs(0.428 * 8123 - 3477) < 1  # the reference's own cross-check


def test_dc101_totals_real_capture():
    f = one("51 3D 65 10 01 00 00 00 00 02 00 00 00 00 02 00 00 00 00 00 58 F8 03 FA")
    assert (f.tx, pump_msgs(f)) == (0xD, [dart.TotalCounters(1, 2, 2, 0)])


def test_filling_completed_and_zero_fill_real_captures():
    assert pump_msgs(one("51 3C 01 01 05 03 04 00 11 75 01 1A C7 03 FA")) == [
        dart.PumpStatus(dart.FILLING_COMPLETED), dart.NozzleStatus(1175, 1, False)]
    assert pump_msgs(one("51 3A 02 08 " + "00 " * 8 + "03 04 00 11 75 01 01 01 05 60 27 03 FA")) == [
        dart.FillingInfo(0, 0), dart.NozzleStatus(1175, 1, False), dart.PumpStatus(dart.FILLING_COMPLETED)]


def test_control_frames():
    got = frames("50 20 FA 51 20 FA 50 70 FA 51 70 FA 50 C5 FA 51 5A FA")
    assert [(f.address, f.kind, f.tx) for f in got] == [
        (0x50, "poll", 0), (0x51, "poll", 0), (0x50, "eot", 0), (0x51, "eot", 0), (0x50, "ack", 5), (0x51, "nak", 10)]


def test_bad_crc_is_reported_with_address_and_tx():
    (bad,) = frames("51 35 01 01 00 A2 51 03 FA")
    assert isinstance(bad, dart.BadFrame) and (bad.address, bad.tx) == (0x51, 5) and "CRC" in bad.reason
    out = dart.decode_capture(bytes.fromhex("51 35 01 01 00 A2 51 03 FA"))
    assert out[0]["valid"] is False and out[0]["crc_ok"] is False and out[0]["address"] == 0x51


def test_fa_in_crc_is_escaped():
    # search a payload whose CRC contains 0xFA, so the escape path is exercised for real
    for i in range(5000):
        data = dart.build([dart.FillingInfo(i, i * 7)])
        wire = dart.data_frame(0x50, 1, data)
        if b"\x10\xfa" in wire:
            break
    else:
        pytest.fail("no CRC with 0xFA found")
    assert one(wire.hex()) == dart.Frame(0x50, "data", 1, data)


def test_capture_direction_is_resolved_or_marked_ambiguous():
    out = dart.decode_capture(bytes.fromhex("51 3D 65 10 01 00 00 00 00 02 00 00 00 00 02 00 00 00 00 00 58 F8 03 FA"))
    assert out[0]["direction"] == "pump" and out[0]["transactions"][0]["total"] == 2
    out = dart.decode_capture(bytes.fromhex("51 35 01 01 00 A2 50 03 FA"))
    assert out[0]["direction"] == "ambiguous"
    assert out[0]["from_controller"][0]["command_name"] == "return_status"


pump_messages = st.one_of(
    st.builds(dart.PumpStatus, st.sampled_from(sorted(dart.STATUS_NAMES))),
    st.builds(dart.FillingInfo, st.integers(0, 99999999), st.integers(0, 99999999)),
    st.builds(dart.NozzleStatus, st.integers(0, 999999), st.integers(0, 15), st.booleans()),
    st.builds(dart.PumpAlarm, st.integers(0, 255)),
    st.builds(dart.PumpIdentity, st.integers(0, 10**10 - 1)),
    st.builds(dart.TotalCounters, st.integers(0, 255), st.integers(0, 10**10 - 1), st.integers(0, 10**10 - 1),
              st.integers(0, 10**10 - 1)),
)


@given(st.integers(0x50, 0x6F), st.integers(0, 15), st.lists(pump_messages, min_size=1, max_size=6))
def test_round_trip_pump_frames(address, tx, messages):
    wire = dart.data_frame(address, tx, dart.build(messages))
    (f,) = dart.decode_frames(wire)
    assert (f.address, f.tx) == (address, tx)
    assert pump_msgs(f) == messages


@given(st.lists(st.integers(1, 8), min_size=1, max_size=4))
def test_round_trip_read_commands(counters):
    messages = [dart.RequestTotals(c) for c in counters] + [dart.Command(dart.DCC_RETURN_FILLING_INFO)]
    (f,) = dart.decode_frames(dart.data_frame(0x55, 3, dart.build(messages)))
    assert ctrl_msgs(f) == messages


@given(st.lists(st.binary(max_size=40), max_size=20))
@settings(max_examples=300)
def test_garbage_never_raises(chunks):
    framer = dart.Framer()
    for chunk in chunks:
        for item in framer.feed(chunk):
            assert isinstance(item, (dart.Frame, dart.BadFrame))
            if isinstance(item, dart.Frame) and item.kind == "data":
                try:
                    for t in dart.split_transactions(item.data):
                        dart.decode_from_pump(t)
                        dart.decode_from_controller(t)
                except dart.DartError:
                    pass
    assert framer.pending() <= dart.MAX_FRAME + 1
    dart.decode_capture(b"".join(chunks))


@given(st.binary(max_size=60), st.integers(0, 60))
def test_frames_survive_any_split(noise, cut):
    # two SFs: a noise byte 0x10 would escape a single one (a receiver resyncs on line idle)
    wire = noise + b"\xfa\xfa" + dart.data_frame(0x51, 7, dart.build([dart.FillingInfo(1234, 5678)])) + dart.poll(0x52)
    cut = min(cut, len(wire))
    framer = dart.Framer()
    got = framer.feed(wire[:cut]) + framer.feed(wire[cut:])
    good = [f for f in got if isinstance(f, dart.Frame)]
    assert dart.Frame(0x51, "data", 7, dart.build([dart.FillingInfo(1234, 5678)])) in good
    assert good[-1] == dart.Frame(0x52, "poll", 0)
