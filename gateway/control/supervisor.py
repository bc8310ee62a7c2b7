"""The supervisory control loop: waste heat to the DH setpoint, IT cooling always first.

A pure controller: ``Supervisor.step(view, state, now_s)`` reads a frozen view of the process
image, returns the writes for this cycle and the new state. No I/O, no clock; the live service
and the simulation harness call it the same way. Signal flow (docs/control.md has the figure):

    panel-pc ── order, requirement, link ──► hold / weather curve ─┐
    heat-meter ── supply, return, heat ────► DH supply PI (trim) ──┼─► min-select ─► hp-plc.hp_supply_setpoint_c
                                         └─► order PI (trim) ──────┼─► min-select ─► hp-plc.heat_power_limit_kw
    hp-plc ── DH/FWS temps, trips ─────────► overrides ────────────┘
    CDUs ── supply, valve, it_limit ───────► ceiling (raise / back off) ─► cdu-N.tcs_supply_setpoint_c
                                                                      └► hp-plc.dry_cooler_setpoint_c

Priorities (highest first): safe states on stale data; IT-priority overrides (min-select:
facility water too hot, rack loop near its limit, DH over-temperature, heat-pump source,
capacity and staging limits); the DH supply loop; the heat-order loop; the source-temperature
optimisation. The CDUs' and the PLC's own controllers keep the IT safe; this loop only moves
their setpoints, and every write is a lease that expires with the heartbeat. docs/control.md
has the tables (min-selects, input lost -> what happens, tuning, figures per scenario).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.config.control import ControlConfig
from gateway.config.profile import HeartbeatMode
from gateway.control.blocks import (
    AlarmState,
    DelayedAlarm,
    HoldState,
    HoldThenFallback,
    MinOnOffTimer,
    OnOffState,
    OrderSource,
    RampLimiter,
    RampState,
    select_min,
    weather_curve_supply_c,
)
from gateway.control.commands import Mode, check_values
from gateway.control.pid import ControlMode, PidConfig, PidState, pid_step
from gateway.control.roles import RoleMap, role_map_of_site
from gateway.control.writes import HEARTBEAT_REASON, Lease, SignalKey, Write, WriteBook, WriteLimits, spend_budget

if TYPE_CHECKING:
    from gateway.config.loader import Site

__all__ = [
    "CommandAck",
    "Mode",
    "ProcessView",
    "StepResult",
    "Supervisor",
    "SupervisorState",
    "Write",
    "WriteLimits",
    "supervisor_for_site",
    "write_limits_of",
]

WATER_CP_KJ_KGK = 4.18
_INTERLOCK_DH_TOO_HOT = 2  # hp-plc interlock_status bit: DH water entering the condensers too hot
_MIN_DELIVERY_DT_K = 5.0  # below this meter dT the DH side is not really delivering
_SOURCE_NAMES = {OrderSource.UTILITY: "utility", OrderSource.HELD: "held", OrderSource.FALLBACK: "weather_curve"}


class ProcessView(Protocol):
    """What the supervisor reads: the gateway's `Snapshot` or the harness's plant view."""

    def good(self, device: str, signal: str, max_age_s: float) -> float | None:
        """The value if good and fresh, else None."""
        ...


_PANEL_MODES = {0.0: Mode.OFF, 1.0: Mode.MANUAL, 2.0: Mode.AUTO}


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedValue:
    """A value and the time it was last updated (a filter's state)."""

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
    """Per device: setpoint writes left in its budget (token bucket) and when."""
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


@dataclass(frozen=True, slots=True)
class StepResult:
    """One cycle's output: writes in the order to send them, the new state, the status."""

    writes: list[Write]
    state: SupervisorState
    status: dict[str, float | str | bool]


@dataclass(frozen=True, slots=True)
class CommandAck:
    """Answer to an operator command: accepted or rejected, and why."""

    accepted: bool
    reason: str


@dataclass(slots=True)
class _Cdu:
    """One CDU as seen this cycle."""

    name: str
    fresh: bool
    mode: float = 0.0
    active_setpoint_c: float = math.nan
    hottest_c: float = math.nan
    valve_pct: float = math.nan
    it_limit_c: float = math.nan


class Supervisor:
    """The supervisory controller. Pure: all state is passed in and returned.

    ``roles`` (:mod:`gateway.control.roles`) says which device has which role, where each role
    input is read and which profile signal each role output is: only those outputs and the
    declared heartbeats are ever written, never outside the profile's limits.
    """

    def __init__(self, config: ControlConfig, roles: RoleMap) -> None:
        self.config = cfg = config
        self.roles = roles
        self.outputs = roles.output_specs()
        self.limits: WriteLimits = roles.write_limits()
        self.cdus = roles.cdus
        if not self.cdus:
            raise ValueError("Supervisor: no CDUs (set control.cdu_devices or give devices the kind cdu)")
        self._meter = roles.heat_meter
        self._plc = roles.station_plc
        self._panel = roles.panel
        self._dh_trim_pid = PidConfig(
            kp=cfg.dh_trim_kp_k_per_k,
            ti_s=cfg.dh_trim_ti_s,
            out_min=-cfg.dh_trim_max_k,
            out_max=cfg.dh_trim_max_k,
            # P on the measurement only: a requirement step goes straight to the PLC (which
            # holds the station supply itself) instead of kicking the trim.
            setpoint_weight=0.0,
            max_dt_s=10.0 * cfg.cycle_s,
        )
        self._order_pid = PidConfig(
            kp=cfg.order_trim_kp,
            ti_s=cfg.order_trim_ti_s,
            out_min=-cfg.order_trim_max_kw,
            out_max=cfg.order_trim_max_kw,
            setpoint_weight=0.0,
            max_dt_s=10.0 * cfg.cycle_s,
        )
        self._hold = HoldThenFallback(hold_s=cfg.utility_hold_s)
        self._hp_timer = MinOnOffTimer(min_on_s=cfg.hp_min_on_s, min_off_s=cfg.hp_min_off_s)
        self._deviation_alarm = DelayedAlarm(
            on_threshold=cfg.deviation_alarm_k,
            off_threshold=cfg.deviation_alarm_k - cfg.deviation_alarm_hysteresis_k,
            on_delay_s=cfg.deviation_alarm_delay_s,
        )
        self._ceiling_ramp = RampLimiter(
            up_per_s=cfg.cdu_setpoint_raise_k_per_min / 60.0,
            down_per_s=cfg.cdu_setpoint_lower_k_per_min / 60.0,
            max_dt_s=10.0 * cfg.cycle_s,
        )
        max_dt_s = 10.0 * cfg.cycle_s
        self._ramps = {
            "tcs_supply_setpoint_c": self._ceiling_ramp,
            "hp_supply_setpoint_c": RampLimiter(up_per_s=cfg.dh_supply_ramp_k_per_min / 60.0, max_dt_s=max_dt_s),
            "heat_power_limit_kw": RampLimiter(
                up_per_s=cfg.heat_power_limit_ramp_up_kw_per_s,
                down_per_s=cfg.heat_power_limit_ramp_down_kw_per_s,
                max_dt_s=max_dt_s,
            ),
            "dry_cooler_setpoint_c": RampLimiter(
                up_per_s=cfg.dry_cooler_setpoint_raise_k_per_min / 60.0,
                down_per_s=cfg.dry_cooler_setpoint_lower_k_per_min / 60.0,
                max_dt_s=max_dt_s,
            ),
        }
        self._heartbeats = {name: role.heartbeat for name, role in roles.devices.items() if role.heartbeat}
        self._budgets = {name: role.write_budget_per_h for name, role in roles.devices.items() if role.outputs}
        # The trims integrate only while the written value is their own output: "their own"
        # within what the write economy lets through (deadband, resolution).
        self._supply_tolerance_k = self._tolerance((self._plc, "hp_supply_setpoint_c"), 0.02)
        self._limit_tolerance_kw = self._tolerance((self._plc, "heat_power_limit_kw"), 20.0)
        self._supply_range_c = self._range(
            (self._plc, "hp_supply_setpoint_c"), cfg.dh_min_supply_temp_c, cfg.dh_max_supply_temp_c
        )
        self._heat_range_kw = self._range((self._plc, "heat_power_limit_kw"), 0.0, math.inf)

    def _range(self, key: SignalKey, low: float, high: float) -> tuple[float, float]:
        spec = self.outputs.get(key)
        if spec is None:
            return (low, high)
        return (max(low, spec.low), min(high, spec.high))

    def _tolerance(self, key: SignalKey, least: float) -> float:
        spec = self.outputs.get(key)
        return least if spec is None else max(least, spec.deadband + spec.resolution)

    # -- operator commands ---------------------------------------------------------------------

    def apply_command(self, state: SupervisorState, command: object) -> tuple[SupervisorState, CommandAck]:
        """Validate an operator command and apply it to the state.

        A command is a mapping with any of ``mode`` (``auto``, ``manual``, ``off``),
        ``manual_supply_temp_c`` and ``manual_heat_power_kw``. Anything else, a wrong type, a
        non-finite number or a value outside the configured and profile limits rejects the
        whole command with the reason; the state is then returned unchanged. Entering manual
        without values keeps the setpoints last written (bumpless).
        """
        checked = self._check_command(command)
        if isinstance(checked, str):
            return state, CommandAck(accepted=False, reason=checked)
        mode, supply_c, heat_kw = checked
        new_mode = mode if mode is not None else state.mode
        if new_mode is Mode.MANUAL and state.mode is not Mode.MANUAL:
            # Bumpless into manual: without an operator value, keep what is on the device now.
            if supply_c is None:
                lease = state.leases.get((self._plc, "hp_supply_setpoint_c"))
                supply_c = lease.value if lease is not None else None
            if heat_kw is None:
                lease = state.leases.get((self._plc, "heat_power_limit_kw"))
                heat_kw = lease.value if lease is not None else None
        else:
            supply_c = supply_c if supply_c is not None else state.manual_supply_temp_c
            heat_kw = heat_kw if heat_kw is not None else state.manual_heat_power_kw
        new_state = dataclasses.replace(
            state, mode=new_mode, manual_supply_temp_c=supply_c, manual_heat_power_kw=heat_kw
        )
        reason = f"mode {new_mode.value}"
        if new_mode is Mode.MANUAL:
            reason += f", manual supply {supply_c} °C, manual heat {heat_kw} kW"
        return new_state, CommandAck(accepted=True, reason=reason)

    def _check_command(self, command: object) -> tuple[Mode | None, float | None, float | None] | str:
        """The command's (mode, supply, heat) or the reason it is rejected (gateway/control/commands.py)."""
        return check_values(command, self._supply_range_c, self._heat_range_kw)

    # -- the cycle -----------------------------------------------------------------------------

    def step(self, view: ProcessView, state: SupervisorState, now_s: float) -> StepResult:
        """Run one control cycle at ``now_s`` (seconds, monotonic) on a frozen view."""
        cfg = self.config
        max_age_s = cfg.input_max_age_s
        good = self.roles.reader(view.good, max_age_s)
        stuck = dict(state.stuck)
        overrides: list[str] = []
        status: dict[str, float | str | bool] = {}

        def watched(device: str, signal: str, witness: SignalKey | None = None) -> float | None:
            """A reading that must also keep moving (a frozen transmitter is stale too)."""
            value = good(device, signal)
            key = (device, signal)
            if value is None or cfg.stuck_after_s <= 0.0:
                stuck.pop(key, None)
                return value
            witness_value = good(witness[0], witness[1]) if witness is not None else None
            seen = stuck.get(key)
            if seen is None:
                stuck[key] = Watch(value, now_s, math.inf, math.nan, _nan_if_none(witness_value))
                return value
            if seen.value != value:
                step = abs(value - seen.value)
                typical = (
                    step if math.isnan(seen.typical_step) else seen.typical_step + 0.2 * (step - seen.typical_step)
                )
                stuck[key] = Watch(value, now_s, min(seen.smallest_step, step), typical, _nan_if_none(witness_value))
                return value
            return None if _frozen(seen, now_s, witness_value, cfg) else value

        state = self._panel_commands(good, state)

        # -- inputs ------------------------------------------------------------------------------
        meter, plc, panel = self._meter, self._plc, self._panel
        meter_supply_c = watched(meter, "flow_temp_c", (plc, "dh_supply_temp_c"))
        meter_power_kw = watched(meter, "heat_power_kw")
        meter_return_c = good(meter, "return_temp_c")
        meter_ok = meter_supply_c is not None and meter_power_kw is not None and meter_return_c is not None
        meter_filtered: tuple[TimedValue, TimedValue] | None = None
        meter_supply_raw_c = meter_supply_c  # the over-temperature override acts on the raw value
        if meter_supply_c is not None and meter_power_kw is not None and meter_ok:
            before = state.meter_filtered
            supply = _low_pass(before[0] if before else None, meter_supply_c, now_s, cfg.meter_filter_s)
            power = _low_pass(before[1] if before else None, meter_power_kw, now_s, cfg.meter_filter_s)
            meter_filtered = (supply, power)
            meter_supply_c, meter_power_kw = supply.value, power.value
        station_supply_c = good(plc, "dh_supply_temp_c")
        plc_ok = station_supply_c is not None
        plc_return_c = good(plc, "dh_return_temp_c")
        dh_pump_tripped = good(plc, "dh_pump_tripped")
        interlock = good(plc, "interlock_status")
        source_in_c = good(plc, "hp_source_inlet_temp_c")
        source_out_c = good(plc, "hp_source_outlet_temp_c")
        running = good(plc, "hp_running_count")
        hx_heat_kw = good(plc, "hx_heat_kw")
        link_ok = good(panel, "utility_link_ok")
        order_mw = good(panel, "utility_heat_order_mw")
        requirement_in_c = good(panel, "utility_supply_temp_c")
        # Fresh = its readings are (utility_link_ok may be a constant in the site file).
        panel_ok = link_ok is not None and requirement_in_c is not None
        order_age_s = good(panel, "utility_order_age_s")
        fws_supply_c = good(plc, "fws_supply_temp_c")
        if fws_supply_c is None:
            fws_supply_c = good(panel, "fws_supply_temp_c")
        outdoor_c = good(panel, "outdoor_temp_c")
        if outdoor_c is None:
            outdoor_c = good(plc, "outdoor_temp_c")
        outdoor = state.outdoor
        if outdoor_c is not None:
            outdoor = _low_pass(outdoor, outdoor_c, now_s, cfg.outdoor_filter_s)
        outdoor_c = outdoor.value if outdoor is not None else cfg.fallback_outdoor_temp_c
        cdus = [self._read_cdu(good, name, watched) for name in self.cdus]
        stale_cdus = [cdu.name for cdu in cdus if not cdu.fresh]
        stale = [*stale_cdus]
        if not meter_ok:
            stale.append(meter)
            overrides.append("safe_state:meter_stale")
        if not plc_ok:
            stale.append(plc)
            overrides.append("safe_state:hp_plc_stale")
        if not panel_ok:
            stale.append(panel)
        if stale_cdus:
            overrides.append("safe_state:cdu_data_stale")

        # -- the utility's order and requirement: hold, then the weather curve --------------------
        link_up = (
            link_ok == 1.0
            and order_mw is not None
            and requirement_in_c is not None
            and (order_age_s is None or order_age_s <= cfg.utility_order_max_age_s)
        )
        curve_c = weather_curve_supply_c(
            outdoor_c,
            slope=cfg.weather_curve_slope,
            room_c=cfg.weather_curve_room_c,
            offset_k=cfg.weather_curve_offset_k,
            min_c=cfg.weather_curve_min_c,
            max_c=cfg.weather_curve_max_c,
        )
        last_order_kw = state.order_hold.last_order
        fallback_order_kw = (
            cfg.fallback_heat_order_mw * 1000.0
            if cfg.fallback_heat_order_mw is not None
            else (last_order_kw if last_order_kw is not None else 0.0)
        )
        order = self._hold.step(
            state.order_hold,
            order=order_mw * 1000.0 if order_mw is not None else None,
            link_up=link_up,
            fallback=fallback_order_kw,
            now_s=now_s,
        )
        requirement = self._hold.step(
            state.requirement_hold, order=requirement_in_c, link_up=link_up, fallback=curve_c, now_s=now_s
        )
        order_kw = max(order.value, 0.0)
        requirement_c = min(max(requirement.value, cfg.dh_min_supply_temp_c), cfg.dh_max_supply_temp_c)

        # -- can the DH side take heat? --------------------------------------------------------------
        refusals: list[str] = []
        if order_kw <= 0.0:
            refusals.append("order_zero")
        if dh_pump_tripped == 1.0:
            refusals.append("dh_pump_trip")
        return_c = meter_return_c if meter_return_c is not None else plc_return_c
        if (return_c is not None and return_c > cfg.dh_return_max_c) or (
            interlock is not None and int(interlock) & _INTERLOCK_DH_TOO_HOT
        ):
            refusals.append("dh_return_too_hot")
        dh_takes_heat = not refusals
        delivering = (
            meter_ok
            and dh_takes_heat
            and meter_supply_c is not None
            and meter_return_c is not None
            and meter_power_kw is not None
            and meter_power_kw > 0.0
            and meter_supply_c - meter_return_c > _MIN_DELIVERY_DT_K
        )
        if not dh_takes_heat:
            overrides.append("override:dh_cannot_take_heat")

        book = WriteBook(
            self.outputs,
            self._ramps,
            ramps=state.ramps,
            leases=state.leases,
            now_s=now_s,
            refresh_s=cfg.write_refresh_s,
            grace_s=cfg.readback_grace_s,
        )
        manual = state.mode is Mode.MANUAL

        # -- DH supply loop: requirement + PI trim (+ pipe-loss feed-forward) -----------------------
        feedforward_k = 0.0
        if (
            delivering
            and cfg.dh_pipe_heat_loss_kw > 0.0
            and meter_supply_c is not None
            and meter_return_c is not None
            and meter_power_kw is not None
        ):
            dt_k = meter_supply_c - meter_return_c
            flow_kg_s = meter_power_kw / (WATER_CP_KJ_KGK * dt_k)  # m_dot = Q / (cp dT)
            feedforward_k = cfg.dh_pipe_heat_loss_kw / (flow_kg_s * WATER_CP_KJ_KGK)
        supply_lease = state.leases.get((plc, "hp_supply_setpoint_c"))
        disturbed_s = state.dh_disturbed_s
        if (
            disturbed_s is None
            or not delivering
            or meter_supply_c is None
            or state.last_requirement_c is None
            or abs(requirement_c - state.last_requirement_c) > 0.05
            or station_supply_c is None
            or supply_lease is None
            or abs(station_supply_c - supply_lease.value) > cfg.dh_settle_band_k
        ):
            disturbed_s = now_s
        # Trims integrate only when the station has been settled for longer than the pipe
        # takes: a requirement step, a heat pump starting or a restart pushing cold water out
        # of the pipe is the PLC's transient (or physics), and it reaches the meter a pipe
        # later. Deliberately not "meter agrees with station": a lasting offset between the
        # two (sensor calibration, pipe loss) is exactly what the trim is there to learn, and
        # during a weather-driven requirement ramp the meter trails the station by a pipe.
        settled = now_s - disturbed_s >= cfg.dh_settle_s
        if manual:
            manual_supply_c = state.manual_supply_temp_c
            if manual_supply_c is None:
                manual_supply_c = supply_lease.value if supply_lease is not None else requirement_c
            normal_supply_c = manual_supply_c
            supply_name = "manual"
            trim_k, dh_trim = self._track(
                self._dh_trim_pid,
                state.dh_trim,
                manual_supply_c - requirement_c - feedforward_k,
                setpoint=requirement_c,
                measurement=meter_supply_c,
                now_s=now_s,
            )
        else:
            trim_k, dh_trim = self._dh_trim(
                state, requirement_c, meter_supply_c, now_s, delivering=delivering, settled=settled
            )
            normal_supply_c = requirement_c + trim_k + feedforward_k
            supply_name = "dh_trim"
        measured_dh_c = max(
            (value for value in (meter_supply_raw_c, station_supply_c) if value is not None), default=math.nan
        )
        over_threshold_c = cfg.dh_max_supply_temp_c
        over_k = measured_dh_c - over_threshold_c if math.isfinite(measured_dh_c) else 0.0
        supply_candidates = {supply_name: normal_supply_c, "dh_max_supply": cfg.dh_max_supply_temp_c}
        if over_k > 0.0:
            # Below what the heat pumps hold now (not merely below the maximum): the water is
            # already too hot at that setpoint, so the setpoint goes down while this lasts.
            present_c = supply_lease.value if supply_lease is not None else normal_supply_c
            supply_candidates["dh_over_temperature"] = (
                min(present_c, over_threshold_c) - cfg.dh_over_temperature_gain_k_per_k * over_k
            )
        supply_choice = select_min(supply_candidates)
        supply_setpoint_c = max(supply_choice.value, cfg.dh_min_supply_temp_c)

        # -- heat-order loop: heat-power limit = order + PI trim -------------------------------------
        if manual:
            manual_heat_kw = state.manual_heat_power_kw
            if manual_heat_kw is None:
                lease = state.leases.get((plc, "heat_power_limit_kw"))
                manual_heat_kw = lease.value if lease is not None else order_kw
            normal_limit_kw = manual_heat_kw
            limit_name = "manual"
            order_trim_kw, order_trim = self._track(
                self._order_pid,
                state.order_trim,
                manual_heat_kw - order_kw,
                setpoint=order_kw,
                measurement=meter_power_kw,
                now_s=now_s,
            )
        else:
            order_trim_kw, order_trim = self._order_trim(
                state, order_kw, meter_power_kw, now_s, delivering=delivering, settled=settled
            )
            normal_limit_kw = max(order_kw + order_trim_kw, 0.0) if order_kw > 0.0 else 0.0
            limit_name = "heat_order"
        limit_candidates = {limit_name: normal_limit_kw}
        delivered_kw = meter_power_kw if meter_power_kw is not None else 0.0
        if over_k > 0.0:
            limit_candidates["dh_over_temperature"] = max(
                delivered_kw - cfg.dh_over_temperature_limit_kw_per_k * over_k, 0.0
            )
        # Source limit: evaporator inlet (the PLC's source-too-cold interlock) or outlet (the
        # heat pumps at their source minimum cannot lift the whole DH flow to setpoint: less
        # flow, hot water, instead of full flow that is too cold).
        source_short_k = max(
            cfg.hp_source_min_temp_c - source_in_c if source_in_c is not None else 0.0,
            cfg.hp_source_outlet_min_temp_c - source_out_c if source_out_c is not None else 0.0,
        )
        if source_short_k > 0.0:
            limit_candidates["heat_pump_source_limit"] = max(
                delivered_kw - cfg.hp_source_limit_kw_per_k * source_short_k, 0.0
            )
        if running is not None and running >= 1.0 and hx_heat_kw is not None:
            # Heat-pump limit: the PLC lets its DH flow run 10 % ahead of the running heat
            # pumps, so an order above their capacity sags the supply until the next one has
            # started. Keep the limit just below it; at 95 % the PLC stages the next one up.
            capacity_kw = running * cfg.heat_pump_rated_kw * (1.0 - cfg.heat_pump_capacity_margin_pct / 100.0)
            limit_candidates["heat_pump_capacity"] = hx_heat_kw + capacity_kw
        limit_lease = state.leases.get((plc, "heat_power_limit_kw"))
        if (
            delivering
            and running is not None
            and running >= 1.0
            and station_supply_c is not None
            and supply_lease is not None
            and limit_lease is not None
            and station_supply_c < supply_lease.value - cfg.station_short_k
        ):
            # The heat pumps cannot hold the setpoint right now (a heat pump starting and the
            # PLC shifting load onto it, a source limit): more flow would only sag the supply.
            limit_candidates["heat_pump_short"] = limit_lease.value
        limit_choice = select_min(limit_candidates)
        hp_enable = self._hp_timer.step(state.hp_enable, request_on=limit_choice.value > 0.0, now_s=now_s)

        # -- CDUs: source-temperature optimisation with back-off -------------------------------------
        fresh_cdus = [cdu for cdu in cdus if cdu.fresh]
        upper_c = max((cdu.it_limit_c - cfg.it_margin_k for cdu in fresh_cdus), default=cfg.cdu_conservative_setpoint_c)
        previous = state.cdu_ceiling
        if previous is None:
            start_c = min((cdu.active_setpoint_c for cdu in fresh_cdus), default=cfg.cdu_conservative_setpoint_c)
            previous = RampState(value=start_c, time_s=now_s)
        dc_upper_c = cfg.fws_supply_limit_c - cfg.fws_margin_k
        dc_normal_c = min(dc_upper_c, previous.value - cfg.cdu_approach_k)
        backoff: list[str] = []
        if any(
            cdu.valve_pct >= cfg.cdu_valve_saturated_pct or cdu.hottest_c > cdu.active_setpoint_c + cfg.cdu_deviation_k
            for cdu in fresh_cdus
        ):
            backoff.append("cdu_cannot_hold")
        if any(cdu.hottest_c > cdu.it_limit_c - cfg.cdu_near_limit_k for cdu in fresh_cdus):
            backoff.append("rack_near_limit")
        fws_hot_k = (fws_supply_c - (dc_normal_c + cfg.fws_too_hot_k)) if fws_supply_c is not None else 0.0
        if fws_hot_k > 0.0:
            backoff.append("fws_too_hot")
        last_backoff_s = state.last_backoff_s
        if backoff:
            ceiling_target_c = cfg.cdu_setpoint_min_c
            last_backoff_s = now_s
            overrides.extend(f"override:{name}" for name in backoff)
        elif stale_cdus or (last_backoff_s is not None and now_s - last_backoff_s < cfg.cdu_raise_hold_s):
            ceiling_target_c = min(previous.value, upper_c)  # stop raising
        else:
            ceiling_target_c = upper_c
        if fws_supply_c is None:
            # Facility water unknown (station and panel stale): never hold the last value,
            # go to the conservative setpoint the CDUs would run on their own.
            ceiling_target_c = min(ceiling_target_c, cfg.cdu_conservative_setpoint_c)
            overrides.append("safe_state:fws_unknown")
        ceiling = self._ceiling_ramp.step(previous, target=ceiling_target_c, now_s=now_s)
        cdu_reason = f"override:{backoff[0]}" if backoff else "source_optimisation"
        if fws_supply_c is None:
            cdu_reason = "safe_state:fws_unknown"

        # -- dry coolers: take whatever the DH side does not ----------------------------------------
        dc_candidates = {"source_optimisation": min(dc_upper_c, ceiling.value - cfg.cdu_approach_k)}
        if fws_hot_k > 0.0:
            dc_candidates["fws_too_hot"] = (
                dc_candidates["source_optimisation"] - cfg.fws_too_hot_gain_k_per_k * fws_hot_k
            )
        if stale_cdus:
            dc_candidates["cdu_data_stale"] = cfg.stale_dry_cooler_setpoint_c
        if not dh_takes_heat:
            # Never above the facility limit: the heat goes to the dry coolers, not to the racks.
            dc_candidates["dh_cannot_take_heat"] = dc_upper_c
        dc_choice = select_min(dc_candidates)

        # -- writes ---------------------------------------------------------------------------------
        fresh_devices = {cdu.name for cdu in fresh_cdus}
        if plc_ok:
            fresh_devices.add(plc)
        if panel_ok:
            fresh_devices.add(panel)
        if meter_ok:
            fresh_devices.add(meter)
        heartbeats = self._beat(book, view, state.heartbeats, fresh_devices, now_s)

        for cdu in cdus:
            self._write_cdu(book, cdu, ceiling.value, cdu_reason)
        if abs(ceiling.value - ceiling_target_c) > 0.01 or abs(ceiling.value - previous.value) > 0.005:
            # The common ceiling is itself the CDU setpoints' ramp (raise 0.5 K/min, back off 3 K/min).
            book.ramping.update(cdu.name for cdu in fresh_cdus)

        applied_supply_c = supply_setpoint_c
        applied_limit_kw = limit_choice.value
        if plc_ok:
            # A stale PLC gets nothing at all: its watchdog returns it to local values.
            def propose(signal: str, value: float, reason: str, present: float | None = None) -> float:
                if not book.can_write(plc, signal):
                    return value
                if present is None:
                    present = good(plc, signal)
                return book.propose(plc, signal, value, reason, present=present)

            propose("hp_enable", 1.0 if hp_enable.on else 0.0, "heat_order" if hp_enable.on else "no_heat_wanted")
            applied_supply_c = propose(
                "hp_supply_setpoint_c", supply_setpoint_c, _reason(supply_choice.name, supply_name)
            )
            applied_limit_kw = propose(
                "heat_power_limit_kw", limit_choice.value, _reason(limit_choice.name, limit_name)
            )
            propose("dry_cooler_enable", 1.0, "override:dh_cannot_take_heat" if not dh_takes_heat else "cooling_first")
            propose("dry_cooler_setpoint_c", dc_choice.value, _reason(dc_choice.name, "source_optimisation"))
        for name, normal in ((supply_choice.name, supply_name), (limit_choice.name, limit_name)):
            if name != normal:
                overrides.append(f"override:{name}")
        if dc_choice.name not in ("source_optimisation", "dh_cannot_take_heat"):
            overrides.append(f"override:{dc_choice.name}")

        # -- alarms and status ------------------------------------------------------------------------
        deviation_alarm = state.deviation_alarm
        deviation_k = math.nan
        if delivering and meter_supply_c is not None:
            deviation_k = meter_supply_c - requirement_c
            deviation_alarm = self._deviation_alarm.step(deviation_alarm, abs(deviation_k), now_s)
        hottest = max(fresh_cdus, key=lambda cdu: cdu.hottest_c, default=None)
        order_source = _SOURCE_NAMES[requirement.source]
        unique_overrides = list(dict.fromkeys(overrides))
        status.update(
            {
                "mode": state.mode.value,
                "order_source": order_source,
                "utility_link_up": link_up,
                "hold_remaining_s": requirement.hold_remaining_s,
                "heat_order_kw": order_kw,
                "heat_delivered_kw": meter_power_kw if meter_power_kw is not None else math.nan,
                "heat_error_pct": (order_kw - meter_power_kw) / order_kw * 100.0
                if meter_power_kw is not None and order_kw > 0.0
                else math.nan,
                "dh_requirement_c": requirement_c,
                "dh_weather_curve_c": curve_c,
                "dh_supply_c": meter_supply_c if meter_supply_c is not None else math.nan,
                "dh_deviation_k": deviation_k,
                "dh_trim_k": trim_k,
                "dh_feedforward_k": feedforward_k,
                "hp_supply_setpoint_c": applied_supply_c,
                "order_trim_kw": order_trim_kw,
                "heat_power_limit_kw": applied_limit_kw,
                "hp_enable": hp_enable.on,
                "dh_takes_heat": dh_takes_heat,
                "dh_refusals": ",".join(refusals),
                "cdu_ceiling_c": ceiling.value,
                "dry_cooler_setpoint_c": dc_choice.value,
                "fws_supply_c": fws_supply_c if fws_supply_c is not None else math.nan,
                "tcs_hottest_c": hottest.hottest_c if hottest is not None else math.nan,
                "tcs_hottest_device": hottest.name if hottest is not None else "",
                "overrides": ",".join(unique_overrides),
                "override_count": len(unique_overrides),
                "stale_devices": ",".join(stale),
                "alarm_dh_deviation": deviation_alarm.active,
                "alarm_utility_link": not link_up,
                "alarm_stale_data": bool(stale),
                "writes": len(book.writes),
                "setpoint_writes": len(book.writes) - book.heartbeats,
                "heartbeat_writes": book.heartbeats,
                "ramping_devices": ",".join(sorted(book.ramping)),
            }
        )
        for cdu in cdus:
            lease = book.leases.get((cdu.name, "tcs_supply_setpoint_c"))
            status[f"{cdu.name}.tcs_supply_setpoint_c"] = lease.value if lease is not None else math.nan

        spent: dict[str, int] = {}
        for write in book.writes:
            if write.reason != HEARTBEAT_REASON:
                spent[write.device] = spent.get(write.device, 0) + 1
        budgets, overdrawn = spend_budget(state.budgets, spent, self._budgets, now_s)
        status["write_budget_exceeded"] = ",".join(overdrawn)
        new_state = dataclasses.replace(
            state,
            budgets=budgets,
            setpoint_writes_total=state.setpoint_writes_total + len(book.writes) - book.heartbeats,
            heartbeat_writes_total=state.heartbeat_writes_total + book.heartbeats,
            dh_trim=dh_trim,
            dh_applied_trim_k=applied_supply_c - requirement_c - feedforward_k,
            last_requirement_c=requirement_c,
            dh_disturbed_s=disturbed_s,
            order_trim=order_trim,
            order_applied_trim_kw=applied_limit_kw - order_kw,
            order_hold=order.state,
            requirement_hold=requirement.state,
            cdu_ceiling=ceiling,
            last_backoff_s=last_backoff_s,
            ramps=book.ramps,
            leases=book.leases,
            heartbeats=heartbeats,
            hp_enable=hp_enable,
            deviation_alarm=deviation_alarm,
            stuck=stuck,
            outdoor=outdoor,
            meter_filtered=meter_filtered,
        )
        if state.mode is Mode.OFF:
            # Off: nothing is written, and nothing is remembered as written, so the way back
            # starts from the devices' present values.
            new_state = dataclasses.replace(
                new_state,
                ramps={},
                leases={},
                dh_trim=PidState(),
                order_trim=PidState(),
                cdu_ceiling=None,
                heartbeats={},
            )
            status["writes"] = status["setpoint_writes"] = status["heartbeat_writes"] = 0
            return StepResult(writes=[], state=new_state, status=status)
        return StepResult(writes=book.writes, state=new_state, status=status)

    # -- pieces ----------------------------------------------------------------------------------

    def _panel_commands(self, good: _Read, state: SupervisorState) -> SupervisorState:
        """The panel's operator switch: a change (or the first sight) is an operator command."""
        if not self.config.follow_panel_operator_mode:
            return state
        switch = good(self._panel, "operator_mode")
        if switch is None:
            return state
        supply_c = good(self._panel, "manual_supply_temp_c")
        heat_mw = good(self._panel, "manual_heat_power_mw")
        seen = (switch, supply_c, heat_mw)
        if seen == state.panel_seen:
            return state
        previous = state.panel_seen
        state = dataclasses.replace(state, panel_seen=seen)
        mode = _PANEL_MODES.get(switch)
        if mode is None:
            return state
        command: dict[str, object] = {}
        if previous is None or previous[0] != switch:
            command["mode"] = mode.value
        if mode is Mode.MANUAL:
            if supply_c is not None:
                command["manual_supply_temp_c"] = supply_c
            if heat_mw is not None:
                command["manual_heat_power_kw"] = heat_mw * 1000.0
        if not command:
            return state
        new_state, ack = self.apply_command(state, command)
        return new_state if ack.accepted else state

    def _read_cdu(self, good: _Read, name: str, watched: _Watched) -> _Cdu:
        role = self.roles.devices[name]
        supply_c = watched(name, "tcs_supply_temp_c", (name, "tcs_supply_temp_2_c"))
        supply_2_c = good(name, "tcs_supply_temp_2_c")
        setpoint_c = good(name, "tcs_supply_setpoint_c")
        it_limit_c = good(name, "it_limit_c")
        # A signal the site marked absent is None by design, not stale: the role says what the
        # control does without it (a CDU without a mode register acts on the written setpoint).
        mode = good(name, "control_mode") if role.has("control_mode") else 1.0
        valve_pct = good(name, "valve_feedback_pct") if role.has("valve_feedback_pct") else math.nan
        local_c = good(name, "local_setpoint_c")
        if supply_c is None or mode is None or setpoint_c is None or valve_pct is None or it_limit_c is None:
            return _Cdu(name=name, fresh=False)
        if mode != 1.0 and local_c is None and role.has("local_setpoint_c"):
            return _Cdu(name=name, fresh=False)
        active_c = setpoint_c if mode == 1.0 or local_c is None else local_c
        hottest_c = supply_c if supply_2_c is None else max(supply_c, supply_2_c)
        return _Cdu(
            name=name,
            fresh=True,
            mode=mode,
            active_setpoint_c=active_c,
            hottest_c=hottest_c,
            valve_pct=valve_pct,
            it_limit_c=it_limit_c,
        )

    def _beat(
        self,
        book: WriteBook,
        view: ProcessView,
        sent: Mapping[str, Lease],
        fresh: set[str],
        now_s: float,
    ) -> dict[str, Lease]:
        """Declared heartbeats, each at its device's period, only to devices fresh in their role.

        A device we cannot see gets no heartbeat: its watchdog must take over (and return it to
        its local values), since nothing the gateway decides for it is based on data any more.
        """
        beats = dict(sent)
        max_age_s = self.config.input_max_age_s
        for device, beat in self._heartbeats.items():
            if device not in fresh:
                continue
            last = beats.get(device)
            if last is not None and now_s - last.time_s < beat.period_s - 1e-9:
                continue
            if beat.mode is HeartbeatMode.ECHO:
                assert beat.echo_of is not None
                value = view.good(device, beat.echo_of, max_age_s)
                if value is None:
                    continue  # nothing fresh to echo: the watchdog sees no answer
            else:
                previous = last.value if last is not None else view.good(device, beat.signal, max_age_s)
                if beat.mode is HeartbeatMode.TOGGLE:
                    value = beat.low if previous == beat.high else beat.high
                else:
                    span = int(beat.high - beat.low) + 1
                    base = previous if previous is not None and math.isfinite(previous) else beat.low
                    value = beat.low + (int(base - beat.low) + 1) % span
            book.pulse(device, beat.signal, value, beat.low, beat.high)
            beats[device] = Lease(value, now_s)
        return beats

    def _write_cdu(self, book: WriteBook, cdu: _Cdu, ceiling_c: float, reason: str) -> None:
        name = cdu.name
        can_mode = book.can_write(name, "control_mode")
        if not cdu.fresh:
            # Blind: hand the CDU back to its own local setpoint (if the write gets through)
            # and stop its heartbeat (if it does not, the watchdog does the same).
            if can_mode:
                book.propose(name, "control_mode", 0.0, "safe_state:cdu_data_stale")
            return
        if can_mode:
            # External mode first, then the setpoint from where the CDU is now (bumpless).
            book.propose(name, "control_mode", 1.0, "take_over", present=cdu.mode)
        if book.can_write(name, "tcs_supply_setpoint_c"):
            target_c = min(ceiling_c, cdu.it_limit_c - self.config.it_margin_k)
            book.propose(name, "tcs_supply_setpoint_c", target_c, reason, present=cdu.active_setpoint_c)

    def _dh_trim(
        self,
        state: SupervisorState,
        requirement_c: float,
        meter_supply_c: float | None,
        now_s: float,
        *,
        delivering: bool,
        settled: bool,
    ) -> tuple[float, PidState]:
        """DH supply PI trim; 0 and reset (the PLC's own supply control) while not delivering."""
        if not delivering or meter_supply_c is None:
            # No trim: the PLC holds the requirement by itself; restart bumplessly from 0.
            return 0.0, PidState(last_output=0.0)
        # Conditional integration: a transient (a requirement step plus ~70 s of pipe, a heat
        # pump starting) is the PLC's to correct; the trim is for the lasting offset.
        return self._trim(
            self._dh_trim_pid,
            state.dh_trim,
            state.dh_applied_trim_k,
            setpoint=requirement_c,
            measurement=meter_supply_c,
            now_s=now_s,
            hold=not settled,
            applied_tolerance=self._supply_tolerance_k,
        )

    def _order_trim(
        self,
        state: SupervisorState,
        order_kw: float,
        delivered_kw: float | None,
        now_s: float,
        *,
        delivering: bool,
        settled: bool,
    ) -> tuple[float, PidState]:
        """Order PI trim; frozen while the meter is stale or the DH side takes no heat, held in transients."""
        pid = state.order_trim
        held = pid.last_output if pid.last_output is not None else 0.0
        if delivered_kw is None or not delivering or order_kw <= 0.0:
            # Freeze: keep the trim, do not integrate, restart the time base when back.
            return held, dataclasses.replace(pid, last_time_s=None, last_measurement=None, last_output=held)
        # Far from the order, or the DH supply still moving: a transient or a capacity
        # shortfall that the trim cannot fix (heat read while the pipe still holds water of
        # the old temperature says nothing about the limit's offset).
        hold = not settled or abs(order_kw - delivered_kw) > order_kw * self.config.order_trim_band_pct / 100.0
        return self._trim(
            self._order_pid,
            pid,
            state.order_applied_trim_kw,
            setpoint=order_kw,
            measurement=delivered_kw,
            now_s=now_s,
            hold=hold,
            applied_tolerance=self._limit_tolerance_kw,
        )

    def _trim(
        self,
        config: PidConfig,
        pid: PidState,
        applied: float | None,
        *,
        setpoint: float,
        measurement: float,
        now_s: float,
        hold: bool,
        applied_tolerance: float,
    ) -> tuple[float, PidState]:
        """One step of a trim PI with conditional integration.

        The trim integrates only while what was written last cycle is its own output: while an
        override won the min-select or a write ramp held the value back, it holds (instead of
        tracking the override, which would drag the trim to its limit and keep the setpoint
        there long after the override has gone; the write ramp makes the return smooth).
        """
        if pid.mode is ControlMode.MANUAL:
            pid = dataclasses.replace(pid, mode=ControlMode.AUTO)
        held = pid.last_output if pid.last_output is not None else 0.0
        if applied is not None and abs(applied - held) > applied_tolerance:
            hold = True
        if hold:
            return self._track(config, pid, held, setpoint=setpoint, measurement=measurement, now_s=now_s)
        result = pid_step(config, pid, setpoint=setpoint, measurement=measurement, now_s=now_s)
        if result.output is None:
            return held, pid
        return result.output, result.state

    @staticmethod
    def _track(
        config: PidConfig,
        pid: PidState,
        output: float,
        *,
        setpoint: float,
        measurement: float | None,
        now_s: float,
    ) -> tuple[float, PidState]:
        """Hold a PI at ``output`` (manual mode, tracking) so the return to auto is bumpless."""
        output = config.clamp(output)
        if measurement is None:
            return output, PidState(last_output=output)
        result = pid_step(
            config,
            dataclasses.replace(pid, mode=ControlMode.MANUAL),
            setpoint=setpoint,
            measurement=measurement,
            now_s=now_s,
            track=output,
        )
        if result.output is None:
            return output, PidState(last_output=output)
        return result.output, dataclasses.replace(result.state, mode=ControlMode.AUTO)


class _Watched(Protocol):
    def __call__(self, device: str, signal: str, witness: SignalKey | None = None) -> float | None: ...


_NOISY = 1.5
"""A signal whose typical change is this many times its smallest is noisy: it moves every few
reads wherever the process sits, so sitting still for ``stuck_after_s`` means frozen. A
quantised quiet signal (0.1 K steps, 0.02 K noise) changes by one step at a time and can sit
on one step for hours: only a witness that moved says it froze."""


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _frozen(seen: Watch, now_s: float, witness: float | None, cfg: ControlConfig) -> bool:
    """Unchanged for ``stuck_after_s``, and either noisy before or its witness has moved since."""
    if now_s - seen.since_s < cfg.stuck_after_s:
        return False
    if seen.typical_step >= _NOISY * seen.smallest_step:  # NaN (never changed) compares False
        return True
    return witness is not None and abs(witness - seen.witness) > cfg.stuck_witness_k


_Read = Callable[[str, str], float | None]
"""``read(device, role_signal)``: a role input by the site's binding (None: stale, bad or absent)."""


def _low_pass(previous: TimedValue | None, value: float, now_s: float, time_constant_s: float) -> TimedValue:
    """First-order low-pass, exact for any step; starts at the first value, restarts after a gap."""
    if previous is None or time_constant_s <= 0.0:
        return TimedValue(value=value, time_s=now_s)
    weight = -math.expm1(-max(now_s - previous.time_s, 0.0) / time_constant_s)
    return TimedValue(value=previous.value + weight * (value - previous.value), time_s=now_s)


def _reason(chosen: str, normal: str) -> str:
    return chosen if chosen == normal else f"override:{chosen}"


# -- wiring helpers for the live service ----------------------------------------------------------


def write_limits_of(site: Site) -> dict[SignalKey, tuple[float, float]]:
    """(device, profile signal) -> (min, max) of everything the supervisor may write: the bound
    role outputs and the declared heartbeats, nothing else (a name alone gives no control meaning)."""
    return role_map_of_site(site.config, site.profiles).write_limits()


def supervisor_for_site(site: Site, config: ControlConfig | None = None) -> Supervisor:
    """A supervisor for a loaded site: its ``control:`` section (or defaults), roles and profiles."""
    config = config or site.config.control or ControlConfig()
    return Supervisor(config, role_map_of_site(site.config.model_copy(update={"control": config}), site.profiles))
