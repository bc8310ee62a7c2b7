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

The cycle itself is a chain of pure stages (gateway/control/stages.py: inputs and quality,
utility order, DH acceptance, DH supply, heat-order limit, source ceiling, writes, status);
``step`` composes them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.config.control import ControlConfig
from gateway.control.commands import Mode, check_values
from gateway.control.roles import RoleMap, role_map_of_site
from gateway.control.stages import (
    Reader,
    Setup,
    dh_acceptance,
    dh_supply,
    finish,
    heat_order_limit,
    plan_writes,
    read_inputs,
    source_ceiling,
    utility_order,
)
from gateway.control.state import SupervisorState
from gateway.control.writes import SignalKey, Write, WriteLimits

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


class ProcessView(Protocol):
    """What the supervisor reads: the gateway's `Snapshot` or the harness's plant view."""

    def good(self, device: str, signal: str, max_age_s: float) -> float | None:
        """The value if good and fresh, else None."""
        ...


_PANEL_MODES = {0.0: Mode.OFF, 1.0: Mode.MANUAL, 2.0: Mode.AUTO}


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


class Supervisor:
    """The supervisory controller. Pure: all state is passed in and returned.

    ``roles`` (:mod:`gateway.control.roles`) says which device has which role, where each role
    input is read and which profile signal each role output is: only those outputs and the
    declared heartbeats are ever written, never outside the profile's limits.
    """

    def __init__(self, config: ControlConfig, roles: RoleMap) -> None:
        self.setup = setup = Setup.build(config, roles)
        self.config = config
        self.roles = roles
        self.outputs = setup.outputs
        self.limits: WriteLimits = roles.write_limits()
        self.cdus = roles.cdus
        self._plc = roles.station_plc
        self._panel = roles.panel
        self._supply_range_c = self._range(
            (self._plc, "hp_supply_setpoint_c"), config.dh_min_supply_temp_c, config.dh_max_supply_temp_c
        )
        self._heat_range_kw = self._range((self._plc, "heat_power_limit_kw"), 0.0, math.inf)

    def _range(self, key: SignalKey, low: float, high: float) -> tuple[float, float]:
        spec = self.outputs.get(key)
        if spec is None:
            return (low, high)
        return (max(low, spec.low), min(high, spec.high))

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
        """Run one control cycle at ``now_s`` (seconds, monotonic) on a frozen view.

        The stages of gateway/control/stages.py, in order; each gets the state and what the
        stages before it returned.
        """
        setup = self.setup
        read = Reader(setup, view)
        state = self._panel_commands(read, state)
        inputs = read_inputs(setup, state, now_s, read=read)
        utility = utility_order(setup, state, now_s, inputs=inputs)
        acceptance = dh_acceptance(self.config, inputs, utility.order_kw)
        supply = dh_supply(setup, state, now_s, inputs=inputs, utility=utility, acceptance=acceptance)
        limit = heat_order_limit(
            setup, state, now_s, inputs=inputs, utility=utility, acceptance=acceptance, supply=supply
        )
        ceiling = source_ceiling(setup, state, now_s, inputs=inputs, acceptance=acceptance)
        writes = plan_writes(
            setup,
            state,
            now_s,
            read=read,
            inputs=inputs,
            acceptance=acceptance,
            supply=supply,
            limit=limit,
            ceiling=ceiling,
        )
        out, new_state, status = finish(
            setup,
            state,
            now_s,
            inputs=inputs,
            utility=utility,
            acceptance=acceptance,
            supply=supply,
            limit=limit,
            ceiling=ceiling,
            writes=writes,
        )
        return StepResult(writes=out, state=new_state, status=status)

    # -- pieces ----------------------------------------------------------------------------------

    def _panel_commands(self, good: Reader, state: SupervisorState) -> SupervisorState:
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


# -- wiring helpers for the live service ----------------------------------------------------------


def write_limits_of(site: Site) -> dict[SignalKey, tuple[float, float]]:
    """(device, profile signal) -> (min, max) of everything the supervisor may write: the bound
    role outputs and the declared heartbeats, nothing else (a name alone gives no control meaning)."""
    return role_map_of_site(site.config, site.profiles).write_limits()


def supervisor_for_site(site: Site, config: ControlConfig | None = None) -> Supervisor:
    """A supervisor for a loaded site: its ``control:`` section (or defaults), roles and profiles."""
    config = config or site.config.control or ControlConfig()
    return Supervisor(config, role_map_of_site(site.config.model_copy(update={"control": config}), site.profiles))
