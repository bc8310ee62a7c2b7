"""``heat-gateway simulate``: serve the site's devices from the plant model.

``heat-gateway simulate -c site.yaml [--speed 10]`` serves every loopback device of the site
file from one plant model until Ctrl-C / SIGTERM. With ``--scenario NAME --fast --report DIR``
it runs the closed loop in-process at model level, faster than real time, and writes a report;
with ``--scenario NAME --real-path [--hours H] [--speed S] [--profiles DIR] --report DIR`` it runs
the scenario through the gateway's real path (sockets, drivers, pollers, executor) on the plant's
clock (simulators/real_path.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import suppress
from pathlib import Path

from gateway.config import load_site
from gateway.logs import get_logger, setup_logging

log = get_logger("simulators")


def make_plant(seed: int = 0, scenario: str | None = None):  # noqa: ANN201 - the plant type lives in simulators.plant
    """The plant model, configured by a scenario's ``plant:`` overrides when one is given."""
    from simulators.plant import Plant, PlantConfig  # noqa: PLC0415

    if scenario is None:
        return Plant(PlantConfig(), seed=seed)
    from simulators.scenario import load_scenario  # noqa: PLC0415

    loaded = load_scenario(scenario)
    return Plant(loaded.plant_config(), seed=loaded.seed if seed == 0 else seed)


async def serve(
    site_path: str, *, speed: float, seed: int, scenario: str | None, control_port: int | None = None
) -> None:
    """Serve until SIGTERM/SIGINT."""
    from simulators.control import serve_control  # noqa: PLC0415
    from simulators.site import SimulatedSite  # noqa: PLC0415

    site = load_site(Path(site_path))
    plant = make_plant(seed, scenario)
    simulated = SimulatedSite(site, plant, speed=speed)
    await simulated.start()
    for (host, port), endpoint in simulated.endpoints.items():
        log.info("simulator_listening", protocol="modbus", endpoint=f"{host}:{port}", units=sorted(endpoint.units))
    for name, server in simulated.opcua_servers.items():
        log.info("simulator_listening", protocol="opcua", endpoint=server.endpoint, device=name)
    control = None
    if control_port:
        control = await serve_control(simulated, control_port)
        log.info("simulator_control_listening", endpoint=f"127.0.0.1:{control_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(simulated.run(), name="plant")
            await stop.wait()
            runner.cancel()
    finally:
        if control is not None:
            control.close()
        await simulated.stop()
        log.info("simulator_stopped")


def simulate(args: argparse.Namespace) -> int:
    """Entry point for ``heat-gateway simulate``."""
    if getattr(args, "real_path", False):
        if args.fast or not args.scenario:
            print("simulate --real-path needs --scenario NAME (and not --fast)", file=sys.stderr)
            return 2
        # The gateway's per-write info lines would cost more than the run: warnings and errors only.
        setup_logging("warning", "auto")
        # Nobody listens where the publisher connects (MQTT is not in the closed loop): not news.
        for name in ("gateway.mqtt", "gateway.publish.mqtt"):
            logging.getLogger(name).setLevel(logging.ERROR)
        from simulators.real_path import run_real_path_cli  # noqa: PLC0415

        return run_real_path_cli(args)
    setup_logging("info", "auto")
    if args.fast:
        if not args.scenario:
            print("simulate --fast needs --scenario NAME", file=sys.stderr)
            return 2
        from simulators.harness import run_scenario_cli  # noqa: PLC0415

        return run_scenario_cli(args)
    if not args.config:
        print("simulate needs -c SITE.yaml (the devices to serve) or --scenario NAME --fast", file=sys.stderr)
        return 2
    asyncio.run(
        serve(
            args.config,
            speed=args.speed if args.speed is not None else 1.0,
            seed=args.seed,
            scenario=args.scenario,
            control_port=args.control_port,
        )
    )
    return 0
