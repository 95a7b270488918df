"""What every simulator shares: its control datagram socket, its ``--spec`` argument, and how it is
launched and waited for. A simulator owns its protocol; this owns the plumbing around it."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def bind_control(path: str) -> socket.socket:
    """The simulator's control socket (``<link>.ctl``), replacing a stale one."""
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    ctl.bind(path)
    return ctl


def control(link: str, command: str) -> None:
    """Send a control command to a running simulator."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(command.encode(), link + ".ctl")
    finally:
        s.close()


def spec_text(argv, doc: str, what: str) -> str:
    """The ``--spec`` argument: JSON text, or ``@file`` holding it."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--spec", required=True, help=what)
    text = ap.parse_args(argv).spec
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    return text


def wait_for_path(path: str, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    """Wait until a simulator process has created ``path`` (its pty link, socket or status file)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)


def launch(module: str, spec: dict, log, ready_path: str, what: str) -> subprocess.Popen:
    """Start ``python -m module --spec …`` and return once it has created ``ready_path``."""
    proc = subprocess.Popen([sys.executable, "-m", module, "--spec", json.dumps(spec)],
                            stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    wait_for_path(ready_path, proc, what)
    return proc
