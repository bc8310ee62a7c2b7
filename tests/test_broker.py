"""The embedded MQTT broker, against paho-mqtt 2.x clients and raw sockets on real ports.

The broker runs in the test's event loop, so tests never block: paho runs in its own thread
(``loop_start``) and the tests poll what it recorded with :func:`eventually`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import EmbeddedBroker, _TopicTree

ROOT = Path(__file__).resolve().parent.parent


async def eventually(predicate: Callable[[], object], timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.1f} s")
        await asyncio.sleep(0.005)


async def quiet() -> None:
    """Give a message that should not arrive the time to arrive anyway."""
    await asyncio.sleep(0.1)


class Client:
    """A paho client (MQTTv311, its own network thread) that records what it receives."""

    def __init__(self, port: int, client_id: str = "", *, clean_session: bool = True, manual_ack: bool = False):
        self.port = port
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
            reconnect_on_failure=False,  # a dropped test client stays dropped (takeover, kill)
        )
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.granted: dict[int, list[int]] = {}
        self.unsubscribed: set[int] = set()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_: self.disconnected.set()
        self.paho.on_message = lambda _c, _u, message: self.messages.append(message)
        self.paho.on_subscribe = lambda _c, _u, mid, codes, _p: self.granted.__setitem__(mid, [c.value for c in codes])
        self.paho.on_unsubscribe = lambda _c, _u, mid, _codes, _p: self.unsubscribed.add(mid)

    def _on_connect(self, _client: Any, _userdata: Any, flags: Any, reason: Any, _properties: Any) -> None:
        self.session_present = flags.session_present
        self.connected.set()

    async def connect(self, keepalive: int = 60) -> Client:
        self.paho.connect("127.0.0.1", self.port, keepalive)
        self.paho.loop_start()
        await eventually(self.connected.is_set)
        return self

    async def subscribe(self, topic: str, qos: int = 0) -> list[int]:
        _result, mid = self.paho.subscribe(topic, qos)
        await eventually(lambda: mid in self.granted)
        return self.granted[mid]

    async def unsubscribe(self, topic: str) -> None:
        _result, mid = self.paho.unsubscribe(topic)
        await eventually(lambda: mid in self.unsubscribed)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos, retain)
        if qos:
            await eventually(info.is_published)

    def received(self) -> list[tuple[str, bytes, int]]:
        return [(m.topic, m.payload, m.qos) for m in self.messages]

    async def close(self) -> None:
        """Disconnect cleanly (with DISCONNECT) and stop the network thread."""
        if self.connected.is_set() and not self.disconnected.is_set():
            self.paho.disconnect()
        await asyncio.to_thread(self.paho.loop_stop)
        # paho closes its wake-up socket pair only in __del__; in a reference cycle the sockets'
        # own finalizers may run first and warn, so close them here
        self.paho._reset_sockets()

    async def kill(self) -> None:
        """Drop the connection without DISCONNECT, as a crashed process would."""
        sock = self.paho.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # paho sees EOF, closes the socket and ends its thread
        await eventually(self.disconnected.is_set)
        await self.close()


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as running:
        yield running


@pytest.fixture
async def clients(broker: EmbeddedBroker) -> AsyncIterator[Callable[..., Client]]:
    """Makes clients on the broker; closes every one of them after the test."""
    made: list[Client] = []

    def make(client_id: str = "", port: int | None = None, **options: Any) -> Client:
        made.append(Client(port or broker.port, client_id, **options))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def packet(first_byte: int, body: bytes = b"") -> bytes:
    """An MQTT packet; the tests' bodies are short enough for a one-byte remaining length."""
    assert len(body) < 128
    return bytes([first_byte, len(body)]) + body


def text(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, *, keepalive: int = 60, clean: bool = True, will: str = "", level: int = 4) -> bytes:
    flags = (0x02 if clean else 0) | (0x04 | 0x08 | 0x20 if will else 0)  # will: QoS 1, retained
    body = text("MQTT") + bytes([level, flags]) + keepalive.to_bytes(2, "big") + text(client_id)
    if will:
        body += text(will) + text("offline")
    return packet(0x10, body)


async def raw_connect(port: int, connect: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect)
    return reader, writer, await asyncio.wait_for(reader.readexactly(4), 2)


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):  # the broker may have reset it already
        await writer.wait_closed()


# --- topic matching rules (MQTT 3.1.1 section 4.7) ---

MATCHES = [
    ("sport/tennis/#", "sport/tennis", True),  # "#" also matches the parent level
    ("sport/tennis/#", "sport/tennis/player1/ranking", True),
    ("sport/#", "sport", True),
    ("#", "anything/at/all", True),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # an empty level is a level
    ("+/+", "/finance", True),
    ("+", "/finance", False),
    ("site/+/metrics", "site/cdu1/metrics", True),
    ("site/+/metrics", "site/cdu1/status", False),
    ("#", "$SYS/uptime", False),  # $ topics do not match wildcards at the first level
    ("+/uptime", "$SYS/uptime", False),
    ("$SYS/#", "$SYS/uptime", True),
    ("$SYS/+", "$SYS/uptime", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_tree_follows_the_mqtt_matching_rules(topic_filter, topic, expected):
    tree = _TopicTree()
    tree.add(topic_filter, "c", 1)
    assert (tree.match(topic) == {"c": 1}) is expected
    tree.remove(topic_filter, "c")
    assert tree.root.children == {}  # unsubscribing prunes the branch


def test_overlapping_subscriptions_match_once_at_the_highest_qos():
    tree = _TopicTree()
    tree.add("site/#", "a", 0)
    tree.add("site/+/metrics", "a", 1)
    tree.add("site/cdu1/metrics", "b", 0)
    assert tree.match("site/cdu1/metrics") == {"a": 1, "b": 0}


# --- against paho clients ---


async def test_publish_qos0_and_qos1_through_wildcards(clients):
    metrics, everything, system, single = clients(), clients(), clients(), clients()
    await metrics.connect()
    await everything.connect()
    await system.connect()
    await single.connect()
    assert await metrics.subscribe("site/+/metrics", qos=1) == [1]
    assert await everything.subscribe("#", qos=0) == [0]
    await system.subscribe("$SYS/#", qos=1)
    await single.subscribe("+/uptime", qos=1)
    publisher = await clients().connect()
    await publisher.publish("site/cdu1/metrics", b"m1", qos=1)
    await publisher.publish("site/cdu1/status", b"s1", qos=0)
    await publisher.publish("$SYS/uptime", b"42", qos=1)
    await publisher.publish("broker/uptime", b"7", qos=0)
    await publisher.publish("site/cdu2/metrics", b"m2", qos=0)

    await eventually(lambda: len(everything.messages) == 4)
    await eventually(lambda: len(metrics.messages) == 2)
    await quiet()
    assert metrics.received() == [("site/cdu1/metrics", b"m1", 1), ("site/cdu2/metrics", b"m2", 0)]
    assert everything.received() == [  # delivery QoS is min(publish, subscription)
        ("site/cdu1/metrics", b"m1", 0),
        ("site/cdu1/status", b"s1", 0),
        ("broker/uptime", b"7", 0),
        ("site/cdu2/metrics", b"m2", 0),
    ]
    assert system.received() == [("$SYS/uptime", b"42", 1)]
    assert single.received() == [("broker/uptime", b"7", 0)]
    assert not any(m.retain for m in everything.messages)


async def test_unsubscribe_stops_delivery(clients):
    subscriber = await clients().connect()
    await subscriber.subscribe("a/#", qos=1)
    await subscriber.unsubscribe("a/#")
    publisher = await clients().connect()
    await publisher.publish("a/b", b"x", qos=1)
    await quiet()
    assert subscriber.messages == []


async def test_retained_message_reaches_late_subscribers_and_empty_payload_deletes_it(clients):
    publisher = await clients().connect()
    await publisher.publish("site/gateway/status", b"starting", qos=1, retain=True)
    await publisher.publish("site/gateway/status", b"online", qos=1, retain=True)  # replaces

    late = await clients().connect()
    await late.subscribe("site/+/status", qos=1)
    await eventually(lambda: late.messages)
    assert late.received() == [("site/gateway/status", b"online", 1)]
    assert late.messages[0].retain  # sent because of the SUBSCRIBE

    await publisher.publish("site/gateway/status", b"", qos=1, retain=True)
    await eventually(lambda: len(late.messages) == 2)  # an established subscriber still gets it
    assert late.received()[1] == ("site/gateway/status", b"", 1)
    assert not late.messages[1].retain

    later = await clients().connect()
    await later.subscribe("site/#", qos=1)
    await quiet()
    assert later.messages == []


async def test_last_will_on_abnormal_close_and_not_on_disconnect(clients):
    watcher = await clients().connect()
    await watcher.subscribe("site/+/status", qos=1)

    crashing = clients("crashing")
    crashing.paho.will_set("site/crashing/status", b"offline", qos=1, retain=True)
    await crashing.connect()
    await crashing.kill()
    await eventually(lambda: watcher.messages)
    assert watcher.received() == [("site/crashing/status", b"offline", 1)]

    polite = clients("polite")
    polite.paho.will_set("site/polite/status", b"offline", qos=1, retain=True)
    await polite.connect()
    await polite.close()
    await quiet()
    assert len(watcher.messages) == 1

    late = await clients().connect()  # the will was retained
    await late.subscribe("site/+/status", qos=1)
    await eventually(lambda: late.messages)
    assert late.received() == [("site/crashing/status", b"offline", 1)]


async def test_keepalive_expiry_closes_the_connection_and_sends_the_will(broker, clients):
    watcher = await clients().connect()
    await watcher.subscribe("site/+/status", qos=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    connect = connect_packet("silent", keepalive=1, will="site/x/status")
    reader, writer, connack = await raw_connect(broker.port, connect)
    try:
        assert connack == b"\x20\x02\x00\x00"
        assert await asyncio.wait_for(reader.read(1), 3) == b""  # closed by the broker
        assert 1.4 < loop.time() - started < 2.8  # 1.5x the keepalive, with slack for a busy machine
        await eventually(lambda: watcher.messages)
        assert watcher.received() == [("site/x/status", b"offline", 1)]
    finally:
        await close_raw(writer)


async def test_persistent_session_keeps_subscriptions_and_queues_qos1_while_offline(clients):
    historian = await clients("historian", clean_session=False).connect()
    assert historian.session_present is False
    await historian.subscribe("site/+/metrics", qos=1)
    await historian.close()

    publisher = await clients().connect()
    for number in range(5):
        await publisher.publish("site/cdu1/metrics", b"%d" % number, qos=1)
    await publisher.publish("site/cdu1/metrics", b"qos0", qos=0)  # not kept for an absent client
    await publisher.publish("site/cdu1/metrics", b"5", qos=1)

    back = await clients("historian", clean_session=False).connect()  # does not subscribe again
    assert back.session_present is True
    await eventually(lambda: len(back.messages) == 6)
    assert [m.payload for m in back.messages] == [b"0", b"1", b"2", b"3", b"4", b"5"]  # in order
    await back.close()

    fresh = await clients("historian", clean_session=True).connect()  # a clean session discards it
    assert fresh.session_present is False
    await publisher.publish("site/cdu1/metrics", b"6", qos=1)
    await quiet()
    assert fresh.messages == []


async def test_manual_ack_messages_not_acked_are_redelivered_with_dup_after_reconnect(clients):
    historian = await clients("historian", clean_session=False, manual_ack=True).connect()
    await historian.subscribe("site/+/metrics", qos=1)
    publisher = await clients().connect()
    for number in range(3):
        await publisher.publish("site/cdu1/metrics", b"%d" % number, qos=1)
    await eventually(lambda: len(historian.messages) == 3)
    historian.paho.ack(historian.messages[0].mid, 1)  # only the first reached the database
    await quiet()
    await historian.kill()

    await publisher.publish("site/cdu1/metrics", b"3", qos=1)
    back = await clients("historian", clean_session=False, manual_ack=True).connect()
    await eventually(lambda: len(back.messages) == 3)
    assert [(m.payload, m.dup) for m in back.messages] == [(b"1", True), (b"2", True), (b"3", False)]
    for message in back.messages:
        back.paho.ack(message.mid, 1)
    await quiet()
    await back.close()

    again = await clients("historian", clean_session=False, manual_ack=True).connect()
    await quiet()
    assert again.messages == []  # everything was acknowledged


async def test_inflight_window_holds_the_rest_until_acks_arrive(clients):
    async with EmbeddedBroker(max_inflight=5) as small:
        historian = await clients("historian", port=small.port, manual_ack=True).connect()
        await historian.subscribe("m", qos=1)
        publisher = await clients(port=small.port).connect()
        for number in range(8):
            await publisher.publish("m", b"%d" % number, qos=1)
        await eventually(lambda: len(historian.messages) == 5)
        await quiet()
        assert len(historian.messages) == 5  # the window is full
        for message in historian.messages[:2]:
            historian.paho.ack(message.mid, 1)
        await eventually(lambda: len(historian.messages) == 7)
        for message in historian.messages[2:]:
            historian.paho.ack(message.mid, 1)
        await eventually(lambda: len(historian.messages) == 8)
        assert [m.payload for m in historian.messages] == [b"%d" % n for n in range(8)]
        await historian.close()
        await publisher.close()


async def test_offline_queue_is_bounded_and_drops_the_oldest(clients):
    async with EmbeddedBroker(max_queued=3) as small:
        historian = await clients("historian", port=small.port, clean_session=False).connect()
        await historian.subscribe("m", qos=1)
        await historian.close()
        publisher = await clients(port=small.port).connect()
        for number in range(5):
            await publisher.publish("m", b"%d" % number, qos=1)
        assert small._sessions["historian"].dropped == 2
        back = await clients("historian", port=small.port, clean_session=False).connect()
        await eventually(lambda: len(back.messages) == 3)
        assert [m.payload for m in back.messages] == [b"2", b"3", b"4"]
        await back.close()
        await publisher.close()


async def test_qos2_is_accepted_and_delivered_at_qos1(clients):
    subscriber = await clients().connect()
    assert await subscriber.subscribe("q", qos=2) == [1]  # granted QoS 1 at most
    publisher = await clients().connect()
    await publisher.publish("q", b"x", qos=2)  # waits for the PUBREC/PUBREL/PUBCOMP exchange
    await eventually(lambda: subscriber.messages)
    assert subscriber.received() == [("q", b"x", 1)]


async def test_a_second_connection_with_the_same_client_id_takes_over(clients):
    watcher = await clients().connect()
    await watcher.subscribe("status/#", qos=1)
    first = clients("gateway")
    first.paho.will_set("status/gateway", b"offline", qos=1, retain=True)
    await first.connect()
    second = await clients("gateway").connect()
    await eventually(first.disconnected.is_set)  # the old connection was closed
    await second.publish("status/gateway", b"online", qos=1, retain=True)
    await eventually(lambda: len(watcher.messages) == 2)
    # the old connection's will goes out before anything the new one publishes
    assert [m.payload for m in watcher.messages] == [b"offline", b"online"]
    assert second.connected.is_set()
    assert not second.disconnected.is_set()


MALFORMED = {
    "remaining length over 4 bytes": b"\x30\xff\xff\xff\xff\x01",
    "wildcard in a PUBLISH topic": packet(0x30, text("a/#") + b"x"),
    "PUBLISH with QoS 3": packet(0x36, text("a") + b"\x00\x01"),
    "SUBSCRIBE with wrong fixed-header flags": packet(0x80, b"\x00\x01" + text("a") + b"\x00"),
    "SUBSCRIBE without a filter": packet(0x82, b"\x00\x01"),
    "truncated SUBSCRIBE": packet(0x82, b"\x00\x01\x00\x09ab"),
    "second CONNECT": connect_packet("bad"),
    "reserved packet type": packet(0xF0),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_packet_closes_only_that_connection(broker, clients, caplog, data):
    subscriber = await clients().connect()
    await subscriber.subscribe("t", qos=1)
    reader, writer, connack = await raw_connect(broker.port, connect_packet("bad"))
    try:
        assert connack == b"\x20\x02\x00\x00"
        writer.write(data)
        assert await asyncio.wait_for(reader.read(1), 2) == b""  # closed by the broker
    finally:
        await close_raw(writer)
    assert any(r.levelno == logging.WARNING and "'bad'" in r.getMessage() for r in caplog.records)
    publisher = await clients().connect()  # the broker still serves everyone else
    await publisher.publish("t", b"still here", qos=1)
    await eventually(lambda: subscriber.messages)


async def test_a_first_packet_other_than_connect_is_closed(broker):
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(packet(0xC0))  # PINGREQ before CONNECT
        assert await asyncio.wait_for(reader.read(1), 2) == b""
    finally:
        await close_raw(writer)


async def test_refused_connects(broker):
    for connect, code in [
        (connect_packet("old", level=3), 1),  # MQTT 3.1 is not supported
        (connect_packet("", clean=False), 2),  # a persistent session needs a client id
    ]:
        reader, writer, connack = await raw_connect(broker.port, connect)
        try:
            assert connack == bytes([0x20, 0x02, 0x00, code])
            assert await asyncio.wait_for(reader.read(1), 2) == b""
        finally:
            await close_raw(writer)


def test_command_line_prints_its_port_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.broker", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening 127.0.0.1:")
        port = int(line.strip().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(connect_packet("cli"))
            assert sock.recv(4) == b"\x20\x02\x00\x00"
        process.send_signal(signal.SIGTERM)
        _out, errors = process.communicate(timeout=5)
        assert process.returncode == 0, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def test_stop_closes_live_connections_without_sending_their_wills():
    broker = EmbeddedBroker()
    await broker.start()
    client = Client(broker.port, "live")
    client.paho.will_set("site/live/status", b"offline", qos=1, retain=True)
    await client.connect()
    reader, writer, _connack = await raw_connect(broker.port, connect_packet("raw", will="site/raw/status"))
    try:
        async with asyncio.timeout(1):
            await broker.stop()
        assert await asyncio.wait_for(reader.read(1), 1) == b""
        await eventually(client.disconnected.is_set)
        assert broker._retained == {}  # shutting down is not a client failing
    finally:
        await close_raw(writer)
        await client.close()
