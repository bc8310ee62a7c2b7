"""Nothing is lost when the broker or the time-series server is down for a while."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.sample import Reading
from tests.live import PERIOD_S, Collector, running, wait_for, write_site
from tests.services import MosquittoServer


def gaps(timestamps: list[int]) -> list[float]:
    """Gaps between consecutive readings, in seconds, larger than 1.5 poll periods."""
    return [(b - a) / 1e9 for a, b in itertools.pairwise(timestamps) if (b - a) / 1e9 > 1.5 * PERIOD_S]


async def test_broker_outage_loses_no_reading(tmp_path, fresh_mosquitto, victoria):
    site_path = write_site(tmp_path, fresh_mosquitto.port, victoria.url, cdus=2)
    collector = Collector(fresh_mosquitto.port, persistent=True)
    try:
        async with running(site_path, historian=False) as (_site, _plant, _simulated, gateway, _hist):
            await wait_for(lambda: len(collector.timestamps("cdu-1")) >= 5, 5, "first readings")
            await asyncio.to_thread(fresh_mosquitto.stop)  # graceful: the collector's session is saved
            outage_s = 3.0
            await asyncio.sleep(outage_s)
            polls_during = next(p for p in gateway.pollers if p.name == "cdu-1").stats.polls
            assert gateway.publisher.pending > 0, "the publisher should be holding messages"
            await asyncio.to_thread(fresh_mosquitto.start)
            await wait_for(lambda: gateway.publisher.pending == 0, 40, "the publisher to catch up")
            stamps_now = time.time_ns()
            await wait_for(
                lambda: collector.timestamps("cdu-1") and collector.timestamps("cdu-1")[-1] >= stamps_now - 10**9,
                10,
                "fresh readings after the outage",
            )
        stamps = collector.timestamps("cdu-1")
        stats = next(p for p in gateway.pollers if p.name == "cdu-1").stats
        assert polls_during > outage_s / PERIOD_S / 2  # polling went on during the outage
        # Every reading the poller produced arrived (a slot the poller itself skipped because
        # the machine stalled is counted as an overrun, not as a reading).
        # (The last poll may have been cut short by the stop: it produced no reading.)
        produced = stats.polls - stats.failures
        assert produced - 1 <= len(set(stamps)) <= produced, "readings from the outage are missing"
        assert len(gaps(stamps)) <= stats.skipped_slots
        assert len(stamps) == len(set(stamps)) or len(stamps) - len(set(stamps)) < 5  # QoS 1: rare duplicates only
        assert gateway.outbox.dropped == 0
    finally:
        collector.close()


async def test_database_outage_loses_no_line(tmp_path, mosquitto, fresh_victoria):
    site_path = write_site(tmp_path, mosquitto.port, fresh_victoria.url, cdus=1)
    collector = Collector(mosquitto.port)
    try:
        async with running(site_path) as (_site, _plant, _simulated, _gateway, historian):
            assert historian is not None
            await wait_for(lambda: historian.lines_written >= 5, 10, "first lines written")
            await asyncio.to_thread(fresh_victoria.stop)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(fresh_victoria.start)
            await wait_for(lambda: historian._db_down_since is None and not historian._inbox, 30, "catch-up")
            await asyncio.sleep(5 * PERIOD_S)
            cutoff_ns = time.time_ns() - 10**9  # readings older than this have had time to be written
        published = [ts for ts in collector.timestamps("cdu-1") if ts < cutoff_ns]
        series = await asyncio.to_thread(
            fresh_victoria.wait_for_export, 'cdu_tcs_supply_temp_c{device="cdu-1"}', min_points=len(published)
        )
        stored_ms = set(series[0]["timestamps"])
        missing = [ts for ts in published if ts // 10**6 not in stored_ms]
        assert missing == [], f"{len(missing)} of {len(published)} readings never reached the database"
        assert historian.messages_dropped == 0
    finally:
        collector.close()


async def test_killed_historian_loses_no_line(tmp_path, mosquitto, fresh_victoria):
    """SIGKILL the historian process: the broker keeps its session and redelivers what it had
    not acknowledged, so the restarted historian writes every reading."""
    site_path = write_site(tmp_path, mosquitto.port, fresh_victoria.url, cdus=1)
    collector = Collector(mosquitto.port)
    argv = [sys.executable, "-m", "gateway", "historian", "-c", str(site_path)]
    historian = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with running(site_path, historian=False):
            first = await asyncio.to_thread(
                fresh_victoria.wait_for_export, 'cdu_tcs_supply_temp_c{device="cdu-1"}', min_points=3
            )
            # Readings from before the historian's first subscription had no session to wait in.
            start_ms = first[0]["timestamps"][0]
            historian.kill()
            historian.wait()
            await asyncio.sleep(2.0)  # readings published now wait in the broker for the session
            historian = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(2.0)
            cutoff_ns = time.time_ns() - 10**9
        published = [ts for ts in collector.timestamps("cdu-1") if start_ms * 10**6 <= ts < cutoff_ns]
        series = await asyncio.to_thread(
            fresh_victoria.wait_for_export, 'cdu_tcs_supply_temp_c{device="cdu-1"}', min_points=len(published)
        )
        stored_ms = set(series[0]["timestamps"])
        missing = [ts for ts in published if ts // 10**6 not in stored_ms]
        assert len(published) > 15
        assert missing == [], f"{len(missing)} of {len(published)} readings never reached the database"
        assert duplicates(collector) == 0, "metrics messages crossed the broker twice"
    finally:
        historian.terminate()
        historian.wait()
        collector.close()


# -- fault tests that count (device, timestamp) pairs end to end ---------------------------------
#
# Each runs simulated CDUs, the gateway and the historian against a private broker and a private
# victoria-metrics, injects one fault for OUTAGE_S seconds, and then compares what the gateway
# polled with what the time-series server stored (lost) and what crossed the broker (duplicates).
# The figure is 60 s (HEAT_GATEWAY_OUTAGE_S=60); the suite runs 8 s to stay within
# `make test`'s time budget, and bench/README.md records both.

OUTAGE_S = float(os.environ.get("HEAT_GATEWAY_OUTAGE_S", "8"))
#: gateway kill -9 during a frozen link: messages in the dead process's socket may cross twice
#: (one per device and poll in flight at the kill, two CDUs here)
DEAD_SOCKET_DUPLICATES = 2


class Polled:
    """Wraps the gateway's outbox to note every reading the pollers produced (device, ms)."""

    def __init__(self, gateway) -> None:
        self.pairs: set[tuple[str, int]] = set()
        outbox = gateway.outbox
        put = outbox.put

        def recording_put(item) -> None:
            if isinstance(item, Reading) and item.values:
                self.pairs.add((item.device, item.timestamp_ns // 10**6))
            put(item)

        outbox.put = recording_put


def stored_pairs(victoria) -> list[tuple[str, int]]:
    """(device, ms) of every cdu sample, one per (device, timestamp) per series field, as stored."""
    victoria.flush()
    pairs: set[tuple[str, int]] = set()
    for series in victoria.export('{__name__=~"cdu_.*",site="e2e"}'):
        pairs.update((series["metric"]["device"], ts) for ts in series["timestamps"])
    return sorted(pairs)


def duplicates(collector: Collector) -> int:
    """Metrics messages the gateway sent to the broker more than once (a copy the broker itself
    redelivered to the collector, flagged DUP, is the broker's and not counted)."""
    with collector.lock:
        keys = [(topic, payload.rsplit(b" ", 1)[1]) for _, topic, payload in collector.messages if "/cdu-" in topic]
        redelivered = sum(1 for topic in collector.redelivered if "/cdu-" in topic)
    return max(0, len(keys) - len(set(keys)) - redelivered)


async def run_fault(tmp_path, broker, victoria, fault) -> tuple[set, list, int, object]:
    """Run the site, apply ``fault(broker, victoria)`` (a coroutine), let everything settle,
    and return (polled, stored, duplicates at the broker, gateway)."""
    site_path = write_site(tmp_path, broker.port, victoria.url, cdus=2)
    collector = Collector(broker.port, persistent=True)
    try:
        async with running(site_path) as (_site, _plant, _simulated, gateway, historian):
            polled = Polled(gateway)
            assert historian is not None
            await wait_for(lambda: historian.lines_written >= 10, 15, "first lines written")
            await wait_for(lambda: gateway.publisher.historian_online, 5, "the historian's status")
            await fault(broker, victoria)
            # Catch up: the gateway holds nothing, and (the historian reconnects with backoff, up
            # to mqtt.reconnect_max_s after a long outage) the database has what was polled.
            await wait_for(lambda: gateway.publisher.pending == 0, 60 + OUTAGE_S, "the gateway to catch up")
            last_ms = time.time_ns() // 10**6 - 1000
            polled_settled = {pair for pair in polled.pairs if pair[1] <= last_ms}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stored = await asyncio.to_thread(stored_pairs, victoria)
                if polled_settled <= set(stored):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)  # late duplicates would arrive now
        stored = await asyncio.to_thread(stored_pairs, victoria)
        return polled_settled, stored, duplicates(collector), gateway
    finally:
        collector.close()


def assert_nothing_lost(polled: set, stored: list, dups: int) -> None:
    missing = sorted(polled - set(stored))
    assert len(polled) > OUTAGE_S / PERIOD_S, "too few readings to judge"
    assert missing == [], f"{len(missing)} of {len(polled)} polled readings never stored: {missing[:5]}"
    assert dups == 0, f"{dups} metrics messages crossed the broker twice"


@pytest.fixture
def slow_autosave_mosquitto(tmp_path):
    """A broker whose persistence (autosave every 30 min) is far slower than any outage here."""
    broker = MosquittoServer(workdir=tmp_path / "mosquitto", autosave_interval_s=1800)
    broker.start()
    yield broker
    broker.close()


@pytest.mark.slow
async def test_broker_stopped_nothing_lost(tmp_path, fresh_mosquitto, fresh_victoria):
    async def fault(broker, _victoria):
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(broker.start)

    polled, stored, dups, _gateway = await run_fault(tmp_path, fresh_mosquitto, fresh_victoria, fault)
    assert_nothing_lost(polled, stored, dups)


@pytest.mark.slow
async def test_broker_frozen(tmp_path, fresh_mosquitto, fresh_victoria):
    async def fault(broker, _victoria):
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            os.kill(broker.pid, signal.SIGCONT)

    polled, stored, dups, _gateway = await run_fault(tmp_path, fresh_mosquitto, fresh_victoria, fault)
    assert_nothing_lost(polled, stored, dups)


@pytest.mark.slow
async def test_broker_killed_before_it_saved(tmp_path, slow_autosave_mosquitto, fresh_victoria):
    """kill -9 while messages it acknowledged still wait for the historian (the database is
    frozen first, so the broker holds a queue it never saved): the gateway kept them until the
    historian's receipt, sees later ones receipted, and sends the lost ones again."""

    async def fault(broker, victoria):
        os.kill(victoria.pid, signal.SIGSTOP)  # the broker now queues for the historian
        try:
            await asyncio.sleep(2.0)
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(broker.start)
        finally:
            os.kill(victoria.pid, signal.SIGCONT)

    polled, stored, dups, gateway = await run_fault(tmp_path, slow_autosave_mosquitto, fresh_victoria, fault)
    missing = sorted(polled - set(stored))
    assert missing == [], f"{len(missing)} of {len(polled)} polled readings never stored: {missing[:5]}"
    assert gateway.publisher.resent_lost > 0, "the broker should have lost acknowledged messages"
    # The collector's own session died with the broker, so it cannot judge duplicates here.
    del dups


@pytest.mark.slow
async def test_time_series_server_frozen(tmp_path, fresh_mosquitto, fresh_victoria):
    async def fault(_broker, victoria):
        os.kill(victoria.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            os.kill(victoria.pid, signal.SIGCONT)

    polled, stored, dups, _gateway = await run_fault(tmp_path, fresh_mosquitto, fresh_victoria, fault)
    assert_nothing_lost(polled, stored, dups)


def gaps_in(stamps_ms: list[int], period_s: float) -> list[tuple[int, int]]:
    """Consecutive stored readings further apart than 1.8 poll periods: one missing reading leaves
    ~2 periods; a poll started late on a loaded machine only stretches one gap a little."""
    return [(a, b) for a, b in itertools.pairwise(sorted(stamps_ms)) if (b - a) / 1000 > 1.8 * period_s]


def skipped_slots(log_path) -> int:
    """Poll slots the gateway itself skipped on a stalled machine (poll_overrun carries totals)."""
    return sum(
        max(
            (
                json.loads(line).get("skipped_total", 0) + 1
                for line in log_path.read_text().splitlines()
                if '"poll_overrun"' in line and f'"{device}"' in line
            ),
            default=0,
        )
        for device in ("cdu-1", "cdu-2")
    )


@pytest.mark.slow
def test_gateway_killed_during_a_frozen_link(tmp_path, fresh_mosquitto, fresh_victoria):
    """Broker frozen (TCP open, no PUBACK), gateway SIGKILLed, broker thawed, a new gateway: every
    reading polled more than ~2 s before the kill is stored, and at most what sat in the dead
    process's socket crosses the broker twice."""
    site_path = write_site(tmp_path, fresh_mosquitto.port, fresh_victoria.url, cdus=2)
    module = [sys.executable, "-m", "gateway"]
    simulator = subprocess.Popen([*module, "simulate", "-c", str(site_path)], stdout=subprocess.DEVNULL)
    logs = [(tmp_path / f"gateway-{i}.log").open("wb") for i in (1, 2)]
    historian_log = (tmp_path / "historian.log").open("wb")
    historian = subprocess.Popen(
        [*module, "historian", "-c", str(site_path)], stdout=historian_log, stderr=historian_log
    )
    collector = Collector(fresh_mosquitto.port, persistent=True)
    run = [*module, "run", "-c", str(site_path)]
    gateways = [subprocess.Popen(run, stdout=logs[0], stderr=subprocess.STDOUT)]
    assert fresh_mosquitto.pid is not None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(collector.timestamps("cdu-1")) < 10:
            time.sleep(0.05)
        assert len(collector.timestamps("cdu-1")) >= 10, "no metrics from the gateway process"
        first_ms = collector.timestamps("cdu-1")[0] // 10**6
        os.kill(fresh_mosquitto.pid, signal.SIGSTOP)
        time.sleep(OUTAGE_S / 2)
        kill_ms = time.time_ns() // 10**6
        gateways[0].send_signal(signal.SIGKILL)
        assert gateways[0].wait(5) == -signal.SIGKILL
        time.sleep(OUTAGE_S / 2)
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        gateways.append(subprocess.Popen(run, stdout=logs[1], stderr=subprocess.STDOUT))
        settled_ms = kill_ms - 2000  # the bound: nothing read more than ~2 s before the kill is lost
        skipped = skipped_slots(tmp_path / "gateway-1.log")

        def stored_gaps() -> list[tuple[int, int]]:
            fresh_victoria.flush()
            found = []
            for device in ("cdu-1", "cdu-2"):
                series = fresh_victoria.export(f'cdu_tcs_supply_temp_c{{device="{device}"}}')
                stamps = [ts for s in series for ts in s["timestamps"] if first_ms <= ts <= settled_ms]
                found += gaps_in([first_ms, *stamps, settled_ms], PERIOD_S)
            return found

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(stored_gaps()) > skipped:
            time.sleep(0.2)
        assert len(stored_gaps()) <= skipped, f"readings from before the kill are missing: {stored_gaps()[:5]}"
        time.sleep(2.0)
        # A message the killed process had already written into its socket reaches the broker
        # when it thaws; the new gateway cannot know that and, unless the historian's receipt
        # for it arrived first, sends it again from the spool. Seen once in about four runs of
        # the full suite (docs/nothing-lost.md): the same point, stored once by InfluxDB.
        assert duplicates(collector) <= DEAD_SOCKET_DUPLICATES, "messages crossed the broker twice"
    finally:
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        for process in (*gateways, historian, simulator):
            if process.poll() is None:
                process.kill()
            process.wait()
        for log in (*logs, historian_log):
            log.close()
        collector.close()
