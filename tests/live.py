"""Helpers for tests that run simulated devices, the gateway and the historian together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_site
from gateway.historian import Historian
from gateway.service import Gateway
from simulators.cli import make_plant
from simulators.site import SimulatedSite
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
PERIOD_S = 0.2


def write_site(tmp_path: Path, mqtt_port: int, influx_url: str, cdus: int = 3) -> Path:
    devices = "\n".join(
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
        f"unit_id: 1, profile: cdu, poll_period_s: {PERIOD_S}, timeout_s: 0.3, backoff_max_s: 0.5}}"
        for i in range(1, cdus + 1)
    )
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: e2e\nprofiles_dir: {REPO / 'config' / 'profiles'}\ndevices:\n{devices}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: e2e-{os.getpid()}}}\n"
        f"influxdb: {{url: '{influx_url}', org: heat, bucket: heat, token: t}}\n",
        encoding="utf-8",
    )
    return path


class Collector:
    """Subscribes to every metrics topic and keeps what arrives."""

    def __init__(self, port: int, topic: str = "heat/e2e/#", *, persistent: bool = False) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self.redelivered: list[str] = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"collector-{time.time_ns()}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: (c.subscribe(topic, qos=1), subscribed.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5)
        time.sleep(0.1)

    def _on_message(self, _c, _u, message) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), message.topic, bytes(message.payload)))
            if message.dup:  # the broker sent it to us again (our own ack was lost), not the gateway
                self.redelivered.append(message.topic)

    def fields(self, device: str) -> dict[str, float]:
        """Fields of the newest metrics line of a device."""
        with self.lock:
            for _, topic, payload in reversed(self.messages):
                if topic == f"heat/e2e/{device}/metrics":
                    head, body, ts = payload.decode().split(" ")
                    assert head == f"cdu,device={device},site=e2e"
                    assert int(ts) > 1_700_000_000 * 10**9
                    return {k: float(v) for k, v in (item.split("=") for item in body.split(","))}
        return {}

    def timestamps(self, device: str) -> list[int]:
        """Read timestamps (ns) of every metrics line of a device, sorted."""
        with self.lock:
            return sorted(
                int(payload.rsplit(b" ", 1)[1])
                for _, topic, payload in self.messages
                if topic == f"heat/e2e/{device}/metrics"
            )

    def count(self, device: str, since: float) -> int:
        with self.lock:
            return sum(1 for t, topic, _ in self.messages if t >= since and topic == f"heat/e2e/{device}/metrics")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.asynccontextmanager
async def running(site_path: Path, *, historian: bool = True):
    site = load_site(site_path)
    plant = make_plant(seed=1)
    simulated = SimulatedSite(site, plant, speed=1.0, tick_s=0.05)
    await simulated.start()
    gateway = Gateway(site)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(simulated.run(), name="plant"), asyncio.create_task(gateway.run(stop), name="gateway")]
    hist = None
    if historian:
        assert site.config.influxdb is not None
        hist = Historian(site.config.mqtt, site.config.influxdb, site.config.site)
        tasks.append(asyncio.create_task(hist.run(), name="historian"))
    try:
        yield site, plant, simulated, gateway, hist
    finally:
        stop.set()
        await asyncio.wait_for(tasks[1], 5)
        for task in (tasks[0], *tasks[2:]):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await simulated.stop()


async def cancel_all(tasks) -> None:
    """Cancel the tasks and wait, cancelling again any still running, as the service does
    (``gateway.service._cancel_all``): Python 3.11's ``asyncio.wait_for``, which pymodbus awaits
    its replies in, can drop a cancellation that lands just as a reply completes, and a single
    cancel would then hang the test's TaskGroup."""
    for _ in range(100):
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=0.1)
        if not pending:
            return
    raise AssertionError(f"tasks ignored 100 cancellations: {[t.get_name() for t in pending]}")


class ReadingSink:
    """An outbox for a lone poller: keeps every reading it is given."""

    def __init__(self) -> None:
        self.readings: list = []

    def put(self, item) -> None:
        self.readings.append(item)


@contextlib.asynccontextmanager
async def polling_unit(unit, profile, *, name: str, kind: str, period_s: float, timeout_s: float, **poller_options):
    """One simulated Modbus unit (``simulators.modbus_server.UnitImage``) on a loopback endpoint,
    polled by the real driver and ``DevicePoller``; yields ``(poller, sink)`` while it runs."""
    from gateway.config.site import ModbusDevice  # noqa: PLC0415 - only the poller tests need these
    from gateway.drivers.modbus import ModbusDriver  # noqa: PLC0415
    from gateway.poller import DevicePoller  # noqa: PLC0415
    from gateway.process_image import ProcessImage  # noqa: PLC0415
    from simulators.modbus_server import ModbusEndpoint  # noqa: PLC0415

    endpoint = ModbusEndpoint("127.0.0.1", 0)
    endpoint.units[1] = unit
    await endpoint.start()
    device = ModbusDevice(
        name=name,
        kind=kind,
        protocol="modbus",
        host="127.0.0.1",
        port=endpoint.port,
        profile="test",
        timeout_s=timeout_s,
        poll_period_s=period_s,
    )
    sink = ReadingSink()
    poller = DevicePoller(
        ModbusDriver(device, profile), period_s=period_s, image=ProcessImage(), outbox=sink, **poller_options
    )
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(poller.run(), name=f"poll:{name}")
            yield poller, sink
            await cancel_all([task])
    finally:
        await endpoint.stop()
