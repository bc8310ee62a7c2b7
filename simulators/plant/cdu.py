# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""One coolant distribution unit: rack loop, plate exchanger, facility valve and its own PI.

The rack loop (TCS) is one well-mixed mass at the supply temperature; the racks add the IT
heat and the return is ``supply + load / (flow * cp)``. The exchanger is counterflow eps-NTU
with a UA that follows both flows. For a constant facility inlet temperature the loop
temperature obeys a linear ODE, so one sub-step is solved exactly (stable at any step) and
the heat passed to the facility water is the exact mean over the sub-step, which keeps the
plant's energy balance closed.

The facility valve is equal percentage (or linear) with a finite authority; the CDU does not
set its facility flow but a branch conductance: the plant solves the shared header pressure
for all CDUs at once (:mod:`simulators.plant.hydraulics`), so one CDU opening its valve lowers
the others' flow.

The CDU's PI moves the valve to hold its TCS supply setpoint: the local setpoint in internal
mode (``control_mode`` 0), the written one in external mode (1). In external mode a BMS
watchdog watches ``heartbeat``: unchanged for ``watchdog_timeout_s`` and the CDU falls back to
internal mode and its local setpoint, as vendor CDUs do when the BMS goes quiet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from simulators.plant.config import CduConfig, SensorConfig, SiteConfig
from simulators.plant.hydraulics import equal_percentage, installed_flow_fraction, valve_characteristic
from simulators.plant.physics import counterflow_effectiveness, counterflow_ntu

__all__ = ["ALARM_CODES", "ALARM_SIGNALS", "CDU_SIGNALS", "CDU_WRITABLE", "NOISE_DRAWS", "SUPPLY_SENSORS", "Cdu"]

# Alarm codes, lowest number = highest priority (alarm_code shows the highest one active).
ALARM_LEAK = 10
ALARM_SUPPLY_HIGH = 20
ALARM_SUPPLY_DEVIATION = 21
ALARM_SENSOR_MISMATCH = 30
ALARM_WATCHDOG = 40
ALARM_CODES: dict[int, str] = {
    ALARM_LEAK: "leak detected (latched)",
    ALARM_SUPPLY_HIGH: "TCS supply above the IT limit",
    ALARM_SUPPLY_DEVIATION: "TCS supply more than 2 K from setpoint for 2 min (valve saturated)",
    ALARM_SENSOR_MISMATCH: "TCS supply sensors disagree by more than 1 K",
    ALARM_WATCHDOG: "BMS watchdog expired, fell back to local setpoint (latched)",
}

CDU_SIGNALS: tuple[str, ...] = (
    "tcs_supply_temp_c",
    "tcs_supply_temp_2_c",
    "tcs_return_temp_c",
    "tcs_flow_lpm",
    "tcs_pressure_bar",
    "tcs_diff_pressure_bar",
    "pump_speed_pct",
    "facility_inlet_temp_c",
    "facility_outlet_temp_c",
    "facility_flow_lpm",
    "valve_demand_pct",
    "valve_feedback_pct",
    "heat_load_kw",
    "reservoir_level_pct",
    "alarm_code",
    "pump_run_hours_h",
    "heat_energy_mwh",
    "pump_running",
    "leak_detected",
    "alarm_active",
    "tcs_supply_setpoint_c",
    "control_mode",
    "heartbeat",
    "watchdog_timeout_s",
    "local_setpoint_c",
    "it_limit_c",
    "alarm_reset",
)
CDU_WRITABLE = frozenset({"tcs_supply_setpoint_c", "control_mode", "heartbeat", "watchdog_timeout_s", "alarm_reset"})

#: Signals :meth:`Cdu.judge_alarms` sets, and the transmitted values it judges them on.
ALARM_SIGNALS = frozenset({"alarm_code", "alarm_active"})
SUPPLY_SENSORS = frozenset({"tcs_supply_temp_c", "tcs_supply_temp_2_c"})
_DEVIATION_K = 2.0
_DEVIATION_DELAY_S = 120.0
_SENSOR_MISMATCH_K = 1.0
NOISE_DRAWS = 10  # signals of a read that carry noise (one draw each)
_UA_FLOW_EXPONENT = -0.7  # film coefficient ~ flow^0.7 on each side


def _binary(value: float, name: str) -> int:
    if value not in (0.0, 1.0):
        raise ValueError(f"{name} must be 0 or 1, got {value}")
    return int(value)


class Cdu:
    """A CDU's physics, controller and register-level behaviour."""

    __slots__ = (
        "_authority",
        "_conductance_open",
        "_deviation_s",
        "_equal_percentage",
        "_exchange_last",
        "_glycol_cp",
        "_glycol_kg_per_lpm",
        "_heartbeat_changed_s",
        "_ki",
        "_kp",
        "_leak_loss_pct_s",
        "_m_f_design",
        "_m_f_max",
        "_m_t_design",
        "_mass_cp_kj_k",
        "_min_speed",
        "_pi_last",
        "_pump_tau_s",
        "_rangeability",
        "_rel_noise",
        "_tcs_resistance",
        "_temp_noise",
        "_tracking_s",
        "_ua_design",
        "_valve_rate_pct_s",
        "_water_cp",
        "_water_lpm_per_kg_s",
        "cfg",
        "control_mode",
        "energy_mwh",
        "external_setpoint_c",
        "facility_flow_kg_s",
        "facility_inlet_c",
        "facility_outlet_c",
        "heartbeat",
        "hx_heat_kw",
        "index",
        "integral_pct",
        "leak",
        "leak_latched",
        "load_kw",
        "name",
        "on_event",
        "reservoir_level_pct",
        "run_hours_h",
        "speed_pct",
        "supply_c",
        "tcs_flow_kg_s",
        "valve_demand_pct",
        "valve_pct",
        "watchdog_timeout_s",
        "watchdog_tripped",
    )

    def __init__(
        self,
        name: str,
        index: int,
        cfg: CduConfig,
        site: SiteConfig,
        sensors: SensorConfig,
        *,
        header_dp_design_bar: float,
        facility_supply_c: float,
        run_hours_h: float,
        energy_mwh: float,
        on_event: Callable[[str, str, str], None],
    ) -> None:
        self.name = name
        self.index = index
        self.cfg = cfg
        self.on_event = on_event
        self._water_cp = site.water_cp_kj_kgk
        self._water_lpm_per_kg_s = 60000.0 / site.water_density_kg_m3
        self._glycol_cp = cfg.glycol_cp_kj_kgk
        self._glycol_kg_per_lpm = cfg.glycol_density_kg_l / 60.0
        self._temp_noise = sensors.temp_noise_k
        self._rel_noise = sensors.relative_noise_pct / 100.0

        # Design point: rated load, pump at 100 %, valve at design flow, approach as configured.
        design_kw = cfg.design_heat_kw
        self._m_t_design = cfg.tcs_flow_lpm_per_kw * design_kw * self._glycol_kg_per_lpm
        self._m_f_design = design_kw / (self._water_cp * cfg.facility_design_delta_t_k)
        self._m_f_max = self._m_f_design * cfg.facility_max_flow_pct / 100.0
        c_t = self._m_t_design * self._glycol_cp
        c_f = self._m_f_design * self._water_cp
        c_min, c_max = min(c_t, c_f), max(c_t, c_f)
        hot_in_minus_cold_in = cfg.design_approach_k + design_kw / c_t
        effectiveness = design_kw / (c_min * hot_in_minus_cold_in)
        self._ua_design = counterflow_ntu(effectiveness, c_min / c_max) * c_min
        self._mass_cp_kj_k = cfg.tcs_volume_l * cfg.glycol_density_kg_l * self._glycol_cp
        self._min_speed = cfg.pump_min_speed_pct
        self._pump_tau_s = cfg.pump_time_constant_s
        self._kp = cfg.pid_gain_pct_per_k
        self._ki = cfg.pid_gain_pct_per_k / cfg.pid_integral_time_s
        self._tracking_s = cfg.pid_tracking_time_s
        self._valve_rate_pct_s = 100.0 / cfg.valve_stroke_time_s
        self._leak_loss_pct_s = cfg.leak_loss_pct_per_h / 3600.0
        # Valve fully open at the design header pressure passes the configured maximum flow.
        self._conductance_open = self._m_f_max / math.sqrt(header_dp_design_bar)
        self._equal_percentage = cfg.valve_characteristic == "equal_percentage"
        self._rangeability = cfg.valve_rangeability
        self._authority = cfg.valve_authority_pct / 100.0

        # State: start at the local setpoint with the valve where the design point puts it.
        self.load_kw = 0.0
        self.supply_c = cfg.local_setpoint_c
        self.speed_pct = 100.0
        self.tcs_flow_kg_s = self._m_t_design
        self._tcs_resistance = 1.0  # (flow / design flow) ** -0.7 at design flow
        design_valve = self.design_valve_pct()
        self.valve_demand_pct = design_valve
        self.valve_pct = design_valve
        self.integral_pct = design_valve
        self.facility_flow_kg_s = self._m_f_design
        self.facility_inlet_c = facility_supply_c
        self.facility_outlet_c = facility_supply_c
        self.hx_heat_kw = 0.0
        self.control_mode = 0
        self.external_setpoint_c = cfg.local_setpoint_c
        self.watchdog_timeout_s = cfg.watchdog_timeout_s
        self.heartbeat = 0
        self._heartbeat_changed_s = 0.0
        self.watchdog_tripped = False
        self.leak = False
        self.leak_latched = False
        self.reservoir_level_pct = cfg.reservoir_level_pct
        self.run_hours_h = run_hours_h
        self.energy_mwh = energy_mwh
        self._deviation_s = 0.0
        # The last PI and exchange steps, inputs and results: a settled CDU (most sub-steps of a
        # closed-loop day) gets the same inputs again, and the same inputs give the same results.
        self._pi_last: tuple[tuple[float, ...], tuple[float, float, float, float, bool]] | None = None
        self._exchange_last: tuple[tuple[float, ...], tuple[float, float, float]] | None = None

    # -- physics -------------------------------------------------------------------------

    @property
    def design_flow_kg_s(self) -> float:
        """Facility flow at rated load and the design approach."""
        return self._m_f_design

    def flow_fraction(self, valve_pct: float) -> float:
        """Branch flow over its fully-open flow at the same header pressure, valve at ``valve_pct``."""
        cfg = self.cfg
        relative_kv = valve_characteristic(
            valve_pct / 100.0, characteristic=cfg.valve_characteristic, rangeability=self._rangeability
        )
        return installed_flow_fraction(relative_kv, self._authority)

    def design_valve_pct(self) -> float:
        """Valve position that passes the design flow at the design header pressure (bisection)."""
        wanted = self._m_f_design / self._m_f_max
        low, high = 0.0, 100.0
        for _ in range(60):
            middle = 0.5 * (low + high)
            if self.flow_fraction(middle) < wanted:
                low = middle
            else:
                high = middle
        return 0.5 * (low + high)

    @property
    def active_setpoint_c(self) -> float:
        """The setpoint the PI holds now."""
        return self.external_setpoint_c if self.control_mode == 1 else self.cfg.local_setpoint_c

    @property
    def tcs_return_c(self) -> float:
        """Rack-loop return: supply plus the racks' heat carried by the loop flow."""
        return self.supply_c + self.load_kw / (self.tcs_flow_kg_s * self._glycol_cp)

    def control(self, dt_s: float, now_s: float) -> float:
        """Pump, watchdog, PI and valve for one sub-step; the branch conductance, kg/s per sqrt(bar).

        The plant turns the conductances of all CDUs into flows through the shared header
        pressure (:class:`~simulators.plant.hydraulics.FacilityLoop`).
        """
        # Hot path (every CDU, every sub-step): attributes read once into locals, and
        # conditionals where min()/max() would cost a call (same values, NaN included).
        cfg = self.cfg
        # The pump holds the rack flow at the configured L/min per kW, never below min speed.
        target = 100.0 * self.load_kw / cfg.design_heat_kw
        min_speed = self._min_speed
        target = min_speed if target < min_speed else (100.0 if target > 100.0 else target)  # noqa: FURB136 - no call
        speed = self.speed_pct
        if speed != target:  # settled (most sub-steps): nothing moves, skip exp and pow
            speed = target + (speed - target) * math.exp(-dt_s / self._pump_tau_s)
            self.speed_pct = speed
            m_t_design = self._m_t_design
            tcs_flow = m_t_design * speed / 100.0
            self.tcs_flow_kg_s = tcs_flow
            self._tcs_resistance = (tcs_flow / m_t_design) ** _UA_FLOW_EXPONENT

        if self.control_mode == 1 and now_s - self._heartbeat_changed_s >= self.watchdog_timeout_s:
            self.control_mode = 0
            self.external_setpoint_c = cfg.local_setpoint_c
            self.watchdog_tripped = True
            self.on_event(self.name, "watchdog_fallback", f"heartbeat unchanged {self.watchdog_timeout_s:g} s")

        # PI, direct acting (too warm -> open), back-calculation anti-windup; then the valve and
        # its branch conductance. Only these inputs decide them: the same again (a settled CDU),
        # the same results as last time.
        supply = self.supply_c
        setpoint = self.external_setpoint_c if self.control_mode == 1 else cfg.local_setpoint_c
        integral = self.integral_pct
        valve = self.valve_pct
        inputs = (supply, setpoint, integral, valve, dt_s)
        last = self._pi_last
        if last is not None and last[0] == inputs:
            integral, demand, valve, conductance, deviating = last[1]
        else:
            error = supply - setpoint
            wanted = self._kp * error + integral
            demand = 0.0 if wanted < 0.0 else (100.0 if wanted > 100.0 else wanted)  # noqa: FURB136 - no call
            integral += dt_s * (self._ki * error + (demand - wanted) / self._tracking_s)
            step = self._valve_rate_pct_s * dt_s
            move = demand - valve
            valve += -step if move < -step else (step if move > step else move)  # noqa: FURB136 - no call
            deviating = abs(error) > _DEVIATION_K
            stroke = valve / 100.0
            relative_kv = equal_percentage(stroke, self._rangeability) if self._equal_percentage else stroke
            if relative_kv <= 0.0:
                conductance = 0.0
            else:
                # installed_flow_fraction, inlined: this runs for every CDU every sub-step.
                authority = self._authority
                spread = authority + (1.0 - authority) * relative_kv * relative_kv
                conductance = self._conductance_open * relative_kv / math.sqrt(spread)
            self._pi_last = (inputs, (integral, demand, valve, conductance, deviating))
        self.integral_pct = integral
        self.valve_demand_pct = demand
        self.valve_pct = valve

        if deviating:
            self._deviation_s += dt_s
        else:
            self._deviation_s = 0.0
        if self.leak:
            self.reservoir_level_pct = max(self.reservoir_level_pct - self._leak_loss_pct_s * dt_s, 0.0)
        if speed > 0.0:
            self.run_hours_h += dt_s / 3600.0
        return conductance

    def exchange(self, dt_s: float, facility_flow_kg_s: float, facility_inlet_c: float) -> float:
        """Exchange heat with the facility water for one sub-step; mean facility outlet temp."""
        load = self.load_kw
        start = self.supply_c
        self.facility_flow_kg_s = facility_flow_kg_s
        self.facility_inlet_c = facility_inlet_c
        self.energy_mwh += load * dt_s / 3.6e6
        # Only these decide the step (the rack-side resistance follows the rack flow): the same
        # again (a settled CDU), the same results as last time.
        tcs_flow = self.tcs_flow_kg_s
        inputs = (facility_flow_kg_s, facility_inlet_c, start, load, tcs_flow, dt_s)
        last = self._exchange_last
        if last is not None and last[0] == inputs:
            end, heat, outlet = last[1]
            self.supply_c = end
            self.hx_heat_kw = heat
            self.facility_outlet_c = outlet
            return outlet
        c_t = tcs_flow * self._glycol_cp
        c_f = facility_flow_kg_s * self._water_cp
        mass_cp = self._mass_cp_kj_k
        k = 0.0
        if c_f > 1e-6:
            resistance = self._tcs_resistance + (facility_flow_kg_s / self._m_f_design) ** _UA_FLOW_EXPONENT
            ua = 2.0 * self._ua_design / resistance
            if c_t < c_f:
                k = counterflow_effectiveness(ua / c_t, c_t / c_f) * c_t
            else:
                k = counterflow_effectiveness(ua / c_f, c_f / c_t) * c_f
        if k > 1e-6:
            # Q = k * (return - inlet), return = supply + load / c_t: linear in the supply.
            steady = facility_inlet_c - load / c_t + load / k
            end = steady + (start - steady) * math.exp(-k * dt_s / mass_cp)
        else:
            end = start + load * dt_s / mass_cp
        heat = load - mass_cp * (end - start) / dt_s
        self.supply_c = end
        self.hx_heat_kw = heat
        outlet = facility_inlet_c + heat / c_f if c_f > 1e-6 else facility_inlet_c
        self.facility_outlet_c = outlet
        self._exchange_last = (inputs, (end, heat, outlet))
        return outlet

    def stored_kj(self) -> float:
        """Heat stored in the rack loop above 0 °C."""
        return self._mass_cp_kj_k * self.supply_c

    # -- alarms --------------------------------------------------------------------------

    def alarm_codes(self, sensor_1_c: float | None = None, sensor_2_c: float | None = None) -> list[int]:
        """Active alarm codes, highest priority first (sensor readings for the mismatch check)."""
        codes: list[int] = []
        if self.leak_latched:
            codes.append(ALARM_LEAK)
        if self.supply_c > self.cfg.it_limit_c:
            codes.append(ALARM_SUPPLY_HIGH)
        if self._deviation_s >= _DEVIATION_DELAY_S:
            codes.append(ALARM_SUPPLY_DEVIATION)
        if sensor_1_c is not None and sensor_2_c is not None and abs(sensor_2_c - sensor_1_c) > _SENSOR_MISMATCH_K:
            codes.append(ALARM_SENSOR_MISMATCH)
        if self.watchdog_tripped:
            codes.append(ALARM_WATCHDOG)
        return codes

    # -- device interface ----------------------------------------------------------------

    def signal_readers(self) -> dict[str, Callable[[Sequence[float]], float]]:
        """Per signal in profile order, its reading from one read's noise draws ``z``.

        A read takes :data:`NOISE_DRAWS` draws whatever it reads, and each noisy signal has its
        own one, so a read of some signals gives the same values as those keys of a full read.
        ``alarm_code`` and ``alarm_active`` read 0 here: :meth:`judge_alarms` sets them from the
        supply sensors as transmitted.
        """
        cfg = self.cfg

        def tcs_pressure_bar(z: Sequence[float]) -> float:
            speed = self.speed_pct / 100.0
            return (1.5 + 2.0 * speed * speed) * (1.0 + self._rel_noise * z[4])

        def tcs_diff_pressure_bar(z: Sequence[float]) -> float:
            speed = self.speed_pct / 100.0
            return 1.8 * speed * speed * (1.0 + self._rel_noise * z[5])

        return {
            "tcs_supply_temp_c": lambda z: self.supply_c + self._temp_noise * z[0],
            "tcs_supply_temp_2_c": lambda z: self.supply_c + cfg.supply_sensor_2_offset_k + self._temp_noise * z[1],
            "tcs_return_temp_c": lambda z: self.tcs_return_c + self._temp_noise * z[2],
            "tcs_flow_lpm": lambda z: self.tcs_flow_kg_s / self._glycol_kg_per_lpm * (1.0 + self._rel_noise * z[3]),
            "tcs_pressure_bar": tcs_pressure_bar,
            "tcs_diff_pressure_bar": tcs_diff_pressure_bar,
            "pump_speed_pct": lambda _: self.speed_pct,
            "facility_inlet_temp_c": lambda z: self.facility_inlet_c + self._temp_noise * z[6],
            "facility_outlet_temp_c": lambda z: self.facility_outlet_c + self._temp_noise * z[7],
            "facility_flow_lpm": lambda z: (
                self.facility_flow_kg_s * self._water_lpm_per_kg_s * (1.0 + self._rel_noise * z[8])
            ),
            "valve_demand_pct": lambda _: self.valve_demand_pct,
            "valve_feedback_pct": lambda _: self.valve_pct,
            "heat_load_kw": lambda z: self.load_kw * (1.0 + self._rel_noise * z[9]),
            "reservoir_level_pct": lambda _: self.reservoir_level_pct,
            "alarm_code": lambda _: 0.0,
            "pump_run_hours_h": lambda _: self.run_hours_h,
            "heat_energy_mwh": lambda _: self.energy_mwh,
            "pump_running": lambda _: 1.0 if self.speed_pct > 0.0 else 0.0,
            "leak_detected": lambda _: 1.0 if self.leak else 0.0,
            "alarm_active": lambda _: 0.0,
            "tcs_supply_setpoint_c": lambda _: self.external_setpoint_c,
            "control_mode": lambda _: float(self.control_mode),
            "heartbeat": lambda _: float(self.heartbeat),
            "watchdog_timeout_s": lambda _: self.watchdog_timeout_s,
            "local_setpoint_c": lambda _: cfg.local_setpoint_c,
            "it_limit_c": lambda _: cfg.it_limit_c,
            "alarm_reset": lambda _: 0.0,  # a coil that acts on write and reads back 0
        }

    def judge_alarms(self, values: dict[str, float], frozen: dict[str, float] | None) -> None:
        """Set ``alarm_code`` and ``alarm_active`` from the transmitted (lagged, frozen) supply sensors.

        A stuck supply sensor (a scenario's sensor freeze) shows up in the mismatch alarm as it
        would; a frozen alarm signal stays as it is.
        """
        codes = self.alarm_codes(values["tcs_supply_temp_c"], values["tcs_supply_temp_2_c"])
        if "alarm_code" not in (frozen or {}):
            values["alarm_code"] = float(codes[0]) if codes else 0.0
        if "alarm_active" not in (frozen or {}):
            values["alarm_active"] = 1.0 if codes else 0.0

    def write(self, signal: str, value: float, now_s: float) -> None:
        """Apply a write as the CDU's firmware would (clamp setpoints, reject bad enumerations)."""
        cfg = self.cfg
        if signal == "tcs_supply_setpoint_c":
            self.external_setpoint_c = min(max(value, cfg.setpoint_min_c), cfg.setpoint_max_c)
        elif signal == "control_mode":
            mode = _binary(value, "control_mode")
            if mode == 1 and self.control_mode == 0:
                # Taking control restarts the watchdog; a stale heartbeat must not trip at once.
                self._heartbeat_changed_s = now_s
                self.watchdog_tripped = False
            self.control_mode = mode
        elif signal == "heartbeat":
            if not 0.0 <= value <= 65535.0:
                raise ValueError(f"heartbeat must be 0..65535, got {value}")
            beat = round(value)
            if beat != self.heartbeat:
                self.heartbeat = beat
                self._heartbeat_changed_s = now_s
        elif signal == "watchdog_timeout_s":
            self.watchdog_timeout_s = min(max(value, 5.0), 600.0)
        elif signal == "alarm_reset":
            if _binary(value, "alarm_reset") == 1:
                self.watchdog_tripped = False
                if not self.leak:
                    self.leak_latched = False
        else:  # pragma: no cover - the plant checks writability first
            raise ValueError(f"{self.name}.{signal} is read-only")
