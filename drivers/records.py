"""The records drivers produce, protocol-independent: sales, nozzle states, totalizer snapshots,
alarms and events, each a dict ready for the store (stream, kind, natural key, time, body).

Also owns the metering checks every sale goes through, and the GB/T 9081-2023 identity fields a
vendor driver fills (nozzle unique ID, core-part IDs, software ID, lock state).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal

from collector import clock
from drivers.numbers import scaled

# Nozzle states the platform sees
IDLE, CALLING, AUTHORIZED, FUELLING, OFFLINE, ERROR = "idle", "calling", "authorized", "fuelling", "offline", "error"


@dataclass(frozen=True)
class NozzleIdentity:
    """GB/T 9081-2023 fields. The field interface of that standard is not public: vendor drivers
    fill what their dispenser gives, public protocols fill what they can (DART DC9 pump identity)."""

    nozzle_uid: str | None = None
    main_board_id: str | None = None
    monitor_mcu_id: str | None = None
    encoder_id: str | None = None
    safety_device_id: str | None = None
    software_id: str | None = None
    lock_state: str | None = None  # unlocked / locked / None when unknown
    pump_identity: str | None = None


def sale_stream(nozzle_id: int) -> str:
    return f"sale:{nozzle_id}"


def _num(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else float(value)


def _record(stream: str, kind: str, body: dict, nozzle: int | None = None, key: str | None = None) -> dict:
    stamp = clock.stamp()
    body = {**body, "mono": stamp["mono"], "boot": stamp["boot"], "clock": stamp["clock"]}
    rec = {"stream": stream, "kind": kind, "t": stamp["t"], "body": body}
    if nozzle is not None:
        rec["nozzle"] = nozzle
    if key is not None:
        rec["key"] = key
    return rec


@dataclass(frozen=True)
class RawSale:
    """A completed sale as integers straight from the pump; decimals come from configuration."""

    volume: int
    amount: int
    price: int
    vol_total: int | None  # None: the totals were not read (listen mode, the POS never asked)
    amt_total: int | None
    pump_txn: int | None = None  # the pump's own transaction number, where the protocol has one


def gap(port, pump, nozzle, before: tuple[int, int | None], after: tuple[int, int | None], reason: str) -> dict:
    """Totals advanced by more than the sales recorded: fuel left the nozzle unseen (a sale made while
    the collector was off, or missed). Goes in the nozzle's sale stream so it sits in order between sales."""
    d = nozzle.decimals.totals

    def v(x):
        return _num(scaled(x, d)) if x is not None else None

    missed_vol = after[0] - before[0]
    missed_amt = after[1] - before[1] if after[1] is not None and before[1] is not None else None
    return _record(sale_stream(nozzle.id), "gap", {
        "nozzle": nozzle.id, "port": port.name, "pump": pump.address, "logical_nozzle": nozzle.number,
        "reason": reason, "vol_total_before": v(before[0]), "vol_total_after": v(after[0]),
        "amt_total_before": v(before[1]), "amt_total_after": v(after[1]),
        "missed_volume": v(missed_vol), "missed_amount": v(missed_amt),
    }, nozzle=nozzle.id, key=f"gap:{before[0]}:{after[0]}")


def reading_gap(port, pump, nozzle, chain: tuple[int, int | None] | None, reading: tuple[int, int | None],
                tolerance) -> dict | None:
    """A totals reading of an idle nozzle compared with its chain (totals at the last stored sale)."""
    if chain is None or chain[0] is None:
        return None
    if scaled(reading[0] - chain[0], nozzle.decimals.totals) > Decimal(str(tolerance.totals_volume_abs)):
        return gap(port, pump, nozzle, chain, reading, "totals advanced while no sale was seen")
    return None


def sale(station, port, pump, nozzle, raw: RawSale, start_vol_total: int | None, start_amt_total: int | None,
         tolerance, extra: dict | None = None) -> tuple[dict, list[dict]]:
    """The sale record and the records it raises: metering alarms, and a gap record (stored first)
    when the totals before this sale are beyond where the last stored sale left them."""
    d = nozzle.decimals
    volume, amount, price = scaled(raw.volume, d.volume), scaled(raw.amount, d.amount), scaled(raw.price, d.price)
    vol_total = scaled(raw.vol_total, d.totals) if raw.vol_total is not None else None
    flags = [] if vol_total is not None else ["no_totals"]
    alarms = []
    expected = volume * price
    allowed = Decimal(str(tolerance.amount_abs)) + Decimal(str(tolerance.amount_rel)) * abs(amount)
    if abs(expected - amount) > allowed:
        flags.append("amount_mismatch")
    gaps = []
    if start_vol_total is not None and vol_total is not None:
        delta = vol_total - scaled(start_vol_total, d.totals)
        excess = delta - volume
        if abs(excess) > Decimal(str(tolerance.totals_volume_abs)):
            flags.append("totals_mismatch")
        if excess > Decimal(str(tolerance.totals_volume_abs)) and d.totals == d.volume:
            before_amt = raw.amt_total - raw.amount if raw.amt_total is not None and d.amount == d.totals else None
            gaps.append(gap(port, pump, nozzle, (start_vol_total, start_amt_total),
                            (raw.vol_total - raw.volume, before_amt), "totals advanced between two sales"))
            flags.remove("totals_mismatch")  # explained by the gap record, not a metering fault
    body = {
        "station": station.name, "nozzle": nozzle.id, "port": port.name, "pump": pump.address,
        "logical_nozzle": nozzle.number, "grade": nozzle.grade_code, "grade_name": nozzle.grade_name,
        "price": _num(price), "volume": _num(volume), "amount": _num(amount),
        "vol_total": _num(vol_total) if vol_total is not None else None,
        "amt_total": _num(scaled(raw.amt_total, d.totals)) if raw.amt_total is not None else None,
        "vol_total_start": _num(scaled(start_vol_total, d.totals)) if start_vol_total is not None else None,
        "amt_total_start": _num(scaled(start_amt_total, d.totals)) if start_amt_total is not None else None,
        "pump_txn": raw.pump_txn, "flags": flags,
        "raw": [raw.volume, raw.amount, raw.price, raw.vol_total, raw.amt_total],
    }
    if extra:
        body.update(extra)
    # without totals a sale has no natural identity (two equal fills would collapse): no key
    key = f"{raw.vol_total}:{raw.amt_total}:{raw.volume}:{raw.amount}:{raw.pump_txn}" if vol_total is not None else None
    rec = _record(sale_stream(nozzle.id), "sale", body, nozzle=nozzle.id, key=key)
    metering = [f for f in flags if f != "no_totals"]
    if metering:
        alarms.append(alarm("metering_out_of_tolerance", nozzle=nozzle.id, port=port.name, pump=pump.address,
                            detail={"flags": metering, "volume": body["volume"], "amount": body["amount"],
                                    "price": body["price"], "vol_total": body["vol_total"],
                                    "vol_total_start": body["vol_total_start"]}))
    return rec, gaps + alarms


def nozzle_state(nozzle_id: int, state: str, port: str, pump: int, previous: str | None, detail: dict | None = None) -> dict:
    return _record("state", "nozzle_state", {"nozzle": nozzle_id, "state": state, "previous": previous,
                                             "port": port, "pump": pump, **(detail or {})}, nozzle=nozzle_id)


def totals(nozzle, port: str, pump: int, vol_total: int, amt_total: int | None, reason: str) -> dict:
    d = nozzle.decimals.totals
    return _record("totals", "totals", {
        "nozzle": nozzle.id, "port": port, "pump": pump, "reason": reason,
        "vol_total": _num(scaled(vol_total, d)),
        "amt_total": _num(scaled(amt_total, d)) if amt_total is not None else None,
    }, nozzle=nozzle.id)


def alarm(name: str, nozzle: int | None = None, **detail) -> dict:
    return _record("alarm", "alarm", {"alarm": name, "nozzle": nozzle, **detail}, nozzle=nozzle)


def event(name: str, **detail) -> dict:
    return _record("event", "event", {"event": name, **detail})


def identity(nozzle_id: int, ident: NozzleIdentity, previous: NozzleIdentity | None, port: str, pump: int) -> dict:
    changed = [k for k, v in asdict(ident).items() if previous is None or getattr(previous, k) != v]
    return _record("event", "identity", {"event": "identity_changed" if previous else "identity",
                                         "nozzle": nozzle_id, "port": port, "pump": pump,
                                         "changed": changed, **asdict(ident)}, nozzle=nozzle_id)
