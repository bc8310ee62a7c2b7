"""One poll task per device, on an absolute schedule, that never stalls the others.

A poll starts at ``start + k * period`` (no drift). A poll that overruns its period is counted
and logged and the missed slots are skipped, never queued, so there are never two polls of one
device at once. ``start`` is on a grid all pollers share: the first time after the poller
starts that is a whole number of cycles (the period, at most 1 s) of the event loop's clock
plus the device's phase (``phase_s``), so pollers given the same phase and period start their
polls in the same turn of the event loop (the service groups devices so, see
:func:`gateway.service.poll_phases`). Units behind one Modbus endpoint share their phase: they
are polled back to back, which leaves the rest of the period as one idle window on the shared
connection for the probes of units that are down.

Availability, for every protocol, is the poller's call:

* a device is *down* when a poll fails (timeout, refused connection, malformed reply,
  authentication, ...) or when it answers but every signal comes back bad (only Modbus
  exceptions, only bad OPC UA statuses): such a reading is published as nothing;
* it is logged once when it goes down, with the reason and its ``cause`` (the error class:
  ``timeout``, ``unavailable``, ``device_fault``, ``malformed_reply``, ...), including when it
  is down at start, and once when it comes back (``device_still_unavailable`` when the cause
  changes during an outage, e.g. from ``unavailable`` to ``authentication``); a down device is
  retried with capped, jittered backoff (:mod:`gateway.backoff`) and its values are marked bad
  at once.

Figures (:class:`PollStats`), for the ``gateway`` measurement:

* ``lateness_s``: from the scheduled slot to the reading's timestamp, i.e. to when its first
  request really went out (Modbus; the driver's timestamp for other protocols). It includes
  any wait for a shared connection, which a lateness measured at poll start would hide;
* ``read_age_s``: from the reading's timestamp to when the poller handed it on (the rest of
  the poll, every reply received): how old the values are when they are published;
* stale signals: a signal with ``stale_after_s`` in its profile whose value has not changed
  for that long (see :class:`StaleWatch`).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway import clock
from gateway.backoff import Backoff
from gateway.drivers.base import DeviceUnavailable, Driver, DriverError, MalformedReply
from gateway.liveness import Progress
from gateway.logs import get_logger
from gateway.process_image import ProcessImage
from gateway.sample import Reading
from gateway.validity import ValueCheck

log = get_logger(__name__)

OVERRUN_LOG_INTERVAL_S = 60.0
_FIGURES_KEPT = 4096


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
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=_FIGURES_KEPT))
    read_age_s: deque[float] = field(default_factory=lambda: deque(maxlen=_FIGURES_KEPT))
    last_duration_s: float = 0.0


def cause_of(exc: BaseException) -> str:
    """The kind of failure, for dashboards and log queries: ``timeout``, ``device_fault``, ..."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, str) else "internal_error"


class StaleWatch:
    """Which signals have kept exactly the same value for longer than their ``stale_after_s``.

    A publishing-quality figure: a sensor that is stuck, or a device that answers from a frozen
    image, goes on reporting plausible numbers. The time is the readings' own timestamps. Only
    signals whose profile sets ``stale_after_s`` are watched: a setpoint or a status bit may
    rightly stay the same for days, and a coarse or heavily filtered signal needs a longer time
    than a noisy one (set it to several times the longest a healthy signal can sit still).
    """

    def __init__(self, stale_after_s: Mapping[str, float]) -> None:
        self.stale_after_s = dict(stale_after_s)
        self._last: dict[str, float] = {}
        self._since_ns: dict[str, int] = {}
        self._now_ns = 0

    def update(self, reading: Reading) -> None:
        """Take a good reading."""
        self._now_ns = max(self._now_ns, reading.timestamp_ns)
        for name in self.stale_after_s:
            value = reading.values.get(name)
            if value is None:
                continue
            if self._last.get(name) != value:
                self._last[name] = value
                self._since_ns[name] = reading.timestamp_ns

    def unchanged_s(self) -> dict[str, float]:
        """Seconds each watched signal has kept its value, as of the last reading."""
        return {name: (self._now_ns - since) / 1e9 for name, since in self._since_ns.items()}

    def stale(self) -> dict[str, float]:
        """The watched signals unchanged for longer than their ``stale_after_s``, with how long."""
        return {name: age for name, age in self.unchanged_s().items() if age > self.stale_after_s[name]}


def first_start(now: float, period_s: float, phase_s: float) -> float:
    """The first slot at or after ``now`` on the grid every poller shares: a whole number of
    cycles (the period, at most 1 s) of the loop's clock plus the phase."""
    cycle = min(period_s, 1.0)
    phase = phase_s % cycle
    slot = math.ceil((now - phase) / cycle)  # an integer: pollers of one slot get the same float
    return slot * cycle + phase


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
        phase_s: float | None = None,
        stale_after_s: Mapping[str, float] | None = None,
        progress: Progress | None = None,
        valid_ranges: Mapping[str, tuple[float, float, str]] | None = None,
    ) -> None:
        """``progress``: where each poll attempt is reported (the service's liveness registry);
        by default a marker of the poller's own that nobody watches. ``valid_ranges``: signal ->
        (lowest, highest, why) a value must lie in to be good (:mod:`gateway.validity`; values that
        are not finite numbers are bad whatever the ranges)."""
        self.driver = driver
        self.name = driver.name
        self.period_s = period_s
        self.backoff_max_s = backoff_max_s
        self.image = image
        self.outbox = outbox
        self.on_reading = on_reading
        self.stats = PollStats()
        self.stale = StaleWatch(stale_after_s or {})
        self.check = ValueCheck(self.name, valid_ranges or {})
        self._rng = rng or random.Random()  # jitter, not cryptography
        self._phase_s = phase_s
        self._backoff = Backoff(base_s=period_s, cap_s=max(backoff_max_s, period_s), rng=self._rng)
        self.down_reason: str | None = None
        self._down_cause: str | None = None
        self._known = False  # False until the first poll said whether the device is there
        self._connected = False
        self._overrun_logged_at = -math.inf
        self._overruns_logged = 0
        # A poll *attempt* is progress, failed or not: a device that is down is not a stuck poller.
        self.progress = progress or Progress(f"poll:{self.name}", bound_s=max(period_s, backoff_max_s) + 60.0)

    def _went_down(self, reason: str, cause: str) -> None:
        self.image.mark_unavailable(self.name, clock.wall_ns(), reason)
        self.stats.available = False
        if self.down_reason is None:
            # Once per outage, and for a device that is down at start too.
            log.warning("device_unavailable", device=self.name, cause=cause, reason=reason, at_start=not self._known)
        elif cause != self._down_cause:
            # Still down, for another kind of reason (a restarted PLC that now refuses the
            # password): the first line would otherwise be all the log ever says.
            log.warning("device_still_unavailable", device=self.name, cause=cause, reason=reason, was=self._down_cause)
        self.down_reason = reason
        self._down_cause = cause
        self._known = True

    def _came_back(self) -> None:
        self.stats.available = True
        if self.down_reason is not None or not self._known:
            log.info(
                "device_available", device=self.name, after_attempts=self._backoff.attempt, at_start=not self._known
            )
        self.down_reason = None
        self._down_cause = None
        self._known = True
        self._backoff.reset()

    async def poll_once(self) -> Reading | None:
        """Connect if needed and read once; ``None`` (and values marked bad) on failure."""
        try:
            if not self._connected:
                await self.driver.connect()
                self._connected = True
            reading = await self.driver.read()
        except DriverError as exc:
            self.stats.failures += 1
            if isinstance(exc, DeviceUnavailable | MalformedReply):
                # Timeouts, lost connections, replies that do not fit: start over on a fresh
                # connection, so a late or stray reply can never be taken for the answer to the
                # next request (and the next failure has the same cause, not "not connected").
                self._connected = False
                await self.driver.close()
            self._went_down(str(exc), cause_of(exc))
            return None
        except Exception as exc:  # a driver bug must not kill the poll task of this device
            self.stats.failures += 1
            self._connected = False
            await self.driver.close()
            log.exception("poll_crashed", device=self.name)
            self._went_down(f"internal error: {exc!r}", "internal_error")
            return None
        received_ns = clock.wall_ns()
        self.check.apply(reading)
        self.stats.bad_values += len(reading.bad)
        if reading.bad and not (reading.values or reading.uncertain or reading.texts):
            # It answers, but with nothing usable (only exception codes, only bad statuses).
            self.stats.failures += 1
            reasons = sorted(set(reading.bad.values()))
            more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
            self._went_down(f"every signal is bad: {reasons[0]}{more}", "device_fault")
            self.image.update(reading)  # after marking it down: each signal keeps its own reason
            return None
        self._came_back()
        self.stats.values += len(reading.values)
        self.stats.read_age_s.append((received_ns - reading.timestamp_ns) / 1e9)
        self.stale.update(reading)
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
        # Without a phase from the service, a random one spreads such pollers over the cycle.
        phase = self._rng.uniform(0, min(period, 1.0)) if self._phase_s is None else self._phase_s
        next_start = first_start(loop.time(), period, phase)
        try:
            while True:
                delay = next_start - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = loop.time()
                if started < next_start:  # timers may fire early on some loops
                    await asyncio.sleep(next_start - started)
                    started = loop.time()
                # The slot on the wall clock, to compare with the reading's (wall-clock) timestamp.
                slot_ns = clock.wall_ns() - int((started - next_start) * 1e9)
                self.stats.polls += 1
                reading = await self.poll_once()
                await self.progress.step()
                finished = loop.time()
                self.stats.last_duration_s = finished - started
                if reading is None:
                    # Back off from the failed attempt; keep to the period grid afterwards.
                    wait = max(period, self._backoff.next_s())
                    slots = math.ceil((finished + wait - next_start) / period)
                    next_start += max(1, slots) * period
                    continue
                self.stats.lateness_s.append((reading.timestamp_ns - slot_ns) / 1e9)
                next_start += period
                if finished > next_start:
                    self._overran(started, finished, next_start)
                    next_start += math.ceil((finished - next_start) / period) * period
        finally:
            await self.driver.close()

    def _overran(self, started: float, finished: float, next_start: float) -> None:
        missed = math.ceil((finished - next_start) / self.period_s)
        self.stats.overruns += 1
        self.stats.skipped_slots += missed
        # A device that is slow every time would log every period: once a minute is enough to
        # see it, with the counts since the last line.
        if finished - self._overrun_logged_at >= OVERRUN_LOG_INTERVAL_S:
            log.warning(
                "poll_overrun",
                device=self.name,
                duration_s=round(finished - started, 4),
                period_s=self.period_s,
                skipped=missed,
                overruns_since_last_log=self.stats.overruns - self._overruns_logged,
                skipped_total=self.stats.skipped_slots,
            )
            self._overrun_logged_at = finished
            self._overruns_logged = self.stats.overruns
