"""Process start to first poll: from launching ``collector run`` to the first poll on every port.

For 1 and 32 ports the simulators are started once; then 5 times (``--quick`` 2) the store and the
status files are removed (a fresh box), ``collector run`` is launched, and the time from just before
the launch to the ``first_poll`` timestamp in each port's status file is read (both wall-clock
``time.time()``, same host). Quoted: median over runs of the last port's first poll (every port
polling) and of the first port's, and how long SIGTERM -> exit took (orderly shutdown).

    python -m tools.bench.bench_startup [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import LiveStation, header, median, table  # noqa: E402


def measure(ports: int, runs: int) -> list[dict]:
    out = []
    with LiveStation(ports) as st:
        st.start_sims()
        for _ in range(runs):
            st.reset_state()
            st.start_daemon()
            boards = st.wait_first_polls(timeout=60)
            firsts = sorted(b["stats"]["first_poll"] - st.launched for b in boards.values())
            starts = sorted(b["stats"]["started"] - st.launched for b in boards.values())
            assert st.daemon is not None
            t = time.monotonic()
            st.stop_daemon(timeout=30)
            stop = time.monotonic() - t
            out.append({"all": firsts[-1], "first": firsts[0], "median_port": median(firsts),
                        "driver_started": starts[-1], "stop": stop})
            time.sleep(0.3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 runs per port count")
    ap.add_argument("--runs", type=int)
    args = ap.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    header("bench_startup: launch of `collector run` -> first poll on every port")
    print(f"   median of {runs} runs; fresh store and status files each run", flush=True)
    rows = []
    for ports in (1, 32):
        r = measure(ports, runs)
        rows.append([ports, f"{median(x['first'] for x in r) * 1e3:.0f}",
                     f"{median(x['median_port'] for x in r) * 1e3:.0f}",
                     f"{median(x['all'] for x in r) * 1e3:.0f}",
                     f"{min(x['all'] for x in r) * 1e3:.0f}-{max(x['all'] for x in r) * 1e3:.0f}",
                     f"{median(x['driver_started'] for x in r) * 1e3:.0f}",
                     f"{median(x['stop'] for x in r) * 1e3:.0f}"])
        print(f"   {ports} port(s): every port polling after {rows[-1][3]} ms", flush=True)
    print()
    table(rows, ["ports", "first port ms", "median port ms", "every port ms", "range ms",
                 "last poller created ms", "SIGTERM->exit ms"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
