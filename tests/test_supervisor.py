"""The supervisor as tables of cycles with simulated time jumps (OpenEMS style).

The view is a dict of good values; a device in ``stale`` reads as None (stale or bad). After
every cycle the writes are echoed into the view, as the devices' read-back would show them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from pathlib import Path

import pytest

from gateway.config.control import ControlConfig
from gateway.config.loader import load_profile, load_site
from gateway.control.blocks import weather_curve_supply_c
from gateway.control.roles import ControlledDevice, RoleMap, build_role_map
from gateway.control.supervisor import (
    Mode,
    StepResult,
    Supervisor,
    SupervisorState,
    supervisor_for_site,
    write_limits_of,
)
from gateway.control.writes import Write

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"
CDUS = ("cdu-1", "cdu-2")
DEVICES = {"cdu-1": "cdu", "cdu-2": "cdu", "hp-plc": "hp-plc", "panel-pc": "panel-pc", "heat-meter": "heat-meter"}


PROFILE_OF = {name: load_profile(PROFILES / f"{name}.yaml") for name in set(DEVICES.values())}


def role_map(cfg: ControlConfig) -> RoleMap:
    """The devices in their roles with the shipped profiles, as the live service binds them."""
    devices = {name: ControlledDevice(name, profile, PROFILE_OF[profile]) for name, profile in DEVICES.items()}
    return build_role_map(cfg, devices, cdus=CDUS)


LIMITS = role_map(ControlConfig()).write_limits()


class View:
    """A process image in a dict: ``good()`` as the gateway's Snapshot has it."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}
        self.stale: set[str] = set()
        self.pinned: set[str] = set()
        self.set(
            "heat-meter",
            flow_temp_c=72.0,
            return_temp_c=40.0,
            heat_power_kw=12000.0,
        )
        self.set(
            "hp-plc",
            dh_supply_temp_c=72.0,
            dh_return_temp_c=40.0,
            fws_supply_temp_c=34.0,
            dh_pump_tripped=0.0,
            interlock_status=0.0,
            hp_source_inlet_temp_c=46.0,
            hp_running_count=3.0,
            hx_heat_kw=3000.0,
            outdoor_temp_c=2.0,
            hp_enable=1.0,
            hp_supply_setpoint_c=72.0,
            heat_power_limit_kw=12000.0,
            dry_cooler_setpoint_c=36.0,
            dry_cooler_enable=1.0,
        )
        self.set(
            "panel-pc",
            utility_link_ok=1.0,
            utility_heat_order_mw=12.0,
            utility_supply_temp_c=72.0,
            utility_order_age_s=30.0,
            outdoor_temp_c=2.0,
            operator_mode=2.0,
            manual_supply_temp_c=65.0,
            manual_heat_power_mw=16.0,
            fws_supply_temp_c=34.0,
        )
        for cdu in CDUS:
            self.set(
                cdu,
                tcs_supply_temp_c=43.0,
                tcs_supply_temp_2_c=43.0,
                control_mode=1.0,
                tcs_supply_setpoint_c=43.0,
                local_setpoint_c=40.0,
                valve_feedback_pct=40.0,
                it_limit_c=45.0,
            )

    def set(self, device: str, **signals: float) -> None:
        for signal, value in signals.items():
            self.values[(device, signal)] = value

    def good(self, device: str, signal: str, max_age_s: float) -> float | None:
        del max_age_s
        if device in self.stale:
            return None
        return self.values.get((device, signal))

    def echo(self, writes: list[Write]) -> None:
        """The devices take the writes (read-back shows them), unless they are silent.

        A CDU is ideal: its rack loop is at its setpoint one cycle later, unless the test has
        pinned it (``pinned``).
        """
        for write in writes:
            if write.device in self.stale:
                continue
            self.values[(write.device, write.signal)] = write.value
            if write.signal == "tcs_supply_setpoint_c" and write.device not in self.pinned:
                self.set(write.device, tcs_supply_temp_c=write.value, tcs_supply_temp_2_c=write.value)


def config(**changes: object) -> ControlConfig:
    base: dict[str, object] = {"stuck_after_s": 0.0, "outdoor_filter_s": 0.0}
    base.update(changes)
    return ControlConfig.model_validate(base)


def supervisor(**changes: object) -> Supervisor:
    cfg = config(**changes)
    return Supervisor(cfg, role_map(cfg))


class Loop:
    """Runs cycles at given times and remembers the last result."""

    def __init__(self, sup: Supervisor | None = None, view: View | None = None) -> None:
        self.sup = sup or supervisor()
        self.view = view or View()
        self.state = SupervisorState()
        self.result: StepResult | None = None

    def at(self, now_s: float) -> StepResult:
        self.result = self.sup.step(self.view, self.state, now_s)
        self.state = self.result.state
        self.view.echo(self.result.writes)
        return self.result

    def run(self, start_s: float, end_s: float, dt_s: float = 1.0) -> StepResult:
        t = start_s
        while t <= end_s + 1e-9:
            self.at(t)
            t += dt_s
        assert self.result is not None
        return self.result

    def command(self, **command: object) -> None:
        self.state, ack = self.sup.apply_command(self.state, command)
        assert ack.accepted, ack.reason


def written(result: StepResult, device: str, signal: str) -> Write | None:
    found = [w for w in result.writes if w.device == device and w.signal == signal]
    assert len(found) <= 1
    return found[0] if found else None


def value(view: View, device: str, signal: str) -> float:
    return view.values[(device, signal)]


# -- modes and heartbeats ---------------------------------------------------------------------------


def test_mode_off_writes_nothing_not_even_heartbeats():
    loop = Loop()
    loop.at(0.0)
    loop.command(mode="off")
    for now_s in (1.0, 2.0, 10.0, 500.0):  # time jumps included
        result = loop.at(now_s)
        assert result.writes == []
        assert result.status["mode"] == "off"
        assert result.status["writes"] == 0


def heartbeats(loop: Loop, times: list[float]) -> dict[str, list[tuple[float, float]]]:
    beats: dict[str, list[tuple[float, float]]] = {}
    for now_s in times:
        for write in loop.at(now_s).writes:
            if write.reason == "heartbeat":
                beats.setdefault(write.device, []).append((now_s, write.value))
    return beats


def test_heartbeats_at_each_devices_declared_period():
    # CDUs and PLC: watchdog 60 s, no period declared -> a third of it; the panel declares 10 s.
    beats = heartbeats(Loop(), [float(t) for t in range(61)])
    assert set(beats) == {"cdu-1", "cdu-2", "hp-plc", "panel-pc"}  # the meter declares no heartbeat
    for device in ("cdu-1", "cdu-2", "hp-plc"):
        assert [t for t, _ in beats[device]] == [0.0, 20.0, 40.0, 60.0], device
    assert [t for t, _ in beats["panel-pc"]] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    for values in beats.values():
        assert all(b != a for (_, a), (_, b) in itertools.pairwise(values))  # a changing counter


def test_the_site_overrides_the_heartbeat_period():
    beats = heartbeats(Loop(supervisor(heartbeat_period_s=1.0)), [0.0, 1.0, 2.0, 3.0, 13.0])
    assert all(len(values) == 5 for values in beats.values())


def test_heartbeat_counter_wraps_within_the_profile_limits():
    loop = Loop(supervisor(heartbeat_period_s=1.0))
    loop.view.set("hp-plc", heartbeat=65534.0)  # a restart continues from the device's value
    values = [written(loop.at(float(t)), "hp-plc", "heartbeat").value for t in range(3)]  # type: ignore[union-attr]
    assert values == [65535.0, 0.0, 1.0]


# -- safe states -----------------------------------------------------------------------------------


def test_stale_cdu_goes_back_to_local_gets_no_heartbeat_and_heat_is_shed():
    loop = Loop(supervisor(heartbeat_period_s=1.0, write_refresh_s=60.0))
    loop.run(0.0, 10.0)
    ceiling_before = loop.result.status["cdu_ceiling_c"]  # type: ignore[union-attr]
    loop.view.stale.add("cdu-2")
    table = [  # (now_s, control_mode 0 written to cdu-2?)
        (11.0, True),
        (12.0, False),  # a lease: not repeated every cycle
        (75.0, True),  # ... but refreshed after write_refresh_s
    ]
    for now_s, mode_written in table:
        loop.view.stale.discard("cdu-2")
        loop.view.stale.add("cdu-2")
        result = loop.at(now_s)
        mode = written(result, "cdu-2", "control_mode")
        assert (mode is not None) == mode_written, now_s
        if mode is not None:
            assert mode.value == 0.0
            assert mode.reason == "safe_state:cdu_data_stale"
        assert written(result, "cdu-2", "heartbeat") is None
        assert written(result, "cdu-2", "tcs_supply_setpoint_c") is None
        assert written(result, "cdu-1", "heartbeat") is not None
        assert "cdu-2" in str(result.status["stale_devices"])
        assert "safe_state:cdu_data_stale" in str(result.status["overrides"])
        # Stop raising: the ceiling never goes up while a CDU is blind.
        assert result.status["cdu_ceiling_c"] <= ceiling_before + 1e-9
    # Shed: the dry coolers go to their stale setpoint (fast ramp down), never above it later.
    loop.run(76.0, 200.0)
    assert value(loop.view, "hp-plc", "dry_cooler_setpoint_c") == pytest.approx(30.0)
    assert "override:cdu_data_stale" in str(loop.result.status["overrides"])  # type: ignore[union-attr]


def test_stale_meter_freezes_the_order_loop_and_drops_the_trim():
    loop = Loop()
    loop.view.set("heat-meter", heat_power_kw=11500.0)  # under-delivering: the order PI trims up
    loop.run(0.0, 400.0)
    status = loop.result.status  # type: ignore[union-attr]
    trim_kw = status["order_trim_kw"]
    assert trim_kw > 0.0
    loop.view.stale.add("heat-meter")
    for now_s in (401.0, 402.0, 500.0, 900.0):
        status = loop.at(now_s).status
        assert status["order_trim_kw"] == trim_kw  # frozen, not integrating, not reset
        assert status["dh_trim_k"] == 0.0  # the PLC's own supply control, no trim
        assert "safe_state:meter_stale" in str(status["overrides"])
    assert value(loop.view, "hp-plc", "hp_supply_setpoint_c") == pytest.approx(72.0)
    # within the limit's deadband (50 kW: the write economy)
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") == pytest.approx(12000.0 + trim_kw, abs=50.0)


def test_a_noisy_reading_that_stops_moving_counts_as_stale():
    # The meter's float readings flicker every read (noise); frozen, they are stale after 120 s.
    loop = Loop(supervisor(stuck_after_s=120.0))
    rng = random.Random(3)
    for now_s in range(60):
        loop.view.set("heat-meter", flow_temp_c=72.0 + rng.gauss(0.0, 0.02), heat_power_kw=12000.0 + rng.gauss(0, 20))
        assert "heat-meter" not in str(loop.at(float(now_s)).status["stale_devices"])
    table = [(60.0, False), (120.0, False), (178.0, False), (179.0, True), (300.0, True)]  # frozen at 59 s
    for now_s, stale in table:
        status = loop.at(now_s).status
        assert ("heat-meter" in str(status["stale_devices"])) == stale, now_s
    loop.view.set("heat-meter", flow_temp_c=72.01, heat_power_kw=12001.0)  # moves again
    assert "heat-meter" not in str(loop.at(301.0).status["stale_devices"])


@pytest.mark.parametrize(
    ("name", "steps", "witness_moves_k", "stale_at_end"),
    [
        # (0.1 K steps, one at a time: a quantised quiet sensor), witness still: live, for hours.
        ("coarse sensor on a steady process", [43.0, 43.1, 43.0, 43.1, 43.0], 0.0, False),
        ("coarse sensor, witness moved 0.3 K", [43.0, 43.1, 43.0], 0.3, False),
        ("coarse sensor, witness moved 1.0 K", [43.0, 43.1, 43.0], 1.0, True),
        ("never changed, witness still", [43.0], 0.0, False),
        ("never changed, witness moved 1.0 K", [43.0], 1.0, True),
        ("noisy sensor (steps of 0.01-0.05 K), frozen", [43.0, 43.01, 43.05, 43.02, 43.06, 43.03], 0.0, True),
    ],
)
def test_frozen_detection_knows_resolution_and_noise(name, steps, witness_moves_k, stale_at_end):
    loop = Loop(supervisor(stuck_after_s=120.0))
    now_s = 0.0
    for value_c in steps:
        loop.view.set("cdu-1", tcs_supply_temp_c=value_c)
        loop.at(now_s)
        now_s += 1.0
    loop.view.pinned.add("cdu-1")
    loop.view.set("cdu-1", tcs_supply_temp_2_c=steps[-1] + witness_moves_k)
    stale = False
    for later_s in range(int(now_s), 4 * 3600, 30):
        stale = "cdu-1" in str(loop.at(float(later_s)).status["stale_devices"])
        if stale:
            break
    assert stale == stale_at_end, name


def test_stale_plc_gets_no_writes_at_all():
    loop = Loop(supervisor(heartbeat_period_s=1.0))
    loop.at(0.0)
    loop.view.stale.add("hp-plc")
    for now_s in (1.0, 2.0, 70.0, 200.0):
        result = loop.at(now_s)
        assert [w for w in result.writes if w.device == "hp-plc"] == []
        assert "safe_state:hp_plc_stale" in str(result.status["overrides"])
        assert written(result, "cdu-1", "heartbeat") is not None  # the others carry on


def test_unknown_facility_water_sends_the_cdus_to_the_conservative_setpoint():
    loop = Loop()
    loop.run(0.0, 10.0)
    loop.view.stale.update({"hp-plc", "panel-pc"})
    loop.run(11.0, 200.0)
    assert value(loop.view, "cdu-1", "tcs_supply_setpoint_c") == pytest.approx(40.0)
    assert "safe_state:fws_unknown" in str(loop.result.status["overrides"])  # type: ignore[union-attr]


# -- utility link ----------------------------------------------------------------------------------


def test_utility_link_lost_holds_the_order_then_follows_the_weather_curve():
    loop = Loop(supervisor(utility_hold_s=900.0))
    curve_c = weather_curve_supply_c(2.0, slope=1.6, room_c=20.0, offset_k=8.0, min_c=65.0, max_c=85.0)
    table = [  # (now_s, link_ok, order source, requirement °C, order kW)
        (0.0, 1.0, "utility", 72.0, 12000.0),
        (10.0, 0.0, "held", 72.0, 12000.0),
        (500.0, 0.0, "held", 72.0, 12000.0),
        (909.0, 0.0, "held", 72.0, 12000.0),
        (910.0, 0.0, "weather_curve", curve_c, 12000.0),  # hold_s after the loss
        (2000.0, 0.0, "weather_curve", curve_c, 12000.0),
        (2001.0, 1.0, "utility", 74.0, 14000.0),  # back: the utility's current order at once
    ]
    for now_s, link_ok, source, requirement_c, order_kw in table:
        if link_ok:
            loop.view.set("panel-pc", utility_link_ok=1.0, utility_supply_temp_c=74.0 if now_s else 72.0)
            loop.view.set("panel-pc", utility_heat_order_mw=14.0 if now_s else 12.0)
        else:
            loop.view.set("panel-pc", utility_link_ok=0.0)
        status = loop.at(now_s).status
        assert status["order_source"] == source, now_s
        assert status["dh_requirement_c"] == pytest.approx(requirement_c), now_s
        assert status["heat_order_kw"] == pytest.approx(order_kw), now_s
        assert status["alarm_utility_link"] == (not link_ok)


def test_a_stale_panel_counts_as_a_lost_link():
    loop = Loop(supervisor(utility_hold_s=60.0))
    loop.at(0.0)
    loop.view.stale.add("panel-pc")
    assert loop.at(1.0).status["order_source"] == "held"
    assert loop.at(61.0).status["order_source"] == "weather_curve"
    assert loop.at(62.0).status["dh_weather_curve_c"] == pytest.approx(loop.result.status["dh_requirement_c"])  # type: ignore[union-attr]


def test_an_old_order_counts_as_a_lost_link():
    loop = Loop()
    loop.at(0.0)
    loop.view.set("panel-pc", utility_order_age_s=600.0)  # link "ok", but nothing new for 10 min
    assert loop.at(1.0).status["order_source"] == "held"


# -- overrides -------------------------------------------------------------------------------------


def test_dh_over_temperature_override_wins_the_min_select():
    loop = Loop()
    loop.run(0.0, 5.0)
    loop.view.set("heat-meter", flow_temp_c=88.0)
    loop.view.set("hp-plc", dh_supply_temp_c=88.0)
    result = loop.at(6.0)
    setpoint = written(result, "hp-plc", "hp_supply_setpoint_c")
    limit = written(loop.at(7.0), "hp-plc", "heat_power_limit_kw")  # ramping down: one deadband (50 kW) later
    assert setpoint is not None
    assert setpoint.reason == "override:dh_over_temperature"
    assert setpoint.value < 72.0
    assert limit is not None
    assert limit.reason == "override:dh_over_temperature"
    assert limit.value < 12000.0
    assert "override:dh_over_temperature" in str(result.status["overrides"])


def test_cdu_valve_saturated_backs_that_cdu_off_alone_then_it_rises_slowly_again():
    """On a shared facility header every CDU backing off would open every valve and starve the short one."""
    sup = supervisor(cdu_raise_hold_s=300.0)
    loop = Loop(sup)
    loop.run(0.0, 10.0)
    assert value(loop.view, "cdu-2", "tcs_supply_setpoint_c") == pytest.approx(43.0)
    loop.view.set("cdu-1", valve_feedback_pct=100.0)
    result = loop.run(11.0, 70.0)  # one minute of back-off at 3 K/min
    assert written(result, "cdu-1", "tcs_supply_setpoint_c").reason == "override:cdu_cannot_hold"  # type: ignore[union-attr]
    assert value(loop.view, "cdu-1", "tcs_supply_setpoint_c") == pytest.approx(40.0, abs=0.06)
    assert value(loop.view, "cdu-2", "tcs_supply_setpoint_c") == pytest.approx(43.0)  # held
    assert result.status["cdu_ceiling_c"] == pytest.approx(43.0)
    assert "override:cdu_cannot_hold" in str(result.status["overrides"])
    loop.view.set("cdu-1", valve_feedback_pct=60.0)
    table = [  # (now_s, expected setpoint of cdu-1): back up at +0.5 K/min to the (held) ceiling
        (100.0, 40.25),
        (370.0, 42.5),
        (490.0, 43.0),
        (1000.0, 43.0),  # never above it_limit - margin
    ]
    last_s = 70.0
    for now_s, expected_c in table:
        loop.run(last_s + 1.0, now_s)
        assert value(loop.view, "cdu-1", "tcs_supply_setpoint_c") == pytest.approx(expected_c, abs=0.15), now_s
        assert value(loop.view, "cdu-2", "tcs_supply_setpoint_c") == pytest.approx(43.0), now_s
        last_s = now_s


def test_rack_loop_near_its_limit_backs_off():
    loop = Loop()
    loop.run(0.0, 5.0)
    loop.view.set("cdu-2", tcs_supply_temp_2_c=44.5)  # the second sensor is the hotter one
    result = loop.at(6.0)
    assert "override:rack_near_limit" in str(result.status["overrides"])
    assert result.status["cdu_ceiling_c"] < 43.0


def test_facility_water_too_hot_lowers_the_dry_coolers_and_backs_the_cdus_off():
    loop = Loop()
    loop.run(0.0, 5.0)
    loop.view.set("hp-plc", fws_supply_temp_c=38.5)
    dry = written(loop.at(6.0), "hp-plc", "dry_cooler_setpoint_c")
    assert dry is not None
    assert dry.reason == "override:fws_too_hot"
    result = loop.run(7.0, 30.0)
    assert value(loop.view, "hp-plc", "dry_cooler_setpoint_c") < 35.0
    assert "override:fws_too_hot" in str(result.status["overrides"])
    assert value(loop.view, "cdu-1", "tcs_supply_setpoint_c") < 43.0


@pytest.mark.parametrize(
    ("signals", "refusal"),
    [
        ({"dh_pump_tripped": 1.0}, "dh_pump_trip"),
        ({"dh_return_temp_c": 60.0}, "dh_return_too_hot"),
        ({"interlock_status": 2.0}, "dh_return_too_hot"),
    ],
)
def test_when_the_dh_side_takes_no_heat_it_goes_to_the_dry_coolers(signals, refusal):
    loop = Loop()
    loop.run(0.0, 5.0)
    loop.view.set("hp-plc", **signals)
    if "dh_return_temp_c" in signals:
        loop.view.set("heat-meter", return_temp_c=signals["dh_return_temp_c"])
    loop.state = dataclasses.replace(loop.state, leases={})  # forget the leases: every value is written now
    result = loop.at(6.0)
    enable = written(result, "hp-plc", "dry_cooler_enable")
    assert enable is not None
    assert enable.value == 1.0
    assert enable.reason == "override:dh_cannot_take_heat"
    assert result.status["dh_takes_heat"] is False
    assert refusal in str(result.status["dh_refusals"])
    assert value(loop.view, "hp-plc", "dry_cooler_setpoint_c") <= 38.0 - 2.0  # never above the FWS limit


def test_order_zero_stops_the_heat_pumps_and_sheds_to_the_dry_coolers():
    loop = Loop()
    loop.run(0.0, 5.0)
    loop.view.set("panel-pc", utility_heat_order_mw=0.0)
    result = loop.run(6.0, 600.0)
    assert value(loop.view, "hp-plc", "hp_enable") == 0.0
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") == 0.0
    assert "order_zero" in str(result.status["dh_refusals"])


def test_heat_pump_capacity_caps_the_limit_until_the_next_one_runs():
    loop = Loop()
    loop.view.set("panel-pc", utility_heat_order_mw=18.0)
    loop.view.set("hp-plc", hp_running_count=3.0, hx_heat_kw=3000.0)
    result = loop.run(0.0, 300.0)
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") == pytest.approx(3000.0 + 3 * 4000.0 * 0.98, abs=10.0)
    assert "override:heat_pump_capacity" in str(result.status["overrides"])
    loop.view.set("hp-plc", hp_running_count=4.0)
    loop.run(301.0, 400.0)
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") > 18000.0 - 1000.0


# -- writes: clamped, ramped, leased ----------------------------------------------------------------


def test_setpoints_are_clamped_to_the_profile_and_ramped():
    loop = Loop()
    loop.at(0.0)
    loop.view.set("panel-pc", utility_supply_temp_c=95.0)  # nonsense from the utility
    previous_c = value(loop.view, "hp-plc", "hp_supply_setpoint_c")
    table = [1.0, 2.0, 3.0, 33.0, 34.0, 400.0]  # includes 30 s and 366 s jumps
    last_s = 0.0
    allowed_k = 0.01
    for now_s in table:
        loop.at(now_s)
        setpoint_c = value(loop.view, "hp-plc", "hp_supply_setpoint_c")
        allowed_k += 6.0 / 60.0 * min(now_s - last_s, 10.0)  # 6 K/min, at most 10 cycles of catch-up
        assert setpoint_c - previous_c <= allowed_k, now_s  # since the last write (min interval 5 s)
        assert setpoint_c <= 85.0
        if setpoint_c != previous_c:
            allowed_k = 0.01
        previous_c, last_s = setpoint_c, now_s
    loop.run(401.0, 600.0)
    assert value(loop.view, "hp-plc", "hp_supply_setpoint_c") == 85.0


def test_no_write_is_ever_outside_the_profile_limits():
    rng = random.Random(7)
    loop = Loop()
    signals = [
        ("heat-meter", "flow_temp_c", 20.0, 120.0),
        ("heat-meter", "heat_power_kw", -5000.0, 40000.0),
        ("hp-plc", "fws_supply_temp_c", 10.0, 60.0),
        ("hp-plc", "dh_supply_temp_c", 20.0, 120.0),
        ("hp-plc", "hp_source_inlet_temp_c", 0.0, 60.0),
        ("panel-pc", "utility_supply_temp_c", -20.0, 150.0),
        ("panel-pc", "utility_heat_order_mw", -10.0, 80.0),
        ("cdu-1", "tcs_supply_temp_c", 10.0, 70.0),
        ("cdu-1", "valve_feedback_pct", 0.0, 100.0),
        ("cdu-2", "it_limit_c", 20.0, 70.0),
    ]
    now_s = 0.0
    for _ in range(2000):
        device, signal, low, high = rng.choice(signals)
        loop.view.set(device, **{signal: rng.uniform(low, high)})
        now_s += rng.choice((1.0, 1.0, 1.0, 5.0, 120.0))
        for write in loop.at(now_s).writes:
            low_w, high_w = LIMITS[(write.device, write.signal)]
            assert low_w <= write.value <= high_w, write
            assert math.isfinite(write.value)


def test_an_unchanged_setpoint_is_a_lease_refreshed_after_its_period_one_output_a_minute():
    loop = Loop(supervisor(write_refresh_s=300.0))
    loop.run(0.0, 5.0)
    refreshed: dict[str, list[float]] = {}
    for now_s in range(6, 700):
        for write in loop.at(float(now_s)).writes:
            if write.device == "hp-plc" and write.reason != "heartbeat":
                refreshed.setdefault(write.signal, []).append(float(now_s))
    times = sorted(t for ts in refreshed.values() for t in ts)
    assert set(refreshed) == {
        "hp_enable",
        "hp_supply_setpoint_c",
        "heat_power_limit_kw",
        "dry_cooler_enable",
        "dry_cooler_setpoint_c",
    }
    assert times[0] >= 300.0  # nothing before the refresh period: the values did not change
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(times))  # outputs take turns, one a minute


def test_a_device_that_fell_back_is_taken_over_again_bumplessly():
    loop = Loop()
    loop.run(0.0, 10.0)
    # cdu-1's watchdog fired: local mode, its setpoint register back at the local value.
    loop.view.set("cdu-1", control_mode=0.0, tcs_supply_setpoint_c=40.0)
    result = loop.at(20.0)
    modes = [w for w in result.writes if w.device == "cdu-1" and w.signal in ("control_mode", "tcs_supply_setpoint_c")]
    assert [w.signal for w in modes] == ["control_mode", "tcs_supply_setpoint_c"]  # mode first
    assert modes[0].value == 1.0
    assert modes[1].value == pytest.approx(40.0, abs=0.1)  # from where it is, not a jump to 43
    loop.run(21.0, 400.0)
    assert value(loop.view, "cdu-1", "tcs_supply_setpoint_c") == pytest.approx(43.0)


# -- manual mode and commands -----------------------------------------------------------------------


def test_auto_manual_auto_is_bumpless():
    loop = Loop()
    loop.view.set("heat-meter", heat_power_kw=11800.0)
    loop.run(0.0, 600.0)
    supply_c = value(loop.view, "hp-plc", "hp_supply_setpoint_c")
    limit_kw = value(loop.view, "hp-plc", "heat_power_limit_kw")
    loop.command(mode="manual")
    result = loop.at(601.0)
    assert result.status["mode"] == "manual"
    assert value(loop.view, "hp-plc", "hp_supply_setpoint_c") == supply_c
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") == limit_kw
    loop.command(manual_supply_temp_c=74.0)
    loop.run(602.0, 700.0)
    assert value(loop.view, "hp-plc", "hp_supply_setpoint_c") == pytest.approx(74.0)
    loop.command(mode="manual", manual_supply_temp_c=supply_c)
    loop.run(701.0, 800.0)
    loop.command(mode="auto")
    before_c = value(loop.view, "hp-plc", "hp_supply_setpoint_c")
    before_kw = value(loop.view, "hp-plc", "heat_power_limit_kw")
    loop.at(801.0)
    assert value(loop.view, "hp-plc", "hp_supply_setpoint_c") == pytest.approx(before_c, abs=0.05)
    assert value(loop.view, "hp-plc", "heat_power_limit_kw") == pytest.approx(before_kw, abs=20.0)


def test_manual_mode_keeps_the_it_overrides():
    loop = Loop()
    loop.at(0.0)
    loop.command(mode="manual", manual_supply_temp_c=80.0, manual_heat_power_kw=15000.0)
    loop.view.set("heat-meter", flow_temp_c=88.0)
    result = loop.at(1.0)
    assert "override:dh_over_temperature" in str(result.status["overrides"])


def test_the_panel_switch_is_an_operator_command():
    loop = Loop()
    loop.at(0.0)
    loop.view.set("panel-pc", operator_mode=1.0, manual_supply_temp_c=70.0, manual_heat_power_mw=10.0)
    assert loop.at(1.0).status["mode"] == "manual"
    assert loop.state.manual_supply_temp_c == 70.0
    assert loop.state.manual_heat_power_kw == 10000.0
    loop.command(mode="auto")  # over MQTT: the panel still says manual, but has not changed
    assert loop.at(2.0).status["mode"] == "auto"
    loop.view.set("panel-pc", operator_mode=0.0)
    assert loop.at(3.0).status["mode"] == "off"


@pytest.mark.parametrize(
    ("command", "accepted", "reason"),
    [
        ({"mode": "auto"}, True, "mode auto"),
        ({"mode": "manual", "manual_supply_temp_c": 70, "manual_heat_power_kw": 9000.0}, True, "mode manual"),
        ({"mode": "off"}, True, "mode off"),
        ({"manual_supply_temp_c": 75.5}, True, "mode auto"),
        ({"mode": "turbo"}, False, "mode must be auto, manual or off"),
        ({"mode": 2}, False, "mode must be auto, manual or off"),
        ({"manual_supply_temp_c": 99.0}, False, "manual_supply_temp_c 99 is outside 50..85"),
        ({"manual_supply_temp_c": 40.0}, False, "outside 50..85"),
        ({"manual_heat_power_kw": -1.0}, False, "manual_heat_power_kw -1 is outside 0..25000"),
        ({"manual_heat_power_kw": 30000.0}, False, "outside 0..25000"),
        ({"manual_supply_temp_c": math.nan}, False, "must be a finite number"),
        ({"manual_supply_temp_c": True}, False, "must be a finite number"),
        ({"manual_supply_temp_c": "70"}, False, "must be a finite number"),
        ({"setpoint": 70.0}, False, "unknown key(s) setpoint"),
        ({}, False, "must name at least one of mode"),
        ("auto", False, "must be a JSON object, got str"),
    ],
)
def test_apply_command_validates_schema_and_limits(command, accepted, reason):
    sup = supervisor()
    state = SupervisorState()
    new_state, ack = sup.apply_command(state, command)
    assert ack.accepted == accepted
    assert reason in ack.reason
    if not accepted:
        assert new_state is state


def test_a_rejected_command_leaves_the_mode_alone():
    loop = Loop()
    loop.at(0.0)
    state, ack = loop.sup.apply_command(loop.state, {"mode": "manual", "manual_supply_temp_c": 200.0})
    assert not ack.accepted
    assert state.mode is Mode.AUTO


# -- configuration and docs -------------------------------------------------------------------------


def test_supervisor_for_the_example_site():
    site = load_site(REPO / "config" / "site.example.yaml")
    sup = supervisor_for_site(site)
    assert sup.cdus == tuple(f"cdu-{i}" for i in range(1, 13))
    assert write_limits_of(site)[("cdu-1", "tcs_supply_setpoint_c")] == (25.0, 45.0)
    assert write_limits_of(site)[("hp-plc", "heat_power_limit_kw")] == (0.0, 25000.0)
    assert ("heat-meter", "heartbeat") not in write_limits_of(site)
    # Only role outputs and declared heartbeats: the panel's writable operator nodes are not ours.
    assert ("panel-pc", "operator_mode") not in write_limits_of(site)
    assert ("hp-plc", "alarm_reset") not in write_limits_of(site)
    assert ("cdu-1", "watchdog_timeout_s") not in write_limits_of(site)


def test_supervisor_needs_cdus():
    devices = {name: ControlledDevice(name, profile, PROFILE_OF[profile]) for name, profile in DEVICES.items()}
    with pytest.raises(ValueError, match="no CDUs"):
        build_role_map(ControlConfig(), devices, cdus=())


def test_config_rejects_unknown_keys_and_inconsistent_values():
    with pytest.raises(ValueError, match="extra"):
        ControlConfig.model_validate({"cycle": 1.0})
    with pytest.raises(ValueError, match="heartbeat_period_s"):
        ControlConfig(cycle_s=2.0, heartbeat_period_s=1.0)


def test_every_config_key_is_documented_in_docs_control():
    text = (REPO / "docs" / "control.md").read_text(encoding="utf-8")
    missing = [name for name in ControlConfig.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/control.md does not describe {missing}"


# -- write economy -----------------------------------------------------------------------------------


def test_a_value_hovering_between_two_steps_is_not_written_back_and_forth():
    from gateway.control.writes import Lease, OutputSpec, WriteBook  # noqa: PLC0415

    spec = OutputSpec("sp", low=50.0, high=85.0, resolution=0.05, deadband=0.05, min_interval_s=5.0)
    leases = {("plc", "sp"): Lease(73.0, 0.0)}
    written = []
    for step, target in enumerate([73.03, 73.02, 73.04, 73.026, 73.049, 73.03] * 5):
        book = WriteBook(
            {("plc", "sp"): spec}, {}, ramps={}, leases=leases, now_s=10.0 + 6 * step, refresh_s=600.0, grace_s=5.0
        )
        book.propose("plc", "sp", target, "dh_trim")
        leases = book.leases
        written += book.writes
    assert written == []  # within one deadband of what the device holds: nothing to say
    book = WriteBook({("plc", "sp"): spec}, {}, ramps={}, leases=leases, now_s=200.0, refresh_s=600.0, grace_s=5.0)
    assert book.propose("plc", "sp", 73.06, "dh_trim") == 73.05  # moved a deadband: written, rounded
    assert [w.value for w in book.writes] == [73.05]


def test_a_changed_value_waits_its_minimum_interval_unless_it_is_an_override():
    from gateway.control.writes import Lease, OutputSpec, WriteBook  # noqa: PLC0415

    spec = OutputSpec("sp", low=20.0, high=45.0, resolution=0.1, deadband=0.1, min_interval_s=10.0)
    leases = {("cdu", "sp"): Lease(40.0, 0.0)}

    def offer(now_s: float, target: float, reason: str) -> list[float]:
        book = WriteBook({("cdu", "sp"): spec}, {}, ramps={}, leases=leases, now_s=now_s, refresh_s=600.0, grace_s=5.0)
        book.propose("cdu", "sp", target, reason)
        return [w.value for w in book.writes]

    assert offer(3.0, 41.0, "source_optimisation") == []  # 3 s after the last write
    assert offer(3.0, 38.0, "override:rack_near_limit") == [38.0]  # IT first: at once
    assert offer(10.0, 41.0, "source_optimisation") == [41.0]


def test_a_device_written_beyond_its_budget_is_named_in_the_status():
    loop = Loop(supervisor(write_budget_per_h=6.0))  # one write per ten minutes at most
    first = loop.at(0.0)  # take-over: mode and setpoint to each CDU, five outputs to the PLC
    assert set(str(first.status["write_budget_exceeded"]).split(",")) == {"cdu-1", "cdu-2", "hp-plc"}
    quiet = loop.run(1.0, 30.0)
    assert quiet.status["write_budget_exceeded"] == ""
    assert quiet.status["heartbeat_writes"] + quiet.status["setpoint_writes"] == quiet.status["writes"]


def test_small_steps_on_two_outputs_of_one_device_cost_one_write_a_minute():
    from gateway.control.writes import Lease, OutputSpec, WriteBook  # noqa: PLC0415

    specs = {
        ("plc", "sp"): OutputSpec("sp", low=50.0, high=85.0, resolution=0.05, deadband=0.05, min_interval_s=5.0),
        ("plc", "limit"): OutputSpec(
            "limit", low=0.0, high=25000.0, resolution=50.0, deadband=50.0, min_interval_s=5.0
        ),
    }
    leases = {("plc", "sp"): Lease(72.0, 0.0), ("plc", "limit"): Lease(12000.0, 0.0)}

    def cycle(now_s: float, sp: float, limit: float) -> list[str]:
        nonlocal leases
        book = WriteBook(specs, {}, ramps={}, leases=leases, now_s=now_s, refresh_s=600.0, grace_s=5.0)
        book.propose("plc", "sp", sp, "dh_trim")
        book.propose("plc", "limit", limit, "heat_order")
        leases = book.leases
        return [w.signal for w in book.writes]

    assert cycle(100.0, 72.05, 12050.0) == ["sp"]  # the trims moved one deadband each: one write
    assert cycle(130.0, 72.05, 12050.0) == []  # the limit waits for the minute
    assert cycle(160.0, 72.05, 12050.0) == ["limit"]
    assert cycle(162.0, 72.05, 12500.0) == []  # a larger step waits for its own interval only...
    assert cycle(165.0, 72.05, 12500.0) == ["limit"]  # ...not for the device's minute
