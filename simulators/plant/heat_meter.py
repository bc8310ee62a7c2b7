# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""The EN 1434 heat meter at the site boundary (device ``heat-meter``).

It measures the DH flow and the flow/return temperature pair where the heat leaves the site,
computes power and integrates energy, volume and operating time like a class 2 meter with a
Modbus gateway. Energy only counts while heat flows out of the site (a heat meter's heat
register does not run backwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from simulators.plant.config import PlantConfig

__all__ = ["HEAT_METER_SIGNALS", "NOISE_DRAWS", "HeatMeter"]

HEAT_METER_SIGNALS: tuple[str, ...] = (
    "heat_power_kw",
    "flow_temp_c",
    "return_temp_c",
    "temp_difference_k",
    "flow_m3h",
    "heat_energy_mwh",
    "volume_m3",
    "operating_time_h",
    "error_code",
)

NOISE_DRAWS = 3  # flow and return temperature, volume flow
ERROR_NONE = 0
ERROR_FLOW_OVER_RANGE = 2  # flow above the meter's qs


class HeatMeter:
    """Meter state and integration."""

    __slots__ = (
        "_cp",
        "_density",
        "_max_flow_m3h",
        "_rel_noise",
        "_temp_noise",
        "energy_mwh",
        "flow_kg_s",
        "flow_temp_c",
        "operating_time_h",
        "power_kw",
        "return_temp_c",
        "volume_m3",
    )

    def __init__(self, cfg: PlantConfig) -> None:
        self._cp = cfg.site.water_cp_kj_kgk
        self._density = cfg.site.water_density_kg_m3
        self._max_flow_m3h = cfg.heat_meter.max_flow_m3h
        self._temp_noise = cfg.sensors.temp_noise_k
        self._rel_noise = cfg.sensors.relative_noise_pct / 100.0
        self.energy_mwh = cfg.heat_meter.initial_energy_mwh
        self.volume_m3 = cfg.heat_meter.initial_volume_m3
        self.operating_time_h = cfg.heat_meter.initial_operating_time_h
        self.flow_kg_s = 0.0
        self.flow_temp_c = cfg.district_heating.return_temp_c
        self.return_temp_c = cfg.district_heating.return_temp_c
        self.power_kw = 0.0

    def integrate(self, dt_s: float, flow_kg_s: float, flow_temp_c: float, return_temp_c: float) -> None:
        """Measure and integrate over one sub-step."""
        self.flow_kg_s = flow_kg_s
        self.flow_temp_c = flow_temp_c
        self.return_temp_c = return_temp_c
        self.power_kw = flow_kg_s * self._cp * (flow_temp_c - return_temp_c)
        if self.power_kw > 0.0:
            self.energy_mwh += self.power_kw * dt_s / 3.6e6
        self.volume_m3 += flow_kg_s / self._density * dt_s
        self.operating_time_h += dt_s / 3600.0

    @property
    def flow_m3h(self) -> float:
        """Volume flow."""
        return self.flow_kg_s / self._density * 3600.0

    def signal_readers(self) -> dict[str, Callable[[Sequence[float]], float]]:
        """Per signal in profile order, its reading from one read's :data:`NOISE_DRAWS` draws ``z``.

        The meter computes power and difference from its own readings, as a real calculator does.
        """

        def flow_c(z: Sequence[float]) -> float:
            return self.flow_temp_c + self._temp_noise * z[0]

        def return_c(z: Sequence[float]) -> float:
            return self.return_temp_c + self._temp_noise * z[1]

        def flow_m3h(z: Sequence[float]) -> float:
            return self.flow_m3h * (1.0 + self._rel_noise * z[2])

        return {
            "heat_power_kw": lambda z: flow_m3h(z) * self._density / 3600.0 * self._cp * (flow_c(z) - return_c(z)),
            "flow_temp_c": flow_c,
            "return_temp_c": return_c,
            "temp_difference_k": lambda z: flow_c(z) - return_c(z),
            "flow_m3h": flow_m3h,
            "heat_energy_mwh": lambda _: self.energy_mwh,
            "volume_m3": lambda _: self.volume_m3,
            "operating_time_h": lambda _: self.operating_time_h,
            "error_code": lambda _: float(
                ERROR_FLOW_OVER_RANGE if self.flow_m3h > self._max_flow_m3h else ERROR_NONE
            ),
        }
