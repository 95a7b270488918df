"""Uplink end to end: DART simulators -> the real daemon -> a real Mosquitto (or HTTP) -> the reference
platform, which opens every envelope with its own code path (tools/platform/seal_check.py)."""

import json
import os
import signal

import pytest

from tests.harness import Station


@pytest.fixture
def make_station(tmp_path):
    made = []

    def make(**kw):
        s = Station(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def assert_exactly_once_in_order(st):
    sales, violations = st.truth()
    assert violations == []
    received = st.platform_sales()
    ids = [(r["stream"], r["seq"]) for r in received]
    assert len(ids) == len(set(ids)), "the platform recorded a sale twice"
    by_pump = {(p.name, pump.address, n.number): n.id for p, pump, n in st.cfg.nozzles()}
    for nid in {by_pump[(s["port"], s["address"], s["nozzle"])] for s in sales}:
        truth = [s["vol_total"] for s in sales if by_pump[(s["port"], s["address"], s["nozzle"])] == nid]
        got = sorted((r for r in received if r["stream"] == f"sale:{nid}"), key=lambda r: r["seq"])
        assert [r["body"]["raw"][3] for r in got] == truth, f"nozzle {nid}: platform differs from the pumps"
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    return received


def test_mqtt_32_ports_2000_sales_broker_down_30s_uplink_killed_twice(make_station):
    st = make_station(ports=32, sides=(1, 2), nozzles=(1, 3), uplink="mqtt", max_sales=63, gap=(1.0, 2.0),
                      fill_seconds=(0.2, 0.5), poll_interval=0.2,
                      uplink_options={"heartbeat_interval": 5, "ack_timeout": 5})
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.platform_sales()) >= 300, 120, "300 sales at the platform")
    st.broker.kill()  # the broker dies mid-run
    stored_at_kill = len(st.records("sale"))
    st.wait_for(lambda: len(st.records("sale")) >= stored_at_kill + 600, 120, "sales piling up while the broker is down")
    st.broker.start()
    for _ in range(2):  # kill -9 the uplink twice while it drains the backlog
        pid = st.wait_for(st.uplink_pid, 30, "uplink running")
        st.wait_for(lambda pid=pid: st.uplink_board().get("pid") == pid and st.uplink_board().get("state") == "ready",
                    90, "the uplink up with a session")
        os.kill(pid, signal.SIGKILL)
        st.wait_for(lambda old=pid: st.uplink_pid() not in (None, old), 30, "uplink restarted")
    st.wait_for(lambda: len(st.truth()[0]) >= 2000, 240, "2000 simulated sales")
    result = st.wait_all_captured(timeout=60)
    assert (result["missing"], result["duplicated"]) == (0, 0)
    st.wait_delivered(timeout=120)
    received = assert_exactly_once_in_order(st)
    assert len(received) == len(st.truth()[0]) >= 2000
    assert any(r["resend"] for r in received) and any(not r["resend"] for r in received)
    assert st.supervisor()["children"]["uplink"]["restarts"] == 2
    assert st.stop_daemon() == 0


def test_http_platform_500s_and_timeouts_lose_nothing(make_station):
    st = make_station(ports=2, sides=(2, 2), nozzles=(1, 2), uplink="http", max_sales=24, gap=(0.8, 1.6),
                      uplink_options={"ack_timeout": 2, "retry_cycle": 3})
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.platform_sales()) >= 3, 60, "a session and the first sales")

    def failed():
        return st.conn().execute("SELECT count(*) FROM uploads WHERE result='failed'").fetchone()[0]

    st.platform.control(http_500=4)  # the next four requests, whatever they carry, get 500
    st.wait_for(lambda: failed() >= 1, 60, "a batch answered 500")
    st.wait_for(lambda: st.platform.stats()["injection"]["used"]["http_500"] == 4, 60, "all four 500s used")
    before = failed()
    st.platform.control(http_delay=4, http_delay_count=2)  # answered after the device gave up: timeouts
    st.wait_for(lambda: failed() > before, 60, "a batch timing out")
    st.wait_all_captured(timeout=90)
    st.wait_delivered(timeout=90)
    assert_exactly_once_in_order(st)
    assert st.wait_for(lambda: st.uplink_board().get("retries", 0) >= 2, 10, "retries on the status board")
    history = dict(st.conn().execute("SELECT result, count(*) FROM uploads GROUP BY result").fetchall())
    assert history.get("failed", 0) >= 2 and history.get("acked", 0) > 0
    details = [d for (d,) in st.conn().execute("SELECT detail FROM uploads WHERE result='failed'")]
    assert any("500" in (d or "") for d in details) and any("acknowledgement" in (d or "") for d in details)


def test_wrong_key_is_rejected_and_visible_in_heartbeat_and_logs(make_station, tmp_path):
    st = make_station(ports=1, sides=(1, 1), nozzles=(1, 1), uplink="http", max_sales=3)
    # the platform knows another public key for this device: the device's signature cannot verify
    from uplink import crypto

    other = crypto.sm2_generate_keypair()[1]
    with open(os.path.join(st.platform.workdir, "devices", "SIM-STATION-001.pub"), "w") as f:
        f.write(other.hex())
    st.start_sims()
    st.start_daemon()
    up = st.wait_for(lambda: (lambda u: u if u.get("platform_rejects") else None)(st.uplink_board()),
                     30, "a rejection seen by the device")
    assert "auth" in up["platform_rejects"] and "auth" in up["last_error"]["text"]
    assert st.platform.stats()["devices"]["SIM-STATION-001"]["rejects"].get("auth", 0) >= 1
    assert st.platform_sales() == []
    log = open(os.path.join(st.workdir, "daemon.log")).read()
    assert "platform rejected a message: auth" in log
    # the store keeps everything for later: nothing is marked delivered
    st.wait_for(lambda: len(st.records("sale")) >= 1, 60, "a sale stored")
    assert st.conn().execute("SELECT count(*) FROM records WHERE upload=2").fetchone()[0] == 0


def test_tampered_ciphertext_is_rejected_and_reported_in_the_heartbeat(make_station):
    st = make_station(ports=1, sides=(1, 1), nozzles=(1, 1), uplink="mqtt", max_sales=4,
                      uplink_options={"heartbeat_interval": 1})
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.platform_sales()) >= 1, 60, "a sale at the platform")
    # a man in the middle flips one ciphertext bit of a copy of a real envelope
    import paho.mqtt.client as mqtt

    captured = []
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
    spy.on_message = lambda c, u, m: captured.append(bytes(m.payload))
    spy.connect("127.0.0.1", st.broker.port)
    spy.subscribe("sc/v1/SIM-STATION-001/up", qos=1)
    spy.loop_start()
    try:
        st.wait_for(lambda: captured, 30, "an envelope on the wire")
        forged = bytearray(captured[0])
        forged[-20] ^= 0x04
        spy.publish("sc/v1/SIM-STATION-001/up", bytes(forged), qos=1).wait_for_publish(5)
    finally:
        spy.loop_stop()
        spy.disconnect()
    dev = lambda: st.platform.stats()["devices"]["SIM-STATION-001"]  # noqa: E731
    st.wait_for(lambda: dev()["rejects"].get("auth", 0) >= 1, 30, "the platform rejecting the forgery")
    hb_path = os.path.join(st.platform.workdir, "heartbeats", "SIM-STATION-001.json")
    hb = st.wait_for(lambda: (lambda h: h if h.get("platform_rejects", h.get("body", {}).get("platform_rejects"))
                              else None)(json.load(open(hb_path))), 90, "a heartbeat that reports the rejection")
    body = hb.get("body", hb)
    assert body["platform_rejects"].get("auth", 0) >= 1
    st.wait_all_captured()
    st.wait_delivered()
    assert_exactly_once_in_order(st)


def test_ring_never_evicts_unacknowledged_silently(make_station):
    st = make_station(ports=1, sides=(1, 1), nozzles=(1, 1), uplink="http", sales_per_nozzle=10, max_sales=25,
                      gap=(0.2, 0.4), uplink_options={"ack_timeout": 2, "retry_cycle": 2})
    st.platform.control(freeze=True)  # the platform stores nothing acknowledged: the ring fills with unsent sales
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.truth()[0]) >= 25, 90, "25 sales on a 10-sale ring")
    st.close_forecourt()
    st.wait_for(st.all_idle, 30, "the pump idle")
    st.wait_for(lambda: st.conn().execute("SELECT next_seq - 1 FROM streams WHERE stream='sale:1'").fetchone()[0]
                == len(st.truth()[0]), 30, "every sale given a seq (stored, some since evicted)")
    st.platform.control(freeze=False)
    sales = st.truth()[0]
    conn = st.conn()
    evicted = conn.execute("SELECT sum(evicted_unsent) FROM streams WHERE kind='sale'").fetchone()[0]
    assert evicted and evicted >= 1
    st.wait_for(lambda: sum(r["body"]["count"] for r in st.platform.received() if r["kind"] == "eviction") == evicted,
                90, "eviction records at the platform covering every evicted sale")
    # every sale is either at the platform or inside an eviction record's range: nothing vanished silently
    def accounted():
        held = {r["seq"] for r in st.platform_sales()}
        ranges = [(r["body"]["from_seq"], r["body"]["to_seq"]) for r in st.platform.received() if r["kind"] == "eviction"]
        stored_seqs = [q for (q,) in st.conn().execute("SELECT seq FROM records WHERE kind='sale'")]
        top = max(stored_seqs + list(held) + [0])
        return top >= len(sales) and all(q in held or any(a <= q <= b for a, b in ranges) for q in range(1, top + 1))
    st.wait_for(accounted, 90, "every seq held or reported evicted")
