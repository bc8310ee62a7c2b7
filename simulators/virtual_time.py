"""An asyncio event loop whose clock is the plant's: time moves only when nothing is left to do.

``heat-gateway simulate --real-path`` runs the simulated devices (Modbus TCP and OPC UA
servers on loopback sockets), the whole gateway and the plant in one process, on this loop:

- ``loop.time()`` is *virtual*: it starts at 0 and stands still while anything is runnable
  (a callback, a socket with data, a reply on its way); when the loop would sleep it jumps
  straight to the next timer instead (the next poll, control cycle, plant step, timeout);
- every socket is real: requests and replies are encoded, sent and decoded by the real code
  over real loopback TCP, and the loop waits for them as any loop does;
- the gateway's wall clock and monotonic clock (gateway/clock.py) are pointed at the same
  virtual time, so reading timestamps, input ages, stale detection, heartbeats, ramps, backoff
  and request timeouts all see the plant's time.

Why not wall-clock scaling (poll periods, cycle and timeouts divided by the speed-up, as the
first live test did at 40x): at 100x a 60 s device watchdog is 0.6 s of real time, and on a
loaded 2-core machine a scheduling hiccup or a collection pause of that length trips it, so a
run fails for reasons that are not in the plant or the gateway. Here a busy machine only makes
the run take longer; it cannot make a reply late in plant time.

What it cannot see: work done in another *thread* or process. A job handed to an executor
(``asyncio.to_thread``, ``getaddrinfo``) is tracked and time stands still until it finishes;
anything else that talks to the outside (an MQTT broker in another process) answers in real
time, which is why the real-path run points MQTT at nobody. Loopback TCP data is readable by the
receiver when ``send()`` returns (the kernel delivers it in the sender's context), so a request
in flight cannot be overtaken by a time jump.

``speed`` caps the pace (plant seconds per real second, 0 = as fast as the CPU allows): time
never runs ahead of ``speed`` x the real time since the start, so a viewer can follow a run.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop"]

_T = TypeVar("_T")

BUSY_WAIT_S = 0.002
"""Real seconds to wait for a thread's result before looking again (virtual time stands still)."""
IDLE_WAIT_S = 0.05
"""Real seconds to wait when no timer is scheduled (only outside events can wake the loop)."""


class _VirtualSelector(selectors.BaseSelector):
    """The real selector, except that an empty wait moves the virtual clock instead of sleeping."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._inner.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        loop = self._loop
        if loop.threads_busy:
            # A thread works for the loop: its result is due "now" in plant time.
            loop.real_waits += 1
            return self._inner.select(BUSY_WAIT_S)
        if timeout is None:
            return self._inner.select(IDLE_WAIT_S)
        target = loop.now + timeout
        if loop.speed > 0:
            wait = loop.started_real + target / loop.speed - time.monotonic()
            if wait > 0:
                events = self._inner.select(wait)
                if events:
                    paced = (time.monotonic() - loop.started_real) * loop.speed
                    loop.now = max(loop.now, min(target, paced))
                    return events
        loop.now = target
        loop.jumps += 1
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (see the module docstring)."""

    def __init__(self, *, speed: float = 0.0) -> None:
        self.now = 0.0
        self.speed = speed
        self.started_real = time.monotonic()
        self.threads_busy = 0
        self.jumps = 0  # times the clock jumped to the next timer
        self.real_waits = 0  # times it waited in real time for a thread
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self.now

    def run_in_executor(self, executor: Executor | None, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """As usual, and virtual time stands still until the job is done."""
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1
