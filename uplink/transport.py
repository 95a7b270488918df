"""Transports to the platform: MQTT (paho-mqtt 2.x driven from the uplink's own event loop, no
threads) and HTTP (http.client in two worker threads: one request each at a time).

Both expose the same small surface to the worker: ``fileno()`` to wait on, ``pump()`` to run after a
wake-up (or on timer), ``send(envelope)``, ``start()``/``stop()``, and a deque of events:
``("connected",)``, ``("disconnected", reason)``, ``("down", bytes)`` (an envelope for the device),
``("notice", dict)`` (the platform's clear advisory), ``("error", text)``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
import urllib.parse
from collections import deque

MAX_RECONNECT_DELAY = 300.0


def full_jitter(attempt: int, base: float = 1.0, cap: float = MAX_RECONNECT_DELAY) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class MqttTransport:
    def __init__(self, device_id: str, host: str, port: int, keepalive: int, inflight: int, tls: bool = False) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.device_id = device_id
        self.host, self.port, self.keepalive = host, port, keepalive
        self.up_topic = f"sc/v1/{device_id}/up"
        self.down_topic = f"sc/v1/{device_id}/down"
        self.notice_topic = f"sc/v1/{device_id}/notice"
        self.status_topic = f"sc/v1/{device_id}/status"
        self.events: deque = deque()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False,
                                  protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(inflight * 4)  # the store is the queue, not paho
        self.client.will_set(self.status_topic, json.dumps({"device_id": device_id, "online": False}), qos=1, retain=True)
        if tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connected = False
        self.attempt = 0
        self.next_try = 0.0
        self.last_misc = 0.0

    # paho callbacks (run inside loop_read/loop_write/loop_misc, in our thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self.events.append(("error", f"broker refused connection: {reason_code}"))
            return
        self.connected = True
        self.attempt = 0
        client.subscribe([(self.down_topic, 1), (self.notice_topic, 1)])
        client.publish(self.status_topic, json.dumps({"device_id": self.device_id, "online": True,
                                                      "t": int(time.time() * 1000)}), qos=1, retain=True)
        self.events.append(("connected",))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        if self.connected:
            self.events.append(("disconnected", str(reason_code)))
        self.connected = False
        self._schedule_reconnect()

    def _on_message(self, client, userdata, msg):
        if msg.topic == self.down_topic:
            self.events.append(("down", bytes(msg.payload)))
        elif msg.topic == self.notice_topic:
            try:
                self.events.append(("notice", json.loads(msg.payload)))
            except ValueError:
                self.events.append(("error", "unreadable notice from the platform"))

    def _schedule_reconnect(self) -> None:
        self.next_try = time.monotonic() + full_jitter(self.attempt)
        self.attempt += 1

    # worker surface
    def start(self) -> None:
        self.next_try = time.monotonic()

    def fileno(self):
        sock = self.client.socket()
        return sock.fileno() if sock is not None else None

    def wants_write(self) -> bool:
        return self.client.socket() is not None and self.client.want_write()

    def next_deadline(self) -> float:
        if self.client.socket() is None:
            return self.next_try
        return self.last_misc + 1.0

    def pump(self, readable: bool = False, writable: bool = False) -> None:
        mqtt = self.mqtt
        now = time.monotonic()
        if self.client.socket() is None:
            if now >= self.next_try:
                try:
                    self.client.connect(self.host, self.port, self.keepalive)
                except OSError as exc:
                    self.events.append(("error", f"MQTT connect to {self.host}:{self.port} failed: {exc}"))
                    self._schedule_reconnect()
            return
        rc = mqtt.MQTT_ERR_SUCCESS
        if readable:
            rc = self.client.loop_read()
        if rc == mqtt.MQTT_ERR_SUCCESS and (writable or self.client.want_write()):
            rc = self.client.loop_write()
        if now - self.last_misc >= 1.0:
            self.last_misc = now
            rc2 = self.client.loop_misc()
            rc = rc if rc != mqtt.MQTT_ERR_SUCCESS else rc2
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and self.client.socket() is None and self.connected:
            self._on_disconnect(self.client, None, None, f"network error {rc}")

    def send(self, envelope: bytes) -> bool:
        if not self.connected:
            return False
        info = self.client.publish(self.up_topic, envelope, qos=1)
        if info.rc == self.mqtt.MQTT_ERR_SUCCESS:
            try:
                self.client.loop_write()
            except OSError:
                pass
            return True
        return False

    def stop(self) -> None:
        if self.connected:
            self.client.publish(self.status_topic, json.dumps({"device_id": self.device_id, "online": False,
                                                              "t": int(time.time() * 1000)}), qos=1, retain=True)
            self.client.loop_write()
        self.client.disconnect()


def _http_exception():
    import http.client

    return http.client.HTTPException


class HttpTransport:
    """POST each envelope; the answer (or the error JSON) comes back as an event. Two worker threads,
    so a live batch is never stuck behind more than one backfill request."""

    def __init__(self, device_id: str, base_url: str, timeout: float, workers: int = 2) -> None:
        self.url = urllib.parse.urlsplit(base_url.rstrip("/"))
        self.path = f"{self.url.path}/sc/v1/{urllib.parse.quote(device_id)}/up"
        self.timeout = timeout
        self.events: deque = deque()
        self.requests: queue.Queue = queue.Queue(maxsize=64)
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"http-{i}") for i in range(workers)]
        self.connected = False
        self.stopping = False
        self.consecutive_failures = 0

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.connected = True
        self._post_event(("connected",))

    def _post_event(self, event) -> None:
        self.events.append(event)
        try:
            os.write(self._wfd, b"!")
        except BlockingIOError:
            pass

    def _connection(self):
        import http.client

        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return cls(self.url.hostname, self.url.port, timeout=self.timeout)

    def _work(self) -> None:
        conn = None
        while not self.stopping:
            item = self.requests.get()
            if item is None:
                return
            envelope, tag = item
            try:
                if conn is None:
                    conn = self._connection()
                conn.request("POST", self.path, body=envelope, headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    self.consecutive_failures = 0
                    self._post_event(("down", body))
                    continue
                try:
                    notice = json.loads(body)
                except ValueError:
                    notice = {"error": f"http-{resp.status}", "detail": body[:200].decode(errors="replace")}
                notice["http_status"] = resp.status
                notice["tag"] = tag
                self._post_event(("notice", notice) if resp.status in (400, 401, 409) else ("failed", tag, f"HTTP {resp.status}"))
            except (OSError, _http_exception()) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                self.consecutive_failures += 1
                self._post_event(("failed", tag, f"{type(exc).__name__}: {exc}"))

    def fileno(self):
        return self._rfd

    def wants_write(self) -> bool:
        return False

    def next_deadline(self) -> float:
        return float("inf")

    def pump(self, readable: bool = False, writable: bool = False) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def send(self, envelope: bytes, tag=None) -> bool:
        try:
            self.requests.put_nowait((envelope, tag))
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        self.stopping = True
        for _ in self.threads:
            try:
                self.requests.put_nowait(None)
            except queue.Full:
                pass
