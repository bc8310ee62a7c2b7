# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Configuration of the plant model: one pydantic model, one section per part of the heat path.

Defaults describe the 22.5 MW reference site (docs/control.md) (12 CDUs of ~1.6 MW liquid
share, a plate heat exchanger plus four heat pumps, dry coolers, a Danish DH network). Every
key names its unit; dimensionless ratios are given in percent (``_pct``). Unknown keys are an
error (``extra="forbid"``), so a typo in a scenario's ``plant:`` block fails loudly.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CduConfig",
    "DistrictHeatingConfig",
    "DryCoolerConfig",
    "FacilityWaterConfig",
    "HeatMeterConfig",
    "HeatPumpConfig",
    "HeatRecoveryConfig",
    "PlantConfig",
    "SensorConfig",
    "SiteConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Section):
    """The hall, the weather and how the model integrates."""

    it_load_mw: float = Field(18.0, ge=0.0, le=100.0, description="IT power of the hall at start (scenarios change it)")
    liquid_share_pct: float = Field(
        85.0, gt=0.0, le=100.0, description="Share of IT power that goes into the liquid loops"
    )
    outdoor_temp_c: float = Field(2.0, ge=-40.0, le=50.0, description="Outdoor air temperature at start")
    water_cp_kj_kgk: float = Field(4.18, gt=0.0, description="Specific heat of facility and DH water")
    water_density_kg_m3: float = Field(
        990.0, gt=0.0, description="Water density used to turn mass flow into volume flow"
    )
    max_substep_s: float = Field(
        1.0,
        gt=0.0,
        le=5.0,
        description="Longest internal integration step; step(dt) is cut into equal sub-steps no "
        "longer than this (the CDU controllers run at this rate)",
    )
    warm_start_s: float = Field(
        1800.0,
        ge=0.0,
        description="Simulated seconds run inside the constructor so the plant starts near its "
        "steady state; time, counters and the event log are reset afterwards (0 = cold start)",
    )


class SensorConfig(_Section):
    """What a read adds to the truth (the physics never sees it): noise, lag, resolution, bias.

    Temperature signals are every measured ``*temp*_c`` signal (not setpoints). A per-signal
    entry (``device.signal``) in ``bias``, ``drift_per_day``, ``lag_s`` or ``resolution``
    replaces the default for that signal; the harness adds each signal's register resolution
    from its device profile (an int16 with scale 0.01 reads in 0.01 K steps).
    """

    temp_noise_k: float = Field(0.02, ge=0.0, description="Standard deviation of temperature noise")
    relative_noise_pct: float = Field(
        0.2, ge=0.0, description="Standard deviation of flow, power and pressure noise, % of reading"
    )
    temp_lag_s: float = Field(
        5.0,
        ge=0.0,
        description="First-order time constant of every temperature sensor (Pt100 in a thermowell in "
        "flowing water: 3-10 s to 63 %)",
    )
    temp_resolution_k: float = Field(
        0.0, ge=0.0, description="Every temperature reads in steps of at least this (0: only the profile's)"
    )
    meter_update_period_s: float = Field(
        10.0,
        ge=0.0,
        description="The heat meter computes a new reading this often and repeats the last one in between "
        "(M-Bus/EN 1434 calculators: 2-60 s)",
    )
    bias: dict[str, float] = Field(
        default_factory=dict, description="Fixed offset per device.signal, in the signal's unit"
    )
    drift_per_day: dict[str, float] = Field(
        default_factory=dict, description="Offset growing from the start per device.signal, unit per day"
    )
    lag_s: dict[str, float] = Field(default_factory=dict, description="Time constant per device.signal (overrides)")
    resolution: dict[str, float] = Field(
        default_factory=dict, description="Reading step per device.signal (overrides the profile's)"
    )


class CduConfig(_Section):
    """The coolant distribution units and their own controllers."""

    count: int = Field(12, ge=1, le=64, description="Number of CDUs (devices cdu-1..cdu-N)")
    design_heat_kw: float = Field(1600.0, gt=0.0, description="Rated liquid heat of one CDU")
    load_shares: list[float] | None = Field(
        None,
        description="Relative share of the liquid heat per CDU (normalised); equal shares if omitted",
    )
    tcs_flow_lpm_per_kw: float = Field(1.5, gt=0.0, description="Rack-loop flow per kW of heat load (1.25-2.0 typical)")
    pump_min_speed_pct: float = Field(15.0, ge=0.0, le=100.0, description="Lowest rack-loop pump speed")
    pump_time_constant_s: float = Field(5.0, gt=0.0, description="Pump speed response time constant")
    glycol_cp_kj_kgk: float = Field(3.8, gt=0.0, description="Specific heat of the 25 % propylene glycol")
    glycol_density_kg_l: float = Field(1.02, gt=0.0, description="Density of the glycol mixture")
    tcs_volume_l: float = Field(
        2000.0, gt=0.0, description="Rack-loop volume incl. cold plates and manifolds (thermal mass)"
    )
    design_approach_k: float = Field(
        3.0, gt=0.0, le=10.0, description="TCS supply minus facility supply at rated load (2-5 K)"
    )
    facility_design_delta_t_k: float = Field(
        10.0, gt=0.0, description="Facility-water temperature rise at rated load and design flow"
    )
    facility_max_flow_pct: float = Field(
        150.0,
        ge=100.0,
        description="Facility flow with the valve fully open and the headers at their design differential "
        "pressure, % of design flow",
    )
    valve_characteristic: Literal["equal_percentage", "linear"] = Field(
        "equal_percentage",
        description="Inherent characteristic of the facility valve (Kv over stroke at a fixed pressure drop)",
    )
    valve_rangeability: float = Field(
        50.0,
        gt=1.0,
        le=1000.0,
        description="Equal-percentage valve: Kvs over the smallest controllable Kv (makers claim 50:1)",
    )
    valve_authority_pct: float = Field(
        50.0,
        gt=0.0,
        le=100.0,
        description="The valve's share of its branch's pressure drop when fully open (the rest: exchanger, "
        "strainer, piping); 50 % is the usual design target, below 25 % the characteristic distorts",
    )
    valve_stroke_time_s: float = Field(20.0, gt=0.0, description="Valve travel time 0-100 %")
    pid_gain_pct_per_k: float = Field(10.0, gt=0.0, description="CDU valve PI gain")
    pid_integral_time_s: float = Field(45.0, gt=0.0, description="CDU valve PI integral time")
    pid_tracking_time_s: float = Field(
        20.0, gt=0.0, description="Back-calculation anti-windup time constant of the CDU PI"
    )
    local_setpoint_c: float = Field(40.0, description="Local (fallback) TCS supply setpoint, used in internal mode")
    setpoint_min_c: float = Field(25.0, description="Lowest TCS supply setpoint the CDU accepts")
    setpoint_max_c: float = Field(45.0, description="Highest TCS supply setpoint the CDU accepts")
    it_limit_c: float = Field(45.0, description="Highest TCS supply temperature the IT allows (W45)")
    watchdog_timeout_s: float = Field(
        60.0, ge=5.0, le=600.0, description="BMS watchdog timeout at start (writable on the device)"
    )
    supply_sensor_2_offset_k: float = Field(0.05, description="Calibration offset of the second TCS supply sensor")
    reservoir_level_pct: float = Field(78.0, ge=0.0, le=100.0, description="Reservoir level at start")
    leak_loss_pct_per_h: float = Field(
        6.0, ge=0.0, description="Reservoir level lost per hour while a leak is injected"
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.load_shares is not None:
            if len(self.load_shares) != self.count:
                raise ValueError(f"load_shares has {len(self.load_shares)} entries, count is {self.count}")
            if any(share < 0 for share in self.load_shares) or sum(self.load_shares) <= 0:
                raise ValueError("load_shares must be non-negative and not all zero")
        if not self.setpoint_min_c <= self.local_setpoint_c <= self.setpoint_max_c:
            raise ValueError("local_setpoint_c must lie within setpoint_min_c..setpoint_max_c")
        return self


class FacilityWaterConfig(_Section):
    """The facility water system (FWS) between the CDUs and the heat-recovery station."""

    min_flow_kg_s: float = Field(
        60.0, gt=0.0, description="Minimum loop flow; the differential-pressure bypass keeps it"
    )
    max_flow_kg_s: float = Field(800.0, gt=0.0, description="Pump capacity; CDU flows share it if exceeded")
    header_dp_design_bar: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Differential pressure between the hall's supply and return headers at design flow "
        "(every CDU branch's pressure drop at design)",
    )
    header_dp_no_flow_bar: float = Field(
        1.5,
        gt=0.0,
        le=20.0,
        description="Header differential pressure with no flow; it falls with the square of the total flow "
        "to header_dp_design_bar at design flow (assumed: the pump holds 1.5 bar at the station and the "
        "mains lose 0.5 bar at design flow), so one CDU opening its valve lowers the others' flow. Equal to "
        "header_dp_design_bar: a pump that holds the header pressure exactly (no coupling)",
    )
    supply_pipe_volume_m3: float = Field(
        25.0, gt=0.0, description="Station -> hall supply pipe (plug flow: the transport delay)"
    )
    return_pipe_volume_m3: float = Field(
        25.0, gt=0.0, description="Hall -> station return pipe (plug flow: the transport delay)"
    )
    supply_header_volume_m3: float = Field(
        15.0, gt=0.0, description="Well-mixed volume of the hall supply header (first-order lag)"
    )
    return_header_volume_m3: float = Field(
        40.0, gt=0.0, description="Well-mixed volume at the station inlet incl. buffer (first-order lag)"
    )
    supply_limit_c: float = Field(
        38.0,
        description="Facility supply limit: above it the PLC forces the dry coolers on at their "
        "local setpoint (hardwired IT protection)",
    )
    initial_supply_temp_c: float = Field(34.0, description="Facility supply temperature at cold start")


class HeatRecoveryConfig(_Section):
    """The plate heat exchanger that preheats the DH return with facility water."""

    design_approach_k: float = Field(2.0, gt=0.0, le=10.0, description="FWS inlet minus DH outlet at design (1-2 K)")
    design_fws_flow_kg_s: float = Field(400.0, gt=0.0, description="Facility-side design flow")
    design_dh_flow_kg_s: float = Field(110.0, gt=0.0, description="DH-side design flow")
    design_fws_inlet_temp_c: float = Field(50.0, description="Facility inlet temperature at design")
    design_dh_inlet_temp_c: float = Field(38.0, description="DH inlet temperature at design")
    min_temp_difference_k: float = Field(
        2.0, ge=0.0, description="The DH side opens only when FWS return exceeds DH return by this"
    )
    valve_stroke_time_s: float = Field(60.0, gt=0.0, description="HX valve travel time 0-100 %")


class HeatPumpConfig(_Section):
    """The heat pumps that lift the preheated DH water to supply temperature (one PLC)."""

    count: int = Field(4, ge=1, le=16, description="Number of heat pumps (hp-1..hp-N)")
    heating_capacity_kw: float = Field(4000.0, gt=0.0, description="Rated heating power of one heat pump")
    min_capacity_pct: float = Field(20.0, ge=0.0, le=100.0, description="Lowest capacity while running")
    ramp_pct_per_s: float = Field(1.0, gt=0.0, description="Capacity ramp limit, % of rated per second")
    min_run_time_s: float = Field(60.0, ge=0.0, description="Shortest run after a start (compressor)")
    min_off_time_s: float = Field(60.0, ge=0.0, description="Shortest stop before a restart")
    start_duration_s: float = Field(30.0, ge=0.0, description="Starting phase before heat is delivered")
    stage_up_delay_s: float = Field(60.0, ge=0.0, description="Demand above running capacity this long starts one more")
    stage_down_delay_s: float = Field(
        120.0, ge=0.0, description="Demand one unit below running capacity this long stops one"
    )
    carnot_efficiency_pct: float = Field(45.0, gt=0.0, le=100.0, description="Real COP as % of the Carnot COP")
    evaporator_approach_k: float = Field(
        2.0, ge=0.0, description="Evaporating temperature below the facility water leaving the evaporator"
    )
    condenser_approach_k: float = Field(
        2.0, ge=0.0, description="Condensing temperature above the DH water leaving the condenser"
    )
    min_source_outlet_temp_c: float = Field(
        20.0, description="Lowest facility temperature leaving the evaporators (capacity is limited)"
    )
    max_condenser_inlet_temp_c: float = Field(
        58.0, description="DH temperature entering the condensers above which the heat pumps are blocked"
    )
    max_supply_temp_c: float = Field(85.0, description="Highest DH temperature leaving the condensers")
    supply_setpoint_min_c: float = Field(50.0, description="Lowest supply setpoint the PLC accepts")
    supply_setpoint_max_c: float = Field(85.0, description="Highest supply setpoint the PLC accepts")
    local_supply_setpoint_c: float = Field(70.0, description="Local (fallback) DH supply setpoint")
    local_heat_power_limit_kw: float = Field(
        10000.0, ge=0.0, description="Local (fallback) limit of the station's heat to DH"
    )
    heat_power_limit_max_kw: float = Field(25000.0, gt=0.0, description="Highest heat-power limit the PLC accepts")
    initial_enable: bool = Field(True, description="Heat pumps enabled at start (local enable)")
    trip_auto_reset_s: float | None = Field(
        300.0,
        ge=0.0,
        description="A trip resets itself this long after its cause cleared; null = only alarm_reset",
    )
    watchdog_timeout_s: float = Field(60.0, ge=5.0, le=600.0, description="PLC watchdog timeout at start (writable)")
    initial_run_hours_h: float = Field(5000.0, ge=0.0, description="Run-hour counter of each heat pump at start")
    condenser_volume_m3: float = Field(
        3.0,
        ge=0.0,
        description="DH water in the condensers, exchanger and station piping (well mixed): the station's "
        "supply lags its heat by volume / flow, ~30 s at 100 kg/s (0: none)",
    )
    supply_sensor_bias_k: float = Field(
        0.3,
        description="Calibration error of the PLC's DH supply sensor: the PLC holds sensor = setpoint, so the "
        "water leaves this much colder, and dh_supply_temp_c reads this much high (class A Pt100 at 75 °C: "
        "+/-0.3 K)",
    )
    plc_flow_error_pct: float = Field(
        -2.0,
        description="Error of the DH flow measurement the PLC's feed-forward uses, % of reading (its PI "
        "corrects what remains)",
    )
    plc_supply_kp_kw_per_k: float = Field(
        100.0, gt=0.0, description="PLC supply PI: heat-pump heat per K below the supply setpoint"
    )
    plc_supply_ti_s: float = Field(
        300.0, gt=0.0, description="PLC supply PI: integral time (its integral corrects the target temperature)"
    )
    dh_flow_trim_per_k_s: float = Field(
        0.002,
        ge=0.0,
        description="PLC trim that cuts DH flow while the supply is below setpoint (source or "
        "capacity short), fraction per K per second",
    )


class DryCoolerConfig(_Section):
    """The dry coolers that reject whatever heat is left, whatever the DH side does."""

    ua_kw_k: float = Field(2500.0, gt=0.0, description="Heat-transfer coefficient x area of all dry coolers")
    air_capacity_rate_kw_k: float = Field(
        3000.0, gt=0.0, description="Air-side capacity rate (mass flow x cp) at full fan speed"
    )
    local_setpoint_c: float = Field(34.0, description="Local (fallback) leaving-temperature setpoint")
    setpoint_min_c: float = Field(20.0, description="Lowest leaving setpoint the PLC accepts")
    initial_enable: bool = Field(True, description="Dry coolers enabled at start")


class DistrictHeatingConfig(_Section):
    """The DH network side: what the network returns and what the utility asks for."""

    return_temp_c: float = Field(40.0, description="Network return temperature at start (the network's)")
    min_flow_kg_s: float = Field(15.0, gt=0.0, description="Lowest DH flow while the station delivers")
    max_flow_kg_s: float = Field(180.0, gt=0.0, description="Highest DH flow (pump and contract limit)")
    pump_time_constant_s: float = Field(10.0, gt=0.0, description="DH pump flow response time constant")
    supply_pipe_volume_m3: float = Field(6.0, gt=0.0, description="Station -> heat meter pipe (plug flow)")
    meter_volume_m3: float = Field(2.0, gt=0.0, description="Mixed volume in front of the meter sensors")
    supply_pipe_heat_loss_kw_k: float = Field(
        0.1,
        ge=0.0,
        description="Heat loss of the station -> meter pipe per K above the ground (~85 m of insulated "
        "DN300 at ~1.2 W/(m K)): 6 kW at 72 °C, 0.015 K at 100 kg/s, 0.1 K at the 15 kg/s minimum",
    )
    ground_temp_c: float = Field(8.0, description="Soil temperature around the DH pipe")
    static_pressure_bar: float = Field(6.0, gt=0.0, description="Network pressure at the station")
    pump_head_bar: float = Field(2.5, ge=0.0, description="DH pump head at maximum flow")
    return_pressure_bar: float = Field(3.0, gt=0.0, description="Network return pressure")
    heat_order_mw: float = Field(16.0, ge=0.0, description="The utility's heat order at start")
    supply_temp_requirement_c: float | None = Field(
        None, description="The utility's supply-temperature requirement; null = its weather curve"
    )
    utility_update_period_s: float = Field(
        60.0, gt=0.0, description="How often the utility's dispatcher re-sends its order"
    )
    weather_curve_room_temp_c: float = Field(20.0, description="Heating curve: room temperature")
    weather_curve_slope: float = Field(1.6, gt=0.0, description="Heating curve: slope s (dimensionless)")
    weather_curve_offset_k: float = Field(8.0, description="Heating curve: parallel offset")
    weather_curve_min_c: float = Field(65.0, description="Lowest supply (hot-water minimum)")
    weather_curve_max_c: float = Field(85.0, description="Highest supply the network allows")


class HeatMeterConfig(_Section):
    """The EN 1434 heat meter at the site boundary."""

    initial_energy_mwh: float = Field(1000.0, ge=0.0, description="Energy register at start")
    initial_volume_m3: float = Field(50000.0, ge=0.0, description="Volume register at start")
    initial_operating_time_h: float = Field(9000.0, ge=0.0, description="Operating-time register at start")
    max_flow_m3h: float = Field(800.0, gt=0.0, description="Flow above which the meter flags error 2")


class PlantConfig(_Section):
    """Everything the plant model needs; every section has defaults for the reference site."""

    site: SiteConfig = Field(default_factory=SiteConfig, description="Hall, weather and integration")
    sensors: SensorConfig = Field(default_factory=SensorConfig, description="Read noise")
    cdu: CduConfig = Field(default_factory=CduConfig, description="CDUs and their controllers")
    facility_water: FacilityWaterConfig = Field(default_factory=FacilityWaterConfig, description="Facility water loop")
    heat_recovery: HeatRecoveryConfig = Field(default_factory=HeatRecoveryConfig, description="Plate heat exchanger")
    heat_pumps: HeatPumpConfig = Field(default_factory=HeatPumpConfig, description="Heat pumps and their PLC")
    dry_coolers: DryCoolerConfig = Field(default_factory=DryCoolerConfig, description="Dry coolers")
    district_heating: DistrictHeatingConfig = Field(
        default_factory=DistrictHeatingConfig, description="DH network and utility"
    )
    heat_meter: HeatMeterConfig = Field(default_factory=HeatMeterConfig, description="Heat meter")

    @model_validator(mode="after")
    def _check(self) -> Self:
        fws = self.facility_water
        if fws.min_flow_kg_s >= fws.max_flow_kg_s:
            raise ValueError("facility_water.min_flow_kg_s must be below max_flow_kg_s")
        if fws.header_dp_no_flow_bar < fws.header_dp_design_bar:
            raise ValueError(
                "facility_water.header_dp_no_flow_bar must be at least header_dp_design_bar (a pump's head "
                "is highest at no flow)"
            )
        dh = self.district_heating
        if dh.min_flow_kg_s >= dh.max_flow_kg_s:
            raise ValueError("district_heating.min_flow_kg_s must be below max_flow_kg_s")
        hp = self.heat_pumps
        if not hp.supply_setpoint_min_c <= hp.local_supply_setpoint_c <= hp.supply_setpoint_max_c:
            raise ValueError("heat_pumps.local_supply_setpoint_c must lie within the setpoint range")
        dc = self.dry_coolers
        if not dc.setpoint_min_c <= dc.local_setpoint_c <= fws.supply_limit_c:
            raise ValueError(
                "dry_coolers.local_setpoint_c must lie within setpoint_min_c..facility_water.supply_limit_c"
            )
        return self
