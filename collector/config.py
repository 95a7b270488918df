"""Station configuration: load YAML, validate it, and name the key path and line of every error.

Owns the configuration schema (station identity, store, runtime paths, ports with their serial
profile, pumps and nozzles). Other modules receive the frozen dataclasses built here and never
read YAML themselves.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drivers.registry import PROTOCOLS


class ConfigError(Exception):
    """All the problems found in one configuration file, each with its key path and line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {p}" for p in self.problems)


@dataclass(frozen=True)
class Decimals:
    volume: int = 2
    amount: int = 2
    price: int = 2
    totals: int = 2


@dataclass(frozen=True)
class NozzleConfig:
    number: int  # logical nozzle on its pump (1-15)
    id: int  # station nozzle number (枪号), unique in the station
    grade_code: str
    grade_name: str
    decimals: Decimals
    tank: int | None = None


@dataclass(frozen=True)
class PumpConfig:
    address: int
    nozzles: tuple[NozzleConfig, ...]
    name: str = ""


@dataclass(frozen=True)
class SerialProfile:
    baud: int
    data_bits: int
    parity: str  # none, even, odd, mark, space
    stop_bits: float
    echo_suppression: bool
    response_timeout: float  # seconds to the first byte of a reply
    inter_command_gap: float  # seconds between two commands on the line
    poll_interval: float  # seconds from the start of one poll cycle to the next
    offline_after: int  # consecutive silent polls before a pump is offline


@dataclass(frozen=True)
class PortConfig:
    name: str
    device: str
    protocol: str
    mode: str  # master or listen
    serial: SerialProfile
    pumps: tuple[PumpConfig, ...]
    options: dict = field(default_factory=dict, hash=False, compare=False)
    console: TankConsoleConfig | None = None  # tank-gauge ports (protocol vr): tanks instead of pumps


@dataclass(frozen=True)
class StationConfig:
    device_id: str
    name: str
    credit_code: str


@dataclass(frozen=True)
class StoreConfig:
    path: str
    sales_per_nozzle: int = 2000
    records_per_stream: int = 20000


@dataclass(frozen=True)
class MeteringTolerance:
    amount_abs: float = 0.02  # yuan: |volume x price - amount| beyond this (and the relative part) flags
    amount_rel: float = 0.001
    totals_volume_abs: float = 0.02  # litres: |totals delta - sale volume| beyond this flags


@dataclass(frozen=True)
class UplinkConfig:
    transport: str = "none"  # mqtt, http or none
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_tls: bool = False
    keepalive: int = 30
    http_url: str = ""
    http_timeout: float = 10.0
    cipher: str = "gcm"  # gcm (SM4-GCM) or cbc-hmac (SM4-CBC + HMAC-SM3)
    device_key: str = "/var/lib/collector/device.key"
    platform_public_key: str = ""  # hex of 04||X||Y, or a path to a file holding it
    state_dir: str = "/var/lib/collector"
    batch_max: int = 100
    batch_window: float = 0.05
    inflight: int = 8
    backfill_rate: float = 4000.0  # records per second
    backfill_inflight: int = 2
    ack_timeout: float = 10.0
    retry_cycle: float = 60.0
    heartbeat_interval: float = 30.0
    key_rotation: float = 86400.0
    set_system_clock: bool = False


@dataclass(frozen=True)
class Config:
    station: StationConfig
    store: StoreConfig
    runtime_dir: str
    log_level: str
    ports: tuple[PortConfig, ...]
    tolerance: MeteringTolerance
    totals_snapshot_interval: float
    uplink: UplinkConfig
    ports_per_process: int
    source: str
    digest: str  # sha256 of the file: the config version reported to the platform

    def nozzles(self) -> list[tuple[PortConfig, PumpConfig, NozzleConfig]]:
        return [(port, pump, n) for port in self.ports for pump in port.pumps for n in pump.nozzles]


# ------------------------------------------------------------------ YAML with line numbers


def _compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(source, [f"({where}) not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def build(n, path: tuple) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    raise ConfigError(source, [f"{_fmt(path + (key,))} (line {key_node.start_mark.line + 1}): duplicate key"])
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return (build(node, ()) if node is not None else {}), lines


def _fmt(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


class _Checker:
    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[str] = []

    def fail(self, path: tuple, message: str) -> None:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line:
                break
        self.problems.append(f"{_fmt(path)} (line {line or '?'}): {message}")

    def mapping(self, value: Any, path: tuple, known: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping")
            return {}
        for key in value:
            if key not in known:
                self.fail(path + (key,), f"unknown key (expected one of: {', '.join(sorted(known))})")
        return value

    def get(self, d: dict, key: str, path: tuple, kind: type | tuple, default: Any = ..., check=None, what: str = ""):
        if key not in d or d[key] is None:
            if default is ...:
                self.fail(path + (key,), "is required")
                return None
            return default
        value = d[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(path + (key,), f"must be {what or kinds[0].__name__}, not a boolean")
            return None
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            self.fail(path + (key,), f"must be {what or kinds[0].__name__}, got {value!r}")
            return None
        if check is not None:
            message = check(value)
            if message:
                self.fail(path + (key,), message)
                return None
        return value


def _between(lo, hi):
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


_CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def credit_code_problem(code: str) -> str | None:
    """GB 32100 unified social credit code: 18 characters, the last a check character."""
    if len(code) != 18 or any(c not in _CREDIT_CHARS for c in code):
        return "must be an 18-character unified social credit code (digits and capitals, no I O S V Z)"
    total = sum(_CREDIT_CHARS.index(c) * w for c, w in zip(code[:17], _CREDIT_WEIGHTS))
    expected = _CREDIT_CHARS[(31 - total % 31) % 31]
    if code[17] != expected:
        return f"check character is wrong (expected {expected})"
    return None


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PARITIES = ("none", "even", "odd", "mark", "space")
STANDARD_BAUDS = (1200, 2400, 4800, 5760, 5787, 9600, 19200, 38400, 57600, 115200)


def load(path: str | Path) -> Config:
    """Read and validate a configuration file. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        raw_bytes = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 (byte {exc.start})"]) from None
    return parse(text, source, hashlib.sha256(raw_bytes).hexdigest()[:16], Path(path).resolve().parent)


def parse(text: str, source: str = "<config>", digest: str = "", base_dir: Path | None = None) -> Config:
    data, lines = _compose(text, source)
    c = _Checker(source, lines)
    top = c.mapping(data, (), {"station", "store", "runtime_dir", "log_level", "ports", "metering_tolerance",
                              "totals_snapshot_interval", "uplink", "ports_per_process"})
    base = base_dir or Path.cwd()

    def resolve(p: str) -> str:
        return str(p) if Path(p).is_absolute() else str((base / p).resolve())

    st = c.mapping(top.get("station"), ("station",), {"device_id", "name", "credit_code"})
    if "station" not in top:
        c.fail(("station",), "is required")
    station = StationConfig(
        device_id=c.get(st, "device_id", ("station",), str, check=lambda v: None if _DEVICE_ID_RE.match(v) else
                        "must be 1-64 letters, digits, '_', '-' or '.'") or "",
        name=c.get(st, "name", ("station",), str) or "",
        credit_code=c.get(st, "credit_code", ("station",), str, check=credit_code_problem) or "",
    )

    so = c.mapping(top.get("store"), ("store",), {"path", "sales_per_nozzle", "records_per_stream"})
    store = StoreConfig(
        path=resolve(c.get(so, "path", ("store",), str, "/var/lib/collector/store.db")),
        sales_per_nozzle=c.get(so, "sales_per_nozzle", ("store",), int, 2000, _between(10, 1_000_000)) or 2000,
        records_per_stream=c.get(so, "records_per_stream", ("store",), int, 20000, _between(100, 10_000_000)) or 20000,
    )
    tol = c.mapping(top.get("metering_tolerance"), ("metering_tolerance",),
                    {"amount_abs", "amount_rel", "totals_volume_abs"})
    tolerance = MeteringTolerance(
        amount_abs=c.get(tol, "amount_abs", ("metering_tolerance",), float, 0.02, _between(0, 1000)),
        amount_rel=c.get(tol, "amount_rel", ("metering_tolerance",), float, 0.001, _between(0, 1)),
        totals_volume_abs=c.get(tol, "totals_volume_abs", ("metering_tolerance",), float, 0.02, _between(0, 1000)),
    )
    runtime_dir = resolve(c.get(top, "runtime_dir", (), str, "/run/collector"))
    log_level = c.get(top, "log_level", (), str, "info",
                      lambda v: None if v in ("debug", "info", "warning", "error") else "must be debug, info, warning or error")
    snapshot = c.get(top, "totals_snapshot_interval", (), float, 900.0, _between(10, 86400))

    ports: list[PortConfig] = []
    raw_ports = top.get("ports")
    if not isinstance(raw_ports, list) or not raw_ports:
        c.fail(("ports",), "must be a non-empty list of ports")
        raw_ports = []
    seen_names: dict[str, tuple] = {}
    seen_devices: dict[str, tuple] = {}
    seen_nozzle_ids: dict[int, tuple] = {}
    port_paths: list[tuple] = []
    for i, rp in enumerate(raw_ports):
        port = _port(c, rp, ("ports", i), seen_nozzle_ids)
        if port is None:
            continue
        for key, seen, value in (("name", seen_names, port.name), ("device", seen_devices, port.device)):
            if value in seen:
                c.fail(("ports", i, key), f"{value!r} is already used by {_fmt(seen[value])}")
            seen[value] = ("ports", i)
        ports.append(port)
        port_paths.append(("ports", i))
    _check_tank_links(c, ports, port_paths)
    uplink = _uplink(c, top.get("uplink"), resolve)
    ports_per_process = c.get(top, "ports_per_process", (), int, 32, _between(1, 64))
    if c.problems:
        raise ConfigError(source, c.problems)
    return Config(station, store, runtime_dir, log_level, tuple(ports), tolerance, snapshot, uplink,
                  ports_per_process or 32, source, digest)


def _uplink(c: _Checker, raw: Any, resolve) -> UplinkConfig:
    path = ("uplink",)
    d = c.mapping(raw, path, {"transport", "mqtt", "http", "cipher", "device_key", "platform_public_key", "state_dir",
                              "batch_max", "batch_window", "inflight", "backfill_rate", "backfill_inflight",
                              "ack_timeout", "retry_cycle", "heartbeat_interval", "key_rotation", "set_system_clock"})
    dflt = UplinkConfig()
    transport = c.get(d, "transport", path, str, "none",
                      lambda v: None if v in ("mqtt", "http", "none") else "must be mqtt, http or none")
    mq = c.mapping(d.get("mqtt"), path + ("mqtt",), {"host", "port", "tls", "keepalive"})
    ht = c.mapping(d.get("http"), path + ("http",), {"url", "timeout"})
    if transport == "mqtt" and "mqtt" not in d:
        c.fail(path + ("mqtt",), "is required when transport is mqtt")
    if transport == "http" and not ht.get("url"):
        c.fail(path + ("http", "url"), "is required when transport is http")
    if transport in ("mqtt", "http") and not d.get("platform_public_key"):
        c.fail(path + ("platform_public_key",), "is required to send to the platform")
    key = c.get(d, "platform_public_key", path, str, "")
    if key and not re.fullmatch(r"(04)?[0-9a-fA-F]{128}", key):
        key = resolve(key)
    return UplinkConfig(
        transport=transport or "none",
        mqtt_host=c.get(mq, "host", path + ("mqtt",), str, dflt.mqtt_host),
        mqtt_port=c.get(mq, "port", path + ("mqtt",), int, dflt.mqtt_port, _between(1, 65535)),
        mqtt_tls=c.get(mq, "tls", path + ("mqtt",), bool, False, what="true or false"),
        keepalive=c.get(mq, "keepalive", path + ("mqtt",), int, dflt.keepalive, _between(5, 3600)),
        http_url=c.get(ht, "url", path + ("http",), str, "",
                       lambda v: None if re.match(r"^https?://", v) else "must start with http:// or https://"),
        http_timeout=c.get(ht, "timeout", path + ("http",), float, dflt.http_timeout, _between(0.5, 300)),
        cipher=c.get(d, "cipher", path, str, "gcm", lambda v: None if v in ("gcm", "cbc-hmac") else "must be gcm or cbc-hmac"),
        device_key=resolve(c.get(d, "device_key", path, str, dflt.device_key)),
        platform_public_key=key,
        state_dir=resolve(c.get(d, "state_dir", path, str, dflt.state_dir)),
        batch_max=c.get(d, "batch_max", path, int, dflt.batch_max, _between(1, 1000)),
        batch_window=c.get(d, "batch_window", path, float, dflt.batch_window, _between(0, 10)),
        inflight=c.get(d, "inflight", path, int, dflt.inflight, _between(1, 100)),
        backfill_rate=c.get(d, "backfill_rate", path, float, dflt.backfill_rate, _between(1, 1e6)),
        backfill_inflight=c.get(d, "backfill_inflight", path, int, dflt.backfill_inflight, _between(1, 50)),
        ack_timeout=c.get(d, "ack_timeout", path, float, dflt.ack_timeout, _between(0.5, 600)),
        retry_cycle=c.get(d, "retry_cycle", path, float, dflt.retry_cycle, _between(1, 7200)),
        heartbeat_interval=c.get(d, "heartbeat_interval", path, float, dflt.heartbeat_interval, _between(1, 3600)),
        key_rotation=c.get(d, "key_rotation", path, float, dflt.key_rotation, _between(60, 86400)),
        set_system_clock=c.get(d, "set_system_clock", path, bool, False, what="true or false"),
    )


def _port(c: _Checker, rp: Any, path: tuple, seen_nozzle_ids: dict[int, tuple]) -> PortConfig | None:
    known = {"name", "device", "protocol", "mode", "baud", "data_bits", "parity", "stop_bits", "echo_suppression",
             "response_timeout", "inter_command_gap", "poll_interval", "offline_after", "pumps", "options"}
    hint = PROTOCOLS.get(rp.get("protocol")) if isinstance(rp, dict) and isinstance(rp.get("protocol"), str) else None
    if hint and hint.tanks:
        known = (known - {"pumps"}) | TANK_PORT_KEYS
    d = c.mapping(rp, path, known)
    if not d:
        return None
    name = c.get(d, "name", path, str, check=lambda v: None if _NAME_RE.match(v) else
                 "must be 1-32 letters, digits, '_', '-' or '.'")
    device = c.get(d, "device", path, str)
    protocol = c.get(d, "protocol", path, str, check=lambda v: None if v in PROTOCOLS else
                     f"unknown protocol (known: {', '.join(sorted(PROTOCOLS))})")
    spec = PROTOCOLS.get(protocol) if protocol else None
    mode = c.get(d, "mode", path, str, "master", lambda v: None if v in ("master", "listen") else "must be master or listen")
    if spec and mode and mode not in spec.modes:
        c.fail(path + ("mode",), f"protocol {protocol} supports mode {' or '.join(spec.modes)} only")
    defaults = spec.serial if spec else {}
    serial = SerialProfile(
        baud=c.get(d, "baud", path, int, defaults.get("baud", 9600),
                   lambda v: None if v in STANDARD_BAUDS else f"must be one of {', '.join(map(str, STANDARD_BAUDS))}"),
        data_bits=c.get(d, "data_bits", path, int, defaults.get("data_bits", 8), lambda v: None if v in (5, 6, 7, 8) else "must be 5, 6, 7 or 8"),
        parity=c.get(d, "parity", path, str, defaults.get("parity", "none"),
                     lambda v: None if v in PARITIES else f"must be one of {', '.join(PARITIES)}"),
        stop_bits=c.get(d, "stop_bits", path, float, float(defaults.get("stop_bits", 1)),
                        lambda v: None if v in (1, 1.5, 2) else "must be 1, 1.5 or 2"),
        echo_suppression=c.get(d, "echo_suppression", path, bool, defaults.get("echo_suppression", False), what="true or false"),
        response_timeout=c.get(d, "response_timeout", path, float, defaults.get("response_timeout", 0.1), _between(0.005, 10)),
        inter_command_gap=c.get(d, "inter_command_gap", path, float, defaults.get("inter_command_gap", 0.0), _between(0, 5)),
        poll_interval=c.get(d, "poll_interval", path, float, defaults.get("poll_interval", 0.25), _between(0.01, 60)),
        offline_after=c.get(d, "offline_after", path, int, defaults.get("offline_after", 5), _between(1, 1000)),
    )
    options = c.get(d, "options", path, dict, {}, what="a mapping")
    pumps: list[PumpConfig] = []
    tanks = bool(spec and spec.tanks)
    raw_pumps = [] if tanks else d.get("pumps")
    if not tanks and (not isinstance(raw_pumps, list) or not raw_pumps):
        c.fail(path + ("pumps",), "must be a non-empty list of pumps")
        raw_pumps = []
    seen_addresses: dict[int, tuple] = {}
    lo, hi = spec.address_range if spec else (0, 255)
    for j, rpump in enumerate(raw_pumps):
        ppath = path + ("pumps", j)
        pd = c.mapping(rpump, ppath, {"address", "name", "nozzles"})
        if not pd:
            continue
        address = c.get(pd, "address", ppath, int, check=_between(lo, hi))
        if address is not None:
            if address in seen_addresses:
                c.fail(ppath + ("address",), f"address {address:#x} is already used by {_fmt(seen_addresses[address])}")
            seen_addresses[address] = ppath
        nozzles = []
        raw_nozzles = pd.get("nozzles")
        if not isinstance(raw_nozzles, list) or not raw_nozzles:
            c.fail(ppath + ("nozzles",), "must be a non-empty list of nozzles")
            raw_nozzles = []
        seen_numbers: dict[int, tuple] = {}
        for k, rn in enumerate(raw_nozzles):
            npath = ppath + ("nozzles", k)
            nd = c.mapping(rn, npath, {"number", "id", "grade", "decimals", "tank"})
            if not nd:
                continue
            number = c.get(nd, "number", npath, int, check=_between(*(spec.nozzle_range if spec else (1, 15))))
            nid = c.get(nd, "id", npath, int, check=_between(1, 999))
            if number is not None:
                if number in seen_numbers:
                    c.fail(npath + ("number",), f"logical nozzle {number} is already used by {_fmt(seen_numbers[number])}")
                seen_numbers[number] = npath
            if nid is not None:
                if nid in seen_nozzle_ids:
                    c.fail(npath + ("id",), f"station nozzle {nid} is already used by {_fmt(seen_nozzle_ids[nid])}")
                seen_nozzle_ids[nid] = npath
            gd = c.mapping(nd.get("grade"), npath + ("grade",), {"code", "name"})
            if "grade" not in nd:
                c.fail(npath + ("grade",), "is required")
            dd = c.mapping(nd.get("decimals"), npath + ("decimals",), {"volume", "amount", "price", "totals"})
            dec = {key: c.get(dd, key, npath + ("decimals",), int, 2, _between(0, 4)) for key in ("volume", "amount", "price", "totals")}
            nozzles.append(NozzleConfig(
                number=number or 0, id=nid or 0,
                grade_code=str(c.get(gd, "code", npath + ("grade",), (str, int), "", what="a grade code") or ""),
                grade_name=c.get(gd, "name", npath + ("grade",), str, "") or "",
                decimals=Decimals(**{k: (v if v is not None else 2) for k, v in dec.items()}),
                tank=c.get(nd, "tank", npath, int, None, _between(1, 99)),
            ))
        pumps.append(PumpConfig(address=address or 0, nozzles=tuple(nozzles), name=c.get(pd, "name", ppath, str, "") or ""))
    if spec and spec.max_pumps and len(pumps) > spec.max_pumps:
        c.fail(path + ("pumps",), f"{protocol} allows at most {spec.max_pumps} pumps on one line")
    return PortConfig(name=name or "", device=device or "", protocol=protocol or "", mode=mode or "master",
                      serial=serial, pumps=tuple(pumps), options=options or {},
                      console=_tank_console(c, d, path) if tanks else None)


# ------------------------------------------------------------------ tank-gauge consoles (protocol vr)
# A VR port carries ``tanks:`` instead of ``pumps:``, and the keys below. Volumes are litres, heights
# millimetres, temperatures degrees C whatever the console's own units (the driver converts).

TANK_PORT_KEYS = {"tanks", "security_code", "set_clock", "clock_interval", "clock_max_drift", "units",
                  "end_of_message", "inventory_interval", "snapshot_interval", "delivery_interval",
                  "alarm_interval", "leak_test_interval", "thresholds", "derived_delivery", "reconciliation"}
CONSOLE_UNITS = ("auto", "metric", "us", "imperial")


@dataclass(frozen=True)
class TankThresholds:
    """A new inventory reading is stored when it moved this far from the last stored one."""

    volume: float = 50.0  # litres
    height: float = 5.0  # mm
    water: float = 2.0  # mm
    temperature: float = 0.5  # degrees C


@dataclass(frozen=True)
class TankConfig:
    number: int  # the console's tank number TT; also what nozzles name in their ``tank:`` key
    grade_code: str
    grade_name: str
    capacity: float  # litres
    product_code: str | None = None  # the console's one-character product code, checked when given
    thresholds: TankThresholds = TankThresholds()


@dataclass(frozen=True)
class DerivedDelivery:
    """Deliveries found from level rises (net of the sales of the tank's nozzles)."""

    enabled: bool = True  # store a derived delivery when the console reports none for a rise
    start_rise: float = 100.0  # litres above the recent level that start a rise
    min_volume: float = 500.0  # litres: a smaller finished rise is not a delivery
    settle: float = 180.0  # seconds without further rise that end it
    grace: float = 1200.0  # seconds after the end to wait for the console's own report
    baseline_window: float = 600.0  # seconds of history the rise is measured against


@dataclass(frozen=True)
class Reconciliation:
    enabled: bool = True
    interval: float = 3600.0  # seconds; boundaries fall on multiples of it (wall clock)
    tolerance_abs: float = 50.0  # litres
    tolerance_rel: float = 0.005  # of the interval's throughput (dispensed + delivered)
    boundary_wait: float = 60.0  # seconds a boundary may wait for the tank's nozzles to stop fuelling


@dataclass(frozen=True)
class TankConsoleConfig:
    tanks: tuple[TankConfig, ...]
    security_code: str | None = None
    set_clock: bool = False  # set the console clock from the collector's when it drifts too far
    clock_interval: float = 600.0
    clock_max_drift: float = 180.0  # seconds; the console clock has minute resolution
    units: str = "auto"  # auto (ask the console), metric, us, imperial
    end_of_message: bytes = b"\x03"
    inventory_interval: float = 5.0
    snapshot_interval: float = 900.0
    delivery_interval: float = 60.0
    alarm_interval: float = 10.0
    leak_test_interval: float = 600.0
    thresholds: TankThresholds = TankThresholds()
    derived_delivery: DerivedDelivery = DerivedDelivery()
    reconciliation: Reconciliation = Reconciliation()

    def tank(self, number: int) -> TankConfig | None:
        return next((t for t in self.tanks if t.number == number), None)


def _printable6(v: str) -> str | None:
    if len(v) == 6 and all(" " <= ch <= "~" for ch in v):
        return None
    return "must be 6 printable ASCII characters (quote it in YAML: \"012345\")"


def _eom(v: str) -> str | None:
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raw = b""
    return None if 1 <= len(raw) <= 2 else "must be 1 or 2 bytes in hex, e.g. \"03\" or \"0d0a\""


def _thresholds(c: _Checker, raw: Any, path: tuple, base: TankThresholds) -> TankThresholds:
    d = c.mapping(raw, path, {"volume", "height", "water", "temperature"})
    return TankThresholds(**{k: c.get(d, k, path, float, getattr(base, k), _between(0, 100000)) or 0.0
                             for k in ("volume", "height", "water", "temperature")})


def _tank_console(c: _Checker, d: dict, path: tuple) -> TankConsoleConfig:
    dflt = TankConsoleConfig(tanks=())
    thresholds = _thresholds(c, d.get("thresholds"), path + ("thresholds",), TankThresholds())
    tanks: list[TankConfig] = []
    raw_tanks = d.get("tanks")
    if not isinstance(raw_tanks, list) or not raw_tanks:
        c.fail(path + ("tanks",), "must be a non-empty list of tanks")
        raw_tanks = []
    seen: dict[int, tuple] = {}
    for j, rt in enumerate(raw_tanks):
        tpath = path + ("tanks", j)
        td = c.mapping(rt, tpath, {"number", "grade", "capacity", "product_code", "thresholds"})
        if not td:
            continue
        number = c.get(td, "number", tpath, int, check=_between(1, 99))
        if number is not None:
            if number in seen:
                c.fail(tpath + ("number",), f"tank {number} is already used by {_fmt(seen[number])}")
            seen[number] = tpath
        gd = c.mapping(td.get("grade"), tpath + ("grade",), {"code", "name"})
        if "grade" not in td:
            c.fail(tpath + ("grade",), "is required")
        tanks.append(TankConfig(
            number=number or 0,
            grade_code=str(c.get(gd, "code", tpath + ("grade",), (str, int), "", what="a grade code") or ""),
            grade_name=c.get(gd, "name", tpath + ("grade",), str, "") or "",
            capacity=c.get(td, "capacity", tpath, float, check=_between(1, 1_000_000)) or 0.0,
            product_code=c.get(td, "product_code", tpath, str, None, lambda v: None if len(v) == 1 and " " <= v <= "~"
                               else "must be one printable ASCII character"),
            thresholds=_thresholds(c, td.get("thresholds"), tpath + ("thresholds",), thresholds),
        ))
    dd_path, rc_path = path + ("derived_delivery",), path + ("reconciliation",)
    dd = c.mapping(d.get("derived_delivery"), dd_path, {"enabled", "start_rise", "min_volume", "settle", "grace",
                                                        "baseline_window"})
    rc = c.mapping(d.get("reconciliation"), rc_path, {"enabled", "interval", "tolerance_abs", "tolerance_rel",
                                                      "boundary_wait"})
    ddf, rcf = DerivedDelivery(), Reconciliation()
    eom = c.get(d, "end_of_message", path, str, "03", _eom)
    return TankConsoleConfig(
        tanks=tuple(tanks),
        security_code=c.get(d, "security_code", path, str, None, _printable6, what="a quoted 6-character string"),
        set_clock=c.get(d, "set_clock", path, bool, False, what="true or false"),
        clock_interval=c.get(d, "clock_interval", path, float, dflt.clock_interval, _between(0.5, 86400)),
        clock_max_drift=c.get(d, "clock_max_drift", path, float, dflt.clock_max_drift, _between(60, 86400)),
        units=c.get(d, "units", path, str, "auto",
                    lambda v: None if v in CONSOLE_UNITS else f"must be one of {', '.join(CONSOLE_UNITS)}"),
        end_of_message=bytes.fromhex(eom) if eom else b"\x03",
        inventory_interval=c.get(d, "inventory_interval", path, float, dflt.inventory_interval, _between(0.2, 3600)),
        snapshot_interval=c.get(d, "snapshot_interval", path, float, dflt.snapshot_interval, _between(1, 86400)),
        delivery_interval=c.get(d, "delivery_interval", path, float, dflt.delivery_interval, _between(0.5, 86400)),
        alarm_interval=c.get(d, "alarm_interval", path, float, dflt.alarm_interval, _between(0.5, 86400)),
        leak_test_interval=c.get(d, "leak_test_interval", path, float, dflt.leak_test_interval, _between(0.5, 86400)),
        thresholds=thresholds,
        derived_delivery=DerivedDelivery(
            enabled=c.get(dd, "enabled", dd_path, bool, True, what="true or false"),
            start_rise=c.get(dd, "start_rise", dd_path, float, ddf.start_rise, _between(1, 100000)),
            min_volume=c.get(dd, "min_volume", dd_path, float, ddf.min_volume, _between(1, 1_000_000)),
            settle=c.get(dd, "settle", dd_path, float, ddf.settle, _between(0.5, 86400)),
            grace=c.get(dd, "grace", dd_path, float, ddf.grace, _between(0, 86400)),
            baseline_window=c.get(dd, "baseline_window", dd_path, float, ddf.baseline_window, _between(1, 86400)),
        ),
        reconciliation=Reconciliation(
            enabled=c.get(rc, "enabled", rc_path, bool, True, what="true or false"),
            interval=c.get(rc, "interval", rc_path, float, rcf.interval, _between(2, 7 * 86400)),
            tolerance_abs=c.get(rc, "tolerance_abs", rc_path, float, rcf.tolerance_abs, _between(0, 1_000_000)),
            tolerance_rel=c.get(rc, "tolerance_rel", rc_path, float, rcf.tolerance_rel, _between(0, 1)),
            boundary_wait=c.get(rc, "boundary_wait", rc_path, float, rcf.boundary_wait, _between(0, 3600)),
        ),
    )


def _check_tank_links(c: _Checker, ports: list[PortConfig], paths: list[tuple]) -> None:
    """Tank numbers are unique in the station, and a nozzle's ``tank:`` names a configured tank."""
    tanks: dict[int, tuple] = {}
    for port, ppath in zip(ports, paths):
        for j, tank in enumerate(port.console.tanks if port.console else ()):
            if tank.number in tanks and tanks[tank.number][:2] != ppath:
                c.fail(ppath + ("tanks", j, "number"), f"tank {tank.number} is already used by {_fmt(tanks[tank.number])}")
            tanks.setdefault(tank.number, ppath + ("tanks", j))
    if not tanks:
        return
    for port, ppath in zip(ports, paths):
        for j, pump in enumerate(port.pumps):
            for k, n in enumerate(pump.nozzles):
                if n.tank is not None and n.tank not in tanks:
                    c.fail(ppath + ("pumps", j, "nozzles", k, "tank"),
                           f"tank {n.tank} is not a tank of any tank console (known: {', '.join(map(str, sorted(tanks)))})")
