"""A PID controller done right, as a pure step function.

The form is the ideal (ISA) one with setpoint weighting, derivative on the measurement and
back-calculation anti-windup (Åström & Hägglund, *Advanced PID Control*, ch. 3)::

    e = sigma * (setpoint - measurement)              # sigma = +1 reverse, -1 direct acting
    P = sigma * Kp * (b * setpoint - measurement)
    D = filtered  -sigma * Kp * Td * d(measurement)/dt,  filter time Tf = Td / N
    v = P + I + D + feedforward                       # what the controller wants
    u = ramp(clamp(v))                                # what the actuator gets
    I += dt * Kp / Ti * e  +  (w - v) * (1 - exp(-dt / Tt))

where ``w`` is ``u`` (anti-windup) or the ``track`` input (the output actually applied, e.g.
by an override min-select). For small ``dt`` the last term is the textbook
``dt * (w - v) / Tt``; the exponential form is its exact discretisation and never
over-corrects when ``dt`` is large compared with ``Tt``. As in Åström & Hägglund's code, the
output uses ``I`` as it stood before this step's update ("compute the output, then update the
state"): the output is not delayed by the integration, and the first auto step after manual
returns exactly the manual output.

``I`` is stored in output units, so retuning ``Kp`` or ``Ti`` on line does not step the
output through the integral. Without integral action (``ti_s`` None or inf) ``I`` is the
fixed bias ("manual reset") of a P/PD controller, which manual mode still sets so that the
transfer to auto stays bumpless.

Time is passed in (``now_s``, seconds on a monotonic clock); ``dt`` is the real elapsed time
since the previous call:

- first call: ``dt = 0``, no derivative (no kick), no integration;
- ``dt == 0`` (same tick): nothing integrates, the derivative reference is kept so the next
  real interval sees the whole change;
- ``dt < 0`` (clock went backwards): treated as ``dt = 0`` and the time base restarts at
  ``now_s`` so the controller is not frozen until the clock catches up;
- ``dt > max_dt_s`` (process paused, missed cycles): clamped to ``max_dt_s`` and the
  derivative restarts from zero, because a slope over a long gap is stale.

A non-finite input (NaN/inf setpoint, measurement, feedforward, track or time) does not raise:
the result has ``output=None``, ``valid=False`` and the unchanged state, so the caller puts the
loop in its safe state. ``output`` being ``Optional`` makes mypy force that check.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "Action",
    "ControlMode",
    "PidConfig",
    "PidController",
    "PidResult",
    "PidState",
    "pid_step",
    "with_mode",
]


class ControlMode(enum.Enum):
    """Who sets the output.

    A site "local override" (the device under its own control) is MANUAL with ``track`` set to
    the device's actual value: the controller follows it and takes over bumplessly.
    """

    AUTO = "auto"
    MANUAL = "manual"


class Action(enum.Enum):
    """Controller action, in the instrument engineer's sense.

    REVERSE: the output rises when the measurement falls below the setpoint (heating: the DH
    supply is too cold, so ask the heat pumps for more). DIRECT: the output rises when the
    measurement rises above the setpoint (cooling: the water is too hot, open the dry cooler).
    """

    REVERSE = "reverse"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True, kw_only=True)
class PidConfig:
    """Tuning and limits of one PID loop. All times in seconds, output in its own unit.

    Raises ValueError on construction if a value is out of range, naming the field.
    """

    kp: float
    """Proportional gain, output units per measurement unit (> 0; sign comes from `action`)."""
    out_min: float
    """Lowest output the actuator accepts."""
    out_max: float
    """Highest output the actuator accepts."""
    ti_s: float | None = None
    """Integral time; None or inf means no integral action."""
    td_s: float = 0.0
    """Derivative time; 0 means no derivative action."""
    derivative_filter_n: float = 10.0
    """Derivative filter factor N: filter time Tf = Td / N (8-20 is usual)."""
    derivative_filter_s: float | None = None
    """Derivative filter time Tf; when set it is used instead of Td / N."""
    tt_s: float | None = None
    """Tracking (back-calculation) time. None: sqrt(Ti * Td) with D, Ti without D."""
    setpoint_weight: float = 1.0
    """Setpoint weight b of the proportional term (1: classic; < 1 softens setpoint steps)."""
    output_ramp_per_s: float | None = None
    """Largest output change per second in auto; None: not rate-limited."""
    max_dt_s: float | None = None
    """Longest elapsed time one step may integrate (e.g. 10 x the nominal period); None: any."""
    action: Action = Action.REVERSE
    """REVERSE (heating-like, e = setpoint - measurement) or DIRECT (cooling-like)."""
    _sign: float = field(init=False, repr=False, compare=False)
    """+1 reverse, -1 direct acting (worked out once: `pid_step` runs every cycle)."""
    _ki_per_s: float = field(init=False, repr=False, compare=False)
    _tracking_time_s: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(math.isfinite(self.kp) and self.kp > 0.0, "kp", "a finite number > 0")
        _require(
            math.isfinite(self.out_min) and math.isfinite(self.out_max),
            "out_min/out_max",
            "finite numbers",
        )
        _require(self.out_min <= self.out_max, "out_min/out_max", "out_min <= out_max")
        _require(
            self.ti_s is None or (not math.isnan(self.ti_s) and self.ti_s > 0.0),
            "ti_s",
            "None, inf or a number > 0",
        )
        _require(math.isfinite(self.td_s) and self.td_s >= 0.0, "td_s", "a finite number >= 0")
        _require(
            math.isfinite(self.derivative_filter_n) and self.derivative_filter_n > 0.0,
            "derivative_filter_n",
            "a finite number > 0",
        )
        _require(
            self.derivative_filter_s is None
            or (math.isfinite(self.derivative_filter_s) and self.derivative_filter_s > 0.0),
            "derivative_filter_s",
            "None or a finite number > 0",
        )
        _require(
            self.tt_s is None or (math.isfinite(self.tt_s) and self.tt_s > 0.0),
            "tt_s",
            "None or a finite number > 0",
        )
        _require(
            math.isfinite(self.setpoint_weight) and self.setpoint_weight >= 0.0,
            "setpoint_weight",
            "a finite number >= 0",
        )
        _require(
            self.output_ramp_per_s is None or (math.isfinite(self.output_ramp_per_s) and self.output_ramp_per_s > 0.0),
            "output_ramp_per_s",
            "None or a finite number > 0",
        )
        _require(
            self.max_dt_s is None or (math.isfinite(self.max_dt_s) and self.max_dt_s > 0.0),
            "max_dt_s",
            "None or a finite number > 0",
        )
        object.__setattr__(self, "_sign", 1.0 if self.action is Action.REVERSE else -1.0)
        object.__setattr__(self, "_ki_per_s", self.ki_per_s)
        object.__setattr__(self, "_tracking_time_s", self.tracking_time_s)

    @property
    def has_integral(self) -> bool:
        """True when the controller integrates (ti_s finite)."""
        return self.ti_s is not None and math.isfinite(self.ti_s)

    @property
    def ki_per_s(self) -> float:
        """Integral gain Kp / Ti (output units per measurement unit per second); 0 without I."""
        if self.ti_s is None or not math.isfinite(self.ti_s):
            return 0.0
        return self.kp / self.ti_s

    @property
    def derivative_filter_time_s(self) -> float:
        """Filter time constant Tf of the derivative (0 without D)."""
        if self.td_s == 0.0:
            return 0.0
        if self.derivative_filter_s is not None:
            return self.derivative_filter_s
        return self.td_s / self.derivative_filter_n

    @property
    def tracking_time_s(self) -> float | None:
        """Tracking time Tt actually used; None without integral action.

        Åström & Hägglund's rule of thumb: Td < Tt < Ti, Tt = sqrt(Ti * Td); with no D, Ti.
        """
        if self.ti_s is None or not math.isfinite(self.ti_s):
            return None
        if self.tt_s is not None:
            return self.tt_s
        if self.td_s > 0.0:
            return math.sqrt(self.ti_s * self.td_s)
        return self.ti_s

    def clamp(self, value: float) -> float:
        """Clamp a value to [out_min, out_max]."""
        return min(max(value, self.out_min), self.out_max)


class PidState(NamedTuple):
    """Everything the controller remembers between steps. Start with ``PidState()``.

    To start bumplessly from the actuator's present value, pass it as ``last_output``: the
    first auto step then sets the integral so that the output equals it.
    """

    integral: float = 0.0
    """Integral term I (output units); the bias of a P/PD controller."""
    derivative: float = 0.0
    """Filtered derivative term D (output units)."""
    last_measurement: float | None = None
    """Measurement the next derivative is taken against; None before the first step."""
    last_time_s: float | None = None
    """Time of the previous step; None before the first step."""
    last_output: float | None = None
    """Output of the previous step (the ramp limit's reference and manual mode's hold)."""
    mode: ControlMode = ControlMode.AUTO
    """AUTO: the controller sets the output. MANUAL: the operator does, the controller tracks."""


class PidResult(NamedTuple):
    """What one step produced.

    ``output`` is None exactly when the step was invalid (``valid`` False); then ``state`` is
    the state passed in, unchanged, and ``invalid_reason`` says why.
    """

    output: float | None
    """Output to apply, within [out_min, out_max]; None when the step was invalid."""
    state: PidState
    """State for the next step."""
    saturated: bool = False
    """The wanted output v lay outside [out_min, out_max] (or the operator's value did)."""
    rate_limited: bool = False
    """The ramp limit held the output back this step."""
    dt_s: float = 0.0
    """Elapsed time actually used (after first-call, backwards-clock and max_dt handling)."""
    invalid_reason: str | None = None
    """Why the step was invalid (e.g. 'measurement is nan'); None when valid."""

    @property
    def valid(self) -> bool:
        """True when the step produced an output."""
        return self.output is not None


def with_mode(state: PidState, mode: ControlMode) -> PidState:
    """Return the state with a new mode; the transfer is bumpless in both directions.

    Manual -> auto: manual mode kept I = u_manual - P - D - FF, so the first auto output is
    the manual output (plus any genuine change of P and D since). Auto -> manual: without an
    operator value (``track``) manual mode holds the last auto output.
    """
    return state._replace(mode=mode)


def pid_step(
    config: PidConfig,
    state: PidState,
    *,
    setpoint: float,
    measurement: float,
    now_s: float,
    feedforward: float = 0.0,
    track: float | None = None,
) -> PidResult:
    """Advance the controller to ``now_s`` and return the output and the new state.

    ``feedforward`` is added to the output before limiting (e.g. from the measured heat load).

    ``track`` is the output actually applied to the plant when that is not this controller's:

    - in AUTO, the integral follows it with time constant Tt (back-calculation), so a PID not
      chosen by an override min/max-select does not wind up and takes over smoothly when
      selected. Pass the value applied on the previous cycle;
    - in MANUAL, it is the operator's output (None: hold the last output); the integral is
      set so that P + I + D + FF equals it, which makes the return to auto bumpless.

    Never raises on bad numbers: see the module docstring and `PidResult`.
    """
    if not (
        math.isfinite(setpoint)
        and math.isfinite(measurement)
        and math.isfinite(now_s)
        and math.isfinite(feedforward)
        and (track is None or math.isfinite(track))
    ):
        reason = _non_finite(
            setpoint=setpoint,
            measurement=measurement,
            now_s=now_s,
            feedforward=feedforward,
            track=track,
        )
        return PidResult(output=None, state=state, invalid_reason=reason)

    sign = config._sign  # noqa: SLF001 - the config's own, worked out once
    error = sign * (setpoint - measurement)
    proportional = sign * config.kp * (config.setpoint_weight * setpoint - measurement)

    first_step = state.last_time_s is None or state.last_measurement is None
    dt_s, time_s, reference, derivative = _advance_time(config, state, measurement=measurement, now_s=now_s, sign=sign)
    if first_step and state.last_output is None and state.mode is ControlMode.AUTO:
        # A fresh state: start as if the loop had been at this setpoint all along. With a
        # setpoint weight b < 1 the P term carries -Kp (1 - b) setpoint, which a running
        # loop's integral has absorbed; without this a fresh b = 0 trim on a 72 °C supply
        # would start at -Kp x 72 K (clamped to its limit) with the error at zero.
        state = state._replace(integral=state.integral + sign * config.kp * (1.0 - config.setpoint_weight) * setpoint)
    wanted = proportional + state.integral + derivative + feedforward
    # What the step leaves behind, whichever way it goes (``_hold`` makes the rest of it).
    after = (proportional, derivative, feedforward, reference, time_s, dt_s)

    if state.mode is ControlMode.MANUAL:
        operator = track if track is not None else state.last_output
        if operator is None:
            return PidResult(
                output=None,
                state=state,
                invalid_reason="manual mode needs an operator output (track=)",
            )
        # Hard tracking: the integral absorbs whatever the operator does, so auto resumes
        # from exactly this output.
        return _hold(config, state, operator, after)

    if first_step and state.last_output is not None:
        # Bumpless start from the actuator's present value.
        return _hold(config, state, state.last_output, after)

    clamped = min(max(wanted, config.out_min), config.out_max)  # config.clamp(wanted)
    output = clamped
    if config.output_ramp_per_s is not None and state.last_output is not None:
        step_max = config.output_ramp_per_s * dt_s
        output = min(max(clamped, state.last_output - step_max), state.last_output + step_max)
        # The limits win over the ramp: after a limit change the output jumps inside at once.
        output = config.clamp(output)

    integral = state.integral
    tracking_time_s = config._tracking_time_s  # noqa: SLF001
    if tracking_time_s is not None and dt_s > 0.0:
        applied = track if track is not None else output
        integral += dt_s * config._ki_per_s * error  # noqa: SLF001
        # Back-calculation. The ramp is part of the actuator model, so the integral does not
        # wind up while the output is rate-limited either.
        integral += (applied - wanted) * -math.expm1(-dt_s / tracking_time_s)

    new_state = PidState(
        integral=integral,
        derivative=derivative,
        last_measurement=reference,
        last_time_s=time_s,
        last_output=output,
        mode=state.mode,
    )
    return PidResult(
        output=output,
        state=new_state,
        saturated=clamped != wanted,
        rate_limited=output != clamped,
        dt_s=dt_s,
    )


def _hold(
    config: PidConfig, state: PidState, target: float, after: tuple[float, float, float, float, float, float]
) -> PidResult:
    """Output ``target`` (clamped) and set the integral so the next step continues from it."""
    proportional, derivative, feedforward, reference, time_s, dt_s = after
    output = config.clamp(target)
    new_state = PidState(
        integral=output - proportional - derivative - feedforward,
        derivative=derivative,
        last_measurement=reference,
        last_time_s=time_s,
        last_output=output,
        mode=state.mode,
    )
    return PidResult(output=output, state=new_state, saturated=output != target, dt_s=dt_s)


class PidController:
    """Thin mutable wrapper around `pid_step` for callers that keep one object per loop.

    The state only advances on valid steps, as with `pid_step`.
    """

    def __init__(self, config: PidConfig, state: PidState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else PidState()

    @property
    def mode(self) -> ControlMode:
        """Current mode."""
        return self.state.mode

    def set_mode(self, mode: ControlMode) -> None:
        """Switch mode bumplessly (see `with_mode`)."""
        self.state = with_mode(self.state, mode)

    def step(
        self,
        *,
        setpoint: float,
        measurement: float,
        now_s: float,
        feedforward: float = 0.0,
        track: float | None = None,
    ) -> PidResult:
        """Run `pid_step` and keep the new state."""
        result = pid_step(
            self.config,
            self.state,
            setpoint=setpoint,
            measurement=measurement,
            now_s=now_s,
            feedforward=feedforward,
            track=track,
        )
        self.state = result.state
        return result


def _advance_time(
    config: PidConfig, state: PidState, *, measurement: float, now_s: float, sign: float
) -> tuple[float, float, float, float]:
    """Return (dt_s, time_s, derivative reference, derivative term) for this step."""
    if state.last_time_s is None or state.last_measurement is None:
        return 0.0, now_s, measurement, 0.0
    elapsed_s = now_s - state.last_time_s
    if elapsed_s < 0.0:
        # Clock went backwards: restart the time base here rather than freezing until the
        # clock catches up; the slope across the jump is unknown, so no derivative update.
        return 0.0, now_s, measurement, state.derivative
    if elapsed_s == 0.0:
        # Same tick: keep the old reference so the next real interval sees the whole change.
        return 0.0, state.last_time_s, state.last_measurement, state.derivative
    if config.max_dt_s is not None and elapsed_s > config.max_dt_s:
        return config.max_dt_s, now_s, measurement, 0.0
    if config.td_s == 0.0:
        return elapsed_s, now_s, measurement, 0.0
    # Backward difference of Kp*Td*s/(1 + s*Tf) on -sign*measurement: stable for every dt.
    filter_time_s = config.derivative_filter_time_s
    denominator_s = filter_time_s + elapsed_s
    derivative = filter_time_s / denominator_s * state.derivative - sign * config.kp * config.td_s / denominator_s * (
        measurement - state.last_measurement
    )
    return elapsed_s, now_s, measurement, derivative


def _non_finite(**values: float | None) -> str | None:
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            return f"{name} is {value}"
    return None


def _require(condition: bool, field: str, expected: str) -> None:
    if not condition:
        raise ValueError(f"PidConfig.{field}: expected {expected}")
