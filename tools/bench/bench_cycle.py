"""DART poll-cycle time against the wire time at the configured baud.

One DART port with 1, 2 and 8 pump sides (one nozzle each), simulated pumps that stay idle (no
customers: every poll is answered with EOT), poll_interval 0.01 s. After the start-up commands
(status, identity, totals) and the first totals snapshot have passed (3 s after the first poll),
the driver's status file is sampled for 4 s (``--quick`` 2.5 s):

* measured cycle = median of ``cycle_ms`` (the busy part of one loop over all sides, no sleep);
* bytes per cycle = (line rx + tx bytes) / cycles over the window (expected: 3-byte poll + 3-byte
  EOT per side);
* wire time = bytes per cycle x byte_time (9600 baud 8O1 = 11 bits = 1145.8 us per byte);
* ratio = measured / wire.

A pty has no wire: a byte takes no time to "transmit", so on this rig the measured cycle is pure
software overhead (plus the configured inter-command gap, which is a deliberate sleep). On a real
RS-485 line the cycle would be about wire time + pump turnaround + this overhead. Each size runs
twice (``--quick``: 1 and 8 sides only): with the DART profile as shipped (inter_command_gap 2 ms before every frame) and with the
gap set to 0 (software alone).

    python -m tools.bench.bench_cycle [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import LiveStation, header, median, table  # noqa: E402

SIDES = (1, 2, 8)
POLL_BYTES, EOT_BYTES = 3, 3
WARMUP = 3.0  # online at the first poll; start-up commands and the +2 s totals snapshot are done by then


def measure(sides: int, gap: float | None, seconds: float) -> dict:
    def tweak(cfg: dict) -> None:
        if gap is not None:
            for p in cfg["ports"]:
                p["inter_command_gap"] = gap

    with LiveStation(1, tweak=tweak, stop_timeout=1.0, sides=(sides, sides), nozzles=(1, 1), max_sales=0,
                     poll_interval=0.01) as st:
        st.start_sims()
        st.start_daemon()
        st.wait_first_polls()
        time.sleep(WARMUP)
        b0 = st.boards()["p01"]
        t0 = time.monotonic()
        samples = []
        last = None
        while time.monotonic() - t0 < seconds:
            time.sleep(0.1)
            b = st.boards()["p01"]
            if b["updated"] != last:  # a fresh publication (at most every 0.5 s)
                last = b["updated"]
                samples.append(b["stats"]["cycle_ms"])
        b1 = st.boards()["p01"]
    s0, s1 = b0["stats"], b1["stats"]
    cycles = s1["cycles"] - s0["cycles"]
    nbytes = (b1["line"]["rx"] + b1["line"]["tx"]) - (b0["line"]["rx"] + b0["line"]["tx"])
    byte_us = b1["line"]["byte_time_us"]
    measured_ms = median(samples)
    bytes_per_cycle = nbytes / cycles if cycles else float("nan")
    nominal_bytes = sides * (POLL_BYTES + EOT_BYTES)
    wire_ms = nominal_bytes * byte_us / 1000
    return {"sides": sides, "gap": gap, "measured_ms": measured_ms, "range": (min(samples), max(samples)),
            "n": len(samples), "bytes_per_cycle": bytes_per_cycle, "nominal_bytes": nominal_bytes,
            "polls_per_cycle": (s1["polls"] - s0["polls"]) / cycles if cycles else float("nan"),
            "timeouts": s1["timeouts"] - s0["timeouts"], "byte_us": byte_us, "wire_ms": wire_ms,
            "ratio": measured_ms / wire_ms, "per_side_ms": measured_ms / sides}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 and 8 sides only, 2.5 s sampling window")
    args = ap.parse_args(argv)
    seconds = 2.5 if args.quick else 4.0
    header("bench_cycle: DART poll cycle (idle pumps, EOT) vs wire time at 9600 8O1")
    print(f"   1 port, 1 nozzle per side, poll_interval 0.01 s; median cycle_ms over {seconds:.1f} s after {WARMUP:.1f} s "
          "warm-up; pty = no wire delay", flush=True)
    rows = []
    for gap, label in ((None, "shipped (2 ms)"), (0.0, "0")):
        for sides in ((1, 8) if args.quick else SIDES):
            r = measure(sides, gap, seconds)
            r["label"] = label
            rows.append(r)
            print(f"   {sides} side(s), gap {label}: cycle {r['measured_ms']:.2f} ms", flush=True)
    print()
    table([[r["sides"], r["label"], f"{r['measured_ms']:.2f}", f"{r['range'][0]:.2f}-{r['range'][1]:.2f}",
            f"{r['per_side_ms']:.2f}", f"{r['bytes_per_cycle']:.1f} ({r['nominal_bytes']})",
            f"{r['polls_per_cycle']:.2f}", f"{r['wire_ms']:.2f}", f"{r['ratio']:.3f}"] for r in rows],
          ["sides", "inter-cmd gap", "cycle ms", "range", "per side ms", "bytes/cycle (nominal)",
           "polls/cycle", "wire ms", "measured/wire"])
    bad = [r for r in rows if r["timeouts"]]
    if bad:
        print(f"\n  note: {sum(r['timeouts'] for r in bad)} poll timeouts in the windows (not purely idle)")
    print(f"\n  byte time {rows[0]['byte_us']} us (11 bits at 9600 baud); wire per side = "
          f"{(POLL_BYTES + EOT_BYTES) * rows[0]['byte_us'] / 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
