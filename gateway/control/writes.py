"""Setpoints out: clamped to the profile's limits, rate-limited, economical, written as leases.

Every value the supervisor wants on a device passes :meth:`WriteBook.propose` once per cycle,
keyed by (device, role output); the :class:`OutputSpec` says which profile signal that is on
the device (``gateway.control.roles`` binds them) and how it is written:

1. clamp to the signal's ``min``/``max`` from the device profile (the executor checks again;
   this makes sure it never has to refuse);
2. rate-limit with the output's ramp, starting from the device's present value the first time
   (bumpless take-over after a start, a restart or a watchdog fallback);
3. round to the signal's resolution (a Modbus register's scale, else the role's), so a ramp that
   has arrived produces no more writes;
4. emit a :class:`Write` only when the value moved by at least the output's deadband since the
   last write and its minimum interval has passed (overrides and safe states go at once), when
   the device's read-back shows it no longer holds what was written (it fell back to a local
   value), or as a slow refresh. The device's watchdog, kept armed by the heartbeat, is what
   makes a write a lease: everything written expires when the gateway stops.

The book is mutable but lives for one cycle only: the supervisor copies the previous cycle's
ramps and leases into it and stores the result in its new (frozen) state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.control.blocks import RampLimiter, RampState

__all__ = [
    "HEARTBEAT_REASON",
    "Lease",
    "OutputSpec",
    "SignalKey",
    "Write",
    "WriteBook",
    "WriteLimits",
    "settled_value",
    "spend_budget",
]

HEARTBEAT_REASON = "heartbeat"
"""The reason of every heartbeat write (counted apart from setpoint writes)."""
_URGENT = ("override:", "safe_state:")
REFRESH_SPACING_S = 60.0
"""Least time between a lease refresh and any other setpoint write to the same device."""

SignalKey = tuple[str, str]
"""(device, role output), or (device, profile signal) for the executor's limits."""

WriteLimits = Mapping[SignalKey, tuple[float, float]]
"""(device, profile signal) -> (min, max): what the executor lets through."""


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """How one role output is written on one device."""

    signal: str
    """The profile signal it is bound to (what goes into the :class:`Write`)."""
    low: float
    high: float
    resolution: float
    """Smallest step the device stores; 0 = exact (modes, enables)."""
    deadband: float
    """Least change worth a write (default: the resolution)."""
    min_interval_s: float
    """Least time between writes of a changed value (not for overrides and safe states)."""
    revert_band: float = field(init=False, repr=False, compare=False)
    """A read-back further than this from the written value means the device no longer holds it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "revert_band", max(1.5 * self.resolution, 1e-9))


@dataclass(frozen=True, slots=True)
class Write:
    """One value for one device signal, and why (e.g. ``dh_trim``, ``override:fws_too_hot``)."""

    device: str
    signal: str
    value: float
    reason: str


class Lease(NamedTuple):
    """The last value written to a signal and when (a named tuple: cheap to make, every cycle)."""

    value: float
    time_s: float


class WriteBook:
    """One cycle's writes, with the ramps and leases carried from the previous cycle."""

    __slots__ = (
        "_last_write_s",
        "_leases_before",
        "_outputs",
        "_ramps_by_output",
        "_written_s",
        "grace_s",
        "heartbeats",
        "leases",
        "now_s",
        "ramping",
        "ramps",
        "refresh_s",
        "writes",
    )

    def __init__(
        self,
        outputs: Mapping[SignalKey, OutputSpec],
        ramps_by_output: Mapping[str, RampLimiter],
        *,
        ramps: Mapping[SignalKey, RampState],
        leases: Mapping[SignalKey, Lease],
        now_s: float,
        refresh_s: float,
        grace_s: float,
    ) -> None:
        self._outputs = outputs
        self._ramps_by_output = ramps_by_output
        self.ramps: dict[SignalKey, RampState] = dict(ramps)
        self.leases: dict[SignalKey, Lease] = dict(leases)
        self.now_s = now_s
        self.refresh_s = refresh_s
        self.grace_s = grace_s
        self.writes: list[Write] = []
        self.heartbeats = 0
        self.ramping: set[str] = set()
        """Devices with a setpoint still on its way (rate limit) this cycle."""
        self._leases_before = leases
        self._last_write_s: dict[str, float] | None = None
        """Per device: when any of its signals was last written before this cycle (built when first needed)."""
        self._written_s: dict[str, float] = {}
        """Per device: written this cycle, when."""

    def _last_write(self, device: str) -> float:
        written = self._written_s.get(device)
        if written is not None:
            return written
        last = self._last_write_s
        if last is None:
            # Only a refresh or a small steady-state step asks: most cycles never build this.
            last = self._last_write_s = {}
            for (name, _), lease in self._leases_before.items():
                last[name] = max(lease.time_s, last.get(name, -math.inf))
        return last.get(device, -math.inf)

    def can_write(self, device: str, output: str) -> bool:
        """True when the device's role binds this output to a writable signal."""
        return (device, output) in self._outputs

    def propose(self, device: str, output: str, target: float, reason: str, *, present: float | None = None) -> float:
        """Offer a value for a role output; returns what the device holds (or is being given).

        ``present`` is the value the device acts on now (its read-back, or for a CDU in local
        mode its local setpoint): the ramp starts there, and a present value that no longer
        matches the last write (after ``grace_s``) makes the write repeat at once.
        Raises KeyError for an output that is not bound (check `can_write` first).
        """
        key = (device, output)
        spec = self._outputs[key]
        low, high = spec.low, spec.high
        if not math.isfinite(target):
            raise ValueError(f"{device}.{spec.signal}: target {target} is not finite ({reason})")
        value = target if low <= target <= high else min(max(target, low), high)
        now_s = self.now_s
        lease = self.leases.get(key)
        resolution = spec.resolution
        reverted = (
            present is not None
            and lease is not None
            and now_s - lease.time_s >= self.grace_s
            and abs(present - lease.value) > spec.revert_band
        )
        limiter = self._ramps_by_output.get(output)
        if limiter is not None:
            state = self.ramps.get(key)
            if state is not None and not reverted and state.value == value and state.time_s < now_s < math.inf:
                # Arrived and staying there (most cycles): what the limiter's step returns, without it.
                self.ramps[key] = RampState(value, now_s)
            else:
                value = self._ramp(key, device, limiter, state, value, present=present, reverted=reverted)
        wanted = value
        if resolution > 0.0:
            value = settled_value(spec, value)
        if lease is None or reverted:
            write = True
        elif value != lease.value and abs(wanted - lease.value) >= spec.deadband - 1e-9:
            # Judged on the value before rounding: a target hovering between two steps of the
            # resolution must move a whole deadband before it is written again (no dithering).
            write = self._change_due(device, spec, lease, wanted, reason)
        else:
            # A slow refresh, and at most one a minute per device (with a refresh period of
            # several minutes the outputs take turns), so an unchanged device sees at most one
            # setpoint write a minute.
            write = now_s - lease.time_s >= self.refresh_s and now_s - self._last_write(device) >= REFRESH_SPACING_S
        if write:
            self.leases[key] = Lease(value, now_s)
            self._written_s[device] = now_s
            self.writes.append(Write(device, spec.signal, value, reason))
            return value
        assert lease is not None
        return lease.value

    def unchanged(self, key: SignalKey, target: float, present: float | None) -> float | None:
        """What the device holds, when proposing ``target`` would write nothing and change nothing but
        renew an arrived ramp (renewed here); else None, and :meth:`propose` it.

        The usual cycle of a settled output (an enable, a setpoint at its target, a trimmed setpoint
        moving less than a deadband), checked the way ``propose`` would find it: a read-back that
        holds, the target within the limits and rounding to what was written (or less than a
        deadband from it), its ramp (if any) there or arriving in this step, and no refresh due.
        """
        lease = self.leases.get(key)
        if lease is None:
            return None
        spec = self._outputs[key]
        if not spec.low <= target <= spec.high or not math.isfinite(target):
            return None
        now_s = self.now_s
        held = lease.value
        age_s = now_s - lease.time_s
        value = settled_value(spec, target) if spec.resolution > 0.0 else target
        if (
            (present is not None and age_s >= self.grace_s and abs(present - held) > spec.revert_band)  # reverted
            or (value != held and abs(target - held) >= spec.deadband - 1e-9)  # a change worth writing (if due)
            or (age_s >= self.refresh_s and now_s - self._last_write(key[0]) >= REFRESH_SPACING_S)  # a refresh
        ):
            return None
        limiter = self._ramps_by_output.get(key[1])
        if limiter is not None:
            state = self.ramps.get(key)
            if state is None or not state.time_s < now_s < math.inf:
                return None
            before = state.value
            if before != target:
                # A trimmed setpoint moves a little every cycle: the ramp's step arrives at once.
                if not limiter.reaches(before, target, now_s - state.time_s):
                    return None  # on its way: the ramp's step is propose's
                if abs(before - target) > spec.resolution:
                    self.ramping.add(key[0])  # as _ramp marks a step that arrives
            self.ramps[key] = RampState(target, now_s)
        return held

    def _ramp(
        self,
        key: SignalKey,
        device: str,
        limiter: RampLimiter,
        state: RampState | None,
        value: float,
        *,
        present: float | None,
        reverted: bool,
    ) -> float:
        """One step of the output's ramp towards ``value`` (from the device's present value the first
        time or after it reverted); marks the device ramping while the limit holds the value back."""
        spec = self._outputs[key]
        low, high, resolution = spec.low, spec.high, spec.resolution
        if state is None or reverted:
            start = value if present is None or not math.isfinite(present) else min(max(present, low), high)
            state = RampState(start, self.now_s)
        before = state.value
        state = limiter.step(state, target=value, now_s=self.now_s)
        self.ramps[key] = state
        # Ramping: the limit holds the value back now, or held it back until this step (the
        # step that arrives belongs to the ramp too).
        if abs(state.value - value) > resolution or abs(before - value) > resolution:
            self.ramping.add(device)
        return state.value

    def _change_due(self, device: str, spec: OutputSpec, lease: Lease, wanted: float, reason: str) -> bool:
        """A change worth writing: is it due? Not more often than the output's interval unless the
        reason is an override or a safe state (IT first: those never wait)."""
        now_s = self.now_s
        urgent = reason.startswith(_URGENT)
        write = now_s - lease.time_s >= spec.min_interval_s - 1e-9 or urgent
        small = abs(wanted - lease.value) < 2.0 * spec.deadband
        if write and small and not (urgent or device in self.ramping):
            # Steady state (no ramp on the device (this output's ramp included), a step of less than two deadbands): one
            # setpoint write a minute per device at most, so trims on two outputs of one PLC
            # do not each cost a write a minute. A larger step (the end of a ramp) goes.
            write = now_s - self._last_write(device) >= REFRESH_SPACING_S
        return write

    def pulse(self, device: str, signal: str, value: float, low: float, high: float) -> None:
        """A heartbeat: written every time, clamped to its limits, with no ramp or lease."""
        self.heartbeats += 1
        self.writes.append(Write(device, signal, min(max(value, low), high), HEARTBEAT_REASON))


def settled_value(spec: OutputSpec, value: float) -> float:
    """``value`` (within the limits) as the device stores it: rounded to the resolution, kept in the limits."""
    resolution = spec.resolution
    if resolution <= 0.0:
        return value
    value = round(value / resolution) * resolution
    if not spec.low <= value <= spec.high:
        value = min(max(value, spec.low), spec.high)
    # round() leaves binary noise (40.010000000000005); keep the decimals the resolution has.
    return round(value, 6)


def spend_budget(
    budgets: Mapping[str, Lease],
    spent: Mapping[str, int],
    per_hour: Mapping[str, float],
    now_s: float,
    *,
    since_s: float | None = None,
) -> tuple[dict[str, Lease], list[str]]:
    """Token bucket of setpoint writes per device: (new buckets, devices this cycle overdrew).

    A device earns ``per_hour / 3600`` writes a second up to ten minutes' worth; a cycle that
    writes more than it has left overdraws (the caller warns; the writes still go: IT first).
    The bucket is a :class:`Lease` (tokens left, when). Only buckets that are not full are
    kept: a device without one had a full bucket at ``since_s``, the time of the call that
    returned the buckets (None: no call yet, every bucket full), which is the same as a
    ``Lease(capacity, since_s)``. So a cycle that writes nothing to a device whose bucket is
    full does nothing for it (most cycles, every device).
    """
    if not budgets and not spent and (since_s is None or now_s >= since_s):
        return {}, []  # every bucket full and staying full
    new: dict[str, Lease] = {}
    overdrawn: list[str] = []
    for device, rate_h in per_hour.items():
        capacity = rate_h / 6.0
        bucket = budgets.get(device)
        if bucket is not None:
            tokens = min(capacity, bucket.value + (now_s - bucket.time_s) * rate_h / 3600.0)
        elif since_s is not None:
            tokens = min(capacity, capacity + (now_s - since_s) * rate_h / 3600.0)
        else:
            tokens = capacity
        used = spent.get(device, 0)
        if used > tokens:
            overdrawn.append(device)
        left = max(tokens - used, 0.0)
        if left != capacity:
            new[device] = Lease(left, now_s)
    return new, overdrawn
