"""The one way to open a serial line: from a port's configuration to an open, raw, non-blocking fd.

pyserial does the opening and termios work (baud, parity including mark/space, stop bits), and
also takes its URL forms (``socket://host:port`` for serial-to-TCP servers). The hot path then
reads and writes the file descriptor with ``select`` so that a poll costs no termios calls.
"""

from __future__ import annotations

import os
import select
import time

import serial

PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pty slaves (/dev/pts/N)


def is_pty(device: str) -> bool:
    try:
        return os.major(os.stat(device).st_rdev) in PTY_SLAVE_MAJORS
    except OSError:
        return False

_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
           "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}
_STOPBITS = {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}


class Line:
    """An open serial line with timed reads. Wire time per byte is kept for pacing and benchmarks."""

    def __init__(self, device: str, profile) -> None:
        self.device = device
        self.profile = profile
        kwargs = dict(baudrate=profile.baud, bytesize=profile.data_bits, parity=_PARITY[profile.parity],
                      stopbits=_STOPBITS[float(profile.stop_bits)], timeout=0, exclusive=True)
        if "://" in device:
            kwargs.pop("exclusive")
            self.port = serial.serial_for_url(device, **kwargs)
        elif is_pty(device):
            # A pty has no wire and Linux strips PARENB from it (and keeps CS8), which makes re-applying
            # parity or 7 data bits fail with EINVAL on the next open. Both still count in byte_time below.
            kwargs["parity"] = serial.PARITY_NONE
            kwargs["bytesize"] = serial.EIGHTBITS
            self.port = serial.Serial(device, **kwargs)
        else:
            self.port = serial.Serial(device, **kwargs)
        self.fd = self.port.fileno()
        bits = 1 + profile.data_bits + (0 if profile.parity == "none" else 1) + float(profile.stop_bits)
        self.byte_time = bits / profile.baud
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.flush_input()

    def close(self) -> None:
        self.port.close()

    def flush_input(self) -> None:
        while self.read_available(0):
            pass

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.tx_bytes += len(data)

    def read_available(self, timeout: float) -> bytes:
        """Whatever arrives within ``timeout`` seconds (empty on timeout)."""
        r, _, _ = select.select((self.fd,), (), (), max(0.0, timeout))
        if not r:
            return b""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        self.rx_bytes += len(data)
        return data

    def read_until(self, done, timeout: float) -> bytes:
        """Read until ``done(buffer)`` is true or ``timeout`` passes; returns what was read."""
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            chunk = self.read_available(deadline - time.monotonic())
            if not chunk:
                return buf
            buf += chunk
            if done(buf):
                return buf
