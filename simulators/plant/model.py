# Copyright 2026 heat-gateway contributors
# SPDX-License-Identifier: Apache-2.0
"""The whole heat path as one model, behind the device-level interface the simulators serve.

Data flow of one sub-step (the layout of :meth:`Plant._substep`):

1. every CDU runs its pump, watchdog and PI and asks its valve's facility flow;
2. the FWS pump supplies the sum (at least its minimum, the bypass carries the rest; at most
   its capacity, the CDUs then share it);
3. every CDU exchanges heat with the hall supply header; outlets and bypass mix;
4. the return pipe (plug flow) and the station's inlet volume (lag) carry it to the station;
5. the station (plate HX, heat pumps, dry coolers, DH pump, PLC) returns the supply water;
6. the supply pipe (plug flow) and header volume (lag) carry it back to the hall;
7. the DH water goes through its pipe to the heat meter.

Inputs that are not any device's (IT load, weather, DH return, the utility's order, faults)
are set by a scenario through :meth:`Plant.set_input`, :meth:`Plant.set_fault` and
:meth:`Plant.freeze_sensor`; devices are read and written by name and signal only.

Sensor noise is drawn from the plant's seeded ``random.Random`` when a device is *read*, so
the physics never depends on how often anyone reads; the same seed and the same sequence of
calls give identical results.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from simulators.plant.cdu import ALARM_SIGNALS, CDU_SIGNALS, CDU_WRITABLE, SUPPLY_SENSORS, Cdu
from simulators.plant.cdu import NOISE_DRAWS as CDU_NOISE_DRAWS
from simulators.plant.config import PlantConfig
from simulators.plant.heat_meter import HEAT_METER_SIGNALS, HeatMeter
from simulators.plant.heat_meter import NOISE_DRAWS as METER_NOISE_DRAWS
from simulators.plant.hydraulics import FacilityLoop
from simulators.plant.physics import MixedVolume, PlugFlowPipe, weather_curve_supply_temp_c
from simulators.plant.sensors import Channel, NoiseTable, SensorLayer, SensorSpec, is_temperature
from simulators.plant.station import NOISE_DRAWS as STATION_NOISE_DRAWS
from simulators.plant.station import STATION_WRITABLE, Station, station_signals

__all__ = ["FAULTS", "INPUTS", "PANEL_SIGNALS", "Plant", "PlantEvent"]

#: Inputs a scenario may set (see :meth:`Plant.set_input`); ``cdu_load_factor`` needs a target.
INPUTS: Final = frozenset(
    {
        "it_load_mw",
        "outdoor_temp_c",
        "dh_return_temp_c",
        "utility_heat_order_mw",
        "utility_supply_temp_c",
        "cdu_load_factor",
    }
)

#: Faults a scenario may switch on and off, and what their target names.
FAULTS: Final[dict[str, str]] = {
    "heat_pump_trip": "hp-N",
    "dh_pump_trip": "",
    "utility_link_lost": "",
    "cdu_leak": "cdu-N",
}

PANEL_SIGNALS: tuple[str, ...] = (
    "outdoor_temp_c",
    "it_load_mw",
    "liquid_heat_mw",
    "heat_to_dh_mw",
    "dry_cooler_heat_mw",
    "hp_electric_mw",
    "fws_supply_temp_c",
    "dh_supply_temp_c",
    "max_tcs_supply_temp_c",
    "utility_heat_order_mw",
    "utility_supply_temp_c",
    "utility_order_age_s",
    "utility_link_ok",
    "operator_mode",
    "manual_heat_power_mw",
    "manual_supply_temp_c",
    "alarm_count",
    "heartbeat",
    "heartbeat_echo",
)
PANEL_WRITABLE = frozenset({"operator_mode", "manual_heat_power_mw", "manual_supply_temp_c", "heartbeat"})

_KIND_CDU = "cdu"
_KIND_METER = "heat_meter"
_KIND_PLC = "heat_pump_plc"
_KIND_PANEL = "panel_pc"
_PANEL_NOISY_SIGNALS = 9  # signals of a panel read that carry noise (one draw each)
_TEMP_NOISE_OUTDOOR = 5.0  # outdoor sensors are coarser than pipe sensors


@dataclass(frozen=True, slots=True)
class PlantEvent:
    """Something a device did on its own (fallback, trip, start), for harnesses and reports."""

    time_s: float
    device: str
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """A read of one device's signals, resolved once (:meth:`Plant.read` runs it)."""

    device: str
    readers: tuple[tuple[str, Callable[[Sequence[float]], float]], ...]
    """The signals computed, each with its reader (the device's ``signal_readers``), in profile order."""
    draws: int
    """Noise draws a read of this device takes (the same for any signals)."""
    channels: tuple[Channel, ...]
    """The transmitters of the computed signals that change a value."""
    periodic: bool
    """The device repeats its values until its next update (the sensor layer holds them)."""
    keep: frozenset[str] | None
    """The signals computed (None: all); more than asked when the CDU's alarms need the supply sensors."""
    judge: Callable[[dict[str, float], dict[str, float] | None], None] | None
    """Sets the alarm signals from the transmitted values (a CDU read that includes them)."""
    signals: frozenset[str] | None
    """The signals asked for (None: all)."""


class Plant:
    """The 22.5 MW reference site (or any :class:`PlantConfig`), device by device.

    Devices: ``cdu-1`` .. ``cdu-N`` (kind ``cdu``), ``heat-meter`` (``heat_meter``),
    ``hp-plc`` (``heat_pump_plc``), ``panel-pc`` (``panel_pc``). Their signal names are the
    keys of ``config/profiles/{cdu,heat-meter,hp-plc,panel-pc}.yaml``.
    """

    def __init__(self, config: PlantConfig | None = None, *, seed: int = 0) -> None:
        self.config = cfg = config if config is not None else PlantConfig()
        self._rng = random.Random(seed)
        self._clock_s = 0.0  # internal clock; time_s counts from the end of the warm start
        self._epoch_s = 0.0
        self.event_log: list[PlantEvent] = []
        cp = cfg.site.water_cp_kj_kgk
        self._cp = cp

        # Inputs.
        dh = cfg.district_heating
        self._it_load_mw = cfg.site.it_load_mw
        self._outdoor_c = cfg.site.outdoor_temp_c
        self._utility_order_mw = dh.heat_order_mw
        self._utility_supply_c: float | None = dh.supply_temp_requirement_c
        self._utility_link_ok = True
        self._panel_order_mw = self._utility_order_mw
        self._panel_supply_c = self.utility_supply_temp_c
        self._panel_received_s = 0.0
        self._operator_mode = 2
        self._manual_heat_power_mw = dh.heat_order_mw
        self._manual_supply_c = dh.weather_curve_min_c
        self._panel_heartbeat = 0
        self._frozen: dict[str, dict[str, float]] = {}

        # CDUs, each with its share of the liquid heat.
        shares = cfg.cdu.load_shares or [1.0] * cfg.cdu.count
        total = sum(shares)
        self._cdu_shares = [share / total for share in shares]
        self._cdu_factors = [1.0] * cfg.cdu.count
        fws = cfg.facility_water
        self.cdus = [
            Cdu(
                f"cdu-{i}",
                i,
                cfg.cdu,
                cfg.site,
                cfg.sensors,
                header_dp_design_bar=fws.header_dp_design_bar,
                facility_supply_c=fws.initial_supply_temp_c,
                run_hours_h=round(self._rng.uniform(8000.0, 16000.0), 1),
                energy_mwh=round(self._rng.uniform(20000.0, 40000.0), 1),
                on_event=self._record,
            )
            for i in range(1, cfg.cdu.count + 1)
        ]
        self._cdu_by_name = {cdu.name: cdu for cdu in self.cdus}
        self._apply_loads()

        # Facility water loop, station, DH pipe and meter.
        density = cfg.site.water_density_kg_m3
        start_c = fws.initial_supply_temp_c
        return_c = start_c + cfg.cdu.facility_design_delta_t_k
        self._return_pipe = PlugFlowPipe(fws.return_pipe_volume_m3 * density, return_c)
        self._return_header = MixedVolume(fws.return_header_volume_m3 * density, return_c)
        self._supply_pipe = PlugFlowPipe(fws.supply_pipe_volume_m3 * density, start_c)
        self._supply_header = MixedVolume(fws.supply_header_volume_m3 * density, start_c)
        self.station = Station(cfg, self._record)
        self.station.outdoor_c = self._outdoor_c
        self._dh_pipe = PlugFlowPipe(dh.supply_pipe_volume_m3 * density, dh.return_temp_c)
        self._meter_volume = MixedVolume(dh.meter_volume_m3 * density, dh.return_temp_c)
        self._pipe_loss_kw_k = dh.supply_pipe_heat_loss_kw_k
        self.meter = HeatMeter(cfg)
        self._fws_flow_kg_s = fws.min_flow_kg_s
        design_flow_kg_s = sum(cdu.design_flow_kg_s for cdu in self.cdus)
        self.facility_loop = FacilityLoop(
            design_dp_bar=fws.header_dp_design_bar,
            shutoff_dp_bar=fws.header_dp_no_flow_bar,
            design_flow_kg_s=design_flow_kg_s,
        )
        self._header_dp_bar = fws.header_dp_design_bar
        self._fws_mix_c = return_c

        self._device_kinds: dict[str, str] = {cdu.name: _KIND_CDU for cdu in self.cdus}
        self._device_kinds |= {"heat-meter": _KIND_METER, "hp-plc": _KIND_PLC, "panel-pc": _KIND_PANEL}
        self._plc_signals = station_signals(cfg.heat_pumps.count)
        self._signals: dict[str, frozenset[str]] = {
            _KIND_CDU: frozenset(CDU_SIGNALS),
            _KIND_METER: frozenset(HEAT_METER_SIGNALS),
            _KIND_PLC: frozenset(self._plc_signals),
            _KIND_PANEL: frozenset(PANEL_SIGNALS),
        }
        self._writable: dict[str, frozenset[str]] = {
            _KIND_CDU: CDU_WRITABLE,
            _KIND_METER: frozenset(),
            _KIND_PLC: STATION_WRITABLE,
            _KIND_PANEL: PANEL_WRITABLE,
        }
        self._noise = NoiseTable(self._rng)
        self._read_plans: dict[tuple[str, frozenset[str] | None], _ReadPlan] = {}
        self._sensor_layer = SensorLayer(self._sensor_specs(), {"heat-meter": cfg.sensors.meter_update_period_s})
        self._reset_energy()
        if cfg.site.warm_start_s > 0.0:
            self._warm_start(cfg.site.warm_start_s)

    def _sensor_specs(self) -> dict[str, SensorSpec]:
        """Per device.signal: the defaults for temperatures, then the per-signal entries."""
        sensors = self.config.sensors
        specs: dict[str, dict[str, float]] = {}
        for device in self._device_kinds:
            for signal in self.signals(device):
                if is_temperature(signal):
                    specs[f"{device}.{signal}"] = {
                        "lag_s": sensors.temp_lag_s,
                        "resolution": sensors.temp_resolution_k,
                    }
        for field, entries in (
            ("bias", sensors.bias),
            ("drift_per_day", sensors.drift_per_day),
            ("lag_s", sensors.lag_s),
            ("resolution", sensors.resolution),
        ):
            for key, given in entries.items():
                device, _, signal = key.partition(".")
                if device not in self._device_kinds or signal not in self.signals(device):
                    raise KeyError(f"sensors.{field}: {key!r} is no device.signal of this plant")
                spec = specs.setdefault(key, {})
                # A resolution is never finer than the default for all temperatures.
                spec[field] = max(given, spec.get("resolution", 0.0)) if field == "resolution" else given
        return {key: SensorSpec(**fields) for key, fields in specs.items()}

    # -- time ----------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Simulated seconds since start (after the warm start)."""
        return self._clock_s - self._epoch_s

    def step(self, dt_s: float) -> None:
        """Advance by ``dt_s`` seconds, in equal sub-steps no longer than ``max_substep_s``."""
        if not math.isfinite(dt_s) or dt_s <= 0.0:
            raise ValueError(f"dt_s must be a positive finite number of seconds, got {dt_s}")
        count = max(1, math.ceil(dt_s / self.config.site.max_substep_s - 1e-9))
        sub = dt_s / count
        start = self._clock_s
        for i in range(1, count + 1):
            self._substep(sub)
            # From the start time, so thousands of sub-steps do not accumulate rounding.
            self._clock_s = start + i * sub

    def _warm_start(self, duration_s: float) -> None:
        """Run to a steady state, then make that the start: time 0, counters as configured."""
        run_hours = [cdu.run_hours_h for cdu in self.cdus]
        energies = [cdu.energy_mwh for cdu in self.cdus]
        pump_hours = [pump.run_hours_h for pump in self.station.heat_pumps]
        steps = max(1, math.ceil(duration_s / 10.0))
        for _ in range(steps):
            self.step(duration_s / steps)
        for cdu, hours, energy in zip(self.cdus, run_hours, energies, strict=True):
            cdu.run_hours_h = hours
            cdu.energy_mwh = energy
        for pump, hours in zip(self.station.heat_pumps, pump_hours, strict=True):
            pump.run_hours_h = hours
        meter_cfg = self.config.heat_meter
        self.meter.energy_mwh = meter_cfg.initial_energy_mwh
        self.meter.volume_m3 = meter_cfg.initial_volume_m3
        self.meter.operating_time_h = meter_cfg.initial_operating_time_h
        self._epoch_s = self._clock_s
        self._panel_received_s = self._clock_s
        self.event_log.clear()
        self._reset_energy()

    def _substep(self, dt_s: float) -> None:
        now = self._clock_s
        cfg = self.config
        cp = self._cp
        cdus = self.cdus

        # Each valve sets its branch's conductance; the shared header pressure sets the flows.
        conductances = [cdu.control(dt_s, now) for cdu in cdus]
        header_dp = self.facility_loop.header_dp_bar(sum(conductances))
        self._header_dp_bar = header_dp
        root = math.sqrt(header_dp)
        requests = [c * root for c in conductances]
        asked = sum(requests)
        fws = cfg.facility_water
        scale = 1.0 if asked <= fws.max_flow_kg_s else fws.max_flow_kg_s / asked
        flow = min(max(asked, fws.min_flow_kg_s), fws.max_flow_kg_s)
        supply_c = self._supply_header.temp_c
        bypass = flow - asked * scale
        mixed = bypass * supply_c
        for cdu, request in zip(cdus, requests, strict=True):
            share = request * scale
            mixed += share * cdu.exchange(dt_s, share, supply_c)
        self._fws_mix_c = mixed / flow
        self._fws_flow_kg_s = flow

        station = self.station
        station.fws_bypass_kg_s = bypass
        station.fws_supply_header_c = supply_c
        station_in_c = self._return_header.flow(flow, self._return_pipe.flow(flow, self._fws_mix_c, dt_s), dt_s)
        station_out_c = station.step(dt_s, now, station_in_c, flow)
        self._supply_header.flow(flow, self._supply_pipe.flow(flow, station_out_c, dt_s), dt_s)

        m_dh = station.dh_flow_kg_s
        pipe_out_c = self._dh_pipe.flow(m_dh, station.dh_out_c, dt_s)
        if m_dh > 0.0 and self._pipe_loss_kw_k > 0.0:
            # Heat lost to the ground on the way (the outlet never falls below the ground).
            ground_c = cfg.district_heating.ground_temp_c
            pipe_out_c -= (pipe_out_c - ground_c) * min(self._pipe_loss_kw_k / (m_dh * cp), 1.0)
        meter_c = self._meter_volume.flow(m_dh, pipe_out_c, dt_s)
        self.meter.integrate(dt_s, m_dh, meter_c, station.dh_return_c)

        if self._utility_link_ok and (
            self._panel_order_mw != self._utility_order_mw
            or self._panel_supply_c != self.utility_supply_temp_c
            or now - self._panel_received_s >= cfg.district_heating.utility_update_period_s
        ):
            self._panel_order_mw = self._utility_order_mw
            self._panel_supply_c = self.utility_supply_temp_c
            self._panel_received_s = now

        energy = self._energy_kj
        energy["it_liquid"] += sum(cdu.load_kw for cdu in cdus) * dt_s
        energy["hx"] += station.hx_heat_kw * dt_s
        energy["hp_heat"] += station.hp_heat_kw * dt_s
        energy["hp_electric"] += station.hp_electric_kw * dt_s
        energy["dry_cooler"] += station.dc_heat_kw * dt_s
        energy["dh_station"] += m_dh * cp * (station.dh_out_c - station.dh_return_c) * dt_s

    # -- energy bookkeeping ----------------------------------------------------------------

    def _reset_energy(self) -> None:
        self._energy_kj = dict.fromkeys(("it_liquid", "hx", "hp_heat", "hp_electric", "dry_cooler", "dh_station"), 0.0)
        self._storage_start_kj = self.stored_heat_kj()
        self._condenser_start_kj = self.station.stored_kj()

    def stored_heat_kj(self) -> float:
        """Heat held in the rack loops and the facility water (above 0 °C)."""
        cp = self._cp
        return (
            sum(cdu.stored_kj() for cdu in self.cdus)
            + self._return_pipe.energy_kj(cp)
            + self._return_header.energy_kj(cp)
            + self._supply_pipe.energy_kj(cp)
            + self._supply_header.energy_kj(cp)
            + self.station.stored_kj()
        )

    def energy_balance(self) -> dict[str, float]:
        """Energy since start in MWh and the balance error of the liquid side.

        ``it_liquid + hp_electric = dh_station + dry_cooler + storage_change + error``. Every
        element passes on its exact mean outlet temperature, so the error is only the explicit
        coupling of the loop at the hall supply header (the CDUs see the header's temperature
        at the start of a sub-step): at most ``flow * cp * dt * dT_header / 2`` per sub-step,
        it does not accumulate and is ~1e-6 of the heat. ``condenser_storage_change`` is the part
        of it held in the station's condenser water (exchanger + heat-pump heat = ``dh_station``
        + that). ``heat_meter`` differs from
        ``dh_station`` by what the DH pipe to the meter holds.
        """
        mwh = {name: value / 3.6e6 for name, value in self._energy_kj.items()}
        mwh["storage_change"] = (self.stored_heat_kj() - self._storage_start_kj) / 3.6e6
        mwh["condenser_storage_change"] = (self.station.stored_kj() - self._condenser_start_kj) / 3.6e6
        mwh["heat_meter"] = self.meter.energy_mwh - self.config.heat_meter.initial_energy_mwh
        mwh["error"] = (
            mwh["it_liquid"] + mwh["hp_electric"] - mwh["dh_station"] - mwh["dry_cooler"] - mwh["storage_change"]
        )
        return mwh

    # -- scenario inputs -------------------------------------------------------------------

    @property
    def utility_supply_temp_c(self) -> float:
        """The utility's supply-temperature requirement (its weather curve unless set)."""
        if self._utility_supply_c is not None:
            return self._utility_supply_c
        dh = self.config.district_heating
        return weather_curve_supply_temp_c(
            self._outdoor_c,
            room_temp_c=dh.weather_curve_room_temp_c,
            slope=dh.weather_curve_slope,
            offset_k=dh.weather_curve_offset_k,
            min_c=dh.weather_curve_min_c,
            max_c=dh.weather_curve_max_c,
        )

    def set_input(self, name: str, value: float, *, target: str | None = None) -> None:
        """Set an input that belongs to no device (see :data:`INPUTS`).

        ``cdu_load_factor`` multiplies one CDU's share of the load (``target`` = ``cdu-N``).
        """
        if not math.isfinite(value):
            raise ValueError(f"{name}: {value} is not a finite number")
        if name == "it_load_mw":
            value = max(value, 0.0)
            if value != self._it_load_mw:  # scenarios set every step; spread loads on change only
                self._it_load_mw = value
                self._apply_loads()
        elif name == "cdu_load_factor":
            if target not in self._cdu_by_name:
                raise KeyError(f"cdu_load_factor needs a CDU as target, got {target!r}")
            index = self._cdu_by_name[target].index - 1
            value = max(value, 0.0)
            if value != self._cdu_factors[index]:
                self._cdu_factors[index] = value
                self._apply_loads()
        elif name == "outdoor_temp_c":
            self._outdoor_c = value
            self.station.outdoor_c = value
        elif name == "dh_return_temp_c":
            self.station.dh_return_c = value
        elif name == "utility_heat_order_mw":
            self._utility_order_mw = max(value, 0.0)
        elif name == "utility_supply_temp_c":
            self._utility_supply_c = value
        else:
            raise KeyError(f"unknown plant input {name!r}; known: {', '.join(sorted(INPUTS))}")

    def set_fault(self, kind: str, active: bool, *, target: str | None = None) -> None:
        """Switch the cause of a fault on or off (see :data:`FAULTS`).

        Heat-pump and DH-pump trips latch in the PLC: they clear by ``alarm_reset`` or the
        PLC's auto reset once the cause is gone. A lost utility link freezes the order on the
        panel (``utility_link_ok`` 0, ``utility_order_age_s`` grows) until it is back.
        """
        now = self._clock_s
        if kind == "heat_pump_trip":
            index = self._heat_pump_index(target)
            self.station.set_heat_pump_fault(index, active, now)
        elif kind == "dh_pump_trip":
            self.station.set_dh_pump_fault(active, now)
        elif kind == "utility_link_lost":
            if self._utility_link_ok == active:
                self._record("panel-pc", "utility_link_lost" if active else "utility_link_restored", "")
            self._utility_link_ok = not active
        elif kind == "cdu_leak":
            if target not in self._cdu_by_name:
                raise KeyError(f"cdu_leak needs a CDU as target, got {target!r}")
            cdu = self._cdu_by_name[target]
            cdu.leak = active
            if active:
                cdu.leak_latched = True
                self._record(cdu.name, "leak_detected", "")
        else:
            raise KeyError(f"unknown fault {kind!r}; known: {', '.join(sorted(FAULTS))}")

    def set_meter_offset(self, offset_k: float) -> None:
        """From now on the meter reads ``offset_k`` below the station (0 ends it).

        The station's DH supply sensor shifts ``offset_k`` up from its configured bias (a sensor
        exchanged or drifted): the PLC holds that sensor at its setpoint, so the water leaves
        ``offset_k`` colder, the PLC's ``dh_supply_temp_c`` still reads the setpoint and the heat
        meter, which is right, shows the difference. Only a trim on the meter can correct it.
        """
        if not math.isfinite(offset_k) or abs(offset_k) > 10.0:
            raise ValueError(f"meter_offset: {offset_k} K is not a finite offset within +/-10 K")
        self.station.supply_sensor_bias_k = self.config.heat_pumps.supply_sensor_bias_k + offset_k
        self._record("hp-plc", "meter_offset", f"{offset_k:+g} K")

    def _heat_pump_index(self, target: str | None) -> int:
        count = self.config.heat_pumps.count
        names = {f"hp-{i}": i for i in range(1, count + 1)}
        if target not in names:
            raise KeyError(f"heat_pump_trip needs a heat pump hp-1..hp-{count} as target, got {target!r}")
        return names[target]

    def freeze_sensor(self, device: str, signal: str) -> None:
        """Make a reading stick at its present value (a frozen transmitter or stale register)."""
        self._check_signal(device, signal)
        value = self.read(device)[signal]
        self._frozen.setdefault(device, {})[signal] = value
        self._record(device, "sensor_freeze", signal)

    def unfreeze_sensor(self, device: str, signal: str) -> None:
        """Let a frozen reading follow the process again."""
        if self._frozen.get(device, {}).pop(signal, None) is not None:
            self._record(device, "sensor_unfreeze", signal)

    def _apply_loads(self) -> None:
        liquid_kw = self._it_load_mw * 1000.0 * self.config.site.liquid_share_pct / 100.0
        for cdu, share, factor in zip(self.cdus, self._cdu_shares, self._cdu_factors, strict=True):
            cdu.load_kw = liquid_kw * share * factor

    # -- devices -------------------------------------------------------------------------

    def device_names(self) -> list[str]:
        """``cdu-1`` .. ``cdu-N``, ``heat-meter``, ``hp-plc``, ``panel-pc``."""
        return list(self._device_kinds)

    def device_kind(self, name: str) -> str:
        """``cdu``, ``heat_meter``, ``heat_pump_plc`` or ``panel_pc``."""
        try:
            return self._device_kinds[name]
        except KeyError:
            raise KeyError(f"unknown device {name!r}") from None

    def signals(self, device: str) -> list[str]:
        """Signal names of a device, in profile order."""
        kind = self.device_kind(device)
        if kind == _KIND_CDU:
            return list(CDU_SIGNALS)
        if kind == _KIND_METER:
            return list(HEAT_METER_SIGNALS)
        if kind == _KIND_PLC:
            return list(self._plc_signals)
        return list(PANEL_SIGNALS)

    def writable(self, device: str) -> frozenset[str]:
        """Signals of a device that :meth:`write` accepts."""
        return self._writable[self.device_kind(device)]

    def read(self, device: str, signals: frozenset[str] | None = None) -> dict[str, float]:
        """Every signal of a device in engineering units (bools and enumerations as floats).

        ``signals``: only these (a read plan: what a controller binds). The noise drawn and
        every transmitter's state are the same as for a full read (each read takes one slice
        of the noise table; a signal's lag only depends on its own reads), so the values are
        identical to the same keys of a full read; only the work for the others is skipped.
        """
        return self._read(self._read_plan(device, signals))

    def reader(self, device: str, signals: frozenset[str] | None = None) -> Callable[[], dict[str, float]]:
        """``plant.read(device, signals)`` resolved once, for a caller that reads the same signals each cycle."""
        plan = self._read_plan(device, signals)
        if plan.periodic or plan.judge is not None:
            return functools.partial(self._read, plan)
        # The usual read (a CDU without its alarms, the PLC, the panel): what _read does for
        # such a plan, with what it looks up resolved here (~15 reads a simulated second).
        take = self._noise.take
        draws = plan.draws
        readers = plan.readers
        channels = plan.channels
        apply_channels = self._sensor_layer.apply_channels
        frozen_of = self._frozen
        keep = plan.keep

        def read() -> dict[str, float]:
            z = take(draws)  # every read takes its slice, whatever it computes
            values = {name: read(z) for name, read in readers}
            if channels:
                apply_channels(channels, values, self._clock_s)
            frozen = frozen_of.get(device)
            if frozen:
                values.update(frozen if keep is None else {k: v for k, v in frozen.items() if k in keep})
            return values

        return read

    def _read_plan(self, device: str, signals: frozenset[str] | None) -> _ReadPlan:
        """What a read of ``signals`` computes, resolved on the first such read and kept."""
        if signals is not None and type(signals) is not frozenset:
            signals = frozenset(signals)
        plan = self._read_plans.get((device, signals))
        if plan is not None:
            return plan
        kind = self.device_kind(device)
        if signals is not None and not signals <= self._signals[kind]:
            unknown = ", ".join(sorted(signals - self._signals[kind]))
            raise KeyError(f"device {device!r} has no signal(s) {unknown}")
        keep = signals
        judge = None
        if kind == _KIND_CDU:
            cdu = self._cdu_by_name[device]
            readers, draws = cdu.signal_readers(), CDU_NOISE_DRAWS
            if signals is None or not signals.isdisjoint(ALARM_SIGNALS):
                judge = cdu.judge_alarms
                # The alarm judges both supply sensors as transmitted, so they go through the layer too.
                keep = None if signals is None else signals | SUPPLY_SENSORS
        elif kind == _KIND_METER:
            readers, draws = self.meter.signal_readers(), METER_NOISE_DRAWS
        elif kind == _KIND_PLC:
            readers, draws = self.station.signal_readers(), STATION_NOISE_DRAWS
        else:
            readers, draws = self._panel_readers(), _PANEL_NOISY_SIGNALS
        layer = self._sensor_layer
        plan = _ReadPlan(
            device=device,
            readers=tuple((name, read) for name, read in readers.items() if keep is None or name in keep),
            draws=draws,
            channels=layer.channels(device, keep),
            periodic=layer.periodic(device),
            keep=keep,
            judge=judge,
            signals=signals,
        )
        self._read_plans[(device, signals)] = plan
        return plan

    def _read(self, plan: _ReadPlan) -> dict[str, float]:
        """One read: noise, the transmitters (lag, bias, resolution, update period), frozen values, alarms."""
        z = self._noise.take(plan.draws)  # every read takes its slice, whatever it computes
        now_s = self._clock_s
        layer = self._sensor_layer
        device = plan.device
        values = layer.held(device, now_s) if plan.periodic else None
        if values is None:
            values = {name: read(z) for name, read in plan.readers}
            if plan.channels:
                layer.apply_channels(plan.channels, values, now_s)
            if plan.periodic:
                layer.hold(device, now_s, values)
        frozen = self._frozen.get(device)
        keep = plan.keep
        if frozen:
            values.update(frozen if keep is None else {k: v for k, v in frozen.items() if k in keep})
        if plan.judge is not None:
            plan.judge(values, frozen)
            if keep is not plan.signals:
                values = {name: values[name] for name in plan.signals or ()}
        return values

    def _panel_readers(self) -> dict[str, Callable[[Sequence[float]], float]]:
        """Per ``panel-pc`` signal in profile order, its reading from one read's noise draws ``z``."""
        sensors = self.config.sensors
        tn = sensors.temp_noise_k
        rn = sensors.relative_noise_pct / 100.0

        def alarm_count(_: Sequence[float]) -> float:
            station = self.station
            alarms = sum(1 for cdu in self.cdus if cdu.alarm_codes())
            alarms += sum(1 for pump in station.heat_pumps if pump.tripped)
            alarms += int(station.dh_pump_tripped) + int(station.dc_forced) + int(station.watchdog_tripped)
            alarms += int(not self._utility_link_ok)
            return float(alarms)

        return {
            "outdoor_temp_c": lambda z: self._outdoor_c + tn * _TEMP_NOISE_OUTDOOR * z[0],
            "it_load_mw": lambda z: self._it_load_mw * (1.0 + rn * z[1]),
            "liquid_heat_mw": lambda z: sum(cdu.load_kw for cdu in self.cdus) / 1000.0 * (1.0 + rn * z[2]),
            "heat_to_dh_mw": lambda z: self.meter.power_kw / 1000.0 * (1.0 + rn * z[3]),
            "dry_cooler_heat_mw": lambda z: self.station.dc_heat_kw / 1000.0 * (1.0 + rn * z[4]),
            "hp_electric_mw": lambda z: self.station.hp_electric_kw / 1000.0 * (1.0 + rn * z[5]),
            "fws_supply_temp_c": lambda z: self._supply_header.temp_c + tn * z[6],
            "dh_supply_temp_c": lambda z: self.meter.flow_temp_c + tn * z[7],
            "max_tcs_supply_temp_c": lambda z: max(cdu.supply_c for cdu in self.cdus) + tn * z[8],
            "utility_heat_order_mw": lambda _: self._panel_order_mw,
            "utility_supply_temp_c": lambda _: self._panel_supply_c,
            "utility_order_age_s": lambda _: self._clock_s - self._panel_received_s,
            "utility_link_ok": lambda _: 1.0 if self._utility_link_ok else 0.0,
            "operator_mode": lambda _: float(self._operator_mode),
            "manual_heat_power_mw": lambda _: self._manual_heat_power_mw,
            "manual_supply_temp_c": lambda _: self._manual_supply_c,
            "alarm_count": alarm_count,
            "heartbeat": lambda _: float(self._panel_heartbeat),
            "heartbeat_echo": lambda _: float(self._panel_heartbeat),
        }

    def write(self, device: str, signal: str, value: float) -> None:
        """Write a signal as the gateway would; the device clamps or rejects as real ones do.

        Raises ``KeyError`` for an unknown device or signal, ``ValueError`` for a read-only
        signal, a non-finite value or a value outside an enumeration (mode 0/1, bool 0/1).
        """
        kind = self._check_signal(device, signal)
        if signal not in self._writable[kind]:
            raise ValueError(f"{device}.{signal} is read-only")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{device}.{signal}: {value} is not a finite number")
        now = self._clock_s
        if kind == _KIND_CDU:
            self._cdu_by_name[device].write(signal, value, now)
        elif kind == _KIND_PLC:
            self.station.write(signal, value, now)
        else:
            self._write_panel(signal, value)

    def _write_panel(self, signal: str, value: float) -> None:
        if signal == "operator_mode":
            if value not in (0.0, 1.0, 2.0):
                raise ValueError(f"operator_mode must be 0 (off), 1 (manual) or 2 (auto), got {value}")
            self._operator_mode = int(value)
        elif signal == "manual_heat_power_mw":
            self._manual_heat_power_mw = min(max(value, 0.0), 30.0)
        elif signal == "manual_supply_temp_c":
            self._manual_supply_c = min(max(value, 50.0), 85.0)
        elif signal == "heartbeat":
            if not 0.0 <= value <= 65535.0:
                raise ValueError(f"heartbeat must be 0..65535, got {value}")
            self._panel_heartbeat = round(value)

    def _check_signal(self, device: str, signal: str) -> str:
        kind = self.device_kind(device)
        if signal not in self._signals[kind]:
            raise KeyError(f"device {device!r} has no signal {signal!r}")
        return kind

    def watchdog_tripped(self, device: str) -> bool:
        """True while a CDU or the hp-plc runs on local values because its watchdog expired.

        The flag clears when the gateway takes control again (CDU: ``control_mode`` 0 -> 1;
        hp-plc: a new heartbeat) or by ``alarm_reset``; :attr:`event_log` keeps every
        ``watchdog_fallback`` with its time.
        """
        kind = self.device_kind(device)
        if kind == _KIND_CDU:
            return self._cdu_by_name[device].watchdog_tripped
        if kind == _KIND_PLC:
            return self.station.watchdog_tripped
        raise KeyError(f"{device!r} has no watchdog")

    # -- reporting -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        """Every reading as ``device.signal`` plus the model's truth as ``truth.*``.

        Truth keys: ``truth.<cdu>.{tcs_supply_temp_c, tcs_return_temp_c, active_setpoint_c,
        valve_pct, heat_load_kw, watchdog_tripped}``, ``truth.fws.*``, ``truth.dh.*``,
        ``truth.hp-N.*``, ``truth.utility.*`` (the real order even when the link is down),
        ``truth.energy.*_mwh`` (see :meth:`energy_balance`) and ``truth.time_s``.
        """
        flat: dict[str, float] = {}
        for device in self._device_kinds:
            for signal, value in self.read(device).items():
                flat[f"{device}.{signal}"] = value
        for cdu in self.cdus:
            prefix = f"truth.{cdu.name}."
            flat[prefix + "tcs_supply_temp_c"] = cdu.supply_c
            flat[prefix + "tcs_return_temp_c"] = cdu.tcs_return_c
            flat[prefix + "active_setpoint_c"] = cdu.active_setpoint_c
            flat[prefix + "valve_pct"] = cdu.valve_pct
            flat[prefix + "heat_load_kw"] = cdu.load_kw
            flat[prefix + "facility_flow_kg_s"] = cdu.facility_flow_kg_s
            flat[prefix + "watchdog_tripped"] = 1.0 if cdu.watchdog_tripped else 0.0
        station = self.station
        flat["truth.fws.supply_temp_c"] = self._supply_header.temp_c
        flat["truth.fws.return_temp_c"] = self._fws_mix_c
        flat["truth.fws.station_inlet_temp_c"] = station.fws_in_c
        flat["truth.fws.flow_kg_s"] = self._fws_flow_kg_s
        flat["truth.fws.header_dp_bar"] = self._header_dp_bar
        flat["truth.dh.station_supply_temp_c"] = station.dh_out_c
        flat["truth.dh.meter_flow_temp_c"] = self.meter.flow_temp_c
        flat["truth.dh.return_temp_c"] = station.dh_return_c
        flat["truth.dh.flow_kg_s"] = station.dh_flow_kg_s
        flat["truth.dh.heat_kw"] = station.hx_heat_kw + station.hp_heat_kw
        flat["truth.dh.meter_heat_kw"] = self.meter.power_kw
        flat["truth.dry_cooler.heat_kw"] = station.dc_heat_kw
        flat["truth.hp.electric_kw"] = station.hp_electric_kw
        flat["truth.hp.cop"] = station.cop
        flat["truth.hp-plc.watchdog_tripped"] = 1.0 if station.watchdog_tripped else 0.0
        for pump in station.heat_pumps:
            flat[f"truth.{pump.name}.state"] = float(pump.state)
            flat[f"truth.{pump.name}.heat_kw"] = pump.heat_kw
        flat["truth.utility.heat_order_mw"] = self._utility_order_mw
        flat["truth.utility.supply_temp_c"] = self.utility_supply_temp_c
        flat["truth.utility.link_ok"] = 1.0 if self._utility_link_ok else 0.0
        flat["truth.it_load_mw"] = self._it_load_mw
        flat["truth.outdoor_temp_c"] = self._outdoor_c
        for name, value in self.energy_balance().items():
            flat[f"truth.energy.{name}_mwh"] = value
        flat["truth.time_s"] = self.time_s
        return flat

    def _record(self, device: str, kind: str, detail: str) -> None:
        self.event_log.append(PlantEvent(self.time_s, device, kind, detail))
