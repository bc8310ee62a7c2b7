"""The process image: the latest reading of every device, and frozen snapshots of it.

Pollers replace a device's :class:`Reading` whole (never mutate it), so a snapshot is a
shallow copy of one dict and a value never changes while a controller looks at it
(OpenEMS' "next value" frozen at the start of the cycle).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.sample import Quality, Reading


@dataclass(frozen=True, slots=True)
class Sample:
    """One signal as the controllers see it."""

    value: float
    quality: Quality
    timestamp_ns: int
    reason: str = ""

    def age_s(self, now_ns: int) -> float:
        """Seconds since the value was read."""
        return (now_ns - self.timestamp_ns) / 1e9


_MISSING = Sample(math.nan, Quality.BAD, 0, "never read")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A frozen view of every device's latest reading, taken at ``taken_ns``."""

    readings: Mapping[str, Reading]
    taken_ns: int

    def sample(self, device: str, signal: str) -> Sample:
        """The signal's value and quality; bad with a reason when not readable."""
        reading = self.readings.get(device)
        if reading is None:
            return _MISSING
        value = reading.values.get(signal)
        if value is not None:
            return Sample(value, Quality.GOOD, reading.timestamp_ns)
        if signal in reading.uncertain:
            return Sample(reading.uncertain[signal], Quality.UNCERTAIN, reading.timestamp_ns)
        reason = reading.bad.get(signal) or reading.bad.get("*") or "not in the last reading"
        return Sample(math.nan, Quality.BAD, reading.timestamp_ns, reason)

    def good(self, device: str, signal: str, max_age_s: float) -> float | None:
        """The value if it is good and younger than ``max_age_s``; ``None`` otherwise.

        Controllers use this, so a stale or bad value can never pass as a number.
        """
        reading = self.readings.get(device)
        if reading is None or (self.taken_ns - reading.timestamp_ns) > max_age_s * 1e9:
            return None
        return reading.values.get(signal)

    def fresh(self, device: str, max_age_s: float) -> Mapping[str, float] | None:
        """The device's good values if its reading is younger than ``max_age_s``; ``None`` otherwise.

        ``fresh(device, age).get(signal)`` is ``good(device, signal, age)``: the control cycle
        reads a device's dozen signals with one age check instead of one each.
        """
        reading = self.readings.get(device)
        if reading is None or (self.taken_ns - reading.timestamp_ns) > max_age_s * 1e9:
            return None
        return reading.values


class ProcessImage:
    """Latest reading per device, written by the pollers, read as snapshots."""

    def __init__(self) -> None:
        self._latest: dict[str, Reading] = {}

    def update(self, reading: Reading) -> None:
        """Store a device's newest reading."""
        self._latest[reading.device] = reading

    def mark_unavailable(self, device: str, timestamp_ns: int, reason: str) -> None:
        """Every signal of the device is bad from now on, with the reason."""
        self._latest[device] = Reading(device=device, timestamp_ns=timestamp_ns, values={}, bad={"*": reason})

    def snapshot(self, now_ns: int) -> Snapshot:
        """Freeze the image for one control cycle."""
        return Snapshot(MappingProxyType(dict(self._latest)), now_ns)
