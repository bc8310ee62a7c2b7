"""MQTT publisher: readings out as line protocol, QoS 1, without ever holding up polling.

paho runs its network loop in its own thread (``loop_start``); the asyncio side only hands
it messages, and the :class:`Outbox` in front absorbs bursts. Topics:
``{prefix}/{site}/{device}/metrics`` and the retained ``{prefix}/{site}/gateway/status``
(``online``; the last will says ``offline``).

While the broker is away, or paho holds more than ``SPOOL_ABOVE_UNACKED`` unacknowledged
messages (a silent link paho has not noticed yet), messages go to the durable
:class:`~gateway.publish.spool.Spool` in ``{state_dir}/spool`` instead of paho's memory; when
the connection drops, the messages paho still holds unacknowledged are copied there too. Once
connected, the spool is replayed oldest first, with at most ``REPLAY_WINDOW`` unacknowledged and
in batches that let live messages through; a segment file is deleted only when the broker has
acknowledged every message in it. A spool left by a killed process is replayed by the next one.
Delivery stays at least once: a message in flight when the link dropped can arrive twice (the
same line-protocol point twice is stored once). Retained messages (status, states) are never
spooled: they are state, and an old value replayed late would replace a newer one.
Without the spool (``mqtt.spool: false``) paho keeps QoS 1 messages in memory (up to
``max_queued``) until it reconnects, and a restart during an outage loses them.

Threads: paho calls ``on_publish`` holding its ``_out_message_mutex``, and the callbacks take
``self._lock``; so the event loop never calls paho while it holds ``self._lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.config.site import Mqtt
from gateway.logs import get_logger
from gateway.publish.lineprotocol import encode_fields, encode_line, series_prefix
from gateway.publish.outbox import Message, Outbox
from gateway.publish.spool import Record, Segment, Spool
from gateway.sample import Reading

log = get_logger(__name__)

# Unacknowledged messages in paho above which new ones go to the spool. Twice the outbox's drain
# batch (1,000), so a healthy link at full rate never spools; it bounds what a kill can lose while
# paho has not yet noticed a silent link (that takes up to 1.5 x keepalive_s).
SPOOL_ABOVE_UNACKED = 2000
# Replayed messages unacknowledged at a time: enough to keep the broker busy (20k msg/s at a
# 25 ms round trip), few enough that live messages queued behind them wait milliseconds.
REPLAY_WINDOW = 500
REPLAY_BATCH = 100  # messages per replay step; live messages go out between steps
REPLAY_ACK_POLL_S = 0.005  # acks arrive on paho's thread: polling beats a thread hop per ack
REPLAY_IDLE_CHECK_S = 0.5
SPOOL_FSYNC_INTERVAL_S = 1.0
_NEVER = sys.maxsize  # `_divert_above` when nothing may go to the spool


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
    client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_s)
    return client


def set_nodelay(client: paho.Client) -> None:
    """paho never sets TCP_NODELAY: without it Nagle adds ~15 ms per message (docs/library-limits.md)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def unacknowledged(client: paho.Client) -> list[paho.MQTTMessage]:
    """The QoS > 0 messages paho holds that the broker has not acknowledged, oldest first.

    paho 2.x has no public API for this; it keeps them in ``_out_messages`` under
    ``_out_message_mutex`` (tests/test_spool.py checks that this still works).
    """
    with client._out_message_mutex:  # noqa: SLF001 - see the docstring
        return [m for m in client._out_messages.values() if m.qos > 0]  # noqa: SLF001


class MqttPublisher:
    """Takes readings and messages from an :class:`Outbox` and publishes them.

    ``spool_dir``: where the spool lives (``{state_dir}/spool``), opened by :meth:`start`; no
    spool when it is ``None`` or ``mqtt.spool`` is false.
    """

    def __init__(
        self,
        config: Mqtt,
        site: str,
        device_kinds: dict[str, str],
        outbox: Outbox[Reading | Message],
        *,
        spool_dir: Path | None = None,
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
        max_queued = config.queue_size * 10
        self.client = make_client(config, config.client_id or f"heat-gateway-{site}")
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.max_inflight_messages_set(config.max_inflight)
        self.client.max_queued_messages_set(max_queued)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self._subscriptions: dict[str, Any] = {}

        self._spool_dir = spool_dir if config.spool else None
        self.spool: Spool | None = None  # opened by start(): building a publisher touches no files
        # Spool before paho's own queue would refuse; the replay window leaves live messages room.
        self._spool_above = min(SPOOL_ABOVE_UNACKED, max_queued // 2)
        self._replay_window = max(1, min(REPLAY_WINDOW, self._spool_above // 4))
        # The hot path's one check: a message goes to the spool when `sent - acked` exceeds this.
        # -1 while not connected (always), _spool_above while connected, _NEVER without a spool.
        self._divert_above = _NEVER
        self._spool_usable = False  # opened and never failed to write
        self._spooling = False  # an episode of spooling was logged and has not been replayed yet
        self._replay_mids: dict[int, Segment] = {}  # replayed messages paho holds, by message id
        self._early_acks: set[int] = set()  # acks that overtook the registration of their mid
        self._registering = False
        self._rescued: list[Record] = []  # copied from paho at a disconnect, not yet in the spool
        self._replay_wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replayed = 0

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
        if self._spool_usable:
            self._divert_above = self._spool_above
        self.connected.set()
        self._call_on_loop(self._replay_wake.set)
        log.info("mqtt_connected", broker=f"{self.config.host}:{self.config.port}")

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._spool_usable and not self._stopping:
            # Spool from now on, and copy what paho holds unacknowledged: its memory would not
            # survive a kill before the reconnect.
            self._copy_unacknowledged(divert_all=True)
            self._call_on_loop(self._spool_rescued)
        if self.connected.is_set() and not self._stopping:
            log.warning(
                "mqtt_disconnected",
                broker=f"{self.config.host}:{self.config.port}",
                reason=str(reason),
                pending=self.sent - self.acked,  # held by paho (the spool's count is the loop's to read)
            )
        self.connected.clear()

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            self.acked += 1
            if self._replay_mids or self._registering:
                segment = self._replay_mids.pop(mid, None)
                if segment is not None:
                    segment.acked += 1
                elif self._registering:
                    self._early_acks.add(mid)

    def _copy_unacknowledged(self, *, divert_all: bool = False) -> None:
        """Queue copies of what paho holds unacknowledged for the spool (any thread).

        Retained messages are left out (state, not history), and so are replayed ones: they are
        still in their segment. With ``divert_all`` every later message goes to the spool; both
        happen under the lock, so none spooled later can get ahead of the copies.
        """
        with self.client._out_message_mutex, self._lock:  # noqa: SLF001 - paho's lock comes first (module doc)
            if divert_all:
                self._divert_above = -1
            self._rescued += [
                (m.topic, bytes(m.payload))
                for m in unacknowledged(self.client)
                if not m.retain and m.mid not in self._replay_mids
            ]

    def _call_on_loop(self, callback: Any) -> None:
        """Run ``callback`` on the event loop soon (from paho's thread)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway has stopped
                self._loop.call_soon_threadsafe(callback)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker: held by paho, plus those waiting in the
        spool (a spool left by an earlier process counts from when the replay reads it)."""
        return self.sent - self.acked + (self.spool.waiting if self.spool is not None else 0)

    def set_devices(self, device_kinds: dict[str, str]) -> None:
        """The devices whose readings it publishes (after a reload added or removed some)."""
        self._prefixes = {
            device: series_prefix(kind, {"site": self.site, "device": device}) for device, kind in device_kinds.items()
        }
        self._topics = {device: f"{self.base}/{device}/metrics" for device in device_kinds}

    def subscribe(self, topic: str, handler: Any) -> None:
        """Subscribe now and after every reconnect; ``handler(client, userdata, message)`` runs on paho's thread."""
        self._subscriptions[topic] = handler
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)
            self.client.message_callback_add(topic, handler)

    def start(self) -> None:
        """Open the spool (if any), then connect in the background; paho retries until the broker is there.

        Raises :class:`~gateway.publish.spool.SpoolError` when the spool folder cannot be used.
        """
        if self._spool_dir is not None and self.spool is None:
            config = self.config
            self.spool = Spool(self._spool_dir, max_bytes=config.spool_max_mb * 2**20, fsync=config.spool_fsync)
            self._spool_usable = True
            self._divert_above = -1  # until the first connect: a spool left by a killed process is replayed then
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def publish_now(self, topic: str, payload: bytes, *, retain: bool = False) -> MQTTErrorCode:
        """Hand one message to paho (QoS 1), bypassing the spool; from the event loop or paho's thread.

        Returns paho's code: ``MQTT_ERR_NO_CONN`` (held in memory until a connection) or
        ``MQTT_ERR_QUEUE_SIZE`` (refused: paho's queue is full) are not errors here.
        """
        rc: MQTTErrorCode = self.client.publish(topic, payload, qos=1, retain=retain).rc
        with self._lock:
            if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.refused += 1
            else:
                self.sent += 1
        return rc

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish from the event loop: to paho, or to the spool when paho cannot deliver it soon."""
        if self.sent - self.acked > self._divert_above:  # the hot path's one extra check
            if not self._to_spool(topic, payload, retain):
                self.publish_now(topic, payload, retain=retain)
        elif self.publish_now(topic, payload, retain=retain) and self.spool is not None:
            # No connection (a drop paho saw before we did) or refused: keep a copy on disk too.
            self._to_spool(topic, payload, retain)

    def _to_spool(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Append one message to the spool; False when it may not or cannot go there."""
        spool = self.spool
        if retain or spool is None or not self._spool_usable:  # retained: state, not history
            return False
        if self._rescued:
            self._spool_rescued(flush=False)  # older than this message
        try:
            spool.append(topic, payload)
        except OSError as error:
            self._spool_failed(error)
            return False
        if not self._spooling:
            self._spooling = True
            log.info(
                "mqtt_spooling",
                folder=str(spool.directory),
                reason="broker acknowledges slowly" if self.connected.is_set() else "not connected",
            )
        if self.connected.is_set():
            self._replay_wake.set()
        return True

    def _spool_rescued(self, *, flush: bool = True) -> None:
        """Move the copies taken from paho at a disconnect into the spool (event loop)."""
        with self._lock:
            rescued, self._rescued = self._rescued, []
        if not rescued or self.spool is None or not self._spool_usable:
            return  # (the originals are still in paho's memory)
        try:
            for topic, payload in rescued:
                self.spool.append(topic, payload)
            if flush:
                self.spool.flush()
        except OSError as error:
            self._spool_failed(error)
            return
        log.info("mqtt_spooled_unacknowledged", messages=len(rescued))

    def _flush_spool(self) -> None:
        if self.spool is not None and self._spool_usable:
            try:
                self.spool.flush()
            except OSError as error:
                self._spool_failed(error)

    def _spool_failed(self, error: OSError) -> None:
        """The spool cannot be written (disk full, I/O error): fall back to paho's memory for good.

        What is already in closed segments is still replayed.
        """
        assert self.spool is not None
        unwritten = self.spool.take_unwritten()
        if self._spool_usable:
            log.error(
                "spool_write_failed",
                folder=str(self.spool.directory),
                error=str(error),
                handed_to_paho=len(unwritten),
                fallback="messages wait in memory until the broker is back; a restart before then loses them",
            )
        self._spool_usable = False
        self._divert_above = _NEVER
        for topic, payload in unwritten:
            self.publish_now(topic, payload)

    async def _sync_spool(self, spool: Spool) -> None:
        try:
            await spool.sync()
        except OSError as error:
            self._spool_failed(error)

    def _publish_item(self, item: Reading | Message) -> None:
        if isinstance(item, Message):
            self._send(item.topic, item.payload, item.retain)
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
            self._send(self._topics[item.device], line.encode())

    async def run(self) -> None:
        """Publish until cancelled; with a spool, also replay it and fsync it."""
        self._loop = asyncio.get_running_loop()
        spool = self.spool
        if spool is None:
            await self._publish_loop()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_loop(), name="mqtt-publish")
            group.create_task(self._replay_loop(spool), name="mqtt-spool-replay")
            if spool.fsync == "interval":
                group.create_task(self._fsync_loop(spool), name="mqtt-spool-fsync")

    async def _publish_loop(self) -> None:
        spool = self.spool
        while True:
            for item in await self.outbox.drain():
                self._publish_item(item)
            if spool is not None and spool.unflushed:
                self._flush_spool()  # one write per batch: from here a kill loses nothing
                if spool.fsync == "every_write":
                    await self._sync_spool(spool)
            await asyncio.sleep(0)  # let pollers run between large batches

    async def _fsync_loop(self, spool: Spool) -> None:
        """fsync about once a second, in a worker thread, while there is something to sync."""
        while True:
            await asyncio.sleep(SPOOL_FSYNC_INTERVAL_S)
            if spool.needs_sync:
                await self._sync_spool(spool)

    async def _replay_loop(self, spool: Spool) -> None:
        """Whenever connected, send the spool oldest first; delete segments the broker acknowledged."""
        started: float | None = None
        replayed_before = 0
        while True:
            spool.release_done()
            if not (self.connected.is_set() and spool.has_backlog()):
                if started is not None and not spool.has_backlog() and not self._replay_mids:
                    log.info(
                        "mqtt_spool_replayed",
                        messages=self.replayed - replayed_before,
                        seconds=round(self._now() - started, 3),
                        dropped_when_full=spool.dropped,
                    )
                    started, self._spooling = None, False
                self._replay_wake.clear()
                if not (self.connected.is_set() and spool.has_backlog()):  # set between the test and the clear?
                    acks_due = self._replay_mids and self.connected.is_set()  # then a segment may be done soon
                    await self._sleep_until_woken(REPLAY_ACK_POLL_S if acks_due else REPLAY_IDLE_CHECK_S)
                continue
            if started is None:
                started, replayed_before = self._now(), self.replayed
                log.info("mqtt_spool_replay_started", files=len(spool.files), bytes=spool.bytes)
            room = self._replay_window - len(self._replay_mids)
            if room <= 0:
                await asyncio.sleep(REPLAY_ACK_POLL_S)
                continue
            try:
                segment, records = await spool.read(min(room, REPLAY_BATCH))
            except OSError as error:  # closing the head flushes it
                self._spool_failed(error)
                continue
            for topic, payload in records:
                assert segment is not None
                # paho's queue is full (its acks free room on paho's thread): retry shortly
                while not self._replay_one(segment, topic, payload):  # noqa: ASYNC110
                    await asyncio.sleep(REPLAY_ACK_POLL_S * 10)
            await asyncio.sleep(0)  # live messages and pollers go between batches

    async def _sleep_until_woken(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._replay_wake.wait()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _replay_one(self, segment: Segment, topic: str, payload: bytes) -> bool:
        """Hand one spooled message to paho and note its mid; False when paho's queue is full."""
        self._registering = True  # its ack may come (on paho's thread) before the mid is noted below
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            self._registering = False
            acked_already = info.mid in self._early_acks
            self._early_acks.clear()
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.refused += 1
                return False
            self.sent += 1
            self.replayed += 1
            if acked_already:
                segment.acked += 1
            else:
                self._replay_mids[info.mid] = segment
        return True

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Publish what is queued, say ``offline``, wait for acknowledgements, disconnect.

        With a spool, what paho still holds unacknowledged is copied to the spool first: paho's
        memory ends with the process, the spool is replayed by the next one.
        """
        for item in self.outbox.take_all():
            self._publish_item(item)
        if self.connected.is_set():
            self.publish_now(self.status_topic, b"offline", retain=True)
            deadline = asyncio.get_running_loop().time() + timeout_s
            # acks arrive on paho's thread; a 20 ms poll during shutdown is simpler than a bridge
            while self.sent - self.acked > 0 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        unacked = self.sent - self.acked
        if self.spool is not None:
            if self._spool_usable and self.connected.is_set() and unacked > 0:
                # A slow broker: copy what it has not acknowledged. (After a drop, on_disconnect
                # has copied it already; paho holds nothing new but retained states.)
                self._copy_unacknowledged()
            self._spool_rescued(flush=False)
            try:
                await self.spool.close()
            except OSError as error:
                log.exception("spool_close_failed", folder=str(self.spool.directory), error=str(error))
            if self.spool.files:
                log.info("mqtt_spool_kept", files=len(self.spool.files), bytes=self.spool.bytes)
        elif unacked > 0:
            log.warning("mqtt_unsent_at_stop", pending=unacked)
        self._stopping = True
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
