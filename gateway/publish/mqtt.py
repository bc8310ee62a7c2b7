"""MQTT publisher: readings out as line protocol, QoS 1, without ever holding up polling.

Everything runs on the event loop (see :mod:`gateway.mqtt`): the :class:`Outbox` in front
absorbs bursts, each drained batch is handed to paho and written to the socket at the loop's
next turn. Topics: ``{prefix}/{site}/{device}/metrics`` and the retained
``{prefix}/{site}/gateway/status`` (``online``; the last will says ``offline``).

Nothing leaves the gateway's keeping before it is safe (docs/nothing-lost.md):

- every QoS 1 message handed to paho is tracked until its PUBACK;
- a message unacknowledged for ``UNACKED_TO_DISK_S`` (a frozen or slow link) is copied to the
  durable :class:`~gateway.publish.spool.Spool` in ``{state_dir}/spool`` and *held* there:
  a ``kill -9`` then loses nothing older than about that; while the link is that slow, new
  messages go to the spool directly instead of paho's memory;
- while the broker is away, messages go to the spool;
- when the connection drops, each message it had not acknowledged is made replayable exactly
  once (copied to the spool, or its held copy released for the replay): one copy per drop,
  however often paho reports the drop (it uses a fresh paho client per connection, so paho
  never resends anything on its own);
- once connected, the spool is replayed oldest first, at most ``REPLAY_WINDOW`` unacknowledged,
  in batches that let live messages through; a segment file goes when every record in it is
  released (acknowledged, or copied on); releases are logged to a side file so a killed process
  does not send them again;
- a spool that cannot be written (disk full) falls back to memory and is tried again every
  ``SPOOL_RETRY_S``: it recovers when space returns.

With a historian (its retained ``{prefix}/{site}/historian/status`` says ``online``), a metrics
message acknowledged by the broker is still kept (on disk after ``UNACKED_TO_DISK_S``) until the
historian lists it on ``.../historian/stored`` after writing it. Receipts come in the order the
gateway sent the messages (the broker keeps a subscriber's order, the historian writes in that
order), so a message still waiting when a *later* one is receipted was lost by the broker (it
died before saving its queue) and is sent again. Without a historian online, the broker's
PUBACK releases a message.

Retained messages (status, states) are never spooled: they are state, and an old value replayed
late would replace a newer one. Without the spool (``mqtt.spool: false``) messages wait in a
bounded memory queue until the broker is back, and a restart during an outage loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import topic_matches_sub

from gateway.config.site import Mqtt
from gateway.logs import get_logger
from gateway.mqtt import MqttConnection, MqttError, Will
from gateway.publish.lineprotocol import ReadingEncoder
from gateway.publish.outbox import Message, Outbox
from gateway.publish.spool import Segment, Spool
from gateway.sample import Reading

log = get_logger(__name__)

# A message unacknowledged this long is copied to disk: the bound on what a kill -9 can lose
# while the link is frozen (the issue asks for ~1-2 s), checked every UNACKED_CHECK_S.
UNACKED_TO_DISK_S = 1.0
UNACKED_CHECK_S = 0.25
# Unacknowledged messages in paho above which new ones go to the spool: paho's memory is not
# durable, and a healthy link at full rate (1,000 messages a batch) never has this many.
SPOOL_ABOVE_UNACKED = 2000
# Replayed messages unacknowledged at a time: enough to keep the broker busy (20k msg/s at a
# 25 ms round trip), few enough that live messages queued behind them wait milliseconds.
REPLAY_WINDOW = 500
REPLAY_BATCH = 100  # messages per replay step; live messages go out between steps
REPLAY_IDLE_CHECK_S = 0.5
SPOOL_FSYNC_INTERVAL_S = 1.0
SPOOL_RETRY_S = 10.0  # after a failed write (disk full): how soon the spool is tried again
# After a connect the spool waits this long before replaying, so that the historian's retained
# last receipt has arrived: records it lists (sent by a killed process whose last packets the
# broker still took) are released instead of sent twice.
REPLAY_AFTER_CONNECT_S = 0.5
RECENT_RECEIPTS = 10_000  # receipts that matched nothing waiting, remembered for the replay


@dataclass(slots=True)
class _Awaiting:
    """A metrics message the broker acknowledged, waiting for the historian's receipt."""

    topic: str
    key: bytes  # see receipt_key
    payload: bytes | None  # None once it is on disk (``where``)
    since: float
    where: tuple[Segment, int] | None  # its record in the spool, held (not to be replayed)
    replayed: bool  # the record was read by the replay (rewind it, not unhold it, if lost)
    acked: bool = True  # False: in flight when its connection dropped (the broker may or may not have it)


def receipt_key(payload: bytes) -> bytes:
    """A metrics message's key in the historian's receipts: the timestamp ending its last line."""
    return payload[payload.rfind(b" ") + 1 :].rstrip()


@dataclass(slots=True)
class _InFlight:
    """A QoS 1 message handed to paho on the current connection."""

    topic: str
    payload: bytes
    sent_at: float
    retain: bool = False
    spooled: tuple[Segment, int] | None = None  # its held copy on disk (late acknowledgement)
    replayed: tuple[Segment, int] | None = None  # it came from the spool (the record to release)


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
        self.encoder = ReadingEncoder(site, device_kinds)
        self._topics = {device: f"{self.base}/{device}/metrics" for device in device_kinds}
        self.connection = MqttConnection(
            config,
            config.client_id or f"heat-gateway-{site}",
            name="publisher",
            will=Will(topic=self.status_topic, payload=b"offline"),
        )
        self.connection.on_connected = self._on_connected
        self.connection.on_disconnected = self._on_disconnected
        self.connection.on_publish = self._on_publish
        self.connection.on_message = self._on_message
        self._in_flight: dict[int, _InFlight] = {}  # by message id, oldest first
        self._retained_in_flight = 0
        self._memory: deque[tuple[str, bytes]] = deque()  # waiting without a usable spool
        self._memory_max = config.queue_size * 10
        self.refused = 0  # messages lost because even the memory queue was full
        self.replayed = 0
        self.copied_on_drop = 0
        self.copied_late = 0
        self._subscriptions: dict[str, Any] = {}
        self._metrics_prefix, self._metrics_suffix = f"{self.base}/", "/metrics"
        self._historian_status_topic = f"{self.base}/historian/status"
        self._stored_topic = f"{self.base}/historian/stored"
        self._stored_recent_topic = f"{self.base}/historian/stored_recent"
        self.historian_online = False
        self._awaiting: dict[int, _Awaiting] = {}  # by sequence (acknowledgement order)
        self._awaiting_keys: dict[tuple[str, bytes], deque[int]] = {}
        self._awaiting_seq = 0
        self.resent_lost = 0  # acknowledged by the broker, never stored: sent again
        self._recent_receipts: dict[tuple[str, bytes], None] = {}  # stored, but not waited for here
        self.skipped_stored = 0  # spooled records not replayed because the historian had them
        self._connected_at = 0.0
        self._spool_dir = spool_dir if config.spool else None
        self.spool: Spool | None = None  # opened by start(): building a publisher touches no files
        self._spool_above = min(SPOOL_ABOVE_UNACKED, self._memory_max // 2)
        self._replay_window = max(1, min(REPLAY_WINDOW, self._spool_above // 4))
        self._replay_in_flight = 0
        self._spool_usable = False
        self._spool_retry_at = 0.0
        self._spooling_reason: str | None = None  # an episode of spooling was logged
        self._stalled = False  # the oldest message in flight is older than UNACKED_TO_DISK_S
        self._wake = asyncio.Event()

    # -- state ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The broker connection is up."""
        return self.connection.connected

    @property
    def pending(self) -> int:
        """Messages not yet safe: in flight, in memory, waiting in the spool (a spool left by an
        earlier process counts from when the replay reads it), waiting for the historian's
        receipt. A message with a copy in the spool counts once."""
        spooled = self.spool.waiting if self.spool is not None else 0
        held = sum(1 for m in self._in_flight.values() if m.spooled is not None or m.replayed is not None)
        awaiting = sum(1 for a in self._awaiting.values() if a.where is None)
        return len(self._in_flight) - self._retained_in_flight - held + len(self._memory) + spooled + awaiting

    def set_devices(self, device_kinds: dict[str, str]) -> None:
        """The devices whose readings it publishes (after a reload added or removed some)."""
        self.encoder = ReadingEncoder(self.site, device_kinds)
        self._topics = {device: f"{self.base}/{device}/metrics" for device in device_kinds}

    def subscribe(self, topic: str, handler: Any) -> None:
        """Subscribe now and after every reconnect; ``handler(None, None, message)`` runs on the event loop."""
        self._subscriptions[topic] = handler
        if self.connected:
            with contextlib.suppress(MqttError):  # dropped meanwhile: on_connected subscribes again
                self.connection.subscribe(topic)

    def start(self) -> None:
        """Open the spool (if any); :meth:`run` connects.

        Raises :class:`~gateway.publish.spool.SpoolError` when the spool folder cannot be used.
        """
        if self._spool_dir is not None and self.spool is None:
            config = self.config
            self.spool = Spool(self._spool_dir, max_bytes=config.spool_max_mb * 2**20, fsync=config.spool_fsync)
            self._spool_usable = True

    # -- connection callbacks (event loop) ------------------------------------------------------

    def _on_connected(self, _session_present: bool) -> None:
        self._stalled = False
        self._connected_at = _now()
        self.publish_now(self.status_topic, b"online", retain=True)
        self.connection.subscribe(self._historian_status_topic)
        self.connection.subscribe(self._stored_topic)
        self.connection.subscribe(self._stored_recent_topic)
        for topic in self._subscriptions:
            self.connection.subscribe(topic)
        self._wake.set()

    def _on_disconnected(self, reason: str) -> None:
        """Each message the connection had not acknowledged becomes replayable, once."""
        in_flight, self._in_flight = self._in_flight, {}
        self._retained_in_flight = 0
        self._replay_in_flight = 0
        spool = self.spool
        copied = 0
        for message in in_flight.values():
            if message.retain:
                continue  # state: the next connection says it again
            if self._is_stored_by_historian(message.topic):
                # The broker may have it (its PUBACK lost with the connection): the historian's
                # receipts tell. Listed: forgotten; a later message listed first: sent again.
                self._await_receipt(message, acked=False)
                copied += 1
                continue
            if spool is not None and message.spooled is not None:
                spool.unhold(*message.spooled)  # its held copy is sent by the replay
            elif spool is not None and message.replayed is not None:
                spool.rewind(*message.replayed)  # the replay goes back to it
            elif self._keep(message.topic, message.payload):
                copied += 1
        self._flush_spool()
        self.copied_on_drop += copied
        if copied or in_flight:
            log.info(
                "mqtt_unacknowledged_kept",
                messages=copied,
                held_in_spool=sum(1 for m in in_flight.values() if m.spooled is not None),
                reason=reason,
                where="spool" if self._spool_usable else "memory",
            )

    def _on_publish(self, mid: int) -> None:
        message = self._in_flight.pop(mid, None)
        if message is None:
            return
        if message.retain:
            self._retained_in_flight -= 1
            return
        if message.replayed is not None:
            self._replay_in_flight -= 1
        if self._is_stored_by_historian(message.topic):
            self._await_receipt(message)
            return
        if self.spool is not None:
            if message.spooled is not None:
                self.spool.release(*message.spooled)
            if message.replayed is not None:
                self.spool.release(*message.replayed)

    def _is_stored_by_historian(self, topic: str) -> bool:
        return self.historian_online and topic.startswith(self._metrics_prefix) and topic.endswith(self._metrics_suffix)

    def _await_receipt(self, message: _InFlight, *, acked: bool = True) -> None:
        where = message.spooled or message.replayed
        self._awaiting_seq += 1
        seq = self._awaiting_seq
        payload = message.payload if where is None else None
        key = receipt_key(message.payload)
        self._awaiting[seq] = _Awaiting(
            message.topic, key, payload, _now(), where, message.replayed is not None, acked=acked
        )
        self._awaiting_keys.setdefault((message.topic, key), deque()).append(seq)
        if len(self._awaiting) > self._memory_max:  # a historian that stopped receipting: bound memory
            oldest = next(iter(self._awaiting))
            self._forget_awaiting(oldest, release=True)

    def _forget_awaiting(self, seq: int, *, release: bool) -> _Awaiting:
        entry = self._awaiting.pop(seq)
        key = (entry.topic, entry.key)
        if (seqs := self._awaiting_keys.get(key)) is not None and seq in seqs:
            seqs.remove(seq)
            if not seqs:
                del self._awaiting_keys[key]
        if release and entry.where is not None and self.spool is not None:
            self.spool.release(*entry.where)
        return entry

    def _on_receipt(self, payload: bytes) -> None:
        """The historian stored these messages: forget them; resend the older ones still waiting."""
        newest = 0
        for line in payload.split(b"\n"):
            topic, _, key = line.rpartition(b" ")
            seqs = self._awaiting_keys.get((topic.decode(errors="replace"), key))
            if not seqs:  # not waited for: maybe sent by a killed process and still in the spool
                recent = self._recent_receipts
                recent[(topic.decode(errors="replace"), key)] = None
                if len(recent) > RECENT_RECEIPTS:
                    del recent[next(iter(recent))]
                continue
            seq = seqs.popleft()
            if not seqs:
                del self._awaiting_keys[(topic.decode(errors="replace"), key)]
            entry = self._awaiting.pop(seq, None)
            if entry is not None and entry.where is not None and self.spool is not None:
                self.spool.release(*entry.where)
            newest = max(newest, seq)
        lost = [seq for seq in self._awaiting if seq < newest]
        for seq in lost:
            self._resend_lost(seq)
        if lost:
            self.resent_lost += len(lost)
            log.warning(
                "mqtt_broker_lost_messages",
                messages=len(lost),
                action="sent again",
                reason="acknowledged by the broker but never stored (broker restarted before saving its queue?)",
            )
        self._flush_spool()
        self._wake.set()

    def _resend_lost(self, seq: int) -> None:
        entry = self._forget_awaiting(seq, release=False)
        if entry.where is not None and self.spool is not None:
            if entry.replayed:
                self.spool.rewind(*entry.where)
            else:
                self.spool.unhold(*entry.where)
        elif entry.payload is not None:
            self._keep(entry.topic, entry.payload)

    def _on_historian_status(self, payload: bytes) -> None:
        online = payload == b"online"
        if online == self.historian_online:
            return
        self.historian_online = online
        released = len(self._awaiting)
        if not online:  # it has a persistent session: the broker keeps its messages meanwhile
            for seq, entry in list(self._awaiting.items()):
                if entry.acked:
                    self._forget_awaiting(seq, release=True)
                else:  # never acknowledged: the broker may not have it
                    self._resend_lost(seq)
            self._flush_spool()
        log.info(
            "mqtt_release_mode",
            historian="online" if online else "offline",
            release_on="historian receipt" if online else "broker PUBACK",
            released_now=0 if online else released,
        )

    def _on_message(self, message: Any) -> None:
        if message.topic in (self._stored_topic, self._stored_recent_topic):
            self._on_receipt(bytes(message.payload))
            return
        if message.topic == self._historian_status_topic:
            self._on_historian_status(bytes(message.payload))
            return
        for topic, handler in self._subscriptions.items():
            # a subscription may hold wildcards (the control loop's control/cmd/+)
            if topic_matches_sub(topic, message.topic):
                handler(None, None, message)

    # -- publishing (event loop) ------------------------------------------------------------------

    def publish_now(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Hand one message to paho (QoS 1), bypassing the spool; False when not connected."""
        try:
            mid = self.connection.publish(topic, payload, retain=retain)
        except MqttError:
            return False
        self._in_flight[mid] = _InFlight(topic, payload, _now(), retain=retain)
        if retain:
            self._retained_in_flight += 1
        return True

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish a live message: to paho, or to the spool when paho cannot deliver it soon."""
        if retain:
            self.publish_now(topic, payload, retain=True)  # state: the next one replaces it anyway
            return
        if self._stalled or len(self._in_flight) > self._spool_above or not self.connection.connected:
            self._keep(topic, payload)
            return
        try:
            mid = self.connection.publish(topic, payload)
        except MqttError:
            self._keep(topic, payload)
            return
        self._in_flight[mid] = _InFlight(topic, payload, _now())

    def _keep(self, topic: str, payload: bytes) -> bool:
        """Keep a message for later: the spool, else memory; False when it had to be dropped."""
        if self._append(topic, payload) is not None:
            self._note_spooling()
            return True
        if len(self._memory) >= self._memory_max:
            self.refused += 1
            return False
        self._memory.append((topic, payload))
        return True

    def _append(self, topic: str, payload: bytes) -> tuple[Segment, int] | None:
        spool = self.spool
        if spool is None or not self._spool_usable:
            return None
        try:
            return spool.append(topic, payload)
        except OSError as error:
            self._spool_failed(error)
            return None

    def _note_spooling(self) -> None:
        if self._spooling_reason is None:
            self._spooling_reason = "broker acknowledges slowly" if self.connected else "not connected"
            assert self.spool is not None
            log.info("mqtt_spooling", folder=str(self.spool.directory), reason=self._spooling_reason)

    def _flush_spool(self) -> None:
        if self.spool is not None and self._spool_usable:
            try:
                self.spool.flush()
            except OSError as error:
                self._spool_failed(error)

    def _spool_failed(self, error: OSError) -> None:
        """The spool cannot be written (disk full, I/O error): memory until SPOOL_RETRY_S has passed.

        What is already in closed segments is still replayed.
        """
        assert self.spool is not None
        unwritten = self.spool.take_unwritten()
        if self._spool_usable:
            log.error(
                "spool_write_failed",
                folder=str(self.spool.directory),
                error=str(error),
                kept_in_memory=len(unwritten),
                retry_s=SPOOL_RETRY_S,
                fallback="messages wait in memory until the broker is back; a restart before then loses them",
            )
        self._spool_usable = False
        self._spool_retry_at = _now() + SPOOL_RETRY_S
        self._memory.extend(unwritten)

    async def _sync_spool(self, spool: Spool) -> None:
        try:
            await spool.sync()
        except OSError as error:
            self._spool_failed(error)

    def _publish_item(self, item: Reading | Message) -> None:
        if isinstance(item, Message):
            self._send(item.topic, item.payload, item.retain)
            return
        line = self.encoder.encode(item)
        if line is not None:
            self._send(self._topics[item.device], line)

    # -- tasks --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, replay and look after the spool until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.connection.run(), name="mqtt-publisher-connection")
            group.create_task(self._publish_loop(), name="mqtt-publish")
            group.create_task(self._watch_unacknowledged(), name="mqtt-unacknowledged")
            group.create_task(self._replay_loop(), name="mqtt-replay")
            if self.spool is not None and self.spool.fsync == "interval":
                group.create_task(self._fsync_loop(self.spool), name="mqtt-spool-fsync")

    async def _publish_loop(self) -> None:
        spool = self.spool
        while True:
            for item in await self.outbox.drain():
                self._publish_item(item)
            if spool is not None and spool.unflushed:
                self._flush_spool()  # one write per batch: from here a kill loses nothing
                if spool.fsync == "every_write":
                    await self._sync_spool(spool)
            self.connection.flush()  # the batch goes to the socket now, not at the loop's next turn
            if len(self.outbox):
                await asyncio.sleep(0)  # let pollers run between large batches

    async def _watch_unacknowledged(self) -> None:
        """Copy messages unacknowledged for UNACKED_TO_DISK_S to the spool; retry a failed spool."""
        while True:
            await asyncio.sleep(UNACKED_CHECK_S)
            now = _now()
            if self.spool is not None and not self._spool_usable and now >= self._spool_retry_at:
                self._spool_usable = True  # the next write tells; a failure comes back here
                self._retry_spool_from_memory()
            cutoff = now - UNACKED_TO_DISK_S
            self._spool_awaiting(cutoff)
            oldest = next(iter(self._in_flight.values()), None)
            self._stalled = oldest is not None and oldest.sent_at < cutoff
            if not self._stalled or self.spool is None:
                continue
            copied = 0
            for message in self._in_flight.values():
                if message.sent_at >= cutoff:
                    break
                if message.spooled is None and message.replayed is None and not message.retain:
                    where = self._append(message.topic, message.payload)
                    if where is None:
                        break
                    self.spool.hold(*where)
                    message.spooled = where
                    copied += 1
            self._flush_spool()
            if copied:
                self.copied_late += copied
                self._note_spooling()

    def _spool_awaiting(self, cutoff: float) -> None:
        """Messages waiting for the historian's receipt longer than UNACKED_TO_DISK_S go to disk (held)."""
        if self.spool is None:
            return
        for entry in self._awaiting.values():
            if entry.since >= cutoff:
                break
            if entry.where is None and entry.payload is not None:
                where = self._append(entry.topic, entry.payload)
                if where is None:
                    break
                self.spool.hold(*where)
                entry.where, entry.payload = where, None
        self._flush_spool()

    def _retry_spool_from_memory(self) -> None:
        """The spool is tried again: what waits in memory goes there first (in order)."""
        assert self.spool is not None
        moved = 0
        while self._memory and self._spool_usable:
            topic, payload = self._memory[0]
            if self._append(topic, payload) is None:
                return
            self._memory.popleft()
            moved += 1
        self._flush_spool()
        if self._spool_usable:
            log.info("spool_writable_again", folder=str(self.spool.directory), moved_from_memory=moved)

    async def _fsync_loop(self, spool: Spool) -> None:
        """fsync about once a second, in a worker thread, while there is something to sync."""
        while True:
            await asyncio.sleep(SPOOL_FSYNC_INTERVAL_S)
            if spool.needs_sync:
                await self._sync_spool(spool)

    async def _replay_loop(self) -> None:
        """Whenever connected, send what memory and the spool hold, oldest first."""
        started: float | None = None
        replayed_before = 0
        while True:
            spool = self.spool
            if spool is not None:
                spool.release_done()
            backlog = bool(self._memory) or (spool is not None and spool.has_backlog())
            settling = _now() - self._connected_at < REPLAY_AFTER_CONNECT_S
            if not (self.connected and backlog and not self._stalled and not settling):
                if started is not None and not backlog and self._replay_in_flight == 0:
                    log.info(
                        "mqtt_spool_replayed",
                        messages=self.replayed - replayed_before,
                        seconds=round(_now() - started, 3),
                        dropped_when_full=spool.dropped if spool is not None else 0,
                        skipped_as_stored=self.skipped_stored,
                    )
                    started, self._spooling_reason = None, None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPLAY_IDLE_CHECK_S if started is None else UNACKED_CHECK_S):
                        await self._wake.wait()
                continue
            if started is None:
                started, replayed_before = _now(), self.replayed
                log.info(
                    "mqtt_spool_replay_started",
                    files=len(spool.files) if spool is not None else 0,
                    bytes=spool.bytes if spool is not None else 0,
                    in_memory=len(self._memory),
                )
            room = self._replay_window - self._replay_in_flight
            if room <= 0:
                await asyncio.sleep(UNACKED_CHECK_S / 10)
                continue
            if self._memory:
                self._replay_memory(min(room, REPLAY_BATCH))
            elif spool is not None and not await self._replay_spool(spool, room):
                continue
            await asyncio.sleep(0)  # live messages and pollers go between batches

    async def _replay_spool(self, spool: Spool, room: int) -> bool:
        """Hand the spool's next batch to paho; False when there was none (or the spool failed)."""
        try:
            segment, records = await spool.read(min(room, REPLAY_BATCH))
        except OSError as error:  # closing the head flushes it
            self._spool_failed(error)
            return False
        if segment is None or not records:
            await asyncio.sleep(UNACKED_CHECK_S / 10)  # held records: wait for their fate
            return False
        for index, topic, payload in records:
            if not self._replay_one(segment, index, topic, payload):
                break
        return True

    def _replay_memory(self, count: int) -> None:
        for _ in range(min(count, len(self._memory))):
            topic, payload = self._memory[0]
            if not self.publish_now(topic, payload):
                return
            self._memory.popleft()
            self.replayed += 1

    def _replay_one(self, segment: Segment, index: int, topic: str, payload: bytes) -> bool:
        """Hand one spooled record to paho; False when the connection is gone (the record stays)."""
        if self._recent_receipts and (topic, receipt_key(payload)) in self._recent_receipts:
            assert self.spool is not None
            self.spool.release(segment, index)  # the historian stored it already
            self.skipped_stored += 1
            return True
        try:
            mid = self.connection.publish(topic, payload)
        except MqttError:
            assert self.spool is not None
            self.spool.rewind(segment, index)  # sent again after the reconnect
            return False
        self._in_flight[mid] = _InFlight(topic, payload, _now(), replayed=(segment, index))
        self._replay_in_flight += 1
        self.replayed += 1
        return True

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Publish what is queued, say ``offline``, wait for acknowledgements, keep the rest, disconnect.

        What the broker has not acknowledged by then goes to the spool (replayed by the next
        process); the connection's own task must be cancelled already (:meth:`run`).
        """
        for item in self.outbox.take_all():
            self._publish_item(item)
        if self.connected:
            self.publish_now(self.status_topic, b"offline", retain=True)
            deadline = _now() + timeout_s
            while (self._in_flight or self._awaiting) and self.connected and _now() < deadline:  # noqa: ASYNC110 - acks arrive as loop callbacks
                await asyncio.sleep(0.02)
        if self._in_flight:
            self._on_disconnected("gateway stopping")
        for seq, entry in list(self._awaiting.items()):
            if not entry.acked and entry.where is None:  # the broker may not have it: the spool keeps it
                self._resend_lost(seq)
        self.connection.close()
        if self.spool is not None:
            await self._close_spool(self.spool)
        if self._memory:
            log.warning("mqtt_unsent_at_stop", pending=len(self._memory))


    async def _close_spool(self, spool: Spool) -> None:
        """Write what is held to the spool and close it; what it keeps, the next process replays."""
        self._flush_spool()
        try:
            await spool.close()
        except OSError as error:
            log.exception("spool_close_failed", folder=str(spool.directory), error=str(error))
        if spool.files:
            log.info("mqtt_spool_kept", files=len(spool.files), bytes=spool.bytes)


def _now() -> float:
    return asyncio.get_running_loop().time()
