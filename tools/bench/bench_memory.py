"""Memory of the whole daemon (supervisor + store writer + one driver per port) on a simulated station.

For each port count (1, 8, 16, 32; ``--quick``: 1 and 32) it starts one DART simulator per port
(``tools.station``), starts ``collector run`` as a subprocess, waits for the first poll on every port,
lets it run for the warm-up (20 s; ``--quick`` 5 s) with simulated customers buying fuel, then samples
/proc/<pid>/smaps_rollup of every process in the daemon's tree 5 times, 1 s apart, and quotes medians:

* tree PSS  - the goal metric (<= 24 MB at 32 ports now; the whole product must fit 32 MB);
* tree USS  - private pages only (Private_Clean + Private_Dirty), a floor;
* tree once - every physical page the tree maps counted once (union of /proc/<pid>/pagemap frames):
  what the tree costs when nothing else maps its pages. PSS here is slightly flattered because the
  simulators run the same interpreter and share libpython's pages; the box runs no simulators.
* per role  - supervisor, store writer, median driver (PSS / USS), and the drivers' USS at their
  first poll, to show how much a driver grows while running.

A least-squares line ``tree PSS = base + per_port x ports`` is fitted over the port counts.
MB = 2^20 bytes here (kB from /proc / 1024).

    python -m tools.bench.bench_memory [--quick] [--ports 1,8,16,32] [--warmup S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import (  # noqa: E402
    LiveStation,
    by_mapping,
    fit_line,
    header,
    median,
    rollup,
    table,
    unique_kb,
)

GOAL_TREE_PSS_MB = 24.0
SAMPLES = 5


def _mb(kb: float) -> float:
    return kb / 1024


def measure(ports: int, warmup: float, samples: int = SAMPLES) -> dict:
    with LiveStation(ports, stop_timeout=1.0) as st:
        st.start_sims()
        st.start_daemon()
        st.wait_first_polls()
        pids = st.daemon_pids()
        drv_uss_start = median(r["Uss"] for p, role in pids.items() if role.startswith("drv-")
                               if (r := rollup(p)) is not None)
        time.sleep(warmup)
        rows = []
        for i in range(samples):
            if i:
                time.sleep(1.0)
            pids = st.daemon_pids()
            roll = {p: rollup(p) for p in pids}
            roll = {p: r for p, r in roll.items() if r is not None}
            drivers = [r for p, r in roll.items() if pids[p].startswith("drv-")]
            sup = [r for p, r in roll.items() if pids[p] == "supervisor"]
            store = [r for p, r in roll.items() if pids[p] == "store"]
            sims = [r for p in st.sim_pids() if (r := rollup(p)) is not None]
            rows.append({
                "procs": len(roll), "drivers": len(drivers),
                "pss": sum(r["Pss"] for r in roll.values()), "uss": sum(r["Uss"] for r in roll.values()),
                "rss": sum(r["Rss"] for r in roll.values()),
                "once": unique_kb(list(roll)) if i == samples - 1 else None,
                "sup_pss": sup[0]["Pss"] if sup else 0, "sup_uss": sup[0]["Uss"] if sup else 0,
                "store_pss": store[0]["Pss"] if store else 0, "store_uss": store[0]["Uss"] if store else 0,
                "drv_pss": median(r["Pss"] for r in drivers) if drivers else 0,
                "drv_uss": median(r["Uss"] for r in drivers) if drivers else 0,
                "drv_anon": median(r.get("Pss_Anon", 0) for r in drivers) if drivers else 0,
                "drv_file": median(r.get("Pss_File", 0) for r in drivers) if drivers else 0,
                "sup_file": sup[0].get("Pss_File", 0) if sup else 0,
                "sims_pss": sum(r["Pss"] for r in sims),
                "other_pss": sum(r["Pss"] for p, r in roll.items()
                                 if pids[p] not in ("supervisor", "store") and not pids[p].startswith("drv-")),
            })
        pids = st.daemon_pids()
        drv = sorted((r["Uss"], p) for p, role in pids.items() if role.startswith("drv-") if (r := rollup(p)))
        detail = {role: by_mapping(p) for p, role in pids.items() if role in ("supervisor", "store")}
        if drv:
            detail["driver"] = by_mapping(drv[len(drv) // 2][1])
        out = {k: median(r[k] for r in rows) for k in rows[0] if k != "once"}
        out["detail"] = detail
        out["once"] = rows[-1]["once"]
        out["pss_spread"] = (min(r["pss"] for r in rows), max(r["pss"] for r in rows))
        out["drv_uss_start"] = drv_uss_start
        out["ports"] = ports
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 and 32 ports, 5 s warm-up")
    ap.add_argument("--ports", help="comma-separated port counts (default 1,8,16,32)")
    ap.add_argument("--warmup", type=float, help="seconds of polling before sampling (default 20)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.ports.split(",")] if args.ports else ([1, 32] if args.quick else [1, 8, 16, 32])
    warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 20.0)

    header("bench_memory: PSS/USS of the daemon tree (supervisor + store + drivers)")
    print(f"   warm-up {warmup:.0f} s after the first poll on every port; median of {SAMPLES} samples 1 s apart; "
          f"MB = 2^20 B", flush=True)
    results = []
    for n in counts:
        t0 = time.monotonic()
        r = measure(n, warmup)
        results.append(r)
        print(f"   {n:2d} ports: tree PSS {_mb(r['pss']):.1f} MB ({time.monotonic() - t0:.0f} s)", flush=True)

    print("\nWhole tree")
    table([[r["ports"], int(r["procs"]), f"{_mb(r['pss']):.1f}", f"{_mb(r['pss_spread'][0]):.1f}-{_mb(r['pss_spread'][1]):.1f}",
            f"{_mb(r['uss']):.1f}", f"{_mb(r['once']):.1f}" if r["once"] else "n/a", f"{_mb(r['rss']):.1f}",
            f"{_mb(r['sims_pss']):.1f}"] for r in results],
          ["ports", "procs", "PSS MB", "PSS range", "USS MB", "once MB", "sum RSS MB", "sims PSS MB"])

    print("\nPer role (median driver)")
    table([[r["ports"], f"{_mb(r['sup_pss']):.2f} / {_mb(r['sup_uss']):.2f}",
            f"{_mb(r['store_pss']):.2f} / {_mb(r['store_uss']):.2f}",
            f"{_mb(r['drv_pss']):.2f} / {_mb(r['drv_uss']):.2f}",
            f"{_mb(r['drv_anon']):.2f} / {_mb(r['drv_file']):.2f}",
            f"{_mb(r['drv_uss_start']):.2f} -> {_mb(r['drv_uss']):.2f}"] for r in results],
          ["ports", "supervisor PSS/USS", "store PSS/USS", "driver PSS/USS", "driver PSS anon/file",
           "driver USS first poll -> warm"])

    last = results[-1]
    others = [r for r in results if r["other_pss"]]
    if others:
        print("\nOther children (uplink...): " + ", ".join(f"{r['ports']} ports {_mb(r['other_pss']):.2f} MB PSS" for r in others))
    print(f"\nWhere the memory is, {last['ports']} ports (top mappings by PSS; kB)")
    detail_rows = []
    for role in ("supervisor", "store", "driver"):
        maps = last["detail"].get(role, {})
        for name, m in sorted(maps.items(), key=lambda kv: -kv[1]["Pss"])[:5]:
            detail_rows.append([role, name, m["Pss"], m["Private_Dirty"], m["Private_Clean"], m["Rss"]])
    table(detail_rows, ["role", "mapping", "PSS", "Priv dirty", "Priv clean", "RSS"])
    if len(results) >= 2:
        xs = [r["ports"] for r in results]
        base, per = fit_line(xs, [_mb(r["pss"]) for r in results])
        base_u, per_u = fit_line(xs, [_mb(r["uss"]) for r in results])
        resid = max(abs(_mb(r["pss"]) - (base + per * r["ports"])) for r in results)
        print(f"\nFit: tree PSS = {base:.2f} MB + {per:.3f} MB x ports (max residual {resid:.2f} MB); "
              f"tree USS = {base_u:.2f} + {per_u:.3f} x ports")
        if all(r["once"] for r in results):
            base_o, per_o = fit_line(xs, [_mb(r["once"]) for r in results])
            print(f"     tree once = {base_o:.2f} MB + {per_o:.3f} MB x ports (pages counted once: the box's cost)")
        if per > 0:
            budget = (GOAL_TREE_PSS_MB - base) / per
            print(f"     ports that fit the {GOAL_TREE_PSS_MB:.0f} MB goal at this slope: {max(0.0, budget):.1f}")
    verdict = "MEETS" if _mb(last["pss"]) <= GOAL_TREE_PSS_MB else "MISSES"
    once = f", {_mb(last['once']):.1f} MB counted once" if last["once"] else ""
    print(f"\nGoal: tree PSS <= {GOAL_TREE_PSS_MB:.0f} MB at 32 ports. {last['ports']} ports: "
          f"{_mb(last['pss']):.1f} MB PSS{once} -> {verdict} the goal "
          f"({_mb(last['pss']) / GOAL_TREE_PSS_MB:.1f}x the budget); drivers are "
          f"{100 * last['drv_pss'] * last['drivers'] / last['pss']:.0f} % of it.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
