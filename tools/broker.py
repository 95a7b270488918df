"""A real Mosquitto broker on a free loopback port, with persistence, for the demo and the tests:
start, stop (SIGTERM: it saves its state), kill (SIGKILL: a crash) and restart on the same port and
persistence directory, waiting for the port instead of sleeping."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["MosquittoBroker", "free_port", "mosquitto_path", "port_open"]


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(p, os.X_OK):
            return p
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One broker process; ``start`` after ``stop``/``kill`` reuses the port and the persistence dir."""

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None, host: str = "127.0.0.1",
                 *, autosave_interval: int | None = None, extra_config: tuple[str, ...] = ()) -> None:
        self.binary = mosquitto_path()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.persistence_dir = self.dir / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
        ]
        if autosave_interval is not None:
            lines.append(f"autosave_interval {autosave_interval}")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto', who cannot write the tmp dir
        lines.extend(extra_config)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.running():
            return self
        # the previous process may still hold the port for an instant after kill: wait until it is free
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} still in use before starting mosquitto")
            time.sleep(0.05)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash; only what was saved before survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> MosquittoBroker:
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout=timeout)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
