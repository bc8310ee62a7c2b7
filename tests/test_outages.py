"""Nothing is lost when the broker or the time-series server is down for a while."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time

from tests.live import PERIOD_S, Collector, running, wait_for, write_site


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
    finally:
        historian.terminate()
        historian.wait()
        collector.close()
