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
import contextlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from gateway import clock as clocks
from gateway.config.loader import Site
from gateway.control.commands import ParsedCommand, RateLimiter, parse_command, salvage_id
from gateway.control.crosscheck import SensorCrossCheck
from gateway.control.supervisor import CommandAck, Supervisor, SupervisorState, supervisor_for_site
from gateway.drivers.base import Driver
from gateway.liveness import Progress
from gateway.logs import get_logger
from gateway.process_image import ProcessImage
from gateway.publish.lineprotocol import encode_fields, series_prefix
from gateway.publish.outbox import Message, Outbox
from gateway.sample import Reading
from gateway.write_executor import WriteExecutor, WriteRequest, WriteResult

log = get_logger(__name__)


BUDGET_WARNING_INTERVAL_S = 60.0


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
        # the bare topic (sender unknown) and one per broker user, which the ACL guarantees
        self.command_topics = (self.command_topic, f"{self.command_topic}/+")
        self._ack_topic = f"{base}/ack"
        self._metrics_topic = f"{base}/metrics"
        self._prefix = series_prefix("control", {"site": config.site})
        # Exactly what the supervisor may write: bound role outputs and declared heartbeats.
        limits = self.supervisor.limits
        writable_devices = {device for device, _ in limits}
        self.executor = WriteExecutor(
            {name: driver for name, driver in drivers.items() if name in writable_devices},
            limits,
            read_before=self._present_value,
            on_result=self._publish_write,
        )
        self._policy = self.supervisor.config.commands
        self._limiter = RateLimiter(self._policy.rate_per_s, self._policy.burst)
        self._commands: asyncio.Queue[tuple[ParsedCommand, str | None]] = asyncio.Queue(maxsize=100)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot = image.snapshot(clocks.wall_ns())
        self.cycles = 0
        self.status: Mapping[str, Any] = {}  # the last cycle's status (what it publishes)
        # Called with every write's outcome (after it is published); a simulation counts them here.
        self.on_write: list[Callable[[WriteResult], None]] = []
        self.overruns = 0
        self._budget_warned: dict[str, float] = {}
        self.failed_cycles = 0  # cycles that raised (each logged with its cause)
        cfg = self.supervisor.config
        roles = self.supervisor.roles
        self._dh_sensors = SensorCrossCheck(
            cfg.dh_sensors_max_diff_k, cfg.dh_sensors_after_s, cfg.dh_sensors_min_power_kw
        )
        self._read_role = roles.reader(self._good_now, cfg.input_max_age_s)  # role inputs, by the bindings
        # A completed cycle is progress; one that raised is not, so cycles that keep failing (or a
        # cycle task that hangs) stop the systemd watchdog pings and systemd restarts the service.
        # The bound covers the wait for first readings (at most 10 s) before the first cycle.
        self.progress = Progress("control", bound_s=max(15.0, 5 * self.cycle_s))

    # -- commands (paho thread -> event loop -> cycle) -----------------------------------------

    def on_command(self, _client: Any, _userdata: Any, message: Any) -> None:
        """MQTT callback: hand the message to the event loop, for :meth:`receive` (never blocks the
        caller; works from paho's thread and from the loop, before :meth:`run` too)."""
        loop = self._loop
        if loop is None:
            with contextlib.suppress(RuntimeError):  # not on a loop: nowhere to queue it yet
                loop = asyncio.get_running_loop()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway has stopped
                loop.call_soon_threadsafe(
                    self.receive, bytes(message.payload), str(message.topic), bool(message.retain)
                )

    def sender_of(self, topic: str) -> str | None:
        """The broker user a command came from: the last level of ``.../control/cmd/{user}``,
        which the shipped ACL lets only that user publish to (None on the bare ``control/cmd``)."""
        sender = topic.removeprefix(self.command_topic + "/")
        return sender if sender != topic and sender and "/" not in sender else None

    def receive(self, payload: bytes, topic: str, retained: bool = False) -> None:
        """Take one command off the wire (event loop): parse, check and queue it for the next
        cycle, or refuse it with an ack. Never raises: the command is answered either way."""
        sender = self.sender_of(topic)
        parsed = ParsedCommand(None)
        try:
            parsed, refusal = self._admit(payload, sender, retained=retained)
        except Exception as exc:  # a command may fail, never the gateway: it is refused and answered
            log.exception("control_command_failed", sender=sender, payload=payload[:200])
            refusal = f"internal error: {type(exc).__name__}"
        if refusal is None:
            try:
                self._commands.put_nowait((parsed, sender))
            except asyncio.QueueFull:
                refusal = f"too many commands queued ({self._commands.maxsize}); try again"
        if refusal is not None:
            self._answer(parsed, sender, accepted=False, reason=refusal, payload=payload)

    def _admit(self, payload: bytes, sender: str | None, *, retained: bool) -> tuple[ParsedCommand, str | None]:
        """The command, and why it is refused before it reaches the cycle (None: queue it).

        The rate limit comes first, so a flood costs one regular-expression search per message
        (for the id in the ack), not a parse."""
        allowed, report = self._limiter.take(sender or "", clocks.monotonic())
        if report:
            self._log_rate_limited(sender, report)
        if not allowed:
            refusal = f"rate limit: more than {self._policy.rate_per_s:g} commands/s from {sender or 'unidentified'}"
            return ParsedCommand(salvage_id(payload)), refusal
        parsed = parse_command(payload)
        if retained and not self._policy.accept_retained:
            return parsed, (
                "retained command refused (it would be applied again at every restart): publish it without "
                "retain, and clear the retained message with an empty retained payload"
            )
        return parsed, parsed.error

    def _log_rate_limited(self, sender: str | None, refused: int) -> None:
        log.warning(
            "control_commands_rate_limited",
            sender=sender,
            refused=refused,  # since the last line about this sender
            rate_per_s=self._policy.rate_per_s,
            burst=self._policy.burst,
        )

    def _answer(
        self, parsed: ParsedCommand, sender: str | None, *, accepted: bool, reason: str, payload: bytes = b""
    ) -> None:
        """Publish the ack on ``control/ack`` and log the outcome (rate-limit refusals are
        summarised by ``control_commands_rate_limited`` instead)."""
        body: dict[str, Any] = {"accepted": accepted, "reason": reason, "mode": self.state.mode.value}
        if parsed.id is not None:
            body["id"] = parsed.id
        if sender is not None:
            body["sender"] = sender
        self.outbox.put(Message(self._ack_topic, json.dumps(body).encode()))
        if reason.startswith("rate limit"):
            return
        # Every value from a command is logged as repr: escaped, whatever bytes it holds.
        context = {"id": parsed.id, "sender": sender, "reason": reason, "mode": self.state.mode.value}
        if accepted:
            log.info("control_command_applied", command=repr(dict(parsed.values))[:300], **context)
        elif parsed.values:
            log.warning("control_command_rejected", command=repr(dict(parsed.values))[:300], **context)
        else:
            log.warning("control_command_rejected", payload=repr(payload[:200]), **context)

    def _apply_commands(self) -> None:
        """Apply the queued commands in order, each on its own: one that fails is answered and
        the others and the cycle go on."""
        for source, refused in self._limiter.overdue(clocks.monotonic()):
            self._log_rate_limited(source or None, refused)
        while not self._commands.empty():
            parsed, sender = self._commands.get_nowait()
            try:
                self.state, ack = self.supervisor.apply_command(self.state, parsed.values)
            except Exception as exc:  # a command may fail, never the cycle: refused and answered
                log.exception("control_command_failed", id=parsed.id, sender=sender)
                ack = CommandAck(accepted=False, reason=f"internal error: {type(exc).__name__}")
            self._answer(parsed, sender, accepted=ack.accepted, reason=ack.reason)

    # -- writes -------------------------------------------------------------------------------

    def _present_value(self, device: str, signal: str) -> float | None:
        sample = self._snapshot.sample(device, signal)
        return None if math.isnan(sample.value) else sample.value

    def _publish_write(self, result: WriteResult) -> None:
        for observer in self.on_write:
            observer(result)
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
        overdrawn = result.status.get("write_budget_exceeded")
        if overdrawn:
            self._warn_budget(str(overdrawn).split(","), now_s)
        for write in result.writes:
            self.executor.submit(WriteRequest(write.device, write.signal, write.value, write.reason))
        status = dict(result.status)
        self._check_dh_sensors(status, now_s)
        self.status = status
        fields = encode_fields(status)
        if fields:
            self.outbox.put(Message(self._metrics_topic, f"{self._prefix} {fields} {now_ns}".encode()))
        self.cycles += 1

    def _good_now(self, device: str, signal: str, max_age_s: float) -> float | None:
        """A good value of the current cycle's snapshot (the snapshot changes every cycle)."""
        return self._snapshot.good(device, signal, max_age_s)

    def _check_dh_sensors(self, status: dict[str, Any], now_s: float) -> None:
        """The meter's and the station's supply against each other (gateway.control.crosscheck)."""
        read, roles = self._read_role, self.supervisor.roles
        meter, station = roles.heat_meter, roles.station_plc
        meter_c, station_c = read(meter, "flow_temp_c"), read(station, "dh_supply_temp_c")
        check = self._dh_sensors
        if check.update(meter_c, station_c, read(meter, "heat_power_kw"), now_s):
            if check.alarm:
                log.warning(
                    "dh_sensors_disagree",
                    meter=meter,
                    meter_supply_c=meter_c,
                    station=station,
                    station_supply_c=station_c,
                    for_s=check.after_s,
                    hint="one of them is wrong: check both profiles' scale, offset and byte order "
                    "(heat-gateway read) and both sensors; the DH trim stays within dh_trim_max_k",
                )
            else:
                log.info("dh_sensors_agree", meter_supply_c=meter_c, station_supply_c=station_c)
        status["dh_sensors_diff_k"] = check.diff_k
        status["alarm_dh_sensors"] = check.alarm

    def _warn_budget(self, devices: list[str], now_s: float) -> None:
        """A device written more often than its budget allows: once a minute per device."""
        for device in devices:
            last = self._budget_warned.get(device)
            if last is None or now_s - last >= BUDGET_WARNING_INTERVAL_S:
                self._budget_warned[device] = now_s
                role = self.supervisor.roles.devices.get(device)
                log.warning(
                    "write_budget_exceeded",
                    device=device,
                    budget_per_h=role.write_budget_per_h if role is not None else None,
                    setpoint_writes_total=self.state.setpoint_writes_total,
                )

    async def _run_cycles(self) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while True:
            delay = next_start - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self.cycle(clocks.wall_ns(), self._clock() if self._clock is not None else loop.time())
            except Exception as exc:
                # A bug in a controller must not stop the cycle (and with it the heartbeats the
                # devices' watchdogs need): log it and try again next cycle.
                self.failed_cycles += 1
                log.exception("control_cycle_failed", cycle=self.cycles, cause=f"{type(exc).__name__}: {exc}"[:300])
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
            if devices <= set(self.image.snapshot(clocks.wall_ns()).readings):
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
