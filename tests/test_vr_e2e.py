"""End to end with dispensers and the tank console together: DART pump simulators and the VR console
simulator on pseudo-terminals, the console's tanks fed by the pumps' sales, the real daemon and the
real store. A delivery during heavy dispensing is found exactly once (reported by the console, and
derived from the level when the console reports none); wet-stock reconciliation balances to the
litre in the normal case and raises an alarm when the tank leaks."""

from __future__ import annotations

import pytest

from tests.harness import Station

TANK_PORT = {"inventory_interval": 0.3, "delivery_interval": 0.5, "alarm_interval": 1.0, "leak_test_interval": 5.0,
             "clock_interval": 5.0, "response_timeout": 0.5,
             "derived_delivery": {"start_rise": 100.0, "min_volume": 500.0, "settle": 5.0, "grace": 5.0,
                                  "baseline_window": 30.0}}


@pytest.fixture
def station(tmp_path):
    made = []

    def make(**kw):
        s = Station(tmp_path / f"s{len(made)}", tanks=True, **kw)
        made.append(s)
        s.start_sims()
        s.start_daemon()
        return s

    yield make
    for s in made:
        s.close()


def deliveries(st):
    return st.records("delivery")


def test_delivery_during_heavy_dispensing_is_found_exactly_once(station):
    # 2 lines x 2 sides, every nozzle 92 -> all four draw from tank 1, customers back to back
    st = station(ports=2, sides=(2, 2), nozzles=(1, 1), gap=(0.2, 0.6), fill_seconds=(0.5, 1.5),
                 volume=(20.0, 60.0), tank_port={**TANK_PORT, "reconciliation": {"enabled": False}})
    st.wait_for(lambda: len(st.records("sale")) >= 8, 60, "heavy dispensing under way")
    st.control("atg", "deliver 1 2000 8 report")  # 250 L/s in, about 100 L/s out
    reported = st.wait_for(lambda: deliveries(st), 60, "the reported delivery")[0]
    st.wait_for(lambda: len(st.tank_truth()) == 1, 10, "delivery ground truth")
    st.control("atg", "deliver 1 2000 8 noreport")  # the same again, but the console keeps quiet
    derived = st.wait_for(lambda: [d for d in deliveries(st) if d["derived"]], 60, "the derived delivery")[0]
    truth = st.wait_for(lambda: (lambda t: t if len(t) == 2 else None)(st.tank_truth()), 10, "both in the truth")
    sold_during = [s for s in st.truth()[0] if truth[0]["start_t"] <= s["t"] <= truth[0]["end_t"]]
    assert sold_during, "sales were going on during the delivery"
    reads = st.board("atg")["stats"]["requests"]
    st.wait_for(lambda: st.board("atg")["stats"]["requests"] > reads + 40, 30, "history re-read many times")
    assert len(deliveries(st)) == 2  # exactly once each
    assert reported["derived"] is False and reported["tank"] == 1 and reported["source"] == "console"
    # the console's own figure is the level change (sales included); the collector adds the rise net of sales
    assert reported["volume"] == pytest.approx(truth[0]["level_change"], abs=0.05)
    assert reported["volume"] < 2000.0 - 50.0
    assert reported["adjusted_volume"] == pytest.approx(2000.0, abs=30.0)
    assert reported["dispensed_during"] > 50.0
    assert derived["derived"] is True and derived["source"] == "level_rise"
    assert derived["volume"] == pytest.approx(2000.0, abs=30.0) and derived["dispensed_during"] > 50.0
    assert derived["gross_rise"] < derived["volume"]
    # the dispensers lost nothing meanwhile
    result = st.wait_all_captured()
    assert (result["missing"], result["duplicated"]) == (0, 0)


def test_reconciliation_balances_and_a_leak_raises_an_alarm(station):
    # one line, 2 sides x 2 nozzles: 92 from tank 1, 95 from tank 2
    st = station(ports=1, sides=(2, 2), nozzles=(2, 2), tank_port={
        **TANK_PORT, "reconciliation": {"interval": 3.0, "tolerance_abs": 3.0, "tolerance_rel": 0.0,
                                        "boundary_wait": 30.0}})

    def recon(grade):
        return [r for r in st.records("reconciliation") if r["grade"] == grade]

    st.wait_for(lambda: recon("95"), 30, "a first interval of 95")  # deliveries before it belong to no interval
    st.control("atg", "deliver 2 800 2")
    st.wait_for(lambda: len(recon("92")) >= 4 and sum(r["sales"] for r in recon("92")) >= 3, 90,
                "intervals with sales of 92")
    with95 = st.wait_for(lambda: [r for r in recon("95") if r["delivered"]], 60, "an interval with the delivery")
    assert with95[0]["delivered"] == pytest.approx(800.0, abs=2.0) and with95[0]["deliveries"][0]["tank"] == 2
    normal = st.records("reconciliation")
    for r in normal:
        assert r["within_tolerance"], r
        assert abs(r["variance"]) <= 1.0, r
        assert r["volume_change"] == pytest.approx(r["delivered"] - r["dispensed"], abs=1.0)
    assert {r["grade"] for r in normal} >= {"92", "95", "98", "0"}
    assert sum(r["dispensed"] for r in normal) > 0
    assert [a for a in st.records("alarm") if a["alarm"] == "wetstock_variance"] == []
    # tank 1 starts to leak 2 L/s: the next intervals of 92 miss fuel, and say so
    st.control("atg", "leak 1 7200")
    alarm = st.wait_for(lambda: [a for a in st.records("alarm") if a["alarm"] == "wetstock_variance"], 60,
                        "a variance alarm")[0]
    assert alarm["grade"] == "92" and alarm["tanks"] == [1] and alarm["direction"] == "loss"
    assert alarm["variance"] < -3.0 and alarm["possible"] == "leak or theft"
    leaking = [r for r in recon("92") if not r["within_tolerance"]]
    assert leaking and all(r["variance"] < 0 for r in leaking)
    assert all(r["within_tolerance"] for r in recon("95"))
    st.wait_for(lambda: st.board("atg")["recon"]["92"]["variance"] < 0, 10, "the status board's last variance")
    st.wait_for(lambda: st.board("atg")["stats"]["variance_alarms"] >= 1, 10, "the alarm count on the status board")


def test_tank_records_reach_the_platform_through_the_uplink(station):
    st = station(ports=1, sides=(1, 1), nozzles=(1, 1), uplink="http", tank_port={
        **TANK_PORT, "reconciliation": {"interval": 3.0, "tolerance_abs": 5.0, "tolerance_rel": 0.0,
                                        "boundary_wait": 10.0}})
    st.wait_for(lambda: st.records("inventory"), 30, "a first inventory")
    st.control("atg", "deliver 1 1000 2 report")

    def at_platform(kind):
        return [r for r in st.platform.received() if r["kind"] == kind]

    st.wait_for(lambda: at_platform("delivery") and at_platform("reconciliation") and at_platform("inventory"),
                90, "inventory, delivery and reconciliation records at the platform")
    delivery = at_platform("delivery")
    assert len(delivery) == 1 and delivery[0]["stream"] == "delivery" and delivery[0]["body"]["tank"] == 1
    assert delivery[0]["body"]["volume"] > 0
    tanks = at_platform("inventory")
    assert {r["body"]["tank"] for r in tanks} >= {1} and all(r["stream"] == "tank" for r in tanks)
    assert all(r["stream"] == "recon" for r in at_platform("reconciliation"))
    assert st.platform.stats()["devices"]["SIM-STATION-001"]["duplicates"] == 0
