"""The gateway's two clocks, in one place, so a simulation can run the whole gateway on plant time.

- :func:`wall_ns`: wall-clock time in ns since the epoch. Stamps readings (when a poll's request
  went out), snapshots and write results; the controllers compute every input's age from these
  stamps, so they must come from the same clock as the snapshot's.
- :func:`monotonic`: seconds for durations and rate limits (write durations, the command rate
  limiter). OPC UA subscription ages stay on ``time.monotonic``: they are compared with
  asyncua's own publish times, so subscribe mode runs on real time only (the real-path
  simulation polls).

Schedules (poll periods, the control cycle, backoff, request timeouts) use the event loop's
clock (``loop.time()``), which is the third leg: ``heat-gateway simulate --real-path`` runs the
gateway on an event loop whose clock is the plant's (simulators/virtual_time.py) and points
these two at the same plant time with :func:`use`, so stale detection, input ages, heartbeats,
ramps and backoff all see one consistent time. ``heat-gateway run`` never calls :func:`use`:
the functions are ``time.time_ns`` and ``time.monotonic`` themselves.

Call them as ``clock.wall_ns()`` (attribute looked up at the call), never ``from gateway.clock
import wall_ns``, or a swap would not reach the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["monotonic", "reset", "use", "wall_ns"]

wall_ns: Callable[[], int] = time.time_ns
monotonic: Callable[[], float] = time.monotonic


def use(*, wall_ns_fn: Callable[[], int], monotonic_fn: Callable[[], float]) -> None:
    """Run the gateway on other clocks (a simulation's plant time); :func:`reset` undoes it."""
    global wall_ns, monotonic  # noqa: PLW0603 - the module attributes are the swap point by design
    wall_ns = wall_ns_fn
    monotonic = monotonic_fn


def reset() -> None:
    """Back to the system clocks."""
    use(wall_ns_fn=time.time_ns, monotonic_fn=time.monotonic)
