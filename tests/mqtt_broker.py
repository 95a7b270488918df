"""The ``mqtt_broker`` fixture: a real Mosquitto (tools/broker.py) on a free loopback port for one test.

    from tests.mqtt_broker import mqtt_broker  # noqa: F401  (pytest fixture)

    def test_x(mqtt_broker):
        mqtt_broker.port
        mqtt_broker.kill(); mqtt_broker.start()   # crash and come back with what it had saved
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.broker import MosquittoBroker, free_port, mosquitto_path, port_open

__all__ = ["MosquittoBroker", "free_port", "mosquitto_path", "mqtt_broker", "port_open", "require_mosquitto"]


def require_mosquitto() -> str:
    path = mosquitto_path()
    if path is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto; `make test` does it as root)")
    return path


@pytest.fixture
def mqtt_broker(tmp_path: Path):
    """A started broker on a free loopback port, stopped at the end of the test."""
    require_mosquitto()
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
