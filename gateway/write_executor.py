"""Carry the controllers' writes to the devices without letting one device hold up another.

Each device has its own writer task and a "latest wins" slot per signal: the control cycle
drops its writes in and returns at once. A device that is slow or down delays only its own
writes; a newer value for the same signal replaces one not yet sent (a stale setpoint is
never worth sending late). Every write is checked once more against the profile's limits
(the controllers clamp already: this is the last line), logged with the value before and the
value read back after, and reported through ``on_result`` for publishing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway import clock
from gateway.drivers.base import Driver, DriverError
from gateway.logs import get_logger

log = get_logger(__name__)

INFO_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One setpoint to send: device, signal, engineering value and why."""

    device: str
    signal: str
    value: float
    reason: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of a write."""

    request: WriteRequest
    before: float | None
    after: float | None
    error: str | None
    duration_s: float
    timestamp_ns: int
    cause: str | None = None
    """Why it failed, as the driver error's ``cause``: ``timeout``, ``unavailable`` and ``refused``
    (the device was not reached) or ``device_fault``, ``write_refused``, ... (it said no)."""

    @property
    def ok(self) -> bool:
        """True when the device confirmed the value."""
        return self.error is None


class WriteExecutor:
    """Per-device writer tasks with latest-wins slots."""

    def __init__(
        self,
        drivers: Mapping[str, Driver],
        limits: Mapping[tuple[str, str], tuple[float, float]],
        *,
        read_before: Callable[[str, str], float | None],
        on_result: Callable[[WriteResult], None],
        timeout_s: float = 5.0,
    ) -> None:
        self._drivers = drivers
        self._limits = limits
        self._read_before = read_before
        self._on_result = on_result
        self._timeout_s = timeout_s
        self._pending: dict[str, dict[str, WriteRequest]] = {name: {} for name in drivers}
        self._wake: dict[str, asyncio.Event] = {name: asyncio.Event() for name in drivers}
        self.refused = 0
        self.failed = 0
        self.done = 0
        self._failing: set[str] = set()
        self._last_info: dict[tuple[str, str], tuple[float, str]] = {}

    def submit(self, request: WriteRequest) -> bool:
        """Queue a write (replacing a queued one for the same signal); False if refused here."""
        limits = self._limits.get((request.device, request.signal))
        if request.device not in self._drivers or limits is None:
            self.refused += 1
            log.error("write_refused", device=request.device, signal=request.signal, reason="not a writable signal")
            return False
        low, high = limits
        if not math.isfinite(request.value) or not low <= request.value <= high:
            self.refused += 1
            log.error(
                "write_refused",
                device=request.device,
                signal=request.signal,
                value=request.value,
                limits=[low, high],
                reason="outside the profile's limits",
                source=request.reason,
            )
            return False
        self._pending[request.device][request.signal] = request
        self._wake[request.device].set()
        return True

    async def _device_writer(self, device: str) -> None:
        driver = self._drivers[device]
        wake = self._wake[device]
        pending = self._pending[device]
        while True:
            if not pending:
                wake.clear()
                await wake.wait()
            signal, request = next(iter(pending.items()))
            del pending[signal]
            before = self._read_before(device, signal)
            started = clock.monotonic()
            after: float | None = None
            error: str | None = None
            cause: str | None = None
            try:
                async with asyncio.timeout(self._timeout_s):
                    after = await driver.write(signal, request.value)
            except DriverError as exc:
                error = str(exc)
                cause = exc.cause
            except TimeoutError:
                error = f"{device}: write of {signal} not confirmed within {self._timeout_s} s"
                cause = "timeout"
            duration = clock.monotonic() - started
            result = WriteResult(request, before, after, error, duration, clock.wall_ns(), cause)
            if error is None:
                self.done += 1
                if device in self._failing:
                    self._failing.discard(device)
                    log.info("writes_resumed", device=device)
                # Every write is published (control_write) for the audit trail; the journal gets
                # a line per signal at most every INFO_INTERVAL_S, or when the reason changes,
                # so a PI trim moving a setpoint by 0.01 K a second does not flood it.
                # Heartbeats go out at every device's period: only their failures are news.
                key = (device, signal)
                last = self._last_info.get(key)
                now = clock.monotonic()
                newsworthy = request.reason != "heartbeat" and (
                    last is None or now - last[0] >= INFO_INTERVAL_S or last[1] != request.reason
                )
                if newsworthy:
                    self._last_info[key] = (now, request.reason)
                (log.info if newsworthy else log.debug)(
                    "setpoint_written",
                    device=device,
                    signal=signal,
                    before=before,
                    requested=request.value,
                    after=after,
                    reason=request.reason,
                    duration_ms=round(duration * 1000, 1),
                )
            else:
                self.failed += 1
                # Once per outage: a device that is down fails every write until it is back.
                level = log.debug if device in self._failing else log.warning
                self._failing.add(device)
                level("setpoint_write_failed", device=device, signal=signal, value=request.value, error=error)
            self._on_result(result)

    async def run(self) -> None:
        """One writer task per device, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for device in self._drivers:
                group.create_task(self._device_writer(device), name=f"write:{device}")
