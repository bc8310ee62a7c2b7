"""The control section's roles checked against the devices: what `check` refuses before `run` would.

Here: which device has which role, and that it exists, is enabled, is of the role's kind and
has one role only. What each role reads and writes, and how the site binds those to the
device's profile signals (a signal, a constant or absent) and its declared heartbeat, is the
role contract in :mod:`gateway.control.roles` (the one place the signals are listed); its
problems are added once every role device is fine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.site import Device

if TYPE_CHECKING:
    from gateway.config.control import ControlConfig
    from gateway.config.loader import Site

__all__ = ["CONTRACTS", "RoleContract", "check_roles"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleContract:
    """What the control loop needs from the device (or devices) in one role."""

    role: str
    """How people call it, e.g. "heat meter"."""
    key: str
    """The ``control:`` key that names the device (a list of names for the CDUs)."""
    kind: str | None
    """The device kind the role expects; None = ``control.cdu_kind``."""


CONTRACTS = (
    RoleContract(role="heat meter", key="heat_meter_device", kind="heat_meter"),
    RoleContract(role="heat-pump PLC", key="heat_pump_plc_device", kind="heat_pump_plc"),
    RoleContract(role="panel", key="panel_device", kind="panel_pc"),
    RoleContract(role="CDU", key="cdu_devices", kind=None),
)


def _role_devices(control: ControlConfig, contract: RoleContract, site: Site) -> list[tuple[str, str]]:
    """(key path, device name) of every device the contract's key names."""
    if contract.key != "cdu_devices":
        return [(f"control.{contract.key}", str(getattr(control, contract.key)))]
    if control.cdu_devices:
        return [(f"control.cdu_devices[{i}]", name) for i, name in enumerate(control.cdu_devices)]
    # Empty: every enabled device of cdu_kind, as the supervisor takes them.
    return [
        (f"control.cdu_devices (kind {control.cdu_kind})", device.name)
        for device in site.config.devices
        if device.enabled and device.kind == control.cdu_kind
    ]


def _check_device(key: str, device: Device, contract: RoleContract, kind: str) -> list[str]:
    name = device.name
    if not device.enabled:
        return [
            f"{key}: device {name!r} is disabled (enabled: false) but the control loop needs it as the {contract.role}"
        ]
    if device.kind != kind:
        return [f"{key}: device {name!r} is of kind {device.kind!r}; the {contract.role} role needs kind {kind!r}"]
    return []


def check_roles(site: Site) -> list[str]:
    """Every problem of the control section's roles, one line each (``key: what``); [] when fine."""
    control = site.config.control
    if control is None:
        return []
    devices = {device.name: device for device in site.config.devices}
    known = ", ".join(devices)
    problems: list[str] = []
    taken: dict[str, str] = {}  # device name -> the key that gave it a role
    for contract in CONTRACTS:
        named = _role_devices(control, contract, site)
        if contract.key == "cdu_devices" and not named:
            problems.append(
                f"control: no CDU to supervise: control.cdu_devices is empty and no enabled device has kind "
                f"{control.cdu_kind!r} (control.cdu_kind)"
            )
        for key, name in named:
            device = devices.get(name)
            if device is None:
                problems.append(f"{key}: no device named {name!r} (devices: {known})")
                continue
            if name in taken:
                problems.append(f"{key}: device {name!r} already has a role ({taken[name]}); one role per device")
                continue
            taken[name] = key
            problems += _check_device(key, device, contract, contract.kind or control.cdu_kind)
    if problems:
        return problems
    # Every role device is there: now each one's signals and heartbeat against its role's contract.
    from gateway.control.roles import RoleError, role_map_of_site  # noqa: PLC0415 - control builds on config

    try:
        role_map_of_site(site.config, site.profiles)
    except RoleError as exc:
        return str(exc).splitlines()
    return []
