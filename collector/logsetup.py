"""The one logger setup: every process logs to stderr in one format that journald reads as-is.

Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority ``<N>`` so journald
keeps levels, and the timestamp is left to journald. Elsewhere the line carries its own time.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        head = f"{record.levelname.lower()} {record.name}[{record.process}]: "
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{head}{msg}"
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {head}{msg}"


def setup(level: str = "info", stream=None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
