"""Serve a site's simulated devices on real sockets, driven by one plant model.

Every device in the site file whose host is a loopback address and whose name the plant knows
is served: Modbus devices on a :class:`ModbusEndpoint` (devices sharing host:port become unit
ids of one endpoint, like a Modbus gateway), OPC UA devices on an :class:`OpcUaDeviceServer`
at the endpoint's port (with the device's user name and password when it has one; security
policy None: encrypted endpoints are exercised by the OPC UA tests, not by ``simulate``).
The plant steps in (optionally accelerated) real time; after each step the register images
and variables are refreshed from it, and writes go straight into it.

``profiles`` (device name -> profile) says what each simulated device really speaks when that
differs from what the gateway's site file says (the real-path run serves the bundled profiles
and lets the gateway read with another, e.g. one with a wrong byte order); ``source_time``
stamps OPC UA values (default: the wall clock; the real-path run gives the plant's clock);
``on_write(device, signal, value)`` sees every write the plant accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from gateway.config.loader import Site
from gateway.config.profile import ModbusProfile, OpcUaProfile, Profile
from gateway.config.site import ModbusDevice, OpcUaDevice
from simulators.modbus_server import Fault, ModbusEndpoint, UnitImage
from simulators.opcua_server import OpcUaDeviceServer


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve there (localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


class SimulatedSite:
    """The plant behind every simulated device of a site."""

    def __init__(
        self,
        site: Site,
        plant: Any,
        *,
        speed: float = 1.0,
        tick_s: float = 0.1,
        profiles: Mapping[str, Profile] | None = None,
        source_time: Callable[[], datetime] | None = None,
        on_write: Callable[[str, str, float], None] | None = None,
        refresh_on_read: bool = False,
    ) -> None:
        self.site = site
        self._profiles = dict(profiles or {})
        self._source_time = source_time
        self._on_write = on_write
        self.refresh_on_read = refresh_on_read
        self._generation = 0  # plant steps seen by refresh()
        self._refreshed: dict[str, int] = {}  # device -> generation its image shows
        self.plant = plant
        self.speed = speed
        self.tick_s = tick_s
        self.endpoints: dict[tuple[str, int], ModbusEndpoint] = {}
        self.units: dict[str, UnitImage] = {}
        self.opcua_servers: dict[str, Any] = {}
        known = set(plant.device_names())
        for device in site.config.devices:
            if isinstance(device, OpcUaDevice) and device.name in known:
                self._add_opcua(device)
                continue
            if not isinstance(device, ModbusDevice) or not is_loopback(device.host) or device.name not in known:
                continue
            profile = self._profiles.get(device.name) or site.profile_of(device)
            assert isinstance(profile, ModbusProfile)
            key = (device.host, device.port)
            endpoint = self.endpoints.setdefault(key, ModbusEndpoint(device.host, device.port))
            unit = UnitImage(device.name, profile, on_write=self._writer(device.name))
            unit.update(plant.read(device.name))
            if refresh_on_read:
                unit.before_request = lambda name=device.name: self._refresh_unit(name)
            endpoint.units[device.unit_id] = unit
            self.units[device.name] = unit

    def _add_opcua(self, device: OpcUaDevice) -> None:
        url = urlsplit(device.endpoint)
        if url.hostname is None or not is_loopback(url.hostname):
            return
        profile = self._profiles.get(device.name) or self.site.profile_of(device)
        assert isinstance(profile, OpcUaProfile)
        users = None
        if device.username and device.password is not None:
            users = {device.username: device.password.get_secret_value()}
        server = self.opcua_servers[device.name] = OpcUaDeviceServer(
            profile,
            url.hostname,
            url.port or 4840,
            on_write=lambda signal, value, name=device.name: self._write(name, signal, value),
            initial=self.plant.read(device.name),
            users=users,
        )
        if self.refresh_on_read:
            server.before_read = lambda name=device.name: self._refresh_server(name)

    def _writer(self, device: str) -> Any:
        def write(signal: str, value: float) -> None:
            self._write(device, signal, value)
            self.units[device].update(self.plant.read(device))

        return write

    def _write(self, device: str, signal: str, value: float) -> None:
        """A write that reached a simulated device: into the plant (which may refuse it)."""
        self.plant.write(device, signal, value)
        if self._on_write is not None:
            self._on_write(device, signal, value)

    async def start(self) -> None:
        """Open every endpoint (OPC UA servers start together: each takes ~1 s)."""
        for endpoint in self.endpoints.values():
            await endpoint.start()
        await asyncio.gather(*(server.start() for server in self.opcua_servers.values()))

    async def stop(self) -> None:
        """Close every endpoint."""
        for endpoint in self.endpoints.values():
            await endpoint.stop()
        for server in self.opcua_servers.values():
            await server.stop()

    def _refresh_unit(self, name: str) -> None:
        if self._refreshed.get(name) != self._generation:
            self._refreshed[name] = self._generation
            self.units[name].update(self.plant.read(name))

    async def _refresh_server(self, name: str) -> None:
        if self._refreshed.get(name) != self._generation:
            self._refreshed[name] = self._generation
            stamp = self._source_time() if self._source_time is not None else None
            await self.opcua_servers[name].update(self.plant.read(name), source_time=stamp)

    async def refresh(self) -> None:
        """Copy the plant's current values into every register image and OPC UA variable.

        With ``refresh_on_read`` only note that the plant moved: each device copies its values
        when a request for it arrives (a device nobody reads costs nothing).
        """
        if self.refresh_on_read:
            self._generation += 1
            return
        for name, unit in self.units.items():
            unit.update(self.plant.read(name))
        stamp = self._source_time() if self._source_time is not None else None
        for name, server in self.opcua_servers.items():
            if server.running:
                await server.update(self.plant.read(name), source_time=stamp)

    async def run(self) -> None:
        """Step the plant on the wall clock (times ``speed``) until cancelled."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            self.plant.step((now - last) * self.speed)
            last = now
            await self.refresh()

    def endpoint_of(self, device: str) -> ModbusEndpoint:
        """The endpoint serving a device."""
        for endpoint in self.endpoints.values():
            if any(unit.name == device for unit in endpoint.units.values()):
                return endpoint
        raise KeyError(f"{device} is not simulated here")

    def inject(self, device: str, fault: Fault | str, *, delay_s: float = 0.0, code: int = 4) -> None:
        """Inject a fault into one simulated device (``none`` clears it)."""
        unit = self.units[device]
        unit.fault = Fault(fault)
        unit.fault_delay_s = delay_s
        unit.fault_code = code
        if unit.fault is Fault.DROP:
            self.endpoint_of(device).drop_connections()
