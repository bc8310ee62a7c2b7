# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Facility-loop hydraulics: equal-percentage valves, authority, the shared header. Pure, no services."""

from __future__ import annotations

import itertools
import math

import pytest

from simulators.plant import Plant, PlantConfig
from simulators.plant.hydraulics import FacilityLoop, equal_percentage, installed_flow_fraction

CDUS = [f"cdu-{i}" for i in range(1, 13)]


def _series_flow(relative_kv: float, authority: float, branch_dp_bar: float) -> float:
    """Flow through valve + fixed resistance in series, by splitting the pressure drop (bisection).

    Valve Kv = relative_kv (Kvs = 1), fixed Kv chosen so the open valve takes ``authority`` of the
    branch drop: 1/Kf^2 = (1 - a) / a. Independent of the closed form under test.
    """
    fixed_kv = math.sqrt(authority / (1.0 - authority)) if authority < 1.0 else math.inf
    low, high = 0.0, branch_dp_bar
    for _ in range(200):
        valve_dp = 0.5 * (low + high)
        flow = relative_kv * math.sqrt(valve_dp)
        fixed_dp = 0.0 if math.isinf(fixed_kv) else (flow / fixed_kv) ** 2
        if valve_dp + fixed_dp > branch_dp_bar:
            high = valve_dp
        else:
            low = valve_dp
    return relative_kv * math.sqrt(0.5 * (low + high))


def test_inherent_characteristic_is_equal_percentage() -> None:
    rangeability = 50.0
    assert equal_percentage(0.0, rangeability) == 0.0
    assert equal_percentage(1.0, rangeability) == 1.0
    # Equal percentage: every 10 % of stroke multiplies Kv by R ** 0.1, from the shut-off segment up;
    # at 5 % stroke Kv is ~Kvs / R (the smallest controllable flow), below it falls linearly to 0.
    for stroke in (0.05, 0.1, 0.3, 0.5, 0.7, 0.9):
        ratio = equal_percentage(stroke + 0.1, rangeability) / equal_percentage(stroke, rangeability)
        assert ratio == pytest.approx(rangeability**0.1, rel=1e-9), stroke
    assert equal_percentage(0.05, rangeability) == pytest.approx(1.2 / rangeability, rel=0.05)
    assert equal_percentage(0.025, rangeability) == pytest.approx(equal_percentage(0.05, rangeability) / 2)
    # Slope d(ln Kv)/dh = ln R.
    h, eps = 0.75, 1e-6
    slope = (math.log(equal_percentage(h + eps, 50.0)) - math.log(equal_percentage(h - eps, 50.0))) / (2 * eps)
    assert slope == pytest.approx(math.log(50.0), rel=1e-6)
    strokes = [i / 100 for i in range(101)]
    values = [equal_percentage(h, rangeability) for h in strokes]
    assert all(b > a for a, b in itertools.pairwise(values))  # monotonic


@pytest.mark.parametrize("authority", [1.0, 0.5, 0.25])
def test_installed_flow_matches_valve_and_branch_in_series(authority: float) -> None:
    """The closed form equals the series resistances solved directly, at any branch pressure."""
    for branch_dp_bar in (0.5, 1.0, 2.0):
        open_flow = _series_flow(1.0, authority, branch_dp_bar)
        for stroke in (0.1, 0.4, 0.6, 0.84, 1.0):
            kv = equal_percentage(stroke, 50.0)
            expected = _series_flow(kv, authority, branch_dp_bar) / open_flow
            assert installed_flow_fraction(kv, authority) == pytest.approx(expected, rel=1e-6)


def test_a_lower_authority_bends_the_curve_towards_linear() -> None:
    kv = equal_percentage(0.5, 50.0)
    fractions = [installed_flow_fraction(kv, authority) for authority in (1.0, 0.5, 0.25)]
    assert fractions[0] == pytest.approx(kv)
    assert fractions[0] < fractions[1] < fractions[2]  # more flow at mid stroke with less authority


def test_header_pressure_falls_with_total_flow_and_opening_one_valve_takes_from_the_others() -> None:
    loop = FacilityLoop(design_dp_bar=1.0, shutoff_dp_bar=1.5, design_flow_kg_s=12 * 40.0)
    # At design: every branch passes 40 kg/s at 1 bar.
    design = [40.0] * 12
    flows, dp = loop.flows_kg_s(design)
    assert dp == pytest.approx(1.0)
    assert flows == pytest.approx(design)
    assert loop.header_dp_bar(0.0) == pytest.approx(1.5)
    # One branch opens to 1.5x its conductance: its flow rises, every other one falls, total rises.
    opened = [60.0] + [40.0] * 11
    flows_after, dp_after = loop.flows_kg_s(opened)
    assert dp_after < dp
    assert flows_after[0] > flows[0]
    assert all(after < before for after, before in zip(flows_after[1:], flows[1:], strict=True))
    assert sum(flows_after) > sum(flows)
    # The pump curve holds: dp = shutoff - s * total^2.
    total = sum(flows_after)
    assert dp_after == pytest.approx(1.5 - 0.5 * (total / 480.0) ** 2, rel=1e-9)
    # A pump that holds the header exactly: no coupling.
    stiff = FacilityLoop(design_dp_bar=1.0, shutoff_dp_bar=1.0, design_flow_kg_s=480.0)
    assert stiff.flows_kg_s(opened)[0][1:] == pytest.approx([40.0] * 11)


def test_loop_rejects_a_pump_weaker_at_no_flow() -> None:
    with pytest.raises(ValueError, match="shutoff_dp_bar"):
        FacilityLoop(design_dp_bar=1.0, shutoff_dp_bar=0.8, design_flow_kg_s=400.0)
    with pytest.raises(ValueError, match="header_dp_no_flow_bar"):
        PlantConfig.model_validate({"facility_water": {"header_dp_no_flow_bar": 0.5}})


def test_in_the_plant_one_cdu_opening_lowers_the_others_flow_and_mass_balances() -> None:
    """cdu-1 asked for a much colder supply opens its valve; cdu-2..12 lose flow before their PIs react."""
    plant = Plant(seed=3)
    before = plant.snapshot()
    for cdu in CDUS:
        plant.write(cdu, "heartbeat", 1)
    plant.write("cdu-1", "tcs_supply_setpoint_c", 30.0)
    plant.write("cdu-1", "control_mode", 1)
    for _ in range(8):
        plant.step(1.0)
    after = plant.snapshot()
    assert after["truth.cdu-1.valve_pct"] > before["truth.cdu-1.valve_pct"] + 20.0
    assert after["truth.cdu-1.facility_flow_kg_s"] > before["truth.cdu-1.facility_flow_kg_s"]
    assert after["truth.fws.header_dp_bar"] < before["truth.fws.header_dp_bar"] - 0.01
    for cdu in CDUS[1:]:
        # Their valves have barely moved yet (their supply has not warmed), their flow fell.
        assert after[f"truth.{cdu}.valve_pct"] == pytest.approx(before[f"truth.{cdu}.valve_pct"], abs=1.0)
        assert after[f"truth.{cdu}.facility_flow_kg_s"] < before[f"truth.{cdu}.facility_flow_kg_s"] * 0.995
    # Mass: the CDU branches plus the bypass are the loop flow.
    branches = sum(after[f"truth.{cdu}.facility_flow_kg_s"] for cdu in CDUS)
    assert branches + plant.station.fws_bypass_kg_s == pytest.approx(after["truth.fws.flow_kg_s"], rel=1e-12)


def test_energy_balance_closes_with_valves_fighting_over_the_header() -> None:
    plant = Plant(seed=4)
    for cdu in CDUS:
        plant.write(cdu, "control_mode", 1)
    for minute in range(40):
        for i, cdu in enumerate(CDUS):
            # Setpoints swing out of phase, so valves open and close against each other.
            plant.write(cdu, "tcs_supply_setpoint_c", 38.0 + 4.0 * ((minute + i) % 3 == 0))
            plant.write(cdu, "heartbeat", minute)
        for _ in range(60):
            plant.step(1.0)
    energy = plant.energy_balance()
    assert abs(energy["error"]) < 1e-5 * energy["it_liquid"]


def test_linear_full_authority_stiff_header_is_the_old_linear_model() -> None:
    """Linear valve, authority 100 %, a header held exactly: flow = max flow x stroke."""
    plant = Plant(
        PlantConfig.model_validate(
            {
                "cdu": {"valve_characteristic": "linear", "valve_authority_pct": 100.0},
                "facility_water": {"header_dp_no_flow_bar": 1.0},
            }
        ),
        seed=1,
    )
    snapshot = plant.snapshot()
    for cdu in plant.cdus:
        expected = cdu.design_flow_kg_s * 1.5 * cdu.valve_pct / 100.0
        assert snapshot[f"truth.{cdu.name}.facility_flow_kg_s"] == pytest.approx(expected, rel=1e-9)
    assert plant.cdus[0].design_valve_pct() == pytest.approx(100.0 / 1.5, rel=1e-9)
