"""The control section's roles checked against the devices: what `check` refuses before `run` would.

The supervisor finds its inputs by (device, signal); a role naming a device that does not
exist, is disabled, is of another kind, or whose profile lacks a signal the role reads or
writes would leave that role stale for ever (or, with no CDU at all, stop the service at
start). Each contract below lists what a role needs today; the role-contract work (signal
mappings, constants, optional inputs) extends :data:`CONTRACTS` and :func:`check_roles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.profile import Access
from gateway.config.site import Device

if TYPE_CHECKING:
    from gateway.config.loader import Site
    from gateway.control.config import ControlConfig

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
    reads: tuple[str, ...]
    """Signals without which the role is stale every cycle."""
    writes: tuple[str, ...]
    """Signals the role writes: the profile must have them ``access: read_write`` (with min and max)."""


CONTRACTS = (
    RoleContract(
        role="heat meter",
        key="heat_meter_device",
        kind="heat_meter",
        reads=("flow_temp_c", "heat_power_kw", "return_temp_c"),
        writes=(),
    ),
    RoleContract(
        role="heat-pump PLC",
        key="heat_pump_plc_device",
        kind="heat_pump_plc",
        reads=("dh_supply_temp_c",),
        writes=("hp_supply_setpoint_c", "heat_power_limit_kw"),
    ),
    RoleContract(role="panel", key="panel_device", kind="panel_pc", reads=("utility_link_ok",), writes=()),
    RoleContract(
        role="CDU",
        key="cdu_devices",
        kind=None,
        reads=("tcs_supply_temp_c", "control_mode", "tcs_supply_setpoint_c", "valve_feedback_pct", "it_limit_c"),
        writes=("tcs_supply_setpoint_c",),
    ),
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


def _check_device(site: Site, key: str, device: Device, contract: RoleContract, kind: str) -> list[str]:
    name = device.name
    if not device.enabled:
        return [
            f"{key}: device {name!r} is disabled (enabled: false) but the control loop needs it as the {contract.role}"
        ]
    problems = []
    if device.kind != kind:
        problems.append(
            f"{key}: device {name!r} is of kind {device.kind!r}; the {contract.role} role needs kind {kind!r}"
        )
    signals = site.profile_of(device).signals
    problems += [
        f"{key}: device {name!r} has no signal {signal!r} in profile {device.profile!r}; "
        f"the {contract.role} role reads it"
        for signal in contract.reads
        if signal not in signals
    ]
    for signal in contract.writes:
        found = signals.get(signal)
        if found is None:
            if signal not in contract.reads:
                problems.append(
                    f"{key}: device {name!r} has no signal {signal!r} in profile {device.profile!r}; "
                    f"the {contract.role} role writes it"
                )
        elif found.access is not Access.READ_WRITE:
            problems.append(
                f"{key}: signal {signal!r} of device {name!r} is read-only in profile {device.profile!r}; "
                f"the {contract.role} role writes it (access: read_write, with min and max)"
            )
    return problems


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
            problems += _check_device(site, key, device, contract, contract.kind or control.cdu_kind)
    return problems
