"""``heat-gateway run``: pollers, control loop, publisher and housekeeping in one TaskGroup.

What systemd is told (``Type=notify``, gateway/notify.py):

- ``READY=1`` once the first poll of every device was *tried* (answered or failed) and the
  first connection attempt to the broker ended: connected, or refused/unreachable and the spool
  took over (without a spool, memory); after ``BROKER_READY_WAIT_S`` at the latest if the
  attempt hangs.
- ``STATUS=`` whenever the summary changes: devices up/down (naming those down), broker, control
  mode, and any stalled component (``systemctl status`` shows the line).
- ``WATCHDOG=1`` every ``WatchdogSec/2``, but only while every poller and the control loop made
  progress within its bound (gateway/liveness.py): a stuck task stops the pings and systemd
  restarts the service.

SIGHUP reloads the site file (:meth:`Gateway.reload`): ``RELOADING=1``, then a valid file is
applied (pollers of changed, added or removed devices restarted or stopped, the others kept; the
publisher and its spool kept unless ``mqtt``, ``site`` or ``state_dir`` changed; the control
loop rebuilt when its section or one of its devices changed) and an invalid one is refused with
its error logged, the running configuration kept; ``READY=1`` either way.

Stops on SIGTERM/SIGINT: pollers stop first, then the publisher flushes what it holds and
says ``offline``; the whole stop takes well under the 5 s systemd allows.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import clock
from gateway.config.loader import ConfigError, Site, load_site
from gateway.config.site import Device, ModbusDevice
from gateway.control.roles import RoleMap
from gateway.control_loop import ControlLoop
from gateway.drivers.base import Driver
from gateway.drivers.factory import make_driver
from gateway.health import HealthServer
from gateway.liveness import Liveness, Progress, WatchdogFeeder
from gateway.logs import get_logger
from gateway.notify import sd_notify, sd_notify_reloading, watchdog_period_s
from gateway.poller import DevicePoller
from gateway.process_image import ProcessImage
from gateway.publish.lineprotocol import encode_fields, series_prefix
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Message, Outbox
from gateway.sample import Reading
from gateway.validity import site_ranges, site_roles

if TYPE_CHECKING:
    from gateway.historian import Historian

log = get_logger(__name__)

STATS_PERIOD_S = 10.0
FREEZE_AFTER_S = 3.0  # connections and sessions are up by then
TICK_S = 0.5  # housekeeping: liveness, STATUS and watchdog checked this often
# READY=1 waits this long at most for the broker's first answer (a connect attempt that hangs):
# the devices are polled and controlled meanwhile, and the connection keeps retrying.
BROKER_READY_WAIT_S = 15.0


# Devices (unit ids) whose polls start in the same event-loop turn: see poll_phases.
POLL_GROUP = 8


def _endpoint(device: Device) -> str:
    return f"{device.host}:{device.port}" if isinstance(device, ModbusDevice) else device.name


def poll_phases(devices: Iterable[Device]) -> dict[str, float]:
    """Where in its cycle (its period, at most 1 s) each device's polls start, by device name.

    Devices with the same period are put in groups of up to :data:`POLL_GROUP` units, and the
    groups are spread evenly over the cycle; a group's polls start together, in one turn of the
    event loop (the poller keeps to a grid shared by all pollers). Waking once for several
    devices instead of once for each costs much less CPU: on 2026-12-01, 50 devices at 1 Hz,
    ~200 us per poll instead of ~600 us with every device at its own phase, on a busy 2-core
    machine (bench/README.md "Speed cases"). A group is small enough that its replies are
    decoded and published within about a millisecond of each other.

    Units behind one Modbus endpoint are always in one group (a group may be larger than
    :data:`POLL_GROUP` for them): they are polled back to back and leave the rest of the period
    idle on their shared connection, where probes of a unit that is down fit (see
    gateway.drivers.modbus).
    """
    endpoints: dict[float, dict[str, list[str]]] = {}
    for device in devices:
        endpoints.setdefault(device.poll_period_s, {}).setdefault(_endpoint(device), []).append(device.name)
    phases: dict[str, float] = {}
    for period, by_endpoint in endpoints.items():
        groups: list[list[str]] = []
        for key in sorted(by_endpoint):  # stable: the same site gives the same phases
            names = by_endpoint[key]
            if not groups or (groups[-1] and len(groups[-1]) + len(names) > POLL_GROUP):
                groups.append([])
            groups[-1].extend(names)
        cycle = min(period, 1.0)
        for index, group in enumerate(groups):
            for name in group:
                phases[name] = index * cycle / len(groups)
    return phases


def _phase_s(device: Device) -> float:
    """The phase of a device polled on its own (or with the units on its endpoint)."""
    return poll_phases([device])[device.name]


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def poll_bound_s(device: Device) -> float:
    """The longest legitimate gap between two poll attempts of a device, with room to spare:
    the backoff wait plus a poll that times out on each of its requests."""
    return max(device.poll_period_s, device.backoff_max_s) + 10 * device.timeout_s + 5.0


def _enabled(site: Site) -> dict[str, Device]:
    return {d.name: d for d in site.config.devices if d.enabled}


@dataclass(slots=True)
class ReloadPlan:
    """What a reload changes (device names), decided before anything is touched."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    publisher: bool = False  # restart the publisher (mqtt, site or state_dir changed)
    control: bool = False  # rebuild the control loop
    control_state_kept: bool = True  # carry the mode and the controllers' state over
    not_applied: list[str] = field(default_factory=list)  # sections that apply only at a restart

    @classmethod
    def between(cls, old: Site, new: Site) -> ReloadPlan:
        """Compare two validated sites."""
        plan = cls()
        old_devices, new_devices = _enabled(old), _enabled(new)
        for name, device in new_devices.items():
            if name not in old_devices:
                plan.added.append(name)
            elif device != old_devices[name] or new.profile_of(device) != old.profile_of(old_devices[name]):
                plan.changed.append(name)
            else:
                plan.kept.append(name)
        plan.removed = [name for name in old_devices if name not in new_devices]
        a, b = old.config, new.config
        plan.publisher = (a.mqtt, a.site, old.path.parent / a.state_dir) != (
            b.mqtt,
            b.site,
            new.path.parent / b.state_dir,
        )
        touched = {*plan.added, *plan.removed, *plan.changed}
        plan.control_state_kept = a.control == b.control and a.site == b.site
        plan.control = not plan.control_state_kept or plan.publisher or (b.control is not None and bool(touched))
        plan.not_applied = [key for key in ("logging", "http") if getattr(a, key) != getattr(b, key)]
        return plan

    @property
    def devices_touched(self) -> bool:
        """Does the reload start or stop any poller?"""
        return bool(self.added or self.removed or self.changed)


class Gateway:
    """Everything ``heat-gateway run`` runs, built from a validated site."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.image = ProcessImage()
        self.outbox: Outbox[Reading | Message] = Outbox(site.config.mqtt.queue_size)
        self.liveness = Liveness()
        self.publisher = self._make_publisher(site)
        phases = poll_phases(_enabled(site).values())
        roles = site_roles(site)
        self._pollers = {
            name: self._make_poller(site, device, phases[name], roles) for name, device in _enabled(site).items()
        }
        for poller in self._pollers.values():
            self.liveness.add(poller.progress)
        self.control = self._make_control(site, {p.name: p.driver for p in self._pollers.values()})
        if self.control is not None:
            self._adopt_control(self.control)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._requests: asyncio.Queue[str] = asyncio.Queue()
        self.ready = False
        self.reloads = 0  # reloads applied (refused ones are not counted)
        self._status = ""
        http = site.config.http
        self.health = (
            HealthServer(
                http.host,
                http.gateway_port,
                stalled=lambda: [str(s) for s in self.liveness.stalled()],
                stats_lines=lambda: self.stats_message().payload.decode().splitlines(),
                name="gateway",
            )
            if http is not None
            else None
        )

    # -- building the parts (constructors touch no sockets or files) -------------------------

    def _make_publisher(self, site: Site) -> MqttPublisher:
        config = site.config
        return MqttPublisher(
            config.mqtt,
            config.site,
            {d.name: d.kind for d in _enabled(site).values()},
            self.outbox,
            # a relative state_dir is relative to the site file (joining an absolute one keeps it)
            spool_dir=site.path.parent / config.state_dir / "spool",
        )

    def _make_poller(self, site: Site, device: Device, phase_s: float, roles: RoleMap | None) -> DevicePoller:
        return DevicePoller(
            make_driver(site, device),
            period_s=device.poll_period_s,
            backoff_max_s=device.backoff_max_s,
            image=self.image,
            outbox=self.outbox,
            phase_s=phase_s,
            stale_after_s={
                name: signal.stale_after_s
                for name, signal in site.profile_of(device).signals.items()
                if signal.stale_after_s is not None
            },
            valid_ranges=site_ranges(site, device, roles),
            # watched (self.liveness.add) from when it starts
            progress=Progress(f"poll:{device.name}", bound_s=poll_bound_s(device)),
        )

    def _make_control(self, site: Site, drivers: dict[str, Driver]) -> ControlLoop | None:
        if site.config.control is None:
            return None
        return ControlLoop(site, self.image, drivers, self.outbox)

    def _adopt_control(self, control: ControlLoop) -> None:
        """Watch its progress and route its commands to it."""
        self.liveness.add(control.progress)
        for topic in control.command_topics:
            self.publisher.subscribe(topic, control.on_command)

    @property
    def pollers(self) -> list[DevicePoller]:
        """The running device pollers."""
        return list(self._pollers.values())

    @property
    def _stats_topic(self) -> str:
        config = self.site.config
        return f"{config.mqtt.topic_prefix}/{config.site}/gateway/metrics"

    # -- tasks --------------------------------------------------------------------------------

    def _start(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._group is not None, "tasks start inside run()"
        self._tasks[name] = self._group.create_task(coroutine, name=name)

    async def _stop(self, *names: str) -> None:
        tasks = [task for name in names if (task := self._tasks.pop(name, None)) is not None]
        await _cancel_all(tasks)

    def request_reload(self) -> None:
        """Ask the running gateway to re-read its site file (the SIGHUP handler)."""
        self._requests.put_nowait("reload")

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._requests.put_nowait("stop")

    # -- what systemd is told ------------------------------------------------------------------

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

    def status_line(self) -> str:
        """The one-line summary for ``STATUS=`` (``systemctl status``) and the reload log."""
        pollers = self.pollers
        down = sorted(p.name for p in pollers if not p.stats.available)
        parts = [f"devices {len(pollers) - len(down)}/{len(pollers)} up"]
        if down:
            shown = ", ".join(down[:5]) + (f" +{len(down) - 5}" if len(down) > 5 else "")
            parts[0] += f" (down: {shown})"
        if self.publisher.connected:
            parts.append("broker connected")
        elif self.publisher.spool is not None:
            parts.append(f"broker unreachable, spooling ({self.publisher.spool.waiting} waiting)")
        else:
            parts.append("broker unreachable")
        if self.control is not None:
            parts.append(f"control {self.control.state.mode.value}")
        stalled = self.liveness.stalled()
        if stalled:
            parts.append("STALLED " + ", ".join(str(s) for s in stalled) + ": watchdog not fed")
        if not self.ready:
            tried = sum(1 for p in pollers if p.progress.steps > 0)
            parts.insert(0, f"starting: first polls {tried}/{len(pollers)} tried")
        return "; ".join(parts)

    def _first_polls_tried(self) -> bool:
        return all(p.progress.steps > 0 for p in self._pollers.values())

    def _broker_settled(self, waited_s: float) -> bool:
        # The first attempt ended: connected, or refused/unreachable and the spool (or, without
        # one, memory) takes what the broker does not. A hung attempt gives up after a while.
        return self.publisher.connection.answered or waited_s >= BROKER_READY_WAIT_S

    async def _announce_ready(self) -> None:
        """READY=1 once every device's first poll was tried and the broker answered (or the spool took over)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not (self._first_polls_tried() and self._broker_settled(loop.time() - started)):  # noqa: ASYNC110
            # three conditions from three places (pollers, paho's thread, the clock): polling them
            # is simpler than an event each would have to set
            await asyncio.sleep(0.05)
        self.ready = True
        self._status = self.status_line()
        sd_notify(f"READY=1\nSTATUS={self._status}")
        log.info("gateway_ready", waited_s=round(loop.time() - started, 2), status=self._status)

    async def _housekeeping(self) -> None:
        watchdog = watchdog_period_s()
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_stats = started + STATS_PERIOD_S
        feeder = WatchdogFeeder(self.liveness, watchdog, sd_notify)
        frozen = False
        while True:
            await asyncio.sleep(min(TICK_S, watchdog) if watchdog else TICK_S)
            now = loop.time()
            if not frozen and now - started >= FREEZE_AFTER_S:
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
            feeder.tick(now)
            if self.ready:
                status = self.status_line()
                if status != self._status:
                    self._status = status
                    sd_notify(f"STATUS={status}")
            if now >= next_stats:
                next_stats += STATS_PERIOD_S
                self.outbox.put(self.stats_message())

    def stats_message(self) -> Message:
        """One ``gateway`` line per device: poll health for the dashboard."""
        lines = []
        now = clock.wall_ns()
        for poller in self.pollers:
            stats = poller.stats
            lateness = list(stats.lateness_s)
            read_age = list(stats.read_age_s)
            tags = {"site": self.site.config.site, "device": poller.name}
            stale = poller.stale.stale()
            fields = encode_fields(
                {
                    "available": stats.available,
                    "polls": stats.polls,
                    "failures": stats.failures,
                    "overruns": stats.overruns,
                    "skipped_slots": stats.skipped_slots,
                    "bad_values": stats.bad_values,
                    "lateness_p50_s": _percentile(lateness, 0.5),
                    "lateness_p99_s": _percentile(lateness, 0.99),
                    "read_age_p50_s": _percentile(read_age, 0.5),
                    "read_age_p99_s": _percentile(read_age, 0.99),
                    "stale_signals": len(stale),
                    "invalid_signals": poller.check.invalid,
                }
            )
            lines.append(f"{series_prefix('gateway', tags)} {fields} {now}")
            # One line per watched signal (profile key stale_after_s): its publishing quality.
            for name, unchanged_s in poller.stale.unchanged_s().items():
                quality = "stale" if name in stale else "good"
                signal_fields = encode_fields({"quality": quality, "unchanged_s": round(unchanged_s, 3)})
                lines.append(f"{series_prefix('gateway', {**tags, 'signal': name})} {signal_fields} {now}")
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

    # -- reload -------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the site file; apply it if valid, keep running as is if not. True if applied."""
        sd_notify_reloading()
        path = self.site.path
        log.info("reload_requested", file=str(path))
        try:
            # parsing a file is blocking work: off the event loop
            new = await asyncio.to_thread(load_site, path, unused=("influxdb",))
            plan = ReloadPlan.between(self.site, new)
            await self._apply(new, plan)
        except ConfigError as exc:
            log.error("reload_refused", file=str(path), error=str(exc), kept="the running configuration")  # noqa: TRY400 - the message is the point, not a traceback
            applied = False
        except Exception as exc:
            # a bug in building the new parts must not take down a gateway that runs fine
            log.exception(
                "reload_failed",
                file=str(path),
                error=repr(exc),
                kept="the running configuration (pollers of changed devices may run the new one)",
            )
            applied = False
        else:
            self.reloads += 1
            applied = True
        self._status = self.status_line()
        sd_notify(f"READY=1\nSTATUS={self._status}")
        return applied

    async def _swap_publisher(self, publisher: MqttPublisher) -> None:
        """Stop the running publisher and start ``publisher``; if it cannot start, one with the running
        settings again (never run without a publisher) and the reload fails."""
        await self._stop("mqtt-publisher")
        await self.publisher.stop()  # flushes, says offline, closes the spool for the new one
        try:
            publisher.start()  # opens the spool: the new state_dir may not be writable
        except Exception:
            # Never run without a publisher: one with the running mqtt settings again, the
            # control commands routed to it; the reload fails (pollers may be swapped already).
            publisher = self._make_publisher(self.site)
            publisher.start()
            self.publisher = publisher
            self._start("mqtt-publisher", publisher.run())
            if self.control is not None:
                self._adopt_control(self.control)
            raise
        self.publisher = publisher
        self._start("mqtt-publisher", publisher.run())

    async def _apply(self, new: Site, plan: ReloadPlan) -> None:
        """Build what the new site needs first (a failure there changes nothing), then swap."""
        devices = _enabled(new)
        phases = poll_phases(devices.values())
        roles = site_roles(new)
        fresh = {
            name: self._make_poller(new, devices[name], phases[name], roles) for name in (*plan.added, *plan.changed)
        }
        publisher = self._make_publisher(new) if plan.publisher else None
        control = None
        if plan.control:
            drivers = {name: (fresh.get(name) or self._pollers[name]).driver for name in devices}
            control = self._make_control(new, drivers)
        # -- from here on the running gateway changes --
        gone = [*plan.removed, *plan.changed]
        await self._stop(*(f"poll:{name}" for name in gone))
        now_ns = clock.wall_ns()
        for name in gone:
            self._pollers.pop(name)
            if name in plan.removed:
                self.liveness.remove(f"poll:{name}")
                self.image.mark_unavailable(name, now_ns, "removed from the configuration")
        for name, poller in fresh.items():
            self._pollers[name] = poller
            self.liveness.add(poller.progress)
            self._start(f"poll:{name}", poller.run())
        for name in plan.kept:  # the control section may bind other signals now
            self._pollers[name].check.ranges = site_ranges(new, devices[name], roles)
        if publisher is not None:
            await self._swap_publisher(publisher)
        else:
            self.publisher.set_devices({d.name: d.kind for d in devices.values()})
        if plan.control:
            await self._stop("control")
            self.liveness.remove("control")
            if control is not None:
                if self.control is not None and plan.control_state_kept:
                    control.state = self.control.state  # same supervisor config: mode and PIDs go on
                self._adopt_control(control)
                self._start("control", control.run())
            self.control = control
        self.site = new
        log.info(
            "reload_applied",
            file=str(new.path),
            restarted=plan.changed,
            added=plan.added,
            removed=plan.removed,
            kept=len(plan.kept),
            publisher="restarted" if plan.publisher else "kept",
            control=("rebuilt" if plan.control else "kept") if new.config.control is not None else "none",
            control_state="kept" if plan.control_state_kept else "reset",
            not_applied_until_restart=plan.not_applied,
        )

    # -- run ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly."""
        self.publisher.start()
        log.info(
            "gateway_started",
            site=self.site.config.site,
            devices=len(self._pollers),
            broker=f"{self.site.config.mqtt.host}:{self.site.config.mqtt.port}",
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],  # asyncio or uvloop
        )
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for poller in self.pollers:
                    self._start(f"poll:{poller.name}", poller.run())
                self._start("mqtt-publisher", self.publisher.run())
                self._start("housekeeping", self._housekeeping())
                if self.health is not None:
                    self._start("http-endpoint", self.health.serve())
                if self.control is not None:
                    self._start("control", self.control.run())
                self._start("readiness", self._announce_ready())
                self._start("stop-watch", self._watch_stop(stop))
                self.liveness.arm_test_hang()
                while await self._requests.get() != "stop":
                    await self.reload()
                sd_notify("STOPPING=1")
                await _cancel_all(list(self._tasks.values()))
                self._tasks.clear()
        finally:
            self._group = None
            await self.publisher.stop()
            log.info("gateway_stopped")


async def _cancel_all(tasks: list[asyncio.Task[None]], timeout_s: float = 4.0) -> None:
    """Cancel the tasks and wait, cancelling again any that is still running.

    Python 3.11's ``asyncio.wait_for`` can drop a cancellation that arrives just as the awaited
    result completes (fixed in 3.12): a task then keeps running and the TaskGroup would wait for
    it forever. pymodbus' client, which the Modbus driver used until 2026-12-01, awaited every
    reply with it (seen in ~1 of 3 benchmark stops at 10 Hz); libraries still may.
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


def install_signals(stop: asyncio.Event, reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT set ``stop``; SIGHUP (systemctl reload: ExecReload= in the units)
    calls ``reload``, which re-reads the site file."""
    loop = asyncio.get_running_loop()
    for sig, handler in ((signal.SIGTERM, stop.set), (signal.SIGINT, stop.set), (signal.SIGHUP, reload)):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler)


async def serve(site: Site) -> None:
    """The ``run`` command's body."""
    stop = asyncio.Event()
    gateway = Gateway(site)
    install_signals(stop, gateway.request_reload)
    await gateway.run(stop)


class HistorianService:
    """``heat-gateway historian`` under systemd: READY, STATUS, WATCHDOG on progress, SIGHUP.

    ``READY=1`` once the broker answered and the subscription is sent (or after
    ``BROKER_READY_WAIT_S``: the broker keeps the persistent session's messages meanwhile);
    ``STATUS=`` broker, database and counts; ``WATCHDOG=1`` only while the historian's loop turns
    (gateway/liveness.py). SIGHUP re-reads the site file: a valid one whose ``mqtt``, ``influxdb``
    or ``site`` changed rebuilds the historian (what it had not acknowledged is redelivered by the
    broker, so nothing is lost), an invalid one is refused and logged; ``READY=1`` either way.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        self.liveness = Liveness()
        self.historian = self._make(site)
        self._requests: asyncio.Queue[str] = asyncio.Queue()
        self.ready = False
        self.reloads = 0

    def _make(self, site: Site) -> Historian:
        config = site.config
        if config.influxdb is None:
            msg = f"{site.path}: influxdb: the historian needs an influxdb section (url, org, bucket, token)"
            raise ConfigError(msg)
        from gateway.historian import Historian  # noqa: PLC0415 - influxdb_client only where it is used

        historian = Historian(config.mqtt, config.influxdb, config.site, http=config.http)
        self.liveness.add(historian.progress)
        return historian

    def request_reload(self) -> None:
        """The SIGHUP handler."""
        self._requests.put_nowait("reload")

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._requests.put_nowait("stop")

    async def _housekeeping(self) -> None:
        watchdog = watchdog_period_s()
        loop = asyncio.get_running_loop()
        started = loop.time()
        feeder = WatchdogFeeder(self.liveness, watchdog, sd_notify)
        status = ""
        while True:
            await asyncio.sleep(min(TICK_S, watchdog) if watchdog else TICK_S)
            now = loop.time()
            answered = self.historian.subscribed or self.historian.connection.answered
            if not self.ready and (answered or now - started >= BROKER_READY_WAIT_S):
                self.ready = True
                status = self.historian.status_line()
                sd_notify(f"READY=1\nSTATUS={status}")
                log.info("historian_ready", waited_s=round(now - started, 2), status=status)
            stalled = feeder.tick(now)
            if self.ready:
                line = self.historian.status_line()
                if stalled:
                    line += "; STALLED " + ", ".join(str(s) for s in stalled) + ": watchdog not fed"
                if line != status:
                    status = line
                    sd_notify(f"STATUS={status}")

    async def _reload(self, group: asyncio.TaskGroup, task: asyncio.Task[None]) -> asyncio.Task[None]:
        sd_notify_reloading()
        path = self.site.path
        log.info("reload_requested", file=str(path))
        try:
            new = await asyncio.to_thread(load_site, path, unused=("control",))
            a, b = self.site.config, new.config
            if (a.mqtt, a.influxdb, a.site) != (b.mqtt, b.influxdb, b.site):
                historian = self._make(new)  # raises before anything is stopped
                await _cancel_all([task])
                self.historian = historian
                task = group.create_task(historian.run(), name="historian")
                log.info("reload_applied", file=str(path), historian="rebuilt")
            else:
                log.info("reload_applied", file=str(path), historian="kept (its sections did not change)")
            self.site = new
            self.reloads += 1
        except ConfigError as exc:
            log.error("reload_refused", file=str(path), error=str(exc), kept="the running configuration")  # noqa: TRY400 - the message is the point, not a traceback
        except Exception as exc:
            log.exception(
                "reload_failed",
                file=str(path),
                error=repr(exc),
                kept="the running configuration (pollers of changed devices may run the new one)",
            )
        sd_notify(f"READY=1\nSTATUS={self.historian.status_line()}")
        return task

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; the historian's own failure ends it (systemd restarts)."""
        async with asyncio.TaskGroup() as group:
            task = group.create_task(self.historian.run(), name="historian")
            others = [
                group.create_task(self._housekeeping(), name="historian-housekeeping"),
                group.create_task(self._watch_stop(stop), name="stop-watch"),
            ]
            self.liveness.arm_test_hang()
            while await self._requests.get() != "stop":
                task = await self._reload(group, task)
            sd_notify("STOPPING=1")
            await _cancel_all([task, *others])


async def serve_historian(site: Site) -> None:
    """The ``historian`` command's body."""
    stop = asyncio.Event()
    service = HistorianService(site)
    install_signals(stop, service.request_reload)
    await service.run(stop)
