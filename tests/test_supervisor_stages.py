"""Each stage of the supervisor's cycle (gateway/control/stages.py) as a table: inputs -> outputs.

The reference plant of tests/test_supervisor.py (two CDUs, the shipped profiles) and the default
control settings; every row states the values it expects and, in a comment, where they come from.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from gateway.config.control import ControlConfig
from gateway.control.blocks import HoldState, OrderSource, RampState
from gateway.control.commands import Mode
from gateway.control.pid import PidState
from gateway.control.stages import (
    CduReading,
    DhAcceptance,
    DhSupply,
    Inputs,
    Reader,
    dh_acceptance,
    dh_supply,
    finish,
    heat_order_limit,
    plan_writes,
    read_inputs,
    source_ceiling,
    utility_order,
)
from gateway.control.state import SupervisorState, Watch
from gateway.control.supervisor import Supervisor
from gateway.control.writes import Lease
from gateway.process_image import ProcessImage
from gateway.sample import Reading
from tests.test_supervisor import View, role_map


def setup_of(**changes: object):
    cfg = ControlConfig.model_validate(changes)
    return Supervisor(cfg, role_map(cfg)).setup


SETUP = setup_of()
CFG = SETUP.config
PLC = "hp-plc"


def reader(view: View, setup=SETUP) -> Reader:
    return Reader(setup, view)


def view_with(changes: dict[str, dict[str, float | None]], stale: tuple[str, ...] = ()) -> View:
    """The reference view with some signals changed (None: the signal is missing, i.e. bad)."""
    view = View()
    for device, signals in changes.items():
        for signal, value in signals.items():
            if value is None:
                view.values.pop((device, signal), None)
            else:
                view.values[(device, signal)] = value
    view.stale = set(stale)
    return view


def inputs(**fields: object) -> Inputs:
    """A delivering plant as read_inputs would see it: meter 72/40 °C at 12 MW, three heat pumps."""
    base: dict[str, object] = {
        "outdoor_c": 2.0,
        "meter_supply_c": 72.0,
        "meter_supply_raw_c": 72.0,
        "meter_power_kw": 12000.0,
        "meter_return_c": 40.0,
        "station_supply_c": 72.0,
        "plc_return_c": 40.0,
        "dh_pump_tripped": 0.0,
        "interlock": 0.0,
        "source_in_c": 46.0,
        "source_out_c": 30.0,
        "running": 3.0,
        "hx_heat_kw": 3000.0,
        "link_ok": 1.0,
        "order_mw": 12.0,
        "requirement_in_c": 72.0,
        "order_age_s": 30.0,
        "fws_supply_c": 34.0,
    }
    cdus = fields.pop("cdus", (cdu(),))
    base.update(fields)
    return Inputs(**base).with_cdus(cdus)  # type: ignore[arg-type]


def cdu(name: str = "cdu-1", **fields: float) -> CduReading:
    """A CDU holding 43 °C in external mode, valve 40 %, IT limit 45 °C."""
    base = {"mode": 1.0, "active_setpoint_c": 43.0, "hottest_c": 43.0, "valve_pct": 40.0, "it_limit_c": 45.0}
    base.update(fields)
    return CduReading(name=name, fresh=True, **base)


# -- 1. inputs and quality -------------------------------------------------------------------------

INPUT_ROWS = [
    # name, changes, stale devices, -> meter_ok, plc_ok, panel_ok, stale, overrides, fws, outdoor
    ("all fresh", {}, (), True, True, True, (), (), 34.0, 2.0),
    (
        "meter return missing: the whole meter is stale",
        {"heat-meter": {"return_temp_c": None}},
        (),
        False,
        True,
        True,
        ("heat-meter",),
        ("safe_state:meter_stale",),
        34.0,
        2.0,
    ),
    (
        "PLC stale: facility water from the panel, outdoor from the panel",
        {"panel-pc": {"fws_supply_temp_c": 33.5}},
        ("hp-plc",),
        True,
        False,
        True,
        ("hp-plc",),
        ("safe_state:hp_plc_stale",),
        33.5,
        2.0,
    ),
    (
        "panel stale: outdoor from the PLC, no safe state (the hold takes over)",
        {"hp-plc": {"outdoor_temp_c": -3.0}},
        ("panel-pc",),
        True,
        True,
        False,
        ("panel-pc",),
        (),
        34.0,
        -3.0,
    ),
    (
        "a CDU stale: listed first, its safe state",
        {},
        ("cdu-2",),
        True,
        True,
        True,
        ("cdu-2",),
        ("safe_state:cdu_data_stale",),
        34.0,
        2.0,
    ),
    (
        "everything stale: outdoor falls back to the configured 0 °C",
        {},
        ("cdu-1", "cdu-2", "hp-plc", "panel-pc", "heat-meter"),
        False,
        False,
        False,
        ("cdu-1", "cdu-2", "heat-meter", "hp-plc", "panel-pc"),
        ("safe_state:meter_stale", "safe_state:hp_plc_stale", "safe_state:cdu_data_stale"),
        None,
        0.0,
    ),
]


@pytest.mark.parametrize(
    ("name", "changes", "stale", "meter_ok", "plc_ok", "panel_ok", "stale_out", "overrides", "fws", "outdoor"),
    INPUT_ROWS,
    ids=[row[0] for row in INPUT_ROWS],
)
def test_inputs_and_quality(name, changes, stale, meter_ok, plc_ok, panel_ok, stale_out, overrides, fws, outdoor):
    view = view_with(changes, stale)
    got = read_inputs(SETUP, SupervisorState(), 100.0, read=reader(view))
    assert (got.meter_ok, got.plc_ok, got.panel_ok) == (meter_ok, plc_ok, panel_ok), name
    assert got.stale == stale_out
    assert got.overrides == overrides
    assert got.fws_supply_c == fws
    assert got.outdoor_c == outdoor
    assert got.meter_filtered is None if not meter_ok else got.meter_filtered[0].value == 72.0


CDU_ROWS = [
    # name, cdu-1 signals, -> fresh, active setpoint, hottest
    ("external mode: acts on the written setpoint", {}, True, 43.0, 43.0),
    ("local mode: acts on its local setpoint", {"control_mode": 0.0}, True, 40.0, 43.0),
    (
        "local mode, local setpoint unreadable: blind",
        {"control_mode": 0.0, "local_setpoint_c": None},
        False,
        None,
        None,
    ),
    ("second sensor hotter: the hotter counts", {"tcs_supply_temp_2_c": 44.5}, True, 43.0, 44.5),
    ("IT limit unreadable: blind", {"it_limit_c": None}, False, None, None),
    ("valve feedback unreadable: blind", {"valve_feedback_pct": None}, False, None, None),
]


@pytest.mark.parametrize(("name", "signals", "fresh", "active", "hottest"), CDU_ROWS, ids=[r[0] for r in CDU_ROWS])
def test_a_cdu_as_read(name, signals, fresh, active, hottest):
    got = read_inputs(SETUP, SupervisorState(), 100.0, read=reader(view_with({"cdu-1": signals})))
    reading = got.cdus[0]
    assert reading.name == "cdu-1"
    assert reading.fresh is fresh, name
    if fresh:
        assert (reading.active_setpoint_c, reading.hottest_c) == (active, hottest)
    else:
        assert got.stale == ("cdu-1",)


def test_a_frozen_noisy_meter_is_stale_and_a_moving_one_is_not():
    # The meter's supply last changed at t=0 after changes of 0.3 K on a 0.01 K resolution:
    # noisy; unchanged for 130 s > stuck_after_s 120 s -> frozen -> the meter is stale.
    watch = Watch(72.0, 0.0, 0.01, 0.3, 72.0)
    state = SupervisorState(stuck={("heat-meter", "flow_temp_c"): watch})
    got = read_inputs(SETUP, state, 130.0, read=reader(View()))
    assert got.meter_supply_c is None
    assert got.overrides == ("safe_state:meter_stale",)
    # At 110 s it is not frozen yet.
    assert read_inputs(SETUP, state, 110.0, read=reader(View())).meter_ok
    # A quantised quiet signal (typical change = its resolution) whose witness did not move: not frozen.
    quiet = Watch(72.0, 0.0, 0.1, 0.1, 72.0)
    quiet_state = SupervisorState(stuck={("heat-meter", "flow_temp_c"): quiet})
    still = read_inputs(SETUP, quiet_state, 500.0, read=reader(View()))
    assert still.meter_ok


def test_a_quiet_meter_whose_witness_just_moved_is_not_frozen_until_the_pipe_delay_passed():
    # A 0.1 K meter sat on 68.7 since t=0 (quiet: typical step = resolution); the station's supply
    # (its witness) drops 0.6 K at t=400. The meter sees that only after the DH pipe's transport
    # delay: not frozen at once (coarse-sensors had 26 such seconds a day), frozen once the
    # witness has stayed away for stuck_witness_delay_s (180 s) and the meter still has not moved.
    key = ("heat-meter", "flow_temp_c")
    state = SupervisorState(stuck={key: Watch(68.7, 0.0, 0.1, 0.1, 69.0)})
    moved = view_with({"hp-plc": {"dh_supply_temp_c": 68.4}, "heat-meter": {"flow_temp_c": 68.7}})
    for now_s, frozen in ((400.0, False), (500.0, False), (579.0, False), (580.0, True), (900.0, True)):
        got = read_inputs(SETUP, state, now_s, read=reader(moved))
        assert (got.meter_supply_c is None) is frozen, now_s
        state = dataclasses.replace(state, stuck=got.stuck)
    # The witness coming back within stuck_witness_k clears it: the wait starts over.
    back = view_with({"hp-plc": {"dh_supply_temp_c": 68.9}, "heat-meter": {"flow_temp_c": 68.7}})
    got = read_inputs(SETUP, state, 901.0, read=reader(back))
    assert got.meter_supply_c == 68.7
    assert math.isnan(got.stuck[key].witness_away_s)


def test_the_meter_filter_moves_by_the_exact_first_order_weight():
    # 20 s filter, previous 70 °C at t=90, reading 72 °C at t=100: 70 + (1 - e^-0.5) * 2.
    first = read_inputs(SETUP, SupervisorState(), 90.0, read=reader(view_with({"heat-meter": {"flow_temp_c": 70.0}})))
    assert first.meter_supply_c == 70.0
    state = SupervisorState(meter_filtered=first.meter_filtered)
    got = read_inputs(SETUP, state, 100.0, read=reader(View()))
    assert got.meter_supply_c == pytest.approx(70.0 + (1.0 - math.exp(-0.5)) * 2.0, abs=1e-12)
    assert got.meter_supply_raw_c == 72.0


# -- 2. utility order --------------------------------------------------------------------------------

UTILITY_ROWS = [
    # name, input fields, state hold (last order kW, link lost at), now, config ->
    #   link_up, order_kw, requirement_c, source, hold_remaining_s
    ("link up: the utility's values", {}, None, 100.0, {}, True, 12000.0, 72.0, OrderSource.UTILITY, 0.0),
    (
        "link lost: the last order held for 900 s",
        {"link_ok": 0.0},
        (11000.0, 50.0),
        100.0,
        {},
        False,
        11000.0,
        71.0,
        OrderSource.HELD,
        850.0,
    ),
    (
        "link lost past the hold: weather curve at 2 °C (60.1 °C lifted to the 65 °C minimum), last order",
        {"link_ok": 0.0},
        (11000.0, 0.0),
        1000.0,
        {},
        False,
        11000.0,
        65.0,
        OrderSource.FALLBACK,
        0.0,
    ),
    (
        "past the hold at -10 °C: curve 1.6 * 1.8318 * 30^0.8282 + 28 = 77.02 °C; configured 8 MW",
        {"link_ok": 0.0, "outdoor_c": -10.0},
        (11000.0, 0.0),
        1000.0,
        {"fallback_heat_order_mw": 8.0},
        False,
        8000.0,
        77.02,
        OrderSource.FALLBACK,
        0.0,
    ),
    (
        "order older than 180 s: the link counts as down",
        {"order_age_s": 200.0},
        (11000.0, None),
        100.0,
        {},
        False,
        11000.0,
        71.0,
        OrderSource.HELD,
        900.0,
    ),
    (
        "requirement above the DH maximum: clamped to 85 °C; a negative order is 0",
        {"requirement_in_c": 90.0, "order_mw": -1.0},
        None,
        100.0,
        {},
        True,
        0.0,
        85.0,
        OrderSource.UTILITY,
        0.0,
    ),
]


@pytest.mark.parametrize(
    ("name", "fields", "hold", "now_s", "changes", "link_up", "order_kw", "requirement_c", "source", "remaining_s"),
    UTILITY_ROWS,
    ids=[r[0] for r in UTILITY_ROWS],
)
def test_utility_order(name, fields, hold, now_s, changes, link_up, order_kw, requirement_c, source, remaining_s):
    setup = setup_of(**changes)
    state = SupervisorState()
    if hold is not None:
        state = SupervisorState(
            order_hold=HoldState(last_order=hold[0], link_lost_s=hold[1]),
            requirement_hold=HoldState(last_order=71.0, link_lost_s=hold[1]),
        )
    got = utility_order(setup, state, now_s, inputs=inputs(**fields))
    assert got.link_up is link_up, name
    assert got.order_kw == order_kw
    assert got.requirement_c == pytest.approx(requirement_c, abs=0.005)
    assert got.source is source
    assert got.hold_remaining_s == remaining_s


# -- 3. DH acceptance ------------------------------------------------------------------------------

ACCEPTANCE_ROWS = [
    # name, order kW, input fields -> refusals, delivering
    ("order and a 32 K dT: delivering", 12000.0, {}, (), True),
    ("zero order", 0.0, {}, ("order_zero",), False),
    ("DH pump tripped", 12000.0, {"dh_pump_tripped": 1.0}, ("dh_pump_trip",), False),
    ("meter return 56 °C > 55 °C", 12000.0, {"meter_return_c": 56.0}, ("dh_return_too_hot",), False),
    ("meter stale: the PLC's return counts", 12000.0, {"meter_return_c": None, "plc_return_c": 56.0},
     ("dh_return_too_hot",), False),
    ("PLC interlock bit 2", 12000.0, {"interlock": 2.0}, ("dh_return_too_hot",), False),
    ("other interlock bits only", 12000.0, {"interlock": 5.0}, (), True),
    ("all three", 0.0, {"dh_pump_tripped": 1.0, "interlock": 2.0},
     ("order_zero", "dh_pump_trip", "dh_return_too_hot"), False),
    ("takes heat, dT 4 K: not delivering", 12000.0, {"meter_supply_c": 44.0}, (), False),
    ("takes heat, no power: not delivering", 12000.0, {"meter_power_kw": 0.0}, (), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "order_kw", "fields", "refusals", "delivering"), ACCEPTANCE_ROWS, ids=[r[0] for r in ACCEPTANCE_ROWS]
)
def test_dh_acceptance(name, order_kw, fields, refusals, delivering):
    got = dh_acceptance(CFG, inputs(**fields), order_kw)
    assert got.refusals == refusals, name
    assert got.takes_heat is (not refusals)
    assert got.delivering is delivering


# -- 4. DH supply ----------------------------------------------------------------------------------

SETTLED = {
    "dh_disturbed_s": 0.0,
    "last_requirement_c": 72.0,
    "leases": {(PLC, "hp_supply_setpoint_c"): Lease(72.0, 0.0)},
}

SUPPLY_ROWS = [
    # name, input fields, state fields, config, delivering, now -> choice name, setpoint, settled, feed-forward, trim
    ("not delivering: the requirement, no trim", {}, {}, {}, False, 200.0, "dh_trim", 72.0, False, 0.0, 0.0),
    # A fresh trim at zero error outputs 0 (no kick).
    ("settled for 200 s > 150 s", {}, SETTLED, {}, True, 200.0, "dh_trim", 72.0, True, 0.0, 0.0),
    ("only 100 s since the last disturbance", {}, SETTLED, {}, True, 100.0, "dh_trim", 72.0, False, 0.0, 0.0),
    ("station 1 K off the written setpoint: disturbed now", {"station_supply_c": 71.0}, SETTLED, {}, True, 200.0,
     "dh_trim", 72.0, False, 0.0, 0.0),
    # 100 kW pipe loss at 12 MW over 32 K: 100 / 12000 * 32 = 0.2667 K more at the station.
    ("pipe-loss feed-forward", {}, {}, {"dh_pipe_heat_loss_kw": 100.0}, True, 200.0, "dh_trim", 72.26667, False,
     0.26667, 0.0),
    # Station 87 °C, 2 K over 85 °C: min(72 written, 85) - 2 K/K * 2 K = 68 °C.
    ("over-temperature", {"station_supply_c": 87.0}, SETTLED, {}, True, 200.0, "dh_over_temperature", 68.0,
     False, 0.0, 0.0),
    # Raw meter 100 °C, 15 K over: 72 - 30 = 42 °C, lifted to the 50 °C minimum (the station is settled).
    ("over-temperature below the minimum", {"meter_supply_raw_c": 100.0}, SETTLED, {}, True, 200.0,
     "dh_over_temperature", 50.0, True, 0.0, 0.0),
    # Manual: the trim tracks manual - requirement = -6 K, clamped to its -2 K (bumpless return).
    ("manual value", {}, {"mode": Mode.MANUAL, "manual_supply_temp_c": 66.0}, {}, True, 200.0, "manual", 66.0,
     False, 0.0, -2.0),
    ("manual without a value: what was written", {}, {"mode": Mode.MANUAL, **SETTLED}, {}, True, 200.0, "manual",
     72.0, True, 0.0, 0.0),
]  # fmt: skip


@pytest.mark.parametrize(
    (
        "name",
        "fields",
        "state_fields",
        "changes",
        "delivering",
        "now_s",
        "choice",
        "setpoint",
        "settled",
        "ff",
        "trim_k",
    ),
    SUPPLY_ROWS,
    ids=[r[0] for r in SUPPLY_ROWS],
)
def test_dh_supply(name, fields, state_fields, changes, delivering, now_s, choice, setpoint, settled, ff, trim_k):
    setup = setup_of(**changes)
    state = SupervisorState(**state_fields)
    data = inputs(**fields)
    utility = utility_order(setup, state, now_s, inputs=data)
    acceptance = DhAcceptance(refusals=(), delivering=delivering)
    got = dh_supply(setup, state, now_s, inputs=data, utility=utility, acceptance=acceptance)
    assert got.choice.name == choice, name
    assert got.setpoint_c == pytest.approx(setpoint, abs=1e-4)
    assert got.settled is settled
    assert got.feedforward_k == pytest.approx(ff, abs=1e-4)
    assert got.trim_k == trim_k


# -- 5. heat-order limit ---------------------------------------------------------------------------

LIMIT_ROWS = [
    # name, input fields, state fields, order kW, delivering, over_k -> choice, limit kW, hp enabled
    ("the order", {}, {}, 12000.0, True, 0.0, "heat_order", 12000.0, True),
    # Two heat pumps: 3000 kW through the HX + 2 * 4000 kW * 0.98 = 10840 kW.
    ("two heat pumps running: capacity", {"running": 2.0}, {}, 12000.0, True, 0.0, "heat_pump_capacity", 10840.0,
     True),
    # One tripped, none running: no capacity limit from a count of 0 (the PLC's staging decides).
    ("no heat pump running: no capacity limit", {"running": 0.0}, {}, 12000.0, True, 0.0, "heat_order", 12000.0,
     True),
    # Evaporator inlet 22 °C, 2 K under 24 °C: 12000 delivered - 1000 kW/K * 2 K.
    ("source inlet too cold", {"source_in_c": 22.0}, {}, 12000.0, True, 0.0, "heat_pump_source_limit", 10000.0,
     True),
    # Outlet 20.5 °C, 0.5 K under 21 °C: 12000 - 500.
    ("source outlet too cold", {"source_out_c": 20.5}, {}, 12000.0, True, 0.0, "heat_pump_source_limit", 11500.0,
     True),
    # Source 30 K short: 12000 - 30000 < 0 -> 0, and the heat pumps are asked off.
    ("source far too cold", {"source_in_c": -6.0}, {}, 12000.0, True, 0.0, "heat_pump_source_limit", 0.0, False),
    ("DH 2 K over its maximum", {}, {}, 12000.0, True, 2.0, "dh_over_temperature", 10000.0, True),
    ("station 0.5 K short of the written setpoint: hold the last limit", {"station_supply_c": 71.5},
     {"leases": {(PLC, "hp_supply_setpoint_c"): Lease(72.0, 0.0), (PLC, "heat_power_limit_kw"): Lease(11200.0, 0.0)}},
     12000.0, True, 0.0, "heat_pump_short", 11200.0, True),
    ("station short but not delivering: no hold", {"station_supply_c": 71.5},
     {"leases": {(PLC, "hp_supply_setpoint_c"): Lease(72.0, 0.0), (PLC, "heat_power_limit_kw"): Lease(11200.0, 0.0)}},
     12000.0, False, 0.0, "heat_order", 12000.0, True),
    ("zero order: 0 and the heat pumps off", {}, {}, 0.0, False, 0.0, "heat_order", 0.0, False),
    # Manual: the trim tracks manual - order (+4000 / -3000 kW) within its +-1000 kW.
    ("manual 16 MW, capacity still binds", {}, {"mode": Mode.MANUAL, "manual_heat_power_kw": 16000.0}, 12000.0,
     True, 0.0, "heat_pump_capacity", 14760.0, True),
    ("manual 9 MW", {}, {"mode": Mode.MANUAL, "manual_heat_power_kw": 9000.0}, 12000.0, True, 0.0, "manual", 9000.0,
     True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "fields", "state_fields", "order_kw", "delivering", "over_k", "choice", "limit_kw", "enabled"),
    LIMIT_ROWS,
    ids=[r[0] for r in LIMIT_ROWS],
)
def test_heat_order_limit(name, fields, state_fields, order_kw, delivering, over_k, choice, limit_kw, enabled):
    state = SupervisorState(**state_fields)
    data = inputs(**fields)
    utility = utility_order(SETUP, state, 100.0, inputs=data)._replace(order_kw=order_kw)
    acceptance = DhAcceptance(refusals=() if order_kw > 0.0 else ("order_zero",), delivering=delivering)
    supply = DhSupply(
        feedforward_k=0.0,
        disturbed_s=100.0,
        settled=False,
        trim_k=0.0,
        trim=PidState(),
        normal="dh_trim",
        normal_c=72.0,
        over_k=over_k,
        choice=None,  # type: ignore[arg-type]  # not read by this stage
        setpoint_c=72.0,
    )
    got = heat_order_limit(SETUP, state, 100.0, inputs=data, utility=utility, acceptance=acceptance, supply=supply)
    assert got.choice.name == choice, name
    assert got.choice.value == pytest.approx(limit_kw)
    assert got.hp_enable.on is enabled
    manual_kw = state.manual_heat_power_kw
    assert got.trim_kw == (0.0 if manual_kw is None else max(min(manual_kw - order_kw, 1000.0), -1000.0))


# -- 6. source ceiling -----------------------------------------------------------------------------

CEILING_ROWS = [
    # name, cdus, input fields, state fields, takes heat, now ->
    #   ceiling, target, backoff, cdu reason, dry-cooler choice and value
    ("first cycle: start at the lowest active setpoint, aim at 45 - 2 = 43 °C", (cdu(),), {}, {}, True, 100.0,
     43.0, 43.0, (), "source_optimisation", "source_optimisation", 36.0),
    # 10 s at 0.5 K/min from 40 °C; dry coolers min(38 - 2, 40.083 - 5) = 35.083 °C.
    ("raising slowly", (cdu(),), {}, {"cdu_ceiling": RampState(value=40.0, time_s=90.0)}, True, 100.0,
     40.0 + 0.5 / 6.0, 43.0, (), "source_optimisation", "source_optimisation", 35.0 + 0.5 / 6.0),
    # A late cycle moves at most 10 cycles' worth (10 s), not the 60 s it missed.
    ("a late cycle", (cdu(),), {}, {"cdu_ceiling": RampState(value=40.0, time_s=40.0)}, True, 100.0,
     40.0 + 0.5 / 6.0, 43.0, (), "source_optimisation", "source_optimisation", 35.0 + 0.5 / 6.0),
    # A CDU that cannot hold backs off alone (plan_writes): the ceiling, the others and the dry coolers hold.
    ("valve saturated: that CDU alone, the ceiling holds", (cdu(valve_pct=96.0), cdu("cdu-2")), {},
     {"cdu_ceiling": RampState(value=43.0, time_s=90.0)},
     True, 100.0, 43.0, 43.0, (), "source_optimisation", "source_optimisation", 36.0),
    # Back off to 35 °C at 3 K/min: 10 s from 43 °C is 42.5 °C.
    ("rack 44.2 °C, within 1 K of its 45 °C limit: every CDU backs off", (cdu(hottest_c=44.2),), {},
     {"cdu_ceiling": RampState(value=43.0, time_s=90.0)}, True, 100.0, 42.5, 35.0,
     ("rack_near_limit",), "override:rack_near_limit", "source_optimisation", 36.0),
    # Facility water 40 °C, 3 K above 36 + 1: back off, dry coolers 36 - 2 K/K * 3 K = 30 °C.
    ("facility water too hot", (cdu(),), {"fws_supply_c": 40.0}, {"cdu_ceiling": RampState(value=43.0, time_s=90.0)},
     True, 100.0, 42.5, 35.0, ("fws_too_hot",), "override:fws_too_hot", "fws_too_hot", 30.0),
    ("facility water unknown: towards the conservative 40 °C", (cdu(),), {"fws_supply_c": None},
     {"cdu_ceiling": RampState(value=43.0, time_s=90.0)}, True, 100.0, 42.5, 40.0, (), "safe_state:fws_unknown",
     "source_optimisation", 36.0),
    ("100 s after a back-off: no raising (hold 300 s)", (cdu(),), {},
     {"cdu_ceiling": RampState(value=40.0, time_s=90.0), "last_backoff_s": 0.0}, True, 100.0, 40.0, 40.0, (),
     "source_optimisation", "source_optimisation", 35.0),
    ("a CDU stale: no raising, dry coolers to 30 °C", (cdu(), CduReading(name="cdu-2", fresh=False)), {},
     {"cdu_ceiling": RampState(value=40.0, time_s=90.0)}, True, 100.0, 40.0, 40.0, (), "source_optimisation",
     "cdu_data_stale", 30.0),
    ("DH takes no heat: dry coolers at most 36 °C", (cdu(),), {},
     {"cdu_ceiling": RampState(value=43.0, time_s=90.0)}, False, 100.0, 43.0, 43.0, (), "source_optimisation",
     "source_optimisation", 36.0),
    # The lower IT limit binds the per-CDU target, the ceiling follows the highest.
    ("two IT limits: the ceiling aims at the higher one", (cdu(), cdu("cdu-2", it_limit_c=50.0)), {}, {}, True,
     100.0, 43.0, 48.0, (), "source_optimisation", "source_optimisation", 36.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "cdus", "fields", "state_fields", "takes_heat", "now_s", "ceiling_c", "target_c", "backoff", "reason",
     "dc_name", "dc_c"),
    CEILING_ROWS,
    ids=[r[0] for r in CEILING_ROWS],
)  # fmt: skip
def test_source_ceiling(name, cdus, fields, state_fields, takes_heat, now_s, ceiling_c, target_c, backoff, reason,
                        dc_name, dc_c):  # fmt: skip
    acceptance = DhAcceptance(refusals=() if takes_heat else ("dh_pump_trip",), delivering=takes_heat)
    got = source_ceiling(
        SETUP, SupervisorState(**state_fields), now_s, inputs=inputs(cdus=cdus, **fields), acceptance=acceptance
    )
    assert got.ceiling.value == pytest.approx(ceiling_c), name
    assert got.target_c == target_c
    assert got.backoff == backoff
    assert got.cdu_reason == reason
    assert (got.dry_cooler.name, got.dry_cooler.value) == (dc_name, pytest.approx(dc_c))
    short = [c for c in cdus if c.fresh and (c.valve_pct >= 95.0 or c.hottest_c > c.active_setpoint_c + 1.0)]
    holding_out = tuple(c.name for c in short)
    assert got.holding_out == holding_out
    if backoff or holding_out:
        assert got.last_backoff_s == now_s  # no raising for cdu_raise_hold_s after either


# -- 7. writes and 8. status, through the whole chain ------------------------------------------------


def cycle(view: View, state: SupervisorState, now_s: float, setup=SETUP):
    read = reader(view, setup)
    data = read_inputs(setup, state, now_s, read=read)
    utility = utility_order(setup, state, now_s, inputs=data)
    acceptance = dh_acceptance(setup.config, data, utility.order_kw)
    supply = dh_supply(setup, state, now_s, inputs=data, utility=utility, acceptance=acceptance)
    limit = heat_order_limit(setup, state, now_s, inputs=data, utility=utility, acceptance=acceptance, supply=supply)
    ceiling = source_ceiling(setup, state, now_s, inputs=data, acceptance=acceptance)
    writes = plan_writes(
        setup,
        state,
        now_s,
        read=read,
        inputs=data,
        acceptance=acceptance,
        supply=supply,
        limit=limit,
        ceiling=ceiling,
    )
    done = finish(
        setup,
        state,
        now_s,
        inputs=data,
        utility=utility,
        acceptance=acceptance,
        supply=supply,
        limit=limit,
        ceiling=ceiling,
        writes=writes,
    )
    return writes, done


def by_device(writes) -> dict[str, list[tuple[str, float, str]]]:
    out: dict[str, list[tuple[str, float, str]]] = {}
    for write in writes:
        out.setdefault(write.device, []).append((write.signal, write.value, write.reason))
    return out


def test_first_cycle_writes_heartbeats_then_cdus_then_the_plc():
    writes, (sent, state, status) = cycle(View(), SupervisorState(), 100.0)
    assert sent == writes.writes
    devices = by_device(sent)
    # Heartbeats first, to every fresh device that declares one.
    assert [w.device for w in sent[: writes.heartbeat_writes]] == [w.device for w in sent if w.reason == "heartbeat"]
    assert devices["cdu-1"][-2:] == [
        ("control_mode", 1.0, "take_over"),
        ("tcs_supply_setpoint_c", 43.0, "source_optimisation"),
    ]
    plc = [(signal, value, reason) for signal, value, reason in devices[PLC] if reason != "heartbeat"]
    assert plc == [
        ("hp_enable", 1.0, "heat_order"),
        ("hp_supply_setpoint_c", 72.0, "dh_trim"),
        ("heat_power_limit_kw", 12000.0, "heat_order"),
        ("dry_cooler_enable", 1.0, "cooling_first"),
        ("dry_cooler_setpoint_c", 36.0, "source_optimisation"),
    ]
    assert writes.applied_supply_c == 72.0
    assert writes.applied_limit_kw == 12000.0
    assert status["setpoint_writes"] == len(sent) - writes.heartbeat_writes == 9
    assert status["overrides"] == ""
    assert state.leases[(PLC, "hp_supply_setpoint_c")] == Lease(72.0, 100.0)
    assert state.setpoint_writes_total == 9


def test_a_stale_plc_gets_nothing_and_a_stale_cdu_is_handed_back():
    view = View()
    view.stale = {PLC, "cdu-2"}
    writes, (sent, _, status) = cycle(view, SupervisorState(), 100.0)
    devices = by_device(sent)
    assert PLC not in devices
    assert devices["cdu-2"] == [("control_mode", 0.0, "safe_state:cdu_data_stale")]  # no heartbeat either
    assert status["stale_devices"] == "cdu-2,hp-plc"
    # The safe state, and the dry coolers' stale-CDU setpoint winning their min-select.
    assert status["overrides"] == "safe_state:hp_plc_stale,safe_state:cdu_data_stale,override:cdu_data_stale"
    # Facility water from the panel (34 °C): known, so no fws_unknown.
    assert status["fws_supply_c"] == 34.0
    assert writes.applied_supply_c == 72.0  # what it would have been: not written


def test_status_lists_every_override_once_in_stage_order():
    # Utility link lost (held order), DH pump tripped, a CDU's valve saturated.
    view = View()
    view.set("panel-pc", utility_link_ok=0.0)
    view.set(PLC, dh_pump_tripped=1.0)
    view.set("cdu-1", valve_feedback_pct=97.0)
    state = SupervisorState(
        order_hold=HoldState(last_order=12000.0, link_lost_s=None),
        requirement_hold=HoldState(last_order=72.0, link_lost_s=None),
    )
    _, (_, _, status) = cycle(view, state, 100.0)
    assert status["overrides"] == "override:dh_cannot_take_heat,override:cdu_cannot_hold"
    assert status["dh_refusals"] == "dh_pump_trip"
    assert status["order_source"] == "held"
    assert status["alarm_utility_link"] is True
    assert status["dh_takes_heat"] is False


def test_a_cdu_that_cannot_hold_backs_off_alone_the_others_and_the_dry_coolers_hold():
    """On a shared facility header a site-wide back-off opens every valve and starves the short one."""
    view = View()
    state = SupervisorState()
    for second in range(100, 130):  # take over, the ceiling at its start (43 °C, what the CDUs hold)
        writes, (_, state, _) = cycle(view, state, float(second))
        view.echo(writes.writes)
    view.set("cdu-2", valve_feedback_pct=97.0)  # saturated: it cannot cool more
    writes, (_, after, status) = cycle(view, state, 160.0)
    setpoints = {w.device: (w.value, w.reason) for w in writes.writes if w.signal == "tcs_supply_setpoint_c"}
    assert setpoints["cdu-2"][1] == "override:cdu_cannot_hold"
    assert setpoints["cdu-2"][0] < 43.0  # on its way down at the back-off ramp
    assert all(reason != "override:cdu_cannot_hold" for device, (_, reason) in setpoints.items() if device != "cdu-2")
    assert after.cdu_ceiling.value == pytest.approx(state.cdu_ceiling.value)  # held, not lowered
    assert "override:cdu_cannot_hold" in status["overrides"]
    dry = [w for w in writes.writes if w.signal == "dry_cooler_setpoint_c"]
    assert all(w.reason == "source_optimisation" for w in dry)


def test_mode_off_writes_nothing_and_forgets_what_was_written():
    _, (_, written, _) = cycle(View(), SupervisorState(), 100.0)
    off = dataclasses.replace(written, mode=Mode.OFF)
    writes, (sent, state, status) = cycle(View(), off, 200.0)
    assert writes.heartbeat_writes > 0  # due by now, planned, not sent
    assert sent == []
    assert state.leases == {}
    assert state.cdu_ceiling is None
    assert (status["writes"], status["setpoint_writes"], status["heartbeat_writes"]) == (0, 0, 0)


def test_deviation_alarm_after_its_delay():
    # Meter 1 K further below the requirement than the alarm threshold: the alarm only after its delay.
    view = View()
    view.set("heat-meter", flow_temp_c=72.0 - CFG.deviation_alarm_k - 1.0)
    state = SupervisorState()
    _, (_, state, status) = cycle(view, state, 100.0)
    assert status["dh_deviation_k"] == pytest.approx(-CFG.deviation_alarm_k - 1.0)
    assert status["alarm_dh_deviation"] is False
    _, (_, state, status) = cycle(view, state, 100.0 + CFG.deviation_alarm_delay_s + 1.0)
    assert status["alarm_dh_deviation"] is True


def test_a_cdu_with_a_constant_it_limit_and_no_valve_feedback():
    # The site gives cdu-1's IT limit as a constant (47 °C) and marks its valve feedback absent:
    # the constant is used even when the device is stale; no valve: never "cannot hold" by valve.
    setup = setup_of(devices={"cdu-1": {"signals": {"it_limit_c": 47.0, "valve_feedback_pct": "absent"}}})
    view = view_with({"cdu-1": {"it_limit_c": 40.0, "valve_feedback_pct": 99.0}})
    got = read_inputs(setup, SupervisorState(), 100.0, read=reader(view, setup)).cdus[0]
    assert (got.fresh, got.it_limit_c, math.isnan(got.valve_pct)) == (True, 47.0, True)
    assert reader(view, setup)("cdu-1", "it_limit_c") == 47.0
    assert reader(view, setup)("cdu-1", "valve_feedback_pct") is None
    view.stale = {"cdu-1"}
    assert reader(view, setup)("cdu-1", "it_limit_c") == 47.0  # a constant is never stale
    assert read_inputs(setup, SupervisorState(), 100.0, read=reader(view, setup)).cdus[0].fresh is False


def test_the_reader_gives_the_same_values_from_a_snapshot_as_from_good():
    # The gateway's Snapshot is read once per device (fresh); any other view once per signal (good).
    view = View()
    image = ProcessImage()
    now_ns = 1_000_000_000_000
    for device in ("cdu-1", "cdu-2", "hp-plc", "panel-pc", "heat-meter"):
        values = {signal: value for (name, signal), value in view.values.items() if name == device}
        stamp = now_ns - (10_000_000_000 if device == "cdu-2" else 0)  # cdu-2 read 10 s ago: stale
        image.update(Reading(device, stamp, values))
    snapshot = image.snapshot(now_ns)
    view.stale = {"cdu-2"}
    from_snapshot = read_inputs(SETUP, SupervisorState(), 100.0, read=Reader(SETUP, snapshot))
    from_good = read_inputs(SETUP, SupervisorState(), 100.0, read=Reader(SETUP, view))
    assert from_snapshot == from_good
    assert from_snapshot.stale == ("cdu-2",)


def test_the_next_state_carries_what_no_stage_changes():
    # finish builds the next state field by field: the operator's mode and values and the panel
    # switch last seen go on unchanged, and the stages' own results are in it.
    state = SupervisorState(
        mode=Mode.MANUAL, manual_supply_temp_c=66.0, manual_heat_power_kw=9000.0, panel_seen=(1.0, 66.0, 9.0)
    )
    _, (_, after, _) = cycle(View(), state, 100.0)
    assert (after.mode, after.manual_supply_temp_c, after.manual_heat_power_kw, after.panel_seen) == (
        Mode.MANUAL,
        66.0,
        9000.0,
        (1.0, 66.0, 9.0),
    )
    assert after.last_requirement_c == 72.0
    assert after.cdu_ceiling is not None
    assert after.hp_enable.on is True
    assert set(after.leases) >= {(PLC, "hp_supply_setpoint_c"), ("cdu-1", "tcs_supply_setpoint_c")}
