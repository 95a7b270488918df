"""Shared plumbing for the daemon benchmarks (scripts, not tests): a simulated station with the real
daemon running as a subprocess, /proc readers for memory and CPU, and table printing.

Every process a benchmark starts is ended by ``LiveStation.close`` (or the ``with`` block): the
daemon runs in its own session and is stopped with SIGTERM then SIGKILL to its process group; the
simulators are direct children, ended by pid.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ machine and printing


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "kernel": platform.release()}


def header(title: str) -> None:
    m = machine()
    print(f"== {title}")
    print(f"   {m['date']}; nproc {m['nproc']}; {m['cpu']}; Python {m['python']}; Linux {m['kernel']}", flush=True)


def table(rows: list[list], head: list[str]) -> None:
    cells = [[str(c) for c in r] for r in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for n, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x; returns (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


# ------------------------------------------------------------------ /proc readers


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after "comm)"


def rollup(pid: int) -> dict[str, int] | None:
    """/proc/<pid>/smaps_rollup in kB (Rss, Pss, Private_*, Shared_*...), plus Uss = Private_Clean + Private_Dirty."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def by_mapping(pid: int) -> dict[str, dict[str, int]]:
    """/proc/<pid>/smaps summed per mapped object (file basename, [heap], [anon], [stack]...), in kB."""
    out: dict[str, dict[str, int]] = {}
    cur: dict[str, int] | None = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if "-" in head[0] and not head[0].endswith(":"):
                    name = os.path.basename(head[5].strip()) if len(head) > 5 else "[anon]"
                    cur = out.setdefault(name if name.startswith("[") or "." not in name else name.split(".so")[0].split(".cpython")[0],
                                         {"Pss": 0, "Private_Dirty": 0, "Private_Clean": 0, "Rss": 0})
                elif cur is not None and head[0].rstrip(":") in cur:
                    cur[head[0].rstrip(":")] += int(head[1])
    except OSError:
        pass
    return out


def unique_kb(pids: Iterable[int]) -> int | None:
    """Resident memory of a group of processes with every physical page counted once (the union of
    the page frames they map, from /proc/<pid>/pagemap). This is what the group would cost with no
    other process sharing its pages (PSS splits libpython etc. with the simulators, which run the
    same interpreter). Needs CAP_SYS_ADMIN to see frame numbers; None without it."""
    frames: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                ranges = [line.split()[0].split("-") for line in f if "[vsyscall]" not in line]
            pm = open(f"/proc/{pid}/pagemap", "rb")
        except OSError:
            continue
        with pm:
            for lo, hi in ranges:
                start, end = int(lo, 16) // PAGE, int(hi, 16) // PAGE
                try:
                    pm.seek(start * 8)
                    data = pm.read((end - start) * 8)
                except OSError:
                    continue
                for (entry,) in struct.iter_unpack("Q", data):
                    if entry >> 63:  # present
                        pfn = entry & ((1 << 55) - 1)
                        if pfn == 0:
                            return None  # frame numbers hidden: no privilege
                        frames.add(pfn)
    return len(frames) * PAGE // 1024


# ------------------------------------------------------------------ a live simulated station


class LiveStation:
    """Simulators on ptys plus ``collector run`` as a subprocess, in a temporary work directory.

    ``tweak(config_dict)`` may edit the generated YAML before anything starts (serial profile...).
    """

    def __init__(self, ports: int, tweak: Callable[[dict], None] | None = None, keep: bool = False,
                 stop_timeout: float = 20.0, **station_kw) -> None:
        from tools import station

        self.workdir = tempfile.mkdtemp(prefix="collector-bench-")
        self.keep = keep
        self.stop_timeout = stop_timeout  # close(): SIGTERM, then SIGKILL to the group after this long
        self.cfg_path, self.specs = station.make_station(self.workdir, ports=ports, **station_kw)
        if tweak:
            with open(self.cfg_path) as f:
                cfg = yaml.safe_load(f)
            tweak(cfg)
            with open(self.cfg_path, "w") as f:
                yaml.safe_dump(cfg, f, allow_unicode=True, sort_keys=False)
        with open(self.cfg_path) as f:
            cfg = yaml.safe_load(f)
        self.runtime_dir = cfg["runtime_dir"]
        self.store_path = cfg["store"]["path"]
        self.port_names = [p["name"] for p in cfg["ports"]]
        self.log = open(os.path.join(self.workdir, "daemon.log"), "a")
        self.sims: list[subprocess.Popen] = []
        self.daemon: subprocess.Popen | None = None
        self.launched = 0.0  # time.time() just before the daemon was launched

    def __enter__(self) -> LiveStation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # processes
    def start_sims(self) -> None:
        from tools import station

        self.sims = station.start_simulators(self.specs, self.log)

    def start_daemon(self) -> None:
        self.launched = time.time()
        self.daemon = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", self.cfg_path],
                                       stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                       start_new_session=True)

    def stop_daemon(self, timeout: float | None = None) -> None:
        d = self.daemon
        if d is None:
            return
        if d.poll() is None:  # SIGTERM to the supervisor only, as systemd's KillMode=mixed does
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left in its group (a child that outlived the supervisor)
            os.killpg(d.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if d.poll() is None:
            d.wait()
        self.daemon = None

    def close(self) -> None:
        try:
            self.stop_daemon()
        finally:
            for p in self.sims:
                if p.poll() is None:
                    p.terminate()
            for p in self.sims:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.sims = []
            self.log.close()
            if not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def reset_state(self) -> None:
        """Forget the last run: status files and the store (a fresh box)."""
        for name in os.listdir(self.runtime_dir) if os.path.isdir(self.runtime_dir) else []:
            if name.endswith(".json"):
                os.unlink(os.path.join(self.runtime_dir, name))
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.store_path + suffix)
            except FileNotFoundError:
                pass

    # observation
    def boards(self) -> dict[str, dict]:
        out = {}
        for name in self.port_names:
            try:
                with open(os.path.join(self.runtime_dir, f"port-{name}.json")) as f:
                    out[name] = json.load(f)
            except (OSError, ValueError):
                pass
        return out

    def wait_first_polls(self, timeout: float = 60.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            b = self.boards()
            if len(b) == len(self.port_names) and all(x["stats"].get("first_poll") for x in b.values()):
                return b
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.daemon.returncode}); see {self.workdir}/daemon.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sum(1 for x in b.values() if x['stats'].get('first_poll'))} of "
                                   f"{len(self.port_names)} ports polled within {timeout:.0f} s")
            time.sleep(0.02)

    def daemon_pids(self) -> dict[int, str]:
        """pid -> role (supervisor, store, drv-pNN) for the whole daemon tree."""
        assert self.daemon is not None
        return {pid: ("supervisor" if pid == self.daemon.pid else comm(pid)) for pid in tree(self.daemon.pid)}

    def sim_pids(self) -> list[int]:
        return [p.pid for p in self.sims if p.poll() is None]
