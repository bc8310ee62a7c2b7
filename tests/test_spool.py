"""The MQTT spool: records survive damage, the size cap holds, and nothing is lost when the
broker is down, even when the gateway process is killed during the outage."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from gateway.config.site import Mqtt
from gateway.publish import mqtt as mqtt_module
from gateway.publish import spool as spool_module
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Message, Outbox
from gateway.publish.spool import FILE_MAGIC, Spool, SpoolError, encode_record
from tests.live import PERIOD_S, REPO, Collector, running, wait_for
from tests.services import free_port

# -- helpers -----------------------------------------------------------------------------------


async def read_all(spool: Spool) -> list[tuple[str, bytes]]:
    """Everything the replay would send, oldest first (no acknowledgements)."""
    records: list[tuple[str, bytes]] = []
    while spool.has_backlog():
        _segment, batch = await spool.read(1000)
        records += [(topic, payload) for _index, topic, payload in batch]
    return records


def numbered(count: int, size: int = 100, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"heat/t/dev-{i % 3}/metrics", b"%08d" % i + b"x" * (size - 8)) for i in range(start, start + count)]


@pytest.fixture
def captured(monkeypatch):
    """Warnings of the spool module (a logger of its own: the CLI tests cache the configured one)."""
    with capture_logs() as logs:
        monkeypatch.setattr(spool_module, "log", structlog.get_logger("test"))
        yield logs


def segment_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.seg"))


def write_site(tmp_path: Path, mqtt_port: int, cdus: int = 2) -> Path:
    """A site of simulated CDUs polled every PERIOD_S, reconnecting to the broker within 1 s."""
    devices = "\n".join(
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
        f"unit_id: 1, profile: cdu, poll_period_s: {PERIOD_S}, timeout_s: 0.3, backoff_max_s: 0.5}}"
        for i in range(1, cdus + 1)
    )
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: e2e\nprofiles_dir: {REPO / 'config' / 'profiles'}\ndevices:\n{devices}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: spool-{os.getpid()}-{time.time_ns()}, "
        f"reconnect_max_s: 1}}\n",
        encoding="utf-8",
    )
    return path


def gaps(timestamps: list[int]) -> list[float]:
    """Gaps between consecutive readings, in seconds, larger than 1.5 poll periods."""
    return [(b - a) / 1e9 for a, b in itertools.pairwise(timestamps) if (b - a) / 1e9 > 1.5 * PERIOD_S]


# -- the spool on its own -----------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["every_write", "interval", "never"])
async def test_round_trip_and_reopen(tmp_path, fsync):
    folder = tmp_path / "spool"
    messages = [
        *numbered(50),
        ("heat/t/empty/metrics", b""),
        ("heat/t/überhitzt/metrics", "°C".encode()),
        ("heat/t/big/metrics", bytes(range(256)) * 300),
    ]
    spool = Spool(folder, max_bytes=2**20, fsync=fsync, segment_bytes=16 * 1024)
    for topic, payload in messages:
        spool.append(topic, payload)
    await spool.sync()
    assert spool.waiting == len(messages)
    assert len(spool.files) > 1  # rolled over at segment_bytes
    assert await read_all(spool) == messages
    await spool.close()
    # Nothing was acknowledged, so all of it is still there for the next process.
    again = Spool(folder, max_bytes=2**20, fsync=fsync)
    assert again.waiting == 0  # files of an earlier process count once read
    assert await read_all(again) == messages
    again.append("heat/t/new/metrics", b"after")
    assert (await read_all(again))[-1:] == [("heat/t/new/metrics", b"after")]
    await again.close()


async def test_torn_tail_is_skipped_with_one_warning(tmp_path, captured):
    folder = tmp_path / "spool"
    spool = Spool(folder, max_bytes=2**20)
    messages = numbered(10)
    for topic, payload in messages:
        spool.append(topic, payload)
    await spool.close()
    [path] = spool.files
    with path.open("r+b") as file:  # a kill in the middle of the last write
        file.truncate(path.stat().st_size - 5)
    (folder / "0000000000000099.seg").write_bytes(b"")  # killed between creating a file and writing it
    spool = Spool(folder, max_bytes=2**20)
    assert await read_all(spool) == messages[:-1]
    await spool.close()
    warnings = [entry for entry in captured if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["spool_torn_tail"]
    assert warnings[0]["segment"] == path.name
    assert warnings[0]["reason"] == "cut short"


async def test_garbage_after_the_last_record_is_one_warning(tmp_path, captured):
    folder = tmp_path / "spool"
    spool = Spool(folder, max_bytes=2**20)
    messages = numbered(5)
    for topic, payload in messages:
        spool.append(topic, payload)
    await spool.close()
    with spool.files[0].open("ab") as file:  # e.g. zeros where a power cut left a size but no data
        file.write(bytes(4096))
    spool = Spool(folder, max_bytes=2**20)
    assert await read_all(spool) == messages
    await spool.close()
    assert [(e["event"], e["reason"]) for e in captured if e["log_level"] == "warning"] == [
        ("spool_torn_tail", "garbage")
    ]


async def test_crc_mismatch_skips_the_record_with_a_warning(tmp_path, captured):
    folder = tmp_path / "spool"
    spool = Spool(folder, max_bytes=2**20)
    messages = numbered(10)
    for topic, payload in messages:
        spool.append(topic, payload)
    await spool.close()
    [path] = spool.files
    data = bytearray(path.read_bytes())
    record_size = len(encode_record(*messages[0]))
    data[len(FILE_MAGIC) + 4 * record_size + record_size - 1] ^= 0xFF  # last payload byte of the 5th record
    path.write_bytes(bytes(data))
    spool = Spool(folder, max_bytes=2**20)
    assert await read_all(spool) == messages[:4] + messages[5:]
    await spool.close()
    warnings = [entry for entry in captured if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["spool_record_corrupt"]
    assert warnings[0]["offset"] == len(FILE_MAGIC) + 4 * record_size


async def test_size_cap_drops_the_oldest_segment_and_counts_it(tmp_path, captured):
    folder = tmp_path / "spool"
    cap = 64 * 1024
    spool = Spool(folder, max_bytes=cap, segment_bytes=8 * 1024)
    messages = numbered(200, size=1000)
    for topic, payload in messages:
        spool.append(topic, payload)
        assert spool.bytes <= cap
    spool.flush()
    assert segment_bytes(folder) == spool.bytes <= cap
    assert spool.dropped > 0
    drops = [entry for entry in captured if entry["event"] == "spool_full_dropped_oldest"]
    assert len(drops) == spool.dropped_segments
    assert sum(entry["messages"] for entry in drops) == spool.dropped
    # What is left is the newest messages, in order: only whole old segments went.
    assert await read_all(spool) == messages[spool.dropped :]
    await spool.close()

    # A file left by an earlier process is counted by its record headers when it is dropped.
    remaining = len(messages) - spool.dropped
    spool = Spool(folder, max_bytes=cap, segment_bytes=8 * 1024)
    for topic, payload in numbered(200, size=1000, start=200):
        spool.append(topic, payload)
    await spool.close()
    assert spool.dropped >= remaining  # the whole old spool went first
    last = Spool(folder, max_bytes=cap)
    assert spool.dropped + len(await read_all(last)) == remaining + 200
    await last.close()


async def test_a_segment_goes_once_every_message_in_it_is_acknowledged(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=2**20, segment_bytes=4096)
    for topic, payload in numbered(100):
        spool.append(topic, payload)
    first, batch = await spool.read(1000)
    assert first is not None
    assert len(batch) == first.records
    for index, _topic, _payload in batch[:-1]:
        spool.release(first, index)
    spool.flush()
    assert spool.release_done() == 0
    spool.release(first, batch[-1][0])
    assert spool.release_done() == 1
    assert not first.path.exists()
    assert not first.rel_path.exists()
    await spool.close()


async def test_releases_survive_a_restart_and_held_records_wait(tmp_path):
    """Released records are not sent again by the next process; the replay stops at a held record."""
    folder = tmp_path / "spool"
    spool = Spool(folder, max_bytes=2**20)
    messages = numbered(10)
    where = [spool.append(topic, payload) for topic, payload in messages]
    spool.hold(*where[5])
    _segment, batch = await spool.read(1000)
    assert [index for index, _t, _p in batch] == [0, 1, 2, 3, 4]  # stops before the held one
    assert (await spool.read(1000))[1] == []
    spool.release(*where[5])  # its original was acknowledged: skipped, not sent
    spool.release(*where[0])
    spool.release(*where[2])
    _segment, rest = await spool.read(1000)
    assert [index for index, _t, _p in rest] == [6, 7, 8, 9]
    spool.rewind(*where[7])  # a drop before its acknowledgement: sent again, in order
    _segment, again = await spool.read(1000)
    assert [index for index, _t, _p in again] == [7, 8, 9]
    await spool.close()
    # A new process skips what was released (side file), and sends the rest in order.
    assert await read_all(Spool(folder, max_bytes=2**20)) == [messages[i] for i in (1, 3, 4, 6, 7, 8, 9)]


async def test_one_process_per_spool_folder(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=2**20)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "spool", max_bytes=2**20)
    await spool.close()
    await Spool(tmp_path / "spool", max_bytes=2**20).close()


async def test_a_spool_that_cannot_be_written_falls_back_to_memory_and_recovers(tmp_path, monkeypatch):
    """Disk full: the messages wait in memory, logged once; when space returns they go back to
    the spool, in order."""
    monkeypatch.setattr(mqtt_module, "SPOOL_RETRY_S", 0.0)
    publisher = MqttPublisher(
        Mqtt(port=free_port(), client_id="no-broker"), "t", {}, Outbox(10), spool_dir=tmp_path / "spool"
    )
    publisher.start()  # not connected: everything is for the spool
    try:
        assert publisher.spool is not None
        with capture_logs() as logs:
            monkeypatch.setattr(mqtt_module, "log", structlog.get_logger("test"))
            publisher._send("heat/t/a/metrics", b"1")
            publisher._flush_spool()
            spool_fd = publisher.spool._fd
            assert spool_fd is not None
            saved = os.dup(spool_fd)
            full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
            os.dup2(full, spool_fd)
            os.close(full)
            publisher._send("heat/t/a/metrics", b"2")
            publisher._flush_spool()
            publisher._send("heat/t/a/metrics", b"3")
            publisher._flush_spool()
            assert list(publisher._memory) == [("heat/t/a/metrics", b"2"), ("heat/t/a/metrics", b"3")]
            assert publisher.pending == 3
            os.dup2(saved, spool_fd)  # space is back
            os.close(saved)
            publisher._spool_usable = True  # what the watcher does once SPOOL_RETRY_S has passed
            publisher._retry_spool_from_memory()
        assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["spool_write_failed"]
        assert "spool_writable_again" in [entry["event"] for entry in logs]
        assert not publisher._memory
        assert publisher.spool.waiting == 3
    finally:
        await publisher.stop(timeout_s=0)
    again = Spool(tmp_path / "spool", max_bytes=2**20)
    assert [payload for _topic, payload in await read_all(again)] == [b"1", b"2", b"3"]
    await again.close()


# -- against a real broker ------------------------------------------------------------------------


def subscribe(port: int, topic: str) -> tuple[paho.Client, list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
    client.on_connect = lambda c, *_: (c.subscribe(topic, qos=1), ready.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(5)
    return client, got


async def test_a_spool_left_behind_is_replayed_in_order_and_deleted(tmp_path, mosquitto):
    folder = tmp_path / "spool"
    left = Spool(folder, max_bytes=2**20, segment_bytes=64 * 1024)
    messages = [(f"heat/left/cdu-{i % 2}/metrics", b"line %d" % i) for i in range(3000)]
    for topic, payload in messages:
        left.append(topic, payload)
    await left.close()
    assert len(left.files) > 1
    client, got = subscribe(mosquitto.port, "heat/left/+/metrics")
    publisher = MqttPublisher(
        Mqtt(port=mosquitto.port, client_id=f"left-{time.time_ns()}"), "left", {}, Outbox(100), spool_dir=folder
    )
    publisher.start()
    task = asyncio.create_task(publisher.run())
    try:
        await wait_for(lambda: len(got) >= len(messages), 10, "the spooled messages")
        await wait_for(lambda: not list(folder.glob("*.seg")), 5, "the segments to be deleted")
        assert got[: len(messages)] == messages
        assert publisher.pending == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.stop()
        client.loop_stop()
        client.disconnect()


async def test_a_frozen_broker_puts_every_message_older_than_a_second_on_disk(tmp_path, fresh_mosquitto):
    """The link stays open but nothing is acknowledged (broker SIGSTOPped, as behind a dead
    router): within ~1 s every message is in the spool file (a kill -9 now loses none of them),
    and when the broker wakes each arrives exactly once and the spool empties."""
    folder = tmp_path / "spool"
    client, got = subscribe(fresh_mosquitto.port, "heat/silent/#")
    outbox: Outbox = Outbox(1000)
    config = Mqtt(port=fresh_mosquitto.port, client_id="silent")
    publisher = MqttPublisher(config, "silent", {}, outbox, spool_dir=folder)
    publisher.start()
    task = asyncio.create_task(publisher.run())
    assert fresh_mosquitto.pid is not None
    try:
        await wait_for(lambda: publisher.connected, 5, "the connection")
        os.kill(fresh_mosquitto.pid, signal.SIGSTOP)
        messages = [Message("heat/silent/dev/metrics", b"%d" % i) for i in range(300)]
        for message in messages[:150]:
            outbox.put(message)
        await asyncio.sleep(0.5)
        for message in messages[150:]:  # later ones go straight to the spool once the link is stalled
            outbox.put(message)
        assert publisher.spool is not None

        def on_disk() -> set[bytes]:
            records: list[bytes] = []
            for path in sorted(folder.glob("*.seg")):
                records += [payload for _t, payload in spool_module.read_segment(path)]
            return set(records)

        await wait_for(lambda: on_disk() == {m.payload for m in messages}, 3, "every message on disk")
        assert publisher.connected  # the link has not been declared dead: this is the frozen case
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        await wait_for(lambda: len([p for t, p in got if t.endswith("/metrics")]) >= 300, 10, "every message")
        await wait_for(lambda: not list(folder.glob("*.seg")), 5, "the segments to be deleted")
        await asyncio.sleep(0.5)
        arrived = [p for t, p in got if t.endswith("/metrics")]
        assert sorted(arrived) == sorted(m.payload for m in messages)  # each exactly once
        assert publisher.pending == 0
    finally:
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.stop()
        client.loop_stop()
        client.disconnect()


async def test_a_drop_keeps_one_copy_of_each_unacknowledged_message(tmp_path, fresh_mosquitto, monkeypatch):
    """Messages paho sent but never saw acknowledged would die with the process: at the drop each
    is kept once (paho 2.2 reports one drop twice; the spool gets one copy, not two)."""
    folder = tmp_path / "spool"
    outbox: Outbox = Outbox(1000)
    config = Mqtt(port=fresh_mosquitto.port, client_id="dropped")
    publisher = MqttPublisher(config, "dropped", {}, outbox, spool_dir=folder)
    monkeypatch.setattr(mqtt_module, "UNACKED_TO_DISK_S", 60.0)  # only the drop copies here
    publisher.start()
    task = asyncio.create_task(publisher.run())
    assert fresh_mosquitto.pid is not None
    try:
        await wait_for(lambda: publisher.connected, 5, "the connection")
        os.kill(fresh_mosquitto.pid, signal.SIGSTOP)  # nothing is acknowledged from here
        messages = [Message("heat/dropped/dev/metrics", b"%d" % i) for i in range(300)]
        for message in messages:
            outbox.put(message)
        await wait_for(lambda: len(outbox) == 0, 5, "the outbox to drain")
        assert len(publisher._in_flight) >= 300
        with capture_logs() as logs:
            monkeypatch.setattr(mqtt_module, "log", structlog.get_logger("test"))
            await asyncio.to_thread(fresh_mosquitto.kill)  # the connection drops
            await wait_for(lambda: not publisher.connected, 5, "the drop")
        kept = [e for e in logs if e["event"] == "mqtt_unacknowledged_kept"]
        assert len(kept) == 1
        assert kept[0]["messages"] == 300
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.stop(timeout_s=0)
    # As if the process had been killed now: the next one finds every message in the spool, once.
    spool = Spool(folder, max_bytes=2**20)
    payloads = [payload for _topic, payload in await read_all(spool)]
    await spool.close()
    assert payloads == [m.payload for m in messages]


async def test_broker_outage_goes_to_the_spool_and_comes_back_in_order(tmp_path, fresh_mosquitto):
    site_path = write_site(tmp_path, fresh_mosquitto.port)
    folder = tmp_path / "var" / "spool"
    collector = Collector(fresh_mosquitto.port, persistent=True)
    try:
        async with running(site_path, historian=False) as (_site, _plant, _simulated, gateway, _hist):
            publisher = gateway.publisher
            await wait_for(lambda: len(collector.timestamps("cdu-1")) >= 5, 5, "first readings")
            down_ns = time.time_ns()
            await asyncio.to_thread(fresh_mosquitto.stop)
            await asyncio.sleep(1.0)
            size_1 = segment_bytes(folder)
            await asyncio.sleep(1.0)
            size_2 = segment_bytes(folder)
            assert 0 < size_1 < size_2, "readings should go to the spool file while the broker is down"
            assert not publisher._in_flight  # what was in flight at the drop is in the spool now
            assert publisher.pending > 2 * 2 / PERIOD_S / 2  # two CDUs for ~2 s, in the spool
            stats = gateway.stats_message().payload.decode().splitlines()[-1]  # the device="gateway" line
            waiting = int(stats.split("spool_waiting=", 1)[1].split("i", 1)[0])
            assert waiting > 0, stats
            assert "spool_dropped=0i" in stats
            up_ns = time.time_ns()
            await asyncio.to_thread(fresh_mosquitto.start)
            await wait_for(lambda: publisher.pending == 0, 10, "the spool to be replayed")
            await wait_for(lambda: not list(folder.glob("*.seg")), 5, "the segments to be deleted")
            fresh_ns = time.time_ns()
            await wait_for(lambda: collector.timestamps("cdu-1")[-1] >= fresh_ns, 5, "live readings")
        stamps = collector.timestamps("cdu-1")
        poll_stats = next(p for p in gateway.pollers if p.name == "cdu-1").stats
        # Every reading the poller produced arrived (the last poll may have been cut by the stop);
        # a gap is only allowed where the poller itself skipped a slot on a stalled machine.
        produced = poll_stats.polls - poll_stats.failures
        assert produced - 1 <= len(set(stamps)) <= produced, "readings from the outage are missing"
        assert len(gaps(stamps)) <= poll_stats.skipped_slots
        assert len(stamps) - len(set(stamps)) < 5  # at least once: only what was in flight may come twice
        # The outage's readings came back oldest first.
        with collector.lock:
            arrived = [
                int(payload.rsplit(b" ", 1)[1])
                for _, topic, payload in collector.messages
                if topic == "heat/e2e/cdu-1/metrics"
            ]
        outage = [ts for ts in dict.fromkeys(arrived) if down_ns + PERIOD_S * 1e9 < ts < up_ns]
        assert len(outage) > 5
        assert outage == sorted(outage)
        assert publisher.spool is not None
        assert publisher.spool.dropped == 0
        assert publisher.replayed >= len(outage)
    finally:
        collector.close()


def test_a_gateway_killed_during_an_outage_loses_nothing(tmp_path, fresh_mosquitto):
    """Broker down, gateway spooling, SIGKILL; broker back, a new gateway process: every reading
    from before the kill reaches a persistent subscriber."""
    site_path = write_site(tmp_path, fresh_mosquitto.port)
    folder = tmp_path / "var" / "spool"
    run = [sys.executable, "-m", "gateway", "run", "-c", str(site_path)]
    simulator = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "-c", str(site_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    collector = Collector(fresh_mosquitto.port, persistent=True)
    logs = [(tmp_path / "gateway-1.log").open("wb"), (tmp_path / "gateway-2.log").open("wb")]
    gateways = [subprocess.Popen(run, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(collector.timestamps("cdu-1")) < 5:
            time.sleep(0.05)
        assert len(collector.timestamps("cdu-1")) >= 5, "no metrics from the gateway process"
        first_ns = collector.timestamps("cdu-1")[0]
        fresh_mosquitto.stop()  # graceful: the collector's session is kept for it
        time.sleep(2.0)
        assert segment_bytes(folder) > 0
        kill_ns = time.time_ns()
        gateways[0].send_signal(signal.SIGKILL)
        assert gateways[0].wait(5) == -signal.SIGKILL
        fresh_mosquitto.start()
        gateways.append(subprocess.Popen(run, stdout=logs[1], stderr=subprocess.STDOUT))

        # A reading polled in the last moment before the kill may still have been in memory (a
        # kill can always take that); everything older must have reached the spool file.
        settled_ns = kill_ns - int(PERIOD_S * 1e9)

        def before_kill() -> list[int]:
            return [ts for ts in collector.timestamps("cdu-1") if first_ns <= ts <= settled_ns]

        # A gap is allowed only where the killed gateway itself skipped a poll slot because the
        # shared machine stalled it (poll_overrun lines carry the running total, at most one a
        # minute: a skip after the last line is allowed once more).
        skipped = max(
            (
                json.loads(line).get("skipped_total", 0) + 1
                for line in (tmp_path / "gateway-1.log").read_text().splitlines()
                if '"poll_overrun"' in line and '"cdu-1"' in line
            ),
            default=0,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(gaps([*before_kill(), settled_ns])) > skipped:
            time.sleep(0.1)
        assert len(gaps([*before_kill(), settled_ns])) <= skipped, "readings from before the kill are missing"
        assert len(before_kill()) > 2.0 / PERIOD_S
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and list(folder.glob("*.seg")):
            time.sleep(0.1)
        assert not list(folder.glob("*.seg")), "the new gateway should delete what it replayed"
    finally:
        for process in (*gateways, simulator):
            if process.poll() is None:
                process.kill()
            process.wait()
        for log in logs:
            log.close()
        collector.close()
    second = (tmp_path / "gateway-2.log").read_text(encoding="utf-8")
    assert '"event": "spool_found"' in second
    assert '"event": "mqtt_spool_replayed"' in second
