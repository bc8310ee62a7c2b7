"""The liveness registry: who is stalled, judged on an injected clock (no timing in the test)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.liveness import Liveness, Progress, WatchdogFeeder


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_component_is_stalled_only_past_its_bound() -> None:
    clock = Clock()
    liveness = Liveness(clock=clock)
    poller = liveness.register("poll:cdu-1", bound_s=10.0)
    control = liveness.register("control", bound_s=5.0)
    assert liveness.alive()
    clock.now_s += 6.0
    assert [s.name for s in liveness.stalled()] == ["control"]
    control.beat()
    assert liveness.alive()
    clock.now_s += 4.5
    poller.beat()
    clock.now_s += 1.0
    stalls = liveness.stalled()
    assert [s.name for s in stalls] == ["control"]
    assert stalls[0].silent_s == pytest.approx(5.5)
    assert str(stalls[0]) == "control silent 6 s (bound 5 s)"


def test_remove_and_replace() -> None:
    clock = Clock()
    liveness = Liveness(clock=clock)
    liveness.register("poll:a", bound_s=1.0)
    clock.now_s += 2.0
    assert not liveness.alive()
    liveness.add(Progress("poll:a", bound_s=1.0, clock=clock))  # a restarted poller starts afresh
    assert liveness.alive()
    clock.now_s += 2.0
    liveness.remove("poll:a")
    assert liveness.alive()
    assert "poll:a" not in liveness


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="poll:x"):
        Progress("poll:x", bound_s=0)


def test_step_counts_and_returns_when_not_armed() -> None:
    progress = Progress("control", bound_s=1.0)
    asyncio.run(progress.step())
    assert progress.steps == 1


def test_the_watchdog_is_fed_once_a_period_and_never_while_stalled() -> None:
    clock = Clock()
    liveness = Liveness(clock=clock)
    control = liveness.register("control", bound_s=5.0)
    sent: list[str] = []
    feeder = WatchdogFeeder(liveness, 2.0, sent.append)
    for _ in range(8):  # 4 s of housekeeping ticks, 0.5 s apart
        control.beat()
        assert feeder.tick(clock.now_s) == []
        clock.now_s += 0.5
    assert sent == ["WATCHDOG=1"] * 2
    clock.now_s += 6.0  # control silent past its bound
    assert [s.name for s in feeder.tick(clock.now_s)] == ["control"]
    assert feeder.withheld
    assert len(sent) == 2
    control.beat()
    assert feeder.tick(clock.now_s) == []
    assert sent == ["WATCHDOG=1"] * 3
    assert not feeder.withheld


def test_without_a_systemd_watchdog_nothing_is_sent_but_stalls_still_show() -> None:
    clock = Clock()
    liveness = Liveness(clock=clock)
    liveness.register("control", bound_s=1.0)
    sent: list[str] = []
    feeder = WatchdogFeeder(liveness, 0.0, sent.append)
    clock.now_s += 2.0
    assert feeder.tick(clock.now_s)
    assert sent == []
