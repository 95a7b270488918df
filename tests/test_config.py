"""Configuration: the example station is valid; every error names its key path and line."""

from pathlib import Path

import pytest

from collector.config import ConfigError, credit_code_problem, load, parse

ROOT = Path(__file__).resolve().parents[1]


def test_example_station_is_valid():
    cfg = load(ROOT / "etc" / "collector.yaml")
    assert cfg.station.device_id == "GD-SZ-NS-0042-C01"
    assert len(cfg.nozzles()) == 16
    dart1 = cfg.ports[0]
    assert (dart1.serial.baud, dart1.serial.parity, dart1.serial.data_bits) == (9600, "odd", 8)
    assert cfg.ports[1].serial.baud == 19200 and cfg.ports[1].serial.parity == "odd"  # protocol default
    assert cfg.ports[0].pumps[1].nozzles[0].decimals.price == 2
    assert len(cfg.digest) == 16


GOOD = """\
station: {device_id: box-1, name: S, credit_code: "91440300MA5F123452"}
store: {path: /tmp/x.db}
ports:
  - name: a
    device: /dev/ttyS1
    protocol: dart
    pumps:
      - address: 0x50
        nozzles:
          - {number: 1, id: 1, grade: {code: "92"}}
"""


def problems(text):
    with pytest.raises(ConfigError) as err:
        parse(text, "t.yaml")
    return err.value.problems


def test_good_minimal():
    cfg = parse(GOOD)
    assert cfg.ports[0].pumps[0].address == 0x50 and cfg.store.sales_per_nozzle == 2000


def test_errors_name_path_and_line():
    text = GOOD.replace("protocol: dart", "protocol: dart\n    parity: weird\n    baud: 1234")
    got = problems(text)
    assert any(p.startswith("ports[0].parity (line 7)") for p in got), got
    assert any(p.startswith("ports[0].baud (line 8)") for p in got), got


def test_unknown_key_and_missing_required():
    got = problems(GOOD.replace("name: S, ", "").replace("path: /tmp/x.db", "paht: /tmp/x.db"))
    assert any(p.startswith("station.name (line 1): is required") for p in got), got
    assert any(p.startswith("store.paht (line 2): unknown key") for p in got), got


def test_duplicates_are_caught():
    text = GOOD + "          - {number: 1, id: 1, grade: {code: '95'}}\n"
    got = problems(text)
    assert any("logical nozzle 1 is already used" in p for p in got), got
    assert any("station nozzle 1 is already used" in p for p in got), got


def test_dart_address_range_and_types():
    got = problems(GOOD.replace("0x50", "0x10").replace("id: 1,", "id: one,"))
    assert any(p.startswith("ports[0].pumps[0].address (line 8): must be between 80 and 111") for p in got), got
    assert any("ports[0].pumps[0].nozzles[0].id (line 10): must be int" in p for p in got), got


def test_bad_yaml_names_the_line():
    got = problems("station: {device_id: x\nports: [")
    assert "line" in got[0] and "not valid YAML" in got[0]


def test_credit_code_check_character():
    assert credit_code_problem("91440300MA5F123452") is None
    assert "check character" in credit_code_problem("91440300MA5F123453")
    assert credit_code_problem("short")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "nope.yaml")
    assert "cannot read" in str(err.value)
