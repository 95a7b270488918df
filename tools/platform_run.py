"""Start the reference platform (tools/platform/server.py) as a process and register a device with it;
used by ``collector demo --uplink`` and by the uplink tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from uplink.keys import load_or_create_device_key


class Platform:
    def __init__(self, workdir: str, *, http: bool = False, mqtt_port: int | None = None, extra: tuple = ()) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        args = [sys.executable, "-m", "tools.platform.server", "--workdir", workdir]
        if http:
            args += ["--http-port", "0"]
        if mqtt_port:
            args += ["--mqtt-port", str(mqtt_port)]
        self.args = args + list(extra)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self, timeout: float = 30.0) -> Platform:
        server_json = os.path.join(self.workdir, "server.json")
        try:
            os.unlink(server_json)
        except FileNotFoundError:
            pass
        log = open(os.path.join(self.workdir, "platform.log"), "a")
        # niced: on a test machine the platform shares the CPU with the station it listens to
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=lambda: os.nice(5))
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(server_json) as f:
                    self.info = json.load(f)
                if self.info.get("ready"):
                    return self
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"platform exited with {self.proc.returncode}; see {self.workdir}/platform.log")
            if time.monotonic() > deadline:
                raise RuntimeError("platform did not become ready")
            time.sleep(0.05)

    @property
    def public_key_path(self) -> str:
        return os.path.join(self.workdir, "platform.pub")

    @property
    def http_url(self) -> str:
        return self.info["http"]["url"]

    def register(self, device_id: str, device_key_path: str) -> None:
        """Out-of-band device registration: the platform learns the device's SM2 public key."""
        _, public = load_or_create_device_key(device_key_path)
        devices = os.path.join(self.workdir, "devices")
        os.makedirs(devices, exist_ok=True)
        with open(os.path.join(devices, f"{device_id}.pub"), "w") as f:
            f.write(public.hex())

    def control(self, **settings) -> None:
        path = os.path.join(self.workdir, "control.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(settings, f)
        os.replace(tmp, path)

    def command(self, device_id: str, **cmd) -> None:
        os.makedirs(os.path.join(self.workdir, "commands"), exist_ok=True)
        with open(os.path.join(self.workdir, "commands", f"{device_id}.jsonl"), "a") as f:
            f.write(json.dumps(cmd) + "\n")

    def stats(self) -> dict:
        try:
            with open(os.path.join(self.workdir, "stats.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def received(self) -> list[dict]:
        out = []
        try:
            with open(os.path.join(self.workdir, "received.jsonl")) as f:
                for line in f:
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except ValueError:
                            pass  # a line being written right now
        except OSError:
            pass
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def uplink_config(workdir: str, transport: str, platform: Platform, broker_port: int | None = None, **overrides) -> dict:
    cfg = {"transport": transport, "platform_public_key": platform.public_key_path,
           "device_key": os.path.join(workdir, "device.key"), "state_dir": workdir}
    if transport == "mqtt":
        cfg["mqtt"] = {"host": "127.0.0.1", "port": broker_port, "keepalive": 10}
    else:
        cfg["http"] = {"url": platform.http_url, "timeout": 5}
    cfg.update(overrides)
    return cfg
