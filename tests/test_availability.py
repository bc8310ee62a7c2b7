"""Availability that tells the truth, at the poller, against the Modbus simulator over loopback.

Down at start is logged (once), back is logged (once); a device that answers only exception
codes is unavailable and publishes nothing; a value that stops moving for longer than its
profile's ``stale_after_s`` is published as ``quality="stale"`` in the ``gateway`` measurement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from gateway import poller as poller_module
from gateway.config.loader import load_site
from gateway.config.profile import ModbusProfile
from gateway.config.site import ModbusDevice
from gateway.drivers.modbus import ModbusDriver
from gateway.poller import DevicePoller, StaleWatch
from gateway.process_image import ProcessImage
from gateway.sample import Quality, Reading
from gateway.service import Gateway
from simulators.modbus_server import Fault, ModbusEndpoint, UnitImage
from tests.live import polling_unit

REPO = Path(__file__).resolve().parent.parent
PROFILE = ModbusProfile.model_validate(
    {
        "protocol": "modbus",
        "model": "test",
        "signals": {
            "temp_c": {"table": "input_register", "address": 0, "type": "int16", "scale": 0.01, "stale_after_s": 0.5},
            "flow_lpm": {"table": "input_register", "address": 1, "type": "uint16", "stale_after_s": 0.5},
            "mode": {"table": "holding_register", "address": 0, "type": "uint16"},
        },
    }
)
PERIOD_S = 0.1


def running(unit: UnitImage):
    stale = {name: s.stale_after_s for name, s in PROFILE.signals.items() if s.stale_after_s is not None}
    return polling_unit(
        unit,
        PROFILE,
        name="cdu-1",
        kind="cdu",
        period_s=PERIOD_S,
        timeout_s=0.2,
        backoff_max_s=0.2,
        stale_after_s=stale,
    )


def make_unit() -> UnitImage:
    unit = UnitImage("cdu-1", PROFILE, on_write=lambda _s, _v: None)
    unit.update({"temp_c": 31.5, "flow_lpm": 300, "mode": 1})
    return unit


async def test_down_at_start_is_logged_once_and_back_once(monkeypatch):
    monkeypatch.setattr(poller_module, "log", structlog.get_logger("test"))
    unit = make_unit()
    unit.fault = Fault.SILENT
    with capture_logs() as logs:
        async with running(unit) as (poller, outbox):
            await asyncio.sleep(1.2)
            assert not poller.stats.available
            assert outbox.readings == []
            assert poller.stats.failures >= 3
            unit.fault = Fault.NONE
            await asyncio.sleep(1.0)
            assert poller.stats.available
            assert outbox.readings
    events = [(e["event"], e.get("cause"), e["at_start"]) for e in logs if e["event"].startswith("device_")]
    assert events == [("device_unavailable", "timeout", True), ("device_available", None, False)]


async def test_device_answering_only_exceptions_is_unavailable_and_publishes_nothing(monkeypatch):
    monkeypatch.setattr(poller_module, "log", structlog.get_logger("test"))
    unit = make_unit()
    unit.fault, unit.fault_code = Fault.EXCEPTION, 4
    with capture_logs() as logs:
        async with running(unit) as (poller, outbox):
            await asyncio.sleep(1.0)
            assert not poller.stats.available
            assert outbox.readings == []
            sample = poller.image.snapshot(0).sample("cdu-1", "temp_c")
            assert sample.quality is Quality.BAD
            assert "Modbus exception 4 (server device failure)" in sample.reason
    down = [e for e in logs if e["event"] == "device_unavailable"]
    assert len(down) == 1
    assert down[0]["cause"] == "device_fault"
    assert down[0]["reason"].startswith("every signal is bad: cdu-1 at unit 1 holding_register 0-0")


async def test_values_that_stop_moving_are_published_as_stale():
    unit = make_unit()
    async with running(unit) as (poller, outbox):
        for step in range(12):  # flow moves every poll, temperature never does
            unit.update({"flow_lpm": 300 + step})
            await asyncio.sleep(PERIOD_S)
        stale = poller.stale.stale()
    assert set(stale) == {"temp_c"}
    assert stale["temp_c"] > 0.5
    assert len(outbox.readings) >= 8
    # the gateway measurement says so, one line per watched signal
    gateway = Gateway(load_site(REPO / "config" / "site.example.yaml"))
    gateway.pollers[0].stale = poller.stale
    lines = gateway.stats_message().payload.decode().splitlines()
    device = gateway.pollers[0].name
    signal_lines = sorted(line.split(" ")[:2] for line in lines if ",signal=" in line)
    assert [fields.split(",")[0] for _series, fields in signal_lines] == ['quality="good"', 'quality="stale"']
    assert all(f"device={device}," in series for series, _fields in signal_lines)
    series = f"gateway,device={device},site="
    device_line = next(line for line in lines if line.startswith(series) and ",signal=" not in line)
    assert "stale_signals=1i" in device_line
    assert "read_age_p99_s=" in device_line


def test_stale_watch_uses_the_readings_own_time():
    watch = StaleWatch({"temp_c": 10.0})
    for second, value in [(0, 1.0), (5, 1.0), (11, 1.0)]:
        watch.update(Reading("d", second * 1_000_000_000, {"temp_c": value}))
    assert watch.stale() == {"temp_c": 11.0}
    watch.update(Reading("d", 12_000_000_000, {"temp_c": 1.01}))
    assert watch.stale() == {}


async def test_a_refused_connection_is_logged_once_as_refused(monkeypatch):
    monkeypatch.setattr(poller_module, "log", structlog.get_logger("test"))
    endpoint = ModbusEndpoint("127.0.0.1", 0)
    await endpoint.start()
    port = endpoint.port
    await endpoint.stop()  # nothing listens there any more
    device = ModbusDevice(
        name="cdu-9", kind="cdu", protocol="modbus", host="127.0.0.1", port=port, profile="test", timeout_s=0.2
    )
    poller = DevicePoller(
        ModbusDriver(device, PROFILE), period_s=PERIOD_S, backoff_max_s=0.2, image=ProcessImage(), outbox=None
    )
    with capture_logs() as logs:
        for _ in range(3):
            assert await poller.poll_once() is None
    down = [e for e in logs if e["event"] == "device_unavailable"]
    assert len(down) == 1
    assert down[0]["cause"] == "refused"
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in down[0]["reason"]
