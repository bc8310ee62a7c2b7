"""Two sensors of one quantity that must agree: the heat meter's supply and the station's.

The heat meter at the site boundary and the station PLC's own supply sensor measure the same
water a few hundred metres apart: while it flows they differ by the pipe's heat loss and the
sensors' offsets, a kelvin or so (the DH trim learns that offset, within ``dh_trim_max_k``).
A difference of several kelvin that lasts is a fault of one of them: a profile with the wrong
scale (6.9 degC for 69 degC lies inside every physical range), a sensor out of its pocket, a
meter whose gateway froze. Which one is wrong cannot be told from the two alone, so this is an
alarm for the operator (``dh_sensors_disagree`` in the log, ``alarm_dh_sensors`` in the
``control`` measurement), not a control decision; the trim stays within its limits meanwhile.

Judged only while the meter sees heat flowing (at least ``dh_sensors_min_power_kw``): water
standing in the pipe cools, and the two then rightly differ. A difference must last
``dh_sensors_after_s`` (a requirement step reaches the meter only after the pipe's transport
delay) and clears below 80 % of the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CLEAR_FRACTION = 0.8
"""The alarm clears once the difference is below this share of the tolerance (hysteresis)."""


@dataclass(slots=True)
class SensorCrossCheck:
    """The state of one cross-check; :meth:`update` once per cycle."""

    max_diff_k: float
    after_s: float
    min_flow: float
    apart_since_s: float = math.nan
    alarm: bool = False
    diff_k: float = math.nan

    def update(self, a: float | None, b: float | None, flow: float | None, now_s: float) -> bool:
        """Judge one cycle's values (``flow``: what says the water moves); True when the alarm changed."""
        if a is None or b is None or flow is None or flow < self.min_flow:
            self.diff_k = math.nan if a is None or b is None else a - b
            self.apart_since_s = math.nan  # nothing to judge: a fault must show again, in full
            return False
        self.diff_k = diff = a - b
        if abs(diff) > self.max_diff_k:
            if math.isnan(self.apart_since_s):
                self.apart_since_s = now_s
            if not self.alarm and now_s - self.apart_since_s >= self.after_s:
                self.alarm = True
                return True
            return False
        if abs(diff) <= CLEAR_FRACTION * self.max_diff_k:
            self.apart_since_s = math.nan
            if self.alarm:
                self.alarm = False
                return True
        return False
