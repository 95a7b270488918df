"""A pseudo-terminal that stands in for a serial port: the simulator holds the master side, the
collector opens the slave through a stable symlink, exactly as it would open /dev/ttyS1."""

from __future__ import annotations

import os
import tty


class SimPty:
    def __init__(self, link: str) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line discipline before the collector configures it
        self.slave_name = os.ttyname(self._slave)
        self.link = link
        tmp = f"{link}.tmp{os.getpid()}"
        os.symlink(self.slave_name, tmp)
        os.replace(tmp, link)
        os.set_blocking(self.master, False)

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def close(self) -> None:
        try:
            if os.readlink(self.link) == self.slave_name:
                os.unlink(self.link)
        except OSError:
            pass
        os.close(self.master)
        os.close(self._slave)
