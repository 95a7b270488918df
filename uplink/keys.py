"""The device's identity and session keys: the SM2 key pair (generated once, kept 0600 on flash, or in
the hardware crypto where the box has one), the platform's SM2 public key, and the key-id counter
that must rise across reboots (persisted and fsynced before a key message leaves the box)."""

from __future__ import annotations

import json
import os

from uplink import crypto
from uplink.envelope import CIPHER_SM4_CBC_HMAC_SM3, CIPHER_SM4_GCM, Session


def _write_durably(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_or_create_device_key(path: str) -> tuple[bytes, bytes]:
    """(private, public) of the device. Creates the pair on first start and writes ``<path>.pub``."""
    if os.path.exists(path):
        with open(path) as f:
            private = bytes.fromhex(f.read().strip())
        public = crypto.sm2_public_key_from_private(private)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        private, public = crypto.sm2_generate_keypair()
        _write_durably(path, private.hex().encode())
    pub_path = path + ".pub"
    if not os.path.exists(pub_path):
        _write_durably(pub_path, public.hex().encode(), 0o644)
    return private, public


def load_public_key(value: str) -> bytes:
    """The platform key from configuration: hex of 04||X||Y, or a file holding that hex."""
    text = value
    if os.path.exists(value):
        with open(value) as f:
            text = f.read()
    return crypto.sm2_normalize_public_key(bytes.fromhex(text.strip()))


class KeyCounter:
    """Key ids strictly increasing per device, across restarts and power cuts."""

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "uplink-keys.json")
        try:
            with open(self.path) as f:
                self.last = int(json.load(f)["last_key_id"])
        except (OSError, ValueError, KeyError):
            self.last = 0

    def next(self) -> int:
        self.last += 1
        _write_durably(self.path, json.dumps({"last_key_id": self.last}).encode())
        return self.last


def new_session(device_id: str, counter: KeyCounter, cipher: str) -> Session:
    return Session.generate(device_id, counter.next(),
                            CIPHER_SM4_GCM if cipher == "gcm" else CIPHER_SM4_CBC_HMAC_SM3)
