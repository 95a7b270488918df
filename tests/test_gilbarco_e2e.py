"""Gilbarco two-wire end to end over pseudo-terminals: pump-loop simulators that echo every byte,
the real daemon in master mode (echo suppression, 5787 8E1) and in listen mode behind a bus tap
with a simulated POS, the real store."""

from __future__ import annotations

import time

import pytest

from tests.forecourt import (
    Forecourt,
    gilbarco_loop,
    listen_port,
    station_control,
    stored_by_nozzle,
    truth_by_nozzle,
)
from tools.sim import bus_tap


@pytest.fixture
def make_forecourt(tmp_path):
    made = []

    def make(ports, **kw):
        f = Forecourt(tmp_path, ports, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def _all_captured(fc: Forecourt) -> dict:
    try:
        return fc.wait_all_captured()
    except AssertionError as exc:  # say what is missing and what the drivers saw
        boards = {p.name: fc.board(p.name).get("stats") for p in fc.cfg.ports}
        raise AssertionError(f"{exc}: {fc.compare()} {boards}") from None


def _wait_polling(fc: Forecourt) -> None:
    """Customers come in once the collector has every pump online (nothing sold before it polls)."""
    fc.wait_for(lambda: all(all(p.get("online") for p in fc.board(port.name).get("pumps", {}).values())
                            and fc.board(port.name).get("pumps") for port in fc.cfg.ports), 20, "every pump online")
    fc.open_forecourt()


def _check_values(fc: Forecourt) -> None:
    """Every stored sale carries the pump's own numbers (2 decimals everywhere)."""
    truth = {(n, s["vol_total"]): s for n, sales in truth_by_nozzle(fc).items() for s in sales}
    for nid, sales in stored_by_nozzle(fc).items():
        for r in sales:
            s = truth[(nid, r["raw"][3])]
            assert (r["volume"], r["amount"], r["price"]) == (s["volume"] / 100, s["amount"] / 100, s["price"] / 100)
            assert (r["vol_total"], r["amt_total"]) == (s["vol_total"] / 100, s["amt_total"] / 100)
            assert r["flags"] == []


def test_master_two_loops_every_sale_once_echo_stripped(make_forecourt, tmp_path):
    # loop 1: 6-digit pumps 1, 2 and 16 (16 is nibble 0 on the wire); loop 2: 8-digit pumps
    port1, sim1 = gilbarco_loop(tmp_path, "g01", pumps=[1, 2, 16], grades=(1, 3), seed=11, max_sales=10,
                                closed=True)
    port2, sim2 = gilbarco_loop(tmp_path, "g02", pumps=2, grades=(2, 2), seed=12, first_id=20, max_sales=8,
                                digits=8, options={"digits": 8}, closed=True)
    fc = make_forecourt([{"port": port1, "sims": [("tools.sim.gilbarco_pump", sim1)]},
                         {"port": port2, "sims": [("tools.sim.gilbarco_pump", sim2)]}])
    assert fc.cfg.ports[0].serial.baud == 5787 and fc.cfg.ports[0].serial.parity == "even"
    assert fc.cfg.ports[0].serial.echo_suppression
    fc.start_sims()
    fc.start_daemon()
    _wait_polling(fc)
    fc.wait_for(lambda: len(fc.truth()[0]) >= 18, 45, "18 simulated sales")
    result = _all_captured(fc)
    assert (result["sold"], result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) \
        == (18, 18, 0, 0, 0)
    assert fc.truth()[1] == []  # not one 1n, 2n or 3n reached a pump
    _check_values(fc)
    assert {s["pump"] for s in fc.records("sale")} >= {16}
    for name in ("g01", "g02"):
        board = fc.board(name)
        assert board["protocol"] == "gilbarco" and board["mode"] == "master"
        assert board["stats"]["collisions"] == 0 and board["stats"]["no_echo"] == 0
        assert board["line"]["rx"] > board["line"]["tx"] > 0  # the echo of every byte came back, then the replies
    states = {s["state"] for s in fc.records("nozzle_state")}
    assert {"calling", "fuelling", "idle"} <= states
    totals = [t for t in fc.records("totals") if t["reason"] == "startup"]
    assert len(totals) == len(fc.cfg.nozzles())
    assert fc.stop_daemon() == 0


def test_master_collisions_are_counted_and_retried(make_forecourt, tmp_path):
    port, sim = gilbarco_loop(tmp_path, "g01", pumps=2, grades=(1, 2), seed=21, max_sales=8, closed=True)
    fc = make_forecourt([{"port": port, "sims": [("tools.sim.gilbarco_pump", sim)]}])
    fc.start_sims()
    fc.start_daemon()
    _wait_polling(fc)
    while len(fc.truth()[0]) < 8:  # another transmitter keeps garbling the loop while customers buy
        fc.control("g01", "collide 2")
        time.sleep(0.3)
    result = _all_captured(fc)
    assert (result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) == (8, 0, 0, 0)
    stats = fc.board("g01")["stats"]
    assert stats["collisions"] >= 5
    assert not [a for a in fc.records("alarm") if a["alarm"] in ("pump_offline", "nozzle_offline")]
    _check_values(fc)


def test_master_pump_offline_and_back(make_forecourt, tmp_path):
    port, sim = gilbarco_loop(tmp_path, "g01", pumps=2, grades=(2, 2), seed=31)
    fc = make_forecourt([{"port": port, "sims": [("tools.sim.gilbarco_pump", sim)]}])
    fc.start_sims()
    fc.start_daemon()
    fc.wait_for(lambda: fc.board("g01").get("pumps", {}).get("0x2", {}).get("online"), 20, "pump 2 online")
    fc.control("g01", "silence 2 on")  # the loop still echoes; pump 2 no longer answers
    alarms = fc.wait_for(lambda: [a for a in fc.records("alarm") if a["alarm"] == "nozzle_offline"], 20,
                         "nozzle offline alarms")
    pump2 = fc.cfg.ports[0].pumps[1]
    assert sorted(a["nozzle"] for a in alarms) == sorted(n.id for n in pump2.nozzles)
    offline = [a for a in fc.records("alarm") if a["alarm"] == "pump_offline"]
    assert offline[0]["pump"] == 2 and offline[0]["silent_polls"] >= 5
    assert fc.board("g01")["stats"]["no_echo"] == 0
    fc.control("g01", "silence 2 off")
    fc.wait_for(lambda: [e for e in fc.records("event") if e["event"] == "pump_online" and e["pump"] == 2
                         and not e["first"]], 20, "pump 2 back online")
    fc.close_forecourt()
    fc.wait_for(fc.all_idle, 20, "idle")
    assert fc.compare()["duplicated"] == 0


def _listen_forecourt(make_forecourt, tmp_path, **pos):
    port, sim = gilbarco_loop(tmp_path, "g01", pumps=3, grades=(1, 3), seed=41, max_sales=10)
    lp = listen_port(tmp_path, port, sim, "tools.sim.gilbarco_pump", "tools.sim.gilbarco_pos", pos=pos,
                     baud=5787, bits=11)
    fc = make_forecourt([lp])
    fc.start_sims()
    fc.start_daemon()
    fc.wait_for(lambda: fc.board("g01").get("mode") == "listen", 20, "the listener running")
    station_control(lp["pos"]["link"], "pause off")
    fc.wait_for(lambda: len(fc.truth()[0]) >= 10, 50, "10 sales under the POS")
    fc.close_forecourt()
    fc.wait_for(fc.all_idle, 20, "idle")
    return fc, lp


def test_listen_every_sale_once_and_never_a_byte_written(make_forecourt, tmp_path):
    fc, lp = _listen_forecourt(make_forecourt, tmp_path)
    result = fc.wait_for(lambda: (lambda r: r if r["missing"] == 0 else None)(fc.compare()), 20, "every sale stored")
    assert (result["sold"], result["stored"], result["duplicated"], result["chain_breaks"]) == (10, 10, 0, 0)
    _check_values(fc)
    assert bus_tap.collector_bytes(lp["tap"]) == 0  # at the pty: the collector never transmitted
    board = fc.board("g01")
    assert board["line"]["tx"] == 0 and board["line"]["rx"] > 0
    assert board["stats"]["echoes"] > 0  # the tap carries each POS byte twice (sent and echoed)
    assert board["stats"]["pos_writes"] >= 10  # the POS authorised every customer; that is its job
    assert fc.truth()[1] == []
    assert {"fuelling", "idle"} <= {s["state"] for s in fc.records("nozzle_state")}
    assert fc.stop_daemon() == 0
    assert bus_tap.collector_bytes(lp["tap"]) == 0


def test_listen_pos_without_totals_stores_flagged_sales(make_forecourt, tmp_path):
    fc, lp = _listen_forecourt(make_forecourt, tmp_path, read_totals=False)
    truth = truth_by_nozzle(fc)
    expect = sorted((n, s["volume"], s["amount"]) for n, sales in truth.items() for s in sales)

    def stored():
        got = sorted((r["nozzle"], r["raw"][0], r["raw"][1]) for rs in stored_by_nozzle(fc).values() for r in rs)
        return got if got == expect else None

    fc.wait_for(stored, 20, "every sale stored without totals")
    sales = fc.records("sale")
    assert len(sales) == 10
    assert all(s["flags"] == ["no_totals"] and s["vol_total"] is None for s in sales)
    assert not [a for a in fc.records("alarm") if a["alarm"] == "metering_out_of_tolerance"]
    assert bus_tap.collector_bytes(lp["tap"]) == 0
