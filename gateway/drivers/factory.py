"""Build the driver a device's protocol needs."""

from __future__ import annotations

from pathlib import Path

from gateway.config.loader import Site
from gateway.config.profile import ModbusProfile, OpcUaProfile
from gateway.config.site import Device, ModbusDevice, OpcUaDevice
from gateway.drivers.base import Driver


def _beside(site: Site, path: Path) -> Path:
    """Relative paths in the site file are relative to the site file, like profiles_dir."""
    return path if path.is_absolute() else site.path.parent / path


def _opcua_paths(site: Site, device: OpcUaDevice) -> OpcUaDevice:
    """The device with its certificate and trust paths made absolute."""
    security = device.security
    update = {
        key: _beside(site, value)
        for key in ("certificate", "private_key", "server_certificate", "trust_dir")
        if (value := getattr(security, key)) is not None
    }
    return device.model_copy(update={"security": security.model_copy(update=update)})


def make_driver(site: Site, device: Device) -> Driver:
    """The driver for one configured device."""
    profile = site.profile_of(device)
    if isinstance(device, ModbusDevice):
        from gateway.drivers.modbus import ModbusDriver  # noqa: PLC0415 - load protocol stacks on demand

        assert isinstance(profile, ModbusProfile)
        return ModbusDriver(device, profile)
    if isinstance(device, OpcUaDevice):
        from gateway.drivers.opcua import OpcUaDriver  # noqa: PLC0415 - load protocol stacks on demand

        assert isinstance(profile, OpcUaProfile)
        return OpcUaDriver(_opcua_paths(site, device), profile, _beside(site, site.config.state_dir))
    raise NotImplementedError(f"{device.name}: protocol {device.protocol} has no driver yet")
