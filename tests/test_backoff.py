"""Reconnect backoff: doubling from the base, capped, jittered within [half, whole] of the nominal wait."""

from __future__ import annotations

import random

import pytest

from gateway.backoff import Backoff, backoff_s


def test_doubles_from_the_base_and_stops_at_the_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (50, 10.0), (10_000, 10.0)]:
        for _ in range(200):
            wait = backoff_s(attempt, base_s=1.0, cap_s=10.0, rng=rng)
            assert ceiling / 2 <= wait <= ceiling, (attempt, wait)


def test_jitter_spreads_the_waits_over_the_upper_half() -> None:
    rng = random.Random(7)
    waits = [backoff_s(5, base_s=1.0, cap_s=8.0, rng=rng) for _ in range(2000)]
    assert min(waits) < 4.2  # reaches down near half the cap ...
    assert max(waits) > 7.8  # ... and up near the cap: gateways that lost a peer together spread out
    assert len({round(w, 6) for w in waits}) > 1900


def test_same_seed_same_schedule() -> None:
    first = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(3))
    second = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(3))
    assert [first.next_s() for _ in range(12)] == [second.next_s() for _ in range(12)]


def test_reset_starts_again_from_the_base() -> None:
    schedule = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(0))
    waits = [schedule.next_s() for _ in range(8)]
    assert schedule.attempt == 8
    assert waits[-1] >= 30.0  # 2**7 = 128 s nominal, capped at 60 s: at least half of that
    schedule.reset()
    assert schedule.attempt == 0
    assert 0.5 <= schedule.next_s() <= 1.0


@pytest.mark.parametrize(("base_s", "cap_s"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_rejects_a_schedule_that_would_spin(base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=base_s, cap_s=cap_s)
