"""The MQTT publisher against a real broker: payloads, status, last will."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config.site import Mqtt
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Outbox
from gateway.sample import Reading


def subscribe(port: int, topic: str) -> tuple[paho.Client, list[tuple[str, bytes, bool]]]:
    got: list[tuple[str, bytes, bool]] = []
    ready = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), bool(m.retain)))
    client.on_connect = lambda c, *_: (c.subscribe(topic, qos=1), ready.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(5)
    return client, got


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_lines_status_and_texts(mosquitto):
    client, got = subscribe(mosquitto.port, "heat/pub-test/#")
    outbox: Outbox = Outbox(100)
    publisher = MqttPublisher(
        Mqtt(port=mosquitto.port, client_id="pub-test"), "pub-test", {"cdu-1": "cdu", "meter": "heat_meter"}, outbox
    )
    publisher.start()
    task = asyncio.create_task(publisher.run())
    try:
        await wait_until(lambda: publisher.connected)
        outbox.put(Reading("cdu-1", 1_764_000_000_000_000_000, {"a_c": 41.5, "b": float("nan")}, bad={"c": "x"}))
        outbox.put(Reading("meter", 1_764_000_000_000_000_001, {"p_kw": 2.0}, texts={"serial": 'SN "7"'}))
        outbox.put(Reading("meter", 1_764_000_000_000_000_002, {}, texts={"serial": "only"}))
        await wait_until(lambda: len([t for t, _, _ in got if t.endswith("/metrics")]) == 3)
        metrics = [p for t, p, _ in got if t.endswith("/metrics")]
        assert metrics[0] == b"cdu,device=cdu-1,site=pub-test a_c=41.5 1764000000000000000"  # NaN and bad left out
        assert metrics[1] == b'heat_meter,device=meter,site=pub-test p_kw=2.0,serial="SN \\"7\\"" 1764000000000000001'
        assert metrics[2] == b'heat_meter,device=meter,site=pub-test serial="only" 1764000000000000002'
        assert ("heat/pub-test/gateway/status", b"online", False) in got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.stop()
    await wait_until(lambda: got[-1][:2] == ("heat/pub-test/gateway/status", b"offline"))
    client.loop_stop()
    client.disconnect()
