"""The supervisor: a lean parent that forks the store writer and one driver process per port,
restarts any child that dies (exponential backoff), and shuts everything down in order on SIGTERM.

Before forking it imports exactly what the children share (the driver modules and pyserial) and
freezes the garbage collector, so those pages stay shared copy-on-write across 33 children. What
only one child needs (sqlite3 for the store) is imported in that child, after the fork.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from collector import clock, logsetup
from store.protocol import SOCKET_NAME

log = logsetup.get("supervisor")
WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 0.5, 60.0, 30.0


@dataclass
class Child:
    role: str
    target: object  # callable run in the child, returns an exit code
    args: tuple = ()
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive quick deaths, for the backoff
    due: float = 0.0  # monotonic time of the next start
    last_exit: str | None = None
    history: list = field(default_factory=list)
    ports: list = field(default_factory=list)  # the ports a driver process serves


def _set_process_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def store_child(config) -> int:
    from store import writer

    return writer.main(config)


UPLINK_NICE = 10  # capture beats upload: a draining backlog must never starve a driver reading a sale


def uplink_child(config) -> int:
    os.nice(UPLINK_NICE)
    from uplink import worker  # paho, cryptography and gmssl load here, in this child only

    return worker.main(config)


def _run_port(config, port, stop: list) -> None:
    """One port's poller, restarted with backoff if it raises (a thread of a driver process)."""
    from drivers.base import DriverContext
    from drivers.registry import PROTOCOLS

    log_ = logsetup.get(f"driver.{port.name}")
    delay = FIRST_BACKOFF
    while not stop[0]:
        started = time.monotonic()
        try:
            PROTOCOLS[port.protocol].poller_class(port.mode)(DriverContext(config, port, lambda: stop[0])).run()
        except Exception:
            log_.exception("poller crashed; restarting in %.1f s", delay)
        if stop[0]:
            return
        delay = FIRST_BACKOFF if time.monotonic() - started > HEALTHY_AFTER else min(MAX_BACKOFF, delay * 2)
        deadline = time.monotonic() + delay
        while not stop[0] and time.monotonic() < deadline:
            time.sleep(min(0.25, deadline - time.monotonic()))


def driver_child(config, ports) -> int:
    """A driver process: one port runs in the main thread; several ports run one thread each.

    A thread costs ~100 KB where a CPython process costs ~4 MB of private memory after the fork;
    each poller still owns its own line, timing and store connection.
    """
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(ports) == 1:
        from drivers.base import DriverContext
        from drivers.registry import PROTOCOLS

        port = ports[0]
        PROTOCOLS[port.protocol].poller_class(port.mode)(DriverContext(config, port, lambda: stop[0])).run()
        return 0
    import threading

    threading.stack_size(512 * 1024)
    threads = [threading.Thread(target=_run_port, args=(config, port, stop), name=port.name, daemon=True)
               for port in ports]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.5)
    return 0


class Supervisor:
    def __init__(self, config) -> None:
        self.config = config
        self.children: list[Child] = [Child("store", store_child, (config,))]
        per = config.ports_per_process
        for i in range(0, len(config.ports), per):
            group = config.ports[i:i + per]
            self.children.append(Child(f"drv-{group[0].name}", driver_child, (config, group),
                                       ports=[p.name for p in group]))
        if config.uplink.transport != "none":
            self.children.append(Child("uplink", uplink_child, (config,)))
        self.status_path = os.path.join(config.runtime_dir, "supervisor.json")
        self.started = time.time()
        self.stopping = False

    # ---------------------------------------------------------------- processes

    def _fork(self, child: Child) -> None:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                for sig in WATCHED:
                    signal.signal(sig, signal.SIG_DFL)
                _set_process_name(child.role)
                code = child.target(*child.args) or 0
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                logsetup.get(child.role).exception("crashed")
                code = 70
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child.pid = pid
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.role, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid:
                    child.pid = None
                    child.last_exit = _describe(status)
                    if self.stopping:
                        break
                    ran = time.monotonic() - child.started
                    child.failures = 0 if ran > HEALTHY_AFTER else child.failures + 1
                    delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, child.failures - 1))
                    child.due = time.monotonic() + delay
                    child.restarts += 1
                    child.history = (child.history + [[round(time.time(), 1), child.last_exit]])[-5:]
                    log.warning("%s (pid %d) died: %s after %.1f s; restart in %.1f s",
                                child.role, pid, child.last_exit, ran, delay)
                    break

    def _wait_for_store(self, timeout: float = 15.0) -> None:
        path = os.path.join(self.config.runtime_dir, SOCKET_NAME)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            signal.sigtimedwait([signal.SIGCHLD], 0.02)  # the store announces itself by its socket
            self._reap()

    def _publish(self) -> None:
        state = {"pid": os.getpid(), "started": self.started, "config": self.config.source,
                 "config_digest": self.config.digest, "device_id": self.config.station.device_id,
                 "children": {c.role: {"pid": c.pid, "restarts": c.restarts, "last_exit": c.last_exit,
                                       "history": c.history, "ports": c.ports} for c in self.children}}
        tmp = self.status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.status_path)

    # ---------------------------------------------------------------- main loop

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        store = self.children[0]
        try:
            os.unlink(os.path.join(self.config.runtime_dir, SOCKET_NAME))
        except FileNotFoundError:
            pass
        self._fork(store)
        self._wait_for_store()
        for child in self.children[1:]:
            self._fork(child)
        self._publish()
        while True:
            now = time.monotonic()
            pending = [c.due for c in self.children if c.pid is None]
            timeout = max(0.0, min(pending) - now) if pending else 30.0
            info = signal.sigtimedwait(WATCHED, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                break
            self._reap()
            now = time.monotonic()
            for child in self.children:
                if child.pid is None and child.due <= now:
                    self._fork(child)
            self._publish()
        return self.shutdown()

    def shutdown(self) -> int:
        """Drivers first (their last captures still reach the store), then the store."""
        self.stopping = True
        log.info("shutting down")
        for group in (self.children[1:], self.children[:1]):
            for child in group:
                if child.pid:
                    try:
                        os.kill(child.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + 10.0
            while any(c.pid for c in group) and time.monotonic() < deadline:
                signal.sigtimedwait([signal.SIGCHLD], 0.2)
                self._reap()
            for child in group:
                if child.pid:
                    log.error("%s did not stop; killing it", child.role)
                    os.kill(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                    child.pid = None
        self._publish()
        log.info("stopped")
        return 0


def _preload(config) -> None:
    """Import, before forking, what every driver child will need, so it is shared."""
    from drivers.registry import PROTOCOLS

    importlib.import_module("drivers.base")
    for protocol, mode in {(p.protocol, p.mode) for p in config.ports}:
        PROTOCOLS[protocol].poller_class(mode)


def run(config) -> int:
    logsetup.setup(config.log_level)
    os.makedirs(config.runtime_dir, exist_ok=True)
    clock.use_runtime_dir(config.runtime_dir)
    lock = open(os.path.join(config.runtime_dir, "collector.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another collector is already running with runtime directory %s", config.runtime_dir)
        return 2
    _preload(config)
    log.info("collector starting: device %s, %d port(s), config %s (%s)", config.station.device_id,
             len(config.ports), config.source, config.digest)
    gc.collect()
    gc.freeze()
    return Supervisor(config).run()
