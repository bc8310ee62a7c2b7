"""One poll task per device, on an absolute schedule, that never stalls the others.

A poll starts at ``start + k * period`` (no drift). A poll that overruns its period is counted
and logged and the missed slots are skipped, never queued, so there are never two polls of one
device at once. A device that stops answering has its values marked bad at once, is retried
with capped, jittered exponential backoff, and is logged once when it goes and once when it
comes back.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.drivers.base import DeviceUnavailable, Driver, DriverError
from gateway.liveness import Progress
from gateway.logs import get_logger
from gateway.process_image import ProcessImage
from gateway.sample import Reading

log = get_logger(__name__)

OVERRUN_LOG_INTERVAL_S = 60.0


@dataclass
class PollStats:
    """Counters a dashboard and the benchmark read."""

    polls: int = 0
    failures: int = 0
    overruns: int = 0
    skipped_slots: int = 0
    values: int = 0
    bad_values: int = 0
    available: bool = False
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    last_duration_s: float = 0.0


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with 'equal jitter': half fixed, half random."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 30))
    jitter: float = rng.uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


class ReadingSink(Protocol):
    """Where a poller hands its readings (the publisher's :class:`Outbox`); never blocks."""

    def put(self, item: Reading, /) -> None:
        """Take one reading."""


class DevicePoller:
    """Polls one device through its driver into the process image and the outbox."""

    def __init__(
        self,
        driver: Driver,
        *,
        period_s: float,
        backoff_max_s: float,
        image: ProcessImage,
        outbox: ReadingSink | None,
        on_reading: Callable[[Reading], None] | None = None,
        rng: random.Random | None = None,
        progress: Progress | None = None,
    ) -> None:
        """``progress``: where each poll attempt is reported (the service's liveness registry);
        by default a marker of the poller's own that nobody watches."""
        self.driver = driver
        self.name = driver.name
        self.period_s = period_s
        self.backoff_max_s = backoff_max_s
        self.image = image
        self.outbox = outbox
        self.on_reading = on_reading
        self.stats = PollStats()
        self._rng = rng or random.Random()
        self._down_reason: str | None = "not yet connected"
        self._attempt = 0
        self._connected = False
        self._overrun_logged_at = -math.inf
        self._overruns_logged = 0
        # A poll *attempt* is progress, failed or not: a device that is down is not a stuck poller.
        self.progress = progress or Progress(f"poll:{self.name}", bound_s=max(period_s, backoff_max_s) + 60.0)

    def _went_down(self, reason: str) -> None:
        self.image.mark_unavailable(self.name, time.time_ns(), reason)
        self.stats.available = False
        if self._down_reason is None:
            log.warning("device_unavailable", device=self.name, reason=reason)
        self._down_reason = reason

    def _came_back(self) -> None:
        self.stats.available = True
        if self._down_reason is not None:
            log.info("device_available", device=self.name, after_attempts=self._attempt)
        self._down_reason = None
        self._attempt = 0

    async def poll_once(self) -> Reading | None:
        """Connect if needed and read once; ``None`` (and values marked bad) on failure."""
        try:
            if not self._connected:
                await self.driver.connect()
                self._connected = True
            reading = await self.driver.read()
        except DriverError as exc:
            self.stats.failures += 1
            if isinstance(exc, DeviceUnavailable):
                # Timeouts and lost connections: start over on a fresh connection, so a late
                # reply to this request can never be taken for the answer to the next one.
                self._connected = False
                await self.driver.close()
            self._went_down(str(exc))
            return None
        except Exception as exc:  # a driver bug must not kill the poll task of this device
            self.stats.failures += 1
            self._connected = False
            await self.driver.close()
            log.exception("poll_crashed", device=self.name)
            self._went_down(f"internal error: {exc!r}")
            return None
        self._came_back()
        self.stats.values += len(reading.values)
        self.stats.bad_values += len(reading.bad)
        self.image.update(reading)
        if self.outbox is not None:
            self.outbox.put(reading)
        if self.on_reading is not None:
            self.on_reading(reading)
        return reading

    async def run(self) -> None:
        """Poll until cancelled."""
        loop = asyncio.get_running_loop()
        period = self.period_s
        # Spread devices over the period so 200 of them do not all fire at once.
        next_start = loop.time() + self._rng.uniform(0, min(period, 1.0))
        try:
            while True:
                delay = next_start - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = loop.time()
                if started < next_start:  # timers may fire early on some loops
                    await asyncio.sleep(next_start - started)
                    started = loop.time()
                self.stats.lateness_s.append(started - next_start)
                self.stats.polls += 1
                reading = await self.poll_once()
                await self.progress.step()
                finished = loop.time()
                self.stats.last_duration_s = finished - started
                if reading is None:
                    # Back off from the failed attempt; keep to the period grid afterwards.
                    wait = max(period, backoff_s(self._attempt, base_s=period, cap_s=self.backoff_max_s, rng=self._rng))
                    self._attempt += 1
                    slots = math.ceil((finished + wait - next_start) / period)
                    next_start += max(1, slots) * period
                    continue
                next_start += period
                if finished > next_start:
                    missed = math.ceil((finished - next_start) / period)
                    self.stats.overruns += 1
                    self.stats.skipped_slots += missed
                    # A device that is slow every time would log every period: once a minute
                    # is enough to see it, with the counts since the last line.
                    if finished - self._overrun_logged_at >= OVERRUN_LOG_INTERVAL_S:
                        log.warning(
                            "poll_overrun",
                            device=self.name,
                            duration_s=round(finished - started, 4),
                            period_s=period,
                            skipped=missed,
                            overruns_since_last_log=self.stats.overruns - self._overruns_logged,
                            skipped_total=self.stats.skipped_slots,
                        )
                        self._overrun_logged_at = finished
                        self._overruns_logged = self.stats.overruns
                    next_start += missed * period
        finally:
            await self.driver.close()
