"""The private test servers behave like the real ones the gateway meets on a site box."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import (
    BinaryNotFoundError,
    MosquittoServer,
    VictoriaMetricsServer,
    find_binary,
    free_port,
    port_accepts,
)

TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# A small synchronous MQTT client for the tests
# --------------------------------------------------------------------------------------------


class Receiver:
    """Collects the payloads of the messages a paho client receives."""

    def __init__(self, expected: int) -> None:
        self.payloads: list[bytes] = []
        self.expected = expected
        self.done = threading.Event()
        self._lock = threading.Lock()

    def on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(message.payload)
            if len(self.payloads) >= self.expected:
                self.done.set()


@contextmanager
def connected(
    server: MosquittoServer,
    client_id: str,
    *,
    clean_session: bool = True,
    on_message: paho.CallbackOnMessage | None = None,
) -> Iterator[paho.Client]:
    """A paho 2.x client with its network thread running; disconnected and stopped on exit."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    if on_message is not None:
        client.on_message = on_message
    ready = threading.Event()
    client.on_connect = lambda *_args: ready.set()
    client.connect(server.host, server.port, keepalive=30)
    client.loop_start()
    try:
        assert ready.wait(TIMEOUT_S), f"no CONNACK from {server}"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: paho.Client, topic: str) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK."""
    acked = threading.Event()
    client.on_subscribe = lambda *_args: acked.set()
    result, _mid = client.subscribe(topic, qos=1)
    assert result == paho.MQTT_ERR_SUCCESS
    assert acked.wait(TIMEOUT_S), f"no SUBACK for {topic}"


def publish(client: paho.Client, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1 and wait until the broker has acknowledged every message."""
    infos = [client.publish(topic, payload, qos=1) for payload in payloads]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()


def unique(prefix: str) -> str:
    """A name no other test (or earlier session) uses, to keep tests apart on shared servers."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------------


def test_mosquitto_round_trip(mosquitto: MosquittoServer) -> None:
    topic = f"heat/{unique('site')}/cdu-1/metrics"
    receiver = Receiver(expected=3)
    with (
        connected(mosquitto, unique("sub"), on_message=receiver.on_message) as subscriber,
        connected(mosquitto, unique("pub")) as publisher,
    ):
        subscribe(subscriber, topic)
        publish(publisher, topic, [b"1", b"2", b"3"])
        assert receiver.done.wait(TIMEOUT_S)
    assert receiver.payloads == [b"1", b"2", b"3"]


def test_mosquitto_config_has_what_we_ship(mosquitto: MosquittoServer) -> None:
    config = mosquitto.config_path.read_text(encoding="utf-8")
    assert f"listener {mosquitto.port} 127.0.0.1" in config
    assert "max_queued_messages 100000" in config
    assert "set_tcp_nodelay true" in config
    assert "persistence true" in config


def test_mosquitto_restart_keeps_port_and_persistent_session(
    fresh_mosquitto: MosquittoServer,
) -> None:
    """A QoS 1 message queued for an offline persistent session survives a broker restart."""
    topic = "heat/s/cdu-1/metrics"
    historian_id = unique("historian")
    port = fresh_mosquitto.port

    with connected(fresh_mosquitto, historian_id, clean_session=False) as historian:
        subscribe(historian, topic)
    with connected(fresh_mosquitto, unique("gateway")) as gateway:
        publish(gateway, topic, [b"while-offline"])

    fresh_mosquitto.restart()
    assert fresh_mosquitto.port == port
    assert fresh_mosquitto.running

    receiver = Receiver(expected=1)
    with connected(fresh_mosquitto, historian_id, clean_session=False, on_message=receiver.on_message):
        assert receiver.done.wait(TIMEOUT_S), "queued message lost across the restart"
    assert receiver.payloads == [b"while-offline"]


def test_mosquitto_keeps_a_backlog_above_the_default_limit(fresh_mosquitto: MosquittoServer) -> None:
    """Mosquitto's default max_queued_messages (1000) would drop most of this backlog."""
    topic = "heat/s/cdu-1/metrics"
    subscriber_id = unique("historian")
    payloads = [str(i).encode() for i in range(2500)]

    with connected(fresh_mosquitto, subscriber_id, clean_session=False) as historian:
        subscribe(historian, topic)
    with connected(fresh_mosquitto, unique("gateway")) as gateway:
        publish(gateway, topic, payloads)

    receiver = Receiver(expected=len(payloads))
    with connected(fresh_mosquitto, subscriber_id, clean_session=False, on_message=receiver.on_message):
        receiver.done.wait(TIMEOUT_S)
    assert len(receiver.payloads) == len(payloads)
    assert sorted(receiver.payloads, key=int) == payloads


def test_mosquitto_stop_closes_the_port(fresh_mosquitto: MosquittoServer) -> None:
    fresh_mosquitto.stop()
    assert not fresh_mosquitto.running
    assert not port_accepts(fresh_mosquitto.host, fresh_mosquitto.port)
    fresh_mosquitto.start()
    assert port_accepts(fresh_mosquitto.host, fresh_mosquitto.port)


# --------------------------------------------------------------------------------------------
# victoria-metrics
# --------------------------------------------------------------------------------------------


def influx_write(server: VictoriaMetricsServer, record: str) -> None:
    """Write line protocol the way the historian does: influxdb-client, synchronous."""
    with (
        InfluxDBClient(url=server.url, token="x", org="o") as client,
        client.write_api(write_options=SYNCHRONOUS) as write_api,
    ):
        write_api.write(bucket="b", record=record)


def test_victoria_influx_write_round_trip(victoria: VictoriaMetricsServer) -> None:
    site = unique("site")
    timestamp_ns = time.time_ns()
    influx_write(victoria, f"cdu,site={site},device=cdu-1 tcs_supply_temp_c=41.5 {timestamp_ns}")

    series = victoria.wait_for_export(f'cdu_tcs_supply_temp_c{{site="{site}"}}')

    assert series == [
        {
            "metric": {"__name__": "cdu_tcs_supply_temp_c", "site": site, "device": "cdu-1"},
            "values": [41.5],
            "timestamps": [timestamp_ns // 1_000_000],
        }
    ]


def test_victoria_metric_names_are_measurement_underscore_field(
    victoria: VictoriaMetricsServer,
) -> None:
    site = unique("site")
    influx_write(
        victoria,
        f"cdu,site={site},device=cdu-2 tcs_supply_temp_c=40.25,pump_running=true,alarm_count=3i",
    )

    series = victoria.wait_for_export(f'{{site="{site}"}}', min_points=3)

    by_name = {s["metric"]["__name__"]: s["values"] for s in series}
    assert by_name == {
        "cdu_tcs_supply_temp_c": [40.25],
        "cdu_pump_running": [1],
        "cdu_alarm_count": [3],
    }
    assert all(s["metric"]["device"] == "cdu-2" for s in series)


def test_victoria_restart_keeps_url_and_data(fresh_victoria: VictoriaMetricsServer) -> None:
    url = fresh_victoria.url
    fresh_victoria.write(["cdu,site=s,device=cdu-1 flow_m3h=12.5 1700000000000000000"])
    fresh_victoria.wait_for_export("cdu_flow_m3h")

    fresh_victoria.restart()

    assert fresh_victoria.url == url
    [series] = fresh_victoria.export("cdu_flow_m3h")
    assert series["values"] == [12.5]
    assert series["timestamps"] == [1_700_000_000_000]


# --------------------------------------------------------------------------------------------
# Helpers without servers
# --------------------------------------------------------------------------------------------


def test_free_ports_are_distinct() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_missing_binary_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEAT_GATEWAY_MOSQUITTO", str(tmp_path / "nowhere"))
    with pytest.raises(BinaryNotFoundError, match="HEAT_GATEWAY_MOSQUITTO"):
        find_binary("mosquitto", "HEAT_GATEWAY_MOSQUITTO")

    monkeypatch.delenv("HEAT_GATEWAY_MOSQUITTO")
    with pytest.raises(BinaryNotFoundError, match="make services"):
        find_binary("no-such-server-binary", "HEAT_GATEWAY_NO_SUCH")


def test_service_users_are_marked(request: pytest.FixtureRequest) -> None:
    """The collection hook marks every test that needs a server, and only those."""
    assert request.node.get_closest_marker("services") is None
    for item in request.session.items:
        if {"mosquitto", "fresh_mosquitto", "victoria", "fresh_victoria"} & set(getattr(item, "fixturenames", ())):
            assert item.get_closest_marker("services"), item.nodeid
