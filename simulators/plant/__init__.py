# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""Plant model of a liquid-cooled data center that sells its waste heat to district heating.

Pure Python, no I/O, no asyncio: the protocol simulators (Modbus, OPC UA) serve its devices
and the benches drive it faster than real time. Modules, hot to cold:

- :mod:`~simulators.plant.config` - :class:`PlantConfig`, every parameter with its unit;
- :mod:`~simulators.plant.physics` - exchangers, COP, pipes and mixed volumes;
- :mod:`~simulators.plant.cdu` - a CDU with its own PI and BMS watchdog;
- :mod:`~simulators.plant.station` - plate HX, heat pumps, dry coolers, DH pump, their PLC;
- :mod:`~simulators.plant.heat_meter` - the EN 1434 meter;
- :mod:`~simulators.plant.model` - :class:`Plant`, which ties them into one heat path.
"""

from simulators.plant.config import PlantConfig
from simulators.plant.model import FAULTS, INPUTS, Plant, PlantEvent
from simulators.plant.physics import heat_pump_cop, weather_curve_supply_temp_c
from simulators.plant.station import HeatPumpState, Interlock

__all__ = [
    "FAULTS",
    "INPUTS",
    "HeatPumpState",
    "Interlock",
    "Plant",
    "PlantConfig",
    "PlantEvent",
    "heat_pump_cop",
    "weather_curve_supply_temp_c",
]
