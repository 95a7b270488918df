"""The records a tank-gauge driver produces: inventory readings, deliveries (reported by the console or
derived from level rises), console alarms, leak-test results, console clock checks, and wet-stock
reconciliation variances with their alarm. Protocol-independent: volumes in litres, heights in mm,
temperatures in degrees C, console times as ``YYYY-MM-DDTHH:MM`` (the console's own local clock).

Owns the conversion from a console's unit system to metric and the names of the console alarm codes.
Every record is stamped by ``drivers.records._record`` like the dispenser records.

Streams and kinds: ``tank``/``inventory``, ``delivery``/``delivery``, ``alarm``/``alarm``,
``leak``/``leak_test``, ``event``/``console_clock``, ``recon``/``reconciliation``.
"""

from __future__ import annotations

from datetime import datetime

from drivers.records import _record

TANK_STREAM, DELIVERY_STREAM, LEAK_STREAM, RECON_STREAM = "tank", "delivery", "leak", "recon"

# ------------------------------------------------------------------ units

GALLON_L, IMPERIAL_GALLON_L, INCH_MM = 3.785411784, 4.54609, 25.4


class Metric:
    """Converts console values (US = 1, metric = 2, imperial = 3; reference §5) to L, mm and C."""

    def __init__(self, system: int = 2) -> None:
        self.system = system if system in (1, 2, 3) else 2
        self.name = {1: "US", 2: "metric", 3: "imperial"}[self.system]

    def volume(self, v: float | None) -> float | None:
        if v is None:
            return None
        return round(v * {1: GALLON_L, 2: 1.0, 3: IMPERIAL_GALLON_L}[self.system], 2)

    def height(self, v: float | None) -> float | None:
        if v is None:
            return None
        return round(v * (1.0 if self.system == 2 else INCH_MM), 2)

    def temperature(self, v: float | None) -> float | None:
        if v is None:
            return None
        return round(v if self.system == 2 else (v - 32.0) * 5.0 / 9.0, 2)


def when(console_time: datetime | None) -> str | None:
    return console_time.strftime("%Y-%m-%dT%H:%M") if console_time else None


def _tank_fields(tank) -> dict:
    return {"tank": tank.number, "grade": tank.grade_code, "grade_name": tank.grade_name}


# ------------------------------------------------------------------ inventory

STATUS_BITS = {0x1: "delivery_in_progress", 0x2: "leak_test_in_progress", 0x4: "invalid_fuel_height"}


def inventory_values(inv, metric: Metric) -> dict:
    """One tank of an i201 reply as metric numbers (None where the console sent ``????????``)."""
    status = inv.status or 0
    return {
        "product_code": inv.product, "status": inv.status,
        "flags": [name for bit, name in STATUS_BITS.items() if status & bit],
        "volume": metric.volume(inv.volume), "tc_volume": metric.volume(inv.tc_volume),
        "ullage": metric.volume(inv.ullage), "height": metric.height(inv.height),
        "water": metric.height(inv.water), "temperature": metric.temperature(inv.temperature),
        "water_volume": metric.volume(inv.water_volume),
    }


def inventory(port: str, tank, values: dict, console_time: datetime | None, reason: str, units: str) -> dict:
    """A stored inventory reading. ``reason``: start, change, status, snapshot."""
    volume = values.get("volume")
    fill = round(100.0 * volume / tank.capacity, 1) if volume is not None and tank.capacity else None
    return _record(TANK_STREAM, "inventory", {
        **_tank_fields(tank), "port": port, "reason": reason, "console_time": when(console_time),
        **values, "capacity": tank.capacity, "fill_percent": fill, "console_units": units,
    })


# ------------------------------------------------------------------ deliveries


def delivery_key(tank: int, start: datetime | None, derived: bool = False) -> str:
    stamp = start.strftime("%Y%m%d%H%M") if start else "unknown"
    return f"{tank}:{'derived:' if derived else ''}{stamp}"


def delivery(port: str, tank, d, metric: Metric, extra: dict | None = None) -> dict:
    """A delivery as the console reported it (i202 / i20C). Natural key: tank + start time, so the
    console's rolling history read again and again is stored once."""
    sv, ev = metric.volume(d.start_volume), metric.volume(d.end_volume)
    stc, etc = metric.volume(d.start_tc_volume), metric.volume(d.end_tc_volume)
    body = {
        **_tank_fields(tank), "port": port, "derived": False, "source": "console",
        "start": when(d.start), "end": when(d.end),
        "volume": round(ev - sv, 2) if sv is not None and ev is not None else None,
        "tc_volume": round(etc - stc, 2) if stc is not None and etc is not None else None,
        "start_volume": sv, "end_volume": ev, "start_tc_volume": stc, "end_tc_volume": etc,
        "start_height": metric.height(d.start_height), "end_height": metric.height(d.end_height),
        "start_water": metric.height(d.start_water), "end_water": metric.height(d.end_water),
        "start_temperature": metric.temperature(d.start_temp), "end_temperature": metric.temperature(d.end_temp),
        "console_units": metric.name, **(extra or {}),
    }
    return _record(DELIVERY_STREAM, "delivery", body, key=delivery_key(tank.number, d.start))


def derived_delivery(port: str, tank, rise) -> dict:
    """A delivery found from a level rise the console did not report. ``volume`` is the rise net of
    the sales of the tank's nozzles meanwhile; ``gross_rise`` is the level change alone."""
    return _record(DELIVERY_STREAM, "delivery", {
        **_tank_fields(tank), "port": port, "derived": True, "source": "level_rise",
        "start": when(rise.console_start), "end": when(rise.console_end),
        "start_t": round(rise.start_wall, 3), "end_t": round(rise.end_wall, 3),
        "volume": round(rise.volume, 2), "gross_rise": round(rise.end_volume - rise.start_volume, 2),
        "dispensed_during": round(rise.dispensed, 2),
        "start_volume": rise.start_volume, "end_volume": rise.end_volume,
        "start_height": rise.start_height, "end_height": rise.end_height,
        "tc_volume": None, "console_units": "metric",
    }, key=delivery_key(tank.number, rise.console_start or datetime.fromtimestamp(rise.start_wall), derived=True))


# ------------------------------------------------------------------ console alarms

CATEGORIES = {1: "system", 2: "tank", 3: "liquid_sensor", 4: "vapor_sensor", 5: "input", 6: "line_leak",
              7: "groundwater_sensor", 8: "type_a_sensor", 12: "type_b_sensor", 13: "universal_sensor",
              14: "autodial", 18: "dispenser_interface", 19: "dispenser_interface", 20: "product",
              21: "pressure_line_leak", 99: "external"}
TANK_ALARMS = {
    1: "setup_data_warning", 2: "leak_alarm", 3: "high_water_alarm", 4: "overfill_alarm", 5: "low_product_alarm",
    6: "sudden_loss_alarm", 7: "high_product_alarm", 8: "invalid_fuel_level_alarm", 9: "probe_out_alarm",
    10: "high_water_warning", 11: "delivery_needed_warning", 12: "maximum_product_alarm",
    13: "gross_leak_test_fail", 14: "periodic_leak_test_fail", 15: "annual_leak_test_fail",
    16: "periodic_test_needed_warning", 17: "annual_test_needed_warning", 18: "periodic_test_needed_alarm",
    19: "annual_test_needed_alarm", 20: "leak_test_active", 21: "no_csld_idle_time_warning",
    22: "siphon_break_active_warning", 23: "csld_rate_increase_warning", 24: "accuchart_calibration_warning",
    25: "hrm_reconciliation_warning", 26: "hrm_reconciliation_alarm", 27: "cold_temperature_warning",
    28: "missing_delivery_ticket_warning", 29: "tank_line_gross_leak_alarm", 30: "delivery_density_warning",
}
SYSTEM_ALARMS = {1: "printer_out_of_paper", 4: "battery_off", 6: "system_security_warning", 16: "self_test_error",
                 17: "system_clock_incorrect_warning"}
SENSOR_ALARMS = {2: "setup_warning", 3: "fuel_alarm", 4: "sensor_out", 5: "short", 6: "water", 7: "water_out",
                 8: "high_liquid", 9: "low_liquid", 10: "liquid_warning"}


def alarm_name(category: int, alarm_type: int) -> str:
    if category == 2:
        name = TANK_ALARMS.get(alarm_type)
    elif category == 1:
        name = SYSTEM_ALARMS.get(alarm_type)
    elif category in (3, 4, 7, 8, 12, 13):
        name = SENSOR_ALARMS.get(alarm_type)
    else:
        name = None
    return name or f"vr_{category:02d}_{alarm_type:02d}"


def console_alarm(port: str, category: int, alarm_type: int, device: int, state: str,
                  console_time: datetime | None, tank=None) -> dict:
    """A console alarm that became active (``state`` active) or went away (``cleared``)."""
    body = {"alarm": "tank_console_alarm", "nozzle": None, "port": port, "state": state,
            "name": alarm_name(category, alarm_type), "category": category,
            "category_name": CATEGORIES.get(category, f"category_{category:02d}"), "type": alarm_type,
            "device": device, "tank": device if category == 2 else None, "console_time": when(console_time)}
    if tank is not None:
        body["grade"] = tank.grade_code
    return _record("alarm", "alarm", body)


# ------------------------------------------------------------------ leak tests

TEST_TYPES = {0: "0.2_gph", 1: "0.1_gph", 2: "gross_3_gph"}
RESULTS = {0: "invalid", 1: "passed", 2: "failed"}


def leak_test(port: str, tank, r, metric: Metric) -> dict:
    """One i208 leak-test result; keyed by tank, test type and start so a re-read is a duplicate."""
    start = r.start.strftime("%Y%m%d%H%M") if r.start else "unknown"
    rate = metric.volume(r.leak_rate)  # volume per hour, in the console's volume unit
    return _record(LEAK_STREAM, "leak_test", {
        **_tank_fields(tank), "port": port, "test_type": r.test_type,
        "test_name": TEST_TYPES.get(r.test_type, f"type_{r.test_type:02d}"), "manifolded": bool(r.manifolded),
        "start": when(r.start), "result": RESULTS.get(r.result, f"result_{r.result:02d}"), "passed": r.passed,
        "leak_rate": rate, "duration_hours": None if r.duration_hours is None else round(r.duration_hours, 2),
        "volume": metric.volume(r.volume),
    }, key=f"{tank.number}:{r.test_type}:{start}")


def leak_test_failed(port: str, tank, r, metric: Metric) -> dict:
    """The alarm for a failed leak test, once per test (same key as its leak_test record)."""
    start = r.start.strftime("%Y%m%d%H%M") if r.start else "unknown"
    return _record("alarm", "alarm", {
        "alarm": "leak_test_failed", "nozzle": None, "port": port, **_tank_fields(tank),
        "test_name": TEST_TYPES.get(r.test_type, f"type_{r.test_type:02d}"), "start": when(r.start),
        "leak_rate": metric.volume(r.leak_rate),
    }, key=f"leak:{tank.number}:{r.test_type}:{start}")


# ------------------------------------------------------------------ console clock


def console_clock(port: str, console_time: datetime, local: datetime, drift: float, action: str,
                  max_drift: float, detail: dict | None = None) -> dict:
    """The console clock against the collector's: ``drift`` = console - collector, in seconds, with the
    console's minute resolution. ``action``: observed, set, set_failed."""
    return _record("event", "console_clock", {
        "event": "console_clock", "port": port, "action": action, "console_time": when(console_time),
        "collector_time": local.strftime("%Y-%m-%dT%H:%M:%S"), "drift_s": round(drift),
        "resolution_s": 60, "max_drift_s": max_drift, **(detail or {}),
    })


# ------------------------------------------------------------------ wet-stock reconciliation


def reconciliation(port: str, r: dict) -> dict:
    """One product over one interval: volume change against dispensed and delivered volume.

    ``variance`` = (end - start volume) + dispensed - delivered: 0 when every litre is accounted for;
    negative = fuel missing (leak, theft, meters giving more than they count), positive = fuel gained
    (meters counting more than they give, an under-reported delivery)."""
    return _record(RECON_STREAM, "reconciliation", {"port": port, **r})


def variance_alarm(port: str, r: dict) -> dict:
    loss = r["variance"] < 0
    return _record("alarm", "alarm", {
        "alarm": "wetstock_variance", "nozzle": None, "port": port, "grade": r["grade"], "tanks": r["tanks"],
        "variance": r["variance"], "tolerance": r["tolerance"], "start_t": r["start_t"], "end_t": r["end_t"],
        "dispensed": r["dispensed"], "delivered": r["delivered"], "direction": "loss" if loss else "gain",
        "possible": "leak or theft" if loss else "mis-metering or unrecorded delivery",
    })
