"""Closed loop in one process: plant model + supervisor + scenario, faster than real time.

``run_scenario("reference-day")`` steps the plant by 1 s, polls every device each control
cycle, runs :meth:`Supervisor.step <gateway.control.supervisor.Supervisor.step>` on what it
read and writes the result into the plant, as the live service does over Modbus and OPC UA.
The supervisor gets a :class:`CycleView` of the cycle's reads: what a snapshot of the gateway's
process image would give it (every device polled this instant, so every value is fresh; a
silent device has none), without a ``Reading`` and a process image per device and second (the
real path, :mod:`simulators.real_path`, runs the gateway's own). Deterministic: the same
scenario and seed give the same numbers.

Harness events of a scenario (no plant physics):

- ``device_silent``: the device stops answering; the gateway's poller marks it unavailable
  (every signal bad), and writes to it fail;
- ``gateway_crash``: the supervisor is not called and nobody polls or writes, so no
  heartbeat either: the devices' watchdogs must take over. At the end the gateway restarts
  with a fresh state, as a restarted process would (its first cycle polls every device);
- ``utility_link_lost``: applied by the plant to the panel PC (the harness only marks the
  fault window).

Every write is checked against the profile limits (a write outside them is counted and not
sent: it must never happen) and counted by signal and reason. The trace, metrics and checks
go to :mod:`simulators.report`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import thread_time
from typing import Any

from gateway.config.control import ControlConfig
from gateway.config.loader import load_profile
from gateway.control.roles import ControlledDevice, RoleMap, build_role_map
from gateway.control.supervisor import Supervisor, SupervisorState
from gateway.control.writes import HEARTBEAT_REASON
from simulators.plant import Plant, PlantConfig
from simulators.plant.sensors import is_temperature
from simulators.report import Trace, evaluate, write_report
from simulators.scenario import (
    BOTH_EVENTS,
    CALIBRATION_EVENTS,
    HARNESS_EVENTS,
    PLANT_EVENTS,
    Scenario,
    load_scenario,
)

__all__ = [
    "PROFILE_DIR",
    "CycleView",
    "Summary",
    "Window",
    "format_summary",
    "plant_role_map",
    "plant_write_limits",
    "read_plan",
    "run_scenario",
    "run_scenario_cli",
    "run_scenarios",
    "summarize",
    "with_profile_resolutions",
]

# The bundled profiles: in a checkout `simulators/profiles` is a symlink to `config/profiles`;
# in an installed wheel it is a copy (package data), so `simulate --fast` works from either.
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
_PROFILE_OF_KIND = {"cdu": "cdu", "heat_meter": "heat-meter", "heat_pump_plc": "hp-plc", "panel_pc": "panel-pc"}
PLANT_DT_S = 1.0
_NOBODY: frozenset[str] = frozenset()  # no device silent (most seconds of most scenarios)


class CycleView:
    """One control cycle's reads as the supervisor's process view (``fresh`` and ``good``).

    Every device was polled at the cycle's instant, so each answer is what
    :class:`~gateway.process_image.Snapshot` gives for a reading of age 0: the read's values
    (the same dict), an empty mapping for a device that did not answer, None for a device not
    polled or a negative ``max_age_s``.
    """

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Mapping[str, float]]) -> None:
        self._values = values

    def fresh(self, device: str, max_age_s: float) -> Mapping[str, float] | None:
        """The device's values (read this instant: fresh for any ``max_age_s`` >= 0)."""
        if max_age_s < 0.0:
            return None
        return self._values.get(device)

    def good(self, device: str, signal: str, max_age_s: float) -> float | None:
        """The signal's value, or None (not read, not answered, negative ``max_age_s``)."""
        values = self.fresh(device, max_age_s)
        return None if values is None else values.get(signal)


@dataclass(frozen=True, slots=True)
class Window:
    """A scenario event's time span: [start_s, end_s), end inf = to the end of the run."""

    kind: str
    target: str
    start_s: float
    end_s: float

    def active(self, time_s: float) -> bool:
        """True while the event lasts."""
        return self.start_s <= time_s < self.end_s


@dataclass(slots=True)
class Summary:
    """What a run produced: metrics, checks against the targets, counts and timings."""

    scenario: str
    description: str
    duration_s: float
    seed: int
    metrics: dict[str, Any]
    checks: dict[str, dict[str, Any]]
    counts: dict[str, Any]
    timings: dict[str, float]
    windows: list[dict[str, Any]]
    plant_events: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check met its target."""
        return all(check["ok"] for check in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report's summary.json)."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "passed": self.passed,
            "checks": self.checks,
            "metrics": self.metrics,
            "counts": self.counts,
            "timings": self.timings,
            "windows": self.windows,
            "plant_events": self.plant_events,
            "files": self.files,
        }


def plant_write_limits(plant: Plant, profile_dir: Path = PROFILE_DIR) -> dict[tuple[str, str], tuple[float, float]]:
    """(device, signal) -> (min, max) from the shipped profiles, for the signals the plant accepts."""
    profiles = {}
    limits: dict[tuple[str, str], tuple[float, float]] = {}
    for device in plant.device_names():
        name = _PROFILE_OF_KIND[plant.device_kind(device)]
        if name not in profiles:
            profiles[name] = load_profile(profile_dir / f"{name}.yaml")
        writable = plant.writable(device)
        for signal, spec in profiles[name].signals.items():
            if spec.access.value == "read_write" and signal in writable:
                # The profile model requires both limits on a read_write signal.
                assert spec.min is not None
                assert spec.max is not None
                limits[(device, signal)] = (spec.min, spec.max)
    return limits


def with_profile_resolutions(config: PlantConfig, profile_dir: Path = PROFILE_DIR) -> PlantConfig:
    """The plant config with every temperature read in its register's steps (int16 x 0.01 -> 0.01 K).

    The real path quantises by encoding; the model-level run does it here so both see the same
    readings. A coarser ``sensors.resolution`` entry in the scenario wins.
    """
    kinds = {f"cdu-{i}": "cdu" for i in range(1, config.cdu.count + 1)}
    kinds |= {"heat-meter": "heat-meter", "hp-plc": "hp-plc", "panel-pc": "panel-pc"}
    profiles = {name: load_profile(profile_dir / f"{name}.yaml") for name in set(kinds.values())}
    resolution = dict(config.sensors.resolution)
    for device, name in kinds.items():
        for signal, spec in profiles[name].signals.items():
            kind = getattr(spec, "type", None)
            step = abs(getattr(spec, "scale", 0.0))
            if is_temperature(signal) and kind is not None and str(kind.value).startswith(("int", "uint")):
                key = f"{device}.{signal}"
                resolution[key] = max(resolution.get(key, 0.0), step)
    sensors = config.sensors.model_copy(update={"resolution": resolution})
    return config.model_copy(update={"sensors": sensors})


def plant_role_map(plant: Plant, config: ControlConfig, profile_dir: Path = PROFILE_DIR) -> RoleMap:
    """The plant's devices in their roles, with the shipped profiles (the bundled names bind by default)."""
    profiles = {name: load_profile(profile_dir / f"{name}.yaml") for name in set(_PROFILE_OF_KIND.values())}
    devices = {}
    for device in plant.device_names():
        name = _PROFILE_OF_KIND[plant.device_kind(device)]
        devices[device] = ControlledDevice(device, name, profiles[name])
    cdus = [device for device in plant.device_names() if plant.device_kind(device) == "cdu"]
    return build_role_map(config, devices, cdus=config.cdu_devices or cdus)


def read_plan(roles: RoleMap, plant: Plant) -> dict[str, frozenset[str]]:
    """Per device, the profile signals the supervisor can see: bound inputs, outputs (read back), heartbeat.

    The model-level harness reads only these (see :meth:`Plant.read`): the supervisor gets the
    very values a full poll would give it, without the ~440 values a second nobody looks at.
    """
    plan: dict[str, frozenset[str]] = {}
    for device in plant.device_names():
        role = roles.devices.get(device)
        if role is None:
            continue
        wanted = {binding.signal for binding in role.bindings.values() if binding.kind == "signal"}
        wanted |= {spec.signal for spec in role.outputs.values()}
        if role.heartbeat is not None:
            wanted.add(role.heartbeat.signal)
            if role.heartbeat.echo_of is not None:
                wanted.add(role.heartbeat.echo_of)
        plan[device] = frozenset(wanted) & frozenset(plant.signals(device))
    return plan


def _windows(scenario: Scenario) -> list[Window]:
    faults = (PLANT_EVENTS | HARNESS_EVENTS | BOTH_EVENTS) - CALIBRATION_EVENTS
    return [
        Window(event.kind, event.target or "", event.at_s, event.end_s)
        for event in scenario.events
        if event.kind in faults
    ]


def run_scenario(
    name_or_path: str | Path,
    *,
    seed: int | None = None,
    report_dir: str | Path | None = None,
    control: ControlConfig | None = None,
    plot: bool = True,
    full_reads: bool = False,
) -> Summary:
    """Run a scenario in closed loop and return its summary.

    ``name_or_path`` is a shipped scenario's name (``reference-day``) or a YAML file;
    ``seed`` overrides the scenario's noise seed; with ``report_dir`` the JSON summary (and,
    with ``plot``, the PNG) are written there; ``control`` overrides the default tuning.
    ``full_reads`` polls every signal of every device as the live poller does, instead of only
    what the supervisor binds (:func:`read_plan`); the supervisor sees the same values either way.
    """
    started = time.perf_counter()
    started_cpu = thread_time()
    scenario = load_scenario(name_or_path)
    seed = scenario.seed if seed is None else seed
    plant = Plant(with_profile_resolutions(scenario.plant_config()), seed=seed)
    config = control or ControlConfig()
    limits = plant_write_limits(plant)
    devices = plant.device_names()
    cdu_names = [device for device in devices if plant.device_kind(device) == "cdu"]
    cdu_set = set(cdu_names)
    roles = plant_role_map(plant, config)
    supervisor = Supervisor(config, roles)
    plan = read_plan(roles, plant)
    reads = [(device, plant.reader(device, None if full_reads else plan.get(device))) for device in devices]
    windows = _windows(scenario)
    silent_windows = [w for w in windows if w.kind == "device_silent"]
    crash_windows = [w for w in windows if w.kind == "gateway_crash"]
    built = time.perf_counter()

    trace = Trace(plant, scenario)
    state = SupervisorState()
    counts: dict[str, Any] = {
        "writes_total": 0,
        "writes_out_of_limits": 0,
        "writes_rejected": 0,
        "writes_failed_device_silent": 0,
        "heartbeats": 0,
        "setpoint_writes": 0,
        "writes_by_signal": {},
        "writes_by_reason": {},
    }
    by_signal: dict[str, int] = counts["writes_by_signal"]
    by_reason: dict[str, int] = counts["writes_by_reason"]
    rejected: list[str] = []
    per_minute: dict[tuple[str, int], int] = {}
    ramp_minutes: set[tuple[str, int]] = set()
    crash_log: list[dict[str, Any]] = []
    cycle_times_s: list[float] = []
    supervisor_cpu_s = 0.0
    next_control_s = 0.0
    was_down = False
    duration_s = scenario.duration_s
    time_s = 0.0
    step_index = 0
    apply_events = scenario.plant_events_of(plant)
    plant_step = plant.step
    status: dict[str, Any] = {}
    while time_s < duration_s - 1e-9:
        down = bool(crash_windows) and any(w.active(time_s) for w in crash_windows)
        if down and not was_down:
            crash_log.append(_watchdog_timeouts(plant, time_s))
        if was_down and not down:
            crash_log[-1]["restart_s"] = time_s
            crash_log[-1]["at_restart"] = _on_local_values(plant)
            # A restarted process: no memory, nothing polled yet.
            state = SupervisorState()
            next_control_s = time_s
        was_down = down
        silent = {w.target for w in silent_windows if w.active(time_s)} if silent_windows else _NOBODY
        if not down and time_s >= next_control_s - 1e-9:
            if silent:
                # A device that does not answer has no values (the poller marks it unavailable).
                view = CycleView({device: {} if device in silent else read() for device, read in reads})
            else:
                view = CycleView({device: read() for device, read in reads})
            tick = time.perf_counter()
            tick_cpu = thread_time()
            result = supervisor.step(view, state, time_s)
            cycle_times_s.append(time.perf_counter() - tick)
            supervisor_cpu_s += thread_time() - tick_cpu
            state = result.state
            status = result.status
            minute = int(time_s // 60.0)
            for device in str(status.get("ramping_devices", "")).split(","):
                if device:
                    ramp_minutes.add((device, minute))
            for write in result.writes:
                counts["writes_total"] += 1
                low, high = limits[(write.device, write.signal)]
                if not low <= write.value <= high:
                    counts["writes_out_of_limits"] += 1
                    continue
                if write.reason == HEARTBEAT_REASON:
                    counts["heartbeats"] += 1
                else:
                    counts["setpoint_writes"] += 1
                    per_minute[(write.device, minute)] = per_minute.get((write.device, minute), 0) + 1
                    key = f"{'cdu-*' if write.device in cdu_set else write.device}.{write.signal}"
                    by_signal[key] = by_signal.get(key, 0) + 1
                    by_reason[write.reason] = by_reason.get(write.reason, 0) + 1
                if write.device in silent:
                    counts["writes_failed_device_silent"] += 1
                    continue
                try:
                    plant.write(write.device, write.signal, write.value)
                except (KeyError, ValueError) as exc:
                    counts["writes_rejected"] += 1
                    rejected.append(f"t={time_s:g} {exc}")
            next_control_s += config.cycle_s
        trace.record(time_s, status if not down else {}, down=down, silent=silent)
        end_s = time_s + PLANT_DT_S
        apply_events(time_s, end_s)
        plant_step(PLANT_DT_S)
        step_index += 1
        time_s = step_index * PLANT_DT_S
    finished = time.perf_counter()

    counts["rejected_examples"] = rejected[:10]
    # Write economy: minutes in which a device got more than one setpoint write while none of its
    # setpoints was ramping (steady state: at most the occasional lease refresh).
    busy: dict[str, int] = {}
    for (device, minute), n in per_minute.items():
        if n > 1 and (device, minute) not in ramp_minutes:
            busy[device] = busy.get(device, 0) + 1
    counts["busy_minutes_outside_ramps"] = busy
    counts["max_setpoint_writes_per_minute"] = max(per_minute.values(), default=0)
    cycles = sorted(cycle_times_s)
    timings = {
        "wall_s": round(finished - started, 3),
        "setup_s": round(built - started, 3),
        "simulated_s": duration_s,
        "speedup": round(duration_s / max(finished - built, 1e-9), 1),
        "cycles": len(cycles),
        "cycle_mean_us": round(1e6 * sum(cycles) / max(len(cycles), 1), 1),
        "cycle_p99_us": round(1e6 * cycles[int(0.99 * (len(cycles) - 1))], 1) if cycles else 0.0,
        "cycle_max_us": round(1e6 * cycles[-1], 1) if cycles else 0.0,
        "supervisor_share": round(sum(cycles) / max(finished - built, 1e-9), 3),
        # CPU seconds (this thread's): on a loaded machine the wall figures above include time
        # the process waited for a core; these do not.
        "cpu_s": round(thread_time() - started_cpu, 3),
        "supervisor_cpu_s": round(supervisor_cpu_s, 3),
    }
    metrics, checks = evaluate(trace, scenario, windows, config, crash_log=crash_log, counts=counts)
    summary = summarize(scenario, duration_s, seed, metrics, checks, counts, timings, windows, plant)
    if report_dir is not None:
        summary.files = write_report(summary, trace, windows, config, Path(report_dir), plot=plot)
    return summary


def summarize(
    scenario: Scenario,
    duration_s: float,
    seed: int,
    metrics: dict[str, Any],
    checks: dict[str, dict[str, Any]],
    counts: dict[str, Any],
    timings: dict[str, float],
    windows: list[Window],
    plant: Plant,
) -> Summary:
    """A run's summary (model level or real path): figures, checks, fault windows, plant events."""
    return Summary(
        scenario=scenario.name,
        description=scenario.description,
        duration_s=duration_s,
        seed=seed,
        metrics=metrics,
        checks=checks,
        counts=counts,
        timings=timings,
        windows=[
            {
                "kind": w.kind,
                "target": w.target,
                "start_s": w.start_s,
                "end_s": w.end_s if math.isfinite(w.end_s) else None,
            }
            for w in windows
        ],
        plant_events=[
            {"time_s": round(e.time_s, 1), "device": e.device, "kind": e.kind, "detail": e.detail}
            for e in plant.event_log
        ],
    )


def run_scenarios(
    names: list[str], *, report_dir: str | Path | None = None, plot: bool = False, workers: int = 1
) -> dict[str, dict[str, Any]]:
    """Run several scenarios, in ``workers`` processes; their summaries (``Summary.as_dict()``) by name.

    Longest first, so with two workers the reference day runs beside all the short ones.
    """
    ordered = sorted(names, key=lambda name: -load_scenario(name).duration_s)
    if workers <= 1:
        return {name: _run_as_dict(name, report_dir, plot) for name in ordered}
    # spawn: a clean interpreter per worker (fork would copy whatever threads the parent runs).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {name: pool.submit(_run_as_dict, name, report_dir, plot) for name in ordered}
        return {name: future.result() for name, future in futures.items()}


def _run_as_dict(name: str, report_dir: str | Path | None, plot: bool) -> dict[str, Any]:
    return run_scenario(name, report_dir=report_dir, plot=plot).as_dict()


def _watchdog_timeouts(plant: Plant, time_s: float) -> dict[str, Any]:
    """At a crash: each watched device's watchdog timeout, and whether it was under gateway control."""
    devices: dict[str, dict[str, Any]] = {}
    for cdu in plant.cdus:
        devices[cdu.name] = {"timeout_s": cdu.watchdog_timeout_s, "external": cdu.control_mode == 1}
    station = plant.station
    devices["hp-plc"] = {"timeout_s": station.watchdog_timeout_s, "external": station.watchdog_armed}
    return {"crash_s": time_s, "devices": devices}


def _on_local_values(plant: Plant) -> dict[str, bool]:
    """Per device with a watchdog: does it run on its local (fallback) values now?"""
    local = {
        cdu.name: cdu.control_mode == 0 and cdu.active_setpoint_c == cdu.cfg.local_setpoint_c for cdu in plant.cdus
    }
    station = plant.station
    hp = plant.config.heat_pumps
    local["hp-plc"] = (
        station.hp_supply_setpoint_c == hp.local_supply_setpoint_c
        and station.heat_power_limit_kw == hp.local_heat_power_limit_kw
        and station.dry_cooler_setpoint_c == plant.config.dry_coolers.local_setpoint_c
    )
    return local


def run_scenario_cli(args: argparse.Namespace) -> int:
    """``heat-gateway simulate --scenario NAME --fast [--report DIR] [--seed N]``: 0 all checks met, 1 not."""
    seed = args.seed if getattr(args, "seed", 0) else None
    summary = run_scenario(args.scenario, seed=seed, report_dir=args.report)
    print(format_summary(summary))  # noqa: T201 - the simulate command prints its summary
    return 0 if summary.passed else 1


def _verdict(check: dict[str, Any]) -> str:
    """ok, FAIL, or n/a for a criterion a window run had nothing to judge on (simulators/real_path.py)."""
    if check.get("judged") is False:
        return "n/a"
    return "ok" if check["ok"] else "FAIL"


def format_summary(summary: Summary) -> str:
    """A short human-readable summary: timings, the main figures and every check."""
    t = summary.timings
    m = summary.metrics

    def f(key: str, digits: int = 2) -> str:
        value = m.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        (
            f"scenario {summary.scenario}: {summary.duration_s / 3600:g} h simulated in {t['wall_s']:.1f} s "
            f"({t['speedup']:.0f}x real time), supervisor cycle mean {t['cycle_mean_us']:.0f} us, "
            f"p99 {t['cycle_p99_us']:.0f} us"
        ),
        (
            f"  DH supply vs requirement: RMS {f('dh_supply_dev_rms_k', 3)} K, max {f('dh_supply_dev_max_k')} K "
            f"(settled: max {f('dh_supply_dev_max_settled_k')} K)"
        ),
        (
            f"  heat vs order: mean |error| {f('heat_error_mean_pct')} %, p95 {f('heat_error_p95_pct')} %, "
            f"within 2 % {f('heat_within_2pct_share', 4)}, worst hour {f('heat_hourly_error_max_pct')} %"
        ),
        (
            f"  hottest rack loop {f('tcs_max_c')} °C, seconds above the IT limit {f('tcs_over_limit_s', 0)}; "
            f"writes {summary.counts['writes_total']} ({summary.counts['writes_out_of_limits']} outside profile "
            f"limits, {summary.counts['writes_rejected']} rejected)"
        ),
        (
            f"  writes: {summary.counts['setpoint_writes']} setpoint, {summary.counts['heartbeats']} heartbeat; "
            f"minutes with more than one setpoint write to a device outside ramps: "
            f"{sum(summary.counts['busy_minutes_outside_ramps'].values())} "
            f"{summary.counts['busy_minutes_outside_ramps'] or ''}".rstrip()
        ),
    ]
    lines.extend(
        f"  [{_verdict(check)}] {name}: {check['value']} (target {check['target']})"
        + (f" {check['why']}" if "why" in check else "")
        for name, check in summary.checks.items()
    )
    for name, path in summary.files.items():
        lines.append(f"  {name}: {path}")
    lines.append("PASSED" if summary.passed else "FAILED")
    return "\n".join(lines)
