"""The supervisory controller's settings (the site file's ``control:`` section).

Every key names its unit and says what it is for; docs/control.md explains the values chosen
for the reference site. The defaults are the reference site (docs/control.md): CDUs with a 45 °C
IT limit, a 38 °C facility-water limit, a DH network run at 65-85 °C.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.control.commands import CommandPolicy

__all__ = ["ABSENT", "ControlConfig", "ControlDevice", "OutputWrites"]

ABSENT = "absent"
"""``control.devices.<device>.signals.<role signal>: absent``: the device does not have it."""


class OutputWrites(BaseModel):
    """Write economy of one role output on one device (``control.devices.<device>.writes.<output>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband: float | None = Field(
        None,
        ge=0,
        description="A new value is written only when it differs from the last written by at least this "
        "(engineering units); default the signal's resolution (a Modbus register's scale, else the role's)",
    )
    min_interval_s: float | None = Field(
        None,
        ge=0,
        description="Least seconds between two writes of a changed value; overrides and safe states are "
        "written at once; default the role's (docs/control.md, Roles)",
    )


class ControlDevice(BaseModel):
    """How one device fulfils its role (``control.devices.<device>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signals: dict[str, str | float] = Field(
        default_factory=dict,
        description="Role signal -> the profile signal that provides it, a constant (it_limit_c: 45) or "
        "'absent'; a role signal not listed is the profile signal of the same name",
    )
    heartbeat_period_s: float | None = Field(
        None, gt=0, description="Seconds between heartbeat writes to this device; overrides every other default"
    )
    write_budget_per_h: float | None = Field(
        None, gt=0, description="Setpoint writes per hour this device should get at most; control.write_budget_per_h"
    )
    writes: dict[str, OutputWrites] = Field(
        default_factory=dict, description="Role output -> deadband and min_interval_s for this device"
    )


class ControlConfig(BaseModel):
    """Roles, limits, tunings and fallbacks of the supervisory control loop."""

    # NaN compares false with every limit and bound: never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # -- cycle and roles ---------------------------------------------------------------------
    cycle_s: float = Field(1.0, gt=0, le=60, description="Seconds between control cycles")
    heat_meter_device: str = Field("heat-meter", description="Device name of the heat meter at the site boundary")
    heat_pump_plc_device: str = Field(
        "hp-plc", description="Device name of the heat-recovery / heat-pump PLC (setpoints, dry coolers)"
    )
    panel_device: str = Field(
        "panel-pc", description="Device name of the site HMI panel (utility order, operator switch, outdoor temp)"
    )
    cdu_devices: list[str] = Field(
        default_factory=list,
        description="Device names of the CDUs the loop supervises; empty = every device of kind cdu_kind",
    )
    cdu_kind: str = Field("cdu", description="Device kind that marks a CDU when cdu_devices is empty")
    devices: dict[str, ControlDevice] = Field(
        default_factory=dict,
        description="Per device in a role: signals (role signal -> profile signal, constant or absent), "
        "heartbeat_period_s, write_budget_per_h, writes (deadband, min_interval_s per output); see "
        "docs/control.md, Roles",
    )

    # -- input quality -------------------------------------------------------------------------
    input_max_age_s: float = Field(
        5.0, gt=0, description="An input older than this is stale and is never used as a number"
    )
    meter_filter_s: float = Field(
        20.0,
        ge=0,
        description="Time constant of the low-pass on the heat meter's supply temperature and heat power "
        "before the PIs (sensor noise would move the setpoints every cycle; the DH pipe delay is ~60-90 s)",
    )
    stuck_after_s: float = Field(
        120.0,
        ge=0,
        description="A heat-meter reading or CDU supply temperature that does not change at all for "
        "this long is frozen (stale) when it used to change more often than that, or when its witness "
        "(station supply for the meter, sensor 2 for a CDU) moved by stuck_witness_k meanwhile; 0 = no check",
    )
    stuck_witness_k: float = Field(
        0.5,
        gt=0,
        description="A frozen-looking reading whose witness moved by more than this since it last changed "
        "is frozen (a coarse but live sensor can sit on one step for hours; a moving process cannot)",
    )
    dh_sensors_max_diff_k: float = Field(
        5.0,
        gt=0,
        description="Heat meter supply and station supply may differ by this much while heat flows (pipe "
        "heat loss and sensor offsets are about 1 K); more for dh_sensors_after_s is the alarm "
        "dh_sensors_disagree (a wrong scale in a profile, a sensor out of its pocket)",
    )
    dh_sensors_after_s: float = Field(
        300.0, ge=0, description="How long the two must disagree before the alarm (the pipe's transport delay)"
    )
    dh_sensors_min_power_kw: float = Field(
        1000.0,
        ge=0,
        description="The two supplies are compared only while the meter measures at least this much heat "
        "(standing water cools and rightly differs)",
    )
    stuck_witness_delay_s: float = Field(
        180.0,
        ge=0,
        description="...once the witness has been more than stuck_witness_k away for this long: the meter "
        "sees a change of the station's supply only after the DH pipe's transport delay (~60-90 s) and its "
        "own update period and lag",
    )

    # -- IT side: CDUs, facility water, dry coolers -------------------------------------------
    it_margin_k: float = Field(
        2.0, gt=0, le=15, description="Each CDU's TCS supply setpoint stays this far below its it_limit_c"
    )
    cdu_setpoint_min_c: float = Field(
        35.0, description="Lowest TCS supply setpoint the back-off goes to (the optimiser's floor)"
    )
    cdu_conservative_setpoint_c: float = Field(
        40.0,
        description="TCS supply setpoint while the facility-water temperature is unknown (station and panel stale)",
    )
    cdu_setpoint_raise_k_per_min: float = Field(
        0.5, gt=0, description="How fast CDU setpoints rise (slow: each step is checked against the valves)"
    )
    cdu_setpoint_lower_k_per_min: float = Field(
        3.0, gt=0, description="How fast CDU setpoints fall when backing off (fast: IT first)"
    )
    cdu_raise_hold_s: float = Field(
        300.0, ge=0, description="After a back-off, setpoints are not raised again for this long (no hunting)"
    )
    cdu_valve_saturated_pct: float = Field(
        95.0, gt=0, le=100, description="A CDU valve at or above this position cannot cool more: back off"
    )
    cdu_deviation_k: float = Field(
        1.0, gt=0, description="A CDU whose TCS supply is this far above its setpoint cannot hold it: back off"
    )
    cdu_near_limit_k: float = Field(
        1.0, gt=0, description="A TCS supply (either sensor) this close to it_limit_c backs every CDU off"
    )
    cdu_approach_k: float = Field(
        5.0,
        ge=0,
        description="Dry-cooler setpoint stays this far below the CDU setpoint ceiling "
        "(CDU approach plus valve headroom)",
    )
    fws_supply_limit_c: float = Field(
        38.0, description="Facility water supply limit (the PLC forces the dry coolers on above it)"
    )
    fws_margin_k: float = Field(
        2.0, ge=0, description="Normal dry-cooler setpoint is at most fws_supply_limit_c minus this"
    )
    fws_too_hot_k: float = Field(
        1.0, gt=0, description="Facility supply this far above the dry-cooler setpoint = too hot (override)"
    )
    fws_too_hot_gain_k_per_k: float = Field(
        2.0, gt=0, description="Dry-cooler setpoint lowered by this per K of facility supply above the threshold"
    )
    stale_dry_cooler_setpoint_c: float = Field(
        30.0, description="Dry-cooler setpoint while any CDU is stale (shed heat: colder water for a blind CDU)"
    )
    dry_cooler_setpoint_raise_k_per_min: float = Field(1.0, gt=0, description="How fast the dry-cooler setpoint rises")
    dry_cooler_setpoint_lower_k_per_min: float = Field(
        10.0, gt=0, description="How fast the dry-cooler setpoint falls (fast: IT first)"
    )

    # -- DH side ---------------------------------------------------------------------------------
    dh_min_supply_temp_c: float = Field(50.0, description="Lowest DH supply setpoint ever written")
    dh_max_supply_temp_c: float = Field(
        85.0,
        description="Highest DH supply the network allows: setpoints never above it, and a measured "
        "supply above it is an over-temperature (override)",
    )
    dh_over_temperature_gain_k_per_k: float = Field(
        2.0, gt=0, description="Heat-pump setpoint lowered by this per K of over-temperature"
    )
    dh_over_temperature_limit_kw_per_k: float = Field(
        1000.0, gt=0, description="Heat-power limit lowered below the delivered heat by this per K of over-temperature"
    )
    dh_return_max_c: float = Field(
        55.0, description="DH return above this: the DH side cannot take heat (heat pumps blocked by the PLC)"
    )
    dh_supply_ramp_k_per_min: float = Field(
        6.0, gt=0, description="Rate limit of the heat-pump supply setpoint, both directions"
    )
    dh_pipe_heat_loss_kw: float = Field(
        0.0,
        ge=0,
        description="Heat lost in the DH pipe between station and meter (commissioning figure); "
        "feed-forward of loss / (m_dot cp) K with m_dot = Q / (cp dT) from the meter",
    )
    dh_trim_max_k: float = Field(2.0, ge=0, description="Largest trim the DH supply PI adds to the requirement")
    dh_trim_kp_k_per_k: float = Field(0.2, gt=0, description="DH supply PI: proportional gain (K setpoint per K error)")
    dh_trim_ti_s: float = Field(
        60.0, gt=0, description="DH supply PI: integral time (~ the 60-80 s station-to-meter delay)"
    )
    dh_settle_band_k: float = Field(
        0.5, gt=0, description="The station's DH supply counts as settled while within this of the written setpoint"
    )
    dh_settle_s: float = Field(
        150.0,
        ge=0,
        description="The trims integrate only this long after the requirement last changed and the station "
        "last left its setpoint (the change still travels the 60-90 s DH pipe to the meter)",
    )
    hp_source_min_temp_c: float = Field(
        24.0, description="Facility water entering the evaporators below this: heat-power limit down (source limit)"
    )
    hp_source_outlet_min_temp_c: float = Field(
        21.0,
        description="Facility water leaving the evaporators below this: heat-power limit down (the heat "
        "pumps are at their source minimum and cannot heat the DH flow to setpoint)",
    )
    hp_source_limit_kw_per_k: float = Field(
        1000.0,
        gt=0,
        description="Heat-power limit lowered below the delivered heat by this per K below the source minimum",
    )
    heat_pump_rated_kw: float = Field(
        4000.0, gt=0, description="Nameplate heating capacity of one heat pump (for the capacity override)"
    )
    heat_pump_capacity_margin_pct: float = Field(
        2.0,
        ge=0,
        lt=5,
        description="While heat pumps run, the heat-power limit stays this % below their capacity plus the "
        "exchanger's heat, so the DH flow never outruns them (the PLC still stages up: it does at 95 %)",
    )
    station_short_k: float = Field(
        0.3,
        gt=0,
        description="Station DH supply this far below the written setpoint = heat pumps short (starting, "
        "redistributing, source): the heat-power limit is not raised meanwhile",
    )
    hp_min_on_s: float = Field(60.0, ge=0, description="Heat-pump enable: minimum time on once switched on")
    hp_min_off_s: float = Field(60.0, ge=0, description="Heat-pump enable: minimum time off once switched off")

    # -- heat order (outer loop) -----------------------------------------------------------------
    heat_power_limit_ramp_up_kw_per_s: float = Field(
        50.0, gt=0, description="Rate limit of the heat-power limit going up (heat pumps ramp ~40 kW/s each)"
    )
    heat_power_limit_ramp_down_kw_per_s: float = Field(
        25.0,
        gt=0,
        description="Rate limit of the heat-power limit going down (the PLC caps heat-pump heat at limit minus "
        "exchanger heat before its DH flow has followed: a fast cut dips the supply)",
    )
    order_trim_max_kw: float = Field(
        1000.0, ge=0, description="Largest trim the order PI adds to the ordered heat (meter vs PLC offsets)"
    )
    order_trim_kp: float = Field(0.1, gt=0, description="Order PI: proportional gain (kW limit per kW error)")
    order_trim_ti_s: float = Field(30.0, gt=0, description="Order PI: integral time")
    order_trim_band_pct: float = Field(
        10.0, gt=0, description="Order PI integrates only while delivered is within this % of the order"
    )

    # -- utility link and fallback ---------------------------------------------------------------
    utility_hold_s: float = Field(
        900.0, ge=0, description="After the utility link drops, its last order and requirement are held this long"
    )
    utility_order_max_age_s: float = Field(
        180.0, gt=0, description="An order older than this (panel utility_order_age_s) counts as a lost link"
    )
    fallback_heat_order_mw: float | None = Field(
        None, ge=0, description="Heat order after the hold runs out; null = keep the utility's last order"
    )
    weather_curve_slope: float = Field(1.6, ge=0, description="Fallback heating curve: slope s")
    weather_curve_room_c: float = Field(20.0, description="Fallback heating curve: room temperature")
    weather_curve_offset_k: float = Field(8.0, description="Fallback heating curve: parallel offset")
    weather_curve_min_c: float = Field(65.0, description="Fallback heating curve: lowest supply (hot-water minimum)")
    weather_curve_max_c: float = Field(85.0, description="Fallback heating curve: highest supply")
    outdoor_filter_s: float = Field(
        900.0,
        ge=0,
        description="Time constant of the low-pass on the outdoor temperature the weather curve uses "
        "(the building stock responds in hours; a raw sensor would jitter the setpoint)",
    )
    fallback_outdoor_temp_c: float = Field(
        0.0, description="Outdoor temperature the weather curve uses when neither panel nor PLC reports one"
    )

    # -- modes, leases, alarms -------------------------------------------------------------------
    follow_panel_operator_mode: bool = Field(
        default=True,
        description="A change of the panel's operator_mode switch (0 off, 1 manual, 2 auto) "
        "is taken as an operator command",
    )
    heartbeat_period_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between heartbeat writes to every device with a declared heartbeat; null = the "
        "profile's period, else a third of the device's watchdog timeout",
    )
    write_refresh_s: float = Field(
        600.0,
        gt=0,
        description="An unchanged setpoint is written again after this long; the heartbeat keeps the device's "
        "lease, so this only repairs a value lost without the read-back showing it",
    )
    write_budget_per_h: float = Field(
        600.0,
        gt=0,
        description="Setpoint writes per hour a device should get at most (EEPROM wear); a cycle that would "
        "exceed it is logged as a warning (writes are not held back: IT safety first). Heartbeats not counted",
    )
    readback_grace_s: float = Field(
        5.0, ge=0, description="A read-back that differs from the last write this long after it makes the write repeat"
    )
    deviation_alarm_k: float = Field(2.0, gt=0, description="DH supply deviation alarm: threshold")
    deviation_alarm_delay_s: float = Field(120.0, ge=0, description="DH supply deviation alarm: on-delay")
    deviation_alarm_hysteresis_k: float = Field(
        1.0, ge=0, description="DH supply deviation alarm: clears this far below"
    )

    # -- operator commands over MQTT (gateway/control/commands.py) ------------------------------
    commands: CommandPolicy = Field(
        default_factory=CommandPolicy,
        description="Operator commands on {prefix}/{site}/control/cmd/{user}: retained commands, rate limit "
        "per sender (see control.commands)",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.cdu_setpoint_min_c > self.cdu_conservative_setpoint_c:
            raise ValueError("cdu_setpoint_min_c must not exceed cdu_conservative_setpoint_c")
        if self.dh_min_supply_temp_c > self.dh_max_supply_temp_c:
            raise ValueError("dh_min_supply_temp_c must not exceed dh_max_supply_temp_c")
        if self.weather_curve_min_c > self.weather_curve_max_c:
            raise ValueError("weather_curve_min_c must not exceed weather_curve_max_c")
        if self.deviation_alarm_hysteresis_k > self.deviation_alarm_k:
            raise ValueError("deviation_alarm_hysteresis_k must not exceed deviation_alarm_k")
        if self.heartbeat_period_s is not None and self.heartbeat_period_s < self.cycle_s:
            raise ValueError("heartbeat_period_s must be at least cycle_s (one heartbeat per cycle at most)")
        return self
