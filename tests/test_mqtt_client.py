"""The shared MQTT client: paho on the event loop, exceptions instead of return codes, and the
broker's state logged once per change (including a broker that is not there at start)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest
import structlog
from structlog.testing import capture_logs

import gateway.mqtt as mqtt_module
from gateway.config.site import Mqtt
from gateway.mqtt import MqttConnection, MqttNotConnectedError
from tests.live import wait_for
from tests.services import MosquittoServer, free_port


@pytest.fixture
def logs(monkeypatch):
    with capture_logs() as captured:
        monkeypatch.setattr(mqtt_module, "log", structlog.get_logger("test"))
        yield captured


def events(logs: list[dict]) -> list[tuple[str, str]]:
    return [(e["event"], e.get("reason", "")) for e in logs if e["event"].startswith("mqtt_")]


async def test_publish_without_a_connection_raises():
    connection = MqttConnection(Mqtt(port=free_port()), "nobody", name="test")
    with pytest.raises(MqttNotConnectedError, match="not connected"):
        connection.publish("heat/t/x", b"1")
    with pytest.raises(MqttNotConnectedError):
        connection.subscribe("heat/t/#")


async def test_a_broker_absent_at_start_is_logged_once_then_connected_dropped_and_back(tmp_path, logs):
    """Unreachable at start: one warning, however many retries; then one line per change."""
    broker = MosquittoServer(workdir=tmp_path / "mosquitto")
    config = Mqtt(port=broker.port, reconnect_max_s=1)
    connection = MqttConnection(config, "state-log", name="test")
    received: list[bytes] = []
    connection.on_connected = lambda _present: connection.subscribe("heat/state/#")
    connection.on_message = lambda message: received.append(bytes(message.payload))
    task = asyncio.create_task(connection.run())
    try:
        await asyncio.sleep(3.5)  # several attempts with a 1 s cap
        assert events(logs) == [("mqtt_unreachable", "connection refused")]
        assert logs[0]["at_start"] is True
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: connection.connected, 10, "the connection")
        # Round trip through the broker, all on this event loop (paho has no thread here).
        await asyncio.sleep(0.2)
        mid = connection.publish("heat/state/x", b"hello")
        acked: list[int] = []
        connection.on_publish = acked.append
        await wait_for(lambda: received == [b"hello"] and acked == [mid], 5, "the message and its PUBACK")
        drops: list[str] = []
        connection.on_disconnected = drops.append
        await asyncio.to_thread(broker.kill)
        await wait_for(lambda: not connection.connected, 5, "the drop")
        await asyncio.sleep(2.5)  # retries against a dead port: no more lines
        assert len(drops) == 1  # paho 2.2 reports some drops twice: the owner hears of it once
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: connection.connected, 10, "the reconnect")
        kinds = [event for event, _reason in events(logs)]
        assert kinds == [
            "mqtt_unreachable",
            "mqtt_connected",
            "mqtt_disconnected",
            "mqtt_unreachable",
            "mqtt_connected",
        ]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        connection.close()
        broker.close()


async def test_tcp_nodelay_is_set(mosquitto):
    connection = MqttConnection(Mqtt(port=mosquitto.port), "nodelay", name="test")
    task = asyncio.create_task(connection.run())
    try:
        await wait_for(lambda: connection.connected, 5, "the connection")
        sock = connection._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        connection.close()


async def test_every_puback_reaches_on_publish_once_without_mqtt5_decoding(mosquitto, monkeypatch):
    """The MQTT 3.1.1 PUBACK shortcut (gateway.mqtt._Client): each message id acknowledged once,
    in order, and paho's own MQTT 5 decoding (a ReasonCode per packet) never runs for it."""
    built: list[int] = []
    reason_init = mqtt_module.ReasonCode.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        reason_init(self, *args, **kwargs)

    connection = MqttConnection(Mqtt(port=mosquitto.port, max_inflight=20), "puback", name="test")
    acked: list[int] = []
    connection.on_publish = acked.append
    task = asyncio.create_task(connection.run())
    try:
        await wait_for(lambda: connection.connected, 5, "the connection")
        monkeypatch.setattr(mqtt_module.ReasonCode, "__init__", counting_init)
        mids = []
        for index in range(200):  # more than max_inflight: paho queues the rest and sends on PUBACK
            mids.append(connection.publish("heat/puback/x", str(index).encode()))
            if index % 50 == 0:
                await asyncio.sleep(0)
        await wait_for(lambda: len(acked) >= len(mids), 5, "every PUBACK")
        await asyncio.sleep(0.2)
        assert sorted(acked) == sorted(mids)
        assert len(acked) == len(set(acked)) == 200
        assert built == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        connection.close()


async def test_a_frozen_broker_is_a_failed_attempt_not_a_hang(fresh_mosquitto, logs, monkeypatch):
    """TCP accepted, no CONNACK: reported once as unreachable with that reason."""
    monkeypatch.setattr(mqtt_module, "CONNACK_TIMEOUT_S", 0.5)
    assert fresh_mosquitto.pid is not None
    os.kill(fresh_mosquitto.pid, signal.SIGSTOP)
    connection = MqttConnection(Mqtt(port=fresh_mosquitto.port, reconnect_max_s=1), "frozen", name="test")
    task = asyncio.create_task(connection.run())
    try:
        await asyncio.sleep(2.5)
        assert events(logs) == [("mqtt_unreachable", "no CONNACK within 0.5 s (broker frozen or overloaded)")]
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        await wait_for(lambda: connection.connected, 10, "the connection after the thaw")
    finally:
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        connection.close()
