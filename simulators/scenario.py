# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Scenarios: timed events for the plant model, as YAML files (``simulators/scenarios/``).

A scenario file::

    name: reference-day
    description: ...
    duration_s: 86400
    seed: 1
    plant: {site: {it_load_mw: 15.0}}     # PlantConfig overrides, validated
    events:
      - {at_s: 0, set: {outdoor_temp_c: 2.0}}
      - {at_s: 3600, ramp: {it_load_mw: 15.0}, over_s: 600}
      - {at_s: 3600, set: {cdu_load_factor: 1.3}, target: cdu-5}
      - {at_s: 7200, event: heat_pump_trip, target: hp-1, duration_s: 600}
      - {at_s: 9000, event: device_silent, target: cdu-3, duration_s: 600}

Three kinds of entries:

- ``set`` (step) and ``ramp`` (linear over ``over_s``, from whatever the value is then) of the
  plant inputs in :data:`simulators.plant.INPUTS`. Later entries win: a ramp cut short by a
  later set stops where it was.
- plant **events**, applied to the plant by :meth:`Scenario.apply_plant_events`:
  ``heat_pump_trip`` (target ``hp-N``), ``dh_pump_trip``, ``dh_return_too_hot`` (``value``
  = the return temperature while it lasts), ``sensor_freeze`` (target ``device.signal``),
  ``cdu_leak`` (target ``cdu-N``), ``meter_offset`` (``value`` = K the meter reads below the
  station from then on: the station's supply sensor shifts, see
  :meth:`Plant.set_meter_offset <simulators.plant.Plant.set_meter_offset>`; a calibration
  change the controller must learn, so it is no fault window in the report). ``duration_s``
  is how long the cause lasts (absent: to the end); trips latch in the PLC until reset.
- **harness** events, which are no plant physics: ``device_silent`` (target a device: its
  protocol server stops answering), ``gateway_crash`` (``duration_s``: until the harness
  restarts the gateway). A harness gets them from :meth:`Scenario.events_between` and acts.

``utility_link_lost`` is both: the plant applies it to the panel PC (``utility_link_ok`` goes
0, the order shown there freezes and ``utility_order_age_s`` grows, while the utility's real
order keeps following the scenario), and a harness sees it too, e.g. to cut a real link.

Time semantics: :meth:`Scenario.apply_plant_events` for the interval ``[t0, t1)`` applies
every event that starts or ends in it and sets each scheduled input to its value just before
``t1`` (so a set at exactly ``t1`` belongs to the next interval). Call it, then step the plant
from ``t0`` to ``t1``; :class:`ScenarioRunner` does exactly that.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from simulators.plant import INPUTS, Plant, PlantConfig

__all__ = [
    "BOTH_EVENTS",
    "CALIBRATION_EVENTS",
    "HARNESS_EVENTS",
    "PLANT_EVENTS",
    "SCENARIO_DIR",
    "Criterion",
    "Scenario",
    "ScenarioError",
    "ScenarioEvent",
    "ScenarioRunner",
    "builtin_scenarios",
    "load_builtin",
    "load_scenario",
]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

PLANT_EVENTS = frozenset(
    {"heat_pump_trip", "dh_pump_trip", "dh_return_too_hot", "sensor_freeze", "cdu_leak", "meter_offset"}
)
CALIBRATION_EVENTS = frozenset({"meter_offset"})
"""Plant events the controller must absorb: the report judges through them (no fault window)."""
HARNESS_EVENTS = frozenset({"device_silent", "gateway_crash"})
BOTH_EVENTS = frozenset({"utility_link_lost"})

EventKind = Literal[
    "heat_pump_trip",
    "dh_pump_trip",
    "dh_return_too_hot",
    "sensor_freeze",
    "cdu_leak",
    "meter_offset",
    "utility_link_lost",
    "device_silent",
    "gateway_crash",
]
Scope = Literal["plant", "harness", "both"]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the key path."""


class ScenarioEvent(BaseModel):
    """One entry of ``events:``; exactly one of ``set``, ``ramp`` or ``event``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0.0, description="When it happens, seconds from the scenario start")
    set: dict[str, float] | None = Field(None, description="Plant inputs stepped to these values")
    ramp: dict[str, float] | None = Field(None, description="Plant inputs ramped to these values")
    over_s: float | None = Field(None, gt=0.0, description="Ramp duration (ramp only)")
    event: EventKind | None = Field(None, description="A plant or harness event")
    target: str | None = Field(None, description="cdu-N / hp-N / a device / device.signal, as the kind needs")
    duration_s: float | None = Field(None, gt=0.0, description="How long the event lasts; absent: to the end")
    value: float | None = Field(
        None, description="dh_return_too_hot: the return temperature, °C; meter_offset: K the meter reads low"
    )
    note: str | None = Field(None, description="Free text for people reading the file")

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [name for name in ("set", "ramp", "event") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of set, ramp or event, got {given or 'none'}")
        values = self.set if self.set is not None else self.ramp
        if values is not None:
            if not values:
                raise ValueError("set/ramp needs at least one input")
            for name, value in values.items():
                if name not in INPUTS:
                    raise ValueError(f"unknown input {name!r}; known: {', '.join(sorted(INPUTS))}")
                if not math.isfinite(value):
                    raise ValueError(f"{name}: {value} is not a finite number")
            if "cdu_load_factor" in values and not (self.target or "").startswith("cdu-"):
                raise ValueError("cdu_load_factor needs target: cdu-N")
            if self.ramp is not None and self.over_s is None:
                raise ValueError("a ramp needs over_s")
            if self.set is not None and self.over_s is not None:
                raise ValueError("over_s belongs to a ramp, not to a set")
            return self
        if self.over_s is not None:
            raise ValueError("over_s belongs to a ramp, not to an event")
        kind = self.event
        if kind == "heat_pump_trip" and not (self.target or "").startswith("hp-"):
            raise ValueError("heat_pump_trip needs target: hp-N")
        if kind == "cdu_leak" and not (self.target or "").startswith("cdu-"):
            raise ValueError("cdu_leak needs target: cdu-N")
        if kind == "sensor_freeze" and "." not in (self.target or ""):
            raise ValueError("sensor_freeze needs target: device.signal")
        if kind == "device_silent" and not self.target:
            raise ValueError("device_silent needs a target device")
        if kind == "dh_return_too_hot" and (self.value is None or self.duration_s is None):
            raise ValueError("dh_return_too_hot needs value (°C) and duration_s")
        if kind == "meter_offset" and (self.value is None or not -10.0 <= self.value <= 10.0):
            raise ValueError("meter_offset needs value: the offset in K (within +/-10)")
        return self

    @property
    def kind(self) -> str:
        """``set``, ``ramp`` or the event kind."""
        if self.event is not None:
            return self.event
        return "set" if self.set is not None else "ramp"

    @property
    def scope(self) -> Scope:
        """``plant`` (applied to the plant), ``harness`` (for the harness) or ``both``."""
        if self.event in HARNESS_EVENTS:
            return "harness"
        if self.event in BOTH_EVENTS:
            return "both"
        return "plant"

    @property
    def end_s(self) -> float:
        """When the event's cause ends (``inf`` without a duration; ramps: their end)."""
        if self.over_s is not None:
            return self.at_s + self.over_s
        return self.at_s + self.duration_s if self.duration_s is not None else math.inf


@dataclass(frozen=True, slots=True)
class _Action:
    """A discrete change: the start or end of an event's cause."""

    time_s: float
    order: int
    event: ScenarioEvent
    start: bool


class _Schedule:
    """A piecewise-linear input over time, with ``(start, end, value)`` overrides on top."""

    def __init__(self, initial: float) -> None:
        self.times: list[float] = [0.0]
        self.values: list[float] = [initial]
        self.overrides: list[tuple[float, float, float]] = []

    def value_before(self, time_s: float) -> float:
        """The value just before ``time_s`` (left limit; a step at ``time_s`` is not in it)."""
        if self.overrides:
            for start, end, value in reversed(self.overrides):
                if start < time_s <= end:
                    return value
        return self._interpolate(bisect.bisect_left(self.times, time_s), time_s)

    def value_at(self, time_s: float) -> float:
        """The value at ``time_s`` (a step at ``time_s`` included)."""
        if self.overrides:
            for start, end, value in reversed(self.overrides):
                if start <= time_s < end:
                    return value
        return self._interpolate(bisect.bisect_right(self.times, time_s), time_s)

    def flat_span(self, time_s: float) -> tuple[float, float] | None:
        """``(lo, hi)``: :meth:`value_before` gives the same bits for every time in ``(lo, hi]``
        as for ``time_s`` (a flat segment, before the first or after the last breakpoint); None
        when it may not (a ramp, or overrides)."""
        if self.overrides:
            return None
        times = self.times
        index = bisect.bisect_left(times, time_s)
        if index == 0:
            return (-math.inf, times[0])
        if index >= len(times):
            return (times[-1], math.inf)
        v0, v1 = self.values[index - 1], self.values[index]
        # (t0, t1] with t0 < t1: v0 + 0.0 * (t - t0) / (t1 - t0) is the same for each t (NaN: never set).
        if v0 == v1 or (math.isnan(v0) and math.isnan(v1)):
            return (times[index - 1], times[index])
        return None

    def _interpolate(self, index: int, time_s: float) -> float:
        """Between breakpoints ``index - 1`` and ``index``."""
        times = self.times
        if index == 0:
            return self.values[0]
        if index >= len(times):
            return self.values[-1]
        t0, t1 = times[index - 1], times[index]
        v0, v1 = self.values[index - 1], self.values[index]
        if t1 <= t0:
            return v1
        return v0 + (v1 - v0) * (time_s - t0) / (t1 - t0)

    def add(self, at_s: float, value: float, over_s: float | None) -> None:
        """A step (``over_s`` None) or a ramp to ``value`` starting at ``at_s``."""
        current = self.value_at(at_s)
        if math.isnan(current):
            current = value  # no start value (the utility's weather curve): a ramp is a step
        cut = bisect.bisect_right(self.times, at_s)
        # A later entry wins: drop whatever was scheduled after it.
        del self.times[cut:]
        del self.values[cut:]
        self.times.append(at_s)
        self.values.append(current)
        self.times.append(at_s + (over_s or 0.0))
        self.values.append(value)


class _Timeline:
    """A scenario compiled: input schedules, discrete actions and the events in time order."""

    __slots__ = ("action_times", "actions", "event_times", "ordered", "schedules")

    def __init__(
        self,
        schedules: dict[tuple[str, str | None], _Schedule],
        actions: list[_Action],
        ordered: list[ScenarioEvent],
    ) -> None:
        self.schedules = schedules
        self.actions = actions
        self.action_times = [action.time_s for action in actions]
        self.ordered = ordered
        self.event_times = [event.at_s for event in ordered]


class Criterion(BaseModel):
    """A pass criterion on one metric of the report: ``min`` and/or ``max`` (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = Field(None, description="The metric must be at least this")
    max: float | None = Field(None, description="The metric must be at most this")
    why: str | None = Field(None, description="Where the figure comes from (for people reading the file)")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("a criterion needs min, max or both")
        return self

    @property
    def target(self) -> str:
        """``>= 0.99``, ``<= 0.3`` or ``0.1 .. 0.3``."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} .. {self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"

    def met(self, value: object) -> bool:
        """True when ``value`` is a number within the bounds (a missing metric never meets one)."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Scenario(BaseModel):
    """A validated scenario; build one with :func:`load_scenario` or :meth:`from_yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Short name (the file name without .yaml)")
    description: str = Field("", description="What the scenario exercises")
    duration_s: float = Field(gt=0.0, description="How long it runs")
    seed: int = Field(0, description="Seed of the plant's sensor noise")
    plant: PlantConfig = Field(default_factory=PlantConfig, description="PlantConfig overrides")
    events: list[ScenarioEvent] = Field(default_factory=list, description="Timed entries")
    criteria: dict[str, Criterion] = Field(
        default_factory=dict,
        description="Pass criteria: report metric -> {min, max}; the safety checks (0 s above the IT "
        "limit, 0 writes outside limits or refused) apply to every scenario on top",
    )

    # One plain object: a pydantic private attribute costs a __getattr__ per access, and the
    # harness asks twice per simulated second.
    _timeline: _Timeline = PrivateAttr(default_factory=lambda: _Timeline({}, [], []))

    @model_validator(mode="after")
    def _check_targets(self) -> Self:
        cdus = {f"cdu-{i}" for i in range(1, self.plant.cdu.count + 1)}
        pumps = {f"hp-{i}" for i in range(1, self.plant.heat_pumps.count + 1)}
        devices = cdus | {"heat-meter", "hp-plc", "panel-pc"}
        for index, event in enumerate(self.events):
            where = f"events[{index}]"
            if event.at_s > self.duration_s:
                raise ValueError(f"{where}.at_s: {event.at_s:g} is after duration_s {self.duration_s:g}")
            target = event.target
            if target is None:
                continue
            if event.kind in ("set", "ramp", "cdu_leak") and target not in cdus:
                raise ValueError(f"{where}.target: {target!r} is not one of cdu-1..cdu-{len(cdus)}")
            if event.kind == "heat_pump_trip" and target not in pumps:
                raise ValueError(f"{where}.target: {target!r} is not one of hp-1..hp-{len(pumps)}")
            if event.kind == "device_silent" and target not in devices:
                raise ValueError(f"{where}.target: {target!r} is not a device of this plant")
            if event.kind == "sensor_freeze" and target.split(".", 1)[0] not in devices:
                raise ValueError(f"{where}.target: {target!r} does not start with a device name")
        return self

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Scenario:
        """Parse and validate YAML text; errors name ``source`` and the key path."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ScenarioError(f"{source}: expected a mapping at the top level")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"{source}: {exc.error_count()} error(s) in the scenario"]
            for error in exc.errors():
                message = error["msg"].removeprefix("Value error, ")
                # Whole-scenario checks put the key path into the message themselves.
                lines.append(f"  {_key_path(error['loc'])}: {message}" if error["loc"] else f"  {message}")
            raise ScenarioError("\n".join(lines)) from None

    def plant_config(self) -> PlantConfig:
        """The plant configuration this scenario runs (defaults plus its overrides)."""
        return self.plant

    # -- timeline --------------------------------------------------------------------------

    def model_post_init(self, context: object, /) -> None:
        """Compile the events into input schedules and a list of discrete actions."""
        del context
        ordered = sorted(enumerate(self.events), key=lambda item: (item[1].at_s, item[0]))
        schedules: dict[tuple[str, str | None], _Schedule] = {}
        actions: list[_Action] = []
        for order, event in ordered:
            values = event.set if event.set is not None else event.ramp
            if values is not None:
                for name, value in values.items():
                    key = (name, event.target if name == "cdu_load_factor" else None)
                    if key not in schedules:
                        schedules[key] = _Schedule(self._initial(name))
                    schedules[key].add(event.at_s, value, event.over_s)
                continue
            if event.kind == "dh_return_too_hot":
                key = ("dh_return_temp_c", None)
                if key not in schedules:
                    schedules[key] = _Schedule(self._initial("dh_return_temp_c"))
                assert event.value is not None
                schedules[key].overrides.append((event.at_s, event.end_s, event.value))
                continue
            actions.append(_Action(event.at_s, order, event, start=True))
            if math.isfinite(event.end_s):
                actions.append(_Action(event.end_s, order, event, start=False))
        actions.sort(key=lambda action: (action.time_s, action.order, action.start))
        self._timeline = _Timeline(schedules, actions, [event for _, event in ordered])

    def _initial(self, name: str) -> float:
        plant = self.plant
        dh = plant.district_heating
        initial = {
            "it_load_mw": plant.site.it_load_mw,
            "outdoor_temp_c": plant.site.outdoor_temp_c,
            "dh_return_temp_c": dh.return_temp_c,
            "utility_heat_order_mw": dh.heat_order_mw,
            "utility_supply_temp_c": dh.supply_temp_requirement_c,
            "cdu_load_factor": 1.0,
        }[name]
        if initial is None:
            # The utility follows its weather curve until the scenario names a value; a ramp
            # from "the curve" has no start, so a set must come first.
            return math.nan
        return initial

    def input_value(self, name: str, time_s: float, *, target: str | None = None) -> float | None:
        """The scheduled value of an input at ``time_s``; None if the scenario never sets it."""
        schedule = self._timeline.schedules.get((name, target))
        return None if schedule is None else schedule.value_at(time_s)

    def input_schedule(self, name: str, *, target: str | None = None) -> Callable[[float], float] | None:
        """:meth:`input_value` of one input as a function of time (looked up once); None if never set."""
        schedule = self._timeline.schedules.get((name, target))
        return None if schedule is None else schedule.value_at

    def events_between(self, t0_s: float, t1_s: float, *, scope: Scope | None = None) -> list[ScenarioEvent]:
        """Entries that start in ``[t0_s, t1_s)``, in time order; optionally of one scope.

        ``scope="harness"`` also returns ``both`` events (a harness acts on those too).
        """
        timeline = self._timeline
        times = timeline.event_times
        found = timeline.ordered[bisect.bisect_left(times, t0_s) : bisect.bisect_left(times, t1_s)]
        if scope is None:
            return found
        if scope == "harness":
            return [event for event in found if event.scope in ("harness", "both")]
        return [event for event in found if event.scope == scope]

    def plant_events_of(self, plant: Plant) -> Callable[[float, float], list[ScenarioEvent]]:
        """:meth:`apply_plant_events` on ``plant``, for a caller through which alone its inputs are set.

        ``apply(t0_s, t1_s)`` does what ``apply_plant_events(plant, t0_s, t1_s)`` does, but sets
        an input again only when its schedule can give another value than the one it set last:
        within a flat stretch of a schedule (most of a run, for most inputs) setting the same
        value again changes nothing in the plant, so it is skipped (the harness's loop: seven
        schedules a simulated second otherwise).
        """
        timeline = self._timeline
        schedules = [(name, target, schedule) for (name, target), schedule in timeline.schedules.items()]
        # Per schedule, the (lo, hi] span whose value was set last: none yet.
        spans: list[tuple[float, float]] = [(math.inf, -math.inf)] * len(schedules)
        times = timeline.action_times
        set_input = plant.set_input
        isnan = math.isnan

        def apply(t0_s: float, t1_s: float) -> list[ScenarioEvent]:
            for index, (name, target, schedule) in enumerate(schedules):
                lo, hi = spans[index]
                if lo < t1_s <= hi:
                    continue
                value = schedule.value_before(t1_s)
                if not isnan(value):
                    set_input(name, value, target=target)
                spans[index] = schedule.flat_span(t1_s) or (math.inf, -math.inf)
            return _apply_actions(plant, timeline, t0_s, t1_s) if times else []

        return apply

    def apply_plant_events(self, plant: Plant, t0_s: float, t1_s: float) -> list[ScenarioEvent]:
        """Apply what happens to the plant in ``[t0_s, t1_s)``; the events started or ended.

        Scheduled inputs are set to their value just before ``t1_s``; fault causes switch on
        at their start and off at their end. Harness events are left to the harness.
        """
        timeline = self._timeline
        for (name, target), schedule in timeline.schedules.items():
            value = schedule.value_before(t1_s)
            if not math.isnan(value):
                plant.set_input(name, value, target=target)
        return _apply_actions(plant, timeline, t0_s, t1_s)


def _apply_actions(plant: Plant, timeline: _Timeline, t0_s: float, t1_s: float) -> list[ScenarioEvent]:
    """The fault causes that start or end in ``[t0_s, t1_s)`` applied to ``plant`` (harness events left out)."""
    times = timeline.action_times
    applied: list[ScenarioEvent] = []
    for action in timeline.actions[bisect.bisect_left(times, t0_s) : bisect.bisect_left(times, t1_s)]:
        event = action.event
        if event.scope == "harness":
            continue
        _apply(plant, event, start=action.start)
        applied.append(event)
    return applied


def _apply(plant: Plant, event: ScenarioEvent, *, start: bool) -> None:
    kind = event.kind
    if kind == "sensor_freeze":
        assert event.target is not None
        device, signal = event.target.split(".", 1)
        if start:
            plant.freeze_sensor(device, signal)
        else:
            plant.unfreeze_sensor(device, signal)
    elif kind == "meter_offset":
        assert event.value is not None
        plant.set_meter_offset(event.value if start else 0.0)
    else:
        plant.set_fault(kind, start, target=event.target)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


class ScenarioRunner:
    """Drives a plant through a scenario: apply plant events, step, hand back harness events."""

    def __init__(self, scenario: Scenario, *, plant: Plant | None = None) -> None:
        self.scenario = scenario
        self.plant = plant if plant is not None else Plant(scenario.plant, seed=scenario.seed)
        self._start_s = self.plant.time_s

    @property
    def time_s(self) -> float:
        """Scenario time (the plant's time since the runner was made)."""
        return self.plant.time_s - self._start_s

    @property
    def finished(self) -> bool:
        """True once the scenario's duration has passed."""
        return self.time_s >= self.scenario.duration_s - 1e-9

    def advance(self, dt_s: float) -> list[ScenarioEvent]:
        """Apply ``[t, t + dt_s)`` to the plant, step it, return the harness events due in it."""
        t0 = self.time_s
        t1 = t0 + dt_s
        self.scenario.apply_plant_events(self.plant, t0, t1)
        self.plant.step(dt_s)
        return self.scenario.events_between(t0, t1, scope="harness")

    def run(
        self,
        dt_s: float,
        *,
        until_s: float | None = None,
        on_step: Callable[[ScenarioRunner, list[ScenarioEvent]], None] | None = None,
    ) -> None:
        """Advance in steps of ``dt_s`` up to ``until_s`` (default: the scenario's end)."""
        end = self.scenario.duration_s if until_s is None else until_s
        while self.time_s < end - 1e-9:
            events = self.advance(min(dt_s, end - self.time_s))
            if on_step is not None:
                on_step(self, events)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; :class:`ScenarioError` names the file and key.

    A bare name without ``.yaml`` that is no file (``reference-day``) loads the shipped one.
    """
    path = Path(path)
    if not path.exists() and path.suffix == "" and path.name == str(path):
        path = SCENARIO_DIR / f"{path.name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    return Scenario.from_yaml(text, source=str(path))


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``simulators/scenarios``."""
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))


def load_builtin(name: str) -> Scenario:
    """A shipped scenario by name (``reference-day``, ``heat-pump-trip``, ...)."""
    path = SCENARIO_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ScenarioError(f"no scenario {name!r}; shipped: {', '.join(builtin_scenarios())}")
    return load_scenario(path)
