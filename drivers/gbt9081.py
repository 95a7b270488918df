"""GB/T 9081-2023 dispenser data: the interface a vendor driver fills, and the change tracking
every driver shares (identity events, per-nozzle alarms).

The field-level interface of GB/T 9081-2023 is not public (reference §5.1), so this module fixes
only what the platform needs from any dispenser that has it:

* ``records.NozzleIdentity``: the nozzle's unique ID; the IDs of the metering-and-control main
  board, the monitoring microprocessor, the encoder and the safety device; the software ID; the
  lock state; and, for public protocols without any of that, the pump identity (DART DC9).
* ``SafetyCheck``: the outcome of the dispenser's own safety / anti-cheat self-check.
* Per-nozzle alarms: ``nozzle_offline``, ``safety_check_error``, ``metering_out_of_tolerance``
  (the last raised by ``records.sale``), plus ``nozzle_locked`` when the dispenser locks itself.

A vendor driver implements ``Gbt9081Source`` (or just calls ``IdentityTracker.update`` with what it
read) and never builds identity records itself: the tracker compares each reading with the last
one stored for that nozzle and emits ``identity`` (first sighting) or ``identity_changed`` (any
field differs; ``changed`` lists which).

Persistence: the last identity per nozzle is read back from the store (``last_identities``: the
newest ``identity`` record of each nozzle) when the driver starts. The store is the one durable,
fsynced place on the box; an identity change made while the box was off (a main board swapped
during a power cut) is therefore still seen as a change on the next start. The runtime directory
is a tmpfs and would forget exactly that case.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

from drivers import records
from drivers.records import NozzleIdentity

ALARM_NOZZLE_OFFLINE = "nozzle_offline"
ALARM_SAFETY_CHECK_ERROR = "safety_check_error"
ALARM_METERING_OUT_OF_TOLERANCE = "metering_out_of_tolerance"  # raised by records.sale
ALARM_NOZZLE_LOCKED = "nozzle_locked"
IDENTITY_FIELDS = tuple(f.name for f in fields(NozzleIdentity))
LOCKED = "locked"


@dataclass(frozen=True)
class SafetyCheck:
    """The dispenser's safety / anti-cheat self-check for one nozzle (encoder and monitoring MCU
    verifying each other, metering compared in real time). ``code`` is the vendor's code."""

    ok: bool
    code: str | None = None
    detail: str | None = None


@runtime_checkable
class Gbt9081Source(Protocol):
    """What a vendor driver for a GB/T 9081-2023 dispenser provides, per nozzle.

    Return None for "not read this cycle" (nothing is emitted), a value with None fields for
    "the dispenser does not give this field". Called by the driver's own loop, on its own line,
    at its own pace (identity after start-up and after each reconnect is enough; the safety
    check as often as the dispenser updates it).
    """

    def nozzle_identity(self, pump, nozzle) -> NozzleIdentity | None: ...

    def safety_check(self, pump, nozzle) -> SafetyCheck | None: ...


def identity_from_body(body: dict) -> NozzleIdentity:
    return NozzleIdentity(**{k: body.get(k) for k in IDENTITY_FIELDS})


def offline_alarms(port: str, pump, silent_polls: int) -> list[dict]:
    """One ``nozzle_offline`` alarm per nozzle of a pump that stopped answering."""
    return [records.alarm(ALARM_NOZZLE_OFFLINE, nozzle=n.id, port=port, pump=pump.address,
                          logical_nozzle=n.number, silent_polls=silent_polls) for n in pump.nozzles]


class IdentityTracker:
    """The last known identity and safety state of each nozzle of one port; turns readings into
    records. Not thread-safe; one per driver process."""

    def __init__(self, ctx, nozzle_ids) -> None:
        self.ctx = ctx
        self.nozzle_ids = list(nozzle_ids)
        self.last: dict[int, NozzleIdentity] = {}
        self.safety: dict[int, bool] = {}
        self.restored = False

    def restore(self) -> bool:
        """Load the last stored identity of each nozzle. False (try again later) if the store is down."""
        if self.restored:
            return True
        try:
            found = self.ctx.store.last_identities(self.nozzle_ids)
        except Exception as exc:  # noqa: BLE001 - store not up yet: retried on the next update
            self.ctx.log.warning("could not read last identities from the store: %s", exc)
            return False
        for key, body in found.items():
            self.last.setdefault(int(key), identity_from_body(body))
        self.restored = True
        return True

    def current(self, nozzle_id: int) -> NozzleIdentity:
        self.restore()
        return self.last.get(nozzle_id) or NozzleIdentity()

    def merged(self, nozzle_id: int, **changes) -> NozzleIdentity:
        """The current identity with some fields replaced (for protocols that give only some)."""
        return replace(self.current(nozzle_id), **changes)

    def update(self, port: str, pump: int, nozzle_id: int, ident: NozzleIdentity) -> list[dict]:
        """Records for a new reading: none if nothing changed, else identity / identity_changed
        (and nozzle_locked when the lock state turns to locked). The caller captures them."""
        self.restore()
        previous = self.last.get(nozzle_id)
        if previous == ident:
            return []
        self.last[nozzle_id] = ident
        out = [records.identity(nozzle_id, ident, previous, port, pump)]
        if ident.lock_state == LOCKED and (previous is None or previous.lock_state != LOCKED):
            out.append(records.alarm(ALARM_NOZZLE_LOCKED, nozzle=nozzle_id, port=port, pump=pump))
        return out

    def check(self, port: str, pump: int, nozzle_id: int, result: SafetyCheck) -> list[dict]:
        """``safety_check_error`` when a check starts failing, ``safety_check_ok`` when it recovers."""
        previous = self.safety.get(nozzle_id)
        self.safety[nozzle_id] = result.ok
        if result.ok == previous or (result.ok and previous is None):
            return []
        if not result.ok:
            return [records.alarm(ALARM_SAFETY_CHECK_ERROR, nozzle=nozzle_id, port=port, pump=pump,
                                  code=result.code, detail=result.detail)]
        return [records.event("safety_check_ok", nozzle=nozzle_id, port=port, pump=pump)]

    def poll_source(self, source: Gbt9081Source, port: str, pump) -> list[dict]:
        """Ask a vendor driver for every nozzle of a pump; the records to capture."""
        out: list[dict] = []
        for n in pump.nozzles:
            ident = source.nozzle_identity(pump, n)
            if ident is not None:
                out += self.update(port, pump.address, n.id, ident)
            result = source.safety_check(pump, n)
            if result is not None:
                out += self.check(port, pump.address, n.id, result)
        return out
