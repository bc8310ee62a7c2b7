"""Build the driver a device's protocol needs."""

from __future__ import annotations

from gateway.config.loader import Site
from gateway.config.profile import ModbusProfile
from gateway.config.site import Device, ModbusDevice
from gateway.drivers.base import Driver


def make_driver(site: Site, device: Device) -> Driver:
    """The driver for one configured device."""
    profile = site.profile_of(device)
    if isinstance(device, ModbusDevice):
        from gateway.drivers.modbus import ModbusDriver  # noqa: PLC0415 - load protocol stacks on demand

        assert isinstance(profile, ModbusProfile)
        return ModbusDriver(device, profile)
    raise NotImplementedError(f"{device.name}: protocol {device.protocol} has no driver yet")
