"""Historian: MQTT metrics in, InfluxDB v2 writes out, nothing lost on either outage.

It subscribes with a persistent session (``clean_session=False``, QoS 1) and acknowledges a
message only after the database has accepted its lines (paho ``manual_ack``). So:

- database down: lines stay un-acknowledged; the broker stops sending at its in-flight limit
  and keeps the rest queued; the historian retries with backoff and catches up;
- historian killed: the broker keeps the session and redelivers what was not acknowledged;
- broker down: the gateway's publisher holds the messages.

After each successful write it tells the gateway what is stored (docs/nothing-lost.md): one QoS 1
message on ``{prefix}/{site}/historian/stored``, a line ``{topic} {timestamp}`` per message
written (the timestamp is the message's last line's, the gateway's key for it); and at most once a
second the retained ``{prefix}/{site}/historian/stored_recent`` with the receipts of the last
``RECENT_RECEIPTS_S``, so that a gateway started after a ``kill -9`` learns which of its spooled
messages the broker took from the dead process's socket and stored. The retained
``{prefix}/{site}/historian/status`` says ``online`` (the last will says ``offline``): while it
is online the gateway keeps every metrics message until it is in this list, not merely until
the broker acknowledged it, so a broker that dies before saving its queue loses nothing.

The MQTT side is :class:`gateway.mqtt.MqttConnection` (paho on the event loop); an acknowledgement
is only sent on the connection the message came in on (a message id means nothing on the next
one: the broker redelivers what was not acknowledged).

Writes are synchronous writes of pre-joined line-protocol text (~5x faster than the batching
``Point`` API, measured 2026-11-25: docs/library-limits.md), run in a worker thread so the
event loop never blocks on HTTP.
A batch the database rejects as malformed (HTTP 400) is split to find the bad message, which
is logged with its topic and dropped; the good ones are written.

Every 10 s the historian publishes its own figures as measurement ``historian`` on
``heat/{site}/historian/metrics`` (which its own subscription then writes to the database, so
Grafana can alert on them): lines and batches written, write errors and retries, dropped
messages, the inbox length and ``lag_s``, how old the newest reading it wrote was when it wrote
it. The same figures are on the opt-in ``/metrics`` endpoint (``gateway/health.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from gateway.backoff import Backoff
from gateway.config.site import Http, InfluxDb, Mqtt
from gateway.health import HealthServer
from gateway.liveness import Progress
from gateway.logs import get_logger
from gateway.mqtt import MqttConnection, MqttError, Will
from gateway.publish.lineprotocol import encode_fields, series_prefix

log = get_logger(__name__)

STATS_PERIOD_S = 10.0
RECENT_RECEIPTS_S = 5.0  # longer than a gateway takes to restart after a kill
RECENT_PUBLISH_S = 1.0


def _newest_timestamp_ns(payload: bytes) -> int | None:
    """The timestamp of a message's last line (lines of one message are written in time order)."""
    tail = payload.rstrip().rsplit(b" ", 1)[-1]
    return int(tail) if tail.isdigit() else None


IDLE_BEAT_S = 5.0  # an idle historian still shows its loop turns this often (systemd watchdog)


@dataclass(frozen=True, slots=True)
class _Message:
    generation: int  # the connection it came in on
    mid: int
    topic: str
    payload: bytes


class RejectedBatchError(Exception):
    """The database refused the lines as malformed (4xx other than auth)."""


class Historian:
    """Moves metrics from MQTT to the time-series database."""

    def __init__(self, mqtt: Mqtt, influx: InfluxDb, site: str, *, http: Http | None = None) -> None:
        self.mqtt_config = mqtt
        self.influx = influx
        self.topic = f"{mqtt.topic_prefix}/{site}/+/metrics"
        self.stored_topic = f"{mqtt.topic_prefix}/{site}/historian/stored"
        self.status_topic = f"{mqtt.topic_prefix}/{site}/historian/status"
        self.recent_topic = f"{mqtt.topic_prefix}/{site}/historian/stored_recent"
        self.site = site
        self.stats_topic = f"{mqtt.topic_prefix}/{site}/historian/metrics"
        self.connection = MqttConnection(
            mqtt,
            (mqtt.client_id or f"heat-gateway-{site}") + "-historian",
            name="historian",
            clean_session=False,
            manual_ack=True,
            will=Will(topic=self.status_topic, payload=b"offline"),
        )
        self.connection.on_connected = self._on_connected
        self.connection.on_message = self._on_message
        self._inbox: deque[_Message] = deque()
        self._wake = asyncio.Event()
        self._db = InfluxDBClient(
            url=influx.url,
            token=influx.token.get_secret_value() or "unused",
            org=influx.org,
            timeout=int(influx.timeout_s * 1000),
            retries=False,  # we own retries and backoff
        )
        self._write = self._db.write_api(write_options=SYNCHRONOUS)
        self.lines_written = 0
        self.batches_written = 0
        self.write_errors = 0
        self.messages_dropped = 0
        self.receipts_lost = 0
        self._recent: deque[tuple[float, bytes]] = deque()
        self._recent_published_at = 0.0
        self.lag_s = 0.0  # age of the newest reading written, when it was written
        self.subscribed = False  # the broker answered and the subscription is sent
        # One loop turn is progress: a write (or a failed one) or an idle wake-up. Longest gap: a
        # write timing out after timeout_s, with room to spare; a backoff wait is announced.
        self.progress = Progress("historian", bound_s=influx.timeout_s + IDLE_BEAT_S + 10.0)
        self._db_down_since: float | None = None
        self._last_write_s = time.monotonic()
        self.health = (
            HealthServer(
                http.host, http.historian_port, stalled=self.stalled, stats_lines=self._stats_lines, name="historian"
            )
            if http is not None
            else None
        )

    def _on_connected(self, session_present: bool) -> None:
        if session_present:
            # The broker kept the session: it sends again what the last connection had not
            # acknowledged, so drop those copies (their ids are no good here). Without a session
            # they would be lost if dropped, so they are written (and never acknowledged).
            generation = self.connection.generation
            kept = [m for m in self._inbox if m.generation == generation]
            self._inbox.clear()
            self._inbox.extend(kept)
        self.connection.subscribe(self.topic)
        self.connection.publish(self.status_topic, b"online", retain=True)
        self.subscribed = True
        log.info("historian_subscribed", topic=self.topic, session_present=session_present)

    def _on_message(self, message: Any) -> None:
        self._inbox.append(_Message(self.connection.generation, message.mid, message.topic, bytes(message.payload)))
        self._wake.set()

    def status_line(self) -> str:
        """The one-line summary for systemd's ``STATUS=``."""
        broker = "broker connected" if self.connection.connected else "broker unreachable"
        database = "database ok" if self._db_down_since is None else "database unavailable, retrying"
        return (
            f"{broker}; {database}; {self.lines_written} lines written, {len(self._inbox)} waiting, "
            f"{self.messages_dropped} rejected"
        )

    def _write_lines(self, body: str) -> None:
        try:
            self._write.write(bucket=self.influx.bucket, org=self.influx.org, record=body)
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 404, 429):
                raise RejectedBatchError(f"HTTP {exc.status}: {exc.body!r:.200}") from exc
            raise

    def _write_batch(self, batch: list[_Message]) -> None:
        """Write a batch; isolate and drop messages the database rejects as malformed."""
        body = b"\n".join(m.payload for m in batch).decode("utf-8", errors="replace")
        try:
            self._write_lines(body)
            self.lines_written += body.count("\n") + 1
            self.batches_written += 1
            newest = _newest_timestamp_ns(batch[-1].payload)
            if newest is not None:
                self.lag_s = max(0.0, (time.time_ns() - newest) / 1e9)
        except RejectedBatchError as exc:
            if len(batch) == 1:
                self.messages_dropped += 1
                log.error(  # noqa: TRY400 - the payload, not a traceback, is what helps
                    "historian_rejected_message", topic=batch[0].topic, error=str(exc), payload=batch[0].payload[:200]
                )
                return
            half = len(batch) // 2
            self._write_batch(batch[:half])
            self._write_batch(batch[half:])

    def _report_stored(self, batch: list[_Message]) -> None:
        """Tell the gateway which messages are stored (and so which it may forget)."""
        receipt = b"\n".join(m.topic.encode() + b" " + m.payload[m.payload.rfind(b" ") + 1 :].rstrip() for m in batch)
        now = asyncio.get_running_loop().time()
        self._recent.append((now, receipt))
        while self._recent and self._recent[0][0] < now - RECENT_RECEIPTS_S:
            self._recent.popleft()
        try:
            self.connection.publish(self.stored_topic, receipt)
            if now - self._recent_published_at >= RECENT_PUBLISH_S:
                self._recent_published_at = now
                summary = b"\n".join(r for _t, r in self._recent)
                self.connection.publish(self.recent_topic, summary, retain=True)
        except MqttError:
            # Not connected now: the gateway resends these later (a duplicate point, stored once).
            self.receipts_lost += 1

    def _take_batch(self) -> list[_Message]:
        batch: list[_Message] = []
        lines = 0
        while self._inbox and lines < self.influx.batch_lines:
            message = self._inbox.popleft()
            batch.append(message)
            lines += message.payload.count(b"\n") + 1
        return batch

    async def run(self) -> None:
        """Subscribe and write until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.connection.run(), name="historian-connection")
                group.create_task(self._write_loop(), name="historian-writes")
                group.create_task(self._stats_loop(), name="historian-stats")
                if self.health is not None:
                    group.create_task(self.health.serve(), name="historian-http")
        finally:
            with contextlib.suppress(MqttError):  # a clean stop: the gateway stops waiting for us
                self.connection.publish(self.status_topic, b"offline", retain=True)
            self.connection.close()
            self._db.close()  # type: ignore[no-untyped-call]

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        retry = Backoff(base_s=0.5, cap_s=30.0)
        while True:
            await self.progress.step()
            if not self._inbox:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_BEAT_S):
                        await self._wake.wait()
                continue
            batch = self._take_batch()
            try:
                await asyncio.to_thread(self._write_batch, batch)
            except Exception as exc:
                # Database unreachable or failing: keep the batch (front of the queue, in
                # order), do not acknowledge it, retry later.
                self.write_errors += 1
                self._inbox.extendleft(reversed(batch))
                if self._db_down_since is None:
                    self._db_down_since = loop.time()
                    log.warning("historian_db_unavailable", url=self.influx.url, error=str(exc)[:300])
                wait_s = retry.next_s()
                self.progress.beat(then_wait_s=wait_s)  # a database outage is not a stuck historian
                await asyncio.sleep(wait_s)
                continue
            if self._db_down_since is not None:
                log.info(
                    "historian_db_available",
                    url=self.influx.url,
                    down_s=round(loop.time() - self._db_down_since, 1),
                )
                self._db_down_since = None
            retry.reset()
            self._report_stored(batch)
            self._last_write_s = time.monotonic()
            generation = self.connection.generation
            for message in batch:  # in order, as MQTT requires
                if message.generation == generation:
                    with contextlib.suppress(MqttError):  # dropped meanwhile: the broker sends it again
                        self.connection.ack(message.mid)

    def stats_fields(self) -> dict[str, float | int | bool | str]:
        """The historian's own figures (measurement ``historian``)."""
        return {
            "lines_written": self.lines_written,
            "batches_written": self.batches_written,
            "write_errors": self.write_errors,
            "messages_dropped": self.messages_dropped,
            "inbox_messages": len(self._inbox),
            "lag_s": round(self.lag_s, 3),
            "db_available": self._db_down_since is None,
            "broker_connected": self.connection.connected,
        }

    def stats_message(self) -> str:
        """One line-protocol line of :meth:`stats_fields`, stamped now."""
        prefix = series_prefix("historian", {"site": self.site, "device": "historian"})
        return f"{prefix} {encode_fields(self.stats_fields())} {time.time_ns()}"

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            if self.connection.connected:
                with contextlib.suppress(MqttError):  # the next period tries again
                    self.connection.publish(self.stats_topic, self.stats_message().encode(), qos=0)

    def _stats_lines(self) -> list[str]:
        return [self.stats_message()]

    def stalled(self, bound_s: float = 120.0) -> list[str]:
        """Why the historian is not doing its job (for ``/healthz``): empty while it is."""
        problems = []
        if self._inbox and time.monotonic() - self._last_write_s > bound_s:
            problems.append(f"{len(self._inbox)} messages waiting, nothing written for over {bound_s:g} s")
        if not self.connection.connected:
            problems.append("not connected to the broker")
        return problems
