"""The ``heat-gateway`` command.

Exit status: 0 done, 1 runtime failure (a device unreachable for ``read``/``write``), 2 bad
configuration or usage, 141 (128 + SIGPIPE, as other Unix tools) when the reader of the output
went away (``heat-gateway check | head``), quietly. A bad file never produces a traceback, only
the message that names file, key path and what was expected. ``check``, ``read`` and ``scan``
print JSON with ``--json``. Each command resolves only the sections of the site file it uses:
``read`` needs no broker password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Callable, Collection, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, Site, load_site
from gateway.config.profile import ModbusProfile, ModbusSignal, OpcUaSignal
from gateway.config.secrets import mask, remember_secrets
from gateway.config.site import Device, ModbusDevice

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
#: What a shell reports for a tool killed by SIGPIPE: the reader closed the pipe.
EXIT_PIPE = 128 + 13

#: The optional sections each command never looks at (see ``load_site(unused=...)``).
_DEVICES_ONLY = ("mqtt", "influxdb", "control", "http")


def _site(path: str, unused: Collection[str] = (), device: str | None = None) -> Site:
    return load_site(Path(path), unused=unused, device=device)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - only for --version

    try:
        return version("heat-gateway")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from gateway import __version__  # noqa: PLC0415

        return __version__


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _where(device: Device) -> str:
    if isinstance(device, ModbusDevice):
        return f"{device.host}:{device.port} unit {device.unit_id}"
    return device.endpoint


def _setup_logging(site: Site | None, level: str | None = None) -> None:
    from gateway.logs import setup_logging  # noqa: PLC0415 - keep `check` fast

    if site is None:
        setup_logging(level or "info", "auto")
    else:
        setup_logging(level or site.config.logging.level, site.config.logging.format.value)


def _writes(site: Site) -> dict[str, list[str]]:
    """Device -> the signals the control loop may write to it; empty without a control section."""
    if site.config.control is None:
        return {}
    from gateway.control.supervisor import supervisor_for_site  # noqa: PLC0415 - only with control

    writes: dict[str, list[str]] = {}
    for device, signal in supervisor_for_site(site).limits:
        writes.setdefault(device, []).append(signal)
    return writes


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a site file and print what it would do."""
    if getattr(args, "control", False):
        return cmd_check_control(args)
    site = _site(args.config)
    summary = _check_summary(site)
    if args.json:
        _print_json(summary)
        return EXIT_OK
    _print_check(site, summary)
    return EXIT_OK


def _device_reads(site: Site) -> tuple[list[dict[str, Any]], int]:
    """Per device what ``check`` shows (and its reads), and the Modbus requests of one poll cycle."""
    from gateway.drivers.modbus_plan import build_plan  # noqa: PLC0415

    devices: list[dict[str, Any]] = []
    total_requests = 0
    for device in site.config.devices:
        profile = site.profile_of(device)
        if isinstance(profile, ModbusProfile):
            plan = build_plan(profile)
            total_requests += len(plan.blocks)
            reads = [f"read {line}" for line in plan.describe()]
        else:
            reads = [f"one batched OPC UA Read of {len(profile.signals)} nodes"]
        devices.append(
            {
                "name": device.name,
                "kind": device.kind,
                "protocol": str(device.protocol),
                "address": _where(device),
                "profile": device.profile,
                "signals": len(profile.signals),
                "poll_period_s": device.poll_period_s,
                "enabled": device.enabled,
                "reads": reads,
            }
        )
    return devices, total_requests


def _check_summary(site: Site) -> dict[str, Any]:
    """What ``check --json`` prints: devices and their reads, MQTT, InfluxDB, writes, roles."""
    config = site.config
    devices, total_requests = _device_reads(site)
    mqtt = config.mqtt
    summary: dict[str, Any] = {
        "file": str(site.path),
        "site": config.site,
        "devices": devices,
        "modbus_requests_per_cycle": total_requests,
        "mqtt": {"host": mqtt.host, "port": mqtt.port, "topics": f"{mqtt.topic_prefix}/{config.site}/<device>/metrics"},
        "influxdb": None
        if config.influxdb is None
        else {"url": mask(config.influxdb.url), "bucket": config.influxdb.bucket},
        "control": config.control is not None,
        "writes": _writes(site),
    }
    if config.control is not None:
        from gateway.control.roles import role_map_as_dict, role_map_of_site  # noqa: PLC0415

        summary["roles"] = role_map_as_dict(role_map_of_site(config, site.profiles))
    return summary


def _print_check(site: Site, summary: dict[str, Any]) -> None:
    """``check`` for a person: the same summary as lines."""
    config = site.config
    devices, writes = summary["devices"], summary["writes"]
    print(f"{site.path}: OK, site {config.site!r}, {len(devices)} device(s)")
    for item in devices:
        state = "" if item["enabled"] else " (disabled)"
        print(
            f"  {item['name']:<16} {item['kind']:<14} {item['protocol']:<7} {item['address']:<28} "
            f"profile {item['profile']} ({item['signals']} signals), every {item['poll_period_s']:g} s{state}"
        )
        for line in item["reads"]:
            print(f"      {line}")
    print(f"  mqtt: {config.mqtt.host}:{config.mqtt.port}, topics {summary['mqtt']['topics']}")
    if config.influxdb is not None:
        print(f"  influxdb: {mask(config.influxdb.url)} bucket {config.influxdb.bucket}")
    print(f"  {summary['modbus_requests_per_cycle']} Modbus request(s) per poll cycle")
    if not writes:
        print("  writes: NONE, monitor only (no control section): the gateway reads and publishes, never writes")
    else:
        print(f"  writes: CONTROL IS ON: the control loop may write to {len(writes)} device(s), these signals:")
        for name, signals in writes.items():
            print(f"      {name}: {', '.join(signals)}")
    if config.control is not None:
        from gateway.control.roles import describe_role_map, role_map_of_site  # noqa: PLC0415

        print("  control roles (what the supervisor reads and writes; nothing else is written):")
        for line in describe_role_map(role_map_of_site(config, site.profiles)):
            print(f"    {line}")


def cmd_check_control(args: argparse.Namespace) -> int:
    """``check --control``: role inputs read live, and what the supervisor would write; nothing written."""
    site = _site(args.config)
    if site.config.control is None:
        raise ConfigError(f"{site.path}: control: --control needs a control section (roles) to commission")
    _setup_logging(site, "warning")
    from gateway.commissioning.control import commission_control, format_commissioning  # noqa: PLC0415

    report = asyncio.run(commission_control(site))
    if args.json:
        _print_json(report.as_dict())
    else:
        for line in format_commissioning(report):
            print(mask(line))
    return EXIT_RUNTIME if report.unreachable else EXIT_OK


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, on uvloop when it is installed (``pip install 'heat-gateway[fast]'``).

    Measured 2026-12-01 (bench/README.md "Speed cases"): uvloop takes 4-8 % less CPU per
    published message than asyncio's own loop. Without it nothing changes; to run on asyncio's
    loop with uvloop installed, uninstall it.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT."""
    site = _site(args.config, unused=("influxdb",))
    _setup_logging(site, args.log_level)
    from gateway.publish.spool import SpoolError  # noqa: PLC0415
    from gateway.service import serve  # noqa: PLC0415

    try:
        run_event_loop(serve(site))
    except SpoolError as exc:
        # Not a config error (the file is fine) but the same kind of answer: say what, exit.
        print(f"cannot start: {exc} (mqtt.spool in {site.path}; state_dir sets the folder)", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_historian(args: argparse.Namespace) -> int:
    """Run the MQTT -> InfluxDB historian until SIGTERM/SIGINT."""
    site = _site(args.config, unused=("control",))
    if site.config.influxdb is None:
        raise ConfigError(f"{site.path}: influxdb: the historian needs an influxdb section (url, org, bucket, token)")
    _setup_logging(site, args.log_level)
    from gateway.service import serve_historian  # noqa: PLC0415

    asyncio.run(serve_historian(site))
    return EXIT_OK


def format_value(value: float, spec: ModbusSignal | OpcUaSignal) -> str:
    """An engineering value with the digits its source really has: 7 significant digits for a
    float32, 15 for a float64, the decimals of the scale for a scaled integer; never ``1e+04``."""
    if spec.type in ("float32", "float64"):
        text = f"{value:.{7 if spec.type == 'float32' else 15}g}"
        return f"{value:.0f}" if "e+" in text else text
    scale = abs(spec.scale) if isinstance(spec, ModbusSignal) else 1.0
    decimals = 0 if scale >= 1 else math.ceil(-math.log10(scale) - 1e-9)
    return f"{value:.{decimals}f}"


def _timestamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cmd_read(args: argparse.Namespace) -> int:
    """One poll of one device, printed as a table (or JSON)."""
    site = _site(args.config, unused=_DEVICES_ONLY, device=args.device)
    _setup_logging(site, "warning")
    device = site.device(args.device)
    profile = site.profile_of(device)
    unknown = [s for s in args.signals if s not in profile.signals]
    if unknown:
        raise ConfigError(f"{device.name}: no signal(s) {', '.join(unknown)} in profile {device.profile!r}")
    from gateway.drivers.base import DriverError  # noqa: PLC0415
    from gateway.drivers.factory import make_driver  # noqa: PLC0415
    from gateway.validity import ValueCheck, site_ranges, site_roles  # noqa: PLC0415

    # the poller's check: a value outside its valid range shows as bad, with the range
    check = ValueCheck(device.name, site_ranges(site, device, site_roles(site)), logs=False)

    async def main() -> int:
        driver = make_driver(site, device)
        try:
            async with driver:
                reading = await driver.read()
        except DriverError as exc:
            print(f"error: {mask(str(exc))}", file=sys.stderr)
            return EXIT_RUNTIME
        check.apply(reading)
        rows: dict[str, dict[str, Any]] = {}
        for name in args.signals or list(profile.signals):
            spec = profile.signals[name]
            row: dict[str, Any] = {"value": None, "text": "-", "unit": spec.unit, "quality": "bad", "reason": None}
            if name in reading.values or name in reading.uncertain:
                good = name in reading.values
                value = reading.values[name] if good else reading.uncertain[name]
                row.update(value=value, text=format_value(value, spec), quality="good" if good else "uncertain")
            elif name in reading.texts:
                row.update(value=reading.texts[name], text=repr(reading.texts[name]), quality="good")
            else:
                row["reason"] = reading.bad.get(name, "not read")
            rows[name] = row
        if args.json:
            _print_json(
                {
                    "device": device.name,
                    "kind": device.kind,
                    "address": _where(device),
                    "timestamp": _timestamp(reading.timestamp_ns),
                    "timestamp_ns": reading.timestamp_ns,
                    "signals": {name: {k: v for k, v in row.items() if k != "text"} for name, row in rows.items()},
                }
            )
            return EXIT_OK
        at = _timestamp(reading.timestamp_ns)
        print(f"{device.name} ({device.kind}, {device.protocol} {_where(device)}) read at {at}")
        width = max(len("signal"), *(len(name) for name in rows))
        print(f"{'signal':<{width}}  {'value':>14}  {'unit':<8}  quality")
        for name, row in rows.items():
            quality = row["quality"] if row["reason"] is None else f"bad: {row['reason']}"
            print(f"{name:<{width}}  {row['text']:>14}  {row['unit']:<8}  {quality}")
        return EXIT_OK

    return asyncio.run(main())


def cmd_write(args: argparse.Namespace) -> int:
    """Write one signal within its limits and confirm by read-back."""
    site = _site(args.config, unused=_DEVICES_ONLY, device=args.device)
    _setup_logging(site, "warning")
    device = site.device(args.device)
    from gateway.drivers.base import DriverError  # noqa: PLC0415
    from gateway.drivers.factory import make_driver  # noqa: PLC0415

    async def main() -> int:
        driver = make_driver(site, device)
        try:
            async with driver:
                back = await driver.write(args.signal, args.value)
        except DriverError as exc:
            print(f"error: {mask(str(exc))}", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"{device.name}.{args.signal} = {back:g} (confirmed by read-back)")
        return EXIT_OK

    return asyncio.run(main())


def cmd_scan(args: argparse.Namespace) -> int:
    """Probe unit ids at a Modbus TCP endpoint and list the ones that answer."""
    from gateway.commissioning.modbus_scan import ConnectionDead, parse_units, scan_units  # noqa: PLC0415

    try:
        units = parse_units(args.units)
    except ValueError as exc:
        print(f"error: --units: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    where = f"{args.host}:{args.port}"
    if not args.json:
        print(
            f"scanning {where}, {len(units)} unit id(s), {args.connections} connection(s), timeout {args.timeout:g} s"
        )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await scan_units(
                args.host, args.port, units, timeout_s=args.timeout, connections=args.connections
            )
        except ConnectionDead as exc:
            print(f"error: {mask(str(exc))}", file=sys.stderr)
            return EXIT_RUNTIME
        answering = [result for result in results if result.answers]
        seconds = loop.time() - started
        if args.json:
            _print_json(
                {
                    "host": args.host,
                    "port": args.port,
                    "units_tried": len(units),
                    "seconds": round(seconds, 3),
                    "answering": [result.unit_id for result in answering],
                    "results": [
                        {"unit_id": result.unit_id, "answers": result.answers, "detail": result.detail}
                        for result in results
                    ],
                }
            )
        else:
            for result in answering:
                print(f"  unit {result.unit_id:<3}  {result.detail}")
            print(f"{len(answering)} of {len(units)} unit ids answer ({seconds:.1f} s)")
        return EXIT_OK if answering else EXIT_RUNTIME

    return asyncio.run(main())


def cmd_browse(args: argparse.Namespace) -> int:
    """Print an OPC UA server's address space as a tree, to help write a profile."""
    _setup_logging(None, "warning")
    if not args.endpoint.startswith("opc.tcp://") or not 0 < args.timeout <= 60 or args.depth < 1:
        print("usage: heat-gateway browse opc.tcp://host:port [--depth N>=1] [--timeout 0-60 s]", file=sys.stderr)
        return EXIT_CONFIG
    password = args.password
    if args.user is not None and password is None:
        import getpass  # noqa: PLC0415 - only when asked for

        password = getpass.getpass(f"password for {args.user}: ")
    if password:
        remember_secrets([password])  # never echoed in an error line, whatever the library says
    from gateway.commissioning.opcua_browse import browse, format_tree  # noqa: PLC0415 - load asyncua on demand
    from gateway.drivers.base import DriverError  # noqa: PLC0415

    try:
        tree = asyncio.run(
            browse(args.endpoint, depth=args.depth, username=args.user, password=password, timeout_s=args.timeout)
        )
    except DriverError as exc:
        print(f"error: {mask(str(exc))}", file=sys.stderr)
        return EXIT_RUNTIME
    print("Objects")
    for line in format_tree(tree):
        print(f"  {line}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve the site's devices from the plant model (or run a scenario in-process)."""
    from simulators.cli import simulate  # noqa: PLC0415 - the simulators are a separate package
    from simulators.scenario import ScenarioError  # noqa: PLC0415

    try:
        code: int = simulate(args)
    except ScenarioError as exc:  # a bad scenario file is a bad file: its message, exit 2
        print(f"scenario error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    return code


def cmd_fault(args: argparse.Namespace) -> int:
    """Send one fault-injection command to a running ``simulate --control-port``."""
    from simulators.control import send  # noqa: PLC0415 - the simulators are a separate package

    try:
        answer = asyncio.run(send(args.command, args.control_port))
    except (OSError, TimeoutError) as exc:
        print(f"error: no simulator control port at 127.0.0.1:{args.control_port}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(answer))
    return EXIT_OK if answer.get("ok") else EXIT_RUNTIME


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used for the README's usage text)."""
    parser = argparse.ArgumentParser(prog="heat-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", required=True, help="site YAML file")
        return p

    _add_site_commands(add)
    _add_discovery_commands(add)
    _add_simulator_commands(add)
    return parser


_Add = Callable[..., argparse.ArgumentParser]
"""``add(name, help, config=True)``: a subcommand parser (with ``-c/--config`` unless config=False)."""


def _add_site_commands(add: _Add) -> None:
    """check, run, historian, read, write: the commands that work on a site file."""
    p = add("check", "validate a site file; print the devices, the read plan and what it writes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--control",
        action="store_true",
        help="also read every control-role input from the live devices once and list what the supervisor "
        "would write in auto mode (writes nothing)",
    )
    p.set_defaults(func=cmd_check)
    p = add("run", "run the gateway (pollers, control, MQTT) until SIGTERM")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)
    p = add("historian", "copy metrics from MQTT into InfluxDB until SIGTERM")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_historian)
    p = add("read", "read a device once and print a table")
    p.add_argument("device")
    p.add_argument("signals", nargs="*")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_read)
    p = add("write", "write one signal (within its limits) and confirm by read-back")
    p.add_argument("device")
    p.add_argument("signal")
    p.add_argument("value", type=float)
    p.set_defaults(func=cmd_write)


def _add_discovery_commands(add: _Add) -> None:
    """scan, browse: finding devices and nodes before a profile exists."""
    p = add("scan", "list the Modbus unit ids that answer at HOST (exception 10/11 means none there)", config=False)
    p.add_argument("host")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument("--units", default="1-247", help="unit ids to try, e.g. 1-247 or 1-10,100 (default 1-247)")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each unit (default 0.5)")
    p.add_argument("--connections", type=int, default=4, help="requests outstanding at once, one per connection")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_scan)
    p = add("browse", "print an OPC UA server's nodes (id, type, access, value) to help write a profile", config=False)
    p.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    p.add_argument("--depth", type=int, default=6, help="levels below Objects to show (default 6)")
    p.add_argument("--user", help="user name; anonymous when omitted")
    p.add_argument("--password", help="password (asked for when --user is given without it)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    p.set_defaults(func=cmd_browse)


def _add_simulator_commands(add: _Add) -> None:
    """simulate, fault: the simulated plant and its fault injection."""
    p = add("simulate", "serve simulated devices, or run a scenario faster than real time", config=False)
    p.add_argument("-c", "--config", help="site YAML file whose loopback devices are served")
    p.add_argument("--scenario", help="scenario name (simulators/scenarios/NAME.yaml) or file")
    p.add_argument(
        "--fast", action="store_true", help="run the closed loop at model level (no sockets, drivers or executor)"
    )
    p.add_argument(
        "--real-path",
        action="store_true",
        help="run the scenario through the real path on the plant's clock: devices served on loopback sockets "
        "(Modbus TCP, OPC UA), the gateway's drivers, pollers, supervisor and write executor as `run` has them; "
        "~100x real time on a free core (docs/control.md, Real-path accelerated runs)",
    )
    p.add_argument("--report", help="folder for the JSON summary and PNG plot (with --fast or --real-path)")
    p.add_argument(
        "--speed",
        type=float,
        help="serving: plant clock rate (default 1 = real time); --real-path: the most plant seconds per real "
        "second (default: as fast as the CPU allows)",
    )
    p.add_argument("--hours", type=float, help="--real-path: run only the scenario's first HOURS")
    p.add_argument(
        "--profiles",
        help="--real-path: folder of the profiles the gateway reads with (default: the bundled ones, which the "
        "simulated devices speak; a wrong one makes the scenario fail)",
    )
    p.add_argument(
        "--poll-s",
        type=float,
        help="--real-path: plant seconds between polls of every device (default: 2 s for the heat meter and the "
        "heat-pump PLC, 4 s for the CDUs and the panel PC)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--control-port", type=int, help="loopback port for fault-injection commands (see simulators/control.py)"
    )
    p.set_defaults(func=cmd_simulate)
    p = add("fault", "send one fault-injection command (JSON) to a running simulator's control port", config=False)
    p.add_argument("command", help='e.g. \'{"device": "cdu-3", "fault": "silent"}\' (see simulators/control.py)')
    p.add_argument("--control-port", type=int, default=15099, help="the simulator's --control-port (default 15099)")
    p.set_defaults(func=cmd_fault)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``heat-gateway`` console script."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where nothing can catch it
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_PIPE
    return code


def _discard_stdout() -> None:
    """The reader went away: what is still buffered goes nowhere, and the exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured by a test): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
