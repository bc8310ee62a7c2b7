# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Hydraulics of the facility water loop: CDU control valves in parallel on one pump.

Every CDU branch is a control valve in series with the branch's fixed resistance (the CDU's
plate exchanger, strainer, piping), fed from the hall's supply and return headers. Flow
through a resistance is ``m = C * sqrt(dp)`` (turbulent), with ``C`` the branch
conductance in kg/s per sqrt(bar).

- **Inherent characteristic** of the valve (fixed pressure drop across it):
  equal percentage ``Kv/Kvs = R ** (h - 1)`` with rangeability ``R`` and stroke ``h`` (0-1)
  down to ``SHUT_OFF_STROKE`` (5 %), and linear from there to zero so that a closed valve shuts
  tight (the ideal curve would still pass Kvs/R at 0 %); or linear ``Kv/Kvs = h``.
- **Installed characteristic** (valve plus fixed resistance at a fixed branch pressure
  drop): with authority ``a`` = valve's share of the branch pressure drop when fully open,
  ``m / m_open = phi / sqrt(a + (1 - a) * phi**2)``; ``a = 1`` is the inherent curve, a low
  authority bends an equal-percentage valve towards linear.
- **Coupling**: the branches share one header differential pressure, which falls with the
  total flow as a fixed-speed pump's curve plus the mains do: ``dp = dp0 - s * m_total**2``.
  With every branch ``m_i = C_i * sqrt(dp)`` this solves in closed form,
  ``dp = dp0 / (1 + s * (sum C_i) ** 2)``: one CDU opening its valve raises ``sum C_i``,
  lowers ``dp`` and so every other branch's flow, until their own controllers open further.

The functions are pure and cheap (one ``pow`` and one ``sqrt`` per valve), so the plant calls
them every sub-step.
"""

from __future__ import annotations

import math

__all__ = ["SHUT_OFF_STROKE", "FacilityLoop", "equal_percentage", "installed_flow_fraction", "valve_characteristic"]


SHUT_OFF_STROKE = 0.05
"""Below this stroke the equal-percentage curve goes linearly to a tight shut-off."""


def equal_percentage(stroke: float, rangeability: float) -> float:
    """Relative Kv of an equal-percentage valve at ``stroke`` (0-1), 0 when shut, 1 when open."""
    if stroke <= 0.0:
        return 0.0
    if stroke >= 1.0:
        return 1.0
    if stroke < SHUT_OFF_STROKE:
        return math.pow(rangeability, SHUT_OFF_STROKE - 1.0) * stroke / SHUT_OFF_STROKE
    return math.pow(rangeability, stroke - 1.0)


def valve_characteristic(stroke: float, *, characteristic: str, rangeability: float) -> float:
    """Relative Kv of the valve (``equal_percentage`` or ``linear``) at ``stroke`` (0-1)."""
    if characteristic == "linear":
        return min(max(stroke, 0.0), 1.0)
    return equal_percentage(stroke, rangeability)


def installed_flow_fraction(relative_kv: float, authority: float) -> float:
    """Branch flow over its flow with the valve fully open, at the same branch pressure drop.

    ``relative_kv`` is the valve's Kv/Kvs; ``authority`` (0-1] the valve's share of the
    branch's pressure drop when fully open.
    """
    if relative_kv <= 0.0:
        return 0.0
    return relative_kv / math.sqrt(authority + (1.0 - authority) * relative_kv * relative_kv)


class FacilityLoop:
    """The header differential pressure the branches share, from the pump curve and the mains.

    ``design_dp_bar`` at ``design_flow_kg_s`` and ``shutoff_dp_bar`` at no flow, quadratic in
    between: ``dp = shutoff - (shutoff - design) * (m / m_design) ** 2``. ``shutoff_dp_bar`` equal
    to ``design_dp_bar`` is a pump that holds the header pressure exactly (no coupling).
    """

    __slots__ = ("_shutoff_dp_bar", "_slope_bar_per_kg2s2", "design_dp_bar")

    def __init__(self, *, design_dp_bar: float, shutoff_dp_bar: float, design_flow_kg_s: float) -> None:
        if design_dp_bar <= 0.0 or design_flow_kg_s <= 0.0:
            raise ValueError("design_dp_bar and design_flow_kg_s must be positive")
        if shutoff_dp_bar < design_dp_bar:
            raise ValueError(
                f"shutoff_dp_bar {shutoff_dp_bar} is below design_dp_bar {design_dp_bar}: a pump delivers "
                "its highest head at no flow"
            )
        self.design_dp_bar = design_dp_bar
        self._shutoff_dp_bar = shutoff_dp_bar
        self._slope_bar_per_kg2s2 = (shutoff_dp_bar - design_dp_bar) / (design_flow_kg_s * design_flow_kg_s)

    def header_dp_bar(self, total_conductance: float) -> float:
        """Header differential pressure with branches of this summed conductance (kg/s per sqrt(bar))."""
        return self._shutoff_dp_bar / (1.0 + self._slope_bar_per_kg2s2 * total_conductance * total_conductance)

    def flows_kg_s(self, conductances: list[float]) -> tuple[list[float], float]:
        """Each branch's flow and the header differential pressure."""
        dp = self.header_dp_bar(sum(conductances))
        root = math.sqrt(dp)
        return [c * root for c in conductances], dp
