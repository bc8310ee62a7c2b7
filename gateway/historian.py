"""Historian: MQTT metrics in, InfluxDB v2 writes out, nothing lost on either outage.

It subscribes with a persistent session (``clean_session=False``, QoS 1) and acknowledges a
message only after the database has accepted its lines (paho ``manual_ack``). So:

- database down: lines stay un-acknowledged; the broker stops sending at its in-flight limit
  and keeps the rest queued; the historian retries with backoff and catches up;
- historian killed: the broker keeps the session and redelivers what was not acknowledged;
- broker down: the gateway's publisher holds the messages.

Writes are synchronous writes of pre-joined line-protocol text (MEASURED.md: ~5x faster than
the batching ``Point`` API), run in a worker thread so the event loop never blocks on HTTP.
A batch the database rejects as malformed (HTTP 400) is split to find the bad message, which
is logged with its topic and dropped; the good ones are written.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from gateway.backoff import backoff_s
from gateway.config.site import InfluxDb, Mqtt
from gateway.logs import get_logger
from gateway.publish.mqtt import make_client, set_nodelay

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Message:
    mid: int
    topic: str
    payload: bytes


class RejectedBatchError(Exception):
    """The database refused the lines as malformed (4xx other than auth)."""


class Historian:
    """Moves metrics from MQTT to the time-series database."""

    def __init__(self, mqtt: Mqtt, influx: InfluxDb, site: str) -> None:
        self.mqtt_config = mqtt
        self.influx = influx
        self.topic = f"{mqtt.topic_prefix}/{site}/+/metrics"
        self.client = make_client(
            mqtt, (mqtt.client_id or f"heat-gateway-{site}") + "-historian", clean_session=False, manual_ack=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._inbox: deque[_Message] = deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._db = InfluxDBClient(
            url=influx.url,
            token=influx.token.get_secret_value() or "unused",
            org=influx.org,
            timeout=int(influx.timeout_s * 1000),
            retries=False,  # we own retries and backoff
        )
        self._write = self._db.write_api(write_options=SYNCHRONOUS)
        self.lines_written = 0
        self.messages_dropped = 0
        self._db_down_since: float | None = None

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("historian_mqtt_refused", reason=str(reason))
            return
        set_nodelay(client)
        client.subscribe(self.topic, qos=1)
        log.info("historian_subscribed", topic=self.topic)

    def _on_message(self, _client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self._inbox.append(_Message(message.mid, message.topic, bytes(message.payload)))
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

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
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.client.connect_async(self.mqtt_config.host, self.mqtt_config.port, keepalive=self.mqtt_config.keepalive_s)
        self.client.loop_start()
        rng = random.Random()
        attempt = 0
        try:
            while True:
                if not self._inbox:
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._take_batch()
                try:
                    await asyncio.to_thread(self._write_batch, batch)
                except Exception as exc:
                    # Database unreachable or failing: keep the batch (front of the queue, in
                    # order), do not acknowledge it, retry later.
                    self._inbox.extendleft(reversed(batch))
                    if self._db_down_since is None:
                        self._db_down_since = self._loop.time()
                        log.warning("historian_db_unavailable", url=self.influx.url, error=str(exc)[:300])
                    await asyncio.sleep(backoff_s(attempt, base_s=0.5, cap_s=30.0, rng=rng))
                    attempt += 1
                    continue
                if self._db_down_since is not None:
                    log.info(
                        "historian_db_available",
                        url=self.influx.url,
                        down_s=round(self._loop.time() - self._db_down_since, 1),
                    )
                    self._db_down_since = None
                attempt = 0
                for message in batch:  # in order, as MQTT requires
                    self.client.ack(message.mid, 1)
        finally:
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)
            self._db.close()  # type: ignore[no-untyped-call]
