"""MQTT publisher: readings out as line protocol, QoS 1, without ever holding up polling.

paho runs its network loop in its own thread (``loop_start``); the asyncio side only hands
it messages. While the broker is away paho keeps QoS 1 messages (up to ``max_queued``) and
sends them after it reconnects; the :class:`Outbox` in front of it absorbs the rest.
Topics: ``{prefix}/{site}/{device}/metrics`` and the retained ``{prefix}/{site}/gateway/status``
(``online``; the last will says ``offline``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.config.site import Mqtt
from gateway.logs import get_logger
from gateway.publish.lineprotocol import encode_fields, encode_line, series_prefix
from gateway.publish.outbox import Message, Outbox
from gateway.sample import Reading

log = get_logger(__name__)


def make_client(config: Mqtt, client_id: str, *, clean_session: bool = True, manual_ack: bool = False) -> paho.Client:
    """A paho client set up from the site's MQTT section (TLS, credentials, backoff)."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
        manual_ack=manual_ack,
    )
    if config.username:
        client.username_pw_set(config.username, config.password.get_secret_value() if config.password else None)
    if config.tls is not None:
        client.tls_set(
            ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
            certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
            keyfile=str(config.tls.key_file) if config.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(config.tls.insecure)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def set_nodelay(client: paho.Client) -> None:
    """paho never sets TCP_NODELAY: without it Nagle adds ~15 ms per message (MEASURED.md)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttPublisher:
    """Takes readings and messages from an :class:`Outbox` and publishes them."""

    def __init__(
        self, config: Mqtt, site: str, device_kinds: dict[str, str], outbox: Outbox[Reading | Message]
    ) -> None:
        self.config = config
        self.site = site
        self.outbox = outbox
        self.base = f"{config.topic_prefix}/{site}"
        self.status_topic = f"{self.base}/gateway/status"
        self._prefixes = {
            device: series_prefix(kind, {"site": site, "device": device}) for device, kind in device_kinds.items()
        }
        self._topics = {device: f"{self.base}/{device}/metrics" for device in device_kinds}
        self.client = make_client(config, config.client_id or f"heat-gateway-{site}")
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.max_inflight_messages_set(config.max_inflight)
        self.client.max_queued_messages_set(config.queue_size * 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self._count_lock = threading.Lock()
        self._stopping = False
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self._subscriptions: dict[str, Any] = {}

    # paho callbacks run on paho's thread: keep them short.
    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt_connect_refused", broker=f"{self.config.host}:{self.config.port}", reason=str(reason))
            return
        set_nodelay(client)
        self.publish_now(self.status_topic, b"online", retain=True)
        for topic, handler in self._subscriptions.items():
            client.subscribe(topic, qos=1)
            client.message_callback_add(topic, handler)
        self.connected.set()
        log.info("mqtt_connected", broker=f"{self.config.host}:{self.config.port}")

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning(
                "mqtt_disconnected",
                broker=f"{self.config.host}:{self.config.port}",
                reason=str(reason),
                pending=self.pending,
            )
        self.connected.clear()

    def _on_publish(self, _client: paho.Client, _userdata: Any, _mid: int, _reason: Any, _props: Any) -> None:
        with self._count_lock:
            self.acked += 1

    @property
    def pending(self) -> int:
        """Messages handed to paho and not yet acknowledged by the broker."""
        return self.sent - self.acked

    def subscribe(self, topic: str, handler: Any) -> None:
        """Subscribe now and after every reconnect; ``handler(client, userdata, message)`` runs on paho's thread."""
        self._subscriptions[topic] = handler
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)
            self.client.message_callback_add(topic, handler)

    def start(self) -> None:
        """Connect in the background; paho retries until the broker is there."""
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def publish_now(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Hand one message to paho (QoS 1); called from the event loop and from paho's thread."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._count_lock:
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.refused += 1
            else:
                self.sent += 1

    def _publish_item(self, item: Reading | Message) -> None:
        if isinstance(item, Message):
            self.publish_now(item.topic, item.payload, retain=item.retain)
            return
        line = encode_line(self._prefixes[item.device], item.values, item.timestamp_ns)
        if item.texts:  # rare (nameplate strings): kept off the numeric fast path
            text_fields = encode_fields(dict(item.texts))
            line = (
                f"{line.rsplit(' ', 1)[0]},{text_fields} {item.timestamp_ns}"
                if line is not None
                else f"{self._prefixes[item.device]} {text_fields} {item.timestamp_ns}"
            )
        if line is not None:
            self.publish_now(self._topics[item.device], line.encode())

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            for item in await self.outbox.drain():
                self._publish_item(item)
            await asyncio.sleep(0)  # let pollers run between large batches

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Publish what is queued, say ``offline``, wait for acknowledgements, disconnect."""
        for item in self.outbox.take_all():
            self._publish_item(item)
        if self.connected.is_set():
            self.publish_now(self.status_topic, b"offline", retain=True)
            deadline = asyncio.get_running_loop().time() + timeout_s
            # acks arrive on paho's thread; a 20 ms poll during shutdown is simpler than a bridge
            while self.pending > 0 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        if self.pending > 0:
            log.warning("mqtt_unsent_at_stop", pending=self.pending)
        self._stopping = True
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
