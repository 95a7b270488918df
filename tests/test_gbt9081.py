"""GB/T 9081-2023 identity tracking: first sighting, changes of any field, lock and safety alarms,
and the baseline restored from the store across restarts."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from drivers import gbt9081, records
from drivers.gbt9081 import Gbt9081Source, IdentityTracker, SafetyCheck
from drivers.records import NozzleIdentity
from store.ringstore import RingStore

FULL = NozzleIdentity(nozzle_uid="N-0001", main_board_id="MB-1", monitor_mcu_id="MCU-1", encoder_id="ENC-1",
                      safety_device_id="SD-1", software_id="V2.3.1", lock_state="unlocked", pump_identity=None)


class StoreAdapter:
    """The driver's StoreClient, answered straight from a RingStore (no socket)."""

    def __init__(self, ring: RingStore | None) -> None:
        self.ring = ring

    def last_identities(self, nozzles):
        if self.ring is None:
            raise OSError("store not up")
        return self.ring.last_identities(nozzles)


def _ctx(ring):
    return SimpleNamespace(store=StoreAdapter(ring), log=logging.getLogger("test"))


def test_first_sighting_then_changes_of_any_field(tmp_path):
    ring = RingStore(str(tmp_path / "s.db"))
    tracker = IdentityTracker(_ctx(ring), [1, 2])
    first = tracker.update("p1", 3, 1, FULL)
    assert [r["body"]["event"] for r in first] == ["identity"]
    assert set(first[0]["body"]["changed"]) == set(gbt9081.IDENTITY_FIELDS)
    assert first[0]["nozzle"] == 1 and first[0]["body"]["main_board_id"] == "MB-1"
    assert tracker.update("p1", 3, 1, FULL) == []
    swapped = NozzleIdentity(**{**FULL.__dict__, "encoder_id": "ENC-2"})
    changed = tracker.update("p1", 3, 1, swapped)
    assert changed[0]["body"]["event"] == "identity_changed" and changed[0]["body"]["changed"] == ["encoder_id"]
    locked = tracker.update("p1", 3, 1, NozzleIdentity(**{**swapped.__dict__, "lock_state": "locked"}))
    assert [r["kind"] for r in locked] == ["identity", "alarm"]
    assert locked[1]["body"]["alarm"] == "nozzle_locked" and locked[0]["body"]["changed"] == ["lock_state"]


def test_baseline_survives_a_restart_through_the_store(tmp_path):
    ring = RingStore(str(tmp_path / "s.db"))
    before = IdentityTracker(_ctx(ring), [1, 2])
    ring.put_batch(before.update("p1", 3, 1, FULL) + before.update("p1", 3, 2, NozzleIdentity(pump_identity="42")))
    ring.put_batch([records.event("pump_online", port="p1", pump=3)])  # other events in between
    after = IdentityTracker(_ctx(ring), [1, 2])  # a new driver process
    assert after.update("p1", 3, 1, FULL) == []
    assert after.merged(2, software_id="S9") == NozzleIdentity(pump_identity="42", software_id="S9")
    out = after.update("p1", 3, 2, after.merged(2, pump_identity="43"))
    assert out[0]["body"]["event"] == "identity_changed" and out[0]["body"]["changed"] == ["pump_identity"]
    ring.put_batch(out)
    latest = ring.last_identities([2, 7])
    assert list(latest) == ["2"] and latest["2"]["pump_identity"] == "43"


def test_store_down_at_start_is_retried(tmp_path):
    ring = RingStore(str(tmp_path / "s.db"))
    ring.put_batch(IdentityTracker(_ctx(ring), [1]).update("p1", 3, 1, FULL))
    ctx = _ctx(None)
    tracker = IdentityTracker(ctx, [1])
    assert tracker.restore() is False
    ctx.store.ring = ring  # the store writer is up now
    assert tracker.update("p1", 3, 1, FULL) == []


def test_safety_check_alarm_on_failure_and_event_on_recovery(tmp_path):
    tracker = IdentityTracker(_ctx(RingStore(str(tmp_path / "s.db"))), [1])
    assert tracker.check("p1", 3, 1, SafetyCheck(True)) == []
    bad = tracker.check("p1", 3, 1, SafetyCheck(False, "E21", "encoder verification failed"))
    assert bad[0]["body"]["alarm"] == "safety_check_error" and bad[0]["body"]["code"] == "E21"
    assert tracker.check("p1", 3, 1, SafetyCheck(False, "E21")) == []
    assert tracker.check("p1", 3, 1, SafetyCheck(True))[0]["body"]["event"] == "safety_check_ok"


def test_a_vendor_driver_fills_the_interface(tmp_path):
    nozzle = SimpleNamespace(id=5, number=1)
    pump = SimpleNamespace(address=2, nozzles=(nozzle,))

    class Vendor:
        def nozzle_identity(self, pump, nozzle):
            return FULL

        def safety_check(self, pump, nozzle):
            return SafetyCheck(False, "E3")

    assert isinstance(Vendor(), Gbt9081Source)
    tracker = IdentityTracker(_ctx(RingStore(str(tmp_path / "s.db"))), [5])
    out = tracker.poll_source(Vendor(), "p1", pump)
    assert [(r["kind"], r["nozzle"]) for r in out] == [("identity", 5), ("alarm", 5)]
    assert tracker.poll_source(Vendor(), "p1", pump) == []
    offline = gbt9081.offline_alarms("p1", pump, 5)
    assert [(a["body"]["alarm"], a["nozzle"]) for a in offline] == [("nozzle_offline", 5)]


def test_dart_pump_identity_change_is_an_event_end_to_end(tmp_path):
    """DC9 fills pump_identity for every nozzle of the side; a pump that comes back with another
    identity (main board swapped) gives identity_changed, and a restart does not repeat anything."""
    from tests.harness import Station

    st = Station(tmp_path, ports=1, sides=(2, 2), nozzles=(2, 2), seed=5)
    try:
        st.start_sims()
        st.start_daemon()
        side = st.cfg.ports[0].pumps[1]
        ids = sorted(n.id for n in side.nozzles)
        st.wait_for(lambda: len(st.records("identity")) == 4, 20, "an identity per nozzle")
        st.control("p01", "silence 0x51 on")
        st.wait_for(lambda: [a for a in st.records("alarm") if a["alarm"] == "nozzle_offline"], 20, "offline")
        st.control("p01", "identity 0x51 4200000051")
        st.control("p01", "silence 0x51 off")
        changed = st.wait_for(lambda: [r for r in st.records("identity") if r["event"] == "identity_changed"], 20,
                              "identity_changed")
        st.wait_for(lambda: len([r for r in st.records("identity") if r["event"] == "identity_changed"]) == 2, 5,
                    "both nozzles of the side")
        changed = [r for r in st.records("identity") if r["event"] == "identity_changed"]
        assert sorted(r["nozzle"] for r in changed) == ids
        assert all(r["changed"] == ["pump_identity"] and r["pump_identity"] == "4200000051" for r in changed)
        offline = [a["nozzle"] for a in st.records("alarm") if a["alarm"] == "nozzle_offline"]
        assert sorted(offline) == ids
        old = st.board("p01")["pid"]
        st.stop_daemon()
        st.start_daemon()  # the baseline comes back from the store: nothing new

        def read_again():
            board = st.board("p01")
            pumps = board.get("pumps", {}).values()
            return board.get("pid") != old and len(pumps) == 2 and all(p.get("identity") for p in pumps)

        st.wait_for(read_again, 20, "identities read again by the new driver")
        assert len(st.records("identity")) == 6
    finally:
        st.close()
