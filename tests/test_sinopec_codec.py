"""Sinopec IC-card dispenser protocol codec: reference vector, round trips, framer robustness."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.checksum import crc16_arc
from drivers.sinopec import codec as sc
from drivers.sinopec.codec import (
    DISP,
    PC,
    CardInserted,
    DispenserError,
    ErrorAck,
    Frame,
    FramingError,
    Fuelling,
    GeneralQuery,
    InfoReply,
    InfoRequest,
    ListVersions,
    NoSuchRecord,
    NozzleTotal,
    RawMessage,
    ReadRecordRequest,
    RealTimeInfo,
    SinopecCodecError,
    SinopecFramer,
    TotalsReply,
    TotalsRequest,
    TransactionAck,
    TransactionRecord,
    decode_capture,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)

IDLE_31H = bytes.fromhex("FA 00 01 00 00 02 31 00 81 B5")  # reference §5.3.6

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_all(data: bytes, chunks: list[int] | None = None) -> list:
    framer = SinopecFramer()
    events: list = []
    if chunks is None:
        events += framer.feed(data)
    else:
        pos = 0
        for size in chunks:
            events += framer.feed(data[pos:pos + size])
            pos += size
        events += framer.feed(data[pos:])
    return events + framer.flush()


# ---------------------------------------------------------------- reference vector


def test_reference_idle_frame_decodes():
    frame = decode_frame(IDLE_31H)
    assert (frame.b1, frame.b2, frame.b3) == (0x00, 0x01, 0x00)
    assert frame.data == b"\x31\x00"
    assert frame.crc == 0x81B5
    assert frame.addresses(DISP) == (1, 0)  # dispenser 01 -> PC 00
    message = decode_message(frame)  # 31H is only ever sent by the dispenser
    assert message == RealTimeInfo(())
    assert message.idle


def test_reference_idle_frame_encodes():
    assert encode_message(RealTimeInfo(), dispenser=1, pc=0, frame_no=0) == IDLE_31H
    assert encode_frame(0x00, 0x01, 0x00, b"\x31\x00") == IDLE_31H


def test_reference_crc_is_the_shared_crc16_arc():
    assert crc16_arc(IDLE_31H[1:-2]) == 0x81B5


def test_reference_vector_in_capture_view():
    [item] = decode_capture(IDLE_31H)
    assert item["kind"] == "frame" and item["crc_valid"] is True and item["valid"] is True
    assert item["command"] == "31H" and item["direction"] == DISP
    assert item["dispenser"] == 1 and item["pc"] == 0
    assert item["message"]["type"] == "RealTimeInfo" and item["message"]["state"] == "idle"
    json.dumps(item)


def test_fuelling_31h_layout_matches_reference():
    # count 01, state 02, nozzle 3, unit 0, amount 3 bytes, volume 3 bytes, price 2 bytes; LEN = 13 BCD
    payload = bytes.fromhex("01 02 03 00 00 27 10 00 05 DC 02 EE")
    raw = encode_frame(0, 1, 7, b"\x31" + payload)
    assert raw[4:6] == b"\x00\x13"
    msg = decode_message(decode_frame(raw))
    assert msg == RealTimeInfo((Fuelling(nozzle=3, unit=0, amount=10000, volume=1500, price=750),))


def test_card_inserted_31h_layout_matches_reference():
    asn = bytes(range(1, 11))
    payload = bytes((2,)) + b"".join(
        bytes((1, n, 16)) + asn + b"\x00\x01" + (123456).to_bytes(4, "big") for n in (1, 2))
    msg = RealTimeInfo.decode_payload(payload)
    assert msg.nozzles == (CardInserted(1, asn, 1, 123456), CardInserted(2, asn, 1, 123456))
    assert len(payload) == 2 * 19 + 1  # LEN = 19*n + 2 with the command byte


def test_transaction_record_offsets_follow_reference_table():
    """Build the 95 bytes by hand from the §5.3.4 table and check every named field."""
    parts = [
        (0x01020304).to_bytes(4, "big"),  # TTC
        b"\x07",  # type: non-card sale
        bytes.fromhex("20240115"),  # date CCYYMMDD (BCD)
        bytes.fromhex("143005"),  # time hhmmss (BCD)
        bytes(range(0x10, 0x1A)),  # card ASN
        (500000).to_bytes(4, "big"),  # card balance
        (12345).to_bytes(3, "big"),  # amount
        (42).to_bytes(2, "big"),  # card CTC
        b"\xa1\xa2\xa3\xa4",  # card TAC
        b"\xb1\xb2\xb3\xb4",  # PSAM GMAC
        b"\xc1\xc2\xc3\xc4",  # PSAM TAC
        bytes(range(0x20, 0x2A)),  # PSAM ASN
        bytes(range(0x30, 0x36)),  # PSAM TID
        (777).to_bytes(4, "big"),  # PSAM TTC
        b"\x00",  # debit source
        b"\x00",  # settlement unit
        b"\x00",  # card type
        b"\x21",  # key index/version
        b"\x03",  # logical nozzle
        b"\x10\x30",  # grade code
        (1646).to_bytes(3, "big"),  # volume
        (750).to_bytes(2, "big"),  # unit price
        b"\x09",  # employee
        (98765432).to_bytes(4, "big"),  # volume total after sale
        bytes(11),  # reserved
        b"\xd1\xd2\xd3\xd4",  # transaction TAC
    ]
    payload = b"".join(parts)
    assert len(payload) == 95
    rec = decode_message(b"\x32" + payload, DISP)
    assert isinstance(rec, TransactionRecord)
    assert rec.ttc == 0x01020304 and rec.trans_type == 7 and rec.type_name == "non-card (cash)"
    assert rec.date == 20240115 and rec.time == 143005
    assert rec.datetime is not None and rec.datetime.isoformat() == "2024-01-15T14:30:05"
    assert rec.card_asn == bytes(range(0x10, 0x1A)) and rec.card_balance == 500000
    assert rec.amount == 12345 and rec.card_ctc == 42
    assert rec.card_tac == b"\xa1\xa2\xa3\xa4" and rec.psam_gmac == b"\xb1\xb2\xb3\xb4"
    assert rec.psam_tac == b"\xc1\xc2\xc3\xc4" and rec.psam_asn == bytes(range(0x20, 0x2A))
    assert rec.psam_tid == bytes(range(0x30, 0x36)) and rec.psam_ttc == 777
    assert (rec.debit_source, rec.settlement_unit, rec.card_type, rec.key_version) == (0, 0, 0, 0x21)
    assert rec.nozzle == 3 and rec.grade_code == 0x1030
    assert rec.volume == 1646 and rec.price == 750 and rec.employee == 9
    assert rec.volume_total == 98765432 and rec.reserved == bytes(11) and rec.trans_tac == b"\xd1\xd2\xd3\xd4"
    # LEN of the frame is 96 = 0x96 in BCD, as the firmware sends it
    raw = encode_message(rec, dispenser=2, pc=0, frame_no=5)
    assert raw[4:6] == b"\x00\x96"
    assert rec.encode_payload() == payload


def test_totals_reply_length_rule():
    msg = TotalsReply((NozzleTotal(1, 100), NozzleTotal(2, 200), NozzleTotal(3, 0xFAFAFAFA)))
    data = msg.encode_data()
    assert len(data) == 5 * 3 + 2  # LEN = 5*count + 2


def test_ack_forms():
    assert TransactionAck(0x01020304).encode_data() == bytes.fromhex("32 00 01 02 03 04")
    assert decode_message(bytes.fromhex("32 00 01 02 03 04"), PC) == TransactionAck(0x01020304, 0)
    one = decode_message(b"\x32\x00", PC)
    assert one == TransactionAck(None, 0) and one.accepted
    assert not decode_message(b"\x32\x01", "controller").accepted  # alias
    with pytest.raises(SinopecCodecError):
        decode_message(b"\x32\x00\x01", PC)


def test_read_record_and_no_such_record():
    assert ReadRecordRequest(0x0A0B0C0D).encode_data() == bytes.fromhex("3E 0A 0B 0C 0D")
    assert decode_message(bytes.fromhex("3F 00 00 00 09")) == NoSuchRecord(9)
    assert decode_message(bytes.fromhex("3E 00 00 00 09")) == ReadRecordRequest(9)


def test_general_query_time_and_versions():
    q = decode_message(bytes.fromhex("30 20 24 01 15 14 30 05 00 03 01 02 04 05 06"))
    assert q == GeneralQuery(20240115143005, ListVersions(3, 1, 2, 4, 5, 6))
    assert q.datetime.isoformat() == "2024-01-15T14:30:05"
    assert GeneralQuery.at(q.datetime, q.versions) == q
    with pytest.raises(SinopecCodecError):
        decode_message(bytes.fromhex("30 20 24 01 1A 14 30 05 00 03 01 02 04 05 06"))  # not BCD


# ---------------------------------------------------------------- direction handling


def test_direction_needed_only_for_commands_used_both_ways():
    for command in (0x32, 0x33, 0x34, 0x35, 0x36, 0x38, 0x3A):
        with pytest.raises(SinopecCodecError, match="both ways"):
            decode_message(bytes((command,)), None)
    assert decode_message(b"\x38", PC) == TotalsRequest()
    assert decode_message(b"\x3a", "pc") == InfoRequest()
    assert decode_message(b"\x33\x04\x00\x01", DISP) == RawMessage(0x33, b"\x04\x00\x01", DISP)
    with pytest.raises(SinopecCodecError, match="never sent"):
        decode_message(b"\x31\x00", PC)
    with pytest.raises(SinopecCodecError):
        decode_message(b"\x31\x00", "sideways")


def test_capture_marks_ambiguous_commands():
    raw = encode_message(TotalsRequest(), dispenser=3)
    [item] = decode_capture(raw)
    assert item["direction"] == "ambiguous"
    assert item["candidates"]["pc"] == {"type": "TotalsRequest"}
    assert "error" in item["candidates"]["disp"]  # an empty 38H is not a valid reply
    assert item["likely"] == "pc"
    [item] = decode_capture(raw, direction="pc")
    assert item["direction"] == "pc" and item["message"] == {"type": "TotalsRequest"}
    assert item["dispenser"] == 3


def test_capture_reports_contradicting_direction():
    [item] = decode_capture(IDLE_31H, direction="pc")
    assert item["direction"] == "pc" and item["message"] is None and "never sent" in item["error"]


def test_addresses_follow_direction():
    raw = encode_message(GeneralQuery(20240101000000), dispenser=5, pc=9, frame_no=3)
    frame = decode_frame(raw)
    assert (frame.b1, frame.b2, frame.b3) == (5, 9, 3)
    assert frame.addresses(PC) == (5, 9)
    reply = decode_frame(encode_message(RealTimeInfo(), dispenser=5, pc=9, frame_no=3))
    assert (reply.b1, reply.b2) == (9, 5) and reply.addresses(DISP) == (5, 9)


# ---------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def bcd_int(digits: int):
    return st.integers(0, 10**digits - 1)


versions = st.builds(ListVersions, u16, u8, u8, u8, u8, u8)
card = st.builds(CardInserted, u8, st.binary(min_size=10, max_size=10), u16, u32, st.binary(max_size=8))
fuelling = st.builds(Fuelling, u8, u8, u24, u24, u16)
records = st.builds(
    TransactionRecord,
    ttc=u32, trans_type=u8, date=bcd_int(8), time=bcd_int(6), card_asn=st.binary(min_size=10, max_size=10),
    card_balance=u32, amount=u24, card_ctc=u16, card_tac=st.binary(min_size=4, max_size=4),
    psam_gmac=st.binary(min_size=4, max_size=4), psam_tac=st.binary(min_size=4, max_size=4),
    psam_asn=st.binary(min_size=10, max_size=10), psam_tid=st.binary(min_size=6, max_size=6), psam_ttc=u32,
    debit_source=u8, settlement_unit=u8, card_type=u8, key_version=u8, nozzle=u8, grade_code=u16,
    volume=u24, price=u16, employee=u8, volume_total=u32, reserved=st.binary(min_size=11, max_size=11),
    trans_tac=st.binary(min_size=4, max_size=4),
)
names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12) | st.sampled_from(
    ["中石化", "加油机 A1", ""])
info_replies = st.builds(
    InfoReply, names, u8, u8, u32, u32, bcd_int(14), st.lists(u8, max_size=40).map(tuple), versions,
    st.binary(max_size=20))

messages = st.one_of(
    st.builds(GeneralQuery, bcd_int(14), versions),
    st.builds(RealTimeInfo, st.lists(st.one_of(card, fuelling), max_size=8).map(tuple)),
    records,
    st.builds(TransactionAck, st.none() | u32, u8),
    st.just(TotalsRequest()),
    st.builds(TotalsReply, st.lists(st.builds(NozzleTotal, u8, u32), max_size=40).map(tuple)),
    st.just(InfoRequest()),
    info_replies,
    st.builds(DispenserError, st.binary(max_size=200)),
    st.builds(ErrorAck, st.binary(max_size=50)),
    st.builds(ReadRecordRequest, u32),
    st.builds(NoSuchRecord, u32),
    st.builds(RawMessage, st.sampled_from([0x33, 0x34, 0x35, 0x36]), st.binary(max_size=100),
              st.sampled_from([PC, DISP])),
)
addresses = st.integers(0, 0xFF).filter(lambda a: a != 0xFA)


# ---------------------------------------------------------------- round trips


@SETTINGS
@given(messages, addresses, addresses, addresses)
def test_every_message_round_trips(message, dispenser, pc, frame_no):
    raw = encode_message(message, dispenser=dispenser, pc=pc, frame_no=frame_no)
    frame = decode_frame(raw)
    assert frame.b3 == frame_no
    assert frame.addresses(message.direction) == (dispenser, pc)
    assert decode_message(frame, message.direction) == message
    assert frame.encode() == raw
    # the capture view decodes it the same way and is JSON-able
    [item] = decode_capture(raw, direction=message.direction)
    assert item["crc_valid"] and item["message"]["type"] == type(message).__name__
    json.dumps(item)


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_glued_frames_in_random_chunks(batch, data):
    raws = [encode_message(m, dispenser=1, pc=0, frame_no=i) for i, m in enumerate(batch)]
    stream = b"".join(raws)
    chunks = data.draw(st.lists(st.integers(0, 40), max_size=30))
    events = feed_all(stream, chunks)
    assert all(isinstance(e, Frame) for e in events)
    assert [decode_message(e, m.direction) for e, m in zip(events, batch, strict=True)] == batch
    assert [e.raw for e in events] == raws


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=4),
       st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\xfa", b"")), min_size=5, max_size=5))
def test_frames_survive_noise_between_them(batch, noises):
    stream = bytearray(noises[0])
    for i, m in enumerate(batch):
        stream += encode_message(m, dispenser=7, pc=1, frame_no=i) + noises[i + 1]
    events = feed_all(bytes(stream))
    frames = [e for e in events if isinstance(e, Frame)]
    assert [decode_message(f, m.direction) for f, m in zip(frames, batch, strict=True)] == batch
    assert all(e.reason == "noise outside a frame" for e in events if isinstance(e, FramingError))


def sample_stream() -> tuple[bytes, int]:
    rec = TransactionRecord(
        ttc=0xFAFA00FA, trans_type=0, date=20240115, time=235959, card_asn=b"\xfa" * 10, card_balance=0xFA,
        amount=0xFAFAFA, card_ctc=1, card_tac=b"\xfa\xfa\x00\x01", psam_gmac=bytes(4), psam_tac=bytes(4),
        psam_asn=bytes(10), psam_tid=bytes(6), psam_ttc=2, debit_source=0, settlement_unit=0, card_type=0,
        key_version=0, nozzle=1, grade_code=0x1030, volume=1000, price=750, employee=0, volume_total=5000)
    msgs = [GeneralQuery(20240115235959), RealTimeInfo(), rec, TransactionAck(0xFAFA00FA),
            RealTimeInfo((Fuelling(1, 0, 0xFA, 0xFAFA, 0xFA),))]
    stream = b"".join(encode_message(m, dispenser=1, frame_no=i) for i, m in enumerate(msgs))
    return stream, len(msgs)


def test_split_at_every_byte_position():
    stream, count = sample_stream()
    whole = feed_all(stream)
    assert len(whole) == count and all(isinstance(e, Frame) for e in whole)
    for cut in range(len(stream) + 1):
        assert feed_all(stream, [cut]) == whole, cut
    for cut in range(len(stream) + 1):  # byte by byte up to the cut, then the rest
        assert feed_all(stream, [1] * cut) == whole, cut


# ---------------------------------------------------------------- FA stuffing


def _find(predicate) -> int:
    return next(ttc for ttc in range(1 << 20) if predicate(ttc))


@pytest.mark.parametrize("which", ["high", "low"])
def test_crc_byte_equal_to_fa_is_stuffed(which):
    def crc_of(ttc):
        return sc.frame_crc(0, 1, 0, NoSuchRecord(ttc).encode_data())

    ttc = _find(lambda t: (crc_of(t) >> 8 if which == "high" else crc_of(t) & 0xFF) == 0xFA
                and b"\xfa" not in t.to_bytes(4, "big"))
    crc = crc_of(ttc)
    raw = encode_message(NoSuchRecord(ttc), dispenser=1, pc=0)
    tail = raw[6 + 5:]  # after header and the 5 unstuffed DATA bytes: the stuffed CRC
    expected = (b"\xfa\xfa" + bytes((crc & 0xFF,))) if which == "high" else (bytes((crc >> 8,)) + b"\xfa\xfa")
    assert tail == expected
    assert len(raw) == 1 + 5 + 5 + 3
    assert decode_message(decode_frame(raw)) == NoSuchRecord(ttc)
    # split exactly between the two FAs of the stuffed CRC byte, then glue a second frame after it
    fa_at = raw.index(b"\xfa\xfa", 6)
    events = feed_all(raw + IDLE_31H, [fa_at + 1])
    assert [decode_message(e) for e in events] == [NoSuchRecord(ttc), RealTimeInfo()]


def test_fa_in_data_is_doubled_and_undone():
    msg = TotalsReply((NozzleTotal(0xFA, 0xFAFAFAFA),))
    raw = encode_message(msg, dispenser=1)
    body = msg.encode_data()
    assert raw[6:].startswith(body.replace(b"\xfa", b"\xfa\xfa"))
    assert raw[1:6].count(0xFA) == 0
    assert decode_message(decode_frame(raw), DISP) == msg


def test_unstuffed_fa_in_data_resyncs():
    """A lone FA inside DATA opens a new frame; the frame in progress is reported, not raised."""
    good = IDLE_31H
    broken = bytes.fromhex("FA 00 01 00 00 05 32 01") + b"\xfa" + good[1:]  # lone FA then the rest of a frame
    events = feed_all(broken)
    assert isinstance(events[0], FramingError) and "lone 0xFA" in events[0].reason
    assert events[1] == decode_frame(good)


def test_fa_in_header_is_rejected_by_encoder_and_restarts_decoder():
    with pytest.raises(SinopecCodecError):
        encode_frame(0xFA, 0, 0, b"\x31\x00")
    with pytest.raises(SinopecCodecError):
        encode_message(RealTimeInfo(), dispenser=0xFA)
    events = feed_all(b"\xfa\x00\x01" + IDLE_31H)
    assert isinstance(events[0], FramingError) and "header" in events[0].reason
    assert events[1] == decode_frame(IDLE_31H)


# ---------------------------------------------------------------- bad input


def test_wrong_crc_rejected():
    bad = IDLE_31H[:-1] + bytes((IDLE_31H[-1] ^ 0x01,))
    with pytest.raises(SinopecCodecError, match="CRC"):
        decode_frame(bad)
    [event] = feed_all(bad)
    assert isinstance(event, FramingError)
    assert event.received_crc == 0x81B4 and event.frame.crc == 0x81B5
    [item] = decode_capture(bad)
    assert item["crc_valid"] is False and item["crc_received"] == "81B4" and item["crc"] == "81B5"
    assert item["valid"] is False


@SETTINGS
@given(messages, st.data())
def test_any_single_corruption_is_rejected(message, data):
    raw = bytearray(encode_message(message, dispenser=1))
    i = data.draw(st.integers(1, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 0xFF))
    with pytest.raises(SinopecCodecError):
        decode_frame(bytes(raw))  # CRC-16 catches any single corrupted byte; stuffing errors resync


def test_bad_length_field():
    events = feed_all(bytes.fromhex("FA 00 01 00 0A 02 31 00"))  # LEN "0A02" is not BCD
    assert isinstance(events[0], FramingError) and "LEN" in events[0].reason
    events = feed_all(bytes.fromhex("FA 00 01 00 02 41") + b"\x00" * 20)  # LEN 241 > 240
    assert "LEN" in events[0].reason
    with pytest.raises(SinopecCodecError):
        decode_frame(bytes.fromhex("FA 00 01 00 00 00 81 B5"))  # LEN 0


def test_encoder_rejects_bad_values():
    with pytest.raises(SinopecCodecError):
        encode_message(NoSuchRecord(1 << 32), dispenser=1)
    with pytest.raises(SinopecCodecError):
        encode_message(GeneralQuery(10**14), dispenser=1)
    with pytest.raises(SinopecCodecError):
        encode_message(RealTimeInfo((Fuelling(1, 0, 1 << 24, 0, 0),)), dispenser=1)
    with pytest.raises(SinopecCodecError):
        encode_message(InfoReply("much too long a name", 0, 0, 0, 0, 0), dispenser=1)
    with pytest.raises(SinopecCodecError):
        encode_message(RealTimeInfo(tuple(Fuelling(1, 0, 0, 0, 0) for _ in range(30))), dispenser=1)
    with pytest.raises(SinopecCodecError):
        encode_frame(0, 0, 0, b"")
    with pytest.raises(SinopecCodecError):
        encode_message("not a message", dispenser=1)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 64), max_size=20))
def test_garbage_never_crashes_the_framer_and_every_byte_is_accounted_for(data, chunks):
    events = feed_all(data, chunks)
    offset = 0
    for event in events:
        assert isinstance(event, (Frame, FramingError))
        assert event.offset == offset
        offset += len(event.raw)
    assert offset == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b"\xfa" + b))
def test_garbage_into_decoders_raises_only_codec_error(data):
    for call in (lambda: decode_frame(data),
                 lambda: decode_message(data[1:], PC),
                 lambda: decode_message(data[1:], DISP),
                 lambda: decode_message(data[1:]),
                 lambda: decode_message(b"\x32" + data[1:], DISP),
                 lambda: decode_message(b"\x31" + data[1:]),
                 lambda: decode_message(b"\x3a" + data[1:], DISP)):
        try:
            call()
        except SinopecCodecError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([None, "pc", "disp", "auto", "pump"]))
def test_garbage_capture_is_json(data, direction):
    items = decode_capture(data, direction)
    json.dumps(items)
    assert sum(len(bytes.fromhex(i["raw"])) for i in items) == len(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(sc.COMMANDS)), st.binary(max_size=120), st.sampled_from([PC, DISP]))
def test_framed_garbage_payloads_never_crash_capture(command, payload, direction):
    raw = encode_frame(1, 2, 3, bytes((command,)) + payload)
    for d in (None, direction):
        [item] = decode_capture(raw, d)
        assert item["crc_valid"]
        json.dumps(item)


def test_not_bytes_is_a_codec_error():
    with pytest.raises(SinopecCodecError):
        decode_frame(None)  # type: ignore[arg-type]
    with pytest.raises(SinopecCodecError):
        decode_message(12345, PC)  # type: ignore[arg-type]
    assert isinstance(SinopecFramer().feed(None)[0], FramingError)  # type: ignore[arg-type]
    assert issubclass(SinopecCodecError, ValueError)
