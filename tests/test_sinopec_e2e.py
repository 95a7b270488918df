"""Sinopec card-dispenser protocol end to end: dispenser simulators (and, for listen mode, the
station POS simulator and the bus tap) on ptys, the real daemon, the real store.

Waits are on observable conditions: the store, the status boards, the simulators' status files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from drivers.sinopec import codec as sc
from drivers.sinopec.listener import ReadOnlyLine
from tests.harness import ROOT, Station
from tools import station
from tools.sim import bus_tap, sinopec_pos, sinopec_pump
from tools.sim.common import control

FAST = dict(gap=(0.4, 1.0), fill_seconds=(0.3, 0.7), volume=(2.0, 40.0), resend_after=1.0, poll_interval=0.05,
            response_timeout=0.3)


class SinopecStation(Station):
    """One Sinopec line (``tools.sim.sinopec_pump.make_port``) under the real daemon."""

    def __init__(self, workdir, mode="master", seed=5, **kw):  # Station's helpers, our own line
        self.workdir = str(workdir)
        self.broker = self.platform = None  # Station's uplink pieces: not used here
        params = dict(FAST, **kw)
        pos = params.pop("pos", {})
        self.port_cfg, self.line_specs = sinopec_pump.make_port(
            self.workdir, "s01", 1, mode=mode, seed=seed,
            pos={"poll_interval": 0.05, "totals_every": 1.5, "info_every": 3.0, **pos}, **params)
        config = {"station": {"device_id": "SIM-SINOPEC-1", "name": "中石化模拟站", "credit_code": station.CREDIT_CODE},
                  "store": {"path": os.path.join(self.workdir, "store.db")},
                  "runtime_dir": os.path.join(self.workdir, "run"), "log_level": "info",
                  "totals_snapshot_interval": 600, "ports": [self.port_cfg]}
        self.cfg_path = os.path.join(self.workdir, "collector.yaml")
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
        from collector.config import load

        self.cfg = load(self.cfg_path)
        self.pump = self.line_specs["pump"]
        self.specs = [self.pump]
        self.truth_path = self.pump["truth"]
        self.sims = []
        self.daemon = None
        self.log = open(os.path.join(self.workdir, "daemon.log"), "a")

    def start_sims(self):
        self.sims = sinopec_pump.start_port(self.line_specs, self.log)

    def sim(self, command):
        control(self.pump["link"], command)

    def sim_status(self, address=None):
        state = sinopec_pump.status(self.pump)
        return state if address is None else state["dispensers"][str(address)]

    def tap_status(self):
        return bus_tap.status(self.line_specs["tap"])

    def driver_pid(self):
        return self.supervisor().get("children", {}).get("drv-s01", {}).get("pid")

    def all_idle(self):
        state = self.sim_status()
        return state["closed"] and not state["busy"] and all(not d["unsent"] and d["uploading"] is None
                                         for d in state["dispensers"].values())

    def settle(self, sales):
        """``sales`` sold and stored, the startup totals snapshot taken, every dispenser idle: from
        here on an idle line makes the driver capture nothing until the next record."""
        self.wait_for(lambda: len(self.truth()[0]) >= sales, 60, f"{sales} simulated sales")
        self.wait_all_captured()
        self.wait_for(lambda: len([t for t in self.records("totals") if t["reason"] == "startup"])
                      == len(self.cfg.nozzles()), 20, "the startup totals snapshot")

    def sales_by_ttc(self):
        out = {}
        for s in self.records("sale"):
            out.setdefault((s["pump"], s["pump_txn"]), []).append(s)
        return out


@pytest.fixture
def make_station(tmp_path):
    made = []

    def make(**kw):
        s = SinopecStation(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _check_against_truth(st, truth):
    """Every simulated sale stored exactly once, with its TTC, totalizer and scaled values."""
    stored = st.sales_by_ttc()
    assert all(len(v) == 1 for v in stored.values())
    for s in truth:
        (r,) = stored[(s["address"], s["ttc"])]
        assert r["raw"][:4] == [s["volume"], s["amount"], s["price"], s["vol_total"]]
        assert r["volume"] == s["volume"] / 100 and r["amount"] == s["amount"] / 100
        assert r["price"] == s["price"] / 100 and r["vol_total"] == s["vol_total"] / 100
        assert r["amt_total"] is None  # the protocol has no amount totalizer
        assert r["logical_nozzle"] == s["nozzle"] and r["flags"] == []


# ---------------------------------------------------------------- master mode


def test_master_every_sale_stored_once_with_totals(make_station):
    st = make_station(mode="master", dispensers=(3, 3), nozzles=(1, 4), max_sales=30)
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.truth()[0]) >= 30, 60, "30 simulated sales")
    result = st.wait_all_captured()
    assert st.stop_daemon() == 0
    sales, violations = st.truth()
    assert violations == []  # only 30H, 32H-ack, 38H, 3AH and 3EH reached the dispensers
    assert (result["sold"], result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) == (
        30, 30, 0, 0, 0)
    _check_against_truth(st, sales)
    # per nozzle the chain is continuous and in the dispenser's TTC order
    for nid in {r["nozzle"] for r in st.records("sale")}:
        stored = [r for r in st.records("sale") if r["nozzle"] == nid]
        assert [r["pump_txn"] for r in stored] == sorted(r["pump_txn"] for r in stored)
        for prev, cur in zip(stored, stored[1:]):
            assert cur["vol_total_start"] == prev["vol_total"]
    for address, d in st.sim_status()["dispensers"].items():
        assert d["download_requests"] == 0  # 30H carried the dispenser's own list versions (read by 3AH)
        assert d["bad_acks"] == 0 and d["last_time"] is not None
        assert sorted(d["acked"]) == sorted(s["ttc"] for s in sales if s["address"] == int(address))
    states = {s["state"] for s in st.records("nozzle_state")}
    assert {"fuelling", "idle"} <= states
    snapshots = [t for t in st.records("totals") if t["reason"] == "startup"]
    assert len(snapshots) == len(st.cfg.nozzles())
    infos = [e for e in st.records("event") if e["event"] == "dispenser_info"]
    assert sorted(e["pump"] for e in infos) == [1, 2, 3] and infos[0]["dispenser_name"].startswith("S01-D")
    idents = st.records("identity")
    assert len(idents) == len(st.cfg.nozzles()) and all(i["pump_identity"] for i in idents)


def test_master_ack_only_after_store_kill_9_between_receive_and_ack(make_station):
    st = make_station(mode="master", dispensers=(1, 1), nozzles=(2, 2), max_sales=3)
    st.start_sims()
    st.start_daemon()
    st.settle(2)
    store_pid = st.supervisor()["children"]["store"]["pid"]
    driver = st.driver_pid()
    os.kill(store_pid, signal.SIGSTOP)  # the store cannot commit: the driver holds the record
    try:
        ttc = st.sim_status(1)["ttc"] + 1
        st.sim("sell 1")
        st.wait_for(lambda: st.sim_status(1)["uploads"].get(str(ttc)), 10, "the record uploaded to the driver")
        assert ttc not in st.sim_status(1)["acked"]  # received, not durable, so not acknowledged
        assert (1, ttc) not in st.sales_by_ttc()
        os.kill(driver, signal.SIGKILL)  # between receive and ack
        st.wait_for(lambda: (st.driver_pid() or driver) != driver, 30, "driver restart")
    finally:
        os.kill(store_pid, signal.SIGCONT)
    assert ttc not in st.sim_status(1)["acked"]
    st.wait_for(lambda: ttc in st.sim_status(1)["acked"], 30, "the re-sent record acknowledged")
    assert st.sim_status(1)["uploads"][str(ttc)] >= 2  # the dispenser offered it again
    assert len(st.sales_by_ttc()[(1, ttc)]) == 1
    result = st.wait_all_captured()
    assert (result["missing"], result["duplicated"], result["chain_breaks"]) == (0, 0, 0)
    assert "killed by signal 9" in st.supervisor()["children"]["drv-s01"]["last_exit"]
    assert st.stop_daemon() == 0


def test_master_resent_records_are_stored_once(make_station):
    st = make_station(mode="master", dispensers=(1, 1), nozzles=(2, 2), max_sales=2)
    st.start_sims()
    st.start_daemon()
    st.settle(2)
    st.sim("deaf 1 on")  # the dispenser misses every acknowledgement and offers the record again
    ttc = st.sim_status(1)["ttc"] + 1
    st.sim("sell 1")
    st.wait_for(lambda: st.sim_status(1)["uploads"].get(str(ttc), 0) >= 3, 20, "three uploads of one record")
    st.sim("deaf 1 off")
    st.sim("sell 1")
    st.wait_for(lambda: ttc + 1 in st.sim_status(1)["acked"], 20, "the next record acknowledged")
    stored = st.sales_by_ttc()
    assert len(stored[(1, ttc)]) == 1 and len(stored[(1, ttc + 1)]) == 1
    st.wait_for(lambda: st.board("s01")["stats"]["duplicates"] >= 2, 10, "the repeats seen as duplicates")
    result = st.wait_all_captured()
    assert (result["missing"], result["duplicated"], result["chain_breaks"]) == (0, 0, 0)
    assert st.truth()[1] == []


def test_master_ttc_gap_read_back_by_3eh_and_lost_record_reported(make_station):
    st = make_station(mode="master", dispensers=(1, 1), nozzles=(2, 2), max_sales=2)
    st.start_sims()
    st.start_daemon()
    st.settle(2)
    base = st.sim_status(1)["ttc"]
    # two records acknowledged by someone else (never uploaded), then one uploaded
    st.sim("skip 1 2")
    for _ in range(3):
        st.sim("sell 1")
    st.wait_for(lambda: base + 3 in st.sim_status(1)["acked"], 20, "the record after the gap")
    assert st.sim_status(1)["reads"][:2] == [base + 1, base + 2]
    stored = st.sales_by_ttc()
    assert [stored[(1, base + i)][0]["source"] for i in (1, 2, 3)] == ["read", "read", "upload"]
    # one record lost by the dispenser (3EH answers 3FH) on nozzle 1, the next sale on nozzle 2
    st.sim("forget 1 1")
    st.sim("sell 1 1")
    st.sim("sell 1 2")
    st.wait_for(lambda: base + 5 in st.sim_status(1)["acked"], 20, "the record after the lost one")
    assert base + 4 in st.sim_status(1)["no_such"]
    alarm = st.wait_for(lambda: [a for a in st.records("alarm") if a["alarm"] == "ttc_gap"], 10, "ttc_gap alarm")
    assert (alarm[0]["first_ttc"], alarm[0]["last_ttc"], alarm[0]["reason"]) == (base + 4, base + 4,
                                                                                  "no such record (3FH)")
    lost = next(s for s in st.truth()[0] if s["ttc"] == base + 4)
    nozzle_id = st.cfg.ports[0].pumps[0].nozzles[0].id
    gap = st.wait_for(lambda: [g for g in st.records("gap") if g["nozzle"] == nozzle_id], 20,
                      "a totals-chain gap record for the lost sale")
    assert gap[0]["missed_volume"] == lost["volume"] / 100
    assert gap[0]["vol_total_after"] == lost["vol_total"] / 100
    recovered = [e for e in st.records("event") if e["event"] == "ttc_gap_recovered"]
    assert recovered and recovered[0]["recovered"] == 2
    result = st.compare()
    assert (result["missing"], result["duplicated"]) == (1, 0)  # only the record the dispenser lost
    assert st.truth()[1] == []
    assert st.stop_daemon() == 0


# ---------------------------------------------------------------- listen mode


def test_listen_every_sale_stored_once_and_not_one_byte_written(make_station):
    st = make_station(mode="listen", dispensers=(2, 2), nozzles=(1, 3), max_sales=16,
                      pos={"ack_form": "short"})  # matched by wire order, not by TTC
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.truth()[0]) >= 16, 60, "16 simulated sales")
    result = st.wait_all_captured()
    assert st.stop_daemon() == 0
    sales, violations = st.truth()
    assert violations == []
    assert (result["sold"], result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) == (
        16, 16, 0, 0, 0)
    _check_against_truth(st, sales)
    tap = st.tap_status()
    assert tap["collector_bytes"] == 0 and tap["collector_sample"] == ""  # asserted at the pty, by the tap
    assert tap["relayed"]["master_to_bus"] > 0 and tap["relayed"]["bus_to_master"] > 0
    assert tap["tapped"] > 0
    board = st.board("s01")
    assert board["mode"] == "listen" and board["line"]["tx"] == 0 and board["pc_address"] == 0
    acked = sinopec_pos.status(st.line_specs["pos"])["acked"]
    assert sorted(t for v in acked.values() for t in v) == sorted(s["ttc"] for s in sales)
    assert {"fuelling", "idle"} <= {s["state"] for s in st.records("nozzle_state")}
    assert sorted(e["pump"] for e in st.records("event") if e["event"] == "dispenser_info") == [1, 2]  # once each
    assert st.records("totals")


def test_listen_gap_while_collector_down_is_reported(make_station):
    st = make_station(mode="listen", dispensers=(2, 2), nozzles=(2, 2), gap=(0.6, 1.6), max_sales=40)
    st.start_sims()
    st.start_daemon()
    st.wait_for(lambda: len(st.records("sale")) >= 4, 30, "sales before the outage")
    # where every nozzle's totals stand is known (a sale, or totals read while its dispenser was quiet):
    # fuel that leaves a nozzle the collector never knew the totals of cannot be told from history
    st.wait_for(lambda: all(n.get("chain") is not None for p in st.board("s01")["pumps"].values()
                            for n in p["nozzles"].values()), 30, "the totals chain of every nozzle")
    pos_acks = lambda: sum(len(v) for v in sinopec_pos.status(st.line_specs["pos"])["acked"].values())  # noqa: E731
    st.kill_daemon()
    down_at = pos_acks()
    st.wait_for(lambda: pos_acks() >= down_at + 6, 30, "sales made while the collector is down")
    st.start_daemon()
    truth_at_restart = {(s["address"], s["ttc"]) for s in st.truth()[0]}
    st.wait_for(lambda: all(any(k[0] == a and k not in truth_at_restart for k in st.sales_by_ttc()) for a in (1, 2)),
                30, "a new sale on each dispenser after the restart")
    st.close_forecourt()
    st.wait_for(st.all_idle, 30, "every dispenser idle")
    sales = st.truth()[0]
    stored = st.sales_by_ttc()
    missed = [s for s in sales if (s["address"], s["ttc"]) not in stored]
    assert len(missed) >= 4
    assert st.tap_status()["collector_bytes"] == 0 and st.truth()[1] == []
    by_number = {(p.address, n.number): n.id for p in st.cfg.ports[0].pumps for n in p.nozzles}

    def accounted():
        gaps = st.records("gap")
        for nid in {by_number[(s["address"], s["nozzle"])] for s in missed}:
            lost = sum(s["volume"] for s in missed if by_number[(s["address"], s["nozzle"])] == nid)
            found = round(sum(g["missed_volume"] for g in gaps if g["nozzle"] == nid) * 100)
            if found != lost:
                return False
        return gaps

    gaps = st.wait_for(accounted, 30, "the missed volume found by the totals chain, nozzle by nozzle")
    assert {g["nozzle"] for g in gaps} == {by_number[(s["address"], s["nozzle"])] for s in missed}
    # the TTC sequence names exactly the records that were never seen
    named = {(a["pump"], t) for a in st.records("alarm") if a["alarm"] == "ttc_gap"
             for t in range(a["first_ttc"], a["last_ttc"] + 1)}
    assert named == {(s["address"], s["ttc"]) for s in missed}
    assert all(len(v) == 1 for v in stored.values())
    assert all(r["flags"] == [] for r in st.records("sale"))  # no false gap made a later sale look wrong
    assert st.stop_daemon() == 0


# ---------------------------------------------------------------- pieces


def test_listen_line_cannot_write():
    assert not hasattr(ReadOnlyLine, "write")


def test_decode_cli_reads_both_directions():
    record = sc.TransactionRecord(
        ttc=41, trans_type=7, date=20240115, time=143005, card_asn=bytes(10), card_balance=0, amount=3925,
        card_ctc=0, card_tac=bytes(4), psam_gmac=bytes(4), psam_tac=bytes(4), psam_asn=bytes(10), psam_tid=bytes(6),
        psam_ttc=0, debit_source=0, settlement_unit=0, card_type=0, key_version=0, nozzle=2, grade_code=1092,
        volume=500, price=785, employee=0, volume_total=123456)
    wire = (sc.encode_message(sc.GeneralQuery(20240115143010), dispenser=1, pc=0, frame_no=7)
            + sc.encode_message(record, dispenser=1, pc=0, frame_no=7)
            + sc.encode_message(sc.TransactionAck(41), dispenser=1, pc=0, frame_no=8))
    out = subprocess.run([sys.executable, "-m", "collector.cli", "decode", "--protocol", "sinopec", wire.hex()],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    items = json.loads(out.stdout)
    assert [i["command"] for i in items] == ["30H", "32H", "32H"]
    assert items[1]["likely"] == "disp" and items[1]["candidates"]["disp"]["ttc"] == 41
    assert items[2]["likely"] == "pc" and items[2]["candidates"]["pc"]["ttc"] == 41
    out = subprocess.run([sys.executable, "-m", "collector.cli", "decode", "--protocol", "sinopec", "--direction",
                          "disp", sc.encode_message(record, dispenser=1, pc=0).hex()],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)[0]["message"]["volume_total"] == 123456


def test_master_poller_sends_only_read_messages():
    from types import SimpleNamespace

    from collector.config import Decimals, NozzleConfig, PortConfig, PumpConfig, SerialProfile
    from drivers.sinopec.poller import SinopecPoller

    profile = SerialProfile(9600, 8, "none", 1, False, 0.01, 0.0, 0.25, 5)
    nozzle = NozzleConfig(1, 1, "92", "92", Decimals())
    port = PortConfig("s01", "/dev/null", "sinopec", "master", profile, (PumpConfig(1, (nozzle,)),))
    logged = []
    ctx = SimpleNamespace(port=port, log=SimpleNamespace(error=lambda *a: logged.append(a)))
    poller = SinopecPoller(ctx)
    written = []
    poller.line = SimpleNamespace(write=written.append, byte_time=0.001, read_available=lambda t: b"")
    d = poller.dispensers[0]
    for message in (sc.TransactionAck(5, result=1), sc.RawMessage(0x33, b"\x04\x00\x00", sc.PC), sc.ErrorAck(),
                    sc.TransactionRecord.decode_payload(bytes(95))):
        assert poller._exchange(d, message) is None
    assert written == [] and len(logged) == 4
    poller._exchange(d, sc.TransactionAck(5))
    assert len(written) == 1 and sc.decode_message(sc.decode_frame(written[0]), sc.PC) == sc.TransactionAck(5)
