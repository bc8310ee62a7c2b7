# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""The heat-recovery station and its PLC (device ``hp-plc``).

Facility water from the hall passes, in this order: the plate heat exchanger (preheats the
DH return), the heat pumps' evaporators (their source), the dry coolers (reject the rest, so
cooling never depends on the DH side), then back to the hall. DH water from the network passes
the plate exchanger (or its bypass) and then the heat pumps' condensers.

What the PLC does on its own, as real station PLCs do:

- **DH flow**: ``heat_power_limit_kw / (cp * (setpoint - return))`` once a heat pump runs
  (minimum flow before), trimmed down while the heat pumps cannot reach the setpoint
  (source or capacity short), so the network never gets lukewarm water at full flow.
- **Heat pumps**: hold the DH supply setpoint by capacity (feed-forward from the measured
  temperatures and flow), staged with delays, minimum run and off times, a start phase and a
  capacity ramp limit; capacity is capped by the source (evaporator outlet above its minimum)
  and by the maximum supply temperature.
- **Interlocks** (immediate stop, no minimum run time): DH flow low, water entering the
  condensers too hot, source too cold, a trip. A disable is a soft stop that still respects
  the minimum run time.
- **Dry coolers**: hold their leaving setpoint; if the hall supply exceeds the facility limit
  they are forced on at their local setpoint whatever the gateway wrote.
- **Watchdog**: armed by the first heartbeat write; when the heartbeat stops changing for
  ``watchdog_timeout_s`` every written value returns to its local value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import IntEnum

from simulators.plant.config import PlantConfig
from simulators.plant.physics import MixedVolume, counterflow_effectiveness, counterflow_ntu, heat_pump_cop

__all__ = ["NOISE_DRAWS", "HeatPump", "HeatPumpState", "Interlock", "Station", "station_signals"]

_TINY_FLOW_KG_S = 1e-3
_UA_FLOW_EXPONENT = -0.7
# The DH flow may run this far (fraction of rated) ahead of the heat pumps' present capacity:
# enough for the capacity controller to see demand and ramp, not so much that the supply sags.
_CAPACITY_HEADROOM = 0.1
_PLC_TRIM_MAX_K = 5.0  # the PLC corrects its target by at most this (anti-windup)
_PLC_INTEGRAL_BAND_K = 2.0  # ... and integrates only while within this of its setpoint
NOISE_DRAWS = 18  # signals of a read that carry noise (one draw each)


class HeatPumpState(IntEnum):
    """Heat-pump state as the PLC reports it (``hp_state``, ``hp_N_state``)."""

    BLOCKED = 0
    OFF = 1
    STANDBY = 2
    STARTING = 3
    RUNNING = 4


class Interlock(IntEnum):
    """Bits of ``interlock_status``."""

    DH_FLOW_LOW = 1
    DH_TOO_HOT = 2
    FWS_OVER_LIMIT = 4
    SOURCE_TOO_COLD = 8
    ALL_HEAT_PUMPS_TRIPPED = 16
    WATCHDOG_FALLBACK = 32


# Enum members as module constants: a member looked up on its class goes through EnumType's
# descriptor (~0.2 us), and the PLC's cycle asks for them some fifty times a sub-step.
_BLOCKED = HeatPumpState.BLOCKED
_OFF = HeatPumpState.OFF
_STANDBY = HeatPumpState.STANDBY
_STARTING = HeatPumpState.STARTING
_RUNNING = HeatPumpState.RUNNING
_ACTIVE = (_STARTING, _RUNNING)
_BLOCKING_INTERLOCKS = Interlock.DH_FLOW_LOW | Interlock.DH_TOO_HOT | Interlock.SOURCE_TOO_COLD
_NOT_WATCHDOG_FALLBACK = ~Interlock.WATCHDOG_FALLBACK


class HeatPump:
    """One heat pump's state; the station decides, this only remembers."""

    __slots__ = (
        "capacity",
        "electric_kw",
        "fault",
        "fault_cleared_s",
        "heat_kw",
        "index",
        "name",
        "run_hours_h",
        "started_s",
        "state",
        "stopped_s",
        "tripped",
    )

    def __init__(self, index: int, run_hours_h: float) -> None:
        self.index = index
        self.name = f"hp-{index}"
        self.state = _STANDBY
        self.capacity = 0.0  # fraction of rated heating power commanded
        self.started_s = -math.inf
        self.stopped_s = -math.inf
        self.run_hours_h = run_hours_h
        self.tripped = False
        self.fault = False  # the cause of a trip is present (scenario)
        self.fault_cleared_s = -math.inf
        self.heat_kw = 0.0
        self.electric_kw = 0.0

    @property
    def active(self) -> bool:
        """Starting or running: the compressor is on."""
        return self.state in _ACTIVE


def station_signals(heat_pump_count: int) -> tuple[str, ...]:
    """Signal names of ``hp-plc`` for a station with ``heat_pump_count`` heat pumps."""
    per_pump = tuple(
        f"hp_{i}_{suffix}"
        for i in range(1, heat_pump_count + 1)
        for suffix in ("state", "capacity_pct", "run_hours_h", "tripped")
    )
    return _STATION_SIGNALS + per_pump


_STATION_SIGNALS: tuple[str, ...] = (
    "fws_supply_temp_c",
    "fws_return_temp_c",
    "fws_flow_m3h",
    "fws_pump_speed_pct",
    "fws_bypass_valve_pct",
    "hp_source_inlet_temp_c",
    "hp_source_outlet_temp_c",
    "dh_supply_temp_c",
    "dh_return_temp_c",
    "dh_hx_outlet_temp_c",
    "dh_flow_m3h",
    "dh_supply_pressure_bar",
    "dh_return_pressure_bar",
    "dh_pump_speed_pct",
    "dh_pump_running",
    "dh_pump_tripped",
    "hx_valve_pct",
    "hx_heat_kw",
    "hp_heat_kw",
    "dh_heat_kw",
    "hp_electric_kw",
    "hp_cop",
    "hp_enable",
    "hp_supply_setpoint_c",
    "heat_power_limit_kw",
    "hp_state",
    "hp_running_count",
    "hp_trip_active",
    "dry_cooler_leaving_temp_c",
    "dry_cooler_setpoint_c",
    "dry_cooler_enable",
    "dry_cooler_forced",
    "dry_cooler_fan_speed_pct",
    "dry_cooler_heat_kw",
    "outdoor_temp_c",
    "heartbeat",
    "heartbeat_echo",
    "watchdog_timeout_s",
    "watchdog_tripped",
    "local_hp_supply_setpoint_c",
    "local_heat_power_limit_kw",
    "local_dry_cooler_setpoint_c",
    "interlock_status",
    "interlock_active",
    "alarm_reset",
)
STATION_WRITABLE = frozenset(
    {
        "hp_enable",
        "hp_supply_setpoint_c",
        "heat_power_limit_kw",
        "dry_cooler_setpoint_c",
        "dry_cooler_enable",
        "heartbeat",
        "watchdog_timeout_s",
        "alarm_reset",
    }
)


def _binary(value: float, name: str) -> bool:
    if value not in (0.0, 1.0):
        raise ValueError(f"{name} must be 0 or 1, got {value}")
    return value == 1.0


class Station:
    """Plate exchanger, heat pumps, dry coolers, DH pump and the PLC that runs them."""

    def __init__(self, cfg: PlantConfig, on_event: Callable[[str, str, str], None]) -> None:
        self.cfg = cfg
        self.on_event = on_event
        hp = cfg.heat_pumps
        dh = cfg.district_heating
        hx = cfg.heat_recovery
        self._cp = cfg.site.water_cp_kj_kgk
        self._m3h_per_kg_s = 3600.0 / cfg.site.water_density_kg_m3
        self._temp_noise = cfg.sensors.temp_noise_k
        self._rel_noise = cfg.sensors.relative_noise_pct / 100.0

        # Plate exchanger UA from its design approach (DH is the smaller capacity stream).
        c_dh = hx.design_dh_flow_kg_s * self._cp
        c_fws = hx.design_fws_flow_kg_s * self._cp
        c_min, c_max = min(c_dh, c_fws), max(c_dh, c_fws)
        span = hx.design_fws_inlet_temp_c - hx.design_dh_inlet_temp_c
        if span <= hx.design_approach_k:
            raise ValueError("heat_recovery: design FWS inlet must exceed DH inlet by more than the approach")
        heat = c_dh * (span - hx.design_approach_k)
        self._hx_ua_design = counterflow_ntu(heat / (c_min * span), c_min / c_max) * c_min

        self.heat_pumps = [HeatPump(i, hp.initial_run_hours_h) for i in range(1, hp.count + 1)]
        self._rated_kw = hp.heating_capacity_kw
        self._min_capacity = hp.min_capacity_pct / 100.0

        # Writable values (the gateway's), their local values and the watchdog.
        self.hp_enable = hp.initial_enable
        self.hp_supply_setpoint_c = hp.local_supply_setpoint_c
        self.heat_power_limit_kw = hp.local_heat_power_limit_kw
        self.dry_cooler_setpoint_c = cfg.dry_coolers.local_setpoint_c
        self.dry_cooler_enable = cfg.dry_coolers.initial_enable
        self.heartbeat = 0
        self.watchdog_timeout_s = hp.watchdog_timeout_s
        self.watchdog_armed = False
        self.watchdog_tripped = False
        self._heartbeat_changed_s = 0.0

        # Process state.
        start_c = cfg.facility_water.initial_supply_temp_c
        self.outdoor_c = cfg.site.outdoor_temp_c
        self.dh_return_c = dh.return_temp_c
        self.dh_flow_kg_s = 0.0
        self.dh_pump_on = False
        self.dh_pump_tripped = False
        self.dh_pump_fault = False
        self._dh_pump_fault_cleared_s = -math.inf
        self._dh_flow_trim = 1.0
        self.hx_valve_pct = 0.0
        self.fws_flow_kg_s = cfg.facility_water.min_flow_kg_s
        self.fws_bypass_kg_s = 0.0
        self.fws_supply_header_c = start_c
        self.fws_in_c = start_c
        self.fws_after_hx_c = start_c
        self.fws_after_hp_c = start_c
        self.fws_out_c = start_c
        self.dh_after_hx_c = dh.return_temp_c
        self.dh_out_c = dh.return_temp_c
        self._condenser = MixedVolume(
            max(hp.condenser_volume_m3, 1e-3) * cfg.site.water_density_kg_m3, dh.return_temp_c
        )
        self._plc_trim_k = 0.0
        # The PLC's supply sensor error; a scenario's meter_offset shifts it mid-run.
        self.supply_sensor_bias_k = hp.supply_sensor_bias_k
        self.hx_heat_kw = 0.0
        self.hp_heat_kw = 0.0
        self.hp_electric_kw = 0.0
        self.cop = 0.0
        self.dc_heat_kw = 0.0
        self.dc_fan_pct = 0.0
        self.dc_forced = False
        self.interlock = 0
        self._up_s = 0.0
        self._down_s = 0.0

    # -- the PLC's cycle -----------------------------------------------------------------

    def step(self, dt_s: float, now_s: float, fws_in_c: float, fws_flow_kg_s: float) -> float:
        """One sub-step of the station; the mean facility temperature leaving the dry coolers."""
        cfg = self.cfg
        hp_cfg = cfg.heat_pumps
        cp = self._cp
        self.fws_in_c = fws_in_c
        self.fws_flow_kg_s = fws_flow_kg_s
        c_fws = fws_flow_kg_s * cp
        self._watchdog(now_s)
        self._trips(now_s)

        # DH pump and flow.
        # One pass over the states (each is one HeatPumpState member, so `in` finds it exactly).
        states = [pump.state for pump in self.heat_pumps]
        any_running = _RUNNING in states
        any_active = any_running or _STARTING in states
        limit = self.heat_power_limit_kw
        setpoint = self.hp_supply_setpoint_c
        dh = cfg.district_heating
        wanted_on = self.hp_enable and limit > 0.0
        self.dh_pump_on = not self.dh_pump_tripped and (wanted_on or any_active)
        if not self.dh_pump_on:
            flow_target = 0.0
        elif not any_running or limit <= 0.0:
            flow_target = dh.min_flow_kg_s
        else:
            # As much flow as the limit asks, but no more than the running heat pumps (plus
            # the exchanger) can bring to setpoint: the network gets no lukewarm water while
            # the next heat pump starts.
            lift = max(setpoint + self._plc_trim_k - self.dh_return_c, 5.0)
            running_kw = self._rated_kw * sum(
                min(p.capacity + _CAPACITY_HEADROOM, 1.0) for p in self.heat_pumps if p.state is _RUNNING
            )
            flow_target = min(limit, running_kw + self.hx_heat_kw) / (cp * lift) * self._dh_flow_trim
            flow_target = min(max(flow_target, dh.min_flow_kg_s), dh.max_flow_kg_s)
        self.dh_flow_kg_s = flow_target + (self.dh_flow_kg_s - flow_target) * math.exp(-dt_s / dh.pump_time_constant_s)
        m_dh = self.dh_flow_kg_s

        # Plate exchanger: its DH valve opens only when the facility water is warmer.
        hx_cfg = cfg.heat_recovery
        open_hx = self.dh_pump_on and fws_in_c > self.dh_return_c + hx_cfg.min_temp_difference_k
        travel = 100.0 / hx_cfg.valve_stroke_time_s * dt_s
        self.hx_valve_pct += min(max((100.0 if open_hx else 0.0) - self.hx_valve_pct, -travel), travel)
        m_hx = m_dh * self.hx_valve_pct / 100.0
        if m_hx > _TINY_FLOW_KG_S and c_fws > 0.0:
            c_hx = m_hx * cp
            resistance = (m_hx / hx_cfg.design_dh_flow_kg_s) ** _UA_FLOW_EXPONENT + (
                fws_flow_kg_s / hx_cfg.design_fws_flow_kg_s
            ) ** _UA_FLOW_EXPONENT
            ua = 2.0 * self._hx_ua_design / resistance
            c_min = min(c_hx, c_fws)
            eps = counterflow_effectiveness(ua / c_min, c_min / max(c_hx, c_fws))
            hx_heat = eps * c_min * (fws_in_c - self.dh_return_c)
        else:
            hx_heat = 0.0
        self.hx_heat_kw = hx_heat
        self.fws_after_hx_c = fws_in_c - hx_heat / c_fws
        c_dh = m_dh * cp
        self.dh_after_hx_c = self.dh_return_c + hx_heat / c_dh if m_dh > _TINY_FLOW_KG_S else self.dh_return_c

        # Heat pumps.
        cop = heat_pump_cop(
            self.fws_after_hp_c,
            max(self.dh_out_c, self.dh_after_hx_c + 5.0),
            carnot_efficiency_pct=hp_cfg.carnot_efficiency_pct,
            evaporator_approach_k=hp_cfg.evaporator_approach_k,
            condenser_approach_k=hp_cfg.condenser_approach_k,
        )
        # Heat the source allows: evaporator heat down to the minimum outlet, plus compressor work.
        source_max = (
            max(c_fws * (self.fws_after_hx_c - hp_cfg.min_source_outlet_temp_c), 0.0) * cop / max(cop - 1.0, 0.05)
        )
        temp_max = max(c_dh * (hp_cfg.max_supply_temp_c - self.dh_after_hx_c), 0.0)
        # The PLC's supply control: feed-forward from its (imperfect) flow measurement plus a
        # PI on its own supply sensor, which sits after the condensers' water volume. The
        # integral is a correction of the target temperature (K) that the DH flow uses too:
        # when the limit decides the heat, the flow decides the temperature.
        measured_c = self.dh_out_c + self.supply_sensor_bias_k
        error_k = setpoint - measured_c
        target_c = setpoint + self._plc_trim_k
        feedforward = c_dh * (1.0 + hp_cfg.plc_flow_error_pct / 100.0) * (target_c - self.dh_after_hx_c)
        need = max(feedforward + hp_cfg.plc_supply_kp_kw_per_k * error_k, 0.0)
        wanted = min(need, max(limit - hx_heat, 0.0), source_max)
        if any_running and m_dh > _TINY_FLOW_KG_S and abs(error_k) < _PLC_INTEGRAL_BAND_K:
            # Integral band, as station PLCs do: a setpoint ramp or a heat pump starting is the
            # feed-forward's; integrating the lag of the condenser water would overshoot.
            self._plc_trim_k += error_k * dt_s / hp_cfg.plc_supply_ti_s
            self._plc_trim_k = min(max(self._plc_trim_k, -_PLC_TRIM_MAX_K), _PLC_TRIM_MAX_K)
        interlock = 0
        if (self.dh_pump_tripped or wanted_on or any_active) and m_dh < 0.5 * dh.min_flow_kg_s:
            interlock |= Interlock.DH_FLOW_LOW
        if self.dh_after_hx_c > hp_cfg.max_condenser_inlet_temp_c:
            interlock |= Interlock.DH_TOO_HOT
        if self.fws_after_hx_c < hp_cfg.min_source_outlet_temp_c + 2.0:
            interlock |= Interlock.SOURCE_TOO_COLD
        if all(pump.tripped for pump in self.heat_pumps):
            interlock |= Interlock.ALL_HEAT_PUMPS_TRIPPED
        blocked = bool(interlock & _BLOCKING_INTERLOCKS)
        self._stage(dt_s, now_s, wanted, blocked=blocked)

        running = [pump for pump in self.heat_pumps if pump.state is _RUNNING]
        if running:
            target = wanted / (len(running) * self._rated_kw) if self.hp_enable else 0.0
            target = min(max(target, self._min_capacity), 1.0)
            ramp = hp_cfg.ramp_pct_per_s / 100.0 * dt_s
            for pump in running:
                pump.capacity += min(max(target - pump.capacity, -ramp), ramp)
        commanded = sum(pump.capacity * self._rated_kw for pump in running)
        delivered = min(commanded, source_max, temp_max)
        share = delivered / commanded if commanded > 0.0 else 0.0
        electric = delivered / cop
        for pump in self.heat_pumps:
            if pump.state is _RUNNING:
                pump.heat_kw = pump.capacity * self._rated_kw * share
                pump.electric_kw = pump.heat_kw / cop
            else:
                pump.heat_kw = 0.0
                pump.electric_kw = 0.0
            if pump.state in _ACTIVE:
                pump.run_hours_h += dt_s / 3600.0
        self.hp_heat_kw = delivered
        self.hp_electric_kw = electric
        self.cop = cop if delivered > 0.0 else 0.0
        self.fws_after_hp_c = self.fws_after_hx_c - (delivered - electric) / c_fws
        leaving_c = self.dh_after_hx_c + delivered / c_dh if m_dh > _TINY_FLOW_KG_S else self.dh_after_hx_c
        # The condensers' (and exchanger's) water volume: the station's supply lags its heat.
        self.dh_out_c = self._condenser.flow(m_dh, leaving_c, dt_s)

        # Cut the DH flow while the heat pumps cannot reach the setpoint (source short, or
        # every heat pump that can run is at full capacity); recover otherwise.
        at_full = all(p.state is _RUNNING and p.capacity >= 0.99 for p in self.heat_pumps if not p.tripped)
        short = bool(running) and (commanded >= source_max or at_full)
        rate = hp_cfg.dh_flow_trim_per_k_s * dt_s
        measured_c = self.dh_out_c + self.supply_sensor_bias_k
        if short and measured_c < setpoint - 0.5:
            self._dh_flow_trim -= rate * (setpoint - 0.5 - measured_c)
        else:
            self._dh_flow_trim += rate
        self._dh_flow_trim = min(max(self._dh_flow_trim, 0.2), 1.0)

        # Dry coolers: whatever is left, so the hall is cooled whatever the DH side does.
        # The interlock watches the station outlet too: by the time the hall header is over
        # the limit, a whole supply pipe of too-warm water is already on its way.
        limit_c = cfg.facility_water.supply_limit_c
        hottest_c = max(self.fws_supply_header_c, self.fws_out_c)
        if not self.dc_forced and hottest_c > limit_c:
            self.dc_forced = True
            self.on_event("hp-plc", "dry_coolers_forced", f"facility supply above {limit_c:g} °C")
        elif self.dc_forced and hottest_c < limit_c - 2.0 and self.dry_cooler_enable:
            # Released only once the dry coolers are enabled again (by the gateway, or the
            # watchdog's local values): a disable must not switch them off again at once.
            self.dc_forced = False
            self.on_event("hp-plc", "dry_coolers_released", "facility supply back below the limit")
        if self.dc_forced:
            interlock |= Interlock.FWS_OVER_LIMIT
        if self.watchdog_tripped:
            interlock |= Interlock.WATCHDOG_FALLBACK
        self.interlock = interlock
        self.fws_out_c = self._dry_coolers(self.fws_after_hp_c, c_fws)
        return self.fws_out_c

    def _dry_coolers(self, inlet_c: float, c_fws: float) -> float:
        dc = self.cfg.dry_coolers
        enabled = self.dry_cooler_enable or self.dc_forced
        setpoint = self.dry_cooler_setpoint_c
        if self.dc_forced:
            setpoint = min(setpoint, dc.local_setpoint_c)
        if not enabled or inlet_c <= setpoint or c_fws <= 0.0:
            self.dc_heat_kw = 0.0
            self.dc_fan_pct = 0.0
            return inlet_c
        c_air = dc.air_capacity_rate_kw_k
        c_min = min(c_air, c_fws)
        eps = counterflow_effectiveness(dc.ua_kw_k / c_min, c_min / max(c_air, c_fws))
        coldest = inlet_c - eps * c_min / c_fws * (inlet_c - self.outdoor_c)
        leaving = min(inlet_c, max(setpoint, coldest))
        self.dc_fan_pct = 100.0 * (inlet_c - leaving) / (inlet_c - coldest) if inlet_c > coldest else 100.0
        self.dc_heat_kw = c_fws * (inlet_c - leaving)
        return leaving

    def _stage(self, dt_s: float, now_s: float, wanted_kw: float, *, blocked: bool) -> None:
        """Start, stop and block heat pumps; minimum run and off times apply to normal stops."""
        cfg = self.cfg.heat_pumps
        for pump in self.heat_pumps:
            if pump.tripped or blocked:
                if pump.active:
                    self._stop(pump, now_s, "tripped" if pump.tripped else "interlock")
                pump.state = _BLOCKED
            elif not pump.active:
                pump.state = _STANDBY if self.hp_enable else _OFF
            elif pump.state is _STARTING and now_s - pump.started_s >= cfg.start_duration_s:
                pump.state = _RUNNING
                pump.capacity = self._min_capacity
        active = [pump for pump in self.heat_pumps if pump.state in _ACTIVE]
        if not self.hp_enable or self.heat_power_limit_kw <= 0.0:
            # Soft stop (disabled, or no heat wanted at all): each compressor stops once it
            # has run its minimum time.
            for pump in active:
                if now_s - pump.started_s >= cfg.min_run_time_s:
                    self._stop(pump, now_s, "disabled" if not self.hp_enable else "no heat wanted")
                    pump.state = _STANDBY if self.hp_enable else _OFF
            self._up_s = self._down_s = 0.0
            return
        if blocked:
            self._up_s = self._down_s = 0.0
            return
        rated = self._rated_kw
        starting = any(pump.state is _STARTING for pump in active)
        n = len(active)
        more = wanted_kw > 0.5 * self._min_capacity * rated if n == 0 else wanted_kw > 0.95 * n * rated
        fewer = n > 0 and (
            wanted_kw < 0.5 * self._min_capacity * rated if n == 1 else wanted_kw < 0.8 * (n - 1) * rated
        )
        self._up_s = self._up_s + dt_s if more and not starting else 0.0
        self._down_s = self._down_s + dt_s if fewer else 0.0
        delay_up = 0.0 if n == 0 else cfg.stage_up_delay_s  # the first one starts at once
        if self._up_s >= delay_up and more and not starting:
            ready = [
                pump
                for pump in self.heat_pumps
                if pump.state is _STANDBY and now_s - pump.stopped_s >= cfg.min_off_time_s
            ]
            if ready:
                pump = min(ready, key=lambda p: (p.run_hours_h, p.index))
                pump.state = _STARTING
                pump.started_s = now_s
                pump.capacity = 0.0
                self._up_s = 0.0
                self.on_event("hp-plc", "heat_pump_start", pump.name)
        if self._down_s >= cfg.stage_down_delay_s:
            done = [pump for pump in active if now_s - pump.started_s >= cfg.min_run_time_s]
            if done:
                pump = max(done, key=lambda p: (p.run_hours_h, p.index))
                self._stop(pump, now_s, "demand")
                pump.state = _STANDBY
                self._down_s = 0.0

    def _stop(self, pump: HeatPump, now_s: float, reason: str) -> None:
        pump.state = _STANDBY
        pump.capacity = 0.0
        pump.stopped_s = now_s
        pump.heat_kw = pump.electric_kw = 0.0
        self.on_event("hp-plc", "heat_pump_stop", f"{pump.name}: {reason}")

    def _watchdog(self, now_s: float) -> None:
        if self.watchdog_armed and now_s - self._heartbeat_changed_s >= self.watchdog_timeout_s:
            self.watchdog_armed = False
            self.watchdog_tripped = True
            self._local_values()
            self.on_event("hp-plc", "watchdog_fallback", f"heartbeat unchanged {self.watchdog_timeout_s:g} s")

    def _local_values(self) -> None:
        hp = self.cfg.heat_pumps
        self.hp_enable = hp.initial_enable
        self.hp_supply_setpoint_c = hp.local_supply_setpoint_c
        self.heat_power_limit_kw = hp.local_heat_power_limit_kw
        self.dry_cooler_setpoint_c = self.cfg.dry_coolers.local_setpoint_c
        self.dry_cooler_enable = True

    def _trips(self, now_s: float) -> None:
        auto_reset = self.cfg.heat_pumps.trip_auto_reset_s
        for pump in self.heat_pumps:
            if pump.fault and not pump.tripped:
                pump.tripped = True
                self.on_event("hp-plc", "heat_pump_trip", pump.name)
            elif (
                pump.tripped
                and not pump.fault
                and auto_reset is not None
                and now_s - pump.fault_cleared_s >= auto_reset
            ):
                pump.tripped = False
                self.on_event("hp-plc", "heat_pump_reset", f"{pump.name}: auto reset")
        if self.dh_pump_fault and not self.dh_pump_tripped:
            self.dh_pump_tripped = True
            self.on_event("hp-plc", "dh_pump_trip", "DH circulation pump")
        elif (
            self.dh_pump_tripped
            and not self.dh_pump_fault
            and auto_reset is not None
            and now_s - self._dh_pump_fault_cleared_s >= auto_reset
        ):
            self.dh_pump_tripped = False
            self.on_event("hp-plc", "dh_pump_reset", "auto reset")

    def stored_kj(self) -> float:
        """Heat held in the condensers' DH water (above 0 °C), for the plant's energy balance."""
        return self._condenser.energy_kj(self._cp)

    # -- faults from a scenario ----------------------------------------------------------

    def set_heat_pump_fault(self, index: int, active: bool, now_s: float) -> None:
        """Make (or clear) the cause of a heat-pump trip; the trip itself latches."""
        pump = self.heat_pumps[index - 1]
        if pump.fault and not active:
            pump.fault_cleared_s = now_s
        pump.fault = active

    def set_dh_pump_fault(self, active: bool, now_s: float) -> None:
        """Make (or clear) the cause of a DH pump trip; the trip itself latches."""
        if self.dh_pump_fault and not active:
            self._dh_pump_fault_cleared_s = now_s
        self.dh_pump_fault = active

    # -- device interface ----------------------------------------------------------------

    def station_state(self) -> HeatPumpState:
        """The station's heat-pump state as one value."""
        states = {pump.state for pump in self.heat_pumps}
        if _RUNNING in states:
            return _RUNNING
        if _STARTING in states:
            return _STARTING
        if not self.hp_enable:
            return _OFF
        if _STANDBY in states:
            return _STANDBY
        return _BLOCKED

    def signal_readers(self) -> dict[str, Callable[[Sequence[float]], float]]:
        """Per ``hp-plc`` signal in profile order, its reading from one read's noise draws ``z``.

        A read takes :data:`NOISE_DRAWS` draws whatever it reads, each noisy signal its own one,
        so a read of some signals gives the same values as those keys of a full read.
        """
        cfg = self.cfg
        dh = cfg.district_heating
        fws = cfg.facility_water

        def dh_supply_pressure_bar(z: Sequence[float]) -> float:
            flow_ratio = self.dh_flow_kg_s / dh.max_flow_kg_s
            pressure_bar = dh.static_pressure_bar + dh.pump_head_bar * flow_ratio * flow_ratio
            return pressure_bar * (1.0 + self._rel_noise * z[9])

        readers: dict[str, Callable[[Sequence[float]], float]] = {
            "fws_supply_temp_c": lambda z: self.fws_supply_header_c + self._temp_noise * z[0],
            "fws_return_temp_c": lambda z: self.fws_in_c + self._temp_noise * z[1],
            "fws_flow_m3h": lambda z: self.fws_flow_kg_s * self._m3h_per_kg_s * (1.0 + self._rel_noise * z[2]),
            "fws_pump_speed_pct": lambda _: 100.0 * self.fws_flow_kg_s / fws.max_flow_kg_s,
            "fws_bypass_valve_pct": lambda _: 100.0 * self.fws_bypass_kg_s / self.fws_flow_kg_s,
            "hp_source_inlet_temp_c": lambda z: self.fws_after_hx_c + self._temp_noise * z[3],
            "hp_source_outlet_temp_c": lambda z: self.fws_after_hp_c + self._temp_noise * z[4],
            "dh_supply_temp_c": lambda z: self.dh_out_c + self.supply_sensor_bias_k + self._temp_noise * z[5],
            "dh_return_temp_c": lambda z: self.dh_return_c + self._temp_noise * z[6],
            "dh_hx_outlet_temp_c": lambda z: self.dh_after_hx_c + self._temp_noise * z[7],
            "dh_flow_m3h": lambda z: self.dh_flow_kg_s * self._m3h_per_kg_s * (1.0 + self._rel_noise * z[8]),
            "dh_supply_pressure_bar": dh_supply_pressure_bar,
            "dh_return_pressure_bar": lambda z: dh.return_pressure_bar * (1.0 + self._rel_noise * z[10]),
            "dh_pump_speed_pct": lambda _: (
                100.0 * (self.dh_flow_kg_s / dh.max_flow_kg_s) if self.dh_pump_on else 0.0
            ),
            "dh_pump_running": lambda _: 1.0 if self.dh_pump_on else 0.0,
            "dh_pump_tripped": lambda _: 1.0 if self.dh_pump_tripped else 0.0,
            "hx_valve_pct": lambda _: self.hx_valve_pct,
            "hx_heat_kw": lambda z: self.hx_heat_kw * (1.0 + self._rel_noise * z[11]),
            "hp_heat_kw": lambda z: self.hp_heat_kw * (1.0 + self._rel_noise * z[12]),
            "dh_heat_kw": lambda z: (self.hx_heat_kw + self.hp_heat_kw) * (1.0 + self._rel_noise * z[13]),
            "hp_electric_kw": lambda z: self.hp_electric_kw * (1.0 + self._rel_noise * z[14]),
            "hp_cop": lambda _: self.cop,
            "hp_enable": lambda _: 1.0 if self.hp_enable else 0.0,
            "hp_supply_setpoint_c": lambda _: self.hp_supply_setpoint_c,
            "heat_power_limit_kw": lambda _: self.heat_power_limit_kw,
            "hp_state": lambda _: float(self.station_state()),
            "hp_running_count": lambda _: float(sum(1 for p in self.heat_pumps if p.state is _RUNNING)),
            "hp_trip_active": lambda _: 1.0 if any(p.tripped for p in self.heat_pumps) else 0.0,
            "dry_cooler_leaving_temp_c": lambda z: self.fws_out_c + self._temp_noise * z[15],
            "dry_cooler_setpoint_c": lambda _: self.dry_cooler_setpoint_c,
            "dry_cooler_enable": lambda _: 1.0 if self.dry_cooler_enable else 0.0,
            "dry_cooler_forced": lambda _: 1.0 if self.dc_forced else 0.0,
            "dry_cooler_fan_speed_pct": lambda _: self.dc_fan_pct,
            "dry_cooler_heat_kw": lambda z: self.dc_heat_kw * (1.0 + self._rel_noise * z[16]),
            "outdoor_temp_c": lambda z: self.outdoor_c + self._temp_noise * 5.0 * z[17],
            "heartbeat": lambda _: float(self.heartbeat),
            "heartbeat_echo": lambda _: float(self.heartbeat),
            "watchdog_timeout_s": lambda _: self.watchdog_timeout_s,
            "watchdog_tripped": lambda _: 1.0 if self.watchdog_tripped else 0.0,
            "local_hp_supply_setpoint_c": lambda _: cfg.heat_pumps.local_supply_setpoint_c,
            "local_heat_power_limit_kw": lambda _: cfg.heat_pumps.local_heat_power_limit_kw,
            "local_dry_cooler_setpoint_c": lambda _: cfg.dry_coolers.local_setpoint_c,
            "interlock_status": lambda _: float(self.interlock),
            "interlock_active": lambda _: 1.0 if self.interlock & _NOT_WATCHDOG_FALLBACK else 0.0,
            "alarm_reset": lambda _: 0.0,
        }
        for pump in self.heat_pumps:
            prefix = f"hp_{pump.index}_"
            readers[prefix + "state"] = lambda _, pump=pump: float(pump.state)
            readers[prefix + "capacity_pct"] = lambda _, pump=pump: 100.0 * pump.capacity
            readers[prefix + "run_hours_h"] = lambda _, pump=pump: pump.run_hours_h
            readers[prefix + "tripped"] = lambda _, pump=pump: 1.0 if pump.tripped else 0.0
        return readers

    def write(self, signal: str, value: float, now_s: float) -> None:
        """Apply a write as the PLC would: clamp setpoints, reject bad enumerations."""
        hp = self.cfg.heat_pumps
        if signal == "hp_enable":
            self.hp_enable = _binary(value, signal)
        elif signal == "hp_supply_setpoint_c":
            self.hp_supply_setpoint_c = min(max(value, hp.supply_setpoint_min_c), hp.supply_setpoint_max_c)
        elif signal == "heat_power_limit_kw":
            self.heat_power_limit_kw = min(max(value, 0.0), hp.heat_power_limit_max_kw)
        elif signal == "dry_cooler_setpoint_c":
            dc = self.cfg.dry_coolers
            self.dry_cooler_setpoint_c = min(max(value, dc.setpoint_min_c), self.cfg.facility_water.supply_limit_c)
        elif signal == "dry_cooler_enable":
            self.dry_cooler_enable = _binary(value, signal)
        elif signal == "heartbeat":
            if not 0.0 <= value <= 65535.0:
                raise ValueError(f"heartbeat must be 0..65535, got {value}")
            beat = round(value)
            if beat != self.heartbeat or not self.watchdog_armed:
                self.heartbeat = beat
                self._heartbeat_changed_s = now_s
                if not self.watchdog_armed:
                    self.watchdog_armed = True
                    self.watchdog_tripped = False
        elif signal == "watchdog_timeout_s":
            self.watchdog_timeout_s = min(max(value, 5.0), 600.0)
        elif signal == "alarm_reset":
            if _binary(value, signal):
                self._reset(now_s)
        else:  # pragma: no cover - the plant checks writability first
            raise ValueError(f"hp-plc.{signal} is read-only")

    def _reset(self, now_s: float) -> None:
        """Acknowledge: clear trips whose cause is gone and the watchdog flag."""
        del now_s
        for pump in self.heat_pumps:
            if pump.tripped and not pump.fault:
                pump.tripped = False
                self.on_event("hp-plc", "heat_pump_reset", f"{pump.name}: alarm_reset")
        if self.dh_pump_tripped and not self.dh_pump_fault:
            self.dh_pump_tripped = False
            self.on_event("hp-plc", "dh_pump_reset", "alarm_reset")
        self.watchdog_tripped = False
