"""Ring store: identity, duplicates, the ring rule, durability under kill -9, and a full disk."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from store.ringstore import RingStore, StoreError, open_readonly, stream_summary


def sale(i, nozzle=1, key=None):
    return {"stream": f"sale:{nozzle}", "kind": "sale", "nozzle": nozzle, "key": key or f"k{i}", "t": 1000.0 + i,
            "body": {"vol_total": i, "amt_total": 10 * i}}


def events(conn):
    return [json.loads(b) for (b,) in conn.execute("SELECT body FROM records WHERE stream='event' ORDER BY seq")]


def test_seq_per_stream_and_duplicate_key(tmp_path):
    s = RingStore(str(tmp_path / "s.db"))
    r = s.put_batch([sale(1), sale(2), sale(1, nozzle=2)])
    assert [(x.stream, x.seq, x.duplicate) for x in r] == [("sale:1", 1, False), ("sale:1", 2, False), ("sale:2", 1, False)]
    again = s.put_batch([sale(2)])
    assert (again[0].seq, again[0].duplicate) == (2, True)
    assert s.conn.execute("SELECT count(*) FROM records").fetchone()[0] == 3


def test_ring_drops_acknowledged_first_silently(tmp_path):
    s = RingStore(str(tmp_path / "s.db"), sales_per_nozzle=10)
    s.put_batch([sale(i) for i in range(10)])
    assert s.mark_acked("sale:1", 4) == 4
    s.put_batch([sale(i) for i in range(10, 14)])  # evicts seq 1-4, all acknowledged
    seqs = [q for (q,) in s.conn.execute("SELECT seq FROM records WHERE stream='sale:1' ORDER BY seq")]
    assert seqs == list(range(5, 15))
    summary = {x["stream"]: x for x in stream_summary(s.conn)}
    assert summary["sale:1"]["evicted_unsent"] == 0
    assert not [e for e in events(s.conn) if e.get("stream") == "sale:1" and "from_seq" in e]


def test_ring_full_of_unsent_evicts_with_a_record(tmp_path):
    s = RingStore(str(tmp_path / "s.db"), sales_per_nozzle=10)
    s.put_batch([sale(i) for i in range(10)])
    s.put_batch([sale(i) for i in range(10, 13)])  # one batch: one eviction record for the range
    s.put_batch([sale(13)])
    ev = [e for e in events(s.conn) if "from_seq" in e]
    assert [(e["from_seq"], e["to_seq"], e["count"]) for e in ev] == [(1, 3, 3), (4, 4, 1)]
    assert ev[0]["first_totals"] == {"vol_total": 0, "amt_total": 0}
    assert ev[0]["last_totals"] == {"vol_total": 2, "amt_total": 20}
    assert {x["stream"]: x for x in stream_summary(s.conn)}["sale:1"]["evicted_unsent"] == 4
    alarms = [e for e in events(s.conn) if e.get("alarm") == "ring_nearly_full"]
    assert len(alarms) == 1 and alarms[0]["stream"] == "sale:1"


def test_seq_never_reused_after_restart(tmp_path):
    path = str(tmp_path / "s.db")
    s = RingStore(path, sales_per_nozzle=10)
    s.put_batch([sale(i) for i in range(12)])
    s.close()
    s = RingStore(path, sales_per_nozzle=10)
    assert s.put_batch([sale(99)])[0].seq == 13


WRITER = textwrap.dedent("""
    import sys
    from store.ringstore import RingStore
    s = RingStore(sys.argv[1], sales_per_nozzle=500)
    i = 0
    while True:
        batch = [{"stream": f"sale:{n}", "kind": "sale", "nozzle": n, "key": f"{i}-{n}", "t": i,
                  "body": {"i": i, "pad": "x" * 300}} for n in range(1, 5)]
        for r in s.put_batch(batch):
            print(r.stream, r.seq, flush=True)
        i += 1
""")


def test_kill_9_mid_write_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "s.db")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    committed = []
    for line in proc.stdout:
        committed.append(tuple(line.split()))
        if len(committed) >= 3000:  # well past the ring: evictions are happening too
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed += [tuple(line.split()) for line in proc.stdout]
    conn = open_readonly(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {(s, str(q)) for s, q in conn.execute("SELECT stream, seq FROM records WHERE kind='sale'")}
    # every record reported committed is there, unless the ring (500) legitimately moved past it
    newest = {}
    for s, q in committed:
        newest[s] = max(newest.get(s, 0), int(q))
    expected = {(s, q) for s, q in committed if int(q) > newest[s] - 500}
    assert expected <= stored


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs for a real full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_gives_a_clear_error_and_loses_nothing(tiny_disk):
    s = RingStore(str(tiny_disk / "s.db"), cache_kib=64)
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    stored = []
    with pytest.raises(StoreError) as err:
        for i in range(1000):
            s.put_batch([dict(sale(i), body={"pad": "y" * 2000})])
            stored.append(i)
    assert "full" in str(err.value).lower() or "disk" in str(err.value).lower()
    filler.unlink()
    r = s.put_batch([dict(sale(5000), body={"after": True})])  # space back: the same record goes in
    assert not r[0].duplicate
    assert s.integrity_ok()
    keys = {k for (k,) in s.conn.execute("SELECT key FROM records")}
    assert {f"k{i}" for i in stored} | {"k5000"} <= keys
