"""``heat-gateway run``: pollers, control loop, publisher and housekeeping in one TaskGroup.

Stops on SIGTERM/SIGINT: pollers stop first, then the publisher flushes what it holds and
says ``offline``; the whole stop takes well under the 5 s systemd allows.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from contextlib import suppress

from gateway.config.loader import Site
from gateway.control.loop import ControlLoop
from gateway.drivers.factory import make_driver
from gateway.liveness import Liveness
from gateway.logs import get_logger
from gateway.notify import sd_notify, watchdog_period_s
from gateway.poller import DevicePoller
from gateway.process_image import ProcessImage
from gateway.publish.lineprotocol import encode_fields, series_prefix
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Message, Outbox
from gateway.sample import Reading

log = get_logger(__name__)

STATS_PERIOD_S = 10.0
FREEZE_AFTER_S = 3.0  # connections and sessions are up by then


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Gateway:
    """Everything ``heat-gateway run`` runs, built from a validated site."""

    def __init__(self, site: Site) -> None:
        config = site.config
        self.site = site
        self.image = ProcessImage()
        self.outbox: Outbox[Reading | Message] = Outbox(config.mqtt.queue_size)
        devices = [d for d in config.devices if d.enabled]
        self.liveness = Liveness()
        self.publisher = MqttPublisher(
            config.mqtt,
            config.site,
            {d.name: d.kind for d in devices},
            self.outbox,
            # a relative state_dir is relative to the site file (joining an absolute one keeps it)
            spool_dir=site.path.parent / config.state_dir / "spool",
        )
        self.pollers = [
            DevicePoller(
                make_driver(site, device),
                period_s=device.poll_period_s,
                backoff_max_s=device.backoff_max_s,
                image=self.image,
                outbox=self.outbox,
                # The longest legitimate gap between two poll attempts: the backoff wait plus a
                # poll that times out on each of its requests, with room to spare.
                progress=self.liveness.register(
                    f"poll:{device.name}",
                    bound_s=max(device.poll_period_s, device.backoff_max_s) + 10 * device.timeout_s + 5.0,
                ),
            )
            for device in devices
        ]
        self._stats_topic = f"{config.mqtt.topic_prefix}/{config.site}/gateway/metrics"
        self.control: ControlLoop | None = None
        if config.control is not None:
            self.control = ControlLoop(site, self.image, {p.name: p.driver for p in self.pollers}, self.outbox)
            self.liveness.add(self.control.progress)
            self.publisher.subscribe(self.control.command_topic, self.control.on_command)

    def _spool_fields(self) -> dict[str, float | int | bool | str]:
        """The disk spool's figures: what waits in it, its size, what the size cap dropped."""
        spool = self.publisher.spool
        if spool is None:
            return {}
        return {
            "spool_waiting": spool.waiting,
            "spool_bytes": spool.bytes,
            "spool_dropped": spool.dropped,
            "spool_replayed": self.publisher.replayed,
        }

    def stats_message(self) -> Message:
        """One ``gateway`` line per device: poll health for the dashboard."""
        lines = []
        now = time.time_ns()
        for poller in self.pollers:
            stats = poller.stats
            lateness = list(stats.lateness_s)
            prefix = series_prefix("gateway", {"site": self.site.config.site, "device": poller.name})
            fields = encode_fields(
                {
                    "available": stats.available,
                    "polls": stats.polls,
                    "failures": stats.failures,
                    "overruns": stats.overruns,
                    "bad_values": stats.bad_values,
                    "lateness_p50_s": _percentile(lateness, 0.5),
                    "lateness_p99_s": _percentile(lateness, 0.99),
                }
            )
            lines.append(f"{prefix} {fields} {now}")
        prefix = series_prefix("gateway", {"site": self.site.config.site, "device": "gateway"})
        fields = encode_fields(
            {
                "outbox_len": len(self.outbox),
                "outbox_dropped": self.outbox.dropped,
                "mqtt_pending": self.publisher.pending,
                "mqtt_refused": self.publisher.refused,
                **self._spool_fields(),
            }
        )
        lines.append(f"{prefix} {fields} {now}")
        return Message(self._stats_topic, "\n".join(lines).encode())

    async def _housekeeping(self) -> None:
        watchdog = watchdog_period_s()
        period = min(watchdog, STATS_PERIOD_S) if watchdog else STATS_PERIOD_S
        next_stats = asyncio.get_running_loop().time() + STATS_PERIOD_S
        frozen = False
        withheld = False
        while True:
            await asyncio.sleep(period if frozen else FREEZE_AFTER_S)
            if not frozen:
                # Everything built at start-up (profiles, plans, sessions, OPC UA node objects)
                # lives as long as the process: move it out of the collector's sight once, so a
                # full collection walks only young objects. Measured with 10 OPC UA servers x 500
                # nodes: full collections paused the event loop 23-75 ms (poll lateness p99 up
                # to 48 ms); frozen, 0.2-3.5 ms. No gc.collect() first: on a big heap that one
                # collection is itself a pause of that size, and the little start-up garbage
                # it would free is not worth it.
                gc.freeze()
                frozen = True
            # Feed systemd's watchdog only while every poller and the control loop made progress
            # within its bound: a stuck task then gets the service restarted (WatchdogSec=).
            stalled = self.liveness.stalled()
            if stalled and not withheld:
                log.error("watchdog_withheld", stalled=[str(s) for s in stalled], watchdog=bool(watchdog))
            elif withheld and not stalled:
                log.info("watchdog_resumed")
            withheld = bool(stalled)
            if watchdog and not stalled:
                sd_notify("WATCHDOG=1")
            if asyncio.get_running_loop().time() >= next_stats:
                next_stats += STATS_PERIOD_S
                self.outbox.put(self.stats_message())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly."""
        self.publisher.start()
        log.info(
            "gateway_started",
            site=self.site.config.site,
            devices=len(self.pollers),
            broker=f"{self.site.config.mqtt.host}:{self.site.config.mqtt.port}",
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(p.run(), name=f"poll:{p.name}") for p in self.pollers]
                tasks.append(group.create_task(self.publisher.run(), name="mqtt-publisher"))
                tasks.append(group.create_task(self._housekeeping(), name="housekeeping"))
                if self.control is not None:
                    tasks.append(group.create_task(self.control.run(), name="control"))
                self.liveness.arm_test_hang()
                sd_notify("READY=1")
                await stop.wait()
                sd_notify("STOPPING=1")
                await _cancel_all(tasks)
        finally:
            await self.publisher.stop()
            log.info("gateway_stopped")


async def _cancel_all(tasks: list[asyncio.Task[None]], timeout_s: float = 4.0) -> None:
    """Cancel the tasks and wait, cancelling again any that is still running.

    Python 3.11's ``asyncio.wait_for`` (used by pymodbus for every reply) can drop a
    cancellation that arrives just as the reply completes (fixed in 3.12): a poller then keeps
    running and the TaskGroup would wait for it forever. Seen in ~1 of 3 benchmark stops at 10 Hz.
    """
    pending = set(tasks)
    for task in pending:
        task.cancel()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending and asyncio.get_running_loop().time() < deadline:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        for task in pending:
            task.cancel()
    for task in pending:
        log.error("task_ignored_cancellation", task=task.get_name())


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def serve(site: Site) -> None:
    """The ``run`` command's body."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    await Gateway(site).run(stop)
