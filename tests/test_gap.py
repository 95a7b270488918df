"""Totals-chain gaps: the collector is killed while customers keep buying, then restarted. The
sales made while it was down cannot be read any more (the pump keeps only its last one), but the
totalizers moved: each run of missed sales must come back as one gap record whose totals before
and after are exactly the pump's (ground truth), in DART and Gilbarco master mode. Every sale the
collector did see is stored exactly once, and the GB/T 9081 identity baseline survives the restart."""

from __future__ import annotations

import pytest

from tests.forecourt import Forecourt, gilbarco_loop, stored_by_nozzle, truth_by_nozzle
from tests.harness import Station


@pytest.fixture
def made(tmp_path):
    out = []
    yield out
    for st in out:
        st.close()


def _stored_totals(st) -> dict[int, set]:
    return {n: {r["raw"][3] for r in rs} for n, rs in stored_by_nozzle(st).items()}


def _kill_sell_restart(st) -> None:
    nozzles = [n.id for _, _, n in st.cfg.nozzles()]
    st.start_sims()
    st.start_daemon()
    if isinstance(st, Forecourt):  # its customers wait until the collector polls
        st.wait_for(lambda: st.board(st.cfg.ports[0].name).get("stats", {}).get("cycles", 0) > 2, 20, "polling")
        st.open_forecourt()
    st.wait_for(lambda: all(_stored_totals(st).get(n) for n in nozzles), 40, "a stored sale on every nozzle")
    st.kill_daemon()  # supervisor, store writer and drivers at once: nobody polls
    down = {n: len(s) for n, s in truth_by_nozzle(st).items()}
    st.wait_for(lambda: all(len(truth_by_nozzle(st).get(n, [])) >= down.get(n, 0) + 2 for n in nozzles), 40,
                "two sales on every nozzle while the collector is down")
    up = {n: len(s) for n, s in truth_by_nozzle(st).items()}
    st.start_daemon()

    def fresh_sale_everywhere():
        truth, stored = truth_by_nozzle(st), _stored_totals(st)
        return all(any(s["vol_total"] in stored.get(n, ()) for s in truth[n][up[n]:]) for n in nozzles)

    st.wait_for(fresh_sale_everywhere, 40, "sales stored after the restart")
    st.close_forecourt()
    st.wait_for(st.all_idle, 20, "every pump idle")

    def settled():
        truth, stored = truth_by_nozzle(st), _stored_totals(st)
        return all(truth[n][-1]["vol_total"] in stored.get(n, ()) for n in nozzles)

    st.wait_for(settled, 20, "the last sale of every nozzle stored")


def _assert_gaps_match_truth(st) -> int:
    """Each run of sales missing from the store is exactly one gap record with the pump's totals."""
    truth, sales, gaps = truth_by_nozzle(st), stored_by_nozzle(st), stored_by_nozzle(st, "gap")
    runs_seen = 0
    for nid, sold in truth.items():
        stored = [r["raw"][3] for r in sales.get(nid, [])]
        assert len(stored) == len(set(stored)), f"nozzle {nid}: a sale stored twice"
        assert all(r["flags"] == [] for r in sales.get(nid, [])), f"nozzle {nid}: metering flags"
        runs, run, previous = [], [], None
        for s in sold:
            if s["vol_total"] in stored:
                if run and previous is not None:
                    runs.append((previous, run))
                run, previous = [], s
            else:
                run.append(s)
        if run and previous is not None:
            runs.append((previous, run))
        expected = sorted((p["vol_total"], r[-1]["vol_total"], p["amt_total"], r[-1]["amt_total"],
                           sum(x["volume"] for x in r)) for p, r in runs)
        found = sorted((round(g["vol_total_before"] * 100), round(g["vol_total_after"] * 100),
                        round(g["amt_total_before"] * 100), round(g["amt_total_after"] * 100),
                        round(g["missed_volume"] * 100)) for g in gaps.get(nid, []))
        assert found == expected, f"nozzle {nid}: gaps {found} but the pump sold {expected}"
        runs_seen += len(runs)
    return runs_seen


def test_dart_master_gap_after_collector_down(made, tmp_path):
    st = Station(tmp_path, ports=1, sides=(2, 2), nozzles=(1, 1), seed=23)
    made.append(st)
    _kill_sell_restart(st)
    assert _assert_gaps_match_truth(st) >= 2
    assert st.truth()[1] == []
    # the identity baseline (DC9 pump identity per nozzle) came back from the store: no new event
    idents = st.records("identity")
    assert sorted(r["nozzle"] for r in idents) == sorted(n.id for _, _, n in st.cfg.nozzles())
    assert all(r["event"] == "identity" and r["pump_identity"] for r in idents)
    assert st.stop_daemon() == 0


def test_gilbarco_master_gap_after_collector_down(made, tmp_path):
    port, sim = gilbarco_loop(tmp_path, "g01", pumps=2, grades=(1, 1), seed=29, closed=True)
    st = Forecourt(tmp_path, [{"port": port, "sims": [("tools.sim.gilbarco_pump", sim)]}])
    made.append(st)
    _kill_sell_restart(st)
    assert _assert_gaps_match_truth(st) >= 2
    assert st.truth()[1] == []
    assert st.stop_daemon() == 0
