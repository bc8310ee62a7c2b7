"""Control roles as a contract: what the supervisor reads from and writes to each device.

Every device the supervisor touches has one role (``cdu``, ``heat_meter``, ``station_plc``,
``panel``). A role lists its **inputs** (read) and **outputs** (written, and read back) in
:data:`ROLES`, in this one place; docs/control.md ("Roles") prints the same table. The site
file's ``control.devices.<device>.signals`` binds each role signal to

- a signal of the device's profile (``tcs_supply_temp_c: TCS_SUPPLY_T1``); a role signal not
  mentioned binds to the profile signal of the same name, which is how the bundled profiles
  work without any mapping;
- a constant, where the role allows it (``it_limit_c: 45``: the vendor has no such register);
- ``absent``, where the role can do without it; :attr:`RoleSignal.absent` says what the
  control then does without it.

Anything else is refused by :func:`build_role_map`, naming device, role and signal. Only the
role outputs bound here and the heartbeat the profile declares (``watchdog:``) are ever
written: a profile signal's name alone never gives it a control meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.config.control import ABSENT, ControlConfig, ControlDevice
from gateway.config.profile import Access, HeartbeatMode, ModbusProfile, ModbusSignal, OpcUaProfile, Watchdog
from gateway.control.writes import OutputSpec

if TYPE_CHECKING:
    from gateway.config.site import SiteConfig

__all__ = [
    "ROLES",
    "VALID_INPUTS",
    "Binding",
    "DeviceRole",
    "Heartbeat",
    "Role",
    "RoleError",
    "RoleMap",
    "RoleSignal",
    "build_role_map",
    "describe_role_map",
    "role_map_as_dict",
    "role_map_of_site",
]

Profile = ModbusProfile | OpcUaProfile

HEARTBEAT_NO_TIMEOUT_PERIOD_S = 60.0
"""Heartbeat period for a device that declares a heartbeat but no watchdog timeout (shown only)."""


class RoleError(ValueError):
    """The control section and the profiles do not fulfil the role contracts; one line per problem."""


@dataclass(frozen=True, slots=True)
class RoleSignal:
    """One input or output of a role."""

    name: str
    output: bool
    description: str
    absent: str | None = None
    """What the control does when the site marks this signal absent; None = it cannot be absent."""
    constant: bool = False
    """The site may give a constant instead of a signal (inputs only)."""
    resolution: float = 0.0
    """Outputs: smallest step worth writing when the profile does not say (a float node); 0 = exact."""
    min_interval_s: float = 0.0
    """Outputs: least time between two writes of a changed value (not for overrides and safe states)."""
    valid: tuple[float, float] | None = None
    """Inputs: the values the physics allows (:data:`VALID_INPUTS`); a reading outside is bad, not a number."""


@dataclass(frozen=True, slots=True)
class Role:
    """A role's contract: what it reads and what it writes."""

    name: str
    description: str
    signals: tuple[RoleSignal, ...]

    def signal(self, name: str) -> RoleSignal | None:
        """A role signal by name."""
        return next((s for s in self.signals if s.name == name), None)


_DH_WATER_C = (1.0, 150.0)
_RACK_LOOP_C = (1.0, 100.0)
_FACILITY_WATER_C = (-30.0, 100.0)

VALID_INPUTS: dict[str, tuple[float, float]] = {
    # District-heating water: treated water in a pressurised network, never frozen, at most
    # ~130 degC in the oldest networks (4th-generation networks run 50-70 degC).
    "flow_temp_c": _DH_WATER_C,
    "return_temp_c": _DH_WATER_C,
    "dh_supply_temp_c": _DH_WATER_C,
    "dh_return_temp_c": _DH_WATER_C,
    "utility_supply_temp_c": _DH_WATER_C,
    "manual_supply_temp_c": _DH_WATER_C,
    # The rack loop (TCS) runs 25-45 degC supply to liquid-cooled IT; it never freezes in a data hall.
    "tcs_supply_temp_c": _RACK_LOOP_C,
    "tcs_supply_temp_2_c": _RACK_LOOP_C,
    "it_limit_c": _RACK_LOOP_C,
    "local_setpoint_c": _RACK_LOOP_C,
    # Facility water may carry glycol and pass through dry coolers in a Danish winter.
    "fws_supply_temp_c": _FACILITY_WATER_C,
    "hp_source_inlet_temp_c": _FACILITY_WATER_C,
    "hp_source_outlet_temp_c": _FACILITY_WATER_C,
    "outdoor_temp_c": (-60.0, 60.0),
    "valve_feedback_pct": (-5.0, 105.0),
    # Heat flows: a site's meter or exchanger sees tens of MW at most; a little negative is a
    # meter's zero drift with the pumps off, 1 GW is no data center's.
    "heat_power_kw": (-1000.0, 1.0e6),
    "hx_heat_kw": (-1000.0, 1.0e6),
}
"""Role inputs and the values physics allows them (wide on purpose). A reading outside is not
believed: the poller marks it bad with the reason (:mod:`gateway.validity`), so a wrong byte order,
word order or scale in a profile shows as a bad signal with its value in the log, never as a
temperature the loops act on."""


def _in(name: str, description: str, *, absent: str | None = None, constant: bool = False) -> RoleSignal:
    return RoleSignal(
        name, output=False, description=description, absent=absent, constant=constant, valid=VALID_INPUTS.get(name)
    )


def _out(
    name: str, description: str, *, absent: str | None = None, resolution: float = 0.0, min_interval_s: float = 0.0
) -> RoleSignal:
    return RoleSignal(
        name, output=True, description=description, absent=absent, resolution=resolution, min_interval_s=min_interval_s
    )


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "cdu",
            "Coolant distribution unit: holds its rack loop (TCS) at the setpoint the supervisor moves",
            (
                _in("tcs_supply_temp_c", "Rack-loop supply temperature (sensor 1), the value the CDU controls"),
                _in(
                    "tcs_supply_temp_2_c",
                    "Rack-loop supply temperature, second sensor",
                    absent="only sensor 1 is judged against the IT limit",
                ),
                _in(
                    "valve_feedback_pct",
                    "Facility valve position",
                    absent="a saturated valve is not seen; a supply above its setpoint still backs every CDU off",
                ),
                _in(
                    "it_limit_c",
                    "Highest rack-loop supply the IT equipment allows",
                    constant=True,
                ),
                _in(
                    "local_setpoint_c",
                    "The CDU's own (fallback) setpoint, used in local mode",
                    absent="in local mode the read-back setpoint is taken as what the CDU holds",
                    constant=True,
                ),
                _out(
                    "tcs_supply_setpoint_c",
                    "Rack-loop supply setpoint (read back: what the CDU holds in external mode)",
                    resolution=0.01,
                    min_interval_s=10.0,
                ),
                _out(
                    "control_mode",
                    "0 local setpoint, 1 the gateway's (written 1 before a setpoint, 0 when the CDU goes blind)",
                    absent="the CDU is taken to act on the written setpoint; when it goes blind only its "
                    "watchdog hands it back to its local setpoint (no mode write)",
                ),
            ),
        ),
        Role(
            "heat_meter",
            "EN 1434 heat meter at the site boundary: what reaches the DH network",
            (
                _in("flow_temp_c", "DH supply temperature at the boundary (the DH trim's measurement)"),
                _in("return_temp_c", "DH return temperature"),
                _in("heat_power_kw", "Heat delivered (the order loop's measurement)"),
            ),
        ),
        Role(
            "station_plc",
            "Heat-recovery station PLC: plate exchanger, heat pumps, dry coolers, DH pump",
            (
                _in("dh_supply_temp_c", "DH supply leaving the station (its freshness is the PLC's)"),
                _in(
                    "dh_return_temp_c",
                    "DH return at the station",
                    absent="the meter's return alone judges a DH return too hot",
                ),
                _in(
                    "dh_pump_tripped",
                    "DH pump tripped",
                    absent="a DH pump trip is not seen as a refusal; the PLC's own interlocks still stop "
                    "the heat pumps",
                ),
                _in(
                    "interlock_status",
                    "Interlock bits (2 = DH too hot for the condensers)",
                    absent="the PLC's DH-too-hot interlock is not seen; the return temperature still is",
                ),
                _in(
                    "hp_source_inlet_temp_c",
                    "Facility water entering the evaporators",
                    absent="no heat_pump_source_limit override: the PLC's source-too-cold interlock is the only guard",
                ),
                _in(
                    "hp_source_outlet_temp_c",
                    "Facility water leaving the evaporators",
                    absent="the source limit watches the evaporator inlet only (at the outlet minimum the network "
                    "gets water too cold)",
                ),
                _in(
                    "hp_running_count",
                    "Heat pumps running",
                    absent="no heat_pump_capacity and heat_pump_short overrides",
                ),
                _in(
                    "hx_heat_kw",
                    "Heat from the plate exchanger",
                    absent="no heat_pump_capacity override",
                ),
                _in(
                    "fws_supply_temp_c",
                    "Facility water supply temperature",
                    absent="facility water from the panel only (both unknown: conservative CDU setpoints)",
                ),
                _in("outdoor_temp_c", "Outdoor temperature", absent="the weather curve uses the panel's"),
                _out(
                    "hp_supply_setpoint_c",
                    "DH supply setpoint the heat pumps hold",
                    resolution=0.05,
                    min_interval_s=5.0,
                ),
                _out(
                    "heat_power_limit_kw",
                    "Heat-power limit (sets the DH flow)",
                    absent="the PLC runs on its own limit: the heat order is not followed, only the supply temperature",
                    resolution=50.0,
                    min_interval_s=5.0,
                ),
                _out(
                    "hp_enable",
                    "Heat pumps enabled",
                    absent="the PLC's own logic enables them",
                ),
                _out(
                    "dry_cooler_setpoint_c",
                    "Dry-cooler leaving setpoint",
                    absent="the PLC's local dry-cooler setpoint applies: no colder water for a blind CDU",
                    resolution=0.05,
                    min_interval_s=5.0,
                ),
                _out(
                    "dry_cooler_enable",
                    "Dry coolers enabled",
                    absent="the PLC's own logic enables them",
                ),
            ),
        ),
        Role(
            "panel",
            "Site HMI panel: the utility's order and requirement, the operator's switch",
            (
                _in(
                    "utility_link_ok",
                    "Link to the utility's dispatcher up (its freshness is the panel's)",
                    constant=True,
                ),
                _in("utility_heat_order_mw", "The utility's heat order"),
                _in("utility_supply_temp_c", "The utility's supply-temperature requirement"),
                _in(
                    "utility_order_age_s",
                    "Seconds since the utility's last message",
                    absent="the order's age is not checked, only the link flag",
                ),
                _in(
                    "outdoor_temp_c",
                    "Outdoor temperature",
                    absent="the weather curve uses the PLC's (both unknown: fallback_outdoor_temp_c)",
                ),
                _in(
                    "fws_supply_temp_c",
                    "Facility water supply temperature (when the PLC's is unknown)",
                    absent="facility water from the PLC only",
                ),
                _in(
                    "operator_mode",
                    "Operator switch: 0 off, 1 manual, 2 auto",
                    absent="the panel switch is not followed (commands over MQTT only)",
                ),
                _in("manual_supply_temp_c", "Operator's manual DH supply", absent="manual values over MQTT only"),
                _in("manual_heat_power_mw", "Operator's manual heat power", absent="manual values over MQTT only"),
            ),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Binding:
    """What a role signal is on one device: a profile signal, a constant or absent."""

    kind: Literal["signal", "constant", "absent"]
    signal: str = ""
    value: float = math.nan

    def describe(self) -> str:
        """``signal NAME``, ``constant 45`` or ``absent``."""
        if self.kind == "signal":
            return f"signal {self.signal}"
        if self.kind == "constant":
            return f"constant {self.value:g}"
        return "absent"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A device's declared heartbeat, with the period the supervisor writes it at."""

    signal: str
    mode: HeartbeatMode
    echo_of: str | None
    low: float
    high: float
    period_s: float
    timeout_s: float | None
    period_source: str
    """Where the period comes from (site, profile, derived from the timeout)."""


@dataclass(frozen=True, slots=True)
class DeviceRole:
    """One device's role, its bindings, its outputs as written and its heartbeat."""

    device: str
    role: str
    bindings: Mapping[str, Binding]
    outputs: Mapping[str, OutputSpec]
    heartbeat: Heartbeat | None
    write_budget_per_h: float

    def has(self, signal: str) -> bool:
        """True unless the role signal is absent on this device."""
        binding = self.bindings.get(signal)
        return binding is not None and binding.kind != "absent"


@dataclass(frozen=True, slots=True)
class RoleMap:
    """Every device under control, by role; how the supervisor finds its inputs and outputs."""

    devices: Mapping[str, DeviceRole]
    heat_meter: str
    station_plc: str
    panel: str
    cdus: tuple[str, ...]

    def valid_ranges(self, device: str) -> dict[str, tuple[float, float, str]]:
        """The device's bound profile signals whose role sets a valid range: ``signal -> (low, high, why)``."""
        role = self.devices.get(device)
        if role is None:
            return {}
        ranges: dict[str, tuple[float, float, str]] = {}
        for spec in ROLES[role.role].signals:
            binding = role.bindings.get(spec.name)
            if spec.valid is not None and binding is not None and binding.kind == "signal":
                ranges[binding.signal] = (*spec.valid, f"role {role.role}.{spec.name}")
        return ranges

    def reader(
        self, good: Callable[[str, str, float], float | None], max_age_s: float
    ) -> Callable[[str, str], float | None]:
        """``read(device, role_signal)``: the bound signal's good value, the constant, or None (absent, stale)."""
        devices = self.devices

        def read(device: str, signal: str) -> float | None:
            role = devices.get(device)
            binding = role.bindings.get(signal) if role is not None else None
            if binding is None or binding.kind == "absent":
                return None
            if binding.kind == "constant":
                return binding.value
            return good(device, binding.signal, max_age_s)

        return read

    def output_specs(self) -> dict[tuple[str, str], OutputSpec]:
        """(device, role output) -> how it is written, for every bound output."""
        return {(device, name): spec for device, role in self.devices.items() for name, spec in role.outputs.items()}

    def write_limits(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(device, profile signal) -> (min, max) of everything the supervisor may write (executor's list)."""
        limits: dict[tuple[str, str], tuple[float, float]] = {}
        for device, role in self.devices.items():
            for spec in role.outputs.values():
                limits[(device, spec.signal)] = (spec.low, spec.high)
            if role.heartbeat is not None:
                limits[(device, role.heartbeat.signal)] = (role.heartbeat.low, role.heartbeat.high)
        return limits


@dataclass(frozen=True, slots=True)
class ControlledDevice:
    """What :func:`build_role_map` needs to know of a device."""

    name: str
    profile_name: str
    profile: Profile
    poll_period_s: float = 1.0
    enabled: bool = True


def _resolution(profile: Profile, signal: str, default: float) -> float:
    """A Modbus integer register's resolution is its scale; a float (or an OPC UA node) has the role's.

    An output the role writes exactly (a mode, an enable: role resolution 0) stays exact.
    """
    spec = profile.signals[signal]
    if default > 0.0 and isinstance(spec, ModbusSignal) and spec.type.value not in ("float32", "float64"):
        return abs(spec.scale)
    return default


def _bind(
    device: str, role: Role, profile: ControlledDevice, given: Mapping[str, object], problems: list[str]
) -> dict[str, Binding]:
    where = f"control: device {device!r} (role {role.name})"
    signals = profile.profile.signals
    for name in given:
        if role.signal(name) is None:
            known = ", ".join(s.name for s in role.signals)
            problems.append(f"{where}: {name!r} is not a signal of role {role.name} (its signals: {known})")
    bindings: dict[str, Binding] = {}
    used_outputs: dict[str, str] = {}
    for spec in role.signals:
        raw = given.get(spec.name, spec.name if spec.name in signals else None)
        bound = _bind_one(device, spec, raw, profile)
        if isinstance(bound, str):
            problems.append(f"{where}: {bound}")
            continue
        if spec.output and bound.kind == "signal":
            other = used_outputs.setdefault(bound.signal, spec.name)
            if other != spec.name:
                problems.append(f"{where}: outputs {other} and {spec.name} are both bound to signal {bound.signal!r}")
                continue
        bindings[spec.name] = bound
    return bindings


def _bind_one(device: str, spec: RoleSignal, raw: object, profile: ControlledDevice) -> Binding | str:
    """What the site gives for one role signal (``raw``) as a binding, or what is wrong with it."""
    kind = "output" if spec.output else "input"
    if raw is None:
        hints = ["map it to a profile signal"]
        if spec.constant:
            hints.append(f"give a constant ({spec.name}: <value>)")
        if spec.absent is not None:
            hints.append(f"mark it absent ({spec.absent})")
        return (
            f"{kind} {spec.name}: no signal {spec.name!r} in profile {profile.profile_name!r}; "
            f"{' or '.join(hints)} under control.devices.{device}.signals"
        )
    if raw == ABSENT:
        if spec.absent is None:
            return f"{kind} {spec.name} cannot be absent: the role needs it ({spec.description})"
        return Binding("absent")
    if isinstance(raw, bool | int | float):
        return _constant(spec, kind, raw)
    if not isinstance(raw, str):
        return f"{kind} {spec.name}: expected a signal name, a number or 'absent', got {raw!r}"
    return _signal(spec, kind, raw, profile)


def _constant(spec: RoleSignal, kind: str, raw: float) -> Binding | str:
    if not spec.constant:
        return f"{kind} {spec.name} cannot be a constant ({raw!r}): it must be read from the device"
    if not math.isfinite(float(raw)) or isinstance(raw, bool):
        return f"{kind} {spec.name}: constant {raw!r} is not a finite number"
    return Binding("constant", value=float(raw))


def _signal(spec: RoleSignal, kind: str, raw: str, profile: ControlledDevice) -> Binding | str:
    in_profile = f"in profile {profile.profile_name!r}"
    signal = profile.profile.signals.get(raw)
    if signal is None:
        return f"{kind} {spec.name}: no signal {raw!r} {in_profile}"
    if signal.type == "string":
        return f"{kind} {spec.name}: signal {raw!r} is text, not a number"
    if spec.output and signal.access is not Access.READ_WRITE:
        return f"output {spec.name}: signal {raw!r} is read-only {in_profile} (access: read_write, with min and max)"
    return Binding("signal", signal=raw)


def _heartbeat(  # noqa: PLR0917 - private helper of build_role_map, called once
    config: ControlConfig,
    settings: ControlDevice | None,
    device: ControlledDevice,
    role: Role,
    outputs: Mapping[str, OutputSpec],
    problems: list[str],
) -> Heartbeat | None:
    where = f"control: device {device.name!r} (role {role.name})"
    watchdog: Watchdog | None = device.profile.watchdog
    if watchdog is None:
        if outputs:
            written = ", ".join(spec.signal for spec in outputs.values())
            problems.append(
                f"{where}: profile {device.profile_name!r} declares no watchdog but the role writes {written}: "
                "the device would keep "
                "the last value written if the gateway stopped; declare watchdog: (heartbeat, mode, timeout_s) "
                "in the profile"
            )
        elif settings is not None and settings.heartbeat_period_s is not None:
            problems.append(f"{where}: heartbeat_period_s is set but the profile declares no watchdog heartbeat")
        return None
    if watchdog.timeout_s is None and outputs:
        problems.append(
            f"{where}: watchdog.timeout_s is not declared but the role writes to the device: without a watchdog "
            "timeout nothing returns it to its local values when the gateway stops"
        )
    if any(spec.signal == watchdog.heartbeat for spec in outputs.values()):
        problems.append(f"{where}: the heartbeat signal {watchdog.heartbeat!r} is also bound to a role output")
    extra_s = device.poll_period_s if watchdog.mode is HeartbeatMode.ECHO else 0.0
    period_s, source = _heartbeat_period(config, settings, watchdog, extra_s)
    problems.extend(f"{where}: {problem}" for problem in _heartbeat_timing(config, watchdog, period_s, source, extra_s))
    spec = device.profile.signals[watchdog.heartbeat]
    assert spec.min is not None
    assert spec.max is not None
    return Heartbeat(
        signal=watchdog.heartbeat,
        mode=watchdog.mode,
        echo_of=watchdog.echo_of,
        low=spec.min,
        high=spec.max,
        period_s=period_s,
        timeout_s=watchdog.timeout_s,
        period_source=source,
    )


def _heartbeat_period(
    config: ControlConfig, settings: ControlDevice | None, watchdog: Watchdog, extra_s: float
) -> tuple[float, str]:
    """The heartbeat period and where it comes from: the device's setting, the site's, the profile's,
    else a third of the watchdog timeout (less the echo's poll)."""
    if settings is not None and settings.heartbeat_period_s is not None:
        return settings.heartbeat_period_s, "site (control.devices)"
    if config.heartbeat_period_s is not None:
        return config.heartbeat_period_s, "site (control.heartbeat_period_s)"
    if watchdog.period_s is not None:
        return watchdog.period_s, "profile"
    if watchdog.timeout_s is None:
        return HEARTBEAT_NO_TIMEOUT_PERIOD_S, "default (no watchdog timeout)"
    # Two heartbeats may be lost and the third still arrives in time.
    cycles = math.floor((watchdog.timeout_s - extra_s) / 3.0 / config.cycle_s)
    return max(cycles, 1) * config.cycle_s, "derived: a third of the watchdog timeout"


def _heartbeat_timing(
    config: ControlConfig, watchdog: Watchdog, period_s: float, source: str, extra_s: float
) -> list[str]:
    """What is wrong with a heartbeat period: shorter than a cycle, or too long for the watchdog."""
    problems: list[str] = []
    if period_s < config.cycle_s:
        problems.append(
            f"heartbeat period {period_s:g} s ({source}) is shorter than control.cycle_s {config.cycle_s:g} s"
        )
    if watchdog.timeout_s is not None:
        # Worst gap between two heartbeats the device sees when one is lost: two periods, each up
        # to a cycle late, plus (echo) the poll that brings the device's new value.
        worst_s = 2.0 * (period_s + config.cycle_s) + extra_s
        if worst_s > watchdog.timeout_s:
            echo = f" + poll {extra_s:g} s (echo)" if extra_s else ""
            problems.append(
                f"heartbeat period {period_s:g} s ({source}) cannot keep the "
                f"{watchdog.timeout_s:g} s watchdog armed: one lost heartbeat leaves a gap of "
                f"2 x ({period_s:g} + cycle {config.cycle_s:g}){echo} = {worst_s:g} s; at most "
                f"{max((watchdog.timeout_s - extra_s) / 2.0 - config.cycle_s, 0.0):g} s"
            )
    return problems


def build_role_map(
    config: ControlConfig,
    devices: Mapping[str, ControlledDevice],
    *,
    cdus: Sequence[str],
) -> RoleMap:
    """Bind every role device's signals; :class:`RoleError` listing every violation of the contracts."""
    problems: list[str] = []
    assignment = _assign_roles(config, cdus, problems)
    roles: dict[str, DeviceRole] = {}
    for name, role_name in assignment.items():
        role = ROLES[role_name]
        device = devices.get(name)
        if device is None:
            problems.append(f"control: role {role_name}: no device named {name!r} in devices")
            continue
        if not device.enabled:
            problems.append(f"control: role {role_name}: device {name!r} is disabled (enabled: false)")
            continue
        settings = config.devices.get(name)
        bindings = _bind(name, role, device, settings.signals if settings else {}, problems)
        outputs = _outputs(role, device, bindings, settings)
        if settings is not None:
            for output in settings.writes:
                found = role.signal(output)
                if found is None or not found.output:
                    written = ", ".join(s.name for s in role.signals if s.output) or "none"
                    problems.append(
                        f"control.devices.{name}.writes: {output!r} is not an output of role {role_name} "
                        f"(its outputs: {written})"
                    )
        heartbeat = _heartbeat(config, settings, device, role, outputs, problems)
        budget = settings.write_budget_per_h if settings and settings.write_budget_per_h else config.write_budget_per_h
        roles[name] = DeviceRole(name, role_name, bindings, outputs, heartbeat, budget)
    if problems:
        raise RoleError("\n".join(problems))
    return RoleMap(
        devices=roles,
        heat_meter=config.heat_meter_device,
        station_plc=config.heat_pump_plc_device,
        panel=config.panel_device,
        cdus=tuple(cdus),
    )


def _assign_roles(config: ControlConfig, cdus: Sequence[str], problems: list[str]) -> dict[str, str]:
    """Device -> its role name; one device, one role; every device with settings has a role."""
    assignment: dict[str, str] = {}
    for member, member_role in (
        *((cdu, "cdu") for cdu in cdus),
        (config.heat_meter_device, "heat_meter"),
        (config.heat_pump_plc_device, "station_plc"),
        (config.panel_device, "panel"),
    ):
        other = assignment.setdefault(member, member_role)
        if other != member_role:
            problems.append(
                f"control: device {member!r} has two roles, {other} and {member_role}: one device, one role"
            )
    if not cdus:
        problems.append("control: no CDUs: set control.cdu_devices or give devices the kind control.cdu_kind")
    problems.extend(
        f"control.devices.{name}: {name!r} has no control role (roles: heat_meter_device, "
        "heat_pump_plc_device, panel_device, cdu_devices)"
        for name in config.devices
        if name not in assignment
    )
    return assignment


def _outputs(
    role: Role, device: ControlledDevice, bindings: Mapping[str, Binding], settings: ControlDevice | None
) -> dict[str, OutputSpec]:
    """How each bound role output is written: the profile's limits, resolution, the site's write economy."""
    outputs: dict[str, OutputSpec] = {}
    for spec in role.signals:
        binding = bindings.get(spec.name)
        if not spec.output or binding is None or binding.kind != "signal":
            continue
        signal = device.profile.signals[binding.signal]
        assert signal.min is not None
        assert signal.max is not None
        resolution = _resolution(device.profile, binding.signal, spec.resolution)
        economy = settings.writes.get(spec.name) if settings else None
        deadband = economy.deadband if economy and economy.deadband is not None else resolution
        interval = economy.min_interval_s if economy and economy.min_interval_s is not None else spec.min_interval_s
        outputs[spec.name] = OutputSpec(
            signal=binding.signal,
            low=signal.min,
            high=signal.max,
            resolution=resolution,
            deadband=deadband,
            min_interval_s=interval,
        )
    return outputs


def role_map_of_site(site: SiteConfig, profiles: Mapping[str, Profile]) -> RoleMap:
    """The role map of a site file with a ``control:`` section (defaults when it has none)."""
    config = site.control or ControlConfig()
    devices = {
        device.name: ControlledDevice(
            device.name, device.profile, profiles[device.profile], device.poll_period_s, device.enabled
        )
        for device in site.devices
    }
    cdus = config.cdu_devices or [
        device.name for device in site.devices if device.enabled and device.kind == config.cdu_kind
    ]
    return build_role_map(config, devices, cdus=cdus)


def describe_role_map(roles: RoleMap) -> list[str]:
    """The contract per device, as ``heat-gateway check`` prints it."""
    lines: list[str] = []
    for name, device in roles.devices.items():
        role = ROLES[device.role]
        lines.append(f"{name}: role {device.role}")
        for spec in role.signals:
            binding = device.bindings.get(spec.name, Binding("absent"))
            text = binding.describe()
            if binding.kind == "absent" and spec.absent:
                text += f" -> {spec.absent}"
            if spec.output and spec.name in device.outputs:
                out = device.outputs[spec.name]
                text += (
                    f" [{out.low:g}..{out.high:g}, deadband {out.deadband:g}, at most every {out.min_interval_s:g} s]"
                )
            lines.append(f"  {'writes' if spec.output else 'reads '} {spec.name:<24} {text}")
        beat = device.heartbeat
        if beat is None:
            lines.append("  heartbeat: none (nothing written to this device)")
        else:
            echo = f" of {beat.echo_of}" if beat.echo_of else ""
            timeout = f"watchdog {beat.timeout_s:g} s" if beat.timeout_s is not None else "no watchdog"
            lines.append(
                f"  heartbeat: {beat.signal} ({beat.mode}{echo}) every {beat.period_s:g} s [{beat.period_source}], "
                f"{timeout}"
            )
        if device.outputs:
            lines.append(f"  write budget: {device.write_budget_per_h:g} setpoint writes per hour")
    return lines


def role_map_as_dict(roles: RoleMap) -> dict[str, dict[str, object]]:
    """The contract per device for ``check --json``."""
    out: dict[str, dict[str, object]] = {}
    for name, device in roles.devices.items():
        beat = device.heartbeat
        out[name] = {
            "role": device.role,
            "signals": {
                spec.name: {"output": spec.output, "binding": device.bindings[spec.name].describe()}
                for spec in ROLES[device.role].signals
            },
            "writes": {
                output: {
                    "signal": spec.signal,
                    "min": spec.low,
                    "max": spec.high,
                    "deadband": spec.deadband,
                    "min_interval_s": spec.min_interval_s,
                }
                for output, spec in device.outputs.items()
            },
            "heartbeat": None
            if beat is None
            else {
                "signal": beat.signal,
                "mode": str(beat.mode),
                "echo_of": beat.echo_of,
                "period_s": beat.period_s,
                "watchdog_timeout_s": beat.timeout_s,
            },
            "write_budget_per_h": device.write_budget_per_h if device.outputs else None,
        }
    return out
