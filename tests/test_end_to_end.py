"""Simulator -> Modbus -> gateway -> MQTT -> historian -> time-series server, over real sockets.

The simulated CDUs, the gateway and the historian run in the test's event loop; the broker
(private Mosquitto) and the time-series server (private victoria-metrics) are real processes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from gateway.drivers.modbus import ModbusDriver
from gateway.sample import Quality
from tests.live import PERIOD_S, Collector, running, wait_for, write_site


async def test_values_reach_mqtt_and_the_time_series_server(tmp_path, mosquitto, victoria):
    site_path = write_site(tmp_path, mosquitto.port, victoria.url)
    collector = Collector(mosquitto.port)
    try:
        async with running(site_path) as (site, plant, _simulated, _gateway, _hist):
            fields = await wait_for(lambda: collector.fields("cdu-1"), 10 * PERIOD_S + 3, "cdu-1 metrics")
            truth = plant.read("cdu-1")
            # static values decode exactly (scaled int16 with 0.01 resolution)
            assert fields["it_limit_c"] == pytest.approx(truth["it_limit_c"], abs=0.006)
            assert fields["tcs_supply_setpoint_c"] == pytest.approx(truth["tcs_supply_setpoint_c"], abs=0.006)
            # moving values agree within what moves in a few poll periods
            assert fields["tcs_supply_temp_c"] == pytest.approx(truth["tcs_supply_temp_c"], abs=0.5)
            assert fields["heat_load_kw"] == pytest.approx(truth["heat_load_kw"], rel=0.05)
            assert set(fields) == set(site.profiles["cdu"].signals)

            # A setpoint written over Modbus takes effect in the plant and shows in the readings.
            device = site.device("cdu-1")
            async with ModbusDriver(device, site.profiles["cdu"]) as driver:  # type: ignore[arg-type]
                await driver.write("control_mode", 1)
                assert await driver.write("tcs_supply_setpoint_c", 38.5) == pytest.approx(38.5)
            await wait_for(
                lambda: collector.fields("cdu-1").get("tcs_supply_setpoint_c") == pytest.approx(38.5, abs=0.006),
                10 * PERIOD_S + 2,
                "the new setpoint in MQTT",
            )
            assert plant.read("cdu-1")["tcs_supply_setpoint_c"] == pytest.approx(38.5, abs=0.006)

            # ... and lands in the time-series server, decoded and scaled.
            def exported():
                victoria.flush()
                series = victoria.export('cdu_tcs_supply_setpoint_c{device="cdu-1",site="e2e"}')
                return series and any(v == pytest.approx(38.5, abs=0.006) for s in series for v in s["values"])

            await wait_for(exported, 15, "the setpoint in victoria-metrics")
            series = victoria.export('cdu_it_limit_c{device="cdu-2"}')
            assert series
            assert series[0]["values"][-1] == pytest.approx(plant.read("cdu-2")["it_limit_c"], abs=0.006)
    finally:
        collector.close()


async def test_a_stopped_device_does_not_slow_the_others(tmp_path, mosquitto, victoria):
    site_path = write_site(tmp_path, mosquitto.port, victoria.url)
    collector = Collector(mosquitto.port)
    try:
        async with running(site_path, historian=False) as (_site, _plant, simulated, gateway, _hist):
            await wait_for(lambda: collector.fields("cdu-3"), 5, "first readings")
            window = 2.0
            start = time.monotonic()
            await asyncio.sleep(window)
            before = collector.count("cdu-1", start)

            endpoint = simulated.endpoint_of("cdu-2")
            await endpoint.stop()

            def cdu2_bad():
                sample = gateway.image.snapshot(time.time_ns()).sample("cdu-2", "tcs_supply_temp_c")
                return sample.quality is Quality.BAD and sample.reason

            reason = await wait_for(cdu2_bad, 3, "cdu-2 marked bad")
            assert "cdu-2" in reason
            start = time.monotonic()
            await asyncio.sleep(window)
            during = collector.count("cdu-1", start)
            # The other devices keep their rate (10 polls per 2 s at 0.2 s; allow scheduling noise).
            assert during >= before - 2
            assert during >= window / PERIOD_S - 2
            assert collector.count("cdu-3", start) >= window / PERIOD_S - 2

            await endpoint.start()  # same port
            await wait_for(
                lambda: (
                    gateway.image.snapshot(time.time_ns()).sample("cdu-2", "tcs_supply_temp_c").quality is Quality.GOOD
                ),
                5,
                "cdu-2 back",
            )
            assert next(p for p in gateway.pollers if p.name == "cdu-2").stats.available
    finally:
        collector.close()


def test_run_stops_cleanly_on_sigterm(tmp_path, mosquitto, victoria):
    site_path = write_site(tmp_path, mosquitto.port, victoria.url, cdus=2)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "-c", str(site_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    collector = Collector(mosquitto.port)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(site_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not collector.fields("cdu-2"):
            time.sleep(0.1)
        assert collector.fields("cdu-2"), "no metrics from the gateway process"
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=5)
        assert code == 0
        assert time.monotonic() - started < 5
        output = gateway.stdout.read().decode() if gateway.stdout else ""
        assert '"event": "gateway_stopped"' in output  # JSON lines when stdout is not a terminal
        with collector.lock:
            statuses = [p for _, t, p in collector.messages if t == "heat/e2e/gateway/status"]
        assert statuses[-1] == b"offline"
    finally:
        for process in (gateway, simulator):
            if process.poll() is None:
                process.kill()
            process.wait()
        if gateway.stdout:
            gateway.stdout.close()
        collector.close()
