"""Polls start in groups: poll_phases, and the grid the pollers share (one loop turn per group)."""

from __future__ import annotations

import itertools

from gateway.config.site import ModbusDevice, OpcUaDevice
from gateway.poller import first_start
from gateway.service import POLL_GROUP, poll_phases


def modbus(name: str, port: int, period_s: float = 1.0, unit_id: int = 1) -> ModbusDevice:
    return ModbusDevice(
        name=name,
        kind="cdu",
        protocol="modbus",
        host="10.0.0.1",
        port=port,
        unit_id=unit_id,
        profile="p",
        poll_period_s=period_s,
    )


def test_devices_are_grouped_by_period_and_endpoint_and_groups_spread_over_the_cycle():
    devices = [modbus(f"d{i}", 1000 + i) for i in range(50)]
    devices += [modbus(f"rack-{u}", 502, unit_id=u) for u in range(1, 13)]  # 12 units, one endpoint
    devices += [modbus(f"fast{i}", 2000 + i, period_s=0.1) for i in range(3)]
    devices.append(
        OpcUaDevice(name="panel", kind="panel", protocol="opcua", endpoint="opc.tcp://10.0.0.2:4840", profile="o")
    )
    phases = poll_phases(devices)
    assert set(phases) == {d.name for d in devices}
    assert phases == poll_phases(reversed(devices))  # the same site gives the same phases
    one_hz = [d for d in devices if d.poll_period_s == 1.0]
    groups: dict[float, list[str]] = {}
    for device in one_hz:
        groups.setdefault(phases[device.name], []).append(device.name)
    # the units of one endpoint share a phase even beyond POLL_GROUP; other groups hold at most POLL_GROUP
    assert len({phases[f"rack-{u}"] for u in range(1, 13)}) == 1
    assert all(len(names) <= POLL_GROUP for names in groups.values() if not names[0].startswith("rack-"))
    assert len(groups) == 9  # 50 single devices in groups of 8 (7), the rack (1), then the panel (1)
    ordered = sorted(groups)
    assert ordered[0] == 0.0
    assert all(abs(b - a - 1 / len(groups)) < 1e-9 for a, b in itertools.pairwise(ordered))
    # a faster period has its own groups, spread over its own (shorter) cycle
    assert {phases[f"fast{i}"] for i in range(3)} == {0.0}
    assert 0.0 <= phases["panel"] < 1.0


def test_pollers_started_at_any_moment_share_one_grid():
    """Pollers of one period and phase poll at the same loop times (one turn), whenever started."""
    for period, phase in ((1.0, 0.25), (0.2, 0.05), (60.0, 0.5), (0.1, 0.0)):
        cycle = min(period, 1.0)
        starts = {first_start(1000.0 + cycle * k / 7, period, phase) for k in range(7)}  # within one cycle
        assert len(starts) <= 2  # this cycle's slot, or the next one for those started after it
        for now in (1000.0, 1000.0 + cycle / 3, 1234.567):
            start = first_start(now, period, phase)
            assert now <= start < now + cycle
            assert abs((start - phase) / cycle - round((start - phase) / cycle)) < 1e-9  # on the grid
    # a poller started just after a slot waits for the next one, not for a whole long period
    assert first_start(1000.3, 60.0, 0.25) == 1001.25
