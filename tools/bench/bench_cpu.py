"""Steady CPU of the daemon tree while it polls a simulated 32-port station.

Starts the simulators and ``collector run`` (``tools.station`` defaults: 1-2 pump sides per port,
poll_interval 0.25 s, customers every 2-8 s), waits for the first poll on every port and a warm-up
(10 s; ``--quick`` 3 s), then reads utime+stime of every process from /proc/<pid>/stat at the start
and end of a window (30 s; ``--quick`` 8 s). CPU % = sum of tick deltas / wall time, as % of ONE core.
The simulators' CPU is reported separately (they are the test rig, not the product). Polls/s is the
sum over ports of the drivers' ``polls`` counters (status files) over the same window.

The window is repeated (3 windows, ``--quick`` 1) and the median is quoted: the machine is shared.

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


def window(st: LiveStation, seconds: float) -> dict:
    pids = st.daemon_pids()
    sims = st.sim_pids()
    t0 = {p: cpu_ticks(p) for p in [*pids, *sims]}
    p0 = _polls(st)
    w0 = time.monotonic()
    time.sleep(seconds)
    t1 = {p: cpu_ticks(p) for p in t0}
    p1 = _polls(st)
    wall = time.monotonic() - w0
    after = st.daemon_pids()
    lost = [p for p in pids if p not in after]

    def pct(ps) -> float:
        return 100.0 * sum((t1[p] or 0) - (t0[p] or 0) for p in ps if t0[p] is not None) / TICKS / wall

    drivers = [p for p, role in pids.items() if role.startswith("drv-")]
    return {
        "wall": wall, "tree": pct(pids), "supervisor": pct([p for p, r in pids.items() if r == "supervisor"]),
        "store": pct([p for p, r in pids.items() if r == "store"]), "drivers": pct(drivers),
        "driver_median": median(pct([p]) for p in drivers) if drivers else 0.0,
        "sims": pct(sims), "polls_s": (p1[0] - p0[0]) / wall, "sales": p1[1] - p0[1], "timeouts": p1[2] - p0[2],
        "restarted": len(lost), "ndrivers": len(drivers),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s warm-up, one 8 s window")
    ap.add_argument("--ports", type=int, default=32)
    ap.add_argument("--window", type=float, help="seconds per window (default 30, quick 8)")
    ap.add_argument("--windows", type=int, help="number of windows (default 3, quick 1)")
    args = ap.parse_args(argv)
    secs = args.window or (8.0 if args.quick else 30.0)
    nwin = args.windows or (1 if args.quick else 3)
    warmup = 3.0 if args.quick else 10.0

    header(f"bench_cpu: steady CPU of the daemon tree, {args.ports} ports")
    print(f"   warm-up {warmup:.0f} s; {nwin} window(s) of {secs:.0f} s; % of ONE core; median over windows",
          flush=True)
    with LiveStation(args.ports, stop_timeout=1.0) as st:
        st.start_sims()
        st.start_daemon()
        st.wait_first_polls()
        sides = sum(len(p["pumps"]) for p in st.boards().values())
        time.sleep(warmup)
        runs = []
        for i in range(nwin):
            r = window(st, secs)
            runs.append(r)
            print(f"   window {i + 1}: tree {r['tree']:.1f} %, sims {r['sims']:.1f} %, {r['polls_s']:.0f} polls/s",
                  flush=True)
    m = {k: median(r[k] for r in runs) for k in runs[0]}
    print()
    table([["daemon tree (product)", f"{m['tree']:.2f}", f"{min(r['tree'] for r in runs):.2f}-{max(r['tree'] for r in runs):.2f}"],
           ["  supervisor", f"{m['supervisor']:.2f}", ""],
           ["  store writer", f"{m['store']:.2f}", ""],
           [f"  {int(m['ndrivers'])} drivers (sum)", f"{m['drivers']:.2f}", ""],
           ["  median driver", f"{m['driver_median']:.2f}", ""],
           ["simulators (rig, not product)", f"{m['sims']:.2f}", f"{min(r['sims'] for r in runs):.2f}-{max(r['sims'] for r in runs):.2f}"]],
          ["process", "CPU % of 1 core", "range"])
    expected = sides / 0.25
    per_poll_us = m["drivers"] / 100 / m["polls_s"] * 1e6 if m["polls_s"] else float("nan")
    print(f"\n  polls/s {m['polls_s']:.0f} over {args.ports} ports, {sides} pump sides "
          f"(one poll per side per 0.25 s would be {expected:.0f}/s); driver CPU per poll {per_poll_us:.0f} us; "
          f"sales in window {m['sales']:.0f}; timeouts {m['timeouts']:.0f}; children restarted {m['restarted']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
