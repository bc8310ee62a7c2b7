"""A scenario through the same path as ``heat-gateway run``, on the plant's clock, faster than real time.

``heat-gateway simulate --scenario NAME --real-path [--hours H] [--speed S] [--profiles DIR]
[--poll-s S] --report DIR`` runs in one process, on a :class:`~simulators.virtual_time.VirtualTimeLoop`:

- the plant model, stepped every plant second with the scenario's inputs and plant events;
- every simulated device on a real loopback socket, encoded as the *bundled* profiles say
  (that is what the simulated devices speak): 12 CDUs and the heat meter over Modbus TCP
  (simulators/modbus_server.py), the heat-pump PLC and the panel PC over OPC UA (asyncua);
- the gateway as ``run`` builds it (:class:`gateway.service.Gateway`) from a generated site
  file: its drivers encode and decode with the profiles in ``--profiles`` (default: the
  bundled ones), its pollers fill the process image, the control loop runs the supervisor
  every ``control.cycle_s`` and hands the writes to the write executor (limits, latest-wins,
  read-back), heartbeats included;
- the report (simulators/report.py) with the scenario's criteria, judged on the plant's true
  values, exactly as the model-level ``--fast`` run judges them.

Harness events on the real path (the fast harness does these in-process):

- ``device_silent``: the device's server stops answering: a Modbus unit reads requests and
  never replies (fault ``silent``), an OPC UA server delays every Read and Write beyond the
  run; the gateway's request timeouts and poller mark it unavailable, and writes to it fail;
- ``gateway_crash``: the gateway task is cancelled (its pollers close their sockets, nobody
  polls, writes or sends heartbeats: the devices' watchdogs take over); at the end a new
  :class:`Gateway` is built from the same site file and started (empty process image, fresh
  supervisor state), as systemd would restart the process;
- ``utility_link_lost``: applied by the plant to the panel PC (``utility_link_ok`` 0, the
  order frozen there), which the gateway reads over OPC UA.

MQTT is not part of the closed loop: the generated site points the publisher at a loopback port
nobody listens on, with the spool off (a real broker answers in real time, which virtual time
cannot wait for; see simulators/virtual_time.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import clock
from gateway.config import ConfigError, load_site
from gateway.config.control import ControlConfig
from gateway.config.loader import Site, load_profile
from gateway.config.profile import Profile
from gateway.control.writes import HEARTBEAT_REASON
from gateway.service import Gateway
from simulators.harness import (
    PROFILE_DIR,
    Summary,
    Window,
    _on_local_values,
    _watchdog_timeouts,
    _windows,
    format_summary,
    summarize,
    with_profile_resolutions,
)
from simulators.modbus_server import Fault
from simulators.plant import Plant
from simulators.report import Trace, evaluate, write_report
from simulators.scenario import Scenario, ScenarioError, load_scenario
from simulators.site import SimulatedSite
from simulators.virtual_time import VirtualTimeLoop

__all__ = ["DEFAULT_POLL_S", "RealPathRun", "run_real_path", "run_real_path_cli"]

DEFAULT_POLL_S: dict[str, float] = {"cdu": 4.0, "heat_meter": 2.0, "heat_pump_plc": 2.0, "panel_pc": 4.0}
"""Plant seconds between two polls, by device kind: the heat meter and the station PLC carry what
the DH trims close their loops on (supply temperature, heat power; the meter filter is 20 s),
the CDUs' own PLCs hold their rack loops and get slow setpoint ramps, the panel PC carries the
utility's order (minutes). Each stays below control.input_max_age_s (5 s)."""
_PROFILE_OF_KIND = {"cdu": "cdu", "heat_meter": "heat-meter", "heat_pump_plc": "hp-plc", "panel_pc": "panel-pc"}
_OPCUA_KINDS = {"heat_pump_plc", "panel_pc"}
REAL_PATH_EVENTS: dict[str, str] = {
    "device_silent": "Modbus: the unit reads requests and never answers; OPC UA: the server answers every "
    "Read and Write too late for any run",
    "gateway_crash": "the gateway task is cancelled (sockets closed, no polls, writes or heartbeats); at the end "
    "a new gateway is built from the same site file and started",
    "utility_link_lost": "the plant's panel PC shows the lost link (utility_link_ok 0, order frozen); the gateway "
    "reads it over OPC UA",
}
"""What each harness event becomes on the real path; a scenario with any other is refused."""
_NOT_REACHED = frozenset({"timeout", "unavailable", "refused"})
"""Write failures where the device was not reached (counted apart); any other is a refusal."""
_SILENT_OPCUA_DELAY_S = 1e9
"""An OPC UA device that is silent answers this late (never, within any run)."""


@dataclass(slots=True)
class RealPathRun:
    """What a real-path run measured about itself, besides the report."""

    plant_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    setup_wall_s: float = 0.0
    setup_cpu_s: float = 0.0
    jumps: int = 0
    real_waits: int = 0
    polls: int = 0
    poll_failures: int = 0
    cycles: int = 0
    failed_cycles: int = 0
    dh_sensors_alarm_s: int = 0  # seconds the live loop's meter/station cross-check was in alarm
    gateway_starts: int = 0
    device_writes: dict[str, int] = field(default_factory=dict)
    # At the end: the heat meter's values as the gateway decoded them and as the device served them.
    meter_read: dict[str, float | None] = field(default_factory=dict)
    meter_served: dict[str, float] = field(default_factory=dict)
    meter_reasons: dict[str, str] = field(default_factory=dict)  # why a value was bad ("" when good)


def write_site(folder: Path, plant: Plant, *, profiles_dir: Path, poll_s: float | None, control: ControlConfig) -> Path:
    """A site file for the plant's devices on free loopback ports (the gateway's view of the site)."""
    from simulators.opcua_server import free_port  # noqa: PLC0415 - the one free-port helper of the simulators

    lines = []
    for name in plant.device_names():
        kind = plant.device_kind(name)
        profile = _PROFILE_OF_KIND[kind]
        period_s = poll_s if poll_s is not None else DEFAULT_POLL_S[kind]
        # Timeouts in plant seconds (virtual time): a healthy loopback reply takes none of it. The
        # OPC UA client also reads the server's state every max(1 s, timeout_s) (asyncua's session
        # watchdog): a timeout of one poll period keeps that to one extra read per poll.
        timeout_s = max(1.0, period_s) if kind in _OPCUA_KINDS else 1.0
        common = f"poll_period_s: {period_s:g}, timeout_s: {timeout_s:g}, backoff_max_s: {max(10.0, 5 * period_s):g}"
        if kind in _OPCUA_KINDS:
            lines.append(
                f"  - {{name: {name}, kind: {kind}, protocol: opcua, "
                f"endpoint: 'opc.tcp://127.0.0.1:{free_port()}/', profile: {profile}, {common}}}"
            )
        else:
            unit = 10 if kind == "heat_meter" else 1
            lines.append(
                f"  - {{name: {name}, kind: {kind}, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
                f"unit_id: {unit}, profile: {profile}, {common}}}"
            )
    control_yaml = control.model_dump_json(exclude_defaults=True)
    path = folder / "site.yaml"
    path.write_text(
        "site: real-path\n"
        f"profiles_dir: {json.dumps(str(profiles_dir))}\n"  # JSON strings are YAML strings: any path
        f"state_dir: {json.dumps(str(folder / 'state'))}\n"
        "devices:\n" + "\n".join(lines) + "\n"
        # Nobody listens there: MQTT is not part of the closed loop (module docstring).
        f"mqtt: {{host: 127.0.0.1, port: {free_port()}, client_id: real-path, spool: false, reconnect_max_s: 3600}}\n"
        f"control: {control_yaml}\n",
        encoding="utf-8",
    )
    return path


def _true_profiles(site: Site) -> dict[str, Profile]:
    """What each simulated device really speaks: the bundled profile of its kind."""
    loaded: dict[str, Profile] = {}
    out: dict[str, Profile] = {}
    for device in site.config.devices:
        name = _PROFILE_OF_KIND.get(device.kind)
        if name is None:
            continue
        if name not in loaded:
            loaded[name] = load_profile(PROFILE_DIR / f"{name}.yaml")
        out[device.name] = loaded[name]
    return out


class _Writes:
    """Every write the control loop's executor finished, counted as the fast harness counts them."""

    def __init__(self, cdus: set[str]) -> None:
        self.cdus = cdus
        self.counts: dict[str, Any] = {
            "writes_total": 0,
            "writes_out_of_limits": 0,
            "writes_rejected": 0,
            "writes_failed_device_silent": 0,
            "writes_failed_not_reached": 0,
            "heartbeats": 0,
            "setpoint_writes": 0,
            "writes_by_signal": {},
            "writes_by_reason": {},
            "writes_outside_true_limits": 0,
        }
        self.rejected: list[str] = []
        self.per_minute: dict[tuple[str, int], int] = {}
        self.ramp_minutes: set[tuple[str, int]] = set()


async def _drive(
    loop: VirtualTimeLoop,
    scenario: Scenario,
    plant: Plant,
    site: Site,
    simulated: SimulatedSite,
    trace: Trace,
    windows: list[Window],
    run: RealPathRun,
    writes: _Writes,
    crash_log: list[dict[str, Any]],
) -> ControlConfig:
    """Step the plant every plant second while the gateway runs on its own tasks."""
    crash_windows = [w for w in windows if w.kind == "gateway_crash"]
    silent_windows = [w for w in windows if w.kind == "device_silent"]
    duration_s = scenario.duration_s
    gateway: Gateway | None = None
    gateway_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    silent_now: set[str] = set()

    def start_gateway() -> tuple[Gateway, asyncio.Task[None]]:
        new = Gateway(site)
        run.gateway_starts += 1
        assert new.control is not None
        new.control.on_write.append(on_result)
        return new, asyncio.create_task(new.run(stop), name=f"gateway-{run.gateway_starts}")

    def on_result(result: Any) -> None:
        counts = writes.counts
        request = result.request
        counts["writes_total"] += 1
        time_s = plant.time_s
        if not result.ok:
            if request.device in silent_now:
                counts["writes_failed_device_silent"] += 1
            elif result.cause in _NOT_REACHED:
                # e.g. the first write after a silent spell, before the poller reconnected
                counts["writes_failed_not_reached"] += 1
            else:
                counts["writes_rejected"] += 1
                writes.rejected.append(
                    f"t={time_s:g} {request.device}.{request.signal}={request.value}: {result.error}"
                )
            return
        if request.reason == HEARTBEAT_REASON:
            counts["heartbeats"] += 1
            return
        counts["setpoint_writes"] += 1
        minute = int(time_s // 60.0)
        key = (request.device, minute)
        writes.per_minute[key] = writes.per_minute.get(key, 0) + 1
        label = f"{'cdu-*' if request.device in writes.cdus else request.device}.{request.signal}"
        by_signal = counts["writes_by_signal"]
        by_signal[label] = by_signal.get(label, 0) + 1
        by_reason = counts["writes_by_reason"]
        by_reason[request.reason] = by_reason.get(request.reason, 0) + 1

    async def stop_gateway(old: Gateway, task: asyncio.Task[None]) -> None:
        """Cancel the gateway's task (a crash, or the end of the run) and keep its counts."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        run.polls += sum(p.stats.polls for p in old.pollers)
        run.poll_failures += sum(p.stats.failures for p in old.pollers)
        if old.control is not None:
            run.cycles += old.control.cycles
            run.failed_cycles += old.control.failed_cycles
            writes.counts["writes_out_of_limits"] += old.control.executor.refused

    gateway, gateway_task = start_gateway()
    assert gateway.control is not None
    config = gateway.control.supervisor.config
    was_down = False
    time_s = 0.0
    next_step = loop.time()
    step_index = 0
    try:
        while time_s < duration_s - 1e-9:
            down = any(w.active(time_s) for w in crash_windows)
            if down and not was_down:
                crash_log.append(_watchdog_timeouts(plant, time_s))
                assert gateway is not None
                assert gateway_task is not None
                await stop_gateway(gateway, gateway_task)
                gateway, gateway_task = None, None
            if was_down and not down:
                crash_log[-1]["restart_s"] = time_s
                crash_log[-1]["at_restart"] = _on_local_values(plant)
                gateway, gateway_task = start_gateway()
            was_down = down
            silent = {w.target for w in silent_windows if w.active(time_s)}
            for device in silent ^ silent_now:
                await _set_silent(simulated, device, silent=device in silent)
            silent_now = silent
            if gateway_task is not None and gateway_task.done():
                raise RuntimeError(f"the gateway stopped at plant time {time_s:g} s: {gateway_task!r}")
            status = gateway.control.status if gateway is not None and gateway.control is not None else {}
            if status.get("alarm_dh_sensors"):
                run.dh_sensors_alarm_s += 1
            if gateway is not None and gateway.control is not None:
                minute = int(time_s // 60.0)
                for device in str(status.get("ramping_devices", "")).split(","):
                    if device:
                        writes.ramp_minutes.add((device, minute))
            trace.record(time_s, status if not down else {}, down=down, silent=silent)
            scenario.apply_plant_events(plant, time_s, time_s + 1.0)
            plant.step(1.0)
            step_index += 1
            time_s = float(step_index)
            await simulated.refresh()
            next_step += 1.0
            delay = next_step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        if gateway is not None and gateway_task is not None:
            _compare_meter(gateway, plant, run)
            stop.set()
            await stop_gateway(gateway, gateway_task)
    return config


_METER_SIGNALS = ("flow_temp_c", "return_temp_c", "heat_power_kw", "flow_m3h")


def _compare_meter(gateway: Gateway, plant: Plant, run: RealPathRun) -> None:
    """What the gateway made of the heat meter's registers, next to what the meter served."""
    snapshot = gateway.image.snapshot(clock.wall_ns())
    served = plant.read("heat-meter")
    for signal in _METER_SIGNALS:
        sample = snapshot.sample("heat-meter", signal)
        run.meter_read[signal] = None if math.isnan(sample.value) else sample.value
        run.meter_reasons[signal] = sample.reason
        run.meter_served[signal] = served[signal]


async def _set_silent(simulated: SimulatedSite, device: str, *, silent: bool) -> None:
    """Make a simulated device stop answering (or answer again)."""
    if device in simulated.units:
        simulated.inject(device, Fault.SILENT if silent else Fault.NONE)
        return
    server = simulated.opcua_servers.get(device)
    if server is None:
        raise ScenarioError(f"device_silent: {device} is not served on the real path")
    server.slow_s = _SILENT_OPCUA_DELAY_S if silent else 0.0


def run_real_path(
    name_or_path: str | Path,
    *,
    hours: float | None = None,
    speed: float = 0.0,
    profiles_dir: Path | None = None,
    poll_s: float | None = None,
    seed: int | None = None,
    report_dir: str | Path | None = None,
    plot: bool = True,
    control: ControlConfig | None = None,
) -> tuple[Summary, RealPathRun]:
    """Run a scenario (its first ``hours``, or all of it) on the real path; the summary and run figures.

    ``profiles_dir``: the profiles the *gateway* reads with (default: the bundled ones, which
    the simulated devices speak); ``speed``: pace cap in plant seconds per real second (0 = as
    fast as the CPU allows).
    """
    started_wall = time.perf_counter()
    started_cpu = time.process_time()
    scenario = load_scenario(name_or_path)
    if hours is not None:
        if not hours > 0:
            raise ScenarioError(f"--hours must be above 0, got {hours:g}")
        scenario = scenario.model_copy(update={"duration_s": min(scenario.duration_s, hours * 3600.0)})
    refused = sorted({e.kind for e in scenario.events if e.scope != "plant" and e.kind not in REAL_PATH_EVENTS})
    if refused:
        raise ScenarioError(
            f"{scenario.name}: {', '.join(refused)} cannot run on the real path (it maps "
            f"{', '.join(sorted(REAL_PATH_EVENTS))}); run it with --fast"
        )
    full_duration_s = load_scenario(name_or_path).duration_s
    seed = scenario.seed if seed is None else seed
    plant = Plant(with_profile_resolutions(scenario.plant_config()), seed=seed)
    config = control or ControlConfig()
    windows = [w for w in _windows(scenario) if w.start_s < scenario.duration_s]
    trace = Trace(plant, scenario)
    run = RealPathRun()
    writes = _Writes({name for name in plant.device_names() if plant.device_kind(name) == "cdu"})
    crash_log: list[dict[str, Any]] = []
    true_limits = _true_limits()
    outside: list[str] = []

    def seen(device: str, signal: str, value: float) -> None:
        run.device_writes[device] = run.device_writes.get(device, 0) + 1
        limits = true_limits.get((plant.device_kind(device), signal))
        if limits is not None and not limits[0] <= value <= limits[1]:
            writes.counts["writes_outside_true_limits"] += 1
            outside.append(f"{device}.{signal}={value}")

    loop = VirtualTimeLoop(speed=speed)
    epoch_ns = time.time_ns()
    clock.use(wall_ns_fn=lambda: epoch_ns + round(loop.now * 1e9), monotonic_fn=loop.time)
    with tempfile.TemporaryDirectory(prefix="real-path-") as tmp:
        folder = Path(tmp)
        site = load_site(
            write_site(
                folder, plant, profiles_dir=(profiles_dir or PROFILE_DIR).resolve(), poll_s=poll_s, control=config
            )
        )
        simulated = SimulatedSite(
            site,
            plant,
            profiles=_true_profiles(site),
            source_time=lambda: datetime.fromtimestamp(clock.wall_ns() / 1e9, UTC),
            on_write=seen,
            refresh_on_read=True,
        )

        async def main() -> ControlConfig:
            await simulated.start()
            for server in simulated.opcua_servers.values():
                await server.stop_clock()
            run.setup_wall_s = time.perf_counter() - started_wall
            run.setup_cpu_s = time.process_time() - started_cpu
            try:
                return await _drive(loop, scenario, plant, site, simulated, trace, windows, run, writes, crash_log)
            finally:
                await simulated.stop()

        try:
            config = loop.run_until_complete(main())
        finally:
            clock.reset()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    run.plant_s = scenario.duration_s
    run.wall_s = time.perf_counter() - started_wall
    run.cpu_s = time.process_time() - started_cpu
    run.jumps = loop.jumps
    run.real_waits = loop.real_waits
    counts = writes.counts
    counts["rejected_examples"] = writes.rejected[:10]
    counts["outside_true_limits_examples"] = outside[:10]
    # A write that reached a device outside its real profile's limits counts as outside limits.
    counts["writes_out_of_limits"] += counts["writes_outside_true_limits"]
    busy: dict[str, int] = {}
    for (device, minute), n in writes.per_minute.items():
        if n > 1 and (device, minute) not in writes.ramp_minutes:
            busy[device] = busy.get(device, 0) + 1
    counts["busy_minutes_outside_ramps"] = busy
    counts["max_setpoint_writes_per_minute"] = max(writes.per_minute.values(), default=0)
    counts["polls"] = run.polls
    counts["poll_failures"] = run.poll_failures
    loop_wall = max(run.wall_s - run.setup_wall_s, 1e-9)
    timings = {
        "path": "real",
        "wall_s": round(run.wall_s, 3),
        "setup_s": round(run.setup_wall_s, 3),
        "cpu_s": round(run.cpu_s, 3),
        "simulated_s": scenario.duration_s,
        "speedup": round(scenario.duration_s / loop_wall, 1),
        "wall_s_per_plant_hour": round(loop_wall / scenario.duration_s * 3600.0, 2),
        "cpu_s_per_plant_hour": round((run.cpu_s - run.setup_cpu_s) / scenario.duration_s * 3600.0, 2),
        "cpu_share_of_wall": round((run.cpu_s - run.setup_cpu_s) / loop_wall, 3),
        "cycles": run.cycles,
        "cycle_mean_us": 0.0,
        "cycle_p99_us": 0.0,
        "clock_jumps": run.jumps,
        "real_waits_for_threads": run.real_waits,
        "gateway_starts": run.gateway_starts,
    }
    metrics, checks = evaluate(trace, scenario, windows, config, crash_log=crash_log, counts=counts)
    # A control cycle that raised (each logged as control_cycle_failed): the loop must never stop.
    checks["control_cycles_failed"] = {"value": run.failed_cycles, "target": "== 0", "ok": run.failed_cycles == 0}
    # The meter and the station measure the same water: no false alarm of their cross-check.
    alarm_s = run.dh_sensors_alarm_s
    checks["dh_sensors_alarm_s"] = {"value": alarm_s, "target": "== 0", "ok": alarm_s == 0}
    if scenario.duration_s < full_duration_s:
        _not_in_window(checks, scenario.duration_s)
    summary = summarize(scenario, scenario.duration_s, seed, metrics, checks, counts, timings, windows, plant)
    if report_dir is not None:
        summary.files = write_report(summary, trace, windows, config, Path(report_dir), plot=plot)
    return summary, run


WINDOW_DEPENDENT = {
    "step_settling_max_s": "no requirement step in the window",
    "step_overshoot_max_k": "no requirement step in the window",
    "heat_hourly_error_max_pct": "no whole hour in the window with 90 % of its seconds judged",
    "dh_offset_learned_s": "the offset was not learned within the window",
    "dh_supply_dev_rms_after_learning_k": "the offset was not learned within the window",
}
"""Criteria that a run of only the first hours may have nothing to judge on (their metric is None)."""


def _not_in_window(checks: dict[str, dict[str, Any]], duration_s: float) -> None:
    """A window run: a criterion with nothing to judge in the window is marked so, not failed.

    Only the criteria in WINDOW_DEPENDENT, and only when their metric is None; every other
    missing metric still fails (no delivery at all, for one, must never pass).
    """
    for name, why in WINDOW_DEPENDENT.items():
        check = checks.get(name)
        if check is not None and check["value"] is None:
            check.update(ok=True, judged=False, why=f"not judged in the first {duration_s / 3600:g} h: {why}")


def _true_limits() -> dict[tuple[str, str], tuple[float, float]]:
    """(device kind, signal) -> (min, max) of every writable signal in the bundled profiles."""
    limits: dict[tuple[str, str], tuple[float, float]] = {}
    for kind, name in _PROFILE_OF_KIND.items():
        for signal, spec in load_profile(PROFILE_DIR / f"{name}.yaml").signals.items():
            if spec.access.value == "read_write" and spec.min is not None and spec.max is not None:
                limits[(kind, signal)] = (spec.min, spec.max)
    return limits


def describe(summary: Summary, run: RealPathRun) -> str:
    """The fast run's summary text, its first line about the real path's own figures."""
    t = summary.timings
    lines = format_summary(summary).splitlines()
    lines[0] = (
        f"scenario {summary.scenario} on the real path: {summary.duration_s / 3600:g} h simulated in "
        f"{t['wall_s']:.1f} s ({t['speedup']:.0f}x real time after {t['setup_s']:.1f} s of setup; "
        f"{t['cpu_s_per_plant_hour']:.1f} s CPU per plant hour), {run.polls} polls ({run.poll_failures} failed), "
        f"{run.cycles} control cycles, {run.gateway_starts} gateway start(s)"
    )
    return "\n".join(lines)


def run_real_path_cli(args: argparse.Namespace) -> int:
    """``heat-gateway simulate --scenario NAME --real-path ...``: 0 all checks met, 1 not."""
    seed = args.seed if getattr(args, "seed", 0) else None
    if args.profiles and not Path(args.profiles).is_dir():
        print(f"simulate --real-path: --profiles {args.profiles}: no such folder", file=sys.stderr)  # noqa: T201
        return 2
    try:
        summary, run = run_real_path(
            args.scenario,
            hours=args.hours,
            speed=args.speed or 0.0,
            profiles_dir=Path(args.profiles) if args.profiles else None,
            poll_s=args.poll_s,
            seed=seed,
            report_dir=args.report,
        )
    except ConfigError as exc:  # a profile in --profiles the gateway cannot load
        print(f"simulate --real-path: the gateway's site cannot be built:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    print(describe(summary, run))  # noqa: T201 - the simulate command prints its summary
    return 0 if summary.passed else 1
