"""Gilbarco listen mode without processes: the echo-tolerant loop decoder, and the listener turning
an overheard conversation into sales (with and without the POS reading totals)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

from collector.config import parse
from drivers.gilbarco import codec as gc
from drivers.gilbarco.codec import LoopDecoder, PumpState
from drivers.gilbarco.listener import GilbarcoListener

CONFIG = """
station: {device_id: T1, name: t, credit_code: "91440300MA5F123452"}
store: {path: /tmp/never.db}
runtime_dir: /tmp/never-run
ports:
  - name: g01
    device: /dev/null
    protocol: gilbarco
    mode: listen
    options: {totals_wait: 0.2}
    pumps:
      - address: 1
        nozzles:
          - {number: 1, id: 1, grade: {code: "92"}}
          - {number: 2, id: 2, grade: {code: "95"}}
"""

TXN = gc.TransactionReply(1, 2, 1, 838, 1250, 10475).encode()
TOTALS = gc.TotalsReply((gc.GradeTotals(1, 500000, 3925000, 785, 785),
                         gc.GradeTotals(2, 401250, 3372575, 838, 838))).encode()


def _conversation(echo: bool) -> bytes:
    """POS: 01 -> B1 (FEOT), 41 -> transaction, 51 -> totals, 01 -> 61 (idle)."""
    out = b""
    for cmd, reply in ((b"\x01", b"\xb1"), (b"\x41", TXN), (b"\x51", TOTALS), (b"\x01", b"\x61")):
        out += cmd + (cmd if echo else b"") + reply
    return out


def test_echo_tolerant_decoder_reads_both_kinds_of_tap():
    for echo in (True, False):
        decoder = LoopDecoder(None, echo=True)
        events = decoder.feed(_conversation(echo)) + decoder.flush()
        assert not [e for e in events if e.error]
        messages = [type(e.message).__name__ for e in events if e.message is not None]
        assert messages == ["Command", "StatusReply", "Command", "TransactionReply", "Command", "TotalsReply",
                            "Command", "StatusReply"]
        assert len([e for e in events if e.note == "echo"]) == (4 if echo else 0)
    # the plain decoder takes the echo of 01 for a DATA_ERROR reply and loses the real status
    plain = LoopDecoder(None).feed(_conversation(True))
    assert any(isinstance(e.message, gc.StatusReply) and e.message.state == PumpState.DATA_ERROR for e in plain)


def test_echo_of_a_controller_block_is_consumed():
    block = gc.PriceChangeBlock(1, 1070).encode()
    stream = b"\x21\x21\xd1" + block + block + b"\x01\x01\x61"
    events = LoopDecoder(None, echo=True).feed(stream)
    assert [type(e.message).__name__ for e in events if e.message is not None] == [
        "Command", "StatusReply", "PriceChangeBlock", "Command", "StatusReply"]
    assert [e.note for e in events].count("echo") == 3


class Ctx:
    def __init__(self):
        self.config = parse(CONFIG)
        self.port = self.config.ports[0]
        self.station = self.config.station
        self.tolerance = self.config.tolerance
        self.log = logging.getLogger("test")
        self.board = SimpleNamespace(publish=lambda *a, **k: None)
        self.store = SimpleNamespace(last_sales=lambda streams: {})
        self.records: list[dict] = []

    def capture(self, recs):
        self.records += recs
        return [(r["stream"], len(self.records), False) for r in recs]

    def stopping(self):
        return False


def _listen(stream: bytes) -> tuple[GilbarcoListener, Ctx]:
    ctx = Ctx()
    listener = GilbarcoListener(ctx)
    for event in listener.decoder.feed(stream) + listener.decoder.flush():
        listener._on_event(event)
    return listener, ctx


def test_listener_takes_the_sale_with_the_totals_the_pos_read():
    _, ctx = _listen(_conversation(echo=True))
    sales = [r["body"] for r in ctx.records if r["kind"] == "sale"]
    assert len(sales) == 1
    s = sales[0]
    assert (s["nozzle"], s["volume"], s["amount"], s["price"]) == (2, 12.5, 104.75, 8.38)
    assert (s["vol_total"], s["amt_total"], s["flags"]) == (4012.5, 33725.75, [])
    states = [(r["body"]["nozzle"], r["body"]["state"]) for r in ctx.records if r["kind"] == "nozzle_state"]
    assert (1, "idle") in states and (2, "idle") in states


def test_listener_without_totals_flags_the_sale_after_the_wait():
    stream = b"\x01\x01\xb1" + b"\x41\x41" + TXN + b"\x01\x01\x61"
    listener, ctx = _listen(stream)
    assert not [r for r in ctx.records if r["kind"] == "sale"]
    pump = listener.pumps[1]
    pump.pending.opened -= 1.0  # totals_wait (0.2 s) has passed
    for p in listener.pumps.values():
        if p.pending and time.monotonic() - p.pending.opened > listener.totals_wait:
            listener._finish(p, None)
    sales = [r["body"] for r in ctx.records if r["kind"] == "sale"]
    assert len(sales) == 1 and sales[0]["flags"] == ["no_totals"] and sales[0]["vol_total"] is None
    assert not [r for r in ctx.records if r["kind"] == "alarm"]


def test_a_transaction_without_end_of_transaction_status_is_not_a_sale():
    _, ctx = _listen(b"\x01\x01\x61" + b"\x41\x41" + TXN)  # the POS re-reads an old transaction
    assert not [r for r in ctx.records if r["kind"] == "sale"]
