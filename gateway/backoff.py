"""Reconnect backoff: capped exponential waits with jitter, one way for the whole gateway.

A device poller, the historian's database writes and the MQTT client all retry something that
is down. They wait ``base_s * 2**attempt`` capped at ``cap_s``, with "equal jitter" (half the
wait fixed, half random) so that many gateways, or many devices behind one endpoint, that lost
their peer at the same moment do not all come back at the same moment, and no wait is ever
shorter than half the nominal one.

:func:`backoff_s` is the pure formula (the random source is passed in, so tests are
deterministic); :class:`Backoff` keeps the attempt count for one thing being retried.
"""

from __future__ import annotations

import random

# 2**30 x any sensible base is far above any cap: stops the float growing for ever on a long outage.
_MAX_EXPONENT = 30


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry number ``attempt`` (0 for the first retry), in seconds.

    Between ``ceiling / 2`` and ``ceiling``, where ``ceiling = min(cap_s, base_s * 2**attempt)``.
    """
    if base_s <= 0 or cap_s <= 0:
        msg = f"backoff needs base_s > 0 and cap_s > 0, got base_s={base_s}, cap_s={cap_s}"
        raise ValueError(msg)
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    jitter: float = rng.uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


class Backoff:
    """The retry schedule of one thing: :meth:`next_s` after each failure, :meth:`reset` after a success."""

    __slots__ = ("_rng", "attempt", "base_s", "cap_s")

    def __init__(self, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        backoff_s(0, base_s=base_s, cap_s=cap_s, rng=random.Random(0))  # validate now, not at the first failure
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()  # jitter, not cryptography
        self.attempt = 0

    def next_s(self) -> float:
        """The wait before the next retry; each call counts one more failed attempt."""
        wait = backoff_s(self.attempt, base_s=self.base_s, cap_s=self.cap_s, rng=self._rng)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """The thing works again: the next failure starts from ``base_s``."""
        self.attempt = 0
