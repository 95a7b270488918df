"""The VR tank-gauge poller against the console simulator over a pseudo-terminal, through the real
daemon into the real store: inventory, deliveries (reported, re-read, derived), alarms, leak tests,
security code and silence, the console clock, units. Plus property tests of the rise detector and
garbage into the simulator's command reader and the poller's reply reader."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import tank_records as tr
from drivers.vr import codec as vr
from drivers.vr.reconcile import ProductBook, Reading, RiseDetector
from tests.harness import Station

FAST = {"inventory_interval": 0.3, "delivery_interval": 0.5, "alarm_interval": 0.5, "leak_test_interval": 0.5,
        "clock_interval": 1.0, "response_timeout": 0.3, "snapshot_interval": 3.0,
        "derived_delivery": {"start_rise": 50.0, "min_volume": 300.0, "settle": 4.0, "grace": 4.0,
                             "baseline_window": 30.0},
        "reconciliation": {"interval": 3.0, "tolerance_abs": 5.0, "boundary_wait": 1.0}}


@pytest.fixture
def console(tmp_path):
    made = []

    def make(port=None, sim=None):
        s = Station(tmp_path / f"s{len(made)}", ports=0, tanks=True, tank_port={**FAST, **(port or {})},
                    tank_sim=sim or {})
        made.append(s)
        s.start_sims()
        s.start_daemon()
        return s

    yield make
    for s in made:
        s.close()


def recs(st, kind, **match):
    return [r for r in st.records(kind) if all(r.get(k) == v for k, v in match.items())]


def stat(st, name):
    return st.board("atg").get("stats", {}).get(name, 0)


def restart(st):
    """Stop the daemon and start it again; returns once the new tank driver publishes its status."""
    old = st.board("atg").get("pid")
    assert st.stop_daemon() == 0
    st.start_daemon()
    st.wait_for(lambda: st.board("atg").get("pid") not in (None, old), 30, "the new tank driver")


def test_inventory_readings_snapshots_and_changes(console):
    st = console()
    start = st.wait_for(lambda: (lambda r: r if len(r) == 4 else None)(recs(st, "inventory", reason="start")),
                        20, "a first reading of each tank")
    assert [r["tank"] for r in start] == [1, 2, 3, 4]
    t2 = start[1]
    assert (t2["grade"], t2["product_code"], t2["volume"], t2["capacity"]) == ("95", "2", 14000.0, 30000.0)
    assert t2["height"] == pytest.approx(14000 / 30000 * 2500, abs=0.01) and t2["temperature"] == 18.0
    assert t2["ullage"] == 16000.0 and t2["water"] == 5.0 and t2["flags"] == [] and t2["console_units"] == "metric"
    assert t2["fill_percent"] == pytest.approx(46.7) and t2["console_time"]
    # nothing moves: no change records, but a snapshot at least every snapshot_interval (3 s here)
    st.wait_for(lambda: len(recs(st, "inventory", reason="snapshot", tank=2)) >= 2, 20, "two snapshots")
    assert recs(st, "inventory", reason="change") == []
    # a leak moves tank 3 by more than the 50 L threshold: stored as a change, not every reading
    st.control("atg", "leak 3 180000")  # 50 L/s
    st.wait_for(lambda: len(recs(st, "inventory", reason="change", tank=3)) >= 3, 20, "changes of tank 3")
    changes = recs(st, "inventory", reason="change", tank=3)
    assert all(a["volume"] - b["volume"] >= 50.0 for a, b in zip(changes, changes[1:]))
    assert stat(st, "inventory_reads") > stat(st, "stored_readings")
    board = st.board("atg")
    assert board["online"] and board["units"] == "metric" and board["version"].startswith("SOFTWARE#")
    assert set(board["tanks"]) == {"1", "2", "3", "4"} and board["tanks"]["2"]["volume"] == 14000.0


def test_reported_delivery_is_stored_once_however_often_it_is_read(console):
    st = console()
    st.wait_for(lambda: len(recs(st, "inventory", reason="start")) == 4, 20, "first readings")
    st.control("atg", "deliver 1 2000 2")
    got = st.wait_for(lambda: recs(st, "delivery"), 20, "the delivery")
    truth = st.wait_for(lambda: st.tank_truth(), 10, "delivery ground truth")
    reads = stat(st, "requests")
    st.wait_for(lambda: stat(st, "requests") > reads + 40, 30, "the delivery history read again many times")
    assert len(recs(st, "delivery")) == 1
    d = got[0]
    assert d["tank"] == 1 and d["derived"] is False and d["source"] == "console"
    assert d["volume"] == pytest.approx(truth[0]["level_change"], abs=0.05) == pytest.approx(2000.0, abs=0.05)
    assert d["start_volume"] == 13000.0 and d["start"] == truth[0]["console_start"]
    assert d["adjusted_volume"] == pytest.approx(2000.0, abs=0.5) and d["dispensed_during"] == 0.0
    # a restarted driver reads the same history again: still one record (natural key tank + start)
    restart(st)
    st.wait_for(lambda: stat(st, "requests") > 20, 30, "the restarted driver polling")
    assert len(recs(st, "delivery")) == 1
    assert [e["event"] for e in st.records("event") if e["event"] == "tank_console_online"] == ["tank_console_online"] * 2


def test_derived_delivery_when_the_console_reports_none(console):
    st = console(sim={"report_deliveries": False})
    st.wait_for(lambda: len(recs(st, "inventory", reason="start")) == 4, 20, "first readings")
    st.control("atg", "deliver 2 1500 2")
    d = st.wait_for(lambda: recs(st, "delivery"), 20, "a derived delivery")[0]
    assert d["derived"] is True and d["source"] == "level_rise" and d["tank"] == 2 and d["grade"] == "95"
    assert d["volume"] == pytest.approx(1500.0, abs=0.5) and d["gross_rise"] == pytest.approx(1500.0, abs=0.5)
    assert d["start_volume"] == pytest.approx(14000.0, abs=0.01) and d["start"] and d["end"]
    reads = stat(st, "requests")
    st.wait_for(lambda: stat(st, "requests") > reads + 30, 30, "more polling")
    assert len(recs(st, "delivery")) == 1
    assert st.tank_truth()[0]["reported"] is False


def test_small_rise_is_not_a_delivery(console):
    st = console(sim={"report_deliveries": False})
    st.wait_for(lambda: len(recs(st, "inventory", reason="start")) == 4, 20, "first readings")
    st.control("atg", "deliver 4 150 1")  # above the 50 L start, below the 300 L minimum
    st.wait_for(lambda: st.tank_truth(), 10, "the small delivery done")
    reads = stat(st, "inventory_reads")
    st.wait_for(lambda: stat(st, "inventory_reads") > reads + 15, 30, "the rise settled and forgotten")
    assert recs(st, "delivery") == []


def test_console_alarms_appear_and_clear_once(console):
    st = console()
    st.control("atg", "alarm 2 4 3 on")
    st.control("atg", "alarm 3 3 1 on")
    got = st.wait_for(lambda: (lambda r: r if len(r) == 2 else None)(recs(st, "alarm", alarm="tank_console_alarm")),
                      20, "two active alarms")
    by_name = {a["name"]: a for a in got}
    assert by_name["overfill_alarm"]["state"] == "active" and by_name["overfill_alarm"]["tank"] == 3
    assert by_name["overfill_alarm"]["grade"] == "98" and by_name["overfill_alarm"]["category_name"] == "tank"
    assert by_name["fuel_alarm"]["category_name"] == "liquid_sensor" and by_name["fuel_alarm"]["tank"] is None
    st.wait_for(lambda: st.board("atg").get("tanks", {}).get("3", {}).get("alarms") == ["overfill_alarm"], 10,
                "the alarm on the status board")
    # a restart does not report the still-active alarms again
    restart(st)
    st.wait_for(lambda: stat(st, "requests") > 15, 30, "the restarted driver polling")
    assert len(recs(st, "alarm", alarm="tank_console_alarm")) == 2
    st.control("atg", "alarm 2 4 3 off")
    cleared = st.wait_for(lambda: recs(st, "alarm", alarm="tank_console_alarm", state="cleared"), 20, "cleared")
    assert cleared[0]["name"] == "overfill_alarm" and len(cleared) == 1


def test_leak_tests_stored_once_and_a_failure_alarmed(console):
    st = console()
    st.control("atg", "leaktest 1 pass 0.5")
    st.control("atg", "leaktest 2 fail 0.5")
    st.wait_for(lambda: len(st.records("leak_test")) == 2, 20, "two leak-test results")
    reads = stat(st, "requests")
    st.wait_for(lambda: stat(st, "requests") > reads + 30, 30, "results read again")
    tests = {r["tank"]: r for r in st.records("leak_test")}
    assert len(st.records("leak_test")) == 2
    assert tests[1]["passed"] is True and tests[1]["result"] == "passed" and tests[1]["test_name"] == "0.2_gph"
    assert tests[2]["passed"] is False and tests[2]["result"] == "failed" and tests[2]["leak_rate"] == 0.9
    failed = recs(st, "alarm", alarm="leak_test_failed")
    assert len(failed) == 1 and failed[0]["tank"] == 2
    st.wait_for(lambda: recs(st, "alarm", alarm="tank_console_alarm", name="periodic_leak_test_fail"), 10,
                "the console's own leak-test alarm")
    # the leak-test-in-progress status bit shows in the inventory flags
    st.control("atg", "leaktest 3 pass 3")
    st.wait_for(lambda: any("leak_test_in_progress" in r["flags"] for r in recs(st, "inventory", tank=3)), 20,
                "a reading stored with the leak test running")


def test_wrong_security_code_silent_console_offline_then_back(console):
    st = console(port={"security_code": "123456"}, sim={"security_code": "654321"})
    alarm = st.wait_for(lambda: recs(st, "alarm", alarm="tank_console_offline"), 20, "the offline alarm")[0]
    assert "security code" in alarm["reason"] and "(one is configured)" in alarm["reason"]
    assert alarm["silent_requests"] == 3 and alarm["was_online"] is False and alarm["tanks"] == [1, 2, 3, 4]
    board = st.board("atg")
    assert board["online"] is False and board["stats"]["timeouts"] >= 3
    assert st.records("inventory") == []
    # the technician fixes the console's code: it answers, the port comes online, readings flow
    st.control("atg", "security 123456")
    st.wait_for(lambda: len(recs(st, "inventory", reason="start")) == 4, 20, "readings after the fix")
    assert recs(st, "event", event="tank_console_online")
    assert len(recs(st, "alarm", alarm="tank_console_offline")) == 1
    # a console that goes silent later is reported again
    st.control("atg", "silence on")
    again = st.wait_for(lambda: (lambda r: r[1:] or None)(recs(st, "alarm", alarm="tank_console_offline")), 20,
                        "offline again")
    assert again[0]["was_online"] is True


def test_security_code_sent_to_a_console_without_security(console):
    st = console(port={"security_code": "123456"})
    alarm = st.wait_for(lambda: recs(st, "alarm", alarm="tank_console_refused"), 20, "the refused alarm")[0]
    assert "remove security_code" in alarm["reason"]


def test_clock_drift_recorded_and_alarmed_not_set(console):
    st = console(sim={"clock_offset": -600})
    rec = st.wait_for(lambda: recs(st, "console_clock"), 20, "a clock check")[0]
    assert rec["action"] == "observed" and -660 <= rec["drift_s"] <= -540 and rec["resolution_s"] == 60
    alarm = st.wait_for(lambda: recs(st, "alarm", alarm="console_clock_drift"), 10, "the drift alarm")[0]
    assert alarm["will_set"] is False
    checks = stat(st, "requests")
    st.wait_for(lambda: stat(st, "requests") > checks + 20, 30, "more clock checks")
    assert [r["action"] for r in recs(st, "console_clock")] == ["observed"]  # never set unless configured
    assert len(recs(st, "alarm", alarm="console_clock_drift")) == 1


def test_clock_set_from_the_collector_when_configured(console):
    st = console(port={"set_clock": True}, sim={"clock_offset": 3600})
    st.wait_for(lambda: recs(st, "console_clock", action="set"), 20, "the console clock set")
    after = st.wait_for(lambda: [r for r in recs(st, "console_clock", action="observed") if abs(r["drift_s"]) <= 60],
                        20, "the clock right after setting")
    assert after and recs(st, "event", event="console_clock_drift_cleared")
    st.wait_for(lambda: st.board("atg")["clock"]["drift_s"] in (-60, 0, 60), 10, "the status board's clock")


def test_us_units_are_converted_to_metric(console):
    st = console(sim={"units": 1, "tanks": [{"number": 1, "product": "1", "capacity": 30000, "volume": 1000.0,
                                             "temperature": 68.0, "water": 0.5, "max_height": 96.0}]},
                 port={"tanks": [{"number": 1, "grade": {"code": "92"}, "capacity": 113562}]})
    r = st.wait_for(lambda: recs(st, "inventory", reason="start"), 20, "a reading")[0]
    assert r["console_units"] == "US" and r["volume"] == pytest.approx(3785.41, abs=0.01)
    assert r["temperature"] == pytest.approx(20.0, abs=0.01) and r["water"] == pytest.approx(12.7, abs=0.01)
    assert r["height"] == pytest.approx(1000 / 30000 * 96 * 25.4, abs=0.01)


def test_serial_to_tcp_console_and_reconnect(console):
    with socket.socket() as probe:  # a free port for the console's TCP card
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    st = console(port={"device": f"socket://127.0.0.1:{port}"}, sim={"tcp_port": port})
    st.wait_for(lambda: len(recs(st, "inventory", reason="start")) == 4, 20, "readings over TCP")
    st.control("atg", "drop")  # the connection breaks: the driver connects again at once
    st.control("atg", "deliver 3 900 1")
    assert st.wait_for(lambda: recs(st, "delivery"), 20, "a delivery over the new connection")[0]["tank"] == 3
    assert recs(st, "alarm", alarm="tank_console_offline") == []
    # a console that stops answering is offline; the driver keeps reconnecting until it answers again
    st.control("atg", "silence on")
    st.wait_for(lambda: recs(st, "alarm", alarm="tank_console_offline"), 20, "offline")
    st.control("atg", "silence off")
    back = st.wait_for(lambda: [e for e in recs(st, "event", event="tank_console_online") if not e["first"]], 30,
                       "online again")
    assert back[0]["device"] == f"socket://127.0.0.1:{port}"


# ------------------------------------------------------------------ properties, garbage


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0, 60), min_size=20, max_size=80), st.integers(5, 60), st.floats(400, 4000),
       st.integers(2, 10), st.floats(0.0, 0.5))
def test_one_delivery_among_sales_is_one_rise(sales, at, litres, steps, lag):
    """Readings every second; sales lower the level at once and reach the dispensed count a little later
    (the capture delay): one delivery spread over ``steps`` readings is found once, with its volume."""
    det = RiseDetector(1, start_rise=100.0, min_volume=300.0, settle=5.0, window=60.0)
    volume, dispensed, pending = 20000.0, 0.0, 0.0
    found = []
    for i in range(max(len(sales), at + steps) + 20):
        sale = sales[i] if i < len(sales) else 0.0
        volume -= sale
        dispensed += pending * (1 - lag)  # part of the previous sale reached the store ...
        pending = pending * lag + sale  # ... the rest is still on its way
        if at <= i < at + steps:
            volume += litres / steps
        rise = det.feed(Reading(float(i), 1e9 + i, datetime(2025, 1, 1) + timedelta(seconds=i), volume, dispensed))
        if rise is not None:
            found.append(rise)
    assert len(found) == 1
    assert found[0].volume == pytest.approx(litres, abs=120.0)  # at most the sales in flight at its ends


def test_reconciliation_arithmetic():
    from drivers.vr.reconcile import Boundary

    book = ProductBook("92", "92号", (1, 2), (1, 2, 3))
    assert book.close(Boundary(0, 1000.0, {1: 10000.0, 2: 5000.0}, {1: 0.0, 2: 0.0}, {1: 0, 2: 0}), 10, 0.01) is None
    book.add_delivery(1, 3000.0, "console")
    r = book.close(Boundary(3600, 4600.0, {1: 12000.0, 2: 4900.0}, {1: 950.0, 2: 100.0}, {1: 20, 2: 3}), 10, 0.005)
    assert r["volume_change"] == 1900.0 and r["dispensed"] == 1050.0 and r["delivered"] == 3000.0
    assert r["variance"] == -50.0 and r["tolerance"] == pytest.approx(10 + 0.005 * 4050)
    assert r["within_tolerance"] is False and r["sales"] == 23 and r["expected_end_volume"] == 16950.0
    alarm = tr.variance_alarm("atg", r)
    assert alarm["stream"] == "alarm" and alarm["body"]["direction"] == "loss"
    rec = tr.reconciliation("atg", r)
    assert rec["stream"] == "recon" and rec["kind"] == "reconciliation" and rec["body"]["deliveries"][0]["volume"] == 3000.0


def test_console_delivery_record_key_and_units():
    d = vr.Delivery(datetime(2021, 4, 23, 9, 24), datetime(2021, 4, 23, 9, 33), 10, 4612.0, 4592.0, 0.0, 66.0,
                    5626.0, 5601.0, 0.0, 66.08, 52.1, 61.6)

    class Tank:
        number, grade_code, grade_name, capacity = 1, "92", "92号", 40000.0

    rec = tr.delivery("atg", Tank, d, tr.Metric(1))
    assert rec["key"] == "1:202104230924" and rec["stream"] == "delivery"
    b = rec["body"]
    assert b["volume"] == pytest.approx(1014 * tr.GALLON_L, abs=0.02) and b["start"] == "2021-04-23T09:24"
    assert b["start_temperature"] == pytest.approx((66.0 - 32) * 5 / 9, abs=0.01) and b["console_units"] == "US"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"\x01i20100", b"\x01123456i20100", b"\x01s50100",
                                                                     b"2501011200", b"\x1b", b"\x01S602", b"\r"])),
                max_size=12),
       st.sampled_from([None, "123456"]))
def test_simulator_command_reader_survives_garbage(chunks, code):
    """The console simulator's reader: any bytes, any chunking, never an exception, every reply a
    valid frame (or none)."""
    from tools.sim import vr_console

    class Collect:
        def __init__(self):
            self.out = []

        def write(self, data):
            self.out.append(data)

    c = vr_console.Console({"tanks": [{"number": 1}, {"number": 2, "inactive": True}], "security_code": code},
                           pty=Collect())
    for chunk in chunks:
        c.on_bytes(chunk)
    assert len(c.buf) <= vr.MAX_REQUEST_CHARS + 40
    for reply in c.pty.out:
        parsed = vr.parse_response(reply)
        assert parsed is not None


def test_poller_reply_reader_survives_garbage_and_wrong_echo():
    """The poller's one exchange against a fake line: noise, a wrong echo, a bad checksum, a 9999, a
    good reply split in pieces."""
    from drivers.vr.poller import VRPoller

    good = vr.encode_response(vr.ClockReport("i50100", datetime(2025, 1, 1, 12, 0), datetime(2025, 1, 1, 12, 0)))
    wrong_echo = vr.frame_response("i20100", datetime(2025, 1, 1, 12, 0), "")  # answers another request
    bad_sum = good[:-5] + b"0000\x03"
    cases = [([b"\x00\xff garbage", good[:7], good[7:]], vr.ClockReport), ([wrong_echo], None), ([bad_sum], None),
             ([vr.ERROR_FRAME], vr.ErrorResponse), ([b"noise without SOH"], None), ([], None)]
    for chunks, expected in cases:
        resp = _bare_poller(VRPoller, chunks)._ask("i501")
        assert (type(resp) if resp is not None else None) is expected, (chunks, resp)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.binary(max_size=60), st.integers(1, 40), st.booleans())
def test_poller_reply_reader_garbage_around_a_reply(before, after, cut, with_reply):
    """Noise before and after, the reply cut anywhere: the reader never raises, and finds the reply
    unless the noise itself holds a frame start that swallows it."""
    from drivers.vr.poller import VRPoller

    good = vr.encode_response(vr.ClockReport("i50100", datetime(2025, 1, 1, 12, 0), datetime(2025, 1, 1, 12, 0)))
    stream = before + (good if with_reply else b"") + after
    chunks = [stream[i:i + cut] for i in range(0, len(stream), cut)]
    resp = _bare_poller(VRPoller, chunks)._ask("i501")
    if with_reply and vr.SOH not in before + after and vr.ESC not in before:
        assert isinstance(resp, vr.ClockReport)
    assert resp is None or isinstance(resp, (vr.ClockReport, vr.ErrorResponse))


def _bare_poller(VRPoller, chunks):
    """A poller around a scripted fake line, without a daemon (only what ``_ask`` uses)."""
    from types import SimpleNamespace

    class FakeLine:
        byte_time = 0.001
        rx_bytes = tx_bytes = 0

        def __init__(self):
            self.chunks = list(chunks)
            self.written = []

        def flush_input(self):
            pass

        def write(self, data):
            self.written.append(data)

        def read_available(self, timeout):
            return self.chunks.pop(0) if self.chunks else b""

        def close(self):
            pass

    captured = []
    log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, error=lambda *a: None)
    p = VRPoller.__new__(VRPoller)
    p.ctx = SimpleNamespace(capture=lambda r: captured.extend(r) or [("x", 1, False)] * len(r), log=log,
                            stopping=lambda: False)
    p.port = SimpleNamespace(name="atg", device="/dev/null")
    p.cfg = SimpleNamespace(security_code=None, end_of_message=b"\x03", tanks=())
    p.profile = SimpleNamespace(inter_command_gap=0, response_timeout=0.01, offline_after=3)
    p.line, p.framer = FakeLine(), vr.VRFramer(accept_requests=False, strip_parity=True)
    p.stats = {"requests": 0, "timeouts": 0, "bad_frames": 0, "refused": 0}
    p.online, p.heard_once, p.silent, p.session, p.tanks = True, True, 0, True, {}
    p.due = {}
    return p


def test_records_are_json_and_stamped():
    class Tank:
        number, grade_code, grade_name, capacity = 2, "95", "95号", 20000.0

    inv = vr.TankInventory(2, "2", 3, 7, 1000.0, 990.0, 19000.0, 100.0, 1.0, 15.0, 2.0)
    rec = tr.inventory("atg", Tank, tr.inventory_values(inv, tr.Metric(2)), datetime(2025, 1, 1), "start", "metric")
    json.dumps(rec)
    assert rec["stream"] == "tank" and rec["kind"] == "inventory" and {"mono", "boot", "clock"} <= set(rec["body"])
    assert rec["body"]["flags"] == ["delivery_in_progress", "leak_test_in_progress"] and rec["body"]["fill_percent"] == 5.0
    assert tr.alarm_name(2, 4) == "overfill_alarm" and tr.alarm_name(21, 19) == "vr_21_19"
