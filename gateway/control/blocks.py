"""Small pure blocks the supervisory controller is built from.

Each block is a frozen dataclass holding its configuration, with a ``step`` method that takes
the previous state, the inputs and the time (``now_s``, seconds on a monotonic clock) and
returns the new state; nothing here reads a clock or keeps hidden state. Configuration errors
raise ValueError on construction, naming the field. Non-finite inputs raise ValueError too:
a NaN must be caught where it enters (validation, staleness), not averaged into a ramp.

Time going backwards is never allowed to freeze a block until the clock catches up: the
block restarts its time reference at ``now_s`` (which, for the timers, errs on the cautious
side: a minimum time or a delay starts again).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "AlarmSense",
    "AlarmState",
    "DelayedAlarm",
    "HoldResult",
    "HoldState",
    "HoldThenFallback",
    "MinOnOffTimer",
    "OnOffState",
    "OrderSource",
    "RampLimiter",
    "RampState",
    "Selection",
    "Staleness",
    "clamp",
    "select_max",
    "select_min",
    "weather_curve_supply_c",
]


def clamp(value: float, low: float, high: float) -> float:
    """Return ``value`` limited to [low, high]. Raises ValueError if low > high or on NaN."""
    if math.isnan(value) or math.isnan(low) or math.isnan(high):
        raise ValueError(f"clamp: NaN in value={value}, low={low}, high={high}")
    if low > high:
        raise ValueError(f"clamp: low {low} > high {high}")
    return min(max(value, low), high)


# --- ramp ---------------------------------------------------------------------------------


class RampState(NamedTuple):
    """Where the ramp is: its value and the time it was computed for.

    A named tuple, not a frozen dataclass: every written setpoint makes one every cycle, and a
    tuple is built about four times faster (immutable all the same).
    """

    value: float
    time_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RampLimiter:
    """Moves a value towards a target no faster than a rate, using the real elapsed time.

    Used on every setpoint the gateway writes, so a device never sees a step.
    """

    up_per_s: float
    """Largest rise per second (value units per second, > 0)."""
    down_per_s: float | None = None
    """Largest fall per second; None: same as ``up_per_s``."""
    max_dt_s: float | None = None
    """Longest elapsed time one step may use (after a pause, move at most this far); None: any."""

    def __post_init__(self) -> None:
        _require_positive("RampLimiter.up_per_s", self.up_per_s)
        if self.down_per_s is not None:
            _require_positive("RampLimiter.down_per_s", self.down_per_s)
        if self.max_dt_s is not None:
            _require_positive("RampLimiter.max_dt_s", self.max_dt_s)

    def step(self, state: RampState | None, *, target: float, now_s: float) -> RampState:
        """Return the ramp's state at ``now_s``.

        With ``state`` None (first call) the value starts at ``target``; to ramp from a
        device's present value, pass ``RampState(value=present, time_s=now_s)`` instead.
        """
        if not (math.isfinite(target) and math.isfinite(now_s)):
            _require_finite("target", target)
            _require_finite("now_s", now_s)
        if state is None:
            return RampState(target, now_s)
        elapsed_s = now_s - state.time_s
        if elapsed_s <= 0.0:
            # Same tick or clock went backwards: no time, no movement; restart the time base
            # on a backwards jump.
            return RampState(value=state.value, time_s=min(state.time_s, now_s))
        if self.max_dt_s is not None and elapsed_s > self.max_dt_s:
            elapsed_s = self.max_dt_s
        present = state.value
        if target > present:
            value = min(target, present + self.up_per_s * elapsed_s)
        else:
            down_per_s = self.down_per_s if self.down_per_s is not None else self.up_per_s
            value = max(target, present - down_per_s * elapsed_s)
        return RampState(value, now_s)

    def reaches(self, present: float, target: float, elapsed_s: float) -> bool:
        """True when :meth:`step` from ``present``, ``elapsed_s`` (> 0) later, returns ``target`` itself
        (the same comparisons: a target within one step's reach)."""
        if self.max_dt_s is not None and elapsed_s > self.max_dt_s:
            elapsed_s = self.max_dt_s
        if target > present:
            return target <= present + self.up_per_s * elapsed_s
        down_per_s = self.down_per_s if self.down_per_s is not None else self.up_per_s
        return target >= present - down_per_s * elapsed_s


# --- weather curve ------------------------------------------------------------------------

_CURVE_FACTOR = 1.8318
_CURVE_EXPONENT = 0.8282


def weather_curve_supply_c(
    outdoor_c: float,
    *,
    slope: float,
    room_c: float = 20.0,
    offset_k: float = 0.0,
    min_c: float,
    max_c: float,
) -> float:
    """DH supply temperature from the field heating curve, clamped to the network limits.

    ``T = slope * 1.8318 * (room_c - outdoor_c) ** 0.8282 + room_c + offset_k``; when it is
    warmer outside than ``room_c`` the difference is taken as 0 (the power of a negative
    number is undefined, and no space heating is needed), leaving ``room_c + offset_k``,
    which ``min_c`` (e.g. the hot-water minimum) then lifts.
    """
    if not (
        math.isfinite(outdoor_c)
        and math.isfinite(slope)
        and math.isfinite(room_c)
        and math.isfinite(offset_k)
        and math.isfinite(min_c)
        and math.isfinite(max_c)
    ):
        for name, value in (
            ("outdoor_c", outdoor_c),
            ("slope", slope),
            ("room_c", room_c),
            ("offset_k", offset_k),
            ("min_c", min_c),
            ("max_c", max_c),
        ):
            _require_finite(name, value)
    if slope < 0.0:
        raise ValueError(f"weather_curve_supply_c: slope must be >= 0, got {slope}")
    if min_c > max_c:
        raise ValueError(f"weather_curve_supply_c: min_c {min_c} > max_c {max_c}")
    difference_k = max(room_c - outdoor_c, 0.0)
    supply_c: float = slope * _CURVE_FACTOR * difference_k**_CURVE_EXPONENT + room_c + offset_k
    return min(max(supply_c, min_c), max_c)  # clamp(): every number is finite, min_c <= max_c


# --- delayed alarm ------------------------------------------------------------------------


class AlarmSense(enum.Enum):
    """HIGH: alarm when the value rises above the on threshold. LOW: when it falls below."""

    HIGH = "high"
    LOW = "low"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmState:
    """State of a `DelayedAlarm`. Start with ``AlarmState()`` (inactive)."""

    active: bool = False
    since_s: float | None = None
    """When ``active`` last changed; None if it never has."""
    pending_since_s: float | None = None
    """When the condition for the next change started to hold; None if it does not hold."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DelayedAlarm:
    """Alarm with an on-delay, an off-delay and hysteresis.

    A HIGH alarm becomes active once ``value > on_threshold`` has held for ``on_delay_s``,
    and clears once ``value < off_threshold`` has held for ``off_delay_s``; between the two
    thresholds it keeps its state and any pending change is cancelled. For "deviation above
    2 K for 2 min, 1 K hysteresis" pass ``abs(deviation_k)`` with on 2.0, off 1.0, 120 s.
    LOW is the mirror image (on below ``on_threshold``, clear above ``off_threshold``).
    """

    on_threshold: float
    off_threshold: float
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    sense: AlarmSense = AlarmSense.HIGH

    def __post_init__(self) -> None:
        _require_finite("DelayedAlarm.on_threshold", self.on_threshold)
        _require_finite("DelayedAlarm.off_threshold", self.off_threshold)
        _require_non_negative("DelayedAlarm.on_delay_s", self.on_delay_s)
        _require_non_negative("DelayedAlarm.off_delay_s", self.off_delay_s)
        hysteresis = self.on_threshold - self.off_threshold
        if self.sense is AlarmSense.LOW:
            hysteresis = -hysteresis
        if hysteresis < 0.0:
            raise ValueError(
                "DelayedAlarm.off_threshold: expected the clear threshold on the safe side of "
                f"the on threshold for a {self.sense.value} alarm, got on {self.on_threshold}, "
                f"off {self.off_threshold}"
            )

    def step(self, state: AlarmState, value: float, now_s: float) -> AlarmState:
        """Return the alarm's state after seeing ``value`` at ``now_s``."""
        if not (math.isfinite(value) and math.isfinite(now_s)):
            _require_finite("value", value)
            _require_finite("now_s", now_s)
        if self.sense is AlarmSense.HIGH:
            wants_change = value < self.off_threshold if state.active else value > self.on_threshold
        else:
            wants_change = value > self.off_threshold if state.active else value < self.on_threshold
        if not wants_change:
            if state.pending_since_s is None:
                return state  # nothing pending: the same state (frozen, so the same value)
            return AlarmState(active=state.active, since_s=state.since_s, pending_since_s=None)
        pending_since_s = state.pending_since_s
        if pending_since_s is None or pending_since_s > now_s:
            pending_since_s = now_s
        delay_s = self.off_delay_s if state.active else self.on_delay_s
        if now_s - pending_since_s >= delay_s:
            return AlarmState(active=not state.active, since_s=now_s, pending_since_s=None)
        if pending_since_s == state.pending_since_s:
            return state
        return AlarmState(active=state.active, since_s=state.since_s, pending_since_s=pending_since_s)


# --- minimum on/off times -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OnOffState:
    """State of a `MinOnOffTimer`: whether the unit is on and when it last switched."""

    on: bool = False
    last_switch_s: float | None = None
    """When ``on`` last changed; None: never switched, so the first switch is free."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MinOnOffTimer:
    """Enforces a heat pump's minimum run and off times on the gateway's on/off requests."""

    min_on_s: float = 60.0
    """Shortest run once started."""
    min_off_s: float = 60.0
    """Shortest stop once stopped."""

    def __post_init__(self) -> None:
        _require_non_negative("MinOnOffTimer.min_on_s", self.min_on_s)
        _require_non_negative("MinOnOffTimer.min_off_s", self.min_off_s)

    def step(
        self,
        state: OnOffState,
        *,
        request_on: bool,
        now_s: float,
        force_off: bool = False,
    ) -> OnOffState:
        """Return the allowed state for a request at ``now_s``.

        ``force_off`` stops the unit regardless of its minimum run time: a shed to the dry
        coolers must not wait for a compressor timer. There is no ``force_on``: starting is
        never urgent for safety.
        """
        _require_finite("now_s", now_s)
        last_switch_s = state.last_switch_s
        if last_switch_s is not None and now_s < last_switch_s:
            # Clock went backwards: count the minimum time again from now.
            state = dataclasses.replace(state, last_switch_s=now_s)
        wanted_on = request_on and not force_off
        if wanted_on == state.on:
            return state
        if (force_off and state.on) or self.remaining_s(state, now_s) == 0.0:
            return OnOffState(on=wanted_on, last_switch_s=now_s)
        return state

    def remaining_s(self, state: OnOffState, now_s: float) -> float:
        """Seconds until the unit may switch again (0: it may switch now)."""
        if state.last_switch_s is None:
            return 0.0
        minimum_s = self.min_on_s if state.on else self.min_off_s
        elapsed_s = max(now_s - state.last_switch_s, 0.0)
        return max(minimum_s - elapsed_s, 0.0)


# --- staleness ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Staleness:
    """Decides whether a value is fresh enough to act on.

    The timestamp and ``now_s`` must come from the same clock. A timestamp more than
    ``future_tolerance_s`` ahead of ``now_s`` means a clock fault, so the value is not fresh.
    """

    max_age_s: float
    """Oldest a value may be and still count as fresh."""
    future_tolerance_s: float = 1.0
    """How far a timestamp may lie in the future (clock skew between sources)."""

    def __post_init__(self) -> None:
        _require_positive("Staleness.max_age_s", self.max_age_s)
        _require_non_negative("Staleness.future_tolerance_s", self.future_tolerance_s)

    def age_s(self, timestamp_s: float | None, now_s: float) -> float | None:
        """Age of the value; None when there is no (finite) timestamp."""
        if timestamp_s is None or not math.isfinite(timestamp_s) or not math.isfinite(now_s):
            return None
        return now_s - timestamp_s

    def is_fresh(self, timestamp_s: float | None, now_s: float) -> bool:
        """True when the value is recent enough to act on."""
        age_s = self.age_s(timestamp_s, now_s)
        return age_s is not None and -self.future_tolerance_s <= age_s <= self.max_age_s

    def is_stale(self, timestamp_s: float | None, now_s: float) -> bool:
        """The opposite of `is_fresh`, for callers that shed on staleness."""
        return not self.is_fresh(timestamp_s, now_s)


# --- hold the utility's order, then fall back ---------------------------------------------


class OrderSource(enum.Enum):
    """Where the value in use comes from, for the HMI and the logs."""

    UTILITY = "utility"
    """The utility's current order."""
    HELD = "held"
    """The utility's last order, held after the link dropped."""
    FALLBACK = "fallback"
    """The local fallback (the weather curve for the supply temperature)."""


class HoldState(NamedTuple):
    """State of `HoldThenFallback`. Start with ``HoldState()``."""

    last_order: float | None = None
    """The utility's last valid order; None if none was ever received."""
    link_lost_s: float | None = None
    """When the order stopped being available; None while it is."""


class HoldResult(NamedTuple):
    """Value to use, where it comes from, and the state for the next step."""

    value: float
    source: OrderSource
    state: HoldState
    hold_remaining_s: float
    """Seconds the held order will still be used (0 unless source is HELD)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldThenFallback:
    """Holds the utility's last order for ``hold_s`` after the link drops, then falls back.

    Returns to the utility's order as soon as a valid one is available again.
    """

    hold_s: float = 900.0
    """How long the last order is held (DOMAIN: ~15 min)."""

    def __post_init__(self) -> None:
        _require_non_negative("HoldThenFallback.hold_s", self.hold_s)

    def step(
        self,
        state: HoldState,
        *,
        order: float | None,
        link_up: bool,
        fallback: float,
        now_s: float,
    ) -> HoldResult:
        """Choose between the utility's order, the held order and ``fallback``.

        ``order`` is the utility's current order (None or NaN: none); it counts only while
        ``link_up`` (decide that with `Staleness` on the link's heartbeat). ``fallback`` is
        the value to use once the hold has run out (e.g. `weather_curve_supply_c`).
        """
        if not (math.isfinite(fallback) and math.isfinite(now_s)):
            _require_finite("fallback", fallback)
            _require_finite("now_s", now_s)
        if link_up and order is not None and math.isfinite(order):
            return HoldResult(
                value=order,
                source=OrderSource.UTILITY,
                state=HoldState(last_order=order, link_lost_s=None),
                hold_remaining_s=0.0,
            )
        link_lost_s = state.link_lost_s
        if link_lost_s is None or link_lost_s > now_s:
            link_lost_s = now_s
        new_state = HoldState(last_order=state.last_order, link_lost_s=link_lost_s)
        remaining_s = self.hold_s - (now_s - link_lost_s)
        if state.last_order is not None and remaining_s > 0.0:
            return HoldResult(
                value=state.last_order,
                source=OrderSource.HELD,
                state=new_state,
                hold_remaining_s=remaining_s,
            )
        return HoldResult(value=fallback, source=OrderSource.FALLBACK, state=new_state, hold_remaining_s=0.0)


# --- min/max select -----------------------------------------------------------------------


class Selection(NamedTuple):
    """Winning value of a min/max select and the name of the input it came from."""

    value: float
    name: str


def select_min(candidates: Mapping[str, float]) -> Selection:
    """Lowest candidate, for override min-select (e.g. "dh_supply" vs "fws_too_hot").

    On a tie the first in order wins, so list the normal controller first and an override
    is reported active only when it really lowers the value. Raises ValueError when
    ``candidates`` is empty or holds a NaN.
    """
    return _select(candidates, lowest=True)


def select_max(candidates: Mapping[str, float]) -> Selection:
    """Highest candidate; ties and errors as `select_min`."""
    return _select(candidates, lowest=False)


def _select(candidates: Mapping[str, float], *, lowest: bool) -> Selection:
    if not candidates:
        raise ValueError("select: no candidates")
    best_name: str | None = None
    best = math.nan
    for name, value in candidates.items():
        if math.isnan(value):
            raise ValueError(f"select: candidate {name!r} is NaN")
        if best_name is None or (value < best if lowest else value > best):
            best_name, best = name, value
    assert best_name is not None  # candidates is not empty
    return Selection(best, best_name)


# --- checks -------------------------------------------------------------------------------


def _require_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")


def _require_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")


def _require_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
