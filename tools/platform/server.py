"""Reference supervision platform: the receiving side of docs/platform-protocol.md, for the demo and tests.

Owns: the command line, the MQTT front end (paho-mqtt 2.x: subscribes ``sc/v1/+/up`` and
``sc/v1/+/status``, publishes acks / key_ok / commands on ``sc/v1/{device}/down`` and clear notices on
``sc/v1/{device}/notice``), the HTTP front end (``POST /sc/v1/{device}/up``; ``GET /control``,
``GET /stats``), failure injection through ``<workdir>/control.json`` or ``GET /control?…``, the
housekeeping thread (control file, command files, key expiry, presence) and clean shutdown on SIGTERM.
Message processing, storage and acknowledgement arithmetic are in :mod:`tools.platform.core`; all crypto is
:mod:`tools.platform.seal_check` (an independent implementation of docs/platform-envelope.md — nothing
here imports ``uplink``).

Usage::

    python -m tools.platform.server --workdir DIR [--mqtt-port P [--mqtt-host 127.0.0.1]]
        [--http-port P [--http-host 127.0.0.1]] [--platform-key FILE] [--devices DIR]
        [--key-grace 600] [--heartbeat-interval 30] [--cipher 1|2]
        [--http-500 N] [--http-delay S] [--drop-data N] [--drop-acks N] [--freeze]

Port 0 picks a free port; the ports actually used are in ``<workdir>/server.json`` (rewritten when the MQTT
connection changes; ``ready`` is true once HTTP listens and MQTT is subscribed).

Files in the work directory: ``platform.key`` (0600, hex private key; generated on first start unless
``--platform-key``), ``platform.pub`` (hex 04||X||Y), ``devices/<id>.pub`` (registration, default
``--devices``), ``platform.db`` (SQLite, WAL, synchronous=FULL), ``received.jsonl`` (one line per newly
accepted record), ``heartbeats/<id>.json``, ``commands/<id>.jsonl`` (appended by operators/tests),
``command_results.jsonl``, ``stats.json``, ``server.json``, ``control.json`` (optional).  File names use
the device id with characters outside ``[A-Za-z0-9._-]`` percent-encoded.  platform.db is authoritative:
at start, records it holds that received.jsonl lacks (a crash between commit and append) are appended.

Commands: a line ``{"id", "name", "args"}`` appended to ``commands/<id>.jsonl`` is picked up within 0.2 s
(or at the device's next message); it is carried in every ack to that device until a command_result with
its id arrives (the device de-duplicates by id), and over MQTT it is also published once as a 0x82
envelope under the device's current key (and again after each key_ok while still pending).

Control (failure injection).  ``control.json`` is re-read whenever it changes (write it atomically:
temp file + rename) and at start; each key present sets that setting, absent keys are left as they are;
command-line flags apply on top at start.  ``GET /control?key=value&…`` on the HTTP port does the same
and returns the current state (``GET /control`` alone only returns it).  Keys:

    http_500: N          answer HTTP 500 to the next N POSTs (the envelope is not processed)
    http_delay: S        delay every HTTP answer by S seconds, after processing (so the records are held but
                         the client times out); http_delay_count: N limits it to the next N answers
    drop_data: N         discard the next N data/backfill envelopes unprocessed (HTTP: close the connection
                         without an answer)
    drop_acks: N         process and persist the next N data/backfill envelopes but send no ack
    freeze: true|false   process and persist everything but send no ack or key_ok at all (HTTP: hold the
                         request until unfrozen or --freeze-hold seconds, then close without an answer)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tools.platform import core

log = logging.getLogger("platform")

MAX_ENVELOPE = 27 + 64 + 4 * 1024 * 1024
UP_TOPIC = "sc/v1/+/up"
STATUS_TOPIC = "sc/v1/+/status"


# ---- control file --------------------------------------------------------------------------------------


class ControlFile:
    """``<workdir>/control.json``: applied when its (inode, size, mtime) changes."""

    def __init__(self, path: str, injection: core.Injection) -> None:
        self.path = path
        self.injection = injection
        self.sig: tuple[int, int, int] | None = None
        self.lock = threading.Lock()

    def check(self) -> bool:
        with self.lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self.sig = None
                return False
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if sig == self.sig:
                return False
            try:
                with open(self.path, encoding="utf-8") as f:
                    settings = json.load(f)
                if not isinstance(settings, dict):
                    raise ValueError("must be a JSON object")
                unknown = self.injection.apply(settings)
            except (OSError, ValueError, TypeError) as exc:
                log.error("control.json ignored: %s", exc)  # retried on the next change
                self.sig = sig
                return False
            self.sig = sig
            if unknown:
                log.warning("control.json: unknown keys %s ignored", unknown)
            log.info("control.json applied: %s", self.injection.snapshot())
            return True


# ---- MQTT ------------------------------------------------------------------------------------------------


class MqttFrontEnd:
    def __init__(self, server: PlatformServer, host: str, port: int, client_id: str, keepalive: int = 30) -> None:
        import paho.mqtt.client as mqtt

        self.server = server
        self.platform = server.platform
        self.host, self.port, self.client_id = host, port, client_id
        self.connected = False
        self.subscribed = False
        self.published = 0
        self.connects = 0
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,  # uplinks published while the platform restarts are queued by the broker
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.keepalive = keepalive

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    # callbacks (paho's network thread: short, never wait for a publish)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect to %s:%d refused: %s", self.host, self.port, reason_code)
            return
        self.connected = True
        self.connects += 1
        log.info("MQTT connected to %s:%d as %s (session present: %s)", self.host, self.port, self.client_id,
                 getattr(flags, "session_present", None))
        client.subscribe([(UP_TOPIC, 1), (STATUS_TOPIC, 1)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("MQTT subscription refused: %s", bad)
            return
        self.subscribed = True
        log.info("MQTT subscribed to %s and %s", UP_TOPIC, STATUS_TOPIC)
        self.server.write_server_json()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self.connected
        self.connected = self.subscribed = False
        if was and not self.server.stopping.is_set():
            log.warning("MQTT disconnected: %s (paho reconnects)", reason_code)
            self.server.write_server_json()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            parts = msg.topic.split("/")
            if len(parts) != 4 or parts[0] != "sc" or parts[1] != "v1":
                return
            device, kind = parts[2], parts[3]
            if kind == "up":
                self._uplink(device, bytes(msg.payload))
            elif kind == "status":
                self._status(device, bytes(msg.payload))
        except Exception:  # never let one message kill the network thread
            log.exception("MQTT message on %s not handled", msg.topic)

    def _uplink(self, device: str, payload: bytes) -> None:
        if self.server.control.check():
            self.platform.write_stats()
        reply = self.platform.handle_uplink(payload, transport="mqtt", claimed_device=device)
        target = reply.device_id if core.topic_safe(reply.device_id) else device
        if reply.notice is not None and reply.reason != "error":
            self.publish(f"sc/v1/{target}/notice", json.dumps(reply.notice).encode())
            return
        if reply.silent or reply.envelope is None:
            return
        self.publish(f"sc/v1/{target}/down", reply.envelope)
        for env in reply.pushes:
            self.publish(f"sc/v1/{target}/down", env)

    def _status(self, device: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            st = json.loads(payload)
            online = st["online"]
            if not isinstance(online, bool):
                raise ValueError("online must be true or false")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: bad status message %r: %s", device, payload[:200], exc)
            return
        t = st.get("t") if isinstance(st.get("t"), int) else None
        self.platform.set_presence(device, online, t)

    def publish(self, topic: str, payload: bytes) -> None:
        dev = topic.split("/")[2] if topic.count("/") == 3 else ""
        if not core.topic_safe(dev):
            log.warning("not publishing to %r: the device id cannot be an MQTT topic level", topic)
            return
        info = self.client.publish(topic, payload, qos=1)
        self.published += 1
        if info.rc != 0:
            log.warning("MQTT publish to %s not queued: rc %s", topic, info.rc)


# ---- HTTP ----------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sc-reference-platform/1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("http %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("http client %s went away before the answer", self.address_string())
            self.close_connection = True

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        app = self.server.app
        path = urllib.parse.urlsplit(self.path).path
        m = re.fullmatch(r"/sc/v1/([^/]+)/up", path)
        if m is None:
            self.close_connection = True
            self._json(404, {"error": "not-found", "detail": f"no such endpoint {path}"})
            return
        device = urllib.parse.unquote(m.group(1))
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._json(411, {"error": "malformed", "detail": "Content-Length required"})
            return
        if length < 0 or length > MAX_ENVELOPE:
            self.close_connection = True
            self._json(400, {"error": "malformed", "detail": f"envelope of {length} bytes is too large",
                             "time": core.now_ms()})
            return
        data = self.rfile.read(length)
        app.control.check()
        if app.injection.take_http_500():
            log.info("http: injected 500 for %s", device)
            self._json(500, {"error": "injected", "detail": "failure injection: http_500"})
            return
        try:
            reply = app.platform.handle_uplink(data, transport="http", claimed_device=device)
        except Exception as exc:  # a bug: answer 500 (retried by the device) rather than hang up
            log.exception("http: envelope from %s not handled", device)
            self._json(500, {"error": "internal", "detail": repr(exc)})
            return
        if reply.silent:
            if reply.reason == "frozen":
                deadline = time.monotonic() + app.freeze_hold
                while app.injection.frozen() and not app.stopping.is_set() and time.monotonic() < deadline:
                    app.control.check()
                    time.sleep(0.05)
            self.close_connection = True  # no answer at all: the client sees a dropped connection
            return
        delay = app.injection.take_http_delay()
        if delay:
            log.info("http: injected delay %.1fs for %s", delay, device)
            app.stopping.wait(delay)
        if reply.notice is not None:
            self._json(reply.status, reply.notice)
        else:
            assert reply.envelope is not None
            self._send(200, reply.envelope, "application/octet-stream")

    def do_GET(self) -> None:  # noqa: N802
        app = self.server.app
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/control":
            q = dict(urllib.parse.parse_qsl(parts.query))
            settings: dict[str, Any] = {}
            for k, v in q.items():
                if k == "freeze":
                    settings[k] = v
                elif k == "http_delay_count" and v.lower() in ("", "none", "null"):
                    settings[k] = None
                else:
                    try:
                        settings[k] = float(v) if k == "http_delay" else int(v)
                    except ValueError:
                        self._json(400, {"error": "bad-value", "detail": f"{k}={v}"})
                        return
            unknown = app.injection.apply(settings) if settings else []
            if settings:
                log.info("GET /control applied: %s", app.injection.snapshot())
                app.platform.write_stats()
            self._json(200, {"injection": app.injection.snapshot(), "unknown": unknown})
        elif parts.path == "/stats":
            self._json(200, app.platform.stats())
        elif parts.path == "/health":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": "not-found"})


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: PlatformServer


# ---- the server ------------------------------------------------------------------------------------------


class PlatformServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.workdir = os.path.abspath(args.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.stopping = threading.Event()
        self.freeze_hold = args.freeze_hold
        self.injection = core.Injection()
        self.control = ControlFile(os.path.join(self.workdir, "control.json"), self.injection)
        self.control.check()
        flags = {"http_500": args.http_500, "http_delay": args.http_delay, "drop_data": args.drop_data,
                 "drop_acks": args.drop_acks, "freeze": True if args.freeze else None}
        self.injection.apply({k: v for k, v in flags.items() if v is not None})
        private, public = core.load_or_create_platform_key(self.workdir, args.platform_key)
        devices_dir = os.path.abspath(args.devices or os.path.join(self.workdir, "devices"))
        self.platform = core.Platform(
            self.workdir, private_key=private, public_key=public, devices_dir=devices_dir,
            key_grace_s=args.key_grace, heartbeat_interval_s=args.heartbeat_interval,
            downlink_cipher=args.cipher, injection=self.injection,
        )
        self.http: _HttpServer | None = None
        self.http_thread: threading.Thread | None = None
        if args.http_port is not None:
            self.http = _HttpServer((args.http_host, args.http_port), _Handler)
            self.http.app = self
        self.mqtt: MqttFrontEnd | None = None
        if args.mqtt_port is not None:
            cid = args.mqtt_client_id or "sc-platform-" + hashlib.sha1(self.workdir.encode()).hexdigest()[:10]
            self.mqtt = MqttFrontEnd(self, args.mqtt_host, args.mqtt_port, cid)
        self.started_at = core.now_ms()
        self.housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self._sj_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        http = None
        if self.http is not None:
            host, port = self.http.server_address[:2]
            http = {"host": host, "port": port, "url": f"http://{host}:{port}"}
        mq = None
        if self.mqtt is not None:
            mq = {"host": self.mqtt.host, "port": self.mqtt.port, "client_id": self.mqtt.client_id,
                  "connected": self.mqtt.connected, "connects": self.mqtt.connects, "subscribed": self.mqtt.subscribed,
                  "published": self.mqtt.published}
        ready = not self.stopping.is_set() and (self.mqtt is None or self.mqtt.subscribed)
        return {
            "pid": os.getpid(), "workdir": self.workdir, "started_at": self.started_at,
            "running": not self.stopping.is_set(), "ready": ready, "http": http, "mqtt": mq,
            "platform_pub": self.platform.public_key.hex(), "devices_dir": self.platform.devices_dir,
        }

    def write_server_json(self) -> None:
        with self._sj_lock:
            info = self.info()
            self.platform.extra_stats["server"] = {"http": info["http"], "mqtt": info["mqtt"]}
            core.write_json_atomic(os.path.join(self.workdir, "server.json"), info)

    def start(self) -> None:
        if self.http is not None:
            self.http_thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.2},
                                                name="http", daemon=True)
            self.http_thread.start()
            log.info("HTTP listening on %s:%d", *self.http.server_address[:2])
        if self.mqtt is not None:
            self.mqtt.start()
        self.housekeeper.start()
        self.write_server_json()

    def _housekeeping(self) -> None:
        while not self.stopping.wait(0.2):
            try:
                if self.control.check():
                    self.platform.write_stats()
                pushes = self.platform.poll_commands()
                if self.mqtt is not None:
                    for dev, env in pushes:
                        self.mqtt.publish(f"sc/v1/{dev}/down", env)
                self.platform.housekeeping()
            except Exception:
                log.exception("housekeeping failed")

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("stopping")
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.mqtt is not None:
            self.mqtt.stop()
        self.housekeeper.join(timeout=5)
        self.write_server_json()
        self.platform.close()
        log.info("stopped")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.platform.server",
                                 description="Reference supervision platform (SC v1) for the demo and tests")
    ap.add_argument("--workdir", required=True, help="state and output files (created if missing)")
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, help="enable MQTT: the broker's port")
    ap.add_argument("--mqtt-client-id", help="default: sc-platform-<hash of the workdir> (persistent session)")
    ap.add_argument("--http-host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, help="enable HTTP on this port (0: any free port)")
    ap.add_argument("--platform-key", help="file with the platform's SM2 private key (hex); default "
                                           "<workdir>/platform.key, generated when missing")
    ap.add_argument("--devices", help="directory of <device_id>.pub registrations (default <workdir>/devices)")
    ap.add_argument("--key-grace", type=float, default=core.DEFAULT_KEY_GRACE_S,
                    help="seconds a superseded session key still opens messages (600)")
    ap.add_argument("--heartbeat-interval", type=float, default=core.DEFAULT_HEARTBEAT_INTERVAL_S,
                    help="the devices' heartbeat interval: offline after 3 missed (30)")
    ap.add_argument("--cipher", type=int, choices=(1, 2), default=1,
                    help="cipher of key_ok before the device has used its new key (then: the device's)")
    ap.add_argument("--freeze-hold", type=float, default=30.0,
                    help="while frozen, hold an HTTP request this long before closing it")
    ap.add_argument("--http-500", type=int, help="injection: answer 500 to the next N HTTP requests")
    ap.add_argument("--http-delay", type=float, help="injection: delay HTTP answers by S seconds")
    ap.add_argument("--drop-data", type=int, help="injection: discard the next N data envelopes")
    ap.add_argument("--drop-acks", type=int, help="injection: do not ack the next N data envelopes")
    ap.add_argument("--freeze", action="store_true", help="injection: start frozen (no acks)")
    ap.add_argument("--log-level", default="INFO")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if args.http_port is None and args.mqtt_port is None:
        log.warning("neither --http-port nor --mqtt-port given: no transport, only files")
    try:
        server = PlatformServer(args)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
