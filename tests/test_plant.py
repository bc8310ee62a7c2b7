# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""The plant model: physics, device behaviour, numerics. Pure Python, no services."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest
import yaml

from gateway.config.profile import Access, ModbusProfile, OpcUaProfile
from simulators.plant import (
    HeatPumpState,
    Interlock,
    Plant,
    PlantConfig,
    heat_pump_cop,
    weather_curve_supply_temp_c,
)
from simulators.plant.physics import MixedVolume
from simulators.plant.sensors import SensorLayer, SensorSpec

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
CDUS = [f"cdu-{i}" for i in range(1, 13)]


def config(**sections: dict[str, object]) -> PlantConfig:
    return PlantConfig.model_validate(sections)


def run(plant: Plant, seconds: float, dt_s: float = 1.0) -> None:
    for _ in range(round(seconds / dt_s)):
        plant.step(dt_s)


def take_control(plant: Plant, setpoint_c: float) -> None:
    for cdu in CDUS:
        plant.write(cdu, "tcs_supply_setpoint_c", setpoint_c)
        plant.write(cdu, "control_mode", 1)


def truth(plant: Plant, key: str) -> float:
    return plant.snapshot()[f"truth.{key}"]


# -- devices and profiles ----------------------------------------------------------------


def test_device_names_and_kinds() -> None:
    plant = Plant(config(site={"warm_start_s": 0}))
    assert plant.device_names() == [*CDUS, "heat-meter", "hp-plc", "panel-pc"]
    assert {plant.device_kind(name) for name in CDUS} == {"cdu"}
    assert plant.device_kind("heat-meter") == "heat_meter"
    assert plant.device_kind("hp-plc") == "heat_pump_plc"
    assert plant.device_kind("panel-pc") == "panel_pc"
    with pytest.raises(KeyError, match="cdu-13"):
        plant.device_kind("cdu-13")


@pytest.mark.parametrize(
    ("device", "profile_name", "model"),
    [
        ("cdu-1", "cdu", ModbusProfile),
        ("heat-meter", "heat-meter", ModbusProfile),
        ("hp-plc", "hp-plc", OpcUaProfile),
        ("panel-pc", "panel-pc", OpcUaProfile),
    ],
)
def test_signals_are_exactly_the_profile(device: str, profile_name: str, model: type) -> None:
    """Every device reads exactly its profile's signals; read_write ones are the writable ones."""
    profile = model.model_validate(yaml.safe_load((PROFILES / f"{profile_name}.yaml").read_text()))
    plant = Plant(config(site={"warm_start_s": 0}))
    values = plant.read(device)
    assert list(values) == list(profile.signals)
    assert plant.signals(device) == list(profile.signals)
    writable = {name for name, signal in profile.signals.items() if signal.access is Access.READ_WRITE}
    assert plant.writable(device) == writable
    assert all(math.isfinite(value) for value in values.values())
    # What a device reads back for a writable signal lies within the profile's write limits.
    for name in writable:
        signal = profile.signals[name]
        assert signal.min is not None
        assert signal.max is not None
        assert signal.min <= values[name] <= signal.max, name


def test_profile_limits_match_device_clamps() -> None:
    """A write at the profile's limit sticks; beyond it the device clamps to its own range."""
    plant = Plant(config(site={"warm_start_s": 0}))
    plant.write("cdu-1", "tcs_supply_setpoint_c", 50.0)
    assert plant.read("cdu-1")["tcs_supply_setpoint_c"] == 45.0
    plant.write("cdu-1", "tcs_supply_setpoint_c", 10.0)
    assert plant.read("cdu-1")["tcs_supply_setpoint_c"] == 25.0
    plant.write("hp-plc", "hp_supply_setpoint_c", 99.0)
    assert plant.read("hp-plc")["hp_supply_setpoint_c"] == 85.0
    plant.write("hp-plc", "dry_cooler_setpoint_c", 45.0)
    assert plant.read("hp-plc")["dry_cooler_setpoint_c"] == 38.0  # the facility supply limit
    plant.write("hp-plc", "heat_power_limit_kw", -5.0)
    assert plant.read("hp-plc")["heat_power_limit_kw"] == 0.0
    plant.write("cdu-1", "watchdog_timeout_s", 1.0)
    assert plant.read("cdu-1")["watchdog_timeout_s"] == 5.0


def test_write_errors_name_device_and_signal() -> None:
    plant = Plant(config(site={"warm_start_s": 0}))
    with pytest.raises(KeyError, match="cdu-99"):
        plant.write("cdu-99", "control_mode", 1)
    with pytest.raises(KeyError, match="no_such_signal"):
        plant.write("cdu-1", "no_such_signal", 1)
    with pytest.raises(ValueError, match=r"cdu-1\.tcs_flow_lpm is read-only"):
        plant.write("cdu-1", "tcs_flow_lpm", 100)
    with pytest.raises(ValueError, match="read-only"):
        plant.write("cdu-1", "local_setpoint_c", 30)
    with pytest.raises(ValueError, match="read-only"):
        plant.write("heat-meter", "heat_energy_mwh", 0)
    with pytest.raises(ValueError, match="control_mode"):
        plant.write("cdu-1", "control_mode", 2)
    with pytest.raises(ValueError, match="operator_mode"):
        plant.write("panel-pc", "operator_mode", 3)
    with pytest.raises(ValueError, match="finite"):
        plant.write("hp-plc", "hp_supply_setpoint_c", math.nan)
    with pytest.raises(ValueError, match="heartbeat"):
        plant.write("hp-plc", "heartbeat", 70000)


def test_external_setpoint_only_acts_in_external_mode() -> None:
    plant = Plant(seed=3)
    plant.write("cdu-2", "tcs_supply_setpoint_c", 43.0)
    run(plant, 600)
    assert truth(plant, "cdu-2.tcs_supply_temp_c") == pytest.approx(40.0, abs=0.3)
    plant.write("cdu-2", "control_mode", 1)
    for beat in range(60):
        plant.write("cdu-2", "heartbeat", beat)
        run(plant, 10)
    assert truth(plant, "cdu-2.tcs_supply_temp_c") == pytest.approx(43.0, abs=0.3)
    assert truth(plant, "cdu-1.tcs_supply_temp_c") == pytest.approx(40.0, abs=0.3)


# -- CDU control ---------------------------------------------------------------------------


def test_cdu_pi_holds_setpoint_in_steady_state() -> None:
    # No sensor damping here: repeated reads at one instant show the bare noise.
    plant = Plant(PlantConfig.model_validate({"sensors": {"temp_lag_s": 0.0}}), seed=1)
    worst = 0.0
    for _ in range(1800):
        plant.step(1.0)
        worst = max(worst, *(abs(cdu.supply_c - cdu.active_setpoint_c) for cdu in plant.cdus))
    assert worst < 0.3
    readings = [plant.read("cdu-4")["tcs_supply_temp_c"] for _ in range(200)]
    # Readings carry the configured sensor noise (0.02 K) around the held setpoint.
    assert statistics.mean(readings) == pytest.approx(40.0, abs=0.01)
    assert 0.01 < statistics.stdev(readings) < 0.04


def test_cdu_recovers_from_a_30_pct_load_step() -> None:
    plant = Plant(seed=1)
    plant.set_input("it_load_mw", 18.0 * 1.3)
    peak = 0.0
    for _ in range(600):
        plant.step(1.0)
        peak = max(peak, plant.cdus[0].supply_c)
    assert peak < 42.0  # overshoot of the CDU's own loop, not a runaway
    assert abs(plant.cdus[0].supply_c - 40.0) < 0.3
    assert plant.read("cdu-1")["heat_load_kw"] == pytest.approx(18000 * 1.3 * 0.85 / 12, rel=0.02)


def test_rack_loop_flow_and_temperature_rise() -> None:
    plant = Plant(seed=1)
    values = plant.read("cdu-1")
    load_kw = values["heat_load_kw"]
    assert values["tcs_flow_lpm"] == pytest.approx(1.5 * load_kw, rel=0.02)
    rise_k = values["tcs_return_temp_c"] - values["tcs_supply_temp_c"]
    assert 9.0 < rise_k < 11.5  # ~10 K at 1.5 l/min per kW of glycol
    approach_k = values["tcs_supply_temp_c"] - values["facility_inlet_temp_c"]
    assert 2.0 <= approach_k <= 7.0
    assert values["pump_running"] == 1.0
    assert values["pump_speed_pct"] >= 15.0


def test_pump_keeps_minimum_speed_at_tiny_load() -> None:
    plant = Plant(seed=1)
    plant.set_input("it_load_mw", 0.5)
    run(plant, 300)
    assert plant.read("cdu-1")["pump_speed_pct"] == pytest.approx(15.0, abs=0.01)


def test_valve_saturates_and_supply_rises_when_facility_water_too_warm() -> None:
    plant = Plant(seed=1)
    plant.set_input("outdoor_temp_c", 38.0)  # dry coolers cannot get below ~44 °C
    plant.write("hp-plc", "hp_enable", 0)  # and the heat pumps take nothing
    run(plant, 1800)
    values = plant.read("cdu-1")
    assert values["valve_demand_pct"] == 100.0
    assert values["valve_feedback_pct"] == 100.0
    assert values["tcs_supply_temp_c"] > 42.0  # above the 40 °C setpoint: physics, not a bug
    assert values["alarm_code"] == 21.0  # deviation alarm after its on-delay
    assert values["alarm_active"] == 1.0
    assert plant.read("hp-plc")["dry_cooler_forced"] == 1.0
    # The CDU's integral did not wind up: once the water is cold again it recovers at once.
    plant.set_input("outdoor_temp_c", 5.0)
    run(plant, 900)
    assert abs(plant.cdus[0].supply_c - 40.0) < 0.3


# -- watchdogs ---------------------------------------------------------------------------


def test_cdu_watchdog_falls_back_to_local_setpoint() -> None:
    plant = Plant(seed=1)
    take_control(plant, 43.0)
    for beat in range(30):  # heartbeat every 10 s for 5 min
        for cdu in CDUS:
            plant.write(cdu, "heartbeat", beat)
        run(plant, 10)
    assert not plant.watchdog_tripped("cdu-1")
    assert plant.read("cdu-1")["control_mode"] == 1.0
    last_beat_s = plant.time_s - 10.0
    run(plant, 120)
    fallbacks = [event for event in plant.event_log if event.kind == "watchdog_fallback"]
    assert {event.device for event in fallbacks} == set(CDUS)
    assert all(last_beat_s + 60.0 <= event.time_s <= last_beat_s + 61.0 for event in fallbacks)
    values = plant.read("cdu-1")
    assert values["control_mode"] == 0.0
    assert values["tcs_supply_setpoint_c"] == values["local_setpoint_c"] == 40.0
    assert values["alarm_code"] == 40.0
    assert plant.watchdog_tripped("cdu-1")
    assert plant.snapshot()["truth.cdu-1.watchdog_tripped"] == 1.0
    run(plant, 900)
    assert abs(plant.cdus[0].supply_c - 40.0) < 0.3
    # Taking control again clears the flag; alarm_reset clears it too.
    plant.write("cdu-1", "control_mode", 1)
    assert not plant.watchdog_tripped("cdu-1")
    plant.write("cdu-2", "alarm_reset", 1)
    assert not plant.watchdog_tripped("cdu-2")


def test_cdu_watchdog_honours_written_timeout_and_a_changing_heartbeat() -> None:
    plant = Plant(seed=1)
    take_control(plant, 42.0)
    plant.write("cdu-1", "watchdog_timeout_s", 20)
    for beat in range(100):  # 500 s with a heartbeat every 5 s: never trips
        plant.write("cdu-1", "heartbeat", beat % 2)
        run(plant, 5)
    assert not plant.watchdog_tripped("cdu-1")
    plant.write("cdu-1", "heartbeat", 7)
    plant.write("cdu-1", "heartbeat", 7)  # the same value again is no heartbeat
    run(plant, 19)
    assert not plant.watchdog_tripped("cdu-1")
    run(plant, 2)
    assert plant.watchdog_tripped("cdu-1")


def test_plc_watchdog_returns_every_lease_to_local_values() -> None:
    plant = Plant(seed=1)
    assert plant.read("hp-plc")["watchdog_tripped"] == 0.0
    run(plant, 300)  # never armed: no fallback without a first heartbeat
    assert not plant.watchdog_tripped("hp-plc")
    writes = {
        "hp_supply_setpoint_c": 75.0,
        "heat_power_limit_kw": 15000.0,
        "dry_cooler_setpoint_c": 36.0,
        "hp_enable": 0.0,
        "dry_cooler_enable": 0.0,
    }
    for signal, value in writes.items():
        plant.write("hp-plc", signal, value)
    plant.write("hp-plc", "heartbeat", 1)
    run(plant, 30)
    plant.write("hp-plc", "heartbeat", 2)
    assert plant.read("hp-plc")["heartbeat_echo"] == 2.0
    run(plant, 59)
    assert not plant.watchdog_tripped("hp-plc")
    run(plant, 2)
    values = plant.read("hp-plc")
    assert values["watchdog_tripped"] == 1.0
    assert values["hp_supply_setpoint_c"] == values["local_hp_supply_setpoint_c"]
    assert values["heat_power_limit_kw"] == values["local_heat_power_limit_kw"]
    assert values["dry_cooler_setpoint_c"] == values["local_dry_cooler_setpoint_c"]
    assert values["hp_enable"] == 1.0
    assert values["dry_cooler_enable"] == 1.0
    assert int(values["interlock_status"]) & Interlock.WATCHDOG_FALLBACK
    assert [event.kind for event in plant.event_log if event.device == "hp-plc"].count("watchdog_fallback") == 1


# -- heat pumps ------------------------------------------------------------------------------


def test_cop_is_sane() -> None:
    cop = heat_pump_cop(50.0, 75.0)
    assert 3.0 < cop < 6.0
    assert heat_pump_cop(55.0, 75.0) > cop > heat_pump_cop(30.0, 75.0)  # warmer source, better
    assert heat_pump_cop(50.0, 65.0) > cop  # smaller lift, better
    plant = Plant(seed=1)
    values = plant.read("hp-plc")
    assert values["hp_state"] == HeatPumpState.RUNNING
    assert 3.0 < values["hp_cop"] < 6.0
    assert values["hp_electric_kw"] == pytest.approx(values["hp_heat_kw"] / values["hp_cop"], rel=0.02)


def _intervals(plant: Plant, pump: str) -> tuple[list[float], list[float]]:
    """Run and off durations of one heat pump from the event log (complete intervals only)."""
    runs: list[float] = []
    offs: list[float] = []
    started = stopped = None
    for event in plant.event_log:
        name = event.detail.split(":")[0]
        if name != pump:
            continue
        if event.kind == "heat_pump_start":
            if stopped is not None:
                offs.append(event.time_s - stopped)
            started = event.time_s
        elif event.kind == "heat_pump_stop" and started is not None:
            runs.append(event.time_s - started)
            stopped = event.time_s
    return runs, offs


def test_heat_pump_minimum_run_and_off_times() -> None:
    plant = Plant(config(heat_pumps={"count": 1, "min_run_time_s": 120, "min_off_time_s": 90}), seed=1)
    # Hammer the enable: on/off every 15-40 s for 20 minutes.
    pattern = [15, 40, 20, 25, 35, 15]
    enable = 0
    elapsed = 0
    while elapsed < 1200:
        enable = 1 - enable
        plant.write("hp-plc", "hp_enable", enable)
        dwell = pattern[elapsed // 15 % len(pattern)]
        run(plant, dwell)
        elapsed += dwell
    runs, offs = _intervals(plant, "hp-1")
    assert runs
    assert offs
    assert min(runs) >= 120.0
    assert min(offs) >= 90.0


def test_heat_pump_trip_latches_and_resets() -> None:
    plant = Plant(config(heat_pumps={"trip_auto_reset_s": None}), seed=1)
    running = [i for i in range(1, 5) if plant.read("hp-plc")[f"hp_{i}_state"] == HeatPumpState.RUNNING]
    pump = running[0]
    plant.set_fault("heat_pump_trip", True, target=f"hp-{pump}")
    plant.step(1.0)
    values = plant.read("hp-plc")
    assert values[f"hp_{pump}_tripped"] == 1.0
    assert values[f"hp_{pump}_state"] == HeatPumpState.BLOCKED  # stops at once: no minimum run
    assert values["hp_trip_active"] == 1.0
    plant.write("hp-plc", "alarm_reset", 1)  # the cause is still there: stays tripped
    assert plant.read("hp-plc")[f"hp_{pump}_tripped"] == 1.0
    plant.set_fault("heat_pump_trip", False, target=f"hp-{pump}")
    run(plant, 600)
    assert plant.read("hp-plc")[f"hp_{pump}_tripped"] == 1.0  # no auto reset configured
    plant.write("hp-plc", "alarm_reset", 1)
    assert plant.read("hp-plc")[f"hp_{pump}_tripped"] == 0.0
    # The others took over: the supply stayed at its setpoint after the trip transient.
    assert truth(plant, "dh.station_supply_temp_c") == pytest.approx(70.0, abs=0.5)


def test_heat_pump_trip_auto_resets_after_its_cause_clears() -> None:
    plant = Plant(seed=1)
    plant.set_fault("heat_pump_trip", True, target="hp-2")
    run(plant, 100)
    plant.set_fault("heat_pump_trip", False, target="hp-2")
    run(plant, 299)
    assert plant.read("hp-plc")["hp_2_tripped"] == 1.0
    run(plant, 2)
    assert plant.read("hp-plc")["hp_2_tripped"] == 0.0


def test_heat_follows_the_power_limit_and_setpoint() -> None:
    plant = Plant(seed=1)
    plant.write("hp-plc", "heat_power_limit_kw", 14000)
    plant.write("hp-plc", "hp_supply_setpoint_c", 74)
    run(plant, 1800)
    values = plant.read("hp-plc")
    assert values["dh_heat_kw"] == pytest.approx(14000, rel=0.02)
    assert values["dh_supply_temp_c"] == pytest.approx(74.0, abs=0.3)
    meter = plant.read("heat-meter")
    assert meter["heat_power_kw"] == pytest.approx(14000, rel=0.03)
    # The PLC holds its own (0.3 K high) sensor at 74 °C: the water, and the meter, are colder.
    bias_k = plant.config.heat_pumps.supply_sensor_bias_k
    assert meter["flow_temp_c"] == pytest.approx(74.0 - bias_k, abs=0.2)
    assert meter["return_temp_c"] == pytest.approx(40.0, abs=0.1)
    assert meter["flow_m3h"] == pytest.approx(values["dh_flow_m3h"], rel=0.02)
    assert 1.0 < values["hx_heat_kw"] < values["dh_heat_kw"]  # the exchanger preheats
    assert values["dh_hx_outlet_temp_c"] < values["fws_return_temp_c"]


# -- the DH side refusing heat ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["limit_zero", "return_too_hot", "dh_pump_trip", "hp_disabled"])
def test_heat_goes_to_the_dry_coolers_when_dh_refuses_it(fault: str) -> None:
    plant = Plant(seed=1)
    if fault == "limit_zero":
        plant.write("hp-plc", "heat_power_limit_kw", 0)
    elif fault == "return_too_hot":
        plant.set_input("dh_return_temp_c", 60.0)
    elif fault == "dh_pump_trip":
        plant.set_fault("dh_pump_trip", True)
    else:
        plant.write("hp-plc", "hp_enable", 0)
    worst = 0.0
    for _ in range(1800):
        plant.step(1.0)
        worst = max(worst, *(cdu.supply_c for cdu in plant.cdus))
    assert worst < 40.5  # the hall never noticed
    snapshot = plant.snapshot()
    liquid_kw = sum(cdu.load_kw for cdu in plant.cdus)
    assert snapshot["truth.dh.heat_kw"] == pytest.approx(0.0, abs=50.0)
    assert snapshot["truth.dry_cooler.heat_kw"] == pytest.approx(liquid_kw, rel=0.02)
    assert plant.read("heat-meter")["heat_power_kw"] == pytest.approx(0.0, abs=50.0)
    state = plant.read("hp-plc")["hp_state"]
    if fault in ("return_too_hot", "dh_pump_trip"):
        assert state == HeatPumpState.BLOCKED
        assert plant.read("hp-plc")["interlock_active"] == 1.0
    elif fault == "limit_zero":
        assert state == HeatPumpState.STANDBY
    else:
        assert state == HeatPumpState.OFF


def test_dry_coolers_are_forced_on_above_the_facility_limit() -> None:
    plant = Plant(seed=1)
    plant.write("hp-plc", "dry_cooler_enable", 0)
    plant.write("hp-plc", "hp_enable", 0)
    peak = 0.0
    for _ in range(1800):
        plant.step(1.0)
        peak = max(peak, truth(plant, "fws.supply_temp_c"))
    values = plant.read("hp-plc")
    assert values["dry_cooler_forced"] == 1.0
    assert int(values["interlock_status"]) & Interlock.FWS_OVER_LIMIT
    assert peak < 40.0  # a short excursion over the 38 °C limit, then held at the local setpoint
    assert values["fws_supply_temp_c"] == pytest.approx(34.0, abs=0.2)
    assert any(event.kind == "dry_coolers_forced" for event in plant.event_log)


# -- energy and numerics ---------------------------------------------------------------------


def test_energy_balance_closes() -> None:
    plant = Plant(seed=1)
    take_control(plant, 43.0)
    for minute in range(120):
        if minute == 20:
            plant.set_input("it_load_mw", 21.0)
        if minute == 40:
            plant.write("hp-plc", "heat_power_limit_kw", 16000)
        if minute == 70:
            plant.set_input("it_load_mw", 13.0)
            plant.set_input("outdoor_temp_c", -5.0)
        if minute == 90:
            plant.write("hp-plc", "heat_power_limit_kw", 0)
        for cdu in CDUS:
            plant.write(cdu, "heartbeat", minute)
        run(plant, 60)
    energy = plant.energy_balance()
    into = energy["it_liquid"] + energy["hp_electric"]
    out = energy["dh_station"] + energy["dry_cooler"] + energy["storage_change"]
    print(f"\nenergy balance over 2 h: {energy}")
    assert energy["it_liquid"] == pytest.approx((18.0 * 20 + 21.0 * 50 + 13.0 * 50) / 60 * 0.85, rel=1e-9)
    assert abs(into - out) < 0.01 * energy["it_liquid"]  # a few % would do; it closes to ~1e-6
    assert abs(energy["error"]) < 1e-5 * energy["it_liquid"]
    assert energy["hp_heat"] + energy["hx"] == pytest.approx(
        energy["dh_station"] + energy["condenser_storage_change"], rel=1e-6
    )
    # The meter sees the same heat, minus what the pipe to it still holds.
    assert energy["heat_meter"] == pytest.approx(energy["dh_station"], rel=0.02)
    assert plant.read("heat-meter")["heat_energy_mwh"] == pytest.approx(1000.0 + energy["heat_meter"], abs=1e-9)


@pytest.mark.parametrize("dt_s", [10.0, 3.7])
def test_large_steps_are_stable_and_agree_with_small_ones(dt_s: float) -> None:
    reference = Plant(seed=1)
    coarse = Plant(seed=1)
    for plant in (reference, coarse):
        plant.set_input("it_load_mw", 22.0)
        plant.write("hp-plc", "heat_power_limit_kw", 16000)
    run(reference, 3600, 1.0)
    valves: list[float] = []
    for _ in range(round(3600 / dt_s)):
        coarse.step(dt_s)
        snapshot = coarse.snapshot()
        assert all(math.isfinite(value) for value in snapshot.values())
        valves.append(snapshot["truth.cdu-1.valve_pct"])
    tail = valves[-round(1200 / dt_s) :]
    assert max(tail) - min(tail) < 0.5  # settled, no limit cycle
    assert abs(coarse.cdus[0].supply_c - 40.0) < 0.3
    assert coarse.time_s == pytest.approx(reference.time_s, abs=dt_s)
    for key in ("truth.fws.return_temp_c", "truth.dh.station_supply_temp_c", "truth.cdu-1.valve_pct"):
        assert coarse.snapshot()[key] == pytest.approx(reference.snapshot()[key], abs=0.3), key
    assert coarse.energy_balance()["dh_station"] == pytest.approx(reference.energy_balance()["dh_station"], rel=0.01)


def test_coarse_internal_substeps_stay_stable() -> None:
    """Even with 5 s internal sub-steps (the allowed maximum) nothing oscillates or diverges."""
    plant = Plant(config(site={"max_substep_s": 5.0}), seed=1)
    plant.set_input("it_load_mw", 23.0)
    temps: list[float] = []
    for _ in range(720):
        plant.step(10.0)
        temps.append(plant.cdus[0].supply_c)
    assert all(math.isfinite(t) for t in temps)
    assert max(temps[-120:]) - min(temps[-120:]) < 0.3


def test_tiny_steps_work() -> None:
    plant = Plant(seed=1)
    before = truth(plant, "cdu-1.tcs_supply_temp_c")
    for _ in range(1000):
        plant.step(0.01)
    assert plant.time_s == pytest.approx(10.0)
    assert truth(plant, "cdu-1.tcs_supply_temp_c") == pytest.approx(before, abs=0.05)


@pytest.mark.parametrize("dt_s", [0.0, -1.0, math.nan, math.inf])
def test_step_rejects_nonsense(dt_s: float) -> None:
    plant = Plant(config(site={"warm_start_s": 0}))
    with pytest.raises(ValueError, match="dt_s"):
        plant.step(dt_s)


def _scripted(seed: int) -> dict[str, float]:
    plant = Plant(seed=seed)
    take_control(plant, 42.5)
    for minute in range(20):
        plant.write("cdu-1", "heartbeat", minute)
        plant.set_input("it_load_mw", 18.0 + minute % 3)
        run(plant, 60, 2.0)
        plant.read("cdu-3")
    return plant.snapshot()


def test_deterministic_for_a_seed() -> None:
    first = _scripted(7)
    assert _scripted(7) == first
    other = _scripted(8)
    truths = {key: value for key, value in first.items() if key.startswith("truth.")}
    assert {key: other[key] for key in truths} == truths  # noise never touches the physics
    assert other["cdu-1.tcs_supply_temp_c"] != first["cdu-1.tcs_supply_temp_c"]


def test_a_day_at_one_second_steps_runs() -> None:
    plant = Plant(seed=1)
    start = time.perf_counter()
    for _ in range(86400):
        plant.step(1.0)
    elapsed = time.perf_counter() - start
    energy = plant.energy_balance()
    print(f"\none simulated day, 12 CDUs, dt = 1 s: {elapsed:.1f} s wall clock; {energy}")
    assert plant.time_s == pytest.approx(86400.0)
    assert abs(energy["error"]) < 1e-6 * energy["it_liquid"]


# -- scenario inputs, sensors, panel ---------------------------------------------------------


def test_sensor_freeze_sticks_a_reading_and_trips_the_sensor_alarm() -> None:
    plant = Plant(seed=1)
    plant.freeze_sensor("cdu-1", "tcs_supply_temp_c")
    frozen = plant.read("cdu-1")["tcs_supply_temp_c"]
    plant.write("cdu-1", "watchdog_timeout_s", 600)
    plant.write("cdu-1", "control_mode", 1)
    plant.write("cdu-1", "tcs_supply_setpoint_c", 43.0)
    run(plant, 400)
    values = plant.read("cdu-1")
    assert values["tcs_supply_temp_c"] == frozen
    assert values["tcs_supply_temp_2_c"] > frozen + 2.0
    assert values["alarm_code"] == 30.0  # the two supply sensors disagree
    assert values["alarm_active"] == 1.0
    plant.unfreeze_sensor("cdu-1", "tcs_supply_temp_c")
    assert plant.read("cdu-1")["tcs_supply_temp_c"] != frozen
    plant.freeze_sensor("heat-meter", "flow_temp_c")
    stuck = plant.read("heat-meter")["flow_temp_c"]
    plant.write("hp-plc", "hp_supply_setpoint_c", 76)
    run(plant, 300)
    assert plant.read("heat-meter")["flow_temp_c"] == stuck
    assert truth(plant, "dh.meter_flow_temp_c") > stuck + 4.0


def test_utility_link_lost_freezes_the_order_on_the_panel() -> None:
    plant = Plant(seed=1)
    plant.set_input("utility_heat_order_mw", 14.0)
    plant.set_input("utility_supply_temp_c", 72.0)
    run(plant, 120)
    panel = plant.read("panel-pc")
    assert panel["utility_heat_order_mw"] == 14.0
    assert panel["utility_supply_temp_c"] == 72.0
    assert panel["utility_link_ok"] == 1.0
    assert panel["utility_order_age_s"] <= 60.0  # the dispatcher re-sends every minute
    plant.set_fault("utility_link_lost", True)
    plant.set_input("utility_heat_order_mw", 9.0)
    run(plant, 1200)
    panel = plant.read("panel-pc")
    assert panel["utility_link_ok"] == 0.0
    assert panel["utility_heat_order_mw"] == 14.0  # the last order received
    assert panel["utility_order_age_s"] > 1200.0
    assert panel["alarm_count"] >= 1.0
    assert truth(plant, "utility.heat_order_mw") == 9.0
    plant.set_fault("utility_link_lost", False)
    plant.step(1.0)
    panel = plant.read("panel-pc")
    assert panel["utility_heat_order_mw"] == 9.0
    assert panel["utility_order_age_s"] < 2.0


def test_panel_aggregates_and_operator_switches() -> None:
    plant = Plant(seed=1)
    panel = plant.read("panel-pc")
    assert panel["it_load_mw"] == pytest.approx(18.0, rel=0.01)
    assert panel["liquid_heat_mw"] == pytest.approx(18.0 * 0.85, rel=0.01)
    assert panel["heat_to_dh_mw"] == pytest.approx(10.0, rel=0.03)  # the PLC's local limit
    assert panel["max_tcs_supply_temp_c"] == pytest.approx(40.0, abs=0.2)
    assert panel["operator_mode"] == 2.0
    plant.write("panel-pc", "operator_mode", 1)
    plant.write("panel-pc", "manual_heat_power_mw", 12.5)
    assert plant.read("panel-pc")["operator_mode"] == 1.0
    assert plant.read("panel-pc")["manual_heat_power_mw"] == 12.5


def test_utility_requirement_follows_the_weather_curve_unless_set() -> None:
    plant = Plant(seed=1)
    plant.set_input("outdoor_temp_c", -12.0)
    assert plant.utility_supply_temp_c == pytest.approx(weather_curve_supply_temp_c(-12.0))
    assert plant.utility_supply_temp_c > 75.0
    plant.set_input("outdoor_temp_c", 10.0)
    assert plant.utility_supply_temp_c == 65.0  # the hot-water minimum
    plant.set_input("utility_supply_temp_c", 71.0)
    assert plant.utility_supply_temp_c == 71.0


def test_weather_curve_shape() -> None:
    temps = [weather_curve_supply_temp_c(t) for t in range(-20, 25)]
    assert temps == sorted(temps, reverse=True)
    assert min(temps) == 65.0
    assert max(temps) == 85.0
    assert weather_curve_supply_temp_c(-5.0, slope=1.0, offset_k=0.0, min_c=0.0) == pytest.approx(
        1.8318 * 25**0.8282 + 20.0
    )


def test_leak_latches_and_drains_the_reservoir() -> None:
    plant = Plant(seed=1)
    plant.set_fault("cdu_leak", True, target="cdu-7")
    run(plant, 600)
    values = plant.read("cdu-7")
    assert values["leak_detected"] == 1.0
    assert values["alarm_code"] == 10.0
    assert values["reservoir_level_pct"] == pytest.approx(78.0 - 1.0, abs=0.01)
    plant.set_fault("cdu_leak", False, target="cdu-7")
    assert plant.read("cdu-7")["alarm_code"] == 10.0  # latched
    plant.write("cdu-7", "alarm_reset", 1)
    assert plant.read("cdu-7")["alarm_code"] == 0.0


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="extra"):
        PlantConfig.model_validate({"cdu": {"cuont": 3}})
    with pytest.raises(ValueError, match="load_shares"):
        PlantConfig.model_validate({"cdu": {"count": 2, "load_shares": [1.0]}})
    with pytest.raises(ValueError, match="local_setpoint_c"):
        PlantConfig.model_validate({"dry_coolers": {"local_setpoint_c": 45.0}})


def test_other_sizes_work() -> None:
    plant = Plant(config(cdu={"count": 3, "load_shares": [1, 2, 1]}, heat_pumps={"count": 2}, site={"it_load_mw": 4.0}))
    assert plant.device_names() == ["cdu-1", "cdu-2", "cdu-3", "heat-meter", "hp-plc", "panel-pc"]
    assert "hp_2_state" in plant.read("hp-plc")
    assert "hp_3_state" not in plant.read("hp-plc")
    loads = [plant.read(f"cdu-{i}")["heat_load_kw"] for i in (1, 2, 3)]
    assert loads[1] == pytest.approx(2 * loads[0], rel=0.02)
    run(plant, 600)
    assert all(abs(cdu.supply_c - 40.0) < 0.3 for cdu in plant.cdus)


def test_mixed_volume_survives_a_vanishing_flow():
    """A DH pump stopped for hours decays the flow into denormal floats: no ZeroDivisionError."""
    volume = MixedVolume(mass_kg=1000.0, temp_c=60.0)
    assert volume.flow(5e-324, 20.0, 1.0) == 60.0
    assert volume.flow(1e-300, 20.0, 1.0) == 60.0
    assert volume.temp_c == 60.0
    outlet = volume.flow(10.0, 20.0, 1.0)
    assert 20.0 < volume.temp_c < 60.0
    assert volume.temp_c < outlet < 60.0


# -- what the sensors add ----------------------------------------------------------------------


def test_sensor_layer_adds_bias_drift_lag_resolution_and_holds_for_the_update_period() -> None:
    layer = SensorLayer(
        {
            "dev.biased_temp_c": SensorSpec(bias=1.0, drift_per_day=0.5),
            "dev.coarse_temp_c": SensorSpec(resolution=0.1),
            "dev.slow_temp_c": SensorSpec(lag_s=10.0),
            "dev.perfect_temp_c": SensorSpec(),
        },
        {"meter": 10.0},
    )
    values = layer.apply("dev", {"biased_temp_c": 70.0, "coarse_temp_c": 70.04, "slow_temp_c": 40.0}, 43200.0)
    assert values["biased_temp_c"] == pytest.approx(71.25)  # 1.0 + 0.5 K/day x half a day
    assert values["coarse_temp_c"] == pytest.approx(70.0)
    assert values["slow_temp_c"] == pytest.approx(40.0)  # the first read starts the lag
    later = layer.apply("dev", {"biased_temp_c": 70.0, "coarse_temp_c": 70.06, "slow_temp_c": 50.0}, 43210.0)
    assert later["coarse_temp_c"] == pytest.approx(70.1)
    assert later["slow_temp_c"] == pytest.approx(40.0 + 10.0 * (1.0 - math.exp(-1.0)))  # one time constant
    first = layer.apply("meter", {"flow_temp_c": 70.0}, 0.0)
    assert layer.apply("meter", {"flow_temp_c": 71.0}, 9.9) == first  # repeats until its next update
    assert layer.apply("meter", {"flow_temp_c": 71.0}, 10.0) == {"flow_temp_c": 71.0}


def test_the_plc_holds_its_own_sensor_at_setpoint_so_a_biased_sensor_leaves_the_water_off() -> None:
    config = PlantConfig.model_validate({"heat_pumps": {"supply_sensor_bias_k": 1.0}})
    plant = Plant(config, seed=2)
    plant.write("hp-plc", "hp_supply_setpoint_c", 72.0)
    plant.step(1800.0)
    setpoint = plant.station.hp_supply_setpoint_c
    assert truth(plant, "dh.station_supply_temp_c") == pytest.approx(setpoint - 1.0, abs=0.15)
    reads = [plant.read("hp-plc")["dh_supply_temp_c"] for _ in range(20)]
    assert statistics.mean(reads) == pytest.approx(setpoint, abs=0.15)  # the PLC sees its setpoint
    assert truth(plant, "dh.meter_flow_temp_c") == pytest.approx(setpoint - 1.0, abs=0.2)  # the meter does not


def test_a_meter_offset_switched_on_mid_run_leaves_the_water_colder_where_only_the_meter_sees_it() -> None:
    plant = Plant(seed=2)
    plant.write("hp-plc", "hp_supply_setpoint_c", 72.0)
    plant.step(1800.0)
    before_c = truth(plant, "dh.meter_flow_temp_c")
    plant.set_meter_offset(1.0)
    plant.step(1800.0)
    assert truth(plant, "dh.meter_flow_temp_c") == pytest.approx(before_c - 1.0, abs=0.15)
    reads = [plant.read("hp-plc")["dh_supply_temp_c"] for _ in range(20)]
    assert statistics.mean(reads) == pytest.approx(72.0, abs=0.15)  # the PLC still sees its setpoint
    assert plant.event_log[-1].kind == "meter_offset"
    plant.set_meter_offset(0.0)
    plant.step(1800.0)
    assert truth(plant, "dh.meter_flow_temp_c") == pytest.approx(before_c, abs=0.15)
    with pytest.raises(ValueError, match="meter_offset"):
        plant.set_meter_offset(math.nan)


def test_a_sensor_entry_for_an_unknown_signal_names_it() -> None:
    config = PlantConfig.model_validate({"sensors": {"bias": {"heat-meter.no_such_temp_c": 1.0}}})
    with pytest.raises(KeyError, match=r"sensors.bias: 'heat-meter.no_such_temp_c'"):
        Plant(config)


def test_a_settled_cdu_steps_as_one_that_recomputes_everything() -> None:
    """The CDU reuses its last PI and exchange results for the same inputs: the plant is the same to the bit."""
    reused, recomputed = Plant(seed=2), Plant(seed=2)
    settled = 0
    for second in range(900):
        if second == 300:
            for plant in (reused, recomputed):
                plant.write("cdu-3", "control_mode", 1)
                plant.write("cdu-3", "tcs_supply_setpoint_c", 38.0)
        if second == 600:
            for plant in (reused, recomputed):
                plant.set_input("it_load_mw", 19.0)
        for cdu in recomputed.cdus:
            cdu._pi_last = cdu._exchange_last = None
        settled += sum(
            cdu._pi_last is not None and cdu._pi_last[0][0] == cdu.supply_c
            for cdu in reused.cdus
        )
        for plant in (reused, recomputed):
            plant.step(1.0)
        assert reused.snapshot() == recomputed.snapshot(), second
    assert settled > 0  # there was something to reuse
