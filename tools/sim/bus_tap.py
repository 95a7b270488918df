"""Bus tap: a simulated serial line between an existing master (a station POS / forecourt
controller simulator) and a dispenser bus simulator, with a listen-only copy for the collector.

Protocol-independent: it moves bytes, never frames. Used by every listen-mode test (Sinopec, DART,
Gilbarco)::

    master simulator pty  <--->  bus_tap  <--->  dispenser simulator pty
                                    |
                                    +---> tap pty (the collector opens it, as it would open the
                                          RX-only port of a passive line tap)

* It opens the master's and the bus simulator's pty links the way a serial client does (both
  simulators keep creating their own ptys, unchanged) and creates the third pty at ``tap``.
* Bytes are relayed both ways at wire speed: a chunk occupies the line for ``len x bits / baud``
  seconds, and a change of direction costs ``turnaround`` seconds more (a half-duplex line
  settling). The far end gets the chunk when its last byte has been clocked out. ``baud: 0``
  relays without pacing (only the turnaround).
* Both directions are copied to the tap pty in wire order, at the moment they are delivered. If
  the collector does not read (stopped, killed, not started), the copy is dropped, as a UART
  overrun would, and never slows the line: ``tap_dropped`` counts those bytes.
* Every byte the collector writes into its pty is read, counted (``collector_bytes``), kept as a
  sample, written to the ground truth as a violation, and never forwarded: in listen mode that
  count must stay 0.

Spec (JSON)::

    {"name": "p01", "master": "/tmp/x/tty-p01-pos", "bus": "/tmp/x/tty-p01-bus",
     "tap": "/tmp/x/tty-p01", "status": "/tmp/x/tty-p01.tap.json", "truth": "/tmp/x/truth.jsonl",
     "baud": 9600, "bits": 10, "turnaround": 0.002}

``bits`` per character: 10 for 8N1, 11 for 8E1/8O1 and for DART's 8O1. ``status`` defaults to
``<tap>.tap.json`` and ``truth`` is optional. The status file (replaced atomically at most every
0.2 s, and at exit) holds ``ready``, ``collector_bytes``, ``collector_sample`` (hex of the first 64
bytes), ``relayed`` {``master_to_bus``, ``bus_to_master``}, ``tapped``, ``tap_dropped``,
``cut`` and ``pid``. Control (datagram socket at ``<tap>.ctl``): ``cut on|off`` unplugs and
replugs the collector's copy (the line keeps running).
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import time
import tty
from collections import deque

from tools.sim.common import bind_control, launch, spec_text
from tools.sim.pty import SimPty

MASTER, BUS = "master_to_bus", "bus_to_master"


def _open_endpoint(path: str) -> int:
    """Open a simulator's pty link like a serial port: raw, non-blocking, stale input discarded."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except (BlockingIOError, OSError):
            break
    return fd


def _read(fd: int) -> bytes | None:
    """Bytes available, b"" if none, None when the other side is gone."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError:
        return None
    return data if data else None


def _write_all(fd: int, data: bytes, timeout: float = 1.0) -> int:
    """Write to a relay endpoint, waiting for room up to ``timeout``; returns the bytes not written."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select((), (fd,), (), left)
        except OSError:
            break
    return len(view)


class BusTap:
    def __init__(self, spec: dict) -> None:
        self.name = spec.get("name", "")
        self.spec = spec
        baud = spec.get("baud", 9600)
        self.byte_time = spec.get("bits", 10) / baud if baud else 0.0
        self.turnaround = spec.get("turnaround", 0.002)
        self.status_path = spec.get("status") or spec["tap"] + ".tap.json"
        self.truth = open(spec["truth"], "a", buffering=1) if spec.get("truth") else None
        self.fds = {MASTER: _open_endpoint(spec["master"]), BUS: _open_endpoint(spec["bus"])}
        self.tap = SimPty(spec["tap"])
        self.ctl_path = spec["tap"] + ".ctl"
        self.queue: deque[tuple[float, str, bytes]] = deque()
        self.line_free = 0.0
        self.last_direction: str | None = None
        self.relayed = {MASTER: 0, BUS: 0}
        self.lost = {MASTER: 0, BUS: 0}
        self.tapped = 0
        self.tap_dropped = 0
        self.collector_bytes = 0
        self.collector_sample = b""
        self.cut = False
        self.running = True
        self._dirty = True
        self._published = 0.0

    # ---------------------------------------------------------------- the wire

    def _schedule(self, direction: str, data: bytes) -> None:
        now = time.monotonic()
        start = max(now, self.line_free)
        if self.last_direction is not None and direction != self.last_direction:
            start = max(start, self.line_free + self.turnaround)
        due = start + len(data) * self.byte_time
        self.line_free, self.last_direction = due, direction
        self.queue.append((due, direction, data))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, direction, data = self.queue.popleft()
            target = self.fds[BUS if direction == MASTER else MASTER]
            if target is not None:
                self.lost[direction] += _write_all(target, data)
            self.relayed[direction] += len(data)
            self._copy(data)
            self._dirty = True

    def _copy(self, data: bytes) -> None:
        if self.cut:
            self.tap_dropped += len(data)
            return
        view = memoryview(data)
        try:
            view = view[os.write(self.tap.master, view):]
        except (BlockingIOError, OSError):
            pass
        self.tapped += len(data) - len(view)
        self.tap_dropped += len(view)

    def _collector_wrote(self, data: bytes) -> None:
        self.collector_bytes += len(data)
        if len(self.collector_sample) < 64:
            self.collector_sample += data[:64 - len(self.collector_sample)]
        if self.truth:
            self.truth.write(json.dumps({"violation": "collector wrote to a listen-only tap", "port": self.name,
                                         "bytes": len(data), "data": data[:64].hex()}) + "\n")
        self._dirty = True

    # ---------------------------------------------------------------- status and control

    def state(self) -> dict:
        return {"pid": os.getpid(), "updated": time.time(), "name": self.name, "ready": True,
                "collector_bytes": self.collector_bytes, "collector_sample": self.collector_sample.hex(" "),
                "relayed": dict(self.relayed), "relay_lost": dict(self.lost), "tapped": self.tapped,
                "tap_dropped": self.tap_dropped, "cut": self.cut, "tap": self.spec["tap"],
                "master": self.spec["master"], "bus": self.spec["bus"]}

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self._dirty or now - self._published < 0.2):
            return
        self._dirty, self._published = False, now
        tmp = f"{self.status_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state(), f)
        os.replace(tmp, self.status_path)

    def on_control(self, text: str) -> None:
        words = text.split()
        if words[:1] == ["cut"] and len(words) == 2:
            self.cut = words[1] == "on"
            self._dirty = True

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for direction, fd in self.fds.items():
            sel.register(fd, selectors.EVENT_READ, direction)
        sel.register(self.tap.master, selectors.EVENT_READ, "tap")
        ctl = bind_control(self.ctl_path)
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        self.publish(force=True)
        try:
            while self.running:
                wait = 0.2
                if self.queue:
                    wait = max(0.0, min(wait, self.queue[0][0] - time.monotonic()))
                for key, _ in sel.select(timeout=wait):
                    if key.data == "ctl":
                        self.on_control(ctl.recv(256).decode(errors="replace"))
                    elif key.data == "tap":
                        data = _read(self.tap.master)
                        if data:
                            self._collector_wrote(data)
                    else:
                        data = _read(key.fileobj)
                        if data is None:  # that simulator is gone
                            sel.unregister(key.fileobj)
                            os.close(key.fileobj)
                            self.fds[key.data] = None
                        elif data:
                            self._schedule(key.data, data)
                self._deliver_due()
                self.publish()
        finally:
            self.publish(force=True)
            ctl.close()
            os.unlink(self.ctl_path)
            self.tap.close()
            for fd in self.fds.values():
                if fd is not None:
                    os.close(fd)
            if self.truth:
                self.truth.close()


# ---------------------------------------------------------------- for tests and the demo


def status(spec: dict) -> dict:
    """The tap's status file (see the module notes)."""
    with open(spec.get("status") or spec["tap"] + ".tap.json") as f:
        return json.load(f)


def collector_bytes(spec: dict) -> int:
    """How many bytes the collector has written into its tap pty (listen mode: must be 0)."""
    return status(spec)["collector_bytes"]


def control(spec: dict, command: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(command.encode(), spec["tap"] + ".ctl")
    finally:
        s.close()


def start(spec: dict, log=None) -> subprocess.Popen:
    """Start a tap between two running simulators; returns once the tap pty and its status exist."""
    path = spec.get("status") or spec["tap"] + ".tap.json"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return launch("tools.sim.bus_tap", spec, log, path, f"bus tap {spec.get('name', '')}")


def main(argv=None) -> None:
    text = spec_text(argv, __doc__, "tap spec as JSON text or @file")
    BusTap(json.loads(text)).run()


if __name__ == "__main__":
    main()
