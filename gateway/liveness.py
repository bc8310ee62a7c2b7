"""Liveness: has every part of the service made progress recently enough?

A component (a device poller, the control loop, the historian's writer) registers under a name
with a *bound*: the longest it may legitimately go between two steps of its loop, waits and
backoff included. It then calls :meth:`Progress.beat` at the end of every step (or ``await
progress.step()`` in an async loop). The service asks :meth:`Liveness.stalled` before every
systemd ``WATCHDOG=1`` ping and withholds the ping while anything is stalled, so a poller or a
control task stuck in an await that never returns is restarted by systemd (``WatchdogSec=``)
instead of running on silently while a housekeeping task keeps feeding the watchdog.

What counts as a step is the component's own business: a poll *attempt* (a device that is down
is not a stalled poller: its failures are progress), a control cycle that completed (one that
raised is not progress, so cycles that keep failing stop the pings too).

Test-only fault injection, for the systemd watchdog test (tests/test_systemd.py): when the
environment variable ``HEAT_GATEWAY_TEST_HANG`` names components (comma-separated, e.g.
``poll:cdu-1,control``), the signal SIGUSR2 makes those components' next :meth:`Progress.step`
never return, as a hung await would. The hook is logged at warning level when armed and when
fired, and does nothing (SIGUSR2 keeps its default action) when the variable is unset.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from gateway.logs import get_logger

log = get_logger(__name__)

TEST_HANG_ENV = "HEAT_GATEWAY_TEST_HANG"


@dataclass(frozen=True, slots=True)
class Stall:
    """A component that made no progress within its bound."""

    name: str
    silent_s: float
    bound_s: float

    def __str__(self) -> str:
        return f"{self.name} silent {self.silent_s:.0f} s (bound {self.bound_s:g} s)"


class Progress:
    """One component's progress marker: :meth:`beat` after every step of its loop."""

    def __init__(self, name: str, bound_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if bound_s <= 0:
            msg = f"liveness bound of {name} must be positive, not {bound_s}"
            raise ValueError(msg)
        self.name = name
        self.bound_s = bound_s
        self._clock = clock
        self.last_s = clock()  # registering counts as progress: the bound runs from here
        self._allowance_s = 0.0  # a planned wait announced with the last beat
        self.steps = 0
        self.hang_armed = False  # test-only: see the module docstring

    def beat(self, *, then_wait_s: float = 0.0) -> None:
        """Record that the component completed a step now; ``then_wait_s``: a planned wait (a
        backoff) before the next step, allowed on top of the bound for this one gap."""
        self.last_s = self._clock()
        self._allowance_s = max(0.0, then_wait_s)
        self.steps += 1

    async def step(self) -> None:
        """:meth:`beat`, for async loops; never returns once the test-only hang was fired."""
        self.beat()
        if self.hang_armed:
            log.warning("test_hang_injected", component=self.name, env=TEST_HANG_ENV)
            await asyncio.get_running_loop().create_future()  # waits forever, like a hung await

    @property
    def allowance_s(self) -> float:
        """The planned wait announced with the last beat."""
        return self._allowance_s

    def silent_s(self, now_s: float | None = None) -> float:
        """Seconds since the last step (or since registration)."""
        return (self._clock() if now_s is None else now_s) - self.last_s


class Liveness:
    """The registry the service consults before feeding systemd's watchdog."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._components: dict[str, Progress] = {}

    def register(self, name: str, bound_s: float) -> Progress:
        """A new progress marker under ``name`` (replacing one of that name, e.g. after a reload)."""
        progress = Progress(name, bound_s, clock=self._clock)
        self.add(progress)
        return progress

    def add(self, progress: Progress) -> None:
        """Watch a marker a component made itself (replacing one of the same name)."""
        self._components[progress.name] = progress

    def remove(self, name: str) -> None:
        """Stop watching a component (it was stopped on purpose)."""
        self._components.pop(name, None)

    def __iter__(self) -> Iterator[Progress]:
        return iter(list(self._components.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def stalled(self) -> list[Stall]:
        """The components whose last step is older than their bound (empty: all alive)."""
        now = self._clock()
        return [
            Stall(p.name, p.silent_s(now), p.bound_s + p.allowance_s)
            for p in self._components.values()
            if p.silent_s(now) > p.bound_s + p.allowance_s
        ]

    def alive(self) -> bool:
        """Has every registered component made progress within its bound?"""
        return not self.stalled()

    def arm_test_hang(self) -> bool:
        """Install the test-only SIGUSR2 hook when ``HEAT_GATEWAY_TEST_HANG`` is set (see module doc)."""
        names = {n.strip() for n in os.environ.get(TEST_HANG_ENV, "").split(",") if n.strip()}
        if not names:
            return False

        def fire() -> None:
            hit = sorted(n for n in names if n in self._components)
            log.warning("test_hang_fired", components=hit, env=TEST_HANG_ENV)
            for name in hit:
                self._components[name].hang_armed = True

        log.warning("test_hang_armed", components=sorted(names), env=TEST_HANG_ENV, signal="SIGUSR2")
        with suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, fire)
        return True


class WatchdogFeeder:
    """systemd's watchdog, fed only while nothing is stalled; each change is logged once.

    ``period_s`` is ``watchdog_period_s()`` (None or 0 when systemd set no watchdog: then
    nothing is sent, but a stall is still logged). :meth:`tick` is called from the service's housekeeping
    loop, often; it pings at most once per period.
    """

    def __init__(self, liveness: Liveness, period_s: float | None, notify: Callable[[str], object]) -> None:
        self.liveness = liveness
        self.period_s = period_s
        self._notify = notify
        self._next_ping_s = -float("inf")
        self.withheld = False

    def tick(self, now_s: float) -> list[Stall]:
        """Ping when due and nothing is stalled; the stalled components either way."""
        stalled = self.liveness.stalled()
        if stalled and not self.withheld:
            log.error("watchdog_withheld", stalled=[str(s) for s in stalled], watchdog=bool(self.period_s))
        elif self.withheld and not stalled:
            log.info("watchdog_resumed")
        self.withheld = bool(stalled)
        if self.period_s and not stalled and now_s >= self._next_ping_s:
            self._notify("WATCHDOG=1")
            self._next_ping_s = now_s + self.period_s
        return stalled
