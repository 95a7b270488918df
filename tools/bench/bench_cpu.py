"""Steady CPU of the daemon tree while it polls a simulated 32-port station.

Starts the simulators and ``collector run`` (``tools.station`` defaults: 1-2 pump sides per port,
poll_interval 0.25 s, customers every 2-8 s), waits for the first poll on every port and a warm-up
(10 s; ``--quick`` 3 s), then reads utime+stime of every process from /proc/<pid>/stat at the start
and end of a window (30 s; ``--quick`` 8 s). CPU % = sum of tick deltas / wall time, as % of ONE core.
The simulators' CPU is reported separately (they are the test rig, not the product). Polls/s is the
sum over ports of the drivers' ``polls`` counters (status files) over the same window.

The window is also cut into 6 slices (``--quick`` 2) whose median and range are quoted beside the
whole-window figure: the machine is shared and noisy.

    python -m tools.bench.bench_cpu [--quick] [--ports 32] [--window S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import TICKS, LiveStation, cpu_ticks, header, median, table  # noqa: E402


def _polls(st: LiveStation) -> tuple[int, int, int]:
    b = st.boards()
    return (sum(x["stats"].get("polls", 0) for x in b.values()), sum(x["stats"].get("sales", 0) for x in b.values()),
            sum(x["stats"].get("timeouts", 0) for x in b.values()))


def _snapshot(st: LiveStation, pids: dict[int, str], sims: list[int]) -> dict:
    return {"t": time.monotonic(), "ticks": {p: cpu_ticks(p) for p in [*pids, *sims]}, "polls": _polls(st)}


def _between(a: dict, b: dict, pids: dict[int, str], sims: list[int]) -> dict:
    wall = b["t"] - a["t"]

    def pct(ps) -> float:
        return 100.0 * sum((b["ticks"][p] or 0) - a["ticks"][p] for p in ps if a["ticks"][p] is not None) / TICKS / wall

    drivers = [p for p, role in pids.items() if role.startswith("drv-")]
    return {
        "wall": wall, "tree": pct(pids), "supervisor": pct([p for p, r in pids.items() if r == "supervisor"]),
        "store": pct([p for p, r in pids.items() if r == "store"]), "drivers": pct(drivers),
        "other": pct([p for p, r in pids.items() if r not in ("supervisor", "store") and not r.startswith("drv-")]),
        "driver_median": median(pct([p]) for p in drivers) if drivers else 0.0,
        "sims": pct(sims), "polls_s": (b["polls"][0] - a["polls"][0]) / wall, "sales": b["polls"][1] - a["polls"][1],
        "timeouts": b["polls"][2] - a["polls"][2], "ndrivers": len(drivers),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s warm-up, 8 s window")
    ap.add_argument("--ports", type=int, default=32)
    ap.add_argument("--window", type=float, help="seconds (default 30, quick 8)")
    args = ap.parse_args(argv)
    secs = args.window or (8.0 if args.quick else 30.0)
    nslices = 6 if secs >= 12 else 2
    warmup = 3.0 if args.quick else 10.0

    header(f"bench_cpu: steady CPU of the daemon tree, {args.ports} ports")
    print(f"   warm-up {warmup:.0f} s; one {secs:.0f} s window, also cut in {nslices} slices (median and range "
          "quoted); % of ONE core", flush=True)
    with LiveStation(args.ports, stop_timeout=1.0) as st:
        st.start_sims()
        st.start_daemon()
        st.wait_first_polls()
        sides = sum(len(p["pumps"]) for p in st.boards().values())
        time.sleep(warmup)
        pids = st.daemon_pids()
        sims = st.sim_pids()
        snaps = [_snapshot(st, pids, sims)]
        for _ in range(nslices):
            time.sleep(secs / nslices)
            snaps.append(_snapshot(st, pids, sims))
        restarted = len([p for p in pids if p not in st.daemon_pids()])
    total = _between(snaps[0], snaps[-1], pids, sims)
    slices = [_between(a, b, pids, sims) for a, b in zip(snaps, snaps[1:])]

    def rng(key: str) -> str:
        return f"{median(s[key] for s in slices):.2f} ({min(s[key] for s in slices):.2f}-{max(s[key] for s in slices):.2f})"

    print()
    rows = [["daemon tree (product)", f"{total['tree']:.2f}", rng("tree")],
            ["  supervisor", f"{total['supervisor']:.2f}", rng("supervisor")],
            ["  store writer", f"{total['store']:.2f}", rng("store")],
            [f"  {total['ndrivers']} drivers (sum)", f"{total['drivers']:.2f}", rng("drivers")],
            ["  median driver", f"{total['driver_median']:.2f}", rng("driver_median")]]
    if total["other"]:
        rows.append(["  other children", f"{total['other']:.2f}", rng("other")])
    rows.append(["simulators (rig, not product)", f"{total['sims']:.2f}", rng("sims")])
    table(rows, ["process", f"CPU % of 1 core, {secs:.0f} s", f"median (range) of {nslices} slices"])
    expected = sides / 0.25
    per_poll_us = total["drivers"] / 100 / total["polls_s"] * 1e6 if total["polls_s"] else float("nan")
    print(f"\n  polls/s {total['polls_s']:.0f} (slices {rng('polls_s')}) over {args.ports} ports, {sides} pump sides;"
          f"\n  one poll per side per 0.25 s would be {expected:.0f}/s (a data reply is followed by another poll);"
          f"\n  driver CPU per poll {per_poll_us:.0f} us; sales captured in window {total['sales']}; "
          f"poll timeouts {total['timeouts']}; children restarted {restarted}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
