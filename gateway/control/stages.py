"""The supervisor's cycle in stages, each a pure function with its inputs and outputs spelled out.

``Supervisor.step`` (gateway/control/supervisor.py) composes them in this order; each stage
reads the frozen :class:`SupervisorState` it is given and the outputs of the stages before it,
and returns an immutable record, a named tuple (built every cycle: a frozen dataclass costs about
twice as much to build); nothing else is shared, nothing is mutated but the one-cycle
:class:`WriteBook` inside :func:`plan_writes`:

1. :func:`read_inputs` -> :class:`Inputs`: every role input, its quality (stale, frozen), the
   meter and outdoor filters, which devices are stale and the safe states that follow;
2. :func:`utility_order` -> :class:`UtilityOrder`: the utility's heat order and supply
   requirement, held through a link loss, then the weather curve;
3. :func:`dh_acceptance` -> :class:`DhAcceptance`: can the DH side take heat, is it delivering;
4. :func:`dh_supply` -> :class:`DhSupply`: requirement + PI trim + pipe-loss feed-forward,
   min-selected with the over-temperature override;
5. :func:`heat_order_limit` -> :class:`HeatLimit`: order + PI trim, min-selected with the
   over-temperature, source, capacity and "short" limits; heat-pump enable with its timers;
6. :func:`source_ceiling` -> :class:`SourceCeiling`: the CDUs' common setpoint ceiling (raise
   slowly, back off fast) and the dry coolers' setpoint;
7. :func:`plan_writes` -> :class:`Writes`: heartbeats and setpoints through the write book
   (clamp, ramp, resolution, deadband, lease);
8. :func:`finish` -> ``(writes, state, status)``: alarms, the status record, write budgets and
   the next state (mode off: nothing written, nothing remembered as written).

:class:`Setup` is what does not change between cycles (the configuration, the role map and the
blocks built from them); ``Supervisor(config, roles).setup`` gives the one the supervisor uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

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
    Selection,
    select_min,
    weather_curve_supply_c,
)
from gateway.control.commands import Mode
from gateway.control.pid import ControlMode, PidConfig, PidState, pid_step
from gateway.control.roles import Heartbeat, RoleMap
from gateway.control.state import SupervisorState, TimedValue, Watch
from gateway.control.writes import (
    HEARTBEAT_REASON,
    Lease,
    OutputSpec,
    SignalKey,
    Write,
    WriteBook,
    settled_value,
    spend_budget,
)

__all__ = [
    "CduBinding",
    "CduReading",
    "DhAcceptance",
    "DhSupply",
    "HeatLimit",
    "Inputs",
    "Reader",
    "Setup",
    "SourceCeiling",
    "UtilityOrder",
    "Writes",
    "dh_acceptance",
    "dh_supply",
    "finish",
    "heat_order_limit",
    "plan_writes",
    "read_inputs",
    "source_ceiling",
    "utility_order",
]

WATER_CP_KJ_KGK = 4.18
_INTERLOCK_DH_TOO_HOT = 2  # hp-plc interlock_status bit: DH water entering the condensers too hot
_MIN_DELIVERY_DT_K = 5.0  # below this meter dT the DH side is not really delivering
_SOURCE_NAMES = {OrderSource.UTILITY: "utility", OrderSource.HELD: "held", OrderSource.FALLBACK: "weather_curve"}
_NOISY = 1.5
"""A signal whose typical change is this many times its smallest is noisy: it moves every few
reads wherever the process sits, so sitting still for ``stuck_after_s`` means frozen. A
quantised quiet signal (0.1 K steps, 0.02 K noise) changes by one step at a time and can sit
on one step for hours: only a witness that moved says it froze."""

Good = Callable[[str, str, float], float | None]
"""``good(device, profile_signal, max_age_s)``: the process view's good and fresh value, else None."""

Bound = tuple[str | None, float]
"""A role signal as bound on a device: (profile signal, nan), or (None, the constant)."""

_CDU_SIGNALS = (
    "tcs_supply_temp_c",
    "tcs_supply_temp_2_c",
    "tcs_supply_setpoint_c",
    "it_limit_c",
    "control_mode",
    "valve_feedback_pct",
    "local_setpoint_c",
)
_METER_INPUTS = ("flow_temp_c", "heat_power_kw", "return_temp_c")
"""The heat meter's role inputs, in the order :func:`read_inputs` unpacks them."""
_PLC_INPUTS = (
    "dh_supply_temp_c",
    "fws_supply_temp_c",
    "outdoor_temp_c",
    "dh_return_temp_c",
    "dh_pump_tripped",
    "interlock_status",
    "hp_source_inlet_temp_c",
    "hp_source_outlet_temp_c",
    "hp_running_count",
    "hx_heat_kw",
)
"""The station PLC's role inputs, in the order :func:`read_inputs` unpacks them."""
_PANEL_INPUTS = (
    "fws_supply_temp_c",
    "outdoor_temp_c",
    "utility_link_ok",
    "utility_heat_order_mw",
    "utility_supply_temp_c",
    "utility_order_age_s",
)
"""The panel PC's role inputs, in the order :func:`read_inputs` unpacks them."""
_NOTHING: Mapping[str, float] = {}


@dataclass(frozen=True, slots=True)
class DeviceInputs:
    """Where a device's role inputs are, resolved once (the cycle reads them all every cycle)."""

    name: str
    names: tuple[str | None, ...]
    """Per role input (in the order the stage asks for them): the profile signal, None (absent)
    or a key of ``constants``."""
    constants: Mapping[str, float]
    """The inputs the site gives as constants, under keys no profile signal can have."""


def _resolve(bound: Mapping[str, Bound], signals: tuple[str, ...]) -> tuple[tuple[str | None, ...], dict[str, float]]:
    """The profile signal of each role signal (None: absent; a constant: a key of the dict returned)."""
    names: list[str | None] = []
    constants: dict[str, float] = {}
    for signal in signals:
        where = bound.get(signal)
        if where is None:
            names.append(None)
        elif where[0] is None:
            key = f"={signal}"  # not a signal name (profile signal names are identifiers)
            constants[key] = where[1]
            names.append(key)
        else:
            names.append(where[0])
    return tuple(names), constants


@dataclass(frozen=True, slots=True)
class CduBinding:
    """Where one CDU's role inputs are (resolved once: the cycle reads them for every CDU)."""

    name: str
    supply: str | None
    """The profile signal each input is read from (None: absent; a constant: a key of ``constants``)."""
    supply_2: str | None
    setpoint: str | None
    it_limit: str | None
    mode: str | None
    """None: absent, the CDU acts on the written setpoint (mode 1)."""
    valve: str | None
    """None: absent, no valve feedback (NaN, never saturated)."""
    local: str | None
    constants: Mapping[str, float]
    """The inputs the site gives as constants, under keys no profile signal can have."""
    writes_mode: bool
    """Its ``control_mode`` output is bound (it can be taken over and handed back)."""
    writes_setpoint: bool
    """Its ``tcs_supply_setpoint_c`` output is bound."""
    status_key: str
    """``{name}.tcs_supply_setpoint_c`` in the status record."""
    setpoint_key: SignalKey
    """``(name, "tcs_supply_setpoint_c")``: its setpoint's key in the leases."""
    names: tuple[str | None, ...]
    """The seven names above in the order of ``_CDU_SIGNALS`` (read in one ``map``)."""
    supply_key: SignalKey
    """``(name, "tcs_supply_temp_c")``: the key of its frozen-value watch."""
    steady: _SteadyCdu | None
    """What it takes to see that this cycle's writes to it change nothing (None: always ask the book)."""


class _SteadyCdu(NamedTuple):
    """A CDU's two outputs, resolved for :func:`_steady`: its external mode and its setpoint (with a ramp)."""

    mode_key: SignalKey
    mode_value: float
    """What the book makes of the mode 1.0 it is given (clamped, rounded)."""
    mode_band: float
    setpoint_key: SignalKey
    setpoint: OutputSpec
    """Its spec (one object for all the CDUs whose specs are equal: the rounding is shared)."""
    setpoint_band: float


class _ViewValues:
    """A device's values through ``good()``, for a view that has no ``fresh()``."""

    __slots__ = ("device", "good", "max_age_s")

    def __init__(self, good: Good, device: str, max_age_s: float) -> None:
        self.good = good
        self.device = device
        self.max_age_s = max_age_s

    def get(self, signal: str | None) -> float | None:
        return None if signal is None else self.good(self.device, signal, self.max_age_s)


class _WithConstants:
    """A device's values, with the constants the site gives in place of some signals."""

    __slots__ = ("constants", "values")

    def __init__(self, values: Mapping[str, float] | _ViewValues, constants: Mapping[str, float]) -> None:
        self.values = values
        self.constants = constants

    def get(self, signal: str | None) -> float | None:
        if signal is None:
            return None
        constant = self.constants.get(signal)
        return constant if constant is not None else self.values.get(signal)


class Reader:
    """``read(device, role_signal)``: one cycle's role inputs from a process view, by the site's bindings.

    None: absent on the device, stale, bad or missing. A view with ``fresh(device, max_age_s)``
    (the gateway's ``Snapshot``) is asked once per device per cycle; any other view (anything
    with ``good(device, signal, max_age_s)``) once per signal.
    """

    __slots__ = ("_bindings", "_fresh", "_good", "_max_age_s", "_values")

    def __init__(self, setup: Setup, view: object) -> None:
        self._bindings = setup.bindings
        self._good: Good = view.good  # type: ignore[attr-defined]
        self._fresh: Callable[[str, float], Mapping[str, float] | None] | None = getattr(view, "fresh", None)
        self._max_age_s = setup.config.input_max_age_s
        self._values: dict[str, Mapping[str, float] | _ViewValues] = {}

    @property
    def good(self) -> Good:
        """The view's ``good(device, profile_signal, max_age_s)``."""
        return self._good

    def values(self, device: str) -> Mapping[str, float] | _ViewValues:
        """The device's fresh values by profile signal (``.get(signal)``: the value or None)."""
        values = self._values.get(device)
        if values is None:
            if self._fresh is not None:
                values = self._fresh(device, self._max_age_s) or _NOTHING
            else:
                values = _ViewValues(self._good, device, self._max_age_s)
            self._values[device] = values
        return values

    def fresh_values(self, devices: tuple[str, ...]) -> list[Mapping[str, float] | _ViewValues]:
        """:meth:`values` of each device, without keeping them: for devices read once a cycle (the CDUs)."""
        fresh, max_age_s = self._fresh, self._max_age_s
        if fresh is not None:
            return [fresh(device, max_age_s) or _NOTHING for device in devices]
        return [_ViewValues(self._good, device, max_age_s) for device in devices]

    def getter(self, device: str, constants: Mapping[str, float]) -> Callable[[str | None], float | None]:
        """``get(name)`` for the names of a :class:`DeviceInputs` or :class:`CduBinding`: the fresh
        value, the constant, or None (None for a None name too: None is no key)."""
        values = self.values(device)
        return (_WithConstants(values, constants) if constants else values).get  # type: ignore[return-value]

    def __call__(self, device: str, signal: str) -> float | None:
        bound = self._bindings.get(device, _NO_BINDINGS).get(signal)
        if bound is None:
            return None
        name, constant = bound
        if name is None:
            return constant
        return self.values(device).get(name)


_NO_BINDINGS: Mapping[str, Bound] = {}


# -- what does not change between cycles -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """The configuration, the role map and the control blocks built from them, once per supervisor."""

    config: ControlConfig
    roles: RoleMap
    bindings: Mapping[str, Mapping[str, Bound]]
    """Device -> role signal -> where it is read (absent signals are not listed)."""
    cdus: tuple[CduBinding, ...]
    cdu_names: tuple[str, ...]
    meter_inputs: DeviceInputs
    plc_inputs: DeviceInputs
    panel_inputs: DeviceInputs
    outputs: Mapping[SignalKey, OutputSpec]
    """(device, role output) -> how it is written (only these are ever written)."""
    plc_outputs: Mapping[str, SignalKey]
    """The station PLC's bound role outputs -> their key in ``outputs``."""
    ramps: Mapping[str, RampLimiter]
    """Role output -> its write ramp."""
    heartbeats: Mapping[str, Heartbeat]
    heartbeat_periods: tuple[tuple[str, Heartbeat, float], ...]
    """Each heartbeat with its device and the period it is due after (``period_s - 1e-9``)."""
    budgets: Mapping[str, float]
    """Device -> setpoint writes per hour it may take."""
    dh_trim_pid: PidConfig
    order_pid: PidConfig
    hold: HoldThenFallback
    hp_timer: MinOnOffTimer
    deviation_alarm: DelayedAlarm
    ceiling_ramp: RampLimiter
    supply_tolerance_k: float
    """The DH trim integrates only while the written setpoint is its own within this."""
    limit_tolerance_kw: float
    """The order trim integrates only while the written limit is its own within this."""

    @property
    def meter(self) -> str:
        """The heat meter's device name."""
        return self.roles.heat_meter

    @property
    def plc(self) -> str:
        """The station PLC's device name."""
        return self.roles.station_plc

    @property
    def panel(self) -> str:
        """The panel PC's device name."""
        return self.roles.panel

    @classmethod
    def build(cls, config: ControlConfig, roles: RoleMap) -> Setup:
        """The blocks for ``config`` and ``roles`` (raises ValueError without CDUs)."""
        cfg = config
        if not roles.cdus:
            raise ValueError("Supervisor: no CDUs (set control.cdu_devices or give devices the kind cdu)")
        outputs = roles.output_specs()
        max_dt_s = 10.0 * cfg.cycle_s
        ceiling_ramp = RampLimiter(
            up_per_s=cfg.cdu_setpoint_raise_k_per_min / 60.0,
            down_per_s=cfg.cdu_setpoint_lower_k_per_min / 60.0,
            max_dt_s=max_dt_s,
        )
        plc = roles.station_plc
        bindings = {
            device: {
                signal: (binding.signal, math.nan) if binding.kind == "signal" else (None, binding.value)
                for signal, binding in role.bindings.items()
                if binding.kind != "absent"
            }
            for device, role in roles.devices.items()
        }
        ramps: dict[str, RampLimiter] = {
            "tcs_supply_setpoint_c": ceiling_ramp,
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
        specs: dict[OutputSpec, OutputSpec] = {}
        return cls(
            config=cfg,
            roles=roles,
            bindings=bindings,
            cdus=tuple(
                _cdu_binding(
                    name, bindings.get(name, {}), outputs, ramped="tcs_supply_setpoint_c" in ramps, specs=specs
                )
                for name in roles.cdus
            ),
            cdu_names=tuple(roles.cdus),
            meter_inputs=DeviceInputs(roles.heat_meter, *_resolve(bindings.get(roles.heat_meter, {}), _METER_INPUTS)),
            plc_inputs=DeviceInputs(plc, *_resolve(bindings.get(plc, {}), _PLC_INPUTS)),
            panel_inputs=DeviceInputs(roles.panel, *_resolve(bindings.get(roles.panel, {}), _PANEL_INPUTS)),
            outputs=outputs,
            plc_outputs={output: (device, output) for device, output in outputs if device == plc},
            ramps=ramps,
            heartbeats={name: role.heartbeat for name, role in roles.devices.items() if role.heartbeat},
            heartbeat_periods=tuple(
                (name, role.heartbeat, role.heartbeat.period_s - 1e-9)
                for name, role in roles.devices.items()
                if role.heartbeat
            ),
            budgets={name: role.write_budget_per_h for name, role in roles.devices.items() if role.outputs},
            dh_trim_pid=PidConfig(
                kp=cfg.dh_trim_kp_k_per_k,
                ti_s=cfg.dh_trim_ti_s,
                out_min=-cfg.dh_trim_max_k,
                out_max=cfg.dh_trim_max_k,
                # P on the measurement only: a requirement step goes straight to the PLC (which
                # holds the station supply itself) instead of kicking the trim.
                setpoint_weight=0.0,
                max_dt_s=max_dt_s,
            ),
            order_pid=PidConfig(
                kp=cfg.order_trim_kp,
                ti_s=cfg.order_trim_ti_s,
                out_min=-cfg.order_trim_max_kw,
                out_max=cfg.order_trim_max_kw,
                setpoint_weight=0.0,
                max_dt_s=max_dt_s,
            ),
            hold=HoldThenFallback(hold_s=cfg.utility_hold_s),
            hp_timer=MinOnOffTimer(min_on_s=cfg.hp_min_on_s, min_off_s=cfg.hp_min_off_s),
            deviation_alarm=DelayedAlarm(
                on_threshold=cfg.deviation_alarm_k,
                off_threshold=cfg.deviation_alarm_k - cfg.deviation_alarm_hysteresis_k,
                on_delay_s=cfg.deviation_alarm_delay_s,
            ),
            ceiling_ramp=ceiling_ramp,
            # The trims integrate only while the written value is their own output: "their own"
            # within what the write economy lets through (deadband, resolution).
            supply_tolerance_k=_tolerance(outputs.get((plc, "hp_supply_setpoint_c")), 0.02),
            limit_tolerance_kw=_tolerance(outputs.get((plc, "heat_power_limit_kw")), 20.0),
        )


def _cdu_binding(
    name: str,
    bound: Mapping[str, Bound],
    outputs: Mapping[SignalKey, OutputSpec],
    *,
    ramped: bool,
    specs: dict[OutputSpec, OutputSpec],
) -> CduBinding:
    names, constants = _resolve(bound, _CDU_SIGNALS)
    supply, supply_2, setpoint, it_limit, mode, valve, local = names
    mode_spec = outputs.get((name, "control_mode"))
    setpoint_spec = outputs.get((name, "tcs_supply_setpoint_c"))
    steady = None
    if mode_spec is not None and setpoint_spec is not None and ramped:
        steady = _SteadyCdu(
            mode_key=(name, "control_mode"),
            mode_value=settled_value(mode_spec, min(max(1.0, mode_spec.low), mode_spec.high)),
            mode_band=mode_spec.revert_band,
            setpoint_key=(name, "tcs_supply_setpoint_c"),
            setpoint=specs.setdefault(setpoint_spec, setpoint_spec),
            setpoint_band=setpoint_spec.revert_band,
        )
    return CduBinding(
        name=name,
        supply=supply,
        supply_2=supply_2,
        setpoint=setpoint,
        it_limit=it_limit,
        mode=mode,
        valve=valve,
        local=local,
        constants=constants,
        writes_mode=(name, "control_mode") in outputs,
        writes_setpoint=(name, "tcs_supply_setpoint_c") in outputs,
        status_key=f"{name}.tcs_supply_setpoint_c",
        setpoint_key=(name, "tcs_supply_setpoint_c"),
        names=names,
        supply_key=(name, "tcs_supply_temp_c"),
        steady=steady,
    )


def _tolerance(spec: OutputSpec | None, least: float) -> float:
    return least if spec is None else max(least, spec.deadband + spec.resolution)


# -- 1. inputs and quality -------------------------------------------------------------------------


class CduReading(NamedTuple):
    """One CDU as seen this cycle (not fresh: any of its needed inputs stale, bad or frozen).

    A named tuple: one per CDU per cycle, built four times faster than a frozen dataclass.
    """

    name: str
    fresh: bool
    mode: float = 0.0
    active_setpoint_c: float = math.nan
    """The setpoint it acts on: the written one in external mode, else its local one."""
    hottest_c: float = math.nan
    """The hotter of its rack-loop supply sensors."""
    valve_pct: float = math.nan
    it_limit_c: float = math.nan


class Inputs(NamedTuple):
    """Every role input of the cycle (None: stale, bad, frozen or absent) and what follows from them."""

    outdoor_c: float
    """Low-passed outdoor temperature, or ``fallback_outdoor_temp_c`` before the first reading."""
    meter_supply_c: float | None = None
    """Heat-meter supply temperature, low-passed while the whole meter is fresh (else as read)."""
    meter_supply_raw_c: float | None = None
    """The same unfiltered (the over-temperature override acts on it)."""
    meter_power_kw: float | None = None
    """Heat-meter power, low-passed while the whole meter is fresh (else as read)."""
    meter_return_c: float | None = None
    station_supply_c: float | None = None
    plc_return_c: float | None = None
    dh_pump_tripped: float | None = None
    interlock: float | None = None
    source_in_c: float | None = None
    source_out_c: float | None = None
    running: float | None = None
    hx_heat_kw: float | None = None
    link_ok: float | None = None
    order_mw: float | None = None
    requirement_in_c: float | None = None
    order_age_s: float | None = None
    fws_supply_c: float | None = None
    cdus: tuple[CduReading, ...] = ()
    fresh_cdus: tuple[CduReading, ...] = ()
    """The CDUs whose inputs are all fresh (read_inputs fills it in; see `with_cdus`)."""
    stale_cdus: tuple[str, ...] = ()
    """Names of the CDUs that are not fresh."""
    hottest: CduReading | None = None
    """The fresh CDU with the hottest rack loop (the first of equals; None: no fresh CDU)."""
    stale: tuple[str, ...] = ()
    """Devices whose data is stale, CDUs first."""
    overrides: tuple[str, ...] = ()
    """The safe states the stale data calls for."""
    stuck: Mapping[SignalKey, Watch] = MappingProxyType({})
    """The frozen-value watches for the next cycle."""
    outdoor: TimedValue | None = None
    """The outdoor filter for the next cycle."""
    meter_filtered: tuple[TimedValue, TimedValue] | None = None
    """The meter filters for the next cycle (None while the meter is stale)."""

    @property
    def meter_ok(self) -> bool:
        """Supply, return and power of the heat meter are all fresh."""
        return self.meter_supply_c is not None and self.meter_power_kw is not None and self.meter_return_c is not None

    @property
    def plc_ok(self) -> bool:
        """The station PLC is fresh (its DH supply temperature is)."""
        return self.station_supply_c is not None

    @property
    def panel_ok(self) -> bool:
        """The panel is fresh (link flag and requirement; the flag may be a constant)."""
        return self.link_ok is not None and self.requirement_in_c is not None

    def with_cdus(self, cdus: tuple[CduReading, ...]) -> Inputs:
        """The same inputs with these CDUs (fresh and stale ones sorted out)."""
        fresh_cdus = tuple(cdu for cdu in cdus if cdu.fresh)
        return self._replace(
            cdus=cdus,
            fresh_cdus=fresh_cdus,
            stale_cdus=tuple(cdu.name for cdu in cdus if not cdu.fresh),
            hottest=max(fresh_cdus, key=lambda cdu: cdu.hottest_c, default=None),
        )


class _Watcher:
    """Readings that must also keep moving (a frozen transmitter is stale too); one cycle's watches."""

    __slots__ = ("after_s", "now_s", "stuck", "witness_delay_s", "witness_k")

    def __init__(self, stuck: Mapping[SignalKey, Watch], cfg: ControlConfig, now_s: float) -> None:
        self.stuck = dict(stuck)
        self.after_s = cfg.stuck_after_s
        self.witness_k = cfg.stuck_witness_k
        self.witness_delay_s = cfg.stuck_witness_delay_s
        self.now_s = now_s

    def check(self, key: SignalKey, value: float | None, witness_value: float | None) -> float | None:
        """``value``, or None when it has sat still too long (its witness: a related signal, or None)."""
        stuck = self.stuck
        if value is None or self.after_s <= 0.0:
            stuck.pop(key, None)
            return value
        seen = stuck.get(key)
        if seen is None:
            witness = math.nan if witness_value is None else witness_value
            stuck[key] = Watch(value, self.now_s, math.inf, math.nan, witness)
            return value
        if seen[0] != value:  # seen.value: most readings change every cycle
            step = abs(value - seen[0])
            typical_step = seen[3]
            typical = step if math.isnan(typical_step) else typical_step + 0.2 * (step - typical_step)
            witness = math.nan if witness_value is None else witness_value
            stuck[key] = Watch(value, self.now_s, min(seen[2], step), typical, witness)
            return value
        now_s = self.now_s
        if witness_value is not None and not math.isnan(seen.witness):
            away = abs(witness_value - seen.witness) > self.witness_k
            if away == math.isnan(seen.witness_away_s):  # it went away, or came back
                seen = stuck[key] = seen._replace(witness_away_s=now_s if away else math.nan)
        return None if self._frozen(seen) else value

    def _frozen(self, seen: Watch) -> bool:
        """Unchanged for ``stuck_after_s``, and either noisy before or its witness has been away since
        for ``stuck_witness_delay_s`` (the meter sees a change of the station's supply only after the
        DH pipe's transport delay: a witness that has just moved proves nothing yet)."""
        now_s = self.now_s
        if now_s - seen.since_s < self.after_s:
            return False
        if seen.typical_step >= _NOISY * seen.smallest_step:  # NaN (never changed) compares False
            return True
        return now_s - seen.witness_away_s >= self.witness_delay_s  # NaN (not away) compares False


def read_inputs(setup: Setup, state: SupervisorState, now_s: float, *, read: Reader) -> Inputs:
    """Stage 1: every role input with its quality, the filters, the stale devices and their safe states."""
    cfg = setup.config
    meter, plc, panel = setup.meter_inputs, setup.plc_inputs, setup.panel_inputs
    watched = _Watcher(state.stuck, cfg, now_s)
    # Every role input of the three, each device's fresh values asked once (map: no call per input).
    meter_supply_c, meter_power_kw, meter_return_c = map(read.getter(meter.name, meter.constants), meter.names)
    (
        station_supply_c,
        plc_fws_supply_c,
        plc_outdoor_c,
        plc_return_c,
        dh_pump_tripped,
        interlock,
        source_in_c,
        source_out_c,
        running,
        hx_heat_kw,
    ) = map(read.getter(plc.name, plc.constants), plc.names)
    fws_supply_c, outdoor_c, link_ok, order_mw, requirement_in_c, order_age_s = map(
        read.getter(panel.name, panel.constants), panel.names
    )
    meter_supply_c = watched.check((meter.name, "flow_temp_c"), meter_supply_c, station_supply_c)
    meter_power_kw = watched.check((meter.name, "heat_power_kw"), meter_power_kw, None)
    meter_supply_raw_c = meter_supply_c
    meter_filtered: tuple[TimedValue, TimedValue] | None = None
    if meter_supply_c is not None and meter_power_kw is not None and meter_return_c is not None:
        before = state.meter_filtered
        supply = _low_pass(before[0] if before else None, meter_supply_c, now_s, cfg.meter_filter_s)
        power = _low_pass(before[1] if before else None, meter_power_kw, now_s, cfg.meter_filter_s)
        meter_filtered = (supply, power)
        meter_supply_c, meter_power_kw = supply.value, power.value
    if plc_fws_supply_c is not None:
        fws_supply_c = plc_fws_supply_c  # the PLC's first, the panel's when the PLC has none
    if outdoor_c is None:
        outdoor_c = plc_outdoor_c  # the panel's first
    outdoor = state.outdoor
    if outdoor_c is not None:
        outdoor = _low_pass(outdoor, outdoor_c, now_s, cfg.outdoor_filter_s)
    cdus, fresh_cdus, stale_cdus, hottest = _read_cdus(setup, read, watched)
    inputs = Inputs(
        outdoor_c=outdoor.value if outdoor is not None else cfg.fallback_outdoor_temp_c,
        meter_supply_c=meter_supply_c,
        meter_supply_raw_c=meter_supply_raw_c,
        meter_power_kw=meter_power_kw,
        meter_return_c=meter_return_c,
        station_supply_c=station_supply_c,
        plc_return_c=plc_return_c,
        dh_pump_tripped=dh_pump_tripped,
        interlock=interlock,
        source_in_c=source_in_c,
        source_out_c=source_out_c,
        running=running,
        hx_heat_kw=hx_heat_kw,
        link_ok=link_ok,
        order_mw=order_mw,
        requirement_in_c=requirement_in_c,
        order_age_s=order_age_s,
        fws_supply_c=fws_supply_c,
        cdus=cdus,
        fresh_cdus=fresh_cdus,
        stale_cdus=stale_cdus,
        hottest=hottest,
        stuck=watched.stuck,
        outdoor=outdoor,
        meter_filtered=meter_filtered,
    )
    if inputs.meter_ok and inputs.plc_ok and inputs.panel_ok and not inputs.stale_cdus:
        return inputs  # all fresh: nothing stale, no safe state (the usual cycle)
    stale, overrides = _staleness(setup, inputs)
    return inputs._replace(stale=stale, overrides=overrides)


def _staleness(setup: Setup, inputs: Inputs) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which devices are stale (CDUs first) and the safe states that calls for."""
    stale_cdus = inputs.stale_cdus
    stale = list(stale_cdus)
    overrides: list[str] = []
    if not inputs.meter_ok:
        stale.append(setup.meter)
        overrides.append("safe_state:meter_stale")
    if not inputs.plc_ok:
        stale.append(setup.plc)
        overrides.append("safe_state:hp_plc_stale")
    if not inputs.panel_ok:
        stale.append(setup.panel)
    if stale_cdus:
        overrides.append("safe_state:cdu_data_stale")
    return tuple(stale), tuple(overrides)


def _read_cdus(
    setup: Setup, read: Reader, watched: _Watcher
) -> tuple[tuple[CduReading, ...], tuple[CduReading, ...], tuple[str, ...], CduReading | None]:
    """Every CDU as seen this cycle: all, the fresh ones, the names of the others, the hottest fresh one.

    One loop, the reading and the usual case of its supply's frozen-value watch (a value that
    moved: what :meth:`_Watcher.check` does then) written out: twelve CDUs every cycle.
    """
    cdus: list[CduReading] = []
    fresh: list[CduReading] = []
    stale: list[str] = []
    hottest: CduReading | None = None
    stuck, now_s, check = watched.stuck, watched.now_s, watched.check
    watching = watched.after_s > 0.0
    isnan, new = math.isnan, tuple.__new__
    for binding, values in zip(setup.cdus, read.fresh_values(setup.cdu_names), strict=True):
        get = (_WithConstants(values, binding.constants) if binding.constants else values).get
        # An absent input's name is None, and None is no key: get(None) is None.
        supply_c, supply_2_c, setpoint_c, it_limit_c, mode, valve_pct, local_c = map(get, binding.names)  # type: ignore[arg-type]
        seen = stuck.get(binding.supply_key) if watching and supply_c is not None else None
        if seen is not None and seen[0] != supply_c:  # moved (most cycles): the watch follows
            step = abs(supply_c - seen[0])  # type: ignore[operator]
            typical_step = seen[3]
            typical = step if isnan(typical_step) else typical_step + 0.2 * (step - typical_step)
            witness = math.nan if supply_2_c is None else supply_2_c
            stuck[binding.supply_key] = new(Watch, (supply_c, now_s, min(seen[2], step), typical, witness, math.nan))
        else:
            supply_c = check(binding.supply_key, supply_c, supply_2_c)
        # A signal the site marked absent is None by design, not stale: the role says what the
        # control does without it (a CDU without a mode register acts on the written setpoint).
        if binding.mode is None:
            mode = 1.0
        if binding.valve is None:
            valve_pct = math.nan
        if (
            supply_c is None
            or mode is None
            or setpoint_c is None
            or valve_pct is None
            or it_limit_c is None
            or (mode != 1.0 and local_c is None and binding.local is not None)
        ):
            stale.append(binding.name)
            cdus.append(CduReading(name=binding.name, fresh=False))
            continue
        cdu = new(  # by position (CduReading._make without its checks): per CDU per cycle
            CduReading,
            (
                binding.name,
                True,  # fresh
                mode,
                setpoint_c if mode == 1.0 or local_c is None else local_c,  # the setpoint it acts on
                supply_c if supply_2_c is None else max(supply_c, supply_2_c),  # the hotter sensor
                valve_pct,
                it_limit_c,
            ),
        )
        cdus.append(cdu)
        fresh.append(cdu)
        if hottest is None or cdu[4] > hottest[4]:  # hottest_c; max(): the first of equals
            hottest = cdu
    return tuple(cdus), tuple(fresh), tuple(stale), hottest


def _low_pass(previous: TimedValue | None, value: float, now_s: float, time_constant_s: float) -> TimedValue:
    """First-order low-pass, exact for any step; starts at the first value, restarts after a gap."""
    if previous is None or time_constant_s <= 0.0:
        return TimedValue(value, now_s)
    weight = -math.expm1(-max(now_s - previous.time_s, 0.0) / time_constant_s)
    return TimedValue(previous.value + weight * (value - previous.value), now_s)


# -- 2. the utility's order and requirement ----------------------------------------------------------


class UtilityOrder(NamedTuple):
    """The heat order and supply requirement this cycle, and where they come from."""

    link_up: bool
    curve_c: float
    """The weather curve's supply temperature at the filtered outdoor temperature."""
    order_kw: float
    """Heat order, >= 0."""
    requirement_c: float
    """Supply requirement, within the DH supply range."""
    source: OrderSource
    hold_remaining_s: float
    order_hold: HoldState
    requirement_hold: HoldState


def utility_order(setup: Setup, state: SupervisorState, now_s: float, *, inputs: Inputs) -> UtilityOrder:
    """Stage 2: the utility's order and requirement; held through a link loss, then the weather curve."""
    cfg = setup.config
    order_mw, requirement_in_c, order_age_s = inputs.order_mw, inputs.requirement_in_c, inputs.order_age_s
    link_up = (
        inputs.link_ok == 1.0
        and order_mw is not None
        and requirement_in_c is not None
        and (order_age_s is None or order_age_s <= cfg.utility_order_max_age_s)
    )
    curve_c = weather_curve_supply_c(
        inputs.outdoor_c,
        slope=cfg.weather_curve_slope,
        room_c=cfg.weather_curve_room_c,
        offset_k=cfg.weather_curve_offset_k,
        min_c=cfg.weather_curve_min_c,
        max_c=cfg.weather_curve_max_c,
    )
    last_order_kw = state.order_hold.last_order
    if cfg.fallback_heat_order_mw is not None:
        fallback_order_kw = cfg.fallback_heat_order_mw * 1000.0
    else:
        fallback_order_kw = last_order_kw if last_order_kw is not None else 0.0
    order = setup.hold.step(
        state.order_hold,
        order=order_mw * 1000.0 if order_mw is not None else None,
        link_up=link_up,
        fallback=fallback_order_kw,
        now_s=now_s,
    )
    requirement = setup.hold.step(
        state.requirement_hold, order=requirement_in_c, link_up=link_up, fallback=curve_c, now_s=now_s
    )
    return UtilityOrder(
        link_up=link_up,
        curve_c=curve_c,
        order_kw=max(order.value, 0.0),
        requirement_c=min(max(requirement.value, cfg.dh_min_supply_temp_c), cfg.dh_max_supply_temp_c),
        source=requirement.source,
        hold_remaining_s=requirement.hold_remaining_s,
        order_hold=order.state,
        requirement_hold=requirement.state,
    )


# -- 3. can the DH side take heat? ---------------------------------------------------------------


class DhAcceptance(NamedTuple):
    """Why the DH side cannot take heat (none: it can), and whether heat is really flowing."""

    refusals: tuple[str, ...]
    delivering: bool
    """The meter is fresh, the DH side takes heat, and the meter sees power at a real dT."""

    @property
    def takes_heat(self) -> bool:
        """No refusal."""
        return not self.refusals


def dh_acceptance(config: ControlConfig, inputs: Inputs, order_kw: float) -> DhAcceptance:
    """Stage 3: zero order, DH pump tripped or DH water too hot refuse heat; delivering needs a real dT."""
    refusals: list[str] = []
    if order_kw <= 0.0:
        refusals.append("order_zero")
    if inputs.dh_pump_tripped == 1.0:
        refusals.append("dh_pump_trip")
    return_c = inputs.meter_return_c if inputs.meter_return_c is not None else inputs.plc_return_c
    interlock = inputs.interlock
    if (return_c is not None and return_c > config.dh_return_max_c) or (
        interlock is not None and int(interlock) & _INTERLOCK_DH_TOO_HOT
    ):
        refusals.append("dh_return_too_hot")
    supply_c, return_c, power_kw = inputs.meter_supply_c, inputs.meter_return_c, inputs.meter_power_kw
    delivering = (
        not refusals
        and supply_c is not None
        and return_c is not None
        and power_kw is not None
        and power_kw > 0.0
        and supply_c - return_c > _MIN_DELIVERY_DT_K
    )
    return DhAcceptance(refusals=tuple(refusals), delivering=delivering)


# -- 4. DH supply: requirement + PI trim (+ pipe-loss feed-forward) ------------------------------------


class DhSupply(NamedTuple):
    """The heat pumps' supply setpoint this cycle and how it was chosen."""

    feedforward_k: float
    disturbed_s: float
    """Last time the requirement moved or the station was off its setpoint."""
    settled: bool
    """Undisturbed for ``dh_settle_s``: the trims may integrate."""
    trim_k: float
    trim: PidState
    normal: str
    """The normal controller's name: ``dh_trim`` or ``manual``."""
    normal_c: float
    over_k: float
    """How far the hotter of meter (raw) and station is above the DH maximum (<= 0: not)."""
    choice: Selection
    setpoint_c: float


def dh_supply(
    setup: Setup,
    state: SupervisorState,
    now_s: float,
    *,
    inputs: Inputs,
    utility: UtilityOrder,
    acceptance: DhAcceptance,
) -> DhSupply:
    """Stage 4: requirement + trim + feed-forward (or the operator's value), min-selected with over-temperature."""
    cfg = setup.config
    requirement_c = utility.requirement_c
    meter_supply_c = inputs.meter_supply_c
    delivering = acceptance.delivering
    feedforward_k = _pipe_feedforward_k(cfg, inputs) if delivering else 0.0
    supply_lease = state.leases.get((setup.plc, "hp_supply_setpoint_c"))
    disturbed_s = _disturbed_s(
        cfg, inputs, state, now_s, requirement_c=requirement_c, supply_lease=supply_lease, delivering=delivering
    )
    # Trims integrate only when the station has been settled for longer than the pipe
    # takes: a requirement step, a heat pump starting or a restart pushing cold water out
    # of the pipe is the PLC's transient (or physics), and it reaches the meter a pipe
    # later. Deliberately not "meter agrees with station": a lasting offset between the
    # two (sensor calibration, pipe loss) is exactly what the trim is there to learn, and
    # during a weather-driven requirement ramp the meter trails the station by a pipe.
    settled = now_s - disturbed_s >= cfg.dh_settle_s
    if state.mode is Mode.MANUAL:
        manual_supply_c = state.manual_supply_temp_c
        if manual_supply_c is None:
            manual_supply_c = supply_lease.value if supply_lease is not None else requirement_c
        normal_c = manual_supply_c
        normal = "manual"
        trim_k, trim = _track(
            setup.dh_trim_pid,
            state.dh_trim,
            manual_supply_c - requirement_c - feedforward_k,
            setpoint=requirement_c,
            measurement=meter_supply_c,
            now_s=now_s,
        )
    else:
        trim_k, trim = _dh_trim(
            setup, state, requirement_c, meter_supply_c, now_s, delivering=delivering, settled=settled
        )
        normal_c = requirement_c + trim_k + feedforward_k
        normal = "dh_trim"
    measured_dh_c = _hotter(inputs.meter_supply_raw_c, inputs.station_supply_c)
    over_threshold_c = cfg.dh_max_supply_temp_c
    over_k = measured_dh_c - over_threshold_c if math.isfinite(measured_dh_c) else 0.0
    candidates = {normal: normal_c, "dh_max_supply": cfg.dh_max_supply_temp_c}
    if over_k > 0.0:
        # Below what the heat pumps hold now (not merely below the maximum): the water is
        # already too hot at that setpoint, so the setpoint goes down while this lasts.
        present_c = supply_lease.value if supply_lease is not None else normal_c
        candidates["dh_over_temperature"] = (
            min(present_c, over_threshold_c) - cfg.dh_over_temperature_gain_k_per_k * over_k
        )
    choice = select_min(candidates)
    return DhSupply(
        feedforward_k=feedforward_k,
        disturbed_s=disturbed_s,
        settled=settled,
        trim_k=trim_k,
        trim=trim,
        normal=normal,
        normal_c=normal_c,
        over_k=over_k,
        choice=choice,
        setpoint_c=max(choice.value, cfg.dh_min_supply_temp_c),
    )


def _hotter(first_c: float | None, second_c: float | None) -> float:
    """The higher of the two that are known (max(): the first of equals), NaN for neither."""
    if first_c is None:
        return math.nan if second_c is None else second_c
    return first_c if second_c is None else max(first_c, second_c)


def _pipe_feedforward_k(cfg: ControlConfig, inputs: Inputs) -> float:
    """The DH pipe's heat loss as a supply temperature drop at the metered flow (0 without a loss)."""
    supply_c, return_c, power_kw = inputs.meter_supply_c, inputs.meter_return_c, inputs.meter_power_kw
    if cfg.dh_pipe_heat_loss_kw <= 0.0 or supply_c is None or return_c is None or power_kw is None:
        return 0.0
    dt_k = supply_c - return_c
    flow_kg_s = power_kw / (WATER_CP_KJ_KGK * dt_k)  # m_dot = Q / (cp dT)
    return cfg.dh_pipe_heat_loss_kw / (flow_kg_s * WATER_CP_KJ_KGK)


def _disturbed_s(
    cfg: ControlConfig,
    inputs: Inputs,
    state: SupervisorState,
    now_s: float,
    *,
    requirement_c: float,
    supply_lease: Lease | None,
    delivering: bool,
) -> float:
    """Now, if the requirement moved or the station is off what was written; else when that last was."""
    last_requirement_c = state.last_requirement_c
    station_supply_c = inputs.station_supply_c
    if (
        state.dh_disturbed_s is None
        or not delivering
        or inputs.meter_supply_c is None
        or last_requirement_c is None
        or abs(requirement_c - last_requirement_c) > 0.05
        or station_supply_c is None
        or supply_lease is None
        or abs(station_supply_c - supply_lease.value) > cfg.dh_settle_band_k
    ):
        return now_s
    return state.dh_disturbed_s


def _dh_trim(
    setup: Setup,
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
    return _trim(
        setup.dh_trim_pid,
        state.dh_trim,
        state.dh_applied_trim_k,
        setpoint=requirement_c,
        measurement=meter_supply_c,
        now_s=now_s,
        hold=not settled,
        applied_tolerance=setup.supply_tolerance_k,
    )


def _trim(
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
        pid = pid._replace(mode=ControlMode.AUTO)
    held = pid.last_output if pid.last_output is not None else 0.0
    if applied is not None and abs(applied - held) > applied_tolerance:
        hold = True
    if hold:
        return _track(config, pid, held, setpoint=setpoint, measurement=measurement, now_s=now_s)
    result = pid_step(config, pid, setpoint=setpoint, measurement=measurement, now_s=now_s)
    if result.output is None:
        return held, pid
    return result.output, result.state


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
        pid._replace(mode=ControlMode.MANUAL),
        setpoint=setpoint,
        measurement=measurement,
        now_s=now_s,
        track=output,
    )
    if result.output is None:
        return output, PidState(last_output=output)
    return result.output, result.state._replace(mode=ControlMode.AUTO)


# -- 5. heat-order limit: order + PI trim, min-selected with the heat pumps' limits --------------------


class HeatLimit(NamedTuple):
    """The heat-power limit this cycle, how it was chosen, and the heat-pump enable."""

    trim_kw: float
    trim: PidState
    normal: str
    """The normal controller's name: ``heat_order`` or ``manual``."""
    choice: Selection
    hp_enable: OnOffState


def heat_order_limit(
    setup: Setup,
    state: SupervisorState,
    now_s: float,
    *,
    inputs: Inputs,
    utility: UtilityOrder,
    acceptance: DhAcceptance,
    supply: DhSupply,
) -> HeatLimit:
    """Stage 5: order + trim (or the operator's value), min-selected with over-temperature, source,
    capacity and short-supply limits; the heat pumps are enabled (with their timers) while it is > 0."""
    order_kw = utility.order_kw
    if state.mode is Mode.MANUAL:
        manual_heat_kw = state.manual_heat_power_kw
        if manual_heat_kw is None:
            lease = state.leases.get((setup.plc, "heat_power_limit_kw"))
            manual_heat_kw = lease.value if lease is not None else order_kw
        normal_kw = manual_heat_kw
        normal = "manual"
        trim_kw, trim = _track(
            setup.order_pid,
            state.order_trim,
            manual_heat_kw - order_kw,
            setpoint=order_kw,
            measurement=inputs.meter_power_kw,
            now_s=now_s,
        )
    else:
        trim_kw, trim = _order_trim(
            setup,
            state,
            order_kw,
            inputs.meter_power_kw,
            now_s,
            delivering=acceptance.delivering,
            settled=supply.settled,
        )
        normal_kw = max(order_kw + trim_kw, 0.0) if order_kw > 0.0 else 0.0
        normal = "heat_order"
    candidates = {normal: normal_kw}
    candidates.update(_heat_pump_limits(setup, inputs, acceptance, supply, state))
    choice = select_min(candidates)
    hp_enable = setup.hp_timer.step(state.hp_enable, request_on=choice.value > 0.0, now_s=now_s)
    return HeatLimit(trim_kw=trim_kw, trim=trim, normal=normal, choice=choice, hp_enable=hp_enable)


def _heat_pump_limits(
    setup: Setup, inputs: Inputs, acceptance: DhAcceptance, supply: DhSupply, state: SupervisorState
) -> dict[str, float]:
    """The limits that override the order: DH too hot, source too cold, capacity, supply short."""
    cfg = setup.config
    limits: dict[str, float] = {}
    delivered_kw = inputs.meter_power_kw if inputs.meter_power_kw is not None else 0.0
    if supply.over_k > 0.0:
        limits["dh_over_temperature"] = max(delivered_kw - cfg.dh_over_temperature_limit_kw_per_k * supply.over_k, 0.0)
    # Source limit: evaporator inlet (the PLC's source-too-cold interlock) or outlet (the
    # heat pumps at their source minimum cannot lift the whole DH flow to setpoint: less
    # flow, hot water, instead of full flow that is too cold).
    source_in_c, source_out_c = inputs.source_in_c, inputs.source_out_c
    source_short_k = max(
        cfg.hp_source_min_temp_c - source_in_c if source_in_c is not None else 0.0,
        cfg.hp_source_outlet_min_temp_c - source_out_c if source_out_c is not None else 0.0,
    )
    if source_short_k > 0.0:
        limits["heat_pump_source_limit"] = max(delivered_kw - cfg.hp_source_limit_kw_per_k * source_short_k, 0.0)
    running, hx_heat_kw = inputs.running, inputs.hx_heat_kw
    if running is None or running < 1.0:
        return limits
    if hx_heat_kw is not None:
        # Heat-pump limit: the PLC lets its DH flow run 10 % ahead of the running heat
        # pumps, so an order above their capacity sags the supply until the next one has
        # started. Keep the limit just below it; at 95 % the PLC stages the next one up.
        capacity_kw = running * cfg.heat_pump_rated_kw * (1.0 - cfg.heat_pump_capacity_margin_pct / 100.0)
        limits["heat_pump_capacity"] = hx_heat_kw + capacity_kw
    supply_lease = state.leases.get((setup.plc, "hp_supply_setpoint_c"))
    limit_lease = state.leases.get((setup.plc, "heat_power_limit_kw"))
    station_supply_c = inputs.station_supply_c
    if (
        acceptance.delivering
        and station_supply_c is not None
        and supply_lease is not None
        and limit_lease is not None
        and station_supply_c < supply_lease.value - cfg.station_short_k
    ):
        # The heat pumps cannot hold the setpoint right now (a heat pump starting and the
        # PLC shifting load onto it, a source limit): more flow would only sag the supply.
        limits["heat_pump_short"] = limit_lease.value
    return limits


def _order_trim(
    setup: Setup,
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
        return held, pid._replace(last_time_s=None, last_measurement=None, last_output=held)
    # Far from the order, or the DH supply still moving: a transient or a capacity
    # shortfall that the trim cannot fix (heat read while the pipe still holds water of
    # the old temperature says nothing about the limit's offset).
    hold = not settled or abs(order_kw - delivered_kw) > order_kw * setup.config.order_trim_band_pct / 100.0
    return _trim(
        setup.order_pid,
        pid,
        state.order_applied_trim_kw,
        setpoint=order_kw,
        measurement=delivered_kw,
        now_s=now_s,
        hold=hold,
        applied_tolerance=setup.limit_tolerance_kw,
    )


# -- 6. source ceiling: the CDUs' setpoints raised slowly, backed off fast; the dry coolers ------------


class SourceCeiling(NamedTuple):
    """The CDUs' common setpoint ceiling and the dry coolers' setpoint this cycle."""

    ceiling: RampState
    """The ceiling after this cycle's ramp step."""
    target_c: float
    previous: RampState
    """The ceiling before this cycle (the first cycle: the lowest active CDU setpoint)."""
    backoff: tuple[str, ...]
    """Why the ceiling backs off (none: it does not)."""
    last_backoff_s: float | None
    cdu_reason: str
    """The reason written with the CDU setpoints."""
    dry_cooler: Selection
    overrides: tuple[str, ...]
    holding_out: tuple[str, ...] = ()
    """CDUs that cannot hold their setpoint (valve saturated or supply too far above it): each backs
    off alone while the ceiling, the other CDUs and the dry coolers hold."""

    @property
    def moving(self) -> bool:
        """The ceiling is still on its way (its ramp holds it back, or just did)."""
        return abs(self.ceiling.value - self.target_c) > 0.01 or abs(self.ceiling.value - self.previous.value) > 0.005


def source_ceiling(
    setup: Setup, state: SupervisorState, now_s: float, *, inputs: Inputs, acceptance: DhAcceptance
) -> SourceCeiling:
    """Stage 6: raise the CDU setpoints towards the IT limits less a margin; back off when a CDU cannot
    hold, a rack nears its limit or the facility water runs hot; the dry coolers take the rest."""
    cfg = setup.config
    fresh_cdus = inputs.fresh_cdus
    upper_c, holding_out, near_limit = _cdu_limits(cfg, fresh_cdus)
    previous = state.cdu_ceiling
    if previous is None:
        start_c = min((cdu.active_setpoint_c for cdu in fresh_cdus), default=cfg.cdu_conservative_setpoint_c)
        previous = RampState(value=start_c, time_s=now_s)
    dc_upper_c = cfg.fws_supply_limit_c - cfg.fws_margin_k
    dc_normal_c = min(dc_upper_c, previous.value - cfg.cdu_approach_k)
    fws_supply_c = inputs.fws_supply_c
    fws_hot_k = (fws_supply_c - (dc_normal_c + cfg.fws_too_hot_k)) if fws_supply_c is not None else 0.0
    # A CDU that cannot hold backs off alone: on a shared facility header, lowering every setpoint
    # opens every valve and takes pressure from the one that is short, and a ceiling that drops
    # drags the dry-cooler setpoint down with it (40 MW dumped for minutes on the reference day).
    backoff = _backoff(near_limit, fws_hot_k)
    overrides = [f"override:{name}" for name in (("cdu_cannot_hold",) if holding_out else ()) + backoff]
    last_backoff_s = state.last_backoff_s
    if backoff:
        target_c = cfg.cdu_setpoint_min_c
        last_backoff_s = now_s
    elif holding_out:
        target_c = min(previous.value, upper_c)  # hold the others (and the dry coolers)
        last_backoff_s = now_s
    elif inputs.stale_cdus or (last_backoff_s is not None and now_s - last_backoff_s < cfg.cdu_raise_hold_s):
        target_c = min(previous.value, upper_c)  # stop raising
    else:
        target_c = upper_c
    cdu_reason = f"override:{backoff[0]}" if backoff else "source_optimisation"
    if fws_supply_c is None:
        # Facility water unknown (station and panel stale): never hold the last value,
        # go to the conservative setpoint the CDUs would run on their own.
        target_c = min(target_c, cfg.cdu_conservative_setpoint_c)
        overrides.append("safe_state:fws_unknown")
        cdu_reason = "safe_state:fws_unknown"
    ceiling = setup.ceiling_ramp.step(previous, target=target_c, now_s=now_s)
    # Dry coolers: take whatever the DH side does not.
    dc_candidates = {"source_optimisation": min(dc_upper_c, ceiling.value - cfg.cdu_approach_k)}
    if fws_hot_k > 0.0:
        dc_candidates["fws_too_hot"] = dc_candidates["source_optimisation"] - cfg.fws_too_hot_gain_k_per_k * fws_hot_k
    if inputs.stale_cdus:
        dc_candidates["cdu_data_stale"] = cfg.stale_dry_cooler_setpoint_c
    if not acceptance.takes_heat:
        # Never above the facility limit: the heat goes to the dry coolers, not to the racks.
        dc_candidates["dh_cannot_take_heat"] = dc_upper_c
    return SourceCeiling(
        ceiling=ceiling,
        target_c=target_c,
        previous=previous,
        backoff=backoff,
        holding_out=holding_out,
        last_backoff_s=last_backoff_s,
        cdu_reason=cdu_reason,
        dry_cooler=select_min(dc_candidates),
        overrides=tuple(overrides),
    )


def _cdu_limits(cfg: ControlConfig, fresh_cdus: tuple[CduReading, ...]) -> tuple[float, tuple[str, ...], bool]:
    """In one pass over the fresh CDUs: the highest setpoint their IT limits allow (the conservative
    setpoint without any), the CDUs that cannot hold their setpoint, and whether a rack loop is near
    its IT limit."""
    margin_k, saturated_pct, deviation_k, near_k = (
        cfg.it_margin_k,
        cfg.cdu_valve_saturated_pct,
        cfg.cdu_deviation_k,
        cfg.cdu_near_limit_k,
    )
    upper_c: float | None = None
    holding_out: list[str] = []
    near_limit = False
    for cdu in fresh_cdus:
        limit_c = cdu.it_limit_c - margin_k
        if upper_c is None or limit_c > upper_c:  # max(): the first of equals
            upper_c = limit_c
        # Cannot hold: its valve is saturated or its supply too far above its setpoint.
        if cdu.valve_pct >= saturated_pct or cdu.hottest_c > cdu.active_setpoint_c + deviation_k:
            holding_out.append(cdu.name)
        if cdu.hottest_c > cdu.it_limit_c - near_k:
            near_limit = True
    return (cfg.cdu_conservative_setpoint_c if upper_c is None else upper_c), tuple(holding_out), near_limit


def _backoff(near_limit: bool, fws_hot_k: float) -> tuple[str, ...]:
    """Why every CDU backs off: a rack near its IT limit, facility water too hot (site-wide safety)."""
    if near_limit:
        return ("rack_near_limit", "fws_too_hot") if fws_hot_k > 0.0 else ("rack_near_limit",)
    return ("fws_too_hot",) if fws_hot_k > 0.0 else ()


# -- 7. writes ---------------------------------------------------------------------------------------


class Writes(NamedTuple):
    """This cycle's writes in send order, the write memory for the next cycle, and what the devices hold."""

    writes: list[Write]
    heartbeat_writes: int
    ramps: Mapping[SignalKey, RampState]
    leases: Mapping[SignalKey, Lease]
    heartbeats: Mapping[str, Lease]
    ramping: frozenset[str]
    """Devices with a setpoint still on its way."""
    applied_supply_c: float
    """The DH supply setpoint the PLC holds (or is being given)."""
    applied_limit_kw: float
    """The heat-power limit the PLC holds (or is being given)."""


def plan_writes(
    setup: Setup,
    state: SupervisorState,
    now_s: float,
    *,
    read: Reader,
    inputs: Inputs,
    acceptance: DhAcceptance,
    supply: DhSupply,
    limit: HeatLimit,
    ceiling: SourceCeiling,
) -> Writes:
    """Stage 7: heartbeats to fresh devices, then the CDUs, then the PLC (nothing to a stale PLC)."""
    plc = setup.plc
    book = WriteBook(
        setup.outputs,
        setup.ramps,
        ramps=state.ramps,
        leases=state.leases,
        now_s=now_s,
        refresh_s=setup.config.write_refresh_s,
        grace_s=setup.config.readback_grace_s,
    )
    fresh_devices = {cdu.name for cdu in inputs.fresh_cdus}
    if inputs.plc_ok:
        fresh_devices.add(plc)
    if inputs.panel_ok:
        fresh_devices.add(setup.panel)
    if inputs.meter_ok:
        fresh_devices.add(setup.meter)
    heartbeats = _beat(setup, book, read.good, fresh_devices, state.heartbeats, now_s=now_s)
    _write_cdus(setup, book, inputs, ceiling)
    if ceiling.moving:
        # The common ceiling is itself the CDU setpoints' ramp (raise 0.5 K/min, back off 3 K/min).
        book.ramping.update(cdu.name for cdu in inputs.fresh_cdus)
    applied_supply_c = supply.setpoint_c
    applied_limit_kw = limit.choice.value
    if inputs.plc_ok:
        # A stale PLC gets nothing at all: its watchdog returns it to local values.
        keys = setup.plc_outputs
        on = limit.hp_enable.on
        on_reason = "heat_order" if on else "no_heat_wanted"
        _propose(book, read, keys, "hp_enable", 1.0 if on else 0.0, reason=on_reason)
        supply_reason = _reason(supply.choice.name, supply.normal)
        applied_supply_c = _propose(book, read, keys, "hp_supply_setpoint_c", supply.setpoint_c, reason=supply_reason)
        limit_reason = _reason(limit.choice.name, limit.normal)
        applied_limit_kw = _propose(book, read, keys, "heat_power_limit_kw", limit.choice.value, reason=limit_reason)
        takes_heat = acceptance.takes_heat
        dc_reason = "cooling_first" if takes_heat else "override:dh_cannot_take_heat"
        _propose(book, read, keys, "dry_cooler_enable", 1.0, reason=dc_reason)
        dc = ceiling.dry_cooler
        _propose(book, read, keys, "dry_cooler_setpoint_c", dc.value, reason=_reason(dc.name, "source_optimisation"))
    return Writes(
        writes=book.writes,
        heartbeat_writes=book.heartbeats,
        ramps=book.ramps,
        leases=book.leases,
        heartbeats=heartbeats,
        ramping=frozenset(book.ramping),
        applied_supply_c=applied_supply_c,
        applied_limit_kw=applied_limit_kw,
    )


def _propose(
    book: WriteBook, read: Reader, keys: Mapping[str, SignalKey], output: str, value: float, *, reason: str
) -> float:
    """``value`` for the output of ``keys`` (an unbound one: nothing written); what the device holds."""
    key = keys.get(output)
    if key is None:
        return value
    present = read(key[0], output)
    held = book.unchanged(key, value, present)
    return held if held is not None else book.propose(key[0], output, value, reason, present=present)


def _beat(
    setup: Setup, book: WriteBook, good: Good, fresh: set[str], sent: Mapping[str, Lease], *, now_s: float
) -> Mapping[str, Lease]:
    """Declared heartbeats, each at its device's period, only to devices fresh in their role.

    A device we cannot see gets no heartbeat: its watchdog must take over (and return it to
    its local values), since nothing the gateway decides for it is based on data any more.
    """
    beats: dict[str, Lease] | None = None  # a copy of sent at the first beat (most cycles send none)
    max_age_s = setup.config.input_max_age_s
    for device, beat, period_s in setup.heartbeat_periods:
        if device not in fresh:
            continue
        last = sent.get(device)
        if last is not None and now_s - last.time_s < period_s:
            continue
        value = _beat_value(beat, last, good, device, max_age_s)
        if value is None:
            continue  # nothing fresh to echo: the watchdog sees no answer
        book.pulse(device, beat.signal, value, beat.low, beat.high)
        if beats is None:
            beats = dict(sent)
        beats[device] = Lease(value, now_s)
    return sent if beats is None else beats


def _beat_value(beat: Heartbeat, last: Lease | None, good: Good, device: str, max_age_s: float) -> float | None:
    """The next heartbeat value: the echoed signal, the other toggle state, or the counter + 1."""
    if beat.mode is HeartbeatMode.ECHO:
        assert beat.echo_of is not None
        return good(device, beat.echo_of, max_age_s)
    previous = last.value if last is not None else good(device, beat.signal, max_age_s)
    if beat.mode is HeartbeatMode.TOGGLE:
        return beat.low if previous == beat.high else beat.high
    span = int(beat.high - beat.low) + 1
    base = previous if previous is not None and math.isfinite(previous) else beat.low
    return beat.low + (int(base - beat.low) + 1) % span


def _write_cdus(setup: Setup, book: WriteBook, inputs: Inputs, ceiling: SourceCeiling) -> None:
    """Every CDU its setpoint: the common ceiling, or its own back-off; the steady ones without the book."""
    ceiling_c, reason, margin_k = ceiling.ceiling.value, ceiling.cdu_reason, setup.config.it_margin_k
    alone = () if ceiling.backoff else ceiling.holding_out
    floor_c = setup.config.cdu_setpoint_min_c
    cycle = (book.leases, book.ramps, book.now_s, book.refresh_s, book.grace_s)
    # The target as the CDUs store it, worked out once for the CDUs that share it (and its spec).
    rounded: tuple[OutputSpec | None, float, float] = (None, math.nan, math.nan)
    for cdu, binding in zip(inputs.cdus, setup.cdus, strict=True):
        if alone and cdu.name in alone:
            # Its own back-off: the write book's ramp takes it down at the back-off rate.
            _write_cdu(book, cdu, binding, min(floor_c, cdu.it_limit_c - margin_k), "override:cdu_cannot_hold")
            continue
        target_c = min(ceiling_c, cdu.it_limit_c - margin_k)
        steady = binding.steady
        if cdu.fresh and steady is not None:
            spec = steady.setpoint
            if rounded[0] is not spec or rounded[1] != target_c:
                in_limits = math.isfinite(target_c) and spec.low <= target_c <= spec.high
                rounded = (spec, target_c, settled_value(spec, target_c) if in_limits else math.nan)
            if _steady(cycle, steady, cdu, target_c, rounded[2]):
                continue
        _write_cdu(book, cdu, binding, target_c, reason)


def _steady(
    cycle: tuple[Mapping[SignalKey, Lease], dict[SignalKey, RampState], float, float, float],
    steady: _SteadyCdu,
    cdu: CduReading,
    target_c: float,
    settled_c: float,
) -> bool:
    """True when proposing mode 1 and ``target_c`` to this fresh CDU would write nothing and change
    nothing but renew its arrived setpoint ramp (renewed here): most CDUs, most cycles.

    Exactly the path :meth:`WriteBook.propose` takes then, checked without it (``cycle``: the
    book's leases, ramps, time, refresh and read-back grace): both leases younger than the
    refresh, neither read-back reverted, the setpoint ramp already at the target, and the target
    within the limits and as stored (``settled_c``, NaN when it is not within them) what was
    last written.
    """
    leases, ramps, now_s, refresh_s, grace_s = cycle
    mode_lease = leases.get(steady.mode_key)
    setpoint_lease = leases.get(steady.setpoint_key)
    ramp = ramps.get(steady.setpoint_key)
    if mode_lease is None or setpoint_lease is None or ramp is None:
        return False
    held_c = setpoint_lease.value
    mode_age_s = now_s - mode_lease.time_s
    setpoint_age_s = now_s - setpoint_lease.time_s
    if (
        held_c != settled_c
        or ramp.value != target_c
        or not ramp.time_s < now_s < math.inf
        or mode_lease.value != steady.mode_value
        or mode_age_s >= refresh_s
        or setpoint_age_s >= refresh_s
        or (mode_age_s >= grace_s and abs(cdu.mode - mode_lease.value) > steady.mode_band)  # reverted
        or (setpoint_age_s >= grace_s and abs(cdu.active_setpoint_c - held_c) > steady.setpoint_band)
    ):
        return False
    ramps[steady.setpoint_key] = RampState(target_c, now_s)
    return True


def _write_cdu(book: WriteBook, cdu: CduReading, binding: CduBinding, target_c: float, reason: str) -> None:
    """Take a fresh CDU over and give it ``target_c``; hand a stale one back to its local setpoint."""
    name = cdu.name
    if not cdu.fresh:
        # Blind: hand the CDU back to its own local setpoint (if the write gets through)
        # and stop its heartbeat (if it does not, the watchdog does the same).
        if binding.writes_mode:
            book.propose(name, "control_mode", 0.0, "safe_state:cdu_data_stale")
        return
    if binding.writes_mode:
        # External mode first, then the setpoint from where the CDU is now (bumpless).
        book.propose(name, "control_mode", 1.0, "take_over", present=cdu.mode)
    if binding.writes_setpoint:
        book.propose(name, "tcs_supply_setpoint_c", target_c, reason, present=cdu.active_setpoint_c)


def _reason(chosen: str, normal: str) -> str:
    return chosen if chosen == normal else f"override:{chosen}"


# -- 8. alarms, status and the next state ---------------------------------------------------------------


def finish(
    setup: Setup,
    state: SupervisorState,
    now_s: float,
    *,
    inputs: Inputs,
    utility: UtilityOrder,
    acceptance: DhAcceptance,
    supply: DhSupply,
    limit: HeatLimit,
    ceiling: SourceCeiling,
    writes: Writes,
) -> tuple[list[Write], SupervisorState, dict[str, float | str | bool]]:
    """Stage 8: the deviation alarm, the status record, the write budgets and the next state."""
    deviation_alarm = state.deviation_alarm
    deviation_k = math.nan
    meter_supply_c = inputs.meter_supply_c
    if acceptance.delivering and meter_supply_c is not None:
        deviation_k = meter_supply_c - utility.requirement_c
        deviation_alarm = setup.deviation_alarm.step(deviation_alarm, abs(deviation_k), now_s)
    status = _status(
        setup=setup,
        inputs=inputs,
        utility=utility,
        acceptance=acceptance,
        supply=supply,
        limit=limit,
        ceiling=ceiling,
        writes=writes,
        state=state,
        deviation_k=deviation_k,
        deviation_alarm=deviation_alarm,
    )
    spent: dict[str, int] = {}
    for write in writes.writes:
        if write.reason != HEARTBEAT_REASON:
            spent[write.device] = spent.get(write.device, 0) + 1
    budgets, overdrawn = spend_budget(state.budgets, spent, setup.budgets, now_s, since_s=state.budgets_time_s)
    status["write_budget_exceeded"] = ",".join(overdrawn)
    setpoint_writes = len(writes.writes) - writes.heartbeat_writes
    new_state = SupervisorState(
        mode=state.mode,
        manual_supply_temp_c=state.manual_supply_temp_c,
        manual_heat_power_kw=state.manual_heat_power_kw,
        dh_trim=supply.trim,
        dh_applied_trim_k=writes.applied_supply_c - utility.requirement_c - supply.feedforward_k,
        last_requirement_c=utility.requirement_c,
        dh_disturbed_s=supply.disturbed_s,
        order_trim=limit.trim,
        order_applied_trim_kw=writes.applied_limit_kw - utility.order_kw,
        order_hold=utility.order_hold,
        requirement_hold=utility.requirement_hold,
        cdu_ceiling=ceiling.ceiling,
        last_backoff_s=ceiling.last_backoff_s,
        ramps=writes.ramps,
        leases=writes.leases,
        heartbeats=writes.heartbeats,
        budgets=budgets,
        budgets_time_s=now_s,
        setpoint_writes_total=state.setpoint_writes_total + setpoint_writes,
        heartbeat_writes_total=state.heartbeat_writes_total + writes.heartbeat_writes,
        hp_enable=limit.hp_enable,
        deviation_alarm=deviation_alarm,
        stuck=inputs.stuck,
        panel_seen=state.panel_seen,
        outdoor=inputs.outdoor,
        meter_filtered=inputs.meter_filtered,
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
        return [], new_state, status
    return writes.writes, new_state, status


def overrides_of(
    inputs: Inputs, acceptance: DhAcceptance, supply: DhSupply, limit: HeatLimit, ceiling: SourceCeiling
) -> list[str]:
    """Every override and safe state active this cycle, once each, in priority order of their stages."""
    overrides = list(inputs.overrides)
    if not acceptance.takes_heat:
        overrides.append("override:dh_cannot_take_heat")
    overrides.extend(ceiling.overrides)
    for name, normal in ((supply.choice.name, supply.normal), (limit.choice.name, limit.normal)):
        if name != normal:
            overrides.append(f"override:{name}")
    if ceiling.dry_cooler.name not in ("source_optimisation", "dh_cannot_take_heat"):
        overrides.append(f"override:{ceiling.dry_cooler.name}")
    return list(dict.fromkeys(overrides))


def _status(
    *,
    setup: Setup,
    inputs: Inputs,
    utility: UtilityOrder,
    acceptance: DhAcceptance,
    supply: DhSupply,
    limit: HeatLimit,
    ceiling: SourceCeiling,
    writes: Writes,
    state: SupervisorState,
    deviation_k: float,
    deviation_alarm: AlarmState,
) -> dict[str, float | str | bool]:
    """The flat status record published every cycle (measurement ``control``)."""
    meter_power_kw = inputs.meter_power_kw
    meter_supply_c = inputs.meter_supply_c
    order_kw = utility.order_kw
    hottest = inputs.hottest
    overrides = overrides_of(inputs, acceptance, supply, limit, ceiling)
    n_writes = len(writes.writes)
    status: dict[str, float | str | bool] = {
        "mode": state.mode.value,
        "order_source": _SOURCE_NAMES[utility.source],
        "utility_link_up": utility.link_up,
        "hold_remaining_s": utility.hold_remaining_s,
        "heat_order_kw": order_kw,
        "heat_delivered_kw": meter_power_kw if meter_power_kw is not None else math.nan,
        "heat_error_pct": (order_kw - meter_power_kw) / order_kw * 100.0
        if meter_power_kw is not None and order_kw > 0.0
        else math.nan,
        "dh_requirement_c": utility.requirement_c,
        "dh_weather_curve_c": utility.curve_c,
        "dh_supply_c": meter_supply_c if meter_supply_c is not None else math.nan,
        "dh_deviation_k": deviation_k,
        "dh_trim_k": supply.trim_k,
        "dh_feedforward_k": supply.feedforward_k,
        "hp_supply_setpoint_c": writes.applied_supply_c,
        "order_trim_kw": limit.trim_kw,
        "heat_power_limit_kw": writes.applied_limit_kw,
        "hp_enable": limit.hp_enable.on,
        "dh_takes_heat": acceptance.takes_heat,
        "dh_refusals": ",".join(acceptance.refusals),
        "cdu_ceiling_c": ceiling.ceiling.value,
        "dry_cooler_setpoint_c": ceiling.dry_cooler.value,
        "fws_supply_c": inputs.fws_supply_c if inputs.fws_supply_c is not None else math.nan,
        "tcs_hottest_c": hottest.hottest_c if hottest is not None else math.nan,
        "tcs_hottest_device": hottest.name if hottest is not None else "",
        "overrides": ",".join(overrides),
        "override_count": len(overrides),
        "stale_devices": ",".join(inputs.stale),
        "alarm_dh_deviation": deviation_alarm.active,
        "alarm_utility_link": not utility.link_up,
        "alarm_stale_data": bool(inputs.stale),
        "writes": n_writes,
        "setpoint_writes": n_writes - writes.heartbeat_writes,
        "heartbeat_writes": writes.heartbeat_writes,
        "ramping_devices": ",".join(sorted(writes.ramping)),
    }
    leases = writes.leases
    for cdu in setup.cdus:
        lease = leases.get(cdu.setpoint_key)
        status[cdu.status_key] = lease.value if lease is not None else math.nan
    return status
