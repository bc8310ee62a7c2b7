"""Setpoints out: clamped to the profile's limits, rate-limited, written as leases.

Every value the supervisor wants on a device passes :meth:`WriteBook.propose` once per cycle:

1. clamp to the writable signal's ``min``/``max`` from the device profile (the executor checks
   again; this makes sure it never has to refuse);
2. rate-limit with the signal's ramp, starting from the device's present value the first
   time (bumpless take-over after a start, a restart or a watchdog fallback);
3. round to the signal's resolution, taken from its unit suffix (``_c``/``_k`` 0.01,
   ``_kw`` 10, ``_pct`` 0.1), so a ramp that has arrived produces no more writes;
4. emit a :class:`Write` only when the value differs from the last one written, the lease is
   older than the refresh period, or the device's read-back shows it no longer holds what
   was written (it fell back to a local value). Everything written expires on the device
   when the gateway stops (the heartbeat watchdog), so a write is a lease, never a latch.

The book is mutable but lives for one cycle only: the supervisor copies the previous
cycle's ramps and leases into it and stores the result in its new (frozen) state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.control.blocks import RampLimiter, RampState

__all__ = ["Lease", "SignalKey", "Write", "WriteBook", "WriteLimits", "resolution_of"]

SignalKey = tuple[str, str]
"""(device, signal)."""

WriteLimits = Mapping[SignalKey, tuple[float, float]]
"""Writable signals and their (min, max) from the device profiles; the executor uses the same."""


@dataclass(frozen=True, slots=True)
class Write:
    """One value for one device signal, and why (e.g. ``dh_trim``, ``override:fws_too_hot``)."""

    device: str
    signal: str
    value: float
    reason: str


@dataclass(frozen=True, slots=True)
class Lease:
    """The last value written to a signal and when."""

    value: float
    time_s: float


_RESOLUTION_BY_SUFFIX = (("_c", 0.01), ("_k", 0.01), ("_kw", 10.0), ("_pct", 0.1))


_RESOLUTION_CACHE: dict[str, float] = {}


def resolution_of(signal: str) -> float:
    """Smallest step worth writing, from the unit suffix of the name; 0 = exact (enums, counters)."""
    resolution = _RESOLUTION_CACHE.get(signal)
    if resolution is None:
        resolution = next((step for suffix, step in _RESOLUTION_BY_SUFFIX if signal.endswith(suffix)), 0.0)
        _RESOLUTION_CACHE[signal] = resolution
    return resolution


class WriteBook:
    """One cycle's writes, with the ramps and leases carried from the previous cycle."""

    __slots__ = ("_limits", "_ramps_by_signal", "grace_s", "leases", "now_s", "ramps", "refresh_s", "writes")

    def __init__(
        self,
        limits: WriteLimits,
        ramps_by_signal: Mapping[str, RampLimiter],
        *,
        ramps: Mapping[SignalKey, RampState],
        leases: Mapping[SignalKey, Lease],
        now_s: float,
        refresh_s: float,
        grace_s: float,
    ) -> None:
        self._limits = limits
        self._ramps_by_signal = ramps_by_signal
        self.ramps: dict[SignalKey, RampState] = dict(ramps)
        self.leases: dict[SignalKey, Lease] = dict(leases)
        self.now_s = now_s
        self.refresh_s = refresh_s
        self.grace_s = grace_s
        self.writes: list[Write] = []

    def can_write(self, device: str, signal: str) -> bool:
        """True when the device's profile has this signal as writable."""
        return (device, signal) in self._limits

    def propose(self, device: str, signal: str, target: float, reason: str, *, present: float | None = None) -> float:
        """Offer a value for a signal; returns what the device is (being) given.

        ``present`` is the value the device acts on now (its read-back, or for a CDU in local
        mode its local setpoint): the ramp starts there, and a present value that no longer
        matches the last write (after ``grace_s``) makes the write repeat at once.
        Raises KeyError for a signal that is not writable (check `can_write` first).
        """
        key = (device, signal)
        low, high = self._limits[key]
        if not math.isfinite(target):
            raise ValueError(f"{device}.{signal}: target {target} is not finite ({reason})")
        value = min(max(target, low), high)
        now_s = self.now_s
        lease = self.leases.get(key)
        resolution = resolution_of(signal)
        reverted = (
            present is not None
            and lease is not None
            and now_s - lease.time_s >= self.grace_s
            and abs(present - lease.value) > max(1.5 * resolution, 1e-9)
        )
        limiter = self._ramps_by_signal.get(signal)
        if limiter is not None:
            state = self.ramps.get(key)
            if state is None or reverted:
                start = value if present is None or not math.isfinite(present) else min(max(present, low), high)
                state = RampState(value=start, time_s=now_s)
            state = limiter.step(state, target=value, now_s=now_s)
            self.ramps[key] = state
            value = state.value
        if resolution > 0.0:
            value = min(max(round(value / resolution) * resolution, low), high)
            # round() leaves binary noise (40.010000000000005); keep the decimals the resolution has.
            value = round(value, 6)
        if lease is None or value != lease.value or now_s - lease.time_s >= self.refresh_s or reverted:
            self.leases[key] = Lease(value, now_s)
            self.writes.append(Write(device, signal, value, reason))
        return value

    def pulse(self, device: str, signal: str, value: float, reason: str) -> None:
        """Write a value every time (heartbeats), clamped to the limits, with no ramp or lease."""
        low, high = self._limits[(device, signal)]
        self.writes.append(Write(device, signal, min(max(value, low), high), reason))
