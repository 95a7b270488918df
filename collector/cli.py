"""The ``collector`` command: the daemon (``run``) and the technician's tools on the serial console.

Every subcommand imports what it needs when it runs, so ``collector status`` on a slow box does
not pay for the daemon's or the demo's imports. Output fits 80 columns and uses no colour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_CONFIG = os.environ.get("COLLECTOR_CONFIG", "/etc/collector/collector.yaml")


def _load(path: str):
    from collector.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args) -> int:
    from collector import supervisor

    return supervisor.run(_load(args.config))


def cmd_config_check(args) -> int:
    cfg = _load(args.file)
    nozzles = cfg.nozzles()
    print(f"{args.file}: ok — device {cfg.station.device_id}, {len(cfg.ports)} port(s), "
          f"{sum(len(p.pumps) for p in cfg.ports)} pump(s), {len(nozzles)} nozzle(s), digest {cfg.digest}")
    return 0


def _parse_hex(parts: list[str]) -> bytes:
    text = "".join(parts).replace(" ", "").replace(":", "").replace("0x", "").replace(",", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise SystemExit(f"not hexadecimal: {' '.join(parts)!r}") from None


def cmd_decode(args) -> int:
    data = _parse_hex(args.hex) if args.hex else _parse_hex(sys.stdin.read().split())
    if args.protocol == "dart":
        from drivers.dart.codec import decode_capture

        out = decode_capture(data, args.direction if args.direction in ("pump", "controller") else "auto")
    else:
        import importlib

        try:
            module = importlib.import_module(f"drivers.{args.protocol}.codec")
        except ImportError:
            raise SystemExit(f"no decoder for protocol {args.protocol}") from None
        out = module.decode_capture(data) if args.direction == "auto" else module.decode_capture(data, args.direction)
    json.dump(out, sys.stdout, indent=None if args.compact else 1, ensure_ascii=False)
    print()
    if args.protocol == "vr":  # VR items say checksum_valid, and framing errors / unparsable data are failures
        return 0 if all(f.get("checksum_valid", True) and f.get("kind") != "framing_error" and "error" not in f
                        for f in out) else 1
    return 0 if all(f.get("valid", True) for f in out) else 1


def _runtime(cfg) -> dict:
    from collector.statusboard import read_all

    return read_all(cfg.runtime_dir)


def _age(t: float | None) -> str:
    if not t:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h")


def cmd_status(args) -> int:
    cfg = _load(args.config)
    boards = _runtime(cfg)
    sup = boards.get("supervisor")
    alive = bool(sup and sup.get("pid") and os.path.exists(f"/proc/{sup['pid']}"))
    print(f"device {cfg.station.device_id}  {cfg.station.name}")
    print(f"daemon {'running pid ' + str(sup['pid']) if alive else 'NOT RUNNING'}  config {cfg.digest}")
    if sup:
        for role, c in sup.get("children", {}).items():
            print(f"  {role:<16} pid {str(c.get('pid') or '-'):<8} restarts {c.get('restarts', 0):<4} "
                  f"last exit {c.get('last_exit') or '-'}")
    print(f"{'port':<10}{'proto':<7}{'pumps':>6}{'online':>7}{'sales':>7}{'polls':>9}{'t/o':>6}{'bad':>5}{'cycle':>8}  upd")
    for port in cfg.ports:
        b = boards.get(f"port-{port.name}", {})
        pumps = b.get("pumps", {})
        st = b.get("stats", {})
        print(f"{port.name:<10}{port.protocol:<7}{len(port.pumps):>6}{sum(1 for p in pumps.values() if p.get('online')):>7}"
              f"{st.get('sales', 0):>7}{st.get('polls', 0):>9}{st.get('timeouts', 0):>6}{st.get('bad_frames', 0):>5}"
              f"{st.get('cycle_ms', 0):>6.0f}ms  {_age(b.get('updated'))}")
    up = boards.get("uplink")
    if cfg.uplink.transport != "none":
        if up:
            err = (up.get("last_error") or {}).get("text") or "-"
            print(f"uplink {up.get('transport')} {up.get('state')}  key {up.get('key_id')}  sent {up.get('sent')}  "
                  f"acked {up.get('acked')}  retries {up.get('retries')}"[:80])
            print(f"  last error: {err}"[:80])
        else:
            print("uplink: no status yet")
    try:
        from store.ringstore import open_readonly, stream_summary

        conn = open_readonly(cfg.store.path)
        streams = stream_summary(conn)
        sales = [s for s in streams if s["kind"] == "sale"]
        path = cfg.store.path if len(cfg.store.path) <= 72 else "..." + cfg.store.path[-69:]
        print(f"store  {path}")
        print(f"  {sum(s['count'] for s in sales)} sales in {len(sales)} nozzle rings, "
              f"{sum(s['unacked'] for s in streams)} records unacked, "
              f"{sum(s['evicted_unsent'] for s in streams)} evicted unsent")
    except (FileNotFoundError, Exception) as exc:  # noqa: BLE001 - the CLI reports, never crashes
        print(f"store: {exc}")
    return 0 if alive else 1


def cmd_nozzles(args) -> int:
    cfg = _load(args.config)
    boards = _runtime(cfg)
    print(f"{'noz':>4} {'port':<8}{'pump':>5}{'lg':>3} {'grade':<6}{'state':<11}{'price':>8}{'live vol':>10}{'live amt':>10}")
    for port, pump, n in sorted(cfg.nozzles(), key=lambda x: x[2].id):
        p = boards.get(f"port-{port.name}", {}).get("pumps", {}).get(f"{pump.address:#x}", {})
        state = (p.get("nozzles", {}).get(str(n.id), {}) or {}).get("state") or "unknown"
        live = p.get("live") if p.get("nozzle") == n.number and state == "fuelling" else None
        price = p.get("price") if p.get("nozzle") == n.number else None
        d = n.decimals
        print(f"{n.id:>4} {port.name:<8}{pump.address:>#5x}{n.number:>3} {n.grade_code:<6}{state:<11}"
              f"{(price / 10 ** d.price if price is not None else 0):>8.{d.price}f}"
              f"{(live[0] / 10 ** d.volume if live else 0):>10.{d.volume}f}{(live[1] / 10 ** d.amount if live else 0):>10.{d.amount}f}")
    return 0


def cmd_sales(args) -> int:
    cfg = _load(args.config)
    from store.ringstore import open_readonly, sales

    try:
        conn = open_readonly(cfg.store.path)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    rows = sales(conn, args.nozzle, args.last)
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    print(f"{'time':<19} {'noz':>3}{'seq':>6} {'grade':<5}{'price':>7}{'volume':>9}{'amount':>10}{'vol total':>13} up")
    for r in rows:
        flags = "!" if r.get("flags") else " "
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['t']))} {r['nozzle']:>3}{r['seq']:>6} "
              f"{str(r.get('grade', '')):<5}{r['price']:>7}{r['volume']:>9}{r['amount']:>10}{str(r['vol_total'] if r['vol_total'] is not None else '-'):>13}"
              f"{flags}{r['upload'][0]}")
    return 0


def cmd_uploads(args) -> int:
    cfg = _load(args.config)
    from store.ringstore import open_readonly, uploads

    try:
        rows = uploads(open_readonly(cfg.store.path), args.last)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{'time':<19} {'lane':<9}{'msg':>7}{'recs':>6} {'result':<8}{'ms':>8}  detail")
    for r in rows:
        ms = f"{r['latency_ms']:.0f}" if r["latency_ms"] is not None else "-"
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['t']))} {r['lane']:<9}{r['msg_seq'] or 0:>7}"
              f"{r['records']:>6} {r['result']:<8}{ms:>8}  {(r['detail'] or '')[:18]}")
    return 0


def _num(v, width: int, places: int = 1) -> str:
    return f"{v:>{width}.{places}f}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


def cmd_tanks(args) -> int:
    """Tank consoles: live levels from the VR driver's status board, deliveries and reconciliation
    from the store. 80 columns, no colour."""
    cfg = _load(args.config)
    consoles = [p for p in cfg.ports if getattr(p, "console", None) is not None]
    if not consoles:
        print("no tank console configured")
        return 1
    boards = _runtime(cfg)
    try:
        from store.ringstore import open_readonly

        conn = open_readonly(cfg.store.path)
    except Exception as exc:  # noqa: BLE001 - the CLI reports, never crashes
        conn = None
        store_error = str(exc)
    flags = {"delivery_in_progress": "DELIV", "leak_test_in_progress": "LEAKTEST", "invalid_fuel_height": "BADHEIGHT"}
    code = 0
    for port in consoles:
        b = boards.get(f"port-{port.name}", {})
        fresh = b and time.time() - b.get("updated", 0) < 60
        state = ("online" if b.get("online") else "OFFLINE") if fresh else "NO LIVE DATA"
        code |= 0 if fresh and b.get("online") else 1
        print(f"tank console {port.name}  {port.device[:36]}  {state}  units {b.get('units', '?')}"[:80])
        clock = b.get("clock") or {}
        if clock:
            drift = clock.get("drift_s")
            print(f"  console clock {clock.get('console_time')}  drift {drift:+d} s  set_clock "
                  f"{'on' if port.console.set_clock else 'off'}  updated {_age(b.get('updated'))}"[:80])
        if b.get("line_error"):
            print(f"  line: {b['line_error']}"[:80])
        print(f"{'tank':>4} {'grade':<6}{'volume L':>10}{'ullage L':>10}{'fill':>5}{'height mm':>10}"
              f"{'water mm':>9}{'temp C':>7}  status")
        live = b.get("tanks", {}) if fresh else {}
        for tank in port.console.tanks:
            t = live.get(str(tank.number), {})
            vol = t.get("volume")
            fill = f"{100 * vol / tank.capacity:>4.0f}%" if isinstance(vol, (int, float)) else f"{'-':>5}"
            status = [flags.get(f, f) for f in t.get("flags") or []]
            if t.get("alarms"):
                status.append(f"ALARM x{len(t['alarms'])}")
            if t.get("rising"):
                status.append("RISING")
            line = (f"{tank.number:>4} {tank.grade_code[:5]:<6}{_num(vol, 10)}{_num(t.get('ullage'), 10)}{fill}"
                    f"{_num(t.get('height'), 10)}{_num(t.get('water'), 9)}{_num(t.get('temperature'), 7)}  "
                    f"{' '.join(status) or ('ok' if t else '-')}")
            print(line[:80])
        alarms = [f"{'tank' if a.get('category') == 2 else 'device'} {a['device']} {a['name']}"
                  for a in (b.get("alarms", []) if fresh else [])]
        if alarms:
            import textwrap

            print(textwrap.fill("; ".join(alarms), 80, initial_indent="  active alarms: ", subsequent_indent="    "))
        if conn is None:
            print(f"store: {store_error}"[:80])
            continue
        import json as _json

        rows = [(t, _json.loads(body)) for t, body in conn.execute(
            "SELECT t, body FROM records WHERE stream='delivery' ORDER BY id DESC LIMIT 200")]
        rows = [(t, d) for t, d in rows if d.get("port") == port.name][:args.last]
        print(f"deliveries (last {args.last})")
        print(f"  {'tank':>4} {'start':<17}{'end':<17}{'volume L':>10}{'net L':>10}  source")
        for _, d in reversed(rows):
            net = d.get("adjusted_volume", d.get("volume") if d.get("derived") else None)
            print(f"  {d.get('tank', 0):>4} {str(d.get('start'))[:16]:<17}{str(d.get('end'))[:16]:<17}"
                  f"{_num(d.get('volume'), 10)}{_num(net, 10)}  {'derived' if d.get('derived') else 'console'}"[:80])
        recon: dict[str, dict] = {}
        for (body,) in conn.execute("SELECT body FROM records WHERE stream='recon' ORDER BY id DESC LIMIT 500"):
            r = _json.loads(body)
            if r.get("port") == port.name:
                recon.setdefault(str(r.get("grade")), r)
        print("reconciliation (last interval of each grade)")
        print(f"  {'grade':<6}{'tanks':<7}{'ended':<9}{'dispensed':>10}{'delivered':>10}{'change':>10}"
              f"{'variance':>9}{'tol':>7}  ok")
        for grade, r in sorted(recon.items()):
            tanks = ",".join(map(str, r.get("tanks", [])))
            print(f"  {grade[:5]:<6}{tanks[:6]:<7}{time.strftime('%H:%M:%S', time.localtime(r.get('end_t', 0))):<9}"
                  f"{_num(r.get('dispensed'), 10)}{_num(r.get('delivered'), 10)}{_num(r.get('volume_change'), 10)}"
                  f"{_num(r.get('variance'), 9)}{_num(r.get('tolerance'), 7)}  "
                  f"{'yes' if r.get('within_tolerance') else 'NO'}"[:80])
    return code


def cmd_demo(args) -> int:
    from tools import demo

    return demo.main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="collector", description="Station cabinet edge collector")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    c.set_defaults(func=cmd_config_check)

    p = sub.add_parser("decode", help="decode captured frames (hex) to JSON")
    p.add_argument("--protocol", required=True, choices=["dart", "vr", "sinopec", "gilbarco"])
    p.add_argument("--direction", default="auto", help="dart: pump|controller; sinopec: pc|disp; gilbarco: controller|pump")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.add_argument("hex", nargs="*", help="frame bytes in hex, spaces allowed; read from stdin when absent")
    p.set_defaults(func=cmd_decode)

    for name, func, helptext in (("status", cmd_status, "daemon, ports and store at a glance"),
                                 ("nozzles", cmd_nozzles, "live state of every nozzle")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", default=DEFAULT_CONFIG)
        p.set_defaults(func=func)

    p = sub.add_parser("sales", help="sales in the store")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--nozzle", type=int)
    p.add_argument("--last", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sales)

    p = sub.add_parser("uploads", help="history of uploads to the platform")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--last", type=int, default=20)
    p.set_defaults(func=cmd_uploads)

    p = sub.add_parser("tanks", help="tank levels, deliveries and reconciliation of the tank consoles")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--last", type=int, default=5, help="deliveries to show per console")
    p.set_defaults(func=cmd_tanks)

    p = sub.add_parser("demo", help="run the real daemon against a simulated station")
    p.add_argument("--ports", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of trading (Ctrl-C ends early)")
    p.add_argument("--workdir", help="keep the demo's files here")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pace", type=float, default=1.0, help="customer speed factor (<1 = faster)")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--mix", action="store_true",
                   help="a mixed station: DART master, Sinopec listen, Gilbarco master, DART listen ports")
    p.add_argument("--tanks", action="store_true", help="add a tank console (VR) fed by the pumps' sales")
    p.add_argument("--uplink", choices=["mqtt", "http", "auto", "none"], default="auto",
                   help="deliver to the reference platform (auto: MQTT when mosquitto is installed, else HTTP)")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
