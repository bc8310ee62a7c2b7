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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Channel", "NoiseTable", "SensorLayer", "SensorSpec", "is_temperature"]

_TABLE_SIZE = 1 << 16


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


class Channel:
    """One signal's transmitter: its spec as plain floats and its lag state (hot path: slots only)."""

    __slots__ = (
        "bias",
        "drift_per_day",
        "lag_s",
        "last_dt_s",
        "last_s",
        "last_value",
        "last_weight",
        "offset",
        "quantised",
        "resolution",
        "signal",
    )

    def __init__(self, signal: str, spec: SensorSpec) -> None:
        self.signal = signal
        self.bias = spec.bias
        self.drift_per_day = spec.drift_per_day
        self.lag_s = spec.lag_s
        self.resolution = spec.resolution
        self.last_value = math.nan
        self.last_s = math.nan  # nan: not read yet
        self.last_dt_s = math.nan
        self.last_weight = 0.0
        self.offset = bool(spec.bias or spec.drift_per_day)
        # Steps of the resolution -> the reported value. round(x, 6) is the costly part of a
        # read (a correctly rounded decimal conversion); a sensor sees a few thousand steps a day.
        self.quantised: dict[int, float] = {}


class SensorLayer:
    """Applies :class:`SensorSpec` per ``device.signal`` and an update period per device."""

    __slots__ = ("_channels", "_held", "_periods")

    def __init__(self, specs: Mapping[str, SensorSpec], update_periods_s: Mapping[str, float]) -> None:
        by_device: dict[str, list[Channel]] = {}
        for key, spec in specs.items():
            device, _, signal = key.partition(".")
            if not spec.perfect:
                by_device.setdefault(device, []).append(Channel(signal, spec))
        self._channels = by_device
        self._periods = {device: period for device, period in update_periods_s.items() if period > 0.0}
        self._held: dict[str, tuple[float, dict[str, float]]] = {}

    @property
    def active(self) -> bool:
        """True when any signal or device is not perfect (the plant can skip the layer otherwise)."""
        return bool(self._channels or self._periods)

    def apply(self, device: str, values: dict[str, float], now_s: float) -> dict[str, float]:
        """What the device reports at ``now_s``, given what a perfect (noisy) sensor would."""
        held = self.held(device, now_s)
        if held is not None:
            return held
        channels = self._channels.get(device)
        if channels:
            self.apply_channels(channels, values, now_s)
        self.hold(device, now_s, values)
        return values

    def channels(self, device: str, signals: Collection[str] | None = None) -> tuple[Channel, ...]:
        """The device's transmitters that change a value (of ``signals`` only, if given).

        A planned read (:meth:`Plant.reader <simulators.plant.Plant.reader>`) resolves them once and
        passes them to :meth:`apply_channels`; they are the same objects :meth:`apply` uses, so a
        signal's lag state does not depend on which kind of read came last.
        """
        channels = self._channels.get(device, [])
        return tuple(channel for channel in channels if signals is None or channel.signal in signals)

    def periodic(self, device: str) -> bool:
        """True when the device repeats its last values until its next update (:meth:`held`)."""
        return device in self._periods

    def held(self, device: str, now_s: float) -> dict[str, float] | None:
        """A copy of the values the device repeats at ``now_s``; None when it computes new ones."""
        period = self._periods.get(device)
        if period is not None:
            held = self._held.get(device)
            if held is not None and now_s - held[0] < period:
                return dict(held[1])
        return None

    def hold(self, device: str, now_s: float, values: dict[str, float]) -> None:
        """Remember what a periodic device computed at ``now_s`` (nothing for the others)."""
        if device in self._periods:
            self._held[device] = (now_s, dict(values))

    @staticmethod
    def apply_channels(channels: Iterable[Channel], values: dict[str, float], now_s: float) -> None:
        """Lag, bias, drift and resolution of ``channels``, in place (a missing value is skipped)."""
        for channel in channels:
            value = values.get(channel.signal)
            if value is None:
                continue
            lag_s = channel.lag_s
            if lag_s > 0.0:
                last_s = channel.last_s
                if last_s == last_s:  # read before (not nan)
                    dt_s = now_s - last_s
                    # exp(-dt/tau) once per interval: reads come at a handful of intervals.
                    if dt_s != channel.last_dt_s:
                        channel.last_dt_s = dt_s
                        channel.last_weight = -math.expm1(-max(dt_s, 0.0) / lag_s)
                    previous = channel.last_value
                    value = previous + channel.last_weight * (value - previous)
                channel.last_value = value
                channel.last_s = now_s
            if channel.offset:
                value += channel.bias + channel.drift_per_day * now_s / 86400.0
            resolution = channel.resolution
            if resolution > 0.0:
                steps = round(value / resolution)
                quantised = channel.quantised.get(steps)
                if quantised is None:
                    quantised = channel.quantised[steps] = round(steps * resolution, 6)
                value = quantised
            values[channel.signal] = value
