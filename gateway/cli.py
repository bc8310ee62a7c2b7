"""The ``heat-gateway`` command.

Exit status: 0 done, 1 runtime failure (a device unreachable for ``read``/``write``), 2 bad
configuration or usage. A bad file never produces a traceback, only the message that names
file, key path and what was expected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ConfigError, Site, load_site
from gateway.config.profile import ModbusProfile
from gateway.config.secrets import mask, remember_secrets
from gateway.config.site import ModbusDevice

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def _site(path: str) -> Site:
    return load_site(Path(path))


def _setup_logging(site: Site | None, level: str | None = None) -> None:
    from gateway.logs import setup_logging  # noqa: PLC0415 - keep `check` fast

    if site is None:
        setup_logging(level or "info", "auto")
    else:
        setup_logging(level or site.config.logging.level, site.config.logging.format.value)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a site file and print what it would do."""
    site = _site(args.config)
    from gateway.drivers.modbus_plan import build_plan  # noqa: PLC0415

    config = site.config
    print(f"{site.path}: OK, site {config.site!r}, {len(config.devices)} device(s)")
    total_requests = 0
    for device in config.devices:
        profile = site.profile_of(device)
        where = (
            f"{device.host}:{device.port} unit {device.unit_id}"
            if isinstance(device, ModbusDevice)
            else device.endpoint
        )
        state = "" if device.enabled else " (disabled)"
        print(
            f"  {device.name:<16} {device.kind:<14} {device.protocol:<7} {where:<28} "
            f"profile {device.profile} ({len(profile.signals)} signals), every {device.poll_period_s:g} s{state}"
        )
        if isinstance(profile, ModbusProfile):
            plan = build_plan(profile)
            total_requests += len(plan.blocks)
            for line in plan.describe():
                print(f"      read {line}")
        else:
            print(f"      one batched OPC UA Read of {len(profile.signals)} nodes")
    print(
        f"  mqtt: {config.mqtt.host}:{config.mqtt.port}, "
        f"topics {config.mqtt.topic_prefix}/{config.site}/<device>/metrics"
    )
    if config.influxdb is not None:
        print(f"  influxdb: {config.influxdb.url} bucket {config.influxdb.bucket}")
    print(f"  {total_requests} Modbus request(s) per poll cycle")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT."""
    site = _site(args.config)
    _setup_logging(site, args.log_level)
    from gateway.publish.spool import SpoolError  # noqa: PLC0415
    from gateway.service import serve  # noqa: PLC0415

    try:
        asyncio.run(serve(site))
    except SpoolError as exc:
        # Not a config error (the file is fine) but the same kind of answer: say what, exit.
        print(f"cannot start: {exc} (mqtt.spool in {site.path}; state_dir sets the folder)", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_historian(args: argparse.Namespace) -> int:
    """Run the MQTT -> InfluxDB historian until SIGTERM/SIGINT."""
    site = _site(args.config)
    if site.config.influxdb is None:
        raise ConfigError(f"{site.path}: influxdb: the historian needs an influxdb section (url, org, bucket, token)")
    _setup_logging(site, args.log_level)
    from gateway.historian import Historian  # noqa: PLC0415
    from gateway.service import install_stop_signals  # noqa: PLC0415

    historian = Historian(site.config.mqtt, site.config.influxdb, site.config.site)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        task = asyncio.create_task(historian.run(), name="historian")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        # Until SIGTERM, or until the historian dies (then its exception ends the process with
        # a traceback in the journal and systemd restarts it).
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        task.cancel()
        await asyncio.wait([task])  # let it disconnect and close the database client
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error

    asyncio.run(main())
    return EXIT_OK


def _format_value(value: float, unit: str) -> str:
    text = f"{value:.6g}" if value != int(value) or abs(value) >= 1e15 else f"{int(value)}"
    return f"{text} {unit}".strip()


def cmd_read(args: argparse.Namespace) -> int:
    """One poll of one device, printed as a table."""
    site = _site(args.config)
    _setup_logging(site, "warning")
    device = site.device(args.device)
    profile = site.profile_of(device)
    unknown = [s for s in args.signals if s not in profile.signals]
    if unknown:
        raise ConfigError(f"{device.name}: no signal(s) {', '.join(unknown)} in profile {device.profile!r}")
    from gateway.drivers.base import DriverError  # noqa: PLC0415
    from gateway.drivers.factory import make_driver  # noqa: PLC0415

    async def main() -> int:
        driver = make_driver(site, device)
        try:
            async with driver:
                reading = await driver.read()
        except DriverError as exc:
            print(f"error: {mask(str(exc))}", file=sys.stderr)
            return EXIT_RUNTIME
        names = args.signals or list(profile.signals)
        for name in names:
            unit = profile.signals[name].unit
            if name in reading.values:
                print(f"{name:<28} {_format_value(reading.values[name], unit):<20} good")
            elif name in reading.texts:
                print(f"{name:<28} {reading.texts[name]!r:<20} good")
            else:
                reason = reading.bad.get(name, "not read")
                print(f"{name:<28} {'-':<20} bad: {reason}")
        return EXIT_OK

    return asyncio.run(main())


def cmd_write(args: argparse.Namespace) -> int:
    """Write one signal within its limits and confirm by read-back."""
    site = _site(args.config)
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
    print(f"scanning {where}, {len(units)} unit id(s), {args.connections} connection(s), timeout {args.timeout:g} s")

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
        for result in answering:
            print(f"  unit {result.unit_id:<3}  {result.detail}")
        print(f"{len(answering)} of {len(units)} unit ids answer ({loop.time() - started:.1f} s)")
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

    code: int = simulate(args)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used for the README's usage text)."""
    parser = argparse.ArgumentParser(prog="heat-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", required=True, help="site YAML file")
        return p

    add("check", "validate a site file and print the devices and the read plan").set_defaults(func=cmd_check)
    p = add("run", "run the gateway (pollers, control, MQTT) until SIGTERM")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)
    p = add("historian", "copy metrics from MQTT into InfluxDB until SIGTERM")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_historian)
    p = add("read", "read a device once and print a table")
    p.add_argument("device")
    p.add_argument("signals", nargs="*")
    p.set_defaults(func=cmd_read)
    p = add("write", "write one signal (within its limits) and confirm by read-back")
    p.add_argument("device")
    p.add_argument("signal")
    p.add_argument("value", type=float)
    p.set_defaults(func=cmd_write)
    p = add("scan", "list the Modbus unit ids that answer at HOST (exception 10/11 means none there)", config=False)
    p.add_argument("host")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument("--units", default="1-247", help="unit ids to try, e.g. 1-247 or 1-10,100 (default 1-247)")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each unit (default 0.5)")
    p.add_argument("--connections", type=int, default=4, help="requests outstanding at once, one per connection")
    p.set_defaults(func=cmd_scan)
    p = add("browse", "print an OPC UA server's nodes (id, type, access, value) to help write a profile", config=False)
    p.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    p.add_argument("--depth", type=int, default=6, help="levels below Objects to show (default 6)")
    p.add_argument("--user", help="user name; anonymous when omitted")
    p.add_argument("--password", help="password (asked for when --user is given without it)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    p.set_defaults(func=cmd_browse)
    p = add("simulate", "serve simulated devices, or run a scenario faster than real time", config=False)
    p.add_argument("-c", "--config", help="site YAML file whose loopback devices are served")
    p.add_argument("--scenario", help="scenario name (simulators/scenarios/NAME.yaml) or file")
    p.add_argument("--fast", action="store_true", help="run the closed loop in-process, faster than real time")
    p.add_argument("--report", help="folder for the JSON summary and PNG plot (with --fast)")
    p.add_argument("--speed", type=float, default=1.0, help="plant clock rate when serving (1 = real time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--control-port", type=int, help="loopback port for fault-injection commands (see simulators/control.py)"
    )
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``heat-gateway`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
