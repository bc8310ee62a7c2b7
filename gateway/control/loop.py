"""The live control cycle: snapshot -> supervisor -> writes, every ``control.cycle_s``.

Input -> process -> output, as OpenEMS does it: the cycle freezes a snapshot of the process
image, runs the pure :class:`Supervisor` on it, and hands the writes to the
:class:`WriteExecutor`, which sends them per device in the background, so a slow device never
delays the cycle. Every cycle publishes the control state (measurement ``control``) on
``{prefix}/{site}/control/metrics``; every write's outcome is published there too (measurement
``control_write``: requested, before, after, ok, reason).

Operator commands arrive as JSON on ``{prefix}/{site}/control/cmd``::

    {"id": "42", "mode": "manual", "manual_supply_temp_c": 72.0}

and are answered on ``{prefix}/{site}/control/ack`` with
``{"id": "42", "accepted": false, "reason": "...", "mode": "auto"}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.loader import Site
from gateway.control.executor import WriteExecutor, WriteRequest, WriteResult
from gateway.control.supervisor import Supervisor, SupervisorState, supervisor_for_site, write_limits_of
from gateway.drivers.base import Driver
from gateway.liveness import Progress
from gateway.logs import get_logger
from gateway.process_image import ProcessImage
from gateway.publish.lineprotocol import encode_fields, series_prefix
from gateway.publish.outbox import Message, Outbox
from gateway.sample import Reading

log = get_logger(__name__)

MAX_COMMAND_BYTES = 4096


class ControlLoop:
    """Runs the supervisor live against the process image and the device drivers."""

    def __init__(
        self,
        site: Site,
        image: ProcessImage,
        drivers: Mapping[str, Driver],
        outbox: Outbox[Reading | Message],
        *,
        supervisor: Supervisor | None = None,
        clock: Callable[[], float] | None = None,
        cycle_real_s: float | None = None,
    ) -> None:
        """``clock`` gives the controllers' time in seconds (default: the event loop's monotonic
        clock) and ``cycle_real_s`` the wall-clock period of the cycle (default ``cycle_s``):
        together they let a test run the live loop against an accelerated plant clock."""
        config = site.config
        self.site = site
        self.image = image
        self.outbox = outbox
        self.supervisor = supervisor or supervisor_for_site(site)
        self.cycle_s = cycle_real_s or self.supervisor.config.cycle_s
        self._clock = clock
        self.state = SupervisorState()
        base = f"{config.mqtt.topic_prefix}/{config.site}/control"
        self.command_topic = f"{base}/cmd"
        self._ack_topic = f"{base}/ack"
        self._metrics_topic = f"{base}/metrics"
        self._prefix = series_prefix("control", {"site": config.site})
        limits = write_limits_of(site)
        writable_devices = {device for device, _ in limits}
        self.executor = WriteExecutor(
            {name: driver for name, driver in drivers.items() if name in writable_devices},
            limits,
            read_before=self._present_value,
            on_result=self._publish_write,
        )
        self._commands: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot = image.snapshot(time.time_ns())
        self.cycles = 0
        self.overruns = 0
        # A completed cycle is progress; one that raised is not, so cycles that keep failing (or a
        # cycle task that hangs) stop the systemd watchdog pings and systemd restarts the service.
        # The bound covers the wait for first readings (at most 10 s) before the first cycle.
        self.progress = Progress("control", bound_s=max(15.0, 5 * self.cycle_s))

    # -- commands (paho thread -> event loop) -------------------------------------------------

    def on_command(self, _client: Any, _userdata: Any, message: Any) -> None:
        """paho callback: queue the payload for the next cycle (never blocks paho's thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue_command, bytes(message.payload))

    def _queue_command(self, payload: bytes) -> None:
        try:
            self._commands.put_nowait(payload)
        except asyncio.QueueFull:
            self._ack({"accepted": False, "reason": "too many commands queued; try again"})

    def _ack(self, body: dict[str, Any]) -> None:
        body.setdefault("mode", self.state.mode.value)
        self.outbox.put(Message(self._ack_topic, json.dumps(body).encode()))

    def _apply_commands(self) -> None:
        while not self._commands.empty():
            payload = self._commands.get_nowait()
            command_id: object = None
            if len(payload) > MAX_COMMAND_BYTES:
                self._ack({"accepted": False, "reason": f"command larger than {MAX_COMMAND_BYTES} bytes"})
                continue
            try:
                command = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._ack({"accepted": False, "reason": f"not valid JSON: {exc}"})
                log.warning("control_command_rejected", reason="not valid JSON", payload=payload[:200])
                continue
            if isinstance(command, dict):
                command_id = command.pop("id", None)
            self.state, ack = self.supervisor.apply_command(self.state, command)
            body: dict[str, Any] = {"accepted": ack.accepted, "reason": ack.reason}
            if command_id is not None:
                body["id"] = command_id
            self._ack(body)
            event = "control_command_applied" if ack.accepted else "control_command_rejected"
            log.info(event, command=command, reason=ack.reason, mode=self.state.mode.value)

    # -- writes -------------------------------------------------------------------------------

    def _present_value(self, device: str, signal: str) -> float | None:
        sample = self._snapshot.sample(device, signal)
        return None if math.isnan(sample.value) else sample.value

    def _publish_write(self, result: WriteResult) -> None:
        request = result.request
        if request.reason == "heartbeat" and result.ok:
            return  # a heartbeat a second per device is not news; failures are
        prefix = series_prefix("control_write", {"site": self.site.config.site, "device": request.device})
        fields: dict[str, float | int | bool | str] = {
            "signal": request.signal,
            "requested": request.value,
            "ok": result.ok,
            "reason": request.reason,
            "duration_s": result.duration_s,
        }
        if result.before is not None:
            fields["before"] = result.before
        if result.after is not None:
            fields["after"] = result.after
        if result.error is not None:
            fields["error"] = result.error[:200]
        line = f"{prefix} {encode_fields(fields)} {result.timestamp_ns}"
        self.outbox.put(Message(self._metrics_topic, line.encode()))

    # -- the cycle ----------------------------------------------------------------------------

    def cycle(self, now_ns: int, now_s: float) -> None:
        """One control cycle (public for tests): commands, snapshot, supervisor, writes, status."""
        self._apply_commands()
        self._snapshot = self.image.snapshot(now_ns)
        result = self.supervisor.step(self._snapshot, self.state, now_s)
        self.state = result.state
        for write in result.writes:
            self.executor.submit(WriteRequest(write.device, write.signal, write.value, write.reason))
        fields = encode_fields(dict(result.status))
        if fields:
            self.outbox.put(Message(self._metrics_topic, f"{self._prefix} {fields} {now_ns}".encode()))
        self.cycles += 1

    async def _run_cycles(self) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while True:
            delay = next_start - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self.cycle(time.time_ns(), self._clock() if self._clock is not None else loop.time())
            except Exception:
                # A bug in a controller must not stop the cycle (and with it the heartbeats the
                # devices' watchdogs need): log it and try again next cycle.
                log.exception("control_cycle_failed", cycle=self.cycles)
            else:
                await self.progress.step()
            next_start += self.cycle_s
            late = loop.time() - next_start
            if late > 0:
                skipped = math.ceil(late / self.cycle_s)
                self.overruns += 1
                log.warning("control_cycle_overrun", late_s=round(late, 3), skipped=skipped)
                next_start += skipped * self.cycle_s

    async def _first_readings(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every device has been polled once, so the first
        cycle decides on data instead of putting everything in its no-data safe state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        devices = {device.name for device in self.site.config.devices if device.enabled}
        while loop.time() < deadline:
            if devices <= set(self.image.snapshot(time.time_ns()).readings):
                return
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """The cycle and the per-device writers, until cancelled."""
        self._loop = asyncio.get_running_loop()
        slowest = max((d.poll_period_s + d.timeout_s for d in self.site.config.devices if d.enabled), default=1.0)
        await self._first_readings(min(slowest, 10.0))
        log.info(
            "control_started",
            cycle_s=self.cycle_s,
            cdus=len(self.supervisor.cdus),
            mode=self.state.mode.value,
            command_topic=self.command_topic,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.executor.run(), name="control-writes")
            group.create_task(self._run_cycles(), name="control-cycle")
