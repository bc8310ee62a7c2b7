"""What the supervisor remembers between cycles, and the small records it is made of.

Frozen values only: a cycle reads the state it is given and returns a new one
(:class:`gateway.control.supervisor.Supervisor.step`), so a state can be kept, compared, or
replayed in a table test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.control.blocks import AlarmState, HoldState, OnOffState, RampState
from gateway.control.commands import Mode
from gateway.control.pid import PidState
from gateway.control.writes import Lease, SignalKey

__all__ = ["SupervisorState", "TimedValue", "Watch"]


class TimedValue(NamedTuple):
    """A value and the time it was last updated (a filter's state; a named tuple: three a cycle)."""

    value: float
    time_s: float


class Watch(NamedTuple):
    """A reading watched for freezing: what it is, since when, and how it used to change."""

    value: float
    since_s: float
    smallest_step: float
    """Smallest change seen: the signal's resolution (or less, for a float)."""
    typical_step: float
    """Running mean of its changes: near ``smallest_step`` = a quantised, quiet signal."""
    witness: float
    """The witness signal's value when this one last changed (NaN: none)."""
    witness_away_s: float = math.nan
    """Since when the witness has been more than ``stuck_witness_k`` from ``witness`` (NaN: it is not)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorState:
    """Everything the supervisor remembers between cycles. Start with ``SupervisorState()``.

    A restarted gateway starts from a fresh state: every ramp then starts from the devices'
    read-back values, so the take-over is bumpless without anything persisted.
    """

    mode: Mode = Mode.AUTO
    manual_supply_temp_c: float | None = None
    """Operator's DH supply setpoint for manual mode (None: the last written one)."""
    manual_heat_power_kw: float | None = None
    """Operator's heat-power limit for manual mode (None: the last written one)."""
    dh_trim: PidState = field(default_factory=PidState)
    """DH supply PI (trim in K)."""
    dh_applied_trim_k: float | None = None
    """Setpoint actually written minus requirement last cycle (the trim integrates only if it is its own)."""
    last_requirement_c: float | None = None
    dh_disturbed_s: float | None = None
    """Last time the requirement changed or the station was off its setpoint (trims hold after it)."""
    order_trim: PidState = field(default_factory=PidState)
    """Heat-order PI (trim in kW)."""
    order_applied_trim_kw: float | None = None
    order_hold: HoldState = field(default_factory=HoldState)
    requirement_hold: HoldState = field(default_factory=HoldState)
    cdu_ceiling: RampState | None = None
    """Common ceiling of the CDU setpoints (raised slowly, backed off fast)."""
    last_backoff_s: float | None = None
    ramps: Mapping[SignalKey, RampState] = field(default_factory=dict)
    """Rate limit of every written setpoint."""
    leases: Mapping[SignalKey, Lease] = field(default_factory=dict)
    """Last value written to every signal and when."""
    heartbeats: Mapping[str, Lease] = field(default_factory=dict)
    """Per device: the heartbeat value last written and when."""
    budgets: Mapping[str, Lease] = field(default_factory=dict)
    """Per device whose budget is not full: setpoint writes left in it (token bucket) and when."""
    budgets_time_s: float | None = None
    """When the budgets were last brought up to date: a device not in ``budgets`` had a full one then."""
    setpoint_writes_total: int = 0
    heartbeat_writes_total: int = 0
    hp_enable: OnOffState = field(default_factory=OnOffState)
    deviation_alarm: AlarmState = field(default_factory=AlarmState)
    stuck: Mapping[SignalKey, Watch] = field(default_factory=dict)
    """Watched readings: last value, since when, how they used to change, the witness then."""
    panel_seen: tuple[float, float | None, float | None] | None = None
    """Panel operator switch and manual values last seen (their changes are commands)."""
    outdoor: TimedValue | None = None
    """Low-passed outdoor temperature for the weather curve, and when it was last updated."""
    meter_filtered: tuple[TimedValue, TimedValue] | None = None
    """Low-passed heat-meter supply temperature and heat power (None while the meter is stale)."""
