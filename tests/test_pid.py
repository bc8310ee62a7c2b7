"""PID tests as tables of cycles with simulated time (OpenEMS style).

Each table row is one controller cycle: the time it runs at, its inputs, and what the output
(or the state) must be. Expected numbers are worked out by hand in the comments beside them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import pairwise

import pytest

from gateway.control.pid import (
    Action,
    ControlMode,
    PidConfig,
    PidController,
    PidResult,
    PidState,
    pid_step,
    with_mode,
)

TOLERANCE = 1e-9


def run_cycles(
    config: PidConfig,
    cycles: list[tuple[float, float, float]],
    state: PidState | None = None,
) -> tuple[list[PidResult], PidState]:
    """Run (now_s, setpoint, measurement) cycles; return every result and the final state."""
    state = state if state is not None else PidState()
    results = []
    for now_s, setpoint, measurement in cycles:
        result = pid_step(config, state, setpoint=setpoint, measurement=measurement, now_s=now_s)
        assert result.valid, result.invalid_reason
        results.append(result)
        state = result.state
    return results, state


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ti_s", "td_s", "tt_s", "expected_tt_s"),
    [
        (100.0, 0.0, None, 100.0),  # PI: Tt = Ti
        (100.0, 25.0, None, 50.0),  # PID: Tt = sqrt(100 * 25)
        (100.0, 25.0, 30.0, 30.0),  # given explicitly
        (None, 25.0, None, None),  # no integrator, nothing to track
        (math.inf, 0.0, None, None),  # inf means no integral action too
    ],
)
def test_tracking_time_defaults(ti_s, td_s, tt_s, expected_tt_s):
    config = PidConfig(kp=1.0, ti_s=ti_s, td_s=td_s, tt_s=tt_s, out_min=0.0, out_max=1.0)
    assert config.tracking_time_s == expected_tt_s


def test_derivative_filter_time_from_n_or_given():
    assert PidConfig(kp=1, td_s=10, out_min=0, out_max=1).derivative_filter_time_s == 1.0
    config = PidConfig(kp=1, td_s=10, derivative_filter_n=20, out_min=0, out_max=1)
    assert config.derivative_filter_time_s == 0.5
    config = PidConfig(kp=1, td_s=10, derivative_filter_s=2.5, out_min=0, out_max=1)
    assert config.derivative_filter_time_s == 2.5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kp": 0.0}, "kp"),
        ({"kp": -1.0}, "kp"),
        ({"kp": math.nan}, "kp"),
        ({"out_min": 10.0, "out_max": 0.0}, "out_min/out_max"),
        ({"out_max": math.inf}, "out_min/out_max"),
        ({"ti_s": 0.0}, "ti_s"),
        ({"ti_s": math.nan}, "ti_s"),
        ({"td_s": -1.0}, "td_s"),
        ({"derivative_filter_n": 0.0}, "derivative_filter_n"),
        ({"derivative_filter_s": 0.0}, "derivative_filter_s"),
        ({"tt_s": -5.0}, "tt_s"),
        ({"setpoint_weight": -0.1}, "setpoint_weight"),
        ({"output_ramp_per_s": 0.0}, "output_ramp_per_s"),
        ({"max_dt_s": 0.0}, "max_dt_s"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    arguments = {"kp": 1.0, "out_min": 0.0, "out_max": 100.0} | overrides
    with pytest.raises(ValueError, match=f"PidConfig.{field}"):
        PidConfig(**arguments)


# --- proportional -------------------------------------------------------------------------

P_ONLY = PidConfig(kp=2.0, out_min=-100.0, out_max=100.0)


@pytest.mark.parametrize(
    ("action", "cycles"),
    [
        (
            Action.REVERSE,
            [  # (now_s, setpoint, measurement, expected output = 2 * (sp - y))
                (0.0, 50.0, 45.0, 10.0),
                (1.0, 50.0, 50.0, 0.0),
                (7.0, 50.0, 55.0, -10.0),
                (8.0, 50.0, 0.0, 100.0),  # 2 * 50 = 100, exactly the limit
                (9.0, 50.0, -20.0, 100.0),  # 140 clamped
                (10.0, 60.0, 50.0, 20.0),
            ],
        ),
        (
            Action.DIRECT,
            [  # expected output = 2 * (y - sp)
                (0.0, 50.0, 45.0, -10.0),
                (1.0, 50.0, 55.0, 10.0),
                (2.0, 50.0, 120.0, 100.0),  # 140 clamped
            ],
        ),
    ],
)
def test_proportional_only_response(action, cycles):
    config = PidConfig(kp=2.0, out_min=-100.0, out_max=100.0, action=action)
    results, _ = run_cycles(config, [row[:3] for row in cycles])
    for result, (now_s, _, _, expected) in zip(results, cycles, strict=True):
        assert result.output == pytest.approx(expected, abs=TOLERANCE), now_s


def test_proportional_saturated_flag():
    results, _ = run_cycles(P_ONLY, [(0.0, 50.0, 45.0), (1.0, 50.0, -20.0)])
    assert [r.saturated for r in results] == [False, True]


def test_setpoint_weight_scales_only_the_setpoint_in_p():
    # A fresh state starts as if the loop had been at this setpoint (P = kp * e = 80); a later
    # setpoint step moves P by kp * b * step = 2 * 0.5 * 10 = 10, not kp * 10 = 20.
    config = PidConfig(kp=2.0, setpoint_weight=0.5, out_min=-100.0, out_max=100.0)
    results, _ = run_cycles(config, [(0.0, 60.0, 20.0), (1.0, 70.0, 20.0), (2.0, 70.0, 30.0)])
    assert [r.output for r in results] == pytest.approx([80.0, 90.0, 70.0], abs=TOLERANCE)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("action", [Action.REVERSE, Action.DIRECT])
def test_a_fresh_state_at_zero_error_outputs_zero_whatever_the_setpoint_weight(weight, action):
    # A DH trim (b = 0) on a 72 °C supply used to start at -kp x 72 K, clamped to -2 K.
    config = PidConfig(kp=0.2, ti_s=60.0, setpoint_weight=weight, out_min=-2.0, out_max=2.0, action=action)
    results, _ = run_cycles(config, [(0.0, 72.0, 72.0), (1.0, 72.0, 72.0), (10.0, 72.0, 72.0)])
    assert [r.output for r in results] == pytest.approx([0.0, 0.0, 0.0], abs=TOLERANCE)


def test_setpoint_weight_softens_setpoint_step_but_integral_sees_full_error():
    # PI, kp 2, Ti 10 s (Ki 0.2/s), b 0.5; at equilibrium sp = y = 50, I = 50 (bias).
    config = PidConfig(kp=2.0, ti_s=10.0, setpoint_weight=0.5, out_min=-1e3, out_max=1e3)
    state = PidState(last_output=50.0)  # bumpless start: output 50
    cycles = [  # (now_s, setpoint, measurement, expected output)
        (0.0, 50.0, 50.0, 50.0),
        (1.0, 60.0, 50.0, 60.0),  # step of kp*b*10 = 10, not kp*10 = 20
        (2.0, 60.0, 50.0, 62.0),  # the last cycle integrated Ki*e*dt = 0.2*10*1 = 2
    ]
    results, _ = run_cycles(config, [row[:3] for row in cycles], state)
    assert [r.output for r in results] == pytest.approx([row[3] for row in cycles], abs=1e-9)


# --- integral -----------------------------------------------------------------------------


def test_integral_accumulates_with_uneven_dt():
    # PI kp 1, Ti 10 s -> Ki 0.1/s. The output uses the integral as it stood before this
    # cycle; then the integral adds Ki * e * dt with dt the real time since the last cycle.
    config = PidConfig(kp=1.0, ti_s=10.0, out_min=-1e3, out_max=1e3)
    cycles = [  # (now_s, error, expected output = e + I_before, expected I after)
        (0.0, 2.0, 2.0, 0.0),  # first call: dt = 0
        (1.0, 2.0, 2.0, 0.2),  # + 0.1*2*1
        (1.5, 4.0, 4.2, 0.4),  # + 0.1*4*0.5
        (4.0, -1.0, -0.6, 0.15),  # + 0.1*(-1)*2.5
        (4.25, 8.0, 8.15, 0.35),  # + 0.1*8*0.25
        (10.0, 1.0, 1.35, 0.925),  # + 0.1*1*5.75
    ]
    state = PidState()
    for now_s, error, expected_output, expected_integral in cycles:
        result = pid_step(config, state, setpoint=50.0, measurement=50.0 - error, now_s=now_s)
        state = result.state
        assert result.output == pytest.approx(expected_output, abs=TOLERANCE), now_s
        assert state.integral == pytest.approx(expected_integral, abs=TOLERANCE), now_s


@pytest.mark.parametrize(
    "times_s",
    [
        [0.0, 10.0],
        [float(t) for t in range(11)],
        [0.0, 0.1, 0.2, 3.7, 3.7, 9.99, 10.0],
        [0.0, 2.5, 5.0, 7.5, 10.0],
    ],
)
def test_integral_of_constant_error_does_not_depend_on_how_time_is_cut(times_s):
    # Ki * e * T = 0.1 * 3 * 10 = 3, whatever the cycle times.
    config = PidConfig(kp=1.0, ti_s=10.0, out_min=-1e3, out_max=1e3)
    _, state = run_cycles(config, [(t, 50.0, 47.0) for t in times_s])
    assert state.integral == pytest.approx(3.0, abs=TOLERANCE)


# --- anti-windup --------------------------------------------------------------------------


@dataclass
class ClampedIntegralPi:
    """The naive reference: OpenEMS PidFilter / simple-pid style, I term clamped to limits.

    With `clamp_integral` False it is the textbook PI with no anti-windup at all.
    """

    kp: float
    ki_per_s: float
    out_min: float
    out_max: float
    integral: float = 0.0
    clamp_integral: bool = True

    def step(self, setpoint, measurement, dt_s, feedforward=0.0):
        error = setpoint - measurement
        self.integral += self.ki_per_s * error * dt_s
        if self.clamp_integral:
            self.integral = min(max(self.integral, self.out_min), self.out_max)
        wanted = self.kp * error + self.integral + feedforward
        return min(max(wanted, self.out_min), self.out_max)


def seconds_at_limit_after_sign_change(outputs, change_index, limit):
    """Seconds (1 s cycles) the output stays at `limit` from the cycle the error turns."""
    for index in range(change_index, len(outputs)):
        if outputs[index] < limit:
            return index - change_index
    return math.inf


def test_back_calculation_leaves_saturation_at_once_where_clamped_integral_takes_1399_s():
    # DH supply loop with a load feedforward of 60 %: the supply is 20 K short for 1000 s
    # (heat pumps at 100 %), then it overshoots by 2 K. kp 2 %/K, Ti 100 s (Ki 0.02 %/(K s)).
    # Back-calculation keeps v near the limit: v - u -> Ki*e*dt/(1-exp(-dt/Tt)) = 40.2, so
    # I = 100 + 40.2 - P(40) - FF(60) = 40.2, and at e = -2 K: v = -4 + 40.2 + 60 = 96.2 < 100.
    # The clamped integral lets I reach 100 (it does not know about P and FF): at e = -2 K
    # v = -4 + 100 + 60 = 156, and I must fall 56 % at 0.04 %/s: 1400 s at the limit.
    # With no anti-windup at all I reaches 0.4 %/s * 999 s = 399.6: (399.6 + 56) / 0.04 s.
    config = PidConfig(kp=2.0, ti_s=100.0, out_min=0.0, out_max=100.0)
    naive = ClampedIntegralPi(kp=2.0, ki_per_s=0.02, out_min=0.0, out_max=100.0)
    none = ClampedIntegralPi(kp=2.0, ki_per_s=0.02, out_min=0.0, out_max=100.0, clamp_integral=False)
    state = PidState()
    ours, theirs, textbook = [], [], []
    saturated = []
    for second in range(10000):
        measurement = 40.0 if second < 1000 else 62.0
        result = pid_step(
            config,
            state,
            setpoint=60.0,
            measurement=measurement,
            now_s=float(second),
            feedforward=60.0,
        )
        state = result.state
        ours.append(result.output)
        saturated.append(result.saturated)
        theirs.append(naive.step(60.0, measurement, 1.0 if second else 0.0, feedforward=60.0))
        textbook.append(none.step(60.0, measurement, 1.0 if second else 0.0, feedforward=60.0))
        if second == 999:
            assert state.integral == pytest.approx(40.2, abs=0.01)
            assert naive.integral == 100.0

    assert all(saturated[10:1000])
    assert ours[999] == 100.0
    assert theirs[999] == 100.0
    assert seconds_at_limit_after_sign_change(ours, 1000, 100.0) == 0
    assert ours[1000] == pytest.approx(96.2, abs=0.01)
    assert seconds_at_limit_after_sign_change(theirs, 1000, 100.0) == 1399
    assert seconds_at_limit_after_sign_change(textbook, 1000, 100.0) == 8889


@pytest.mark.parametrize(
    ("tt_s", "feedforward"),
    [(None, 0.0), (None, 60.0), (10.0, 60.0), (100.0, 90.0), (50.0, 0.0)],
)
def test_back_calculation_leaves_limit_within_one_cycle_for_tt_up_to_ti(tt_s, feedforward):
    # With Tt <= Ti, v - u settles at Kp*e*Tt/Ti <= P during saturation, so as soon as the
    # error turns negative v drops below the limit: the bound is one cycle, whatever the
    # saturation lasted and whatever the feedforward.
    config = PidConfig(kp=2.0, ti_s=100.0, tt_s=tt_s, out_min=0.0, out_max=100.0)
    state = PidState()
    outputs = []
    for second in range(5000):
        measurement = 40.0 if second < 4000 else 60.5
        result = pid_step(
            config,
            state,
            setpoint=60.0,
            measurement=measurement,
            now_s=float(second),
            feedforward=feedforward,
        )
        state = result.state
        outputs.append(result.output)
    assert outputs[3999] == 100.0
    assert seconds_at_limit_after_sign_change(outputs, 4000, 100.0) <= 1


class FirstOrderDeadTimePlant:
    """y' = (y0 + gain * u(t - dead) - y) / tau, exact for piecewise-constant u."""

    def __init__(self, *, gain, tau_s, dead_s, y0, u0, buffer_step_s=0.25):
        self.gain = gain
        self.tau_s = tau_s
        self.y0 = y0
        self.measurement = y0 + gain * u0
        self.buffer_step_s = buffer_step_s
        self.delay_line = deque([u0] * round(dead_s / buffer_step_s))

    def advance(self, u, duration_s):
        # Run in fine sub-steps so uneven controller cycles still see the right dead time.
        steps = round(duration_s / self.buffer_step_s)
        decay = math.exp(-self.buffer_step_s / self.tau_s)
        for _ in range(steps):
            self.delay_line.append(u)
            delayed = self.delay_line.popleft()
            self.measurement = decay * self.measurement + (1 - decay) * (self.y0 + self.gain * delayed)
        return self.measurement


# A DH supply temperature driven by heat-pump capacity: 0.5 K/%, 120 s lag, 20 s transport
# delay, 40 °C with the heat pumps off. SIMC tuning with tau_c = dead time:
# Kc = tau / (K * (tau_c + dead)) = 120 / (0.5 * 40) = 6 %/K, Ti = min(tau, 4 * 40) = 120 s.
PLANT = {"gain": 0.5, "tau_s": 120.0, "dead_s": 20.0, "y0": 40.0}
SIMC = PidConfig(kp=6.0, ti_s=120.0, out_min=0.0, out_max=100.0)


def closed_loop(
    controller_step, setpoint_at, *, u0, end_s, cycle_s=(1.0,), plant=PLANT
) -> tuple[list[float], list[float], list[float]]:
    """Run a loop; return times, measurements and outputs. `cycle_s` repeats as a pattern."""
    model = FirstOrderDeadTimePlant(u0=u0, **plant)
    now_s, index = 0.0, 0
    times, measurements, outputs = [], [], []
    while now_s < end_s:
        output = controller_step(now_s, setpoint_at(now_s), model.measurement)
        times.append(now_s)
        measurements.append(model.measurement)
        outputs.append(output)
        cycle = cycle_s[index % len(cycle_s)]
        model.advance(output, cycle)
        now_s += cycle
        index += 1
    return times, measurements, outputs


def pid_loop(config, state):
    holder = {"state": state}

    def step(now_s, setpoint, measurement):
        result = pid_step(config, holder["state"], setpoint=setpoint, measurement=measurement, now_s=now_s)
        holder["state"] = result.state
        return result.output

    return step


@pytest.mark.parametrize(
    ("cycle_s", "max_overshoot_percent"),
    [
        ((1.0,), 6.0),
        ((0.5, 1.5, 0.75, 1.25), 6.0),  # jittery cycle, same total rate
        ((5.0,), 9.0),  # slow cycle, a quarter of the dead time
    ],
)
def test_closed_loop_setpoint_step_converges_without_large_overshoot(cycle_s, max_overshoot_percent):
    # 60 -> 65 °C at t = 100 s, from equilibrium (u = 40 %).
    def setpoint_at(now_s):
        return 60.0 if now_s < 100.0 else 65.0

    times, measurements, _ = closed_loop(
        pid_loop(SIMC, PidState(last_output=40.0)),
        setpoint_at,
        u0=40.0,
        end_s=1500.0,
        cycle_s=cycle_s,
    )
    overshoot_percent = (max(measurements) - 65.0) / 5.0 * 100.0
    assert overshoot_percent < max_overshoot_percent
    settled_from_s = next(t for t, y in reversed(list(zip(times, measurements, strict=True))) if abs(y - 65.0) > 0.1)
    assert settled_from_s - 100.0 < 300.0  # within 2 % in less than 300 s
    assert measurements[-1] == pytest.approx(65.0, abs=1e-4)  # integral action: no offset


def test_closed_loop_big_step_back_calculation_overshoots_ten_times_less_than_clamped():
    # 45 -> 85 °C needs u 10 % -> 90 %; the heat pumps saturate at 100 % for ~4 min.
    def setpoint_at(now_s):
        return 45.0 if now_s < 100.0 else 85.0

    _, ours, our_outputs = closed_loop(pid_loop(SIMC, PidState(last_output=10.0)), setpoint_at, u0=10.0, end_s=3000.0)
    naive = ClampedIntegralPi(kp=6.0, ki_per_s=6.0 / 120.0, out_min=0.0, out_max=100.0)
    naive.integral = 10.0

    def naive_step(now_s, setpoint, measurement):
        return naive.step(setpoint, measurement, 1.0 if now_s else 0.0)

    _, theirs, _ = closed_loop(naive_step, setpoint_at, u0=10.0, end_s=3000.0)
    our_overshoot_k = max(ours) - 85.0
    their_overshoot_k = max(theirs) - 85.0
    assert max(our_outputs) == 100.0  # it really saturated
    assert our_overshoot_k == pytest.approx(0.131, abs=0.005)
    assert their_overshoot_k == pytest.approx(1.288, abs=0.005)
    assert their_overshoot_k > 9 * our_overshoot_k


def test_ramp_inside_the_pid_counts_as_saturation_for_anti_windup():
    # Heat-pump capacity may only move 0.25 %/s; the 60 -> 65 °C step wants +30 % at once
    # (2 min of ramp). Inside the PID the ramp is part of the actuator model, so the integral
    # does not run ahead of it. A ramp bolted on after a PID that is not told (no `track`)
    # winds it up: ten times the overshoot. Told through `track`, it behaves as the inside one.
    ramp_per_s = 0.25

    def setpoint_at(now_s):
        return 60.0 if now_s < 100.0 else 65.0

    inside = PidConfig(kp=6.0, ti_s=120.0, out_min=0.0, out_max=100.0, output_ramp_per_s=0.25)
    _, measurements, outputs = closed_loop(
        pid_loop(inside, PidState(last_output=40.0)), setpoint_at, u0=40.0, end_s=2000.0
    )
    assert all(abs(b - a) <= ramp_per_s + TOLERANCE for a, b in pairwise(outputs))
    inside_overshoot_k = max(measurements) - 65.0

    def ramp_after_pid(*, told):
        holder = {"state": PidState(last_output=40.0), "applied": 40.0}

        def step(now_s, setpoint, measurement):
            result = pid_step(
                SIMC,
                holder["state"],
                setpoint=setpoint,
                measurement=measurement,
                now_s=now_s,
                track=holder["applied"] if told else None,
            )
            holder["state"] = result.state
            previous = holder["applied"]
            holder["applied"] = min(max(result.output, previous - 0.25), previous + 0.25)
            return holder["applied"]

        return step

    _, untold, _ = closed_loop(ramp_after_pid(told=False), setpoint_at, u0=40.0, end_s=2000.0)
    _, told, _ = closed_loop(ramp_after_pid(told=True), setpoint_at, u0=40.0, end_s=2000.0)
    assert inside_overshoot_k == pytest.approx(0.230, abs=0.005)
    assert max(told) - 65.0 == pytest.approx(0.209, abs=0.005)
    assert max(untold) - 65.0 == pytest.approx(2.464, abs=0.005)


# --- override tracking --------------------------------------------------------------------


def test_tracking_keeps_an_unselected_controller_near_the_applied_output():
    # Min-select: the DH loop wants more heat (e = +10 K, it would go to 100 %), but a
    # facility-water override holds the applied output at 30 %. Fed the applied value as
    # `track`, the DH loop's v settles at 30 + Kp*e*Tt/Ti (= 30 + 20, discretised 50.1);
    # without it, v winds up far past the limit and its output sits at 100.
    config = PidConfig(kp=2.0, ti_s=100.0, out_min=0.0, out_max=100.0)
    tracked, untracked = PidState(), PidState()
    applied = 30.0
    for second in range(1000):
        tracked_result = pid_step(config, tracked, setpoint=70.0, measurement=60.0, now_s=float(second), track=applied)
        tracked = tracked_result.state
        untracked_result = pid_step(config, untracked, setpoint=70.0, measurement=60.0, now_s=float(second))
        untracked = untracked_result.state
    assert tracked_result.output == pytest.approx(50.1, abs=0.05)
    assert untracked_result.output == 100.0
    # Override released and the DH supply now 1 K too hot: the tracked loop answers from
    # 30 + a bit at once, the untracked one starts from its saturated state at 100.
    tracked_result = pid_step(config, tracked, setpoint=70.0, measurement=71.0, now_s=1000.0)
    untracked_result = pid_step(config, untracked, setpoint=70.0, measurement=71.0, now_s=1000.0)
    assert tracked_result.output == pytest.approx(30.0 + 20.1 - 20.0 - 2.0, abs=0.05)
    assert untracked_result.output > 95.0


# --- bumpless transfer --------------------------------------------------------------------

FULL_PID = PidConfig(kp=3.0, ti_s=60.0, td_s=12.0, out_min=0.0, out_max=100.0, output_ramp_per_s=5.0)
NO_RAMP_PID = PidConfig(kp=3.0, ti_s=60.0, td_s=12.0, out_min=0.0, out_max=100.0)


def test_bumpless_manual_to_auto_at_the_same_instant_and_after():
    # The operator drives 30 -> 35 % in manual while measurement, setpoint and feedforward
    # all move; the controller tracks. Switching to auto at the same instant, and the next
    # cycle with unchanged inputs, give exactly the manual output.
    state = with_mode(PidState(), ControlMode.MANUAL)
    manual_cycles = [  # (now_s, setpoint, measurement, feedforward, operator output)
        (0.0, 60.0, 55.0, 10.0, 30.0),
        (1.0, 60.0, 55.5, 12.0, 30.0),
        (2.5, 62.0, 56.5, 11.0, 33.0),
        (4.0, 62.0, 57.0, 11.0, 35.0),
    ]
    for now_s, setpoint, measurement, feedforward, operator in manual_cycles:
        result = pid_step(
            NO_RAMP_PID,
            state,
            setpoint=setpoint,
            measurement=measurement,
            now_s=now_s,
            feedforward=feedforward,
            track=operator,
        )
        assert result.output == operator
        state = result.state

    state = with_mode(state, ControlMode.AUTO)
    at_switch = pid_step(NO_RAMP_PID, state, setpoint=62.0, measurement=57.0, now_s=4.0, feedforward=11.0)
    assert at_switch.output == pytest.approx(35.0, abs=TOLERANCE)
    # One second later: P unchanged, I unchanged (the switch cycle had dt = 0), D decays from
    # its last value, so the change is exactly the derivative's decay.
    derivative_before = at_switch.state.derivative
    after = pid_step(NO_RAMP_PID, at_switch.state, setpoint=62.0, measurement=57.0, now_s=5.0, feedforward=11.0)
    decay = 1.2 / (1.2 + 1.0)  # Tf / (Tf + dt), Tf = Td / N = 1.2 s
    expected = 35.0 - derivative_before + decay * derivative_before
    assert after.output == pytest.approx(expected, abs=TOLERANCE)


def test_bumpless_manual_to_auto_with_steady_measurement():
    # PI in manual at 42 % with a 3 K error; next cycle in auto gives 42 % exactly.
    config = PidConfig(kp=2.0, ti_s=50.0, out_min=0.0, out_max=100.0)
    state = with_mode(PidState(), ControlMode.MANUAL)
    for now_s in (0.0, 1.0, 2.0):
        state = pid_step(config, state, setpoint=60.0, measurement=57.0, now_s=now_s, track=42.0).state
    state = with_mode(state, ControlMode.AUTO)
    result = pid_step(config, state, setpoint=60.0, measurement=57.0, now_s=3.0)
    assert result.output == pytest.approx(42.0, abs=TOLERANCE)
    # then the integral acts: + Ki*e*dt = 0.04 * 3 * 1 per second
    result = pid_step(config, result.state, setpoint=60.0, measurement=57.0, now_s=4.0)
    assert result.output == pytest.approx(42.12, abs=TOLERANCE)


def test_bumpless_auto_to_manual_holds_last_auto_output():
    config = PidConfig(kp=2.0, ti_s=50.0, out_min=0.0, out_max=100.0)
    results, state = run_cycles(config, [(0.0, 60.0, 55.0), (1.0, 60.0, 55.5), (2.0, 60.0, 56.0)])
    last_auto = results[-1].output
    state = with_mode(state, ControlMode.MANUAL)
    # The operator has not entered a value yet: the output holds, whatever P would say.
    held = pid_step(config, state, setpoint=60.0, measurement=50.0, now_s=3.0)
    assert held.output == pytest.approx(last_auto, abs=TOLERANCE)
    # Then the operator's value is taken as is, clamped; no ramp in manual.
    moved = pid_step(config, held.state, setpoint=60.0, measurement=50.0, now_s=4.0, track=80.0)
    assert moved.output == 80.0
    clamped = pid_step(config, moved.state, setpoint=60.0, measurement=50.0, now_s=5.0, track=120.0)
    assert clamped.output == 100.0
    assert clamped.saturated


def test_manual_without_any_operator_value_is_invalid():
    state = with_mode(PidState(), ControlMode.MANUAL)
    result = pid_step(P_ONLY, state, setpoint=1.0, measurement=1.0, now_s=0.0)
    assert not result.valid
    assert result.output is None
    assert result.state is state
    assert "manual" in (result.invalid_reason or "")


def test_bumpless_start_from_the_actuators_present_value():
    config = PidConfig(kp=2.0, ti_s=50.0, out_min=0.0, out_max=100.0)
    results, _ = run_cycles(config, [(0.0, 60.0, 50.0), (1.0, 60.0, 50.0)], PidState(last_output=35.0))
    assert results[0].output == 35.0  # not P = 20
    assert results[1].output == pytest.approx(35.0, abs=TOLERANCE)  # I from dt=0 first call


def test_controller_wrapper_keeps_state_and_mode():
    controller = PidController(PidConfig(kp=2.0, ti_s=50.0, out_min=0.0, out_max=100.0))
    assert controller.step(setpoint=60.0, measurement=55.0, now_s=0.0).output == 10.0
    controller.set_mode(ControlMode.MANUAL)
    assert controller.mode is ControlMode.MANUAL
    assert controller.step(setpoint=60.0, measurement=55.0, now_s=1.0, track=25.0).output == 25.0
    before = controller.state
    assert not controller.step(setpoint=60.0, measurement=math.nan, now_s=2.0).valid
    assert controller.state is before
    controller.set_mode(ControlMode.AUTO)
    assert controller.step(setpoint=60.0, measurement=55.0, now_s=1.0).output == pytest.approx(25.0, abs=TOLERANCE)


# --- derivative ---------------------------------------------------------------------------

# PD: kp 1, Td 10 s, N 10 -> Tf 1 s; backward difference with dt = 1 s:
# D = Tf/(Tf+dt) * D_prev - kp*Td/(Tf+dt) * dy = 0.5 * D_prev - 5 * dy
PD = PidConfig(kp=1.0, td_s=10.0, out_min=-1e3, out_max=1e3)


def test_setpoint_step_gives_no_derivative_kick():
    cycles = [  # (now_s, setpoint, measurement, expected = (sp - y) + D)
        (0.0, 50.0, 50.0, 0.0),
        (1.0, 50.0, 50.0, 0.0),
        (2.0, 60.0, 50.0, 10.0),  # only P: 10; derivative on error would add 50
        (3.0, 60.0, 50.0, 10.0),
        (4.0, 40.0, 50.0, -10.0),
    ]
    results, _ = run_cycles(PD, [row[:3] for row in cycles])
    assert [r.output for r in results] == pytest.approx([row[3] for row in cycles], abs=1e-9)


def test_measurement_step_gives_filtered_derivative():
    cycles = [  # (now_s, setpoint, measurement, expected = (sp - y) + D)
        (0.0, 50.0, 50.0, 0.0),
        (1.0, 50.0, 50.0, 0.0),
        (2.0, 50.0, 51.0, -6.0),  # P -1, D -5
        (3.0, 50.0, 51.0, -3.5),  # D -2.5
        (4.0, 50.0, 51.0, -2.25),  # D -1.25
        (6.0, 50.0, 51.0, -1.0 - 1.25 / 3.0),  # dt 2: D * Tf/(Tf+2) = -1.25/3
    ]
    results, _ = run_cycles(PD, [row[:3] for row in cycles])
    assert [r.output for r in results] == pytest.approx([row[3] for row in cycles], abs=1e-9)


def test_first_call_has_no_derivative_kick():
    result = pid_step(PD, PidState(), setpoint=50.0, measurement=80.0, now_s=1234.0)
    assert result.output == -30.0  # P only
    assert result.dt_s == 0.0
    assert result.state.derivative == 0.0
    assert result.state.last_measurement == 80.0


# --- time ---------------------------------------------------------------------------------

# PID kp 1, Ti 10 s (Ki 0.1/s), Td 10 s, N 10 (Tf 1 s), no limits that matter.
PID_TIME = PidConfig(kp=1.0, ti_s=10.0, td_s=10.0, out_min=-1e3, out_max=1e3, max_dt_s=10.0)


def test_same_tick_integrates_nothing_and_keeps_the_derivative_reference():
    cycles = [  # (now_s, setpoint, measurement, expected dt_s, expected I, expected D)
        (0.0, 50.0, 48.0, 0.0, 0.0, 0.0),
        (1.0, 50.0, 48.0, 1.0, 0.2, 0.0),
        (1.0, 50.0, 48.5, 0.0, 0.2, 0.0),  # same tick: nothing integrates, D kept
        (1.0, 50.0, 49.0, 0.0, 0.2, 0.0),
        # next real second sees the whole change 48 -> 49: D = -5 * 1; I += 0.1 * 1 * 1
        (2.0, 50.0, 49.0, 1.0, 0.3, -5.0),
    ]
    state = PidState()
    for now_s, setpoint, measurement, dt_s, integral, derivative in cycles:
        result = pid_step(PID_TIME, state, setpoint=setpoint, measurement=measurement, now_s=now_s)
        state = result.state
        assert (result.dt_s, state.integral, state.derivative) == pytest.approx(
            (dt_s, integral, derivative), abs=TOLERANCE
        ), now_s


def test_clock_going_backwards_restarts_the_time_base():
    cycles = [  # (now_s, measurement, expected dt_s, expected I, expected last_time_s)
        (100.0, 48.0, 0.0, 0.0, 100.0),
        (101.0, 48.0, 1.0, 0.2, 101.0),
        (50.0, 48.0, 0.0, 0.2, 50.0),  # backwards: no integration, re-anchored
        (51.0, 48.0, 1.0, 0.4, 51.0),  # runs on at once rather than waiting until 101
        (52.0, 48.0, 1.0, 0.6, 52.0),
    ]
    state = PidState()
    for now_s, measurement, dt_s, integral, last_time_s in cycles:
        result = pid_step(PID_TIME, state, setpoint=50.0, measurement=measurement, now_s=now_s)
        assert result.valid
        state = result.state
        assert (result.dt_s, state.integral, state.last_time_s) == pytest.approx(
            (dt_s, integral, last_time_s), abs=TOLERANCE
        ), now_s


def test_backwards_jump_with_measurement_change_gives_no_derivative_kick():
    results, state = run_cycles(
        PID_TIME, [(10.0, 50.0, 50.0), (11.0, 50.0, 50.0), (5.0, 50.0, 70.0), (6.0, 50.0, 70.0)]
    )
    assert state.derivative == 0.0
    assert results[2].output == pytest.approx(-20.0, abs=TOLERANCE)


def test_absurd_dt_is_clamped_to_max_dt_and_restarts_the_derivative():
    # One hour without a cycle (max_dt 10 s): integrate 10 s, not 3600 s; no derivative
    # from a slope over an hour-old reference.
    results, state = run_cycles(PID_TIME, [(0.0, 50.0, 48.0), (1.0, 50.0, 48.0), (3601.0, 50.0, 47.0)])
    assert results[2].dt_s == 10.0
    assert state.integral == pytest.approx(0.2 + 0.1 * 3.0 * 10.0, abs=TOLERANCE)
    assert state.derivative == 0.0
    assert results[2].output == pytest.approx(3.0 + 0.2, abs=TOLERANCE)


# --- invalid inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"measurement": math.nan}, "measurement is nan"),
        ({"measurement": math.inf}, "measurement is inf"),
        ({"measurement": -math.inf}, "measurement is -inf"),
        ({"setpoint": math.nan}, "setpoint is nan"),
        ({"now_s": math.nan}, "now_s is nan"),
        ({"feedforward": math.inf}, "feedforward is inf"),
        ({"track": math.nan}, "track is nan"),
    ],
)
def test_non_finite_input_is_flagged_invalid_and_keeps_state(inputs, reason):
    _, state = run_cycles(FULL_PID, [(0.0, 60.0, 55.0), (1.0, 60.0, 56.0)])
    arguments = {"setpoint": 60.0, "measurement": 57.0, "now_s": 2.0} | inputs
    result = pid_step(FULL_PID, state, **arguments)
    assert not result.valid
    assert result.output is None
    assert result.state is state
    assert result.invalid_reason == reason
    # The loop carries on from the same state once the input is good again.
    recovered = pid_step(FULL_PID, state, setpoint=60.0, measurement=57.0, now_s=2.0)
    assert recovered.valid


# --- output limits and ramp ---------------------------------------------------------------


def test_rate_limit_is_respected_with_uneven_dt():
    # P-only, kp 10, ramp 2 %/s, starting bumplessly at 0 %: the wanted output jumps to 80.
    config = PidConfig(kp=10.0, out_min=0.0, out_max=100.0, output_ramp_per_s=2.0)
    cycles = [  # (now_s, setpoint, measurement, expected output)
        (0.0, 50.0, 50.0, 0.0),  # bumpless start from last_output 0
        (1.0, 58.0, 50.0, 2.0),
        (1.5, 58.0, 50.0, 3.0),
        (1.5, 58.0, 50.0, 3.0),  # dt 0: may not move
        (4.0, 58.0, 50.0, 8.0),
        (40.0, 58.0, 50.0, 80.0),  # caught up: 8 + 72 = 80 = wanted
        (41.0, 50.0, 50.0, 78.0),  # and down at the same rate
    ]
    results, _ = run_cycles(config, [row[:3] for row in cycles], PidState(last_output=0.0))
    assert [r.output for r in results] == pytest.approx([row[3] for row in cycles], abs=1e-9)
    assert [r.rate_limited for r in results] == [False, True, True, True, True, False, True]


def test_limits_win_over_the_ramp():
    # After a limit change the last output lies outside: it goes inside at once.
    config = PidConfig(kp=1.0, out_min=0.0, out_max=50.0, output_ramp_per_s=1.0)
    state = PidState(last_output=80.0, last_time_s=0.0, last_measurement=0.0)
    result = pid_step(config, state, setpoint=100.0, measurement=0.0, now_s=1.0)
    assert result.output == 50.0


def test_bumpless_manual_to_auto_with_ramp_configured():
    # The ramp does not let the output move at dt = 0, and the switch itself adds no step.
    state = with_mode(PidState(), ControlMode.MANUAL)
    for now_s, operator in ((0.0, 20.0), (1.0, 70.0)):  # no ramp in manual: 20 -> 70 at once
        result = pid_step(FULL_PID, state, setpoint=60.0, measurement=50.0, now_s=now_s, track=operator)
        assert result.output == operator
        state = result.state
    state = with_mode(state, ControlMode.AUTO)
    result = pid_step(FULL_PID, state, setpoint=60.0, measurement=50.0, now_s=1.0)
    assert result.output == pytest.approx(70.0, abs=TOLERANCE)


def test_direct_acting_derivative_has_the_opposite_sign():
    # Cooling: the measurement rising 1 K in 1 s opens more: P +1, D +5 (see PD above).
    config = PidConfig(kp=1.0, td_s=10.0, out_min=-1e3, out_max=1e3, action=Action.DIRECT)
    results, _ = run_cycles(config, [(0.0, 50.0, 50.0), (1.0, 50.0, 51.0)])
    assert results[1].output == pytest.approx(6.0, abs=TOLERANCE)
