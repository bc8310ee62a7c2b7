"""``mode: subscribe``: one subscription, the latest value of every node, and when it went stale."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds

from gateway import clock
from gateway.config.site import OpcUaDevice
from gateway.drivers.base import DeviceUnavailable
from gateway.drivers.opcua.errors import BadStatusOnly
from gateway.drivers.opcua.status import status_name
from gateway.drivers.opcua.values import NUMERIC, Node, ReadOut
from gateway.logs import get_logger
from gateway.sample import Reading

log = get_logger(__name__)


class LatestValues:
    """The server pushes changes; :meth:`reading` reports what is known now.

    A value the server has not confirmed (by a change or a keep-alive) for ``stale_after_s`` is
    bad; a subscription silent for twice that is :class:`DeviceUnavailable`, so the poller
    builds a new session.
    """

    def __init__(self, device: OpcUaDevice, nodes: Sequence[Node]) -> None:
        self.device = device
        self.nodes = list(nodes)
        self.stale_after_s = 3 * device.poll_period_s
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._latest: list[tuple[ua.DataValue, float] | None] = [None] * len(self.nodes)
        self._item_failed: dict[str, str] = {}
        self._lost: str | None = None
        self._subscribed_at = 0.0
        self._first_data = asyncio.Event()

    async def start(self, client: Client, per_call: int) -> None:
        """One subscription, one monitored item per node; initial values are awaited briefly."""
        device = self.device
        publishing_ms = device.poll_period_s * 1000.0
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            # A keep-alive every empty publishing interval: it confirms unchanged values.
            RequestedMaxKeepAliveCount=1,
            # The server drops the subscription of a vanished gateway after about a minute.
            RequestedLifetimeCount=max(3, math.ceil(60_000 / publishing_ms)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        # Built here rather than by client.create_subscription(), which keeps the server's
        # revised keep-alive to itself: the staleness limit needs it. asyncua's own stale
        # watchdog then leaves this subscription alone; reading() gives up on a silent one instead.
        subscription = Subscription(
            client.uaclient.session,
            params,
            None,
            queue_maxsize=max(1000, 4 * len(self.nodes) * device.queue_size),
            overflow=OverflowPolicy.DROP_OLDEST,
        )
        revised = await subscription.init()
        self._subscription = subscription
        self._consumer = asyncio.create_task(self._consume(subscription), name=f"opcua-subscription-{device.name}")
        interval_s = (revised.RevisedPublishingInterval or publishing_ms) / 1000.0
        keepalive_s = interval_s * max(1, int(revised.RevisedMaxKeepAliveCount or 1))
        # An unchanged value is confirmed by the keep-alive; 1.5 of its interval absorbs jitter.
        self.stale_after_s = max(3 * device.poll_period_s, 1.5 * keepalive_s)
        sampling = device.sampling_interval_ms if device.sampling_interval_ms is not None else publishing_ms
        requests = [self._monitored_item(index, node, sampling) for index, node in enumerate(self.nodes)]
        # time.monotonic, not gateway.clock: compared with asyncua's own last_publish_at
        self._subscribed_at = time.monotonic()
        for start in range(0, len(requests), per_call):
            results = await subscription.create_monitored_items(requests[start : start + per_call])
            for offset, result in enumerate(results):
                if isinstance(result, ua.StatusCode):
                    self._item_failed[self.nodes[start + offset].signal] = status_name(result.value)
        if self._item_failed:
            log.warning("opcua_monitored_items_refused", device=device.name, items=self._item_failed)
        # The server sends every item's value right away; wait for it so the first poll has data.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(device.timeout_s, 2 * interval_s)):
                await self._first_data.wait()

    def _monitored_item(self, index: int, node: Node, sampling_ms: float) -> ua.MonitoredItemCreateRequest:
        parameters = ua.MonitoringParameters(
            ClientHandle=index + 1, SamplingInterval=sampling_ms, QueueSize=self.device.queue_size, DiscardOldest=True
        )
        numeric = node.variant in NUMERIC if node.variant is not None else node.spec.type not in ("bool", "string")
        if self.device.deadband_abs > 0 and numeric:
            parameters.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute,
                DeadbandValue=self.device.deadband_abs,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.node_id, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=parameters,
        )

    async def _consume(self, subscription: Subscription) -> None:
        """Keep the latest DataValue of every item; note a subscription the server ended."""
        async for event in subscription:
            if isinstance(event, DataChangeEvent):
                index = int(event.data.monitored_item.ClientHandle) - 1
                if 0 <= index < len(self._latest) and event.data.monitored_item.Value is not None:
                    self._latest[index] = (event.data.monitored_item.Value, time.monotonic())
                    self._first_data.set()
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    self._lost = status_name(status.value)

    def reading(self) -> Reading:
        """The latest value of every node, bad where missing, refused or stale."""
        name = self.device.name
        subscription = self._subscription
        if subscription is None or self._lost is not None:
            raise DeviceUnavailable(name, f"subscription ended by the server ({self._lost})")
        now = time.monotonic()
        heard = max(subscription.last_publish_at or 0.0, self._subscribed_at)
        if now - heard > 2 * self.stale_after_s:
            # Values went stale a while ago and the session did not notice: start over.
            raise DeviceUnavailable(name, f"subscription silent for {now - heard:.1f} s")
        out = ReadOut()
        for index, node in enumerate(self.nodes):
            failed = self._item_failed.get(node.signal)
            latest = self._latest[index]
            if failed is not None:
                out.bad[node.signal] = out.bad_status[node.signal] = failed
            elif latest is None:
                out.bad[node.signal] = "no value from the subscription yet"
            elif now - max(latest[1], heard) > self.stale_after_s:
                silent = now - max(latest[1], heard)
                out.bad[node.signal] = f"stale: not confirmed by the server for {silent:.1f} s"
            else:
                out.add(node, latest[0])
        if out.only_bad_statuses():
            raise BadStatusOnly(name, self.device.endpoint, out.bad_status)
        return out.reading(name, clock.wall_ns())

    async def stop(self) -> None:
        """End the consumer task (the subscription ends with the session)."""
        consumer, self._consumer = self._consumer, None
        self._subscription = None
        if consumer is not None:
            consumer.cancel()
            # Waits for the consumer to end without taking its CancelledError for ours.
            await asyncio.wait([consumer])
