"""Every shipped scenario in closed loop (plant + supervisor), judged by its JSON summary.

Every shipped scenario runs once per session in two worker processes (the two 24 h days side
by side, the short ones after them); every test below reads the summary JSON they wrote. Each
scenario file states its own pass criteria; the safety checks apply to all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from simulators.harness import run_scenario, run_scenario_cli, run_scenarios
from simulators.scenario import SCENARIO_DIR, builtin_scenarios, load_scenario

SHIPPED = builtin_scenarios()

# Two simulated days and ten shorter runs: ~1 min of CPU per worker on an idle machine, many
# times that on a loaded one; the per-test default (300 s) is for tests that wait on sockets.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("reports")
    run_scenarios(SHIPPED, report_dir=folder, workers=2)
    return {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for name in SHIPPED}


def test_every_shipped_scenario_ran(summaries):
    assert set(summaries) == {
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
    }
    for name, summary in summaries.items():
        assert summary["passed"], (name, {k: v for k, v in summary["checks"].items() if not v["ok"]})


@pytest.mark.parametrize("name", SHIPPED)
def test_every_scenario_is_judged_by_its_own_criteria(summaries, name):
    criteria = load_scenario(name).criteria
    assert criteria, f"{name} states no pass criteria"
    checks = summaries[name]["checks"]
    for metric, criterion in criteria.items():
        assert checks[metric]["target"] == criterion.target
        assert checks[metric]["ok"], (name, metric, checks[metric])


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


def test_reference_day_meets_the_targets_on_the_harder_plant(summaries):
    metrics = summaries["reference-day"]["metrics"]
    assert metrics["dh_supply_dev_rms_k"] < 0.3
    assert metrics["dh_supply_dev_max_settled_k"] < 2.0  # per second, steps judged by settling instead
    assert metrics["step_settling_max_s"] < 360.0
    assert metrics["heat_within_2pct_share"] >= 0.99
    assert metrics["tcs_over_limit_s"] == 0
    assert metrics["heat_error_samples"] > 0.8 * 86400 * 0.8  # the targets are judged on most of the day
    assert len(metrics["requirement_steps"]) >= 4  # 72 -> 75 -> 72 -> 70 -> 73 -> 71 °C


def test_the_report_says_what_it_leaves_out_and_why(summaries):
    why = summaries["reference-day"]["metrics"]["excluded_why"]
    assert any(key.startswith("per_second") for key in why)
    assert any(key.startswith("settled") for key in why)


def test_a_scenario_fails_on_its_own_criteria(tmp_path):
    text = (SCENARIO_DIR / "device-silent.yaml").read_text(encoding="utf-8")
    strict = "criteria:\n  heat_within_2pct_share: {min: 1.01}\n  no_such_metric: {max: 1}\n"
    text = text.replace("criteria:\n", strict, 1)
    path = tmp_path / "strict.yaml"
    path.write_text(text.replace("name: device-silent", "name: strict"), encoding="utf-8")
    summary = run_scenario(path, plot=False)
    assert not summary.passed
    assert summary.checks["heat_within_2pct_share"]["ok"] is False
    assert summary.checks["no_such_metric"] == {"value": None, "target": "<= 1", "ok": False}


def test_reference_day_writes_economically(summaries):
    counts = summaries["reference-day"]["counts"]
    # Heartbeats apart from setpoints; both far below one per device and second (1.26 million).
    assert counts["heartbeats"] + counts["setpoint_writes"] == counts["writes_total"]
    assert counts["heartbeats"] <= 15 * 86400 / 10
    assert counts["setpoint_writes"] <= 10_000
    # Steady state: at most one setpoint write per device and minute outside ramps. On the harder
    # plant (issue 11: the PLC's own PI, condenser water, a 0.3 K sensor offset the trims learn)
    # 40 of 1,440 minutes had two writes (33 heat_power_limit_kw, 6 hp_supply_setpoint_c, 2
    # dry_cooler_setpoint_c); a small step now waits for the device's minute (docs/control.md,
    # Writes): 1 of 1,440 measured, none for the CDUs.
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
    # stuck_after_s from the last change, which is up to one meter update period (10 s) before the freeze
    assert found["heat-meter.flow_temp_c"] <= 120.0 + 10.0 + 2.0
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
