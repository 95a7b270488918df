"""DART listen mode end to end: a simulated station POS drives the DART pump simulator (in
``pos_controlled`` mode) through a bus tap; the real daemon listens on the tap's third pty and must
store every sale exactly once from what the POS reads, without writing a single byte."""

from __future__ import annotations

import pytest

from tests.forecourt import (
    Forecourt,
    dart_bus,
    listen_port,
    station_control,
    stored_by_nozzle,
    truth_by_nozzle,
)
from tools.sim import bus_tap

SALES = 10


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


def _run(make_forecourt, tmp_path, **pos):
    port, sim = dart_bus(tmp_path, "d01", sides=3, nozzles=(1, 2), seed=17, max_sales=SALES,
                         options={"totals_wait": 2.0})
    lp = listen_port(tmp_path, port, sim, "tools.sim.dart_pump", "tools.sim.dart_pos", pos=pos, baud=9600, bits=11)
    fc = make_forecourt([lp])
    assert fc.cfg.ports[0].mode == "listen"
    fc.start_sims()
    fc.start_daemon()
    fc.wait_for(lambda: fc.board("d01").get("mode") == "listen", 20, "the listener running")
    station_control(lp["pos"]["link"], "pause off")
    fc.wait_for(lambda: len(fc.truth()[0]) >= SALES, 50, f"{SALES} sales under the POS")
    fc.close_forecourt()
    fc.wait_for(fc.all_idle, 20, "idle")
    truth = truth_by_nozzle(fc)
    expect = sorted((n, s["volume"], s["amount"]) for n, sales in truth.items() for s in sales)

    def stored():
        got = sorted((r["nozzle"], r["raw"][0], r["raw"][1]) for rs in stored_by_nozzle(fc).values() for r in rs)
        return got if got == expect else None

    fc.wait_for(stored, 20, "every sale stored once")
    return fc, lp, truth


def _never_wrote(fc, lp):
    assert bus_tap.collector_bytes(lp["tap"]) == 0  # counted at the pty by the tap
    board = fc.board("d01")
    assert board["line"]["tx"] == 0 and board["line"]["rx"] > 0
    assert fc.truth()[1] == []  # no violation: the tap writes one if the collector ever transmits
    assert board["stats"]["pos_writes"] >= SALES  # the POS reset and authorised; that is its job


def test_listen_with_volume_and_amount_totals(make_forecourt, tmp_path):
    fc, lp, truth = _run(make_forecourt, tmp_path)
    result = fc.compare()
    assert (result["sold"], result["stored"], result["missing"], result["duplicated"], result["chain_breaks"]) \
        == (SALES, SALES, 0, 0, 0)
    by_total = {(n, s["vol_total"]): s for n, sales in truth.items() for s in sales}
    for nid, sales in stored_by_nozzle(fc).items():
        for r in sales:
            s = by_total[(nid, r["raw"][3])]
            assert (r["amt_total"], r["price"], r["flags"]) == (s["amt_total"] / 100, s["price"] / 100, [])
            assert r["source"] == "listen"
    states = {s["state"] for s in fc.records("nozzle_state")}
    assert {"calling", "authorized", "fuelling", "idle"} <= states
    stats = fc.board("d01")["stats"]
    assert stats["sales_without_totals"] == 0 and stats["bad_frames"] == 0
    _never_wrote(fc, lp)
    assert fc.stop_daemon() == 0
    assert bus_tap.collector_bytes(lp["tap"]) == 0


def test_listen_pos_reads_volume_totals_only(make_forecourt, tmp_path):
    fc, lp, truth = _run(make_forecourt, tmp_path, amount_totals=False)
    result = fc.compare()
    assert (result["stored"], result["missing"], result["duplicated"]) == (SALES, 0, 0)
    sales = fc.records("sale")
    assert all(s["amt_total"] is None and s["flags"] == [] for s in sales)
    _never_wrote(fc, lp)


def test_listen_pos_never_reads_totals_sales_flagged(make_forecourt, tmp_path):
    fc, lp, truth = _run(make_forecourt, tmp_path, read_totals=False)
    sales = fc.records("sale")
    assert len(sales) == SALES
    assert all(s["flags"] == ["no_totals"] and s["vol_total"] is None for s in sales)
    assert not [a for a in fc.records("alarm") if a["alarm"] == "metering_out_of_tolerance"]
    fc.wait_for(lambda: fc.board("d01")["stats"]["sales_without_totals"] == SALES, 5, "the status board")
    _never_wrote(fc, lp)
