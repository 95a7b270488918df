"""End to end over pseudo-terminals: DART simulators, the real daemon, the real store."""

import os
import signal
import subprocess
import sys

import pytest

from tests.harness import ROOT, Station


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


def test_200_sales_on_4_ports_stored_exactly_once_in_order(make_station):
    st = make_station(ports=4, sides=(2, 2), nozzles=(1, 3), max_sales=50)
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.truth()[0]) >= 200, 240, "200 simulated sales")
    result = st.wait_all_captured()
    assert st.stop_daemon() == 0
    sales, violations = st.truth()
    assert len(sales) == 200
    assert (result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) == (200, 0, 0, 0)
    assert violations == []  # not one write command reached a pump
    conn = st.conn()
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # per nozzle: store order (seq) is the order the pump sold in, with a continuous totalizer chain
    by_nozzle = {(p.name, pump.address, n.number): n.id for p, pump, n in st.cfg.nozzles()}
    for nid in set(by_nozzle.values()):
        truth = [s for s in sales if by_nozzle[(s["port"], s["address"], s["nozzle"])] == nid]
        stored = [r for r in st.records("sale") if r["nozzle"] == nid]
        assert [r["raw"][3] for r in stored] == [s["vol_total"] for s in truth]
        for prev, cur in zip(stored, stored[1:]):
            assert cur["vol_total_start"] == prev["vol_total"]
            assert cur["flags"] == []
        for r, s in zip(stored, truth):
            assert r["volume"] == s["volume"] / 100 and r["amount"] == s["amount"] / 100 and r["price"] == s["price"] / 100
            assert r["amt_total"] == s["amt_total"] / 100
    # nozzle states went through fuelling and back to idle; the platform will see them
    states = st.records("nozzle_state")
    assert {"calling", "fuelling", "idle"} <= {s["state"] for s in states}


def test_kill_9_driver_mid_sale_restarts_and_loses_nothing(make_station):
    st = make_station(ports=2, sides=(2, 2), nozzles=(2, 2), gap=(2.5, 4.0), fill_seconds=(1.0, 2.0))
    st.start_sims()
    st.start_daemon()
    killed = 0
    for _ in range(3):
        pid = st.wait_for(lambda: st.supervisor()["children"]["drv-p01"].get("pid"), 30, "driver running")
        st.wait_for(lambda pid=pid: st.board("p01").get("pid") == pid and any(
            p.get("status") == "filling" for p in st.board("p01").get("pumps", {}).values()), 30, "a fill on p01")
        os.kill(pid, signal.SIGKILL)
        killed += 1
        st.wait_for(lambda pid=pid: (st.supervisor()["children"]["drv-p01"].get("pid") or pid) != pid, 30,
                    "driver restart")
    st.wait_for(lambda: st.compare()["stored"] >= 15, 90, "more sales after the kills")
    result = st.wait_all_captured()
    assert (result["missing"], result["duplicated"], result["chain_breaks"]) == (0, 0, 0)
    assert st.supervisor()["children"]["drv-p01"]["restarts"] == killed
    assert "killed by signal 9" in st.supervisor()["children"]["drv-p01"]["last_exit"]
    assert st.stop_daemon() == 0


def test_kill_9_whole_daemon_during_burst(make_station):
    st = make_station(ports=4, sides=(2, 2), nozzles=(1, 2), gap=(1.5, 2.5), fill_seconds=(0.3, 0.6))
    st.start_sims()
    st.start_daemon()
    for _ in range(2):
        target = st.compare()["stored"] + 10
        st.wait_for(lambda target=target: st.compare()["stored"] >= target, 60, "a burst of sales")
        st.kill_daemon()  # supervisor, store writer and every driver at once
        st.start_daemon()
    result = st.wait_all_captured()
    conn = st.conn()
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (result["missing"], result["duplicated"]) == (0, 0)
    assert result["sold"] >= 20
    assert st.stop_daemon() == 0


def test_pump_goes_offline_and_comes_back(make_station):
    st = make_station(ports=1, sides=(2, 2), nozzles=(1, 1), gap=(0.5, 1.0))
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.records("sale")) >= 2, 30, "sales before the outage")
    st.control("p01", "silence 0x51 on")
    alarm = st.wait_for(lambda: [a for a in st.records("alarm") if a["alarm"] == "pump_offline"], 30, "offline alarm")
    assert alarm[0]["pump"] == 0x51 and alarm[0]["silent_polls"] >= 5
    nid = st.cfg.ports[0].pumps[1].nozzles[0].id
    st.wait_for(lambda: any(s["nozzle"] == nid and s["state"] == "offline" for s in st.records("nozzle_state")),
                10, "nozzle offline state")
    st.control("p01", "silence 0x51 off")
    st.wait_for(lambda: [e for e in st.records("event") if e["event"] == "pump_online" and not e["first"]],
                30, "back online")
    result = st.wait_all_captured()
    # sales made while it was silent are not lost: the pump keeps the last one, the totals chain shows the rest
    assert result["duplicated"] == 0


def test_metering_mismatch_is_flagged_and_alarmed(make_station):
    st = make_station(ports=1, sides=(2, 2), nozzles=(1, 1), defects={("p01", 0x51): "amount"}, max_sales=8)
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.truth()[0]) >= 8, 60, "8 sales")
    st.wait_all_captured()
    sales = st.records("sale")
    bad = [s for s in sales if s["pump"] == 0x51]
    good = [s for s in sales if s["pump"] == 0x50]
    assert bad and all("amount_mismatch" in s["flags"] for s in bad)
    assert good and all(s["flags"] == [] for s in good)
    alarms = [a for a in st.records("alarm") if a["alarm"] == "metering_out_of_tolerance"]
    assert len(alarms) == len(bad)


def test_technician_cli_while_running(make_station):
    st = make_station(ports=2, sides=(1, 1), nozzles=(2, 2), max_sales=6)
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.records("sale")) >= 3, 60, "a few sales")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "collector.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    status = cli("status", "--config", st.cfg_path)
    assert status.returncode == 0, status.stderr
    assert "daemon running" in status.stdout and "p01" in status.stdout and "p02" in status.stdout
    assert all(len(line) <= 80 for line in status.stdout.splitlines())
    nozzles = cli("nozzles", "--config", st.cfg_path)
    assert nozzles.returncode == 0 and len(nozzles.stdout.splitlines()) == 1 + 4
    sales = cli("sales", "--config", st.cfg_path, "--last", "2")
    assert sales.returncode == 0 and len(sales.stdout.splitlines()) == 3
    one = cli("sales", "--config", st.cfg_path, "--nozzle", "1", "--json")
    assert all('"nozzle": 1' in line for line in one.stdout.splitlines())
    st.stop_daemon()
    assert "NOT RUNNING" in cli("status", "--config", st.cfg_path).stdout
