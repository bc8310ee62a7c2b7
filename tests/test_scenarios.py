"""Every shipped scenario in closed loop (plant + supervisor), judged by its JSON summary.

The six scenarios run once per session in two worker processes (the reference day beside all
the short ones: ~35 s wall on two cores); every test below reads the summary JSON they wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from simulators.harness import run_scenario, run_scenario_cli, run_scenarios
from simulators.scenario import builtin_scenarios

SHIPPED = builtin_scenarios()


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("reports")
    run_scenarios(SHIPPED, report_dir=folder, workers=2)
    return {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for name in SHIPPED}


def test_every_shipped_scenario_ran(summaries):
    assert set(summaries) == {
        "device-silent",
        "dh-refuses-heat",
        "gateway-crash",
        "heat-pump-trip",
        "reference-day",
        "utility-link-lost",
    }
    for name, summary in summaries.items():
        assert summary["passed"], (name, {k: v for k, v in summary["checks"].items() if not v["ok"]})


@pytest.mark.parametrize("name", SHIPPED)
def test_no_rack_loop_ever_above_its_it_limit(summaries, name):
    metrics = summaries[name]["metrics"]
    assert metrics["tcs_over_limit_s"] == 0
    assert metrics["tcs_max_c"] < 45.0


@pytest.mark.parametrize("name", SHIPPED)
def test_no_write_outside_the_profile_limits(summaries, name):
    counts = summaries[name]["counts"]
    assert counts["writes_out_of_limits"] == 0
    assert counts["writes_rejected"] == 0
    assert counts["writes_total"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_facility_water_stays_below_its_limit(summaries, name):
    assert summaries[name]["metrics"]["fws_supply_max_c"] < 38.0


def test_reference_day_meets_the_targets(summaries):
    metrics = summaries["reference-day"]["metrics"]
    assert metrics["dh_supply_dev_rms_k"] <= 0.5
    assert metrics["dh_supply_dev_max_settled_k"] <= 2.0
    # Including the first minutes after each requirement step: the largest step is 3 K and
    # the new temperature needs the DH pipe's transport time to reach the meter.
    assert metrics["dh_supply_dev_max_k"] <= 3.1
    assert metrics["heat_within_2pct_share"] >= 0.99
    assert metrics["heat_hourly_error_max_pct"] <= 2.0
    assert metrics["heat_error_samples"] > 0.8 * 86400 * 0.8  # the targets are judged on most of the day


def test_reference_day_writes_economically(summaries):
    counts = summaries["reference-day"]["counts"]
    # Heartbeats apart from setpoints; both far below one per device and second (1.26 million).
    assert counts["heartbeats"] + counts["setpoint_writes"] == counts["writes_total"]
    assert counts["heartbeats"] <= 15 * 86400 / 10
    assert counts["setpoint_writes"] <= 10_000
    # Steady state: at most one setpoint write per device and minute outside ramps; a lease
    # refresh and a change may meet in the same minute now and then (4 of 1,440 measured).
    busy = counts["busy_minutes_outside_ramps"]
    assert not any(device.startswith("cdu-") for device in busy), busy
    assert sum(busy.values()) <= 10, busy


def test_gateway_crash_hands_every_device_to_its_watchdog_in_time(summaries):
    crash = summaries["gateway-crash"]["metrics"]["gateway_crash"][0]
    assert crash["crash_s"] == 1800.0
    assert set(crash["devices"]) == {f"cdu-{i}" for i in range(1, 13)} | {"hp-plc"}
    for device, result in crash["devices"].items():
        assert result["fallback_after_s"] is not None, device
        assert result["fallback_after_s"] <= result["watchdog_timeout_s"], device
        assert result["on_local_values_at_restart"] is True, device
    assert crash["cdus_back_under_control_after_s"] is not None
    assert crash["cdus_back_under_control_after_s"] <= 5.0


def test_utility_link_lost_holds_then_follows_the_weather_curve(summaries):
    (loss,) = summaries["utility-link-lost"]["metrics"]["utility_link_lost"]
    assert loss["held_first"] is True
    assert abs(loss["weather_curve_after_s"] - loss["hold_s"]) <= 2.0
    assert loss["utility_again_after_restore_s"] <= 5.0


def test_silent_devices_and_a_frozen_meter_are_seen_as_stale(summaries):
    found = {d["target"]: d["stale_after_s"] for d in summaries["device-silent"]["metrics"]["stale_detection"]}
    assert found["cdu-3"] <= 1.0
    assert found["hp-plc"] <= 1.0
    assert found["heat-meter.flow_temp_c"] <= 120.0 + 2.0  # stuck_after_s
    counts = summaries["device-silent"]["counts"]
    assert counts["writes_by_reason"].get("safe_state:cdu_data_stale", 0) > 0


def test_when_dh_refuses_heat_the_dry_coolers_take_it(summaries):
    summary = summaries["dh-refuses-heat"]
    metrics = summary["metrics"]
    assert metrics["energy_dry_coolers_mwh"] > 10.0
    assert metrics["tcs_max_c"] < 44.0
    assert summary["counts"]["writes_by_reason"].get("override:dh_cannot_take_heat", 0) > 0


def test_heat_pump_trips_recover_to_the_order(summaries):
    metrics = summaries["heat-pump-trip"]["metrics"]
    assert metrics["heat_within_2pct_share"] >= 0.99
    assert metrics["dh_supply_dev_rms_k"] <= 0.5


def test_same_seed_same_numbers_and_a_readable_report(tmp_path, capsys):
    args = argparse.Namespace(scenario="device-silent", report=str(tmp_path), seed=0)
    assert run_scenario_cli(args) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out
    assert "scenario device-silent" in out
    first = json.loads((tmp_path / "device-silent.json").read_text(encoding="utf-8"))
    png = tmp_path / "device-silent.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000
    # The same run again, from the file's path this time, without writing a report.
    again = run_scenario(Path(__file__).parent.parent / "simulators" / "scenarios" / "device-silent.yaml")
    assert again.files == {}
    assert again.as_dict()["metrics"] == first["metrics"]
    assert again.as_dict()["counts"] == first["counts"]
