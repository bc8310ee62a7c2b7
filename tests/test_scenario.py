# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Scenario files: validation, timeline semantics and what they do to the plant."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import pytest

from simulators.plant import HeatPumpState
from simulators.scenario import (
    SCENARIO_DIR,
    Scenario,
    ScenarioError,
    ScenarioRunner,
    builtin_scenarios,
    load_builtin,
    load_scenario,
)

SHIPPED = [
    "coarse-sensors",
    "cold-snap",
    "device-silent",
    "dh-refuses-heat",
    "gateway-crash",
    "heat-pump-trip",
    "heat-pump-trip-rising",
    "it-load-step",
    "meter-offset",
    "reference-day",
    "row-returns",
    "utility-link-40min",
    "utility-link-lost",
]


def scenario(text: str) -> Scenario:
    return Scenario.from_yaml(textwrap.dedent(text), source="test.yaml")


# -- the shipped files ---------------------------------------------------------------------


def test_every_shipped_scenario_loads() -> None:
    assert builtin_scenarios() == SHIPPED
    for name in SHIPPED:
        loaded = load_scenario(SCENARIO_DIR / f"{name}.yaml")
        assert loaded.name == name
        assert loaded.description
        assert loaded.criteria, f"{name} states no pass criteria"
        if name in ("reference-day", "coarse-sensors"):
            assert loaded.duration_s == 86400  # a whole day
        else:
            assert 3600 <= loaded.duration_s <= 4 * 3600  # fault scenarios are short
    assert load_builtin("heat-pump-trip").name == "heat-pump-trip"
    assert load_scenario("gateway-crash").name == "gateway-crash"  # a bare name is a shipped one
    with pytest.raises(ScenarioError, match="no scenario 'nope'"):
        load_builtin("nope")


def test_reference_day_is_a_realistic_day() -> None:
    day = load_builtin("reference-day")
    orders = [day.input_value("utility_heat_order_mw", hour * 3600.0) for hour in range(24)]
    assert all(order is not None and 8.0 <= order <= 20.0 for order in orders)
    revisions = [
        event for event in day.events if event.set and "utility_heat_order_mw" in event.set and event.at_s % 3600
    ]
    assert 5 <= len(revisions) <= 8  # revised ~6 times a day, between the hourly orders
    supply = [day.input_value("utility_supply_temp_c", hour * 3600.0) for hour in range(24)]
    assert all(value is not None and 65.0 <= value <= 75.0 for value in supply)
    outdoor = [day.input_value("outdoor_temp_c", hour * 3600.0) for hour in range(25)]
    assert all(value is not None and -5.0 <= value <= 8.0 for value in outdoor)  # Danish winter day
    loads = [day.input_value("it_load_mw", minute * 60.0) for minute in range(24 * 60)]
    steps = [b / a for a, b in itertools.pairwise(loads) if a and b and abs(b / a - 1.0) > 0.2]
    assert any(step == pytest.approx(1.3, abs=0.02) for step in steps)
    assert any(step == pytest.approx(0.7, abs=0.02) for step in steps)


# -- errors that name the file and the key -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("events:\n  - {at_s: 5, ramp: {it_load_mw: 3}}\n", r"events\[0\]: .*a ramp needs over_s"),
        ("events:\n  - {at_s: 5, set: {it_lod_mw: 3}}\n", r"events\[0\]: .*unknown input 'it_lod_mw'"),
        ("events:\n  - {at_s: 0, set: {}}\n  - {at_s: -1, set: {it_load_mw: 3}}\n", r"events\[1\]\.at_s"),
        ("events:\n  - {at_s: 5, event: heat_pump_explodes}\n", r"events\[0\]\.event"),
        (
            "events:\n  - {at_s: 5, event: heat_pump_trip, target: hp-9}\n",
            r"events\[0\]\.target: 'hp-9' is not",
        ),
        ("plant: {cdu: {cuont: 3}}\n", r"plant\.cdu\.cuont: Extra inputs"),
        ("plant: {cdu: {count: 0}}\n", r"plant\.cdu\.count"),
        ("events:\n  - {at_s: 99999, set: {it_load_mw: 1}}\n", r"after duration_s"),
        ("events:\n  - {at_s: 5, event: sensor_freeze, target: cdu-1}\n", r"device\.signal"),
        ("events:\n  - {at_s: 5, set: {cdu_load_factor: 1.2}}\n", r"needs target: cdu-N"),
        ("events:\n  - {at_s: 5, event: dh_return_too_hot}\n", r"needs value"),
        ("events:\n  - {at_s: 5, event: meter_offset}\n", r"events\[0\]: .*meter_offset needs value"),
        ("events:\n  - {at_s: 5, event: meter_offset, value: 40}\n", r"within \+/-10"),
        ("unknown_key: 1\n", r"unknown_key: Extra inputs"),
    ],
)
def test_bad_scenarios_name_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nduration_s: 3600\n" + body)
    with pytest.raises(ScenarioError, match=expected) as info:
        load_scenario(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(path)
    path.write_text("- just a list\n")
    with pytest.raises(ScenarioError, match="mapping at the top level"):
        load_scenario(path)


# -- timeline semantics ----------------------------------------------------------------------


def test_sets_ramps_and_later_entries_win() -> None:
    loaded = scenario(
        """
        name: t
        duration_s: 7200
        plant: {site: {it_load_mw: 10.0}}
        events:
          - {at_s: 100, set: {it_load_mw: 12.0}}
          - {at_s: 1000, ramp: {it_load_mw: 22.0}, over_s: 1000}
          - {at_s: 1500, set: {it_load_mw: 5.0}}
          - {at_s: 3000, ramp: {outdoor_temp_c: -4.0}, over_s: 600}
        """
    )
    value = loaded.input_value
    assert value("it_load_mw", 0.0) == 10.0
    assert value("it_load_mw", 100.0) == 12.0
    assert value("it_load_mw", 1000.0) == 12.0
    assert value("it_load_mw", 1250.0) == pytest.approx(14.5)
    assert value("it_load_mw", 1499.0) == pytest.approx(16.99)
    assert value("it_load_mw", 1500.0) == 5.0  # the set cut the ramp short
    assert value("it_load_mw", 5000.0) == 5.0
    assert value("outdoor_temp_c", 3300.0) == pytest.approx(-1.0)  # from the config's 2.0 °C
    assert value("dh_return_temp_c", 0.0) is None  # never scheduled


def test_apply_uses_the_value_just_before_the_interval_end() -> None:
    loaded = scenario(
        """
        name: t
        duration_s: 600
        events:
          - {at_s: 10, set: {it_load_mw: 12.0}}
          - {at_s: 20, set: {cdu_load_factor: 0.5}, target: cdu-2}
        """
    )
    runner = ScenarioRunner(loaded)
    plant = runner.plant
    loaded.apply_plant_events(plant, 0.0, 10.0)
    assert plant.snapshot()["truth.it_load_mw"] == 18.0  # a set at t1 belongs to the next interval
    loaded.apply_plant_events(plant, 10.0, 11.0)
    assert plant.snapshot()["truth.it_load_mw"] == 12.0
    loaded.apply_plant_events(plant, 11.0, 30.0)
    cdu1, cdu2 = plant.read("cdu-1")["heat_load_kw"], plant.read("cdu-2")["heat_load_kw"]
    assert cdu2 == pytest.approx(0.5 * cdu1, rel=0.02)


def test_plant_events_of_sets_the_plant_as_apply_plant_events_does() -> None:
    """Flat stretches skipped, ramps, steps, an override (DH return too hot), NaN and a fault: the same plant."""
    loaded = scenario(
        """
        name: t
        duration_s: 400
        events:
          - {at_s: 0, ramp: {outdoor_temp_c: -3.0}, over_s: 100}
          - {at_s: 50, set: {it_load_mw: 12.0}}
          - {at_s: 120, event: dh_return_too_hot, value: 55.0, duration_s: 30}
          - {at_s: 150, set: {cdu_load_factor: 0.5}, target: cdu-2}
          - {at_s: 200, set: {utility_supply_temp_c: 74.0}}
          - {at_s: 250, ramp: {utility_supply_temp_c: 74.0}, over_s: 60}
          - {at_s: 300, event: heat_pump_trip, target: hp-1, duration_s: 40}
        """
    )
    by_call, by_applier = ScenarioRunner(loaded).plant, ScenarioRunner(loaded).plant
    apply = loaded.plant_events_of(by_applier)
    for second in range(400):
        started = loaded.apply_plant_events(by_call, float(second), second + 1.0)
        assert apply(float(second), second + 1.0) == started
        if second == 130:
            assert by_applier.station.dh_return_c == 55.0
        for plant in (by_call, by_applier):
            plant.step(1.0)
        truth = {key: value for key, value in by_call.snapshot().items() if key.startswith("truth.")}
        assert truth == {key: value for key, value in by_applier.snapshot().items() if key.startswith("truth.")}
    assert by_applier.snapshot()["truth.it_load_mw"] == 12.0
    assert by_applier.station.dh_return_c == 40.0


def test_events_between_and_scopes() -> None:
    loaded = scenario(
        """
        name: t
        duration_s: 3600
        events:
          - {at_s: 100, event: device_silent, target: cdu-3, duration_s: 60}
          - {at_s: 100, event: heat_pump_trip, target: hp-1}
          - {at_s: 200, event: utility_link_lost, duration_s: 600}
          - {at_s: 300, event: gateway_crash, duration_s: 120}
        """
    )
    assert [event.kind for event in loaded.events_between(0, 100)] == []
    assert [event.kind for event in loaded.events_between(100, 101)] == ["device_silent", "heat_pump_trip"]
    harness = loaded.events_between(0, 3600, scope="harness")
    assert [(event.kind, event.target, event.duration_s) for event in harness] == [
        ("device_silent", "cdu-3", 60.0),
        ("utility_link_lost", None, 600.0),
        ("gateway_crash", None, 120.0),
    ]
    assert [event.scope for event in harness] == ["harness", "both", "harness"]
    assert [event.kind for event in loaded.events_between(0, 3600, scope="plant")] == ["heat_pump_trip"]
    assert harness[0].end_s == 160.0
    assert loaded.events[1].end_s == math.inf


def test_runner_applies_plant_events_and_hands_back_harness_events() -> None:
    loaded = scenario(
        """
        name: t
        duration_s: 1800
        plant: {heat_pumps: {trip_auto_reset_s: 120}}
        events:
          - {at_s: 60, event: heat_pump_trip, target: hp-1, duration_s: 100}
          - {at_s: 90, event: device_silent, target: hp-plc, duration_s: 30}
          - {at_s: 120, event: utility_link_lost, duration_s: 300}
          - {at_s: 200, event: dh_return_too_hot, value: 61.0, duration_s: 400}
          - {at_s: 300, event: sensor_freeze, target: cdu-2.tcs_return_temp_c, duration_s: 200}
        """
    )
    runner = ScenarioRunner(loaded)
    plant = runner.plant
    seen: list[tuple[float, str]] = []
    trace: dict[float, dict[str, float]] = {}

    def on_step(current: ScenarioRunner, events: list) -> None:
        seen.extend((current.time_s, event.kind) for event in events)
        trace[round(current.time_s)] = current.plant.snapshot()

    runner.run(1.0, on_step=on_step)
    assert runner.finished
    assert seen == [(91.0, "device_silent"), (121.0, "utility_link_lost")]
    assert trace[61]["hp-plc.hp_1_tripped"] == 1.0
    assert trace[279]["hp-plc.hp_1_tripped"] == 1.0  # cause ended at 160, auto reset 120 s later
    assert trace[281]["hp-plc.hp_1_tripped"] == 0.0
    assert trace[121]["panel-pc.utility_link_ok"] == 0.0
    assert trace[420]["panel-pc.utility_link_ok"] == 0.0
    assert trace[421]["panel-pc.utility_link_ok"] == 1.0
    assert trace[200]["truth.dh.return_temp_c"] == 40.0
    assert trace[201]["truth.dh.return_temp_c"] == 61.0
    assert trace[500]["hp-plc.hp_state"] == HeatPumpState.BLOCKED
    assert trace[601]["truth.dh.return_temp_c"] == 40.0  # back to the scheduled value
    assert trace[350]["cdu-2.tcs_return_temp_c"] == trace[301]["cdu-2.tcs_return_temp_c"]
    kinds = [(round(event.time_s), event.kind) for event in plant.event_log if event.kind != "heat_pump_start"]
    assert (60, "heat_pump_trip") in kinds
    assert (300, "sensor_freeze") in kinds
    assert (500, "sensor_unfreeze") in kinds


def test_large_steps_see_every_event_once() -> None:
    loaded = load_builtin("heat-pump-trip")
    fine = ScenarioRunner(loaded)
    coarse = ScenarioRunner(loaded)
    fine.run(1.0, until_s=4000)
    coarse.run(10.0, until_s=4000)
    trips = [[e.detail for e in r.plant.event_log if e.kind == "heat_pump_trip"] for r in (fine, coarse)]
    assert trips[0] == trips[1] == ["hp-1", "hp-2", "hp-3"]


# -- what the fault scenarios do to the plant (no gateway: the plant's own controls) --------


def test_dh_refuses_heat_keeps_the_hall_cool() -> None:
    runner = ScenarioRunner(load_builtin("dh-refuses-heat"))
    worst = 0.0
    dry_cooler_kw: dict[int, float] = {}

    def on_step(current: ScenarioRunner, _events: list) -> None:
        nonlocal worst
        worst = max(worst, *(cdu.supply_c for cdu in current.plant.cdus))
        if round(current.time_s) % 600 == 0:
            dry_cooler_kw[round(current.time_s)] = current.plant.station.dc_heat_kw

    runner.run(2.0, on_step=on_step)
    assert worst < 40.5
    liquid_kw = sum(cdu.load_kw for cdu in runner.plant.cdus)
    # Return too hot (4500-6300 s) and pump trip (7200-8100 s): everything to the dry coolers.
    assert dry_cooler_kw[6000] == pytest.approx(liquid_kw, rel=0.02)
    assert dry_cooler_kw[7800] == pytest.approx(liquid_kw, rel=0.02)
    energy = runner.plant.energy_balance()
    assert abs(energy["error"]) < 1e-5 * energy["it_liquid"]


def test_heat_pump_trip_scenario_recovers() -> None:
    runner = ScenarioRunner(load_builtin("heat-pump-trip"))
    runner.run(2.0)
    plant = runner.plant
    assert plant.read("hp-plc")["hp_trip_active"] == 0.0  # the PLC reset them itself
    assert plant.snapshot()["truth.dh.station_supply_temp_c"] == pytest.approx(70.0, abs=0.5)
    assert max(cdu.supply_c for cdu in plant.cdus) < 40.5


def test_gateway_crash_is_a_harness_event_only() -> None:
    loaded = load_builtin("gateway-crash")
    crash = loaded.events_between(0, loaded.duration_s, scope="harness")
    assert [(event.kind, event.at_s, event.duration_s) for event in crash] == [("gateway_crash", 1800.0, 600.0)]
    runner = ScenarioRunner(loaded)
    runner.run(5.0, until_s=2400)
    assert not [event for event in runner.plant.event_log if "crash" in event.kind]


# -- pass criteria -------------------------------------------------------------------------


def test_criteria_are_bounds_on_report_metrics() -> None:
    text = """
name: judged
duration_s: 60
criteria:
  dh_supply_dev_rms_k: {max: 0.3, why: "issue 11"}
  heat_within_2pct_share: {min: 0.99}
  tcs_max_c: {min: 30, max: 44}
"""
    criteria = Scenario.from_yaml(text).criteria
    assert [c.target for c in criteria.values()] == ["<= 0.3", ">= 0.99", "30 .. 44"]
    rms = criteria["dh_supply_dev_rms_k"]
    assert rms.met(0.3)
    assert not rms.met(0.31)
    assert not rms.met(None)  # a metric the run did not produce never passes
    assert not rms.met(math.nan)
    assert not rms.met(True)  # a bool is no figure
    assert criteria["tcs_max_c"].met(43.0)
    assert not criteria["tcs_max_c"].met(29.0)


def test_a_criterion_without_bounds_names_its_key() -> None:
    with pytest.raises(ScenarioError, match=r"criteria\.dh_supply_dev_rms_k.*min, max or both"):
        Scenario.from_yaml("name: x\nduration_s: 60\ncriteria:\n  dh_supply_dev_rms_k: {why: nothing}\n")
