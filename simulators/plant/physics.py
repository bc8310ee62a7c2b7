# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Building blocks of the heat path: exchangers, heat-pump COP, pipes and mixed volumes.

Every dynamic element is discretised exactly for a constant input over the step (the
``exp(-dt/tau)`` form), so a step of any length is stable. The pipe and the mixed volume
return the *mean* outlet temperature over the step, not the end value: with it the energy
that leaves equals the energy that entered minus what was stored, so the model's energy
balance closes to rounding error instead of drifting with the step size.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = [
    "KELVIN",
    "MixedVolume",
    "PlugFlowPipe",
    "counterflow_effectiveness",
    "counterflow_ntu",
    "heat_pump_cop",
    "weather_curve_supply_temp_c",
]

KELVIN = 273.15


def counterflow_effectiveness(ntu: float, capacity_ratio: float) -> float:
    """Effectiveness of a counterflow heat exchanger (eps-NTU), ``capacity_ratio`` = Cmin/Cmax."""
    if ntu <= 0.0:
        return 0.0
    if capacity_ratio > 0.999:  # balanced flows: the general formula is 0/0
        return ntu / (1.0 + ntu)
    x = math.exp(-ntu * (1.0 - capacity_ratio))
    return (1.0 - x) / (1.0 - capacity_ratio * x)


def counterflow_ntu(effectiveness: float, capacity_ratio: float) -> float:
    """Inverse of :func:`counterflow_effectiveness`: the NTU that gives ``effectiveness``."""
    if not 0.0 < effectiveness < 1.0:
        raise ValueError(f"effectiveness must lie in (0, 1), got {effectiveness}")
    if capacity_ratio > 0.999:
        return effectiveness / (1.0 - effectiveness)
    if effectiveness * capacity_ratio >= 1.0:
        raise ValueError("effectiveness is not reachable at this capacity ratio")
    return math.log((1.0 - effectiveness * capacity_ratio) / (1.0 - effectiveness)) / (1.0 - capacity_ratio)


def heat_pump_cop(
    source_outlet_temp_c: float,
    sink_outlet_temp_c: float,
    *,
    carnot_efficiency_pct: float = 45.0,
    evaporator_approach_k: float = 2.0,
    condenser_approach_k: float = 2.0,
) -> float:
    """Heating COP = efficiency x Carnot COP, from refrigerant temperatures in kelvin.

    The refrigerant evaporates ``evaporator_approach_k`` below the source water leaving the
    evaporator and condenses ``condenser_approach_k`` above the sink water leaving the
    condenser: that is where the compressor really works between, so 50 -> 75 °C water gives
    ~5.4 rather than the 6.3 of the bare water temperatures. The lift is floored at 5 K (a
    real compressor has a minimum pressure ratio) and the result capped at 10.
    """
    hot_k = sink_outlet_temp_c + condenser_approach_k + KELVIN
    cold_k = source_outlet_temp_c - evaporator_approach_k + KELVIN
    lift_k = max(hot_k - cold_k, 5.0)
    cop = carnot_efficiency_pct / 100.0 * hot_k / lift_k
    return min(max(cop, 1.0), 10.0)


def weather_curve_supply_temp_c(
    outdoor_temp_c: float,
    *,
    room_temp_c: float = 20.0,
    slope: float = 1.6,
    offset_k: float = 8.0,
    min_c: float = 65.0,
    max_c: float = 85.0,
) -> float:
    """DH supply temperature from the field heating curve (docs/control.md), clamped.

    ``T = s * 1.8318 * (T_room - T_out)^0.8282 + T_room + offset``; above room temperature the
    curve's own term is zero, so the clamp's minimum (the hot-water minimum) applies.
    """
    difference = max(room_temp_c - outdoor_temp_c, 0.0)
    supply = slope * 1.8318 * math.pow(difference, 0.8282) + room_temp_c + offset_k
    return min(max(supply, min_c), max_c)


class MixedVolume:
    """A well-mixed volume of water: a first-order lag with time constant mass / flow."""

    __slots__ = ("mass_kg", "temp_c")

    def __init__(self, mass_kg: float, temp_c: float) -> None:
        self.mass_kg = mass_kg
        self.temp_c = temp_c

    def flow(self, flow_kg_s: float, inlet_temp_c: float, dt_s: float) -> float:
        """Let ``flow_kg_s`` at ``inlet_temp_c`` through for ``dt_s``; mean outlet temperature."""
        start = self.temp_c
        if flow_kg_s <= 0.0 or dt_s <= 0.0:
            return start
        x = flow_kg_s * dt_s / self.mass_kg
        if x <= 1e-12:
            # A flow decaying towards zero reaches denormal floats; below this nothing moves
            # (and -expm1(-x) / x would divide by zero).
            return start
        decay = math.exp(-x)
        self.temp_c = inlet_temp_c + (start - inlet_temp_c) * decay
        # Mean of the exponential over the step: energy out = in - stored, exactly.
        return inlet_temp_c + (start - inlet_temp_c) * (-math.expm1(-x) / x)

    def energy_kj(self, cp_kj_kgk: float) -> float:
        """Heat content above 0 °C."""
        return self.mass_kg * cp_kj_kgk * self.temp_c


class PlugFlowPipe:
    """A pipe in plug flow: water leaves in the order it entered, delay = volume / flow.

    The content is a queue of parcels (mass, temperature). Each step pushes the inflow as a
    parcel and pops the same mass from the other end, so the delay follows the flow and energy
    is conserved exactly. Small parcels are merged so the queue stays short at tiny steps.
    """

    __slots__ = ("_merge_kg", "_parcels", "mass_kg", "outlet_temp_c")

    def __init__(self, mass_kg: float, temp_c: float, *, resolution: int = 400) -> None:
        self.mass_kg = mass_kg
        self._merge_kg = mass_kg / resolution
        self._parcels: deque[list[float]] = deque([[mass_kg, temp_c]])
        self.outlet_temp_c = temp_c

    def flow(self, flow_kg_s: float, inlet_temp_c: float, dt_s: float) -> float:
        """Push ``flow_kg_s * dt_s`` in at ``inlet_temp_c``; mean temperature of what left."""
        mass = flow_kg_s * dt_s
        if mass <= 0.0:
            return self._parcels[0][1]
        parcels = self._parcels
        last = parcels[-1]
        if last[0] < self._merge_kg:
            total = last[0] + mass
            last[1] = (last[0] * last[1] + mass * inlet_temp_c) / total
            last[0] = total
        else:
            parcels.append([mass, inlet_temp_c])
        need = mass
        energy = 0.0
        while need > 0.0:
            first = parcels[0]
            if first[0] <= need or len(parcels) == 1:
                taken = min(first[0], need)
                energy += taken * first[1]
                need -= taken
                if len(parcels) == 1:
                    first[0] = self.mass_kg  # rounding: the pipe is always full
                    break
                parcels.popleft()
            else:
                first[0] -= need
                energy += need * first[1]
                need = 0.0
        self.outlet_temp_c = energy / mass
        return self.outlet_temp_c

    def energy_kj(self, cp_kj_kgk: float) -> float:
        """Heat content above 0 °C."""
        return cp_kj_kgk * sum(m * t for m, t in self._parcels)

    @property
    def next_outlet_temp_c(self) -> float:
        """Temperature of the water that leaves next (what a sensor at the outlet reads)."""
        return self._parcels[0][1]
