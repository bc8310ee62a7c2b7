# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""What a device reports is not the process: noise, bias, drift, lag, resolution, update period.

Two pieces, both applied when a device is *read* (the physics never sees them):

- :class:`NoiseTable`: standard-normal draws, precomputed once per plant from its seeded
  generator. A device read takes one random slice of it (one ``random()`` call instead of one
  ``gauss()`` per signal): a simulated day reads ~13 million noisy values, and drawing each
  with ``random.gauss`` was a third of the plant's cost. Within one read the draws are
  consecutive table entries (independent normals); reads start at independent random offsets.
- :class:`SensorLayer`: per ``device.signal`` what a real transmitter adds on top of the
  noise: a fixed bias (calibration error), a drift (K per day, linear from the start), a
  first-order lag (immersion sensor in a thermowell), a resolution (the register's scaling or
  the meter's display digits) and, per device, an update period (an M-Bus heat meter
  computes a new value every few seconds to a minute and repeats the last one in between).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NoiseTable", "SensorLayer", "SensorSpec", "is_temperature"]

_TABLE_SIZE = 1 << 16
_MAX_CACHED_WEIGHTS = 256


def is_temperature(signal: str) -> bool:
    """A measured temperature (``tcs_supply_temp_c``, ``flow_temp_c``), not a setpoint or limit."""
    return signal.endswith("_c") and "temp" in signal and "setpoint" not in signal


class NoiseTable:
    """Precomputed standard-normal draws; :meth:`take` gives ``count`` of them."""

    __slots__ = ("_random", "_span", "_table")

    def __init__(self, rng: random.Random, size: int = _TABLE_SIZE) -> None:
        gauss = rng.gauss
        self._table = [gauss(0.0, 1.0) for _ in range(size)]
        self._random = rng.random
        self._span = size

    def take(self, count: int) -> list[float]:
        """``count`` standard-normal draws (a slice at a random offset)."""
        start = int(self._random() * (self._span - count))
        return self._table[start : start + count]


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """How one signal's transmitter differs from the truth (all zero: a perfect sensor)."""

    bias: float = 0.0
    """Fixed offset, in the signal's unit."""
    drift_per_day: float = 0.0
    """Offset growing linearly from the start, in the signal's unit per day."""
    lag_s: float = 0.0
    """First-order time constant of the sensing element."""
    resolution: float = 0.0
    """Reported value rounded to a multiple of this (0: not rounded)."""

    @property
    def perfect(self) -> bool:
        """True when this spec changes nothing."""
        return not (self.bias or self.drift_per_day or self.lag_s or self.resolution)


class SensorLayer:
    """Applies :class:`SensorSpec` per ``device.signal`` and an update period per device."""

    __slots__ = ("_held", "_lagged", "_periods", "_specs", "_weights")

    def __init__(self, specs: Mapping[str, SensorSpec], update_periods_s: Mapping[str, float]) -> None:
        by_device: dict[str, list[tuple[str, SensorSpec]]] = {}
        for key, spec in specs.items():
            device, _, signal = key.partition(".")
            if not spec.perfect:
                by_device.setdefault(device, []).append((signal, spec))
        self._specs = by_device
        self._periods = {device: period for device, period in update_periods_s.items() if period > 0.0}
        self._lagged: dict[tuple[str, str], tuple[float, float]] = {}
        self._held: dict[str, tuple[float, dict[str, float]]] = {}
        # exp(-dt/tau) per (tau, dt): reads come at a handful of intervals, so this is a few entries.
        self._weights: dict[tuple[float, float], float] = {}

    @property
    def active(self) -> bool:
        """True when any signal or device is not perfect (the plant can skip the layer otherwise)."""
        return bool(self._specs or self._periods)

    def apply(self, device: str, values: dict[str, float], now_s: float) -> dict[str, float]:
        """What the device reports at ``now_s``, given what a perfect (noisy) sensor would."""
        period = self._periods.get(device)
        if period is not None:
            held = self._held.get(device)
            if held is not None and now_s - held[0] < period:
                return dict(held[1])
        specs = self._specs.get(device)
        if specs:
            lagged = self._lagged
            weights = self._weights
            for signal, spec in specs:
                value = values.get(signal)
                if value is None:
                    continue
                lag_s = spec.lag_s
                if lag_s > 0.0:
                    key = (device, signal)
                    previous = lagged.get(key)
                    if previous is not None:
                        dt_s = now_s - previous[1]
                        weight = weights.get((lag_s, dt_s))
                        if weight is None:
                            weight = -math.expm1(-max(dt_s, 0.0) / lag_s)
                            if len(weights) > _MAX_CACHED_WEIGHTS:  # irregular reads (real path)
                                weights.clear()
                            weights[(lag_s, dt_s)] = weight
                        value = previous[0] + weight * (value - previous[0])
                    lagged[key] = (value, now_s)
                if spec.bias or spec.drift_per_day:
                    value += spec.bias + spec.drift_per_day * now_s / 86400.0
                resolution = spec.resolution
                if resolution > 0.0:
                    value = round(round(value / resolution) * resolution, 6)
                values[signal] = value
        if period is not None:
            self._held[device] = (now_s, dict(values))
        return values
