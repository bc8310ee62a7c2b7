"""``heat-gateway check --control``: the control roles against the live devices, writing nothing.

Every device in a control role is read once (in parallel, each with its own driver and
timeout). For every role input and output the report shows what it is bound to and what was
read: value and quality (good, uncertain, bad with the reason, absent, constant). Then one
supervisor cycle runs on those readings from a fresh state in auto mode (the panel's operator
switch is not followed here) and lists the writes it would send, heartbeats included, without
sending any. A device that does not answer is listed with the driver's reason; the supervisor
then sees it as stale, as it would live.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.control.roles import ROLES, DeviceRole, role_map_of_site
from gateway.control.supervisor import Supervisor, SupervisorState
from gateway.control.writes import HEARTBEAT_REASON, Write
from gateway.drivers.base import DriverError
from gateway.drivers.factory import make_driver
from gateway.process_image import ProcessImage
from gateway.validity import ValueCheck, site_ranges

if TYPE_CHECKING:
    from gateway.config.loader import Site
    from gateway.sample import Reading

__all__ = ["ControlCommissioning", "RoleRow", "commission_control", "format_commissioning"]


@dataclass(frozen=True, slots=True)
class RoleRow:
    """One role signal of one device as read now."""

    device: str
    role: str
    signal: str
    output: bool
    binding: str
    value: float | None
    quality: str


@dataclass(slots=True)
class ControlCommissioning:
    """What ``check --control`` found."""

    rows: list[RoleRow] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    watchdogs: list[str] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "inputs": [
                {
                    "device": row.device,
                    "role": row.role,
                    "signal": row.signal,
                    "output": row.output,
                    "binding": row.binding,
                    "value": row.value,
                    "quality": row.quality,
                }
                for row in self.rows
            ],
            "unreachable": self.unreachable,
            "watchdogs": self.watchdogs,
            "would_write": [
                {"device": w.device, "signal": w.signal, "value": w.value, "reason": w.reason} for w in self.writes
            ],
            "status": self.status,
        }


def _quality(reading: Reading | None, signal: str, unreachable: str | None) -> tuple[float | None, str]:
    if reading is None:
        return None, f"bad: device unreachable ({unreachable})"
    if signal in reading.values:
        return reading.values[signal], "good"
    if signal in reading.uncertain:
        return reading.uncertain[signal], "uncertain (not used by the control)"
    return None, f"bad: {reading.bad.get(signal, 'not read')}"


def _role_rows(name: str, device: DeviceRole, reading: Reading | None, unreachable: str | None) -> list[RoleRow]:
    """One row per role signal of the device: its binding, the value read and its quality."""
    rows: list[RoleRow] = []
    for spec in ROLES[device.role].signals:
        binding = device.bindings[spec.name]
        if binding.kind == "signal":
            value, quality = _quality(reading, binding.signal, unreachable)
        elif binding.kind == "constant":
            value, quality = binding.value, "constant (site file)"
        else:
            value, quality = None, f"absent: {spec.absent}"
        rows.append(RoleRow(name, device.role, spec.name, spec.output, binding.describe(), value, quality))
    return rows


def _watchdog_line(
    site: Site, name: str, device: DeviceRole, reading: Reading | None, unreachable: str | None
) -> str | None:
    """The device's watchdog timeout as declared against what it reports (None: no heartbeat or timeout)."""
    beat = device.heartbeat
    if beat is None or beat.timeout_s is None:
        return None
    watchdog = site.profile_of(site.device(name)).watchdog
    source = watchdog.timeout_signal if watchdog is not None else None
    if source is None:
        return f"{name}: watchdog {beat.timeout_s:g} s as declared (not reported by the device)"
    reported, quality = _quality(reading, source, unreachable)
    if reported is None:
        return f"{name}: watchdog {beat.timeout_s:g} s declared; {source} {quality}"
    if abs(reported - beat.timeout_s) > 1e-6:
        return (
            f"{name}: WATCHDOG MISMATCH: the profile declares {beat.timeout_s:g} s but the device reports "
            f"{source} = {reported:g} s; heartbeats every {beat.period_s:g} s"
        )
    return f"{name}: watchdog {reported:g} s as declared; heartbeat every {beat.period_s:g} s"


async def commission_control(site: Site) -> ControlCommissioning:
    """Read every role device once and run one supervisor cycle on it, writing nothing."""
    roles = role_map_of_site(site.config, site.profiles)
    config = site.config.control
    assert config is not None  # the caller checks: no control section, nothing to commission
    report = ControlCommissioning()
    image = ProcessImage()
    readings: dict[str, Reading] = {}

    async def read_one(name: str) -> None:
        device = site.device(name)
        driver = make_driver(site, device)
        try:
            async with driver:
                reading = await driver.read()
        except DriverError as exc:
            report.unreachable[name] = str(exc)
            return
        # as the poller would: a value outside its valid range is bad, with the range as the reason
        ValueCheck(name, site_ranges(site, device, roles), logs=False).apply(reading)
        readings[name] = reading
        image.update(reading)

    async with asyncio.TaskGroup() as group:
        for name in roles.devices:
            group.create_task(read_one(name), name=f"commission:{name}")

    for name, device in roles.devices.items():
        reading = readings.get(name)
        unreachable = report.unreachable.get(name)
        report.rows.extend(_role_rows(name, device, reading, unreachable))
        line = _watchdog_line(site, name, device, reading, unreachable)
        if line is not None:
            report.watchdogs.append(line)

    # Auto mode whatever the panel's switch says: this lists what auto would write.
    supervisor = Supervisor(config.model_copy(update={"follow_panel_operator_mode": False}), roles)
    result = supervisor.step(image.snapshot(time.time_ns()), SupervisorState(), time.monotonic())
    report.writes = list(result.writes)
    report.status = dict(result.status)
    return report


def format_commissioning(report: ControlCommissioning) -> list[str]:
    """The report as lines for the terminal."""
    lines: list[str] = []
    device = ""
    for row in report.rows:
        if row.device != device:
            device = row.device
            lines.append(f"{device} (role {row.role})")
            if device in report.unreachable:
                lines.append(f"  UNREACHABLE: {report.unreachable[device]}")
        value = "-" if row.value is None else f"{row.value:.6g}"
        kind = "writes" if row.output else "reads "
        lines.append(f"  {kind} {row.signal:<24} {row.binding:<28} {value:>12}  {row.quality}")
    lines.append("watchdogs:")
    lines.extend(f"  {line}" for line in report.watchdogs)
    stale = report.status.get("stale_devices") or "none"
    lines.append(f"one supervisor cycle in auto mode on these values (stale: {stale}); it would write:")
    setpoints = [w for w in report.writes if w.reason != HEARTBEAT_REASON]
    beats = [w for w in report.writes if w.reason == HEARTBEAT_REASON]
    lines.extend(f"  {w.device}.{w.signal} = {w.value:g}  ({w.reason})" for w in setpoints)
    if not setpoints:
        lines.append("  no setpoint")
    if beats:
        lines.append("  heartbeats: " + ", ".join(f"{w.device}.{w.signal} = {w.value:g}" for w in beats))
    lines.append("nothing was written (commissioning reads only)")
    return lines
