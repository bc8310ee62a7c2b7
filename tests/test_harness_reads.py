# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""The model-level harness reads only what the supervisor binds, and that changes nothing it sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.control import ControlConfig
from gateway.process_image import ProcessImage
from gateway.sample import Reading
from simulators.harness import CycleView, plant_role_map, read_plan, run_scenario
from simulators.plant import Plant

# 20 min with what a read plan could get wrong: a frozen meter reading, a silent CDU, a
# requirement step and a load step (each second judged, nothing excluded but the faults).
WINDOW = """\
name: read-plan-window
duration_s: 1200
seed: 5
plant:
  site: {it_load_mw: 16.0, warm_start_s: 600}
  sensors: {temp_resolution_k: 0.01, bias: {cdu-2.tcs_supply_temp_c: 0.2}}
events:
  - {at_s: 300, event: device_silent, target: cdu-3, duration_s: 120}
  - {at_s: 400, event: sensor_freeze, target: heat-meter.flow_temp_c, duration_s: 200}
  - {at_s: 500, set: {utility_supply_temp_c: 74.0}}
  - {at_s: 700, set: {it_load_mw: 20.0}}
"""


def test_read_plan_binds_what_the_roles_read_and_write() -> None:
    plant = Plant()
    plan = read_plan(plant_role_map(plant, ControlConfig()), plant)
    assert set(plan) == set(plant.device_names())
    assert {"tcs_supply_temp_c", "tcs_supply_temp_2_c", "valve_feedback_pct", "tcs_supply_setpoint_c"} <= plan["cdu-1"]
    assert "heartbeat" in plan["cdu-1"]
    assert "facility_flow_lpm" not in plan["cdu-1"]  # nobody reads it
    assert {"flow_temp_c", "return_temp_c", "heat_power_kw"} <= plan["heat-meter"]
    assert sum(len(signals) for signals in plan.values()) < 0.4 * sum(len(plant.signals(d)) for d in plan)


def test_a_planned_read_is_the_same_keys_of_a_full_read() -> None:
    """Same seed, same calls: the planned plant's values equal the full plant's, key for key."""
    full, planned = Plant(seed=9), Plant(seed=9)
    plan = read_plan(plant_role_map(planned, ControlConfig()), planned)
    plan["cdu-4"] = frozenset({"alarm_code", "alarm_active"})  # the alarm judges both supply sensors
    for plant in (full, planned):
        plant.write("cdu-4", "tcs_supply_setpoint_c", 30.0)  # far off: a deviation alarm after 2 min
        plant.write("cdu-4", "control_mode", 1)
    for _ in range(150):
        for plant in (full, planned):
            plant.step(1.0)
        for device, signals in plan.items():
            whole = full.read(device)
            part = planned.read(device, signals)
            assert part == {name: whole[name] for name in signals}, device
    assert planned.read("cdu-4", plan["cdu-4"])["alarm_code"] > 0.0
    with pytest.raises(KeyError, match="no_such_signal"):
        planned.read("cdu-1", frozenset({"no_such_signal"}))


def test_planned_and_full_reads_give_the_same_run(tmp_path: Path) -> None:
    path = tmp_path / "window.yaml"
    path.write_text(WINDOW, encoding="utf-8")
    planned = run_scenario(path, plot=False).as_dict()
    full = run_scenario(path, plot=False, full_reads=True).as_dict()
    for summary in (planned, full):
        summary.pop("timings")
    assert planned["counts"]["setpoint_writes"] > 0
    assert planned == full


def test_the_cycle_view_answers_what_a_snapshot_of_the_same_reads_does() -> None:
    """Every device read at the cycle's instant (one silent): fresh() and good() as the process image's."""
    plant = Plant(seed=3)
    plant.step(5.0)
    now_ns = 7_000_000_000
    values = {device: plant.read(device) for device in plant.device_names()}
    values["cdu-2"] = {}  # did not answer
    image = ProcessImage()
    for device, read in values.items():
        if read:
            image.update(Reading(device, now_ns, read))
        else:
            image.mark_unavailable(device, now_ns, "no answer")
    snapshot, view = image.snapshot(now_ns), CycleView(values)
    for device in [*plant.device_names(), "no-such-device"]:
        for max_age_s in (0.0, 2.0, -1.0):
            assert view.fresh(device, max_age_s) == snapshot.fresh(device, max_age_s), (device, max_age_s)
            for signal in [*plant.signals(device)[:5], "no_such_signal"] if device in values else ["x"]:
                assert view.good(device, signal, max_age_s) == snapshot.good(device, signal, max_age_s)
    assert view.fresh("cdu-1", 2.0) is values["cdu-1"]
    assert view.good("cdu-2", "heartbeat", 2.0) is None


def test_a_resolved_reader_reads_what_read_does() -> None:
    """``Plant.reader`` (resolved once; its own path for the usual plans) reads what ``Plant.read`` does, frozen too."""
    by_read, by_reader = Plant(seed=4), Plant(seed=4)
    plan = read_plan(plant_role_map(by_read, ControlConfig()), by_read)
    readers = {device: by_reader.reader(device, signals) for device, signals in plan.items()}
    for second in range(120):
        if second == 30:
            for plant in (by_read, by_reader):
                plant.freeze_sensor("cdu-1", "tcs_supply_temp_c")
                plant.freeze_sensor("hp-plc", "dh_supply_temp_c")
        if second == 90:
            for plant in (by_read, by_reader):
                plant.unfreeze_sensor("cdu-1", "tcs_supply_temp_c")
        for plant in (by_read, by_reader):
            plant.step(1.0)
        for device, signals in plan.items():
            assert readers[device]() == by_read.read(device, signals), (second, device)
