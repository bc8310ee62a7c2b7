"""Other vendors' devices in front of the plant model: their names, scales and watchdogs.

The bundled simulators speak the bundled profiles. A site engineer brings devices whose maps
read differently; these wrap one plant device each and present it the way such a vendor does
(``tests/profiles/acme-cdu.yaml``, ``tests/profiles/nordheat-hp.yaml``):

- :class:`VendorCdu`: a CDU that uses its BMS setpoint ``sp_ext`` while its watchdog is
  healthy and its local setpoint otherwise (no mode register for that: its ``control_mode`` is
  a pump mode), temperatures in 0.1 degC, no IT-limit register;
- :class:`VendorHeatPump`: a heat-pump controller without plate exchanger and dry-cooler nodes.

Both have an **echo watchdog**: the device changes ``request`` every ``change_every_s`` and
counts as supervised while the BMS writes back the current (or the previous) value at least
every ``timeout_s``; otherwise it trips and runs on its local values. While supervised, the
wrapper keeps the plant device's own watchdog fed (it *is* the device). Every write is kept in
:attr:`VendorDevice.writes` so a test can see exactly what the gateway wrote where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["EchoWatchdog", "VendorCdu", "VendorDevice", "VendorHeatPump"]


@dataclass
class EchoWatchdog:
    """A challenge the BMS must echo within ``timeout_s``."""

    timeout_s: float
    change_every_s: float = 5.0
    request: int = 1
    previous: int = 0
    changed_s: float = 0.0
    last_ok_s: float | None = None
    armed: bool = False
    trips: int = 0
    trip_times: list[float] = field(default_factory=list)

    def tick(self, now_s: float) -> bool:
        """Advance the challenge; True when the watchdog trips now."""
        if now_s - self.changed_s >= self.change_every_s:
            self.previous, self.request = self.request, self.request % 65535 + 1
            self.changed_s = now_s
        if self.armed and self.last_ok_s is not None and now_s - self.last_ok_s > self.timeout_s:
            self.armed = False
            self.trips += 1
            self.trip_times.append(now_s)
            return True
        return False

    def reply(self, value: float, now_s: float) -> None:
        """A BMS write to the echo register: healthy if it is the current or the previous challenge."""
        if round(value) in (self.request, self.previous):
            self.last_ok_s = now_s
            self.armed = True


class VendorDevice:
    """One plant device behind another vendor's names and watchdog."""

    reads: ClassVar[Mapping[str, tuple[str, float]]] = {}
    """vendor signal -> (plant signal, factor applied to the plant's value)."""
    writes_to: ClassVar[Mapping[str, str]] = {}
    """vendor writable signal -> plant signal it sets."""
    echo_request = ""
    echo_reply = ""

    def __init__(self, plant: Any, device: str, *, timeout_s: float, clock: Callable[[], float]) -> None:
        self.plant = plant
        self.device = device
        self.clock = clock
        self.watchdog = EchoWatchdog(timeout_s)
        self.writes: list[tuple[float, str, float]] = []
        self.stored: dict[str, float] = {}
        self._plant_beat = 0

    def values(self) -> dict[str, float]:
        """Every vendor signal's engineering value now."""
        truth = self.plant.read(self.device)
        values = {name: float(truth[source]) * factor for name, (source, factor) in self.reads.items()}
        values[self.echo_request] = float(self.watchdog.request)
        values.update(self.stored)
        return values

    def on_write(self, signal: str, value: float) -> None:
        """A BMS write over the wire (already within the profile's limits)."""
        now_s = self.clock()
        self.writes.append((now_s, signal, value))
        self.stored[signal] = value
        if signal == self.echo_reply:
            self.watchdog.reply(value, now_s)
            return
        target = self.writes_to.get(signal)
        if target is not None:
            self.plant.write(self.device, target, value)

    def tick(self) -> None:
        """Once per plant step: the watchdog, and the plant device's own watchdog while supervised."""
        if self.watchdog.tick(self.clock()):
            self.tripped()
        if self.watchdog.armed:
            self._plant_beat = self._plant_beat % 65535 + 1
            self.plant.write(self.device, "heartbeat", float(self._plant_beat))
            self.supervised()

    def supervised(self) -> None:
        """Called every tick while the watchdog is healthy."""

    def tripped(self) -> None:
        """Called once when the watchdog trips."""


class VendorCdu(VendorDevice):
    """ACME LC-800: BMS setpoint while the watchdog is healthy, local setpoint otherwise."""

    reads: ClassVar[Mapping[str, tuple[str, float]]] = {
        "supply_t1": ("tcs_supply_temp_c", 1.0),
        "supply_t2": ("tcs_supply_temp_2_c", 1.0),
        "return_t": ("tcs_return_temp_c", 1.0),
        "valve_pos": ("valve_feedback_pct", 1.0),
        "secondary_flow": ("tcs_flow_lpm", 1.0),
        "active_sp": ("tcs_supply_setpoint_c", 1.0),
        "sp_ext": ("tcs_supply_setpoint_c", 1.0),
        "sp_local": ("local_setpoint_c", 1.0),
        "wd_timeout_s": ("watchdog_timeout_s", 0.0),
    }
    writes_to: ClassVar[Mapping[str, str]] = {"sp_ext": "tcs_supply_setpoint_c"}
    echo_request = "wd_request"
    echo_reply = "wd_reply"

    def values(self) -> dict[str, float]:
        """The vendor's view: the active setpoint is the local one while not supervised."""
        values = super().values()
        values["wd_timeout_s"] = self.watchdog.timeout_s
        values["control_mode"] = self.stored.get("control_mode", 0.0)  # the pump mode, never ours
        truth = self.plant.read(self.device)
        values["active_sp"] = float(
            truth["tcs_supply_setpoint_c"] if truth["control_mode"] == 1 else truth["local_setpoint_c"]
        )
        values["sp_ext"] = self.stored.get("sp_ext", float(truth["local_setpoint_c"]))
        return values

    def supervised(self) -> None:
        if self.plant.read(self.device)["control_mode"] != 1:
            self.plant.write(self.device, "control_mode", 1.0)
            if "sp_ext" in self.stored:
                self.plant.write(self.device, "tcs_supply_setpoint_c", self.stored["sp_ext"])

    def tripped(self) -> None:
        self.plant.write(self.device, "control_mode", 0.0)


class VendorHeatPump(VendorDevice):
    """Nordheat HWP-4: the station's heat pumps behind the vendor's node names."""

    reads: ClassVar[Mapping[str, tuple[str, float]]] = {
        "flow_out_c": ("dh_supply_temp_c", 1.0),
        "return_in_c": ("dh_return_temp_c", 1.0),
        "source_in_c": ("hp_source_inlet_temp_c", 1.0),
        "source_header_c": ("fws_supply_temp_c", 1.0),
        "compressors_on": ("hp_running_count", 1.0),
        "pump_fault": ("dh_pump_tripped", 1.0),
        "flow_setpoint_c": ("hp_supply_setpoint_c", 1.0),
        "capacity_limit_kw": ("heat_power_limit_kw", 1.0),
        "run_permit": ("hp_enable", 1.0),
    }
    writes_to: ClassVar[Mapping[str, str]] = {
        "flow_setpoint_c": "hp_supply_setpoint_c",
        "capacity_limit_kw": "heat_power_limit_kw",
        "run_permit": "hp_enable",
    }
    echo_request = "alive_counter"
    echo_reply = "alive_echo"

    def values(self) -> dict[str, float]:
        """The setpoints read back as the plant holds them (its local values after a fallback)."""
        values = super().values()
        truth = self.plant.read(self.device)
        for name in self.writes_to:
            values[name] = float(truth[self.reads[name][0]])
        return values
