"""Benchmark of the uplink cryptography (a script, not a test).

Owns: the throughput/ops figures used to size the uplink on the target boards.  Prints SM4-GCM,
SM4-CBC, SM3 and HMAC-SM3 throughput (MB/s = 10^6 bytes/s) through ``cryptography`` (OpenSSL), SM4-CBC
and SM3 through pure-Python gmssl for comparison, SM2 sign/verify/encrypt/decrypt operations per second
through the ``uplink.crypto`` wrapper, and seal+open of a 1 KB batch envelope per second.  Every figure
is the median of 5 runs; each run repeats the operation until it has taken at least the run time
(0.25 s, or 0.05 s with ``--quick``) after one warm-up call.

    python -m tools.bench.bench_crypto [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # allow "python tools/bench/bench_crypto.py"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from uplink import crypto as C  # noqa: E402
from uplink import envelope as E  # noqa: E402

RUNS = 5


def _rate(fn: Callable[[], object], run_time: float) -> float:
    """Median over RUNS of calls per second, each run lasting at least ``run_time`` seconds."""
    fn()  # warm-up
    rates = []
    for _ in range(RUNS):
        n = 0
        start = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= run_time:
                break
        rates.append(n / elapsed)
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs and small buffers (smoke test)")
    args = ap.parse_args(argv)
    run_time = 0.05 if args.quick else 0.25
    big = 64 * 1024 if args.quick else 1024 * 1024  # cryptography buffer
    small = 4 * 1024 if args.quick else 16 * 1024  # gmssl buffer (pure Python is ~0.2-0.3 MB/s)

    from cryptography.hazmat.backends.openssl import backend

    print(f"Python {platform.python_version()} on {platform.machine()} ({platform.platform()})")
    print(
        f"cryptography {metadata.version('cryptography')} / {backend.openssl_version_text()}; "
        f"gmssl {metadata.version('gmssl')}"
    )
    print(f"median of {RUNS} runs, >= {run_time:.2f} s each; MB/s = 10^6 bytes/s\n")

    key, iv, nonce = os.urandom(16), os.urandom(16), os.urandom(12)
    buf_big, buf_small = os.urandom(big), os.urandom(small)

    from gmssl import sm3 as gm_sm3
    from gmssl import sm4 as gm_sm4

    gm = gm_sm4.CryptSM4()
    gm.set_key(key, gm_sm4.SM4_ENCRYPT)

    rows: list[tuple[str, str, float, str]] = []

    def mbps(label: str, lib: str, fn: Callable[[], object], nbytes: int) -> None:
        r = _rate(fn, run_time) * nbytes / 1e6
        rows.append((label, lib, r, f"MB/s ({nbytes // 1024} KiB buffer)"))
        print(f"  {label:<30} {lib:<13} {r:>12,.2f} MB/s", flush=True)

    def ops(label: str, lib: str, fn: Callable[[], object]) -> None:
        r = _rate(fn, run_time)
        rows.append((label, lib, r, "ops/s"))
        print(f"  {label:<30} {lib:<13} {r:>12,.1f} ops/s", flush=True)

    print("Throughput")
    mbps("SM4-GCM encrypt", "cryptography", lambda: C.sm4_gcm_encrypt(key, nonce, buf_big, b"hdr"), big)
    mbps("SM4-CBC encrypt (PKCS#7)", "cryptography", lambda: C.sm4_cbc_encrypt(key, iv, buf_big), big)
    mbps("SM4-CBC encrypt (PKCS#7)", "gmssl", lambda: gm.crypt_cbc(iv, buf_small), small)
    mbps("SM3", "cryptography", lambda: C.sm3(buf_big), big)
    mbps("SM3", "gmssl", lambda: gm_sm3.sm3_hash(list(buf_small)), small)
    mbps("HMAC-SM3", "cryptography", lambda: C.hmac_sm3(key, buf_big), big)

    print("SM2 via uplink.crypto (gmssl arithmetic)")
    priv, pub = C.sm2_generate_keypair()
    msg = os.urandom(256)
    sig = C.sm2_sign(priv, msg)
    ct = C.sm2_encrypt(pub, key)
    ops("SM2 sign (Z_A + SM3, 256 B)", "wrapper", lambda: C.sm2_sign(priv, msg))
    ops("SM2 verify (Z_A + SM3, 256 B)", "wrapper", lambda: C.sm2_verify(pub, msg, sig))
    ops("SM2 encrypt 16 B (DER)", "wrapper", lambda: C.sm2_encrypt(pub, key))
    ops("SM2 decrypt 16 B (DER)", "wrapper", lambda: C.sm2_decrypt(priv, ct))
    ops("SM2 key generation", "wrapper", C.sm2_generate_keypair)

    print("Envelope seal + open, 1 KB body")
    body = os.urandom(1024)
    for cipher, name in ((E.CIPHER_SM4_GCM, "SM4-GCM"), (E.CIPHER_SM4_CBC_HMAC_SM3, "SM4-CBC+HMAC-SM3")):
        s = E.Session.generate("GD-440106-0001", 1, cipher)
        keys = {1: s.key}
        seq = iter(range(1, 1 << 32))

        def seal_open(s: E.Session = s, keys: dict[int, bytes] = keys, seq: object = seq) -> None:
            env = E.seal({"msg_type": 0x10, "seq": next(seq)}, body, s)  # type: ignore[call-overload]
            E.open_(env, keys)

        ops(f"seal+open {name}", "envelope", seal_open)

    print("\nDone.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
