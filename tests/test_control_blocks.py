"""Tests of the small control blocks, as tables of cycles with simulated time."""

from __future__ import annotations

import math

import pytest

from gateway.control.blocks import (
    AlarmSense,
    AlarmState,
    DelayedAlarm,
    HoldState,
    HoldThenFallback,
    MinOnOffTimer,
    OnOffState,
    OrderSource,
    RampLimiter,
    RampState,
    Selection,
    Staleness,
    clamp,
    select_max,
    select_min,
    weather_curve_supply_c,
)

# --- clamp --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high", "expected"),
    [
        (5.0, 0.0, 10.0, 5.0),
        (-1.0, 0.0, 10.0, 0.0),
        (11.0, 0.0, 10.0, 10.0),
        (3.0, 3.0, 3.0, 3.0),
        (math.inf, 0.0, 10.0, 10.0),
    ],
)
def test_clamp(value, low, high, expected):
    assert clamp(value, low, high) == expected


@pytest.mark.parametrize(("value", "low", "high"), [(1.0, 2.0, 1.0), (math.nan, 0.0, 1.0)])
def test_clamp_rejects_inverted_limits_and_nan(value, low, high):
    with pytest.raises(ValueError, match="clamp"):
        clamp(value, low, high)


# --- ramp ---------------------------------------------------------------------------------


def test_ramp_limiter_table():
    ramp = RampLimiter(up_per_s=2.0, down_per_s=1.0)
    cycles = [  # (now_s, target, expected value, expected time_s)
        (0.0, 10.0, 10.0, 0.0),  # first call starts at the target
        (1.0, 20.0, 12.0, 1.0),  # up 2/s
        (1.0, 20.0, 12.0, 1.0),  # same tick: no movement
        (3.5, 20.0, 17.0, 3.5),  # uneven dt 2.5 s: +5
        (5.0, 20.0, 20.0, 5.0),  # would reach 20 at 4.0: stops at the target
        (6.0, 0.0, 19.0, 6.0),  # down 1/s
        (4.0, 0.0, 19.0, 4.0),  # clock went backwards: no movement, time base restarts
        (7.0, 0.0, 16.0, 7.0),  # 3 s since the restart
        (7.5, 16.4, 16.4, 7.5),  # small move within the rate passes through
    ]
    state = None
    for now_s, target, value, time_s in cycles:
        state = ramp.step(state, target=target, now_s=now_s)
        assert (state.value, state.time_s) == pytest.approx((value, time_s)), now_s


def test_ramp_limiter_starts_from_a_given_present_value():
    ramp = RampLimiter(up_per_s=0.5)
    state = ramp.step(RampState(value=55.0, time_s=100.0), target=65.0, now_s=104.0)
    assert state.value == 57.0
    state = ramp.step(state, target=50.0, now_s=106.0)  # down at the up rate when not given
    assert state.value == 56.0


def test_ramp_limiter_max_dt_limits_the_jump_after_a_pause():
    ramp = RampLimiter(up_per_s=1.0, max_dt_s=5.0)
    state = ramp.step(RampState(value=0.0, time_s=0.0), target=100.0, now_s=3600.0)
    assert state.value == 5.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: RampLimiter(up_per_s=0.0),
        lambda: RampLimiter(up_per_s=1.0, down_per_s=-1.0),
        lambda: RampLimiter(up_per_s=math.nan),
        lambda: RampLimiter(up_per_s=1.0, max_dt_s=0.0),
    ],
)
def test_ramp_limiter_rejects_bad_config(make):
    with pytest.raises(ValueError, match="RampLimiter"):
        make()


def test_ramp_limiter_rejects_nan_target():
    with pytest.raises(ValueError, match="target"):
        RampLimiter(up_per_s=1.0).step(None, target=math.nan, now_s=0.0)


# --- weather curve ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outdoor_c", "slope", "offset_k", "min_c", "max_c", "expected_c"),
    [
        # s 1.0, -12 °C: 20 - (-12) = 32 K; 32**0.8282 = exp(0.8282 * ln 32)
        #   = exp(0.8282 * 3.465736) = exp(2.870322) = 17.642707;
        #   1.0 * 1.8318 * 17.642707 + 20 = 32.317910 + 20 = 52.317910
        (-12.0, 1.0, 0.0, 30.0, 90.0, 52.317910),
        # same with offset +5 K
        (-12.0, 1.0, 5.0, 30.0, 90.0, 57.317910),
        # s 1.4: 1.4 * 32.317910 + 20 = 65.245074
        (-12.0, 1.4, 0.0, 30.0, 90.0, 65.245074),
        # s 1.0, 0 °C: 20**0.8282 = exp(0.8282 * 2.995732) = 11.953994 -> 21.897327 + 20
        (0.0, 1.0, 0.0, 30.0, 90.0, 41.897327),
        # s 1.6, -20 °C: 40**0.8282 = 21.223944 -> 1.6 * 1.8318 * 21.223944 + 20 = 82.204832
        (-20.0, 1.6, 0.0, 30.0, 90.0, 82.204832),
        # clamped up to the hot-water minimum of 65 °C
        (-12.0, 1.0, 0.0, 65.0, 90.0, 65.0),
        # clamped down to the network maximum
        (-20.0, 1.6, 0.0, 30.0, 75.0, 75.0),
        # warmer outside than the room: the difference is 0, T = room + offset -> minimum
        (25.0, 1.0, 0.0, 30.0, 90.0, 30.0),
        (25.0, 1.0, 0.0, 10.0, 90.0, 20.0),
        (20.0, 1.0, 0.0, 10.0, 90.0, 20.0),
    ],
)
def test_weather_curve_hand_computed(outdoor_c, slope, offset_k, min_c, max_c, expected_c):
    supply_c = weather_curve_supply_c(outdoor_c, slope=slope, offset_k=offset_k, min_c=min_c, max_c=max_c)
    assert supply_c == pytest.approx(expected_c, abs=1e-5)


def test_weather_curve_room_temperature_shifts_the_curve():
    # room 22 °C, -12 °C outside: 34**0.8282 = 18.546..., T = 1.8318 * that + 22
    expected_c = 1.8318 * 34.0**0.8282 + 22.0
    supply_c = weather_curve_supply_c(-12.0, slope=1.0, room_c=22.0, min_c=0.0, max_c=100.0)
    assert supply_c == pytest.approx(expected_c)
    assert supply_c > weather_curve_supply_c(-12.0, slope=1.0, min_c=0.0, max_c=100.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"outdoor_c": math.nan}, "outdoor_c"),
        ({"slope": -0.1}, "slope"),
        ({"min_c": 80.0, "max_c": 70.0}, "min_c"),
    ],
)
def test_weather_curve_rejects_bad_input(arguments, message):
    full = {"outdoor_c": 0.0, "slope": 1.0, "min_c": 30.0, "max_c": 90.0} | arguments
    outdoor_c = full.pop("outdoor_c")
    with pytest.raises(ValueError, match=message):
        weather_curve_supply_c(outdoor_c, **full)


# --- delayed alarm ------------------------------------------------------------------------

# |deviation| above 2 K for 120 s raises the alarm; below 1 K clears it.
DEVIATION_ALARM = DelayedAlarm(on_threshold=2.0, off_threshold=1.0, on_delay_s=120.0)


def test_deviation_alarm_on_delay_and_hysteresis():
    cycles = [  # (now_s, |deviation| K, active, since_s, pending_since_s)
        (0.0, 0.5, False, None, None),
        (10.0, 2.5, False, None, 10.0),  # above 2 K: on-delay starts
        (100.0, 2.0, False, None, None),  # exactly 2 K is not above: delay cancelled
        (110.0, 2.5, False, None, 110.0),  # starts again
        (229.0, 3.0, False, None, 110.0),  # 119 s: not yet
        (230.0, 2.1, True, 230.0, None),  # 120 s above 2 K: active
        (240.0, 1.5, True, 230.0, None),  # inside the hysteresis band: stays active
        (250.0, 1.0, True, 230.0, None),  # exactly 1 K is not below: stays
        (260.0, 0.9, False, 260.0, None),  # below 1 K: clears (no off-delay)
        (270.0, 1.9, False, 260.0, None),  # in the band while inactive: nothing pending
        (280.0, 5.0, False, 260.0, 280.0),
        (300.0, 1.5, False, 260.0, None),  # dips into the band: the on-delay restarts
        (310.0, 5.0, False, 260.0, 310.0),
        (430.0, 5.0, True, 430.0, None),
    ]
    state = AlarmState()
    for now_s, deviation_k, active, since_s, pending_since_s in cycles:
        state = DEVIATION_ALARM.step(state, deviation_k, now_s)
        assert (state.active, state.since_s, state.pending_since_s) == (
            active,
            since_s,
            pending_since_s,
        ), now_s


def test_alarm_off_delay():
    alarm = DelayedAlarm(on_threshold=2.0, off_threshold=1.0, on_delay_s=0.0, off_delay_s=30.0)
    cycles = [  # (now_s, value, active)
        (0.0, 3.0, True),  # no on-delay
        (10.0, 0.5, True),  # off-delay starts
        (39.0, 0.5, True),
        (40.0, 0.5, False),  # 30 s below 1: clears
    ]
    state = AlarmState()
    for now_s, value, active in cycles:
        state = alarm.step(state, value, now_s)
        assert state.active is active, now_s


def test_low_alarm_mirrors_high():
    # DH flow below 20 kg/s for 60 s; clears above 25 kg/s.
    alarm = DelayedAlarm(on_threshold=20.0, off_threshold=25.0, on_delay_s=60.0, sense=AlarmSense.LOW)
    cycles = [  # (now_s, flow_kg_s, active)
        (0.0, 100.0, False),
        (10.0, 15.0, False),
        (70.0, 18.0, True),
        (80.0, 22.0, True),  # inside the band
        (90.0, 26.0, False),
    ]
    state = AlarmState()
    for now_s, flow_kg_s, active in cycles:
        state = alarm.step(state, flow_kg_s, now_s)
        assert state.active is active, now_s


def test_alarm_clock_going_backwards_restarts_the_delay():
    state = DEVIATION_ALARM.step(AlarmState(), 3.0, 1000.0)
    state = DEVIATION_ALARM.step(state, 3.0, 500.0)
    assert state.pending_since_s == 500.0
    assert not DEVIATION_ALARM.step(state, 3.0, 619.0).active
    assert DEVIATION_ALARM.step(state, 3.0, 620.0).active


@pytest.mark.parametrize(
    "make",
    [
        lambda: DelayedAlarm(on_threshold=1.0, off_threshold=2.0),  # high alarm, off above on
        lambda: DelayedAlarm(on_threshold=2.0, off_threshold=1.0, sense=AlarmSense.LOW),
        lambda: DelayedAlarm(on_threshold=2.0, off_threshold=1.0, on_delay_s=-1.0),
        lambda: DelayedAlarm(on_threshold=math.nan, off_threshold=1.0),
    ],
)
def test_alarm_rejects_bad_config(make):
    with pytest.raises(ValueError, match="DelayedAlarm"):
        make()


# --- minimum on/off times -----------------------------------------------------------------


def test_min_on_off_table():
    timer = MinOnOffTimer(min_on_s=60.0, min_off_s=120.0)
    cycles = [  # (now_s, request_on, force_off, on, last_switch_s, remaining_s)
        (0.0, False, False, False, None, 0.0),
        (5.0, True, False, True, 5.0, 60.0),  # first switch is free
        (30.0, False, False, True, 5.0, 35.0),  # min run: stays on
        (64.9, False, False, True, 5.0, 0.1),
        (65.0, False, False, False, 65.0, 120.0),  # 60 s run: may stop
        (100.0, True, False, False, 65.0, 85.0),  # min off: stays off
        (185.0, True, False, True, 185.0, 60.0),  # 120 s off: may start
        (190.0, True, True, False, 190.0, 120.0),  # forced off inside the min run
        (200.0, True, True, False, 190.0, 110.0),  # forced off while off: nothing changes
        (250.0, True, False, False, 190.0, 60.0),
        (310.0, True, False, True, 310.0, 60.0),
    ]
    state = OnOffState()
    for now_s, request_on, force_off, on, last_switch_s, remaining_s in cycles:
        state = timer.step(state, request_on=request_on, now_s=now_s, force_off=force_off)
        assert (state.on, state.last_switch_s) == (on, last_switch_s), now_s
        assert timer.remaining_s(state, now_s) == pytest.approx(remaining_s), now_s


def test_min_on_off_clock_backwards_counts_the_minimum_again():
    timer = MinOnOffTimer(min_on_s=60.0, min_off_s=60.0)
    state = OnOffState(on=True, last_switch_s=1000.0)
    state = timer.step(state, request_on=False, now_s=100.0)
    assert state == OnOffState(on=True, last_switch_s=100.0)
    assert timer.step(state, request_on=False, now_s=159.0).on
    assert not timer.step(state, request_on=False, now_s=160.0).on


# --- staleness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp_s", "now_s", "fresh"),
    [
        (100.0, 100.0, True),
        (100.0, 105.0, True),
        (100.0, 110.0, True),  # exactly max age
        (100.0, 110.001, False),
        (None, 100.0, False),  # never received
        (math.nan, 100.0, False),
        (100.5, 100.0, True),  # half a second ahead: clock skew, tolerated
        (102.0, 100.0, False),  # two seconds ahead: clock fault
    ],
)
def test_staleness_table(timestamp_s, now_s, fresh):
    staleness = Staleness(max_age_s=10.0, future_tolerance_s=1.0)
    assert staleness.is_fresh(timestamp_s, now_s) is fresh
    assert staleness.is_stale(timestamp_s, now_s) is not fresh


def test_staleness_age():
    staleness = Staleness(max_age_s=10.0)
    assert staleness.age_s(100.0, 104.5) == 4.5
    assert staleness.age_s(None, 104.5) is None


# --- hold then fall back ------------------------------------------------------------------


def test_hold_then_fallback_table():
    # Heat order in MW; fallback 12 MW (in use: what the weather curve asks for).
    block = HoldThenFallback(hold_s=900.0)
    fallback_mw = 12.0
    cycles = [  # (now_s, link_up, order_mw, value_mw, source, hold_remaining_s)
        (0.0, False, None, 12.0, OrderSource.FALLBACK, 0.0),  # nothing ever received
        (10.0, True, 18.0, 18.0, OrderSource.UTILITY, 0.0),
        (20.0, True, 16.5, 16.5, OrderSource.UTILITY, 0.0),
        (60.0, False, None, 16.5, OrderSource.HELD, 900.0),  # link lost at 60 s
        (500.0, False, 99.0, 16.5, OrderSource.HELD, 460.0),  # order while link down: ignored
        (959.0, False, None, 16.5, OrderSource.HELD, 1.0),
        (960.0, False, None, 12.0, OrderSource.FALLBACK, 0.0),  # 900 s: fall back
        (2000.0, False, None, 12.0, OrderSource.FALLBACK, 0.0),
        (2010.0, True, 17.0, 17.0, OrderSource.UTILITY, 0.0),  # back at once
        (2020.0, True, math.nan, 17.0, OrderSource.HELD, 900.0),  # garbled order: hold
        (2030.0, True, None, 17.0, OrderSource.HELD, 890.0),
        (2040.0, True, 15.0, 15.0, OrderSource.UTILITY, 0.0),
    ]
    state = HoldState()
    for now_s, link_up, order_mw, value_mw, source, hold_remaining_s in cycles:
        result = block.step(state, order=order_mw, link_up=link_up, fallback=fallback_mw, now_s=now_s)
        state = result.state
        assert (result.value, result.source) == (value_mw, source), now_s
        assert result.hold_remaining_s == pytest.approx(hold_remaining_s), now_s


def test_hold_then_fallback_uses_the_fallback_value_of_each_cycle():
    # The weather curve moves with the outdoor temperature while in fallback.
    block = HoldThenFallback(hold_s=0.0)
    state = block.step(HoldState(), order=70.0, link_up=True, fallback=65.0, now_s=0.0).state
    first = block.step(state, order=None, link_up=False, fallback=66.0, now_s=1.0)
    second = block.step(first.state, order=None, link_up=False, fallback=67.5, now_s=2.0)
    assert (first.value, first.source) == (66.0, OrderSource.FALLBACK)
    assert (second.value, second.source) == (67.5, OrderSource.FALLBACK)


def test_hold_then_fallback_clock_backwards_restarts_the_hold():
    block = HoldThenFallback(hold_s=900.0)
    state = HoldState(last_order=10.0, link_lost_s=5000.0)
    result = block.step(state, order=None, link_up=False, fallback=1.0, now_s=100.0)
    assert result.state.link_lost_s == 100.0
    assert result.source is OrderSource.HELD


# --- min/max select -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "lowest", "expected"),
    [
        ({"dh_supply": 80.0, "fws_too_hot": 35.0, "heat_pump_limit": 60.0}, True, ("fws_too_hot", 35.0)),
        ({"dh_supply": 30.0, "fws_too_hot": 35.0}, True, ("dh_supply", 30.0)),
        # tie: the first (the normal controller) wins, so no override is reported
        ({"dh_supply": 35.0, "fws_too_hot": 35.0}, True, ("dh_supply", 35.0)),
        ({"a": 1.0, "b": 3.0, "c": 2.0}, False, ("b", 3.0)),
        ({"a": 3.0, "b": 3.0}, False, ("a", 3.0)),
        ({"only": -4.0}, False, ("only", -4.0)),
    ],
)
def test_select_reports_the_winner(candidates, lowest, expected):
    select = select_min if lowest else select_max
    assert select(candidates) == Selection(value=expected[1], name=expected[0])


@pytest.mark.parametrize("candidates", [{}, {"a": 1.0, "b": math.nan}])
def test_select_rejects_empty_and_nan(candidates):
    with pytest.raises(ValueError, match="select"):
        select_min(candidates)
    with pytest.raises(ValueError, match="select"):
        select_max(candidates)
