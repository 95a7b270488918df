"""Configuration of tank-gauge (VR) ports: tanks instead of pumps, the console keys, their defaults,
and errors that name the key path and line."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import ConfigError, TankConsoleConfig, parse

HEAD = """\
station: {device_id: box-1, name: S, credit_code: "91440300MA5F123452"}
store: {path: /tmp/x.db}
ports:
  - name: isl1
    device: /dev/ttyS1
    protocol: dart
    pumps:
      - address: 0x50
        nozzles:
          - {number: 1, id: 1, grade: {code: "92"}, tank: 1}
          - {number: 2, id: 2, grade: {code: "95"}, tank: 2}
"""
VR = """\
  - name: atg
    device: /dev/ttyS3
    protocol: vr
    tanks:
      - {number: 1, grade: {code: "92", name: 92号汽油}, capacity: 30000}
      - {number: 2, grade: {code: "95"}, capacity: 20000, product_code: "2"}
"""


def problems(text):
    try:
        parse(text, "t.yaml")
    except ConfigError as err:
        return err.problems
    raise AssertionError("expected a ConfigError")


def test_minimal_vr_port_and_defaults():
    cfg = parse(HEAD + VR)
    port = cfg.ports[1]
    assert port.protocol == "vr" and port.pumps == ()
    s = port.serial
    assert (s.baud, s.data_bits, s.parity, s.stop_bits) == (9600, 7, "odd", 1.0)  # the field default 7-O-1
    assert s.response_timeout == 2.0
    c = port.console
    assert isinstance(c, TankConsoleConfig)
    assert [t.number for t in c.tanks] == [1, 2]
    assert c.tanks[0].grade_code == "92" and c.tanks[0].grade_name == "92号汽油" and c.tanks[0].capacity == 30000.0
    assert c.tanks[1].product_code == "2" and c.tanks[0].product_code is None
    assert c.security_code is None and c.set_clock is False and c.units == "auto"
    assert c.end_of_message == b"\x03"
    assert (c.inventory_interval, c.snapshot_interval) == (5.0, 900.0)
    assert c.reconciliation.interval == 3600.0 and c.derived_delivery.enabled
    assert c.tanks[0].thresholds == c.thresholds
    assert cfg.ports[0].console is None
    # nozzles keep their tank link
    assert [n.tank for _, _, n in cfg.nozzles()] == [1, 2]
    assert c.tank(2).grade_code == "95" and c.tank(7) is None


def test_every_console_key():
    text = HEAD + """\
  - name: atg
    device: socket://192.0.2.50:10001
    protocol: vr
    baud: 19200
    data_bits: 8
    parity: none
    response_timeout: 4
    security_code: "012345"
    set_clock: true
    clock_interval: 300
    clock_max_drift: 120
    units: us
    end_of_message: "0d0a"
    inventory_interval: 2
    snapshot_interval: 600
    delivery_interval: 30
    alarm_interval: 5
    leak_test_interval: 1800
    thresholds: {volume: 80, height: 10, water: 3, temperature: 1}
    derived_delivery: {enabled: false, start_rise: 150, min_volume: 800, settle: 240, grace: 900, baseline_window: 300}
    reconciliation: {enabled: true, interval: 86400, tolerance_abs: 100, tolerance_rel: 0.002, boundary_wait: 30}
    tanks:
      - {number: 1, grade: {code: "92"}, capacity: 30000, thresholds: {volume: 20}}
      - {number: 2, grade: {code: "95"}, capacity: 30000}
"""
    port = parse(text).ports[1]
    c = port.console
    assert port.device.startswith("socket://") and port.serial.baud == 19200 and port.serial.parity == "none"
    assert c.security_code == "012345" and c.set_clock and c.units == "us" and c.end_of_message == b"\r\n"
    assert (c.clock_interval, c.clock_max_drift, c.inventory_interval, c.delivery_interval) == (300, 120, 2, 30)
    assert c.thresholds.volume == 80 and c.tanks[1].thresholds.volume == 80
    assert c.tanks[0].thresholds.volume == 20 and c.tanks[0].thresholds.height == 10  # per tank over the port's
    assert not c.derived_delivery.enabled and c.derived_delivery.min_volume == 800
    assert c.reconciliation.interval == 86400 and c.reconciliation.tolerance_rel == 0.002


def test_pumps_on_a_vr_port_and_missing_tanks():
    text = HEAD + VR.replace("    tanks:\n", "    pumps: []\n    tankz:\n")
    got = problems(text)
    assert any(p.startswith("ports[1].pumps (line 15): unknown key") for p in got), got
    assert any(p.startswith("ports[1].tanks (line 12): must be a non-empty list of tanks") for p in got), got


def test_tank_errors_name_path_and_line():
    text = HEAD + VR + "      - {number: 2, grade: {code: '98'}, capacity: -5, product_code: 'AB'}\n"
    got = problems(text)
    assert any(p.startswith("ports[1].tanks[2].number (line 18): tank 2 is already used by ports[1].tanks[1]")
               for p in got), got
    assert any(p.startswith("ports[1].tanks[2].capacity (line 18): must be between 1") for p in got), got
    assert any(p.startswith("ports[1].tanks[2].product_code (line 18)") for p in got), got


def test_console_key_errors():
    text = HEAD + VR.replace("    protocol: vr\n", """\
    protocol: vr
    security_code: 123456
    units: liters
    end_of_message: "zz"
    inventory_interval: 0
    set_clock: yes please
    derived_delivery: {settle: 10, sttle: 3}
    reconciliation: {tolerance_rel: 2}
""")
    got = problems(text)
    assert any(p.startswith("ports[1].security_code (line 15): must be a quoted 6-character string") for p in got), got
    assert any(p.startswith("ports[1].units (line 16): must be one of auto, metric, us, imperial") for p in got), got
    assert any(p.startswith("ports[1].end_of_message (line 17)") for p in got), got
    assert any(p.startswith("ports[1].inventory_interval (line 18): must be between 0.2") for p in got), got
    assert any(p.startswith("ports[1].set_clock (line 19)") for p in got), got
    assert any(p.startswith("ports[1].derived_delivery.sttle (line 20): unknown key") for p in got), got
    assert any(p.startswith("ports[1].reconciliation.tolerance_rel (line 21): must be between 0 and 1") for p in got), got


def test_security_code_must_be_six_characters():
    got = problems(HEAD + VR.replace("    protocol: vr\n", "    protocol: vr\n    security_code: '1234'\n"))
    assert any(p.startswith("ports[1].security_code (line 15): must be 6 printable ASCII") for p in got), got


def test_nozzle_tank_must_exist_when_consoles_are_configured():
    got = problems(HEAD.replace("tank: 2}", "tank: 5}") + VR)
    assert any(p.startswith("ports[0].pumps[0].nozzles[1].tank (line 11): tank 5 is not a tank of any tank "
                            "console (known: 1, 2)") for p in got), got
    # without a console, a nozzle may name its tank already (the console is wired later)
    assert parse(HEAD.replace("tank: 2}", "tank: 5}")).ports[0].pumps[0].nozzles[1].tank == 5


def test_tank_numbers_are_unique_in_the_station():
    second = VR.replace("name: atg", "name: atg2").replace("/dev/ttyS3", "/dev/ttyS4")
    got = problems(HEAD + VR + second)
    assert any(p.startswith("ports[2].tanks[0].number (line 22): tank 1 is already used by ports[1].tanks[0]")
               for p in got), got


def test_dart_port_rejects_tank_keys():
    got = problems(HEAD.replace("protocol: dart\n", "protocol: dart\n    inventory_interval: 5\n") + VR)
    assert any(p.startswith("ports[0].inventory_interval (line 7): unknown key") for p in got), got


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                  st.text(max_size=12), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
_KEYS = ["security_code", "set_clock", "clock_interval", "clock_max_drift", "units", "end_of_message",
         "inventory_interval", "snapshot_interval", "delivery_interval", "alarm_interval", "leak_test_interval",
         "thresholds", "derived_delivery", "reconciliation", "tanks", "protocol"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _JUNK, max_size=5),
       st.lists(st.dictionaries(st.sampled_from(["number", "grade", "capacity", "product_code", "thresholds", "x"]),
                                _JUNK, max_size=5), max_size=3))
def test_garbage_in_vr_keys_is_a_config_error_never_a_crash(port_keys, tanks):
    port = {"name": "atg", "device": "/dev/ttyS3", "protocol": "vr", "tanks": tanks, **port_keys}
    doc = yaml.safe_load(HEAD)
    doc["ports"].append(port)
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        cfg = parse(text, "junk.yaml")
    except ConfigError as err:
        assert err.problems and all("(line " in p for p in err.problems)
        return
    assert cfg.ports[1].console is not None or cfg.ports[1].protocol != "vr"
