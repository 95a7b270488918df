"""Run every benchmark in sequence, each in its own interpreter, and print how long each took.

Order: memory, CPU, commit latency, start-up, poll cycle (the daemon benchmarks, about 5.5 minutes
in all on a 2-core machine; ``--quick`` about 2.5), then crypto (``--with-crypto``; about 20 s more, 5 s
quick). Figures are recorded by hand in BENCHMARKS.md with the command, date and machine.

    python -m tools.bench.run_all [--quick] [--with-crypto] [--only memory,cpu,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench._common import ROOT, machine  # noqa: E402

BENCHES = ("memory", "cpu", "commit", "startup", "cycle")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--with-crypto", action="store_true", help="also run bench_crypto")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join((*BENCHES, "crypto")))
    args = ap.parse_args(argv)
    names = list(BENCHES) + (["crypto"] if args.with_crypto else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    m = machine()
    print(f"run_all: {m['date']}; nproc {m['nproc']}; {m['cpu']}; Python {m['python']}; Linux {m['kernel']}")
    print(f"         {sys.executable} -m tools.bench.run_all{' --quick' if args.quick else ''}\n", flush=True)
    took, failed = [], []
    start = time.monotonic()
    for name in names:
        cmd = [sys.executable, "-m", f"tools.bench.bench_{name}", *(["--quick"] if args.quick else [])]
        t = time.monotonic()
        code = subprocess.call(cmd, cwd=ROOT)
        took.append((name, time.monotonic() - t, code))
        if code:
            failed.append(name)
        print(flush=True)
    print("run_all summary")
    for name, secs, code in took:
        print(f"  bench_{name:<8} {secs:6.1f} s  {'ok' if code == 0 else f'FAILED ({code})'}")
    print(f"  total          {time.monotonic() - start:6.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
