"""Hostile commands against a running control loop, over a real broker, with the plant behind it.

The gateway polls the simulated plant (2 CDUs, heat meter, heat-pump PLC, panel PC) and runs
its control loop; an operator client then sends, on ``control/cmd/{sender}``:

- the fuzz table of tests/test_command_fuzz.py (53 kinds; the retained one stored before the
  gateway subscribes, so the broker delivers it as retained);
- a poison burst: 75 messages at once, the two of the issue (``10**400`` as a JSON integer and a
  2,000-deep JSON of 4,000 bytes) alternating;
- a flood: 1,000 commands a second for 10 s (valid and invalid mixed) from one sender.

Judged: no control cycle failed and the heartbeats went on through all of it, every command
got exactly one ack carrying its id, every write the plant received was inside the profile's
limits, and the flood's refusals were summarised in a few log lines, not one per message.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from gateway.config import load_site
from gateway.control.supervisor import write_limits_of
from gateway.service import Gateway
from simulators.cli import make_plant
from simulators.site import SimulatedSite
from tests.services import MosquittoServer, free_port
from tests.test_command_fuzz import FUZZ

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SITE = "flood"
CMD = f"heat/{SITE}/control/cmd"
FLOOD_RATE_PER_S = 1000
FLOOD_S = 10
TIMEOUT_S = 120.0


def write_site(tmp_path: Path, mqtt_port: int) -> Path:
    def modbus(name: str, kind: str, profile: str, unit: int = 1) -> str:
        return (
            f"  - {{name: {name}, kind: {kind}, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
            f"unit_id: {unit}, profile: {profile}, poll_period_s: 0.5, timeout_s: 0.5, backoff_max_s: 1.0}}"
        )

    def opcua(name: str, kind: str) -> str:
        return (
            f"  - {{name: {name}, kind: {kind}, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{free_port()}/', "
            f"profile: {name}, poll_period_s: 0.5, timeout_s: 1.0, backoff_max_s: 1.0}}"
        )

    devices = [
        modbus("cdu-1", "cdu", "cdu"),
        modbus("cdu-2", "cdu", "cdu"),
        modbus("heat-meter", "heat_meter", "heat-meter", unit=10),
        opcua("hp-plc", "heat_pump_plc"),
        opcua("panel-pc", "panel_pc"),
    ]
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: {SITE}\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
        "devices:\n" + "\n".join(devices) + "\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: flood-{time.time_ns()}}}\n"
        # 100 at once per sender, so the fuzz table and the poison burst are judged on their
        # content; the flood is 50 times above the rate.
        "control: {cycle_s: 1.0, heartbeat_period_s: 2.0, commands: {rate_per_s: 20, burst: 100}}\n",
        encoding="utf-8",
    )
    return path


class Operator:
    """Sends commands (QoS 1) and collects every ack."""

    def __init__(self, port: int) -> None:
        self.acks: list[dict] = []
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"op-{time.time_ns()}")
        self.client.max_inflight_messages_set(1000)
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"heat/{SITE}/control/ack", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = lambda _c, _u, m: self.acks.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def send(self, sender: str, payload: bytes, *, retain: bool = False) -> paho.MQTTMessageInfo:
        return self.client.publish(f"{CMD}/{sender}", payload, qos=1, retain=retain)

    def ids(self) -> Counter:
        return Counter(ack.get("id") for ack in list(self.acks))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _wait_for_acks(operator: Operator, ids: set[object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ids <= set(operator.ids()):
        if time.monotonic() > deadline:
            missing = ids - set(operator.ids())
            raise AssertionError(f"{what}: no ack for {len(missing)} commands, e.g. {sorted(map(str, missing))[:5]}")
        await asyncio.sleep(0.1)


def _flood_payload(n: int) -> bytes:
    """The n-th flood command: mostly valid manual setpoints, some invalid, some garbage."""
    command_id = f"x{n}"
    match n % 5:
        case 0 | 1:
            return json.dumps({"id": command_id, "mode": "manual", "manual_supply_temp_c": 60 + n % 20}).encode()
        case 2:
            return json.dumps({"id": command_id, "manual_heat_power_kw": 1000 + n % 5000}).encode()
        case 3:
            return json.dumps({"id": command_id, "manual_supply_temp_c": 200.0}).encode()
        case _:
            return b'{"id": "' + command_id.encode() + b'", "mode": ' + b"[" * 50 + b"\xff"


def _flood(operator: Operator) -> None:
    """1,000 commands a second on an absolute schedule (a thread: the event loop stays free)."""
    start = time.monotonic()
    for n in range(FLOOD_RATE_PER_S * FLOOD_S):
        delay = start + n / FLOOD_RATE_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        operator.send("flooder", _flood_payload(n))


async def test_fuzz_poison_burst_and_flood_against_a_running_control_loop(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    site = load_site(write_site(tmp_path, mosquitto.port))
    limits = write_limits_of(site)
    plant = make_plant(seed=8)
    writes: list[tuple[float, str, str, float]] = []
    real_write = plant.write

    def recorded_write(device: str, signal: str, value: float) -> None:
        writes.append((time.monotonic(), device, signal, value))
        real_write(device, signal, value)

    plant.write = recorded_write  # every write any driver makes reaches the plant through here
    simulated = SimulatedSite(site, plant, speed=1.0, tick_s=0.2)
    await simulated.start()
    operator = Operator(mosquitto.port)
    retained = [(kind, payload) for kind, payload, is_retained, *_ in FUZZ if is_retained]
    for _kind, payload in retained:  # stored by the broker before the gateway subscribes
        operator.send("fuzzer", payload, retain=True).wait_for_publish(10)
    gateway = Gateway(site)
    control = gateway.control
    assert control is not None
    stop = asyncio.Event()
    with capture_logs() as logs:
        tasks = [asyncio.create_task(simulated.run()), asyncio.create_task(gateway.run(stop))]
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while control.cycles < 3 or not any(w[2] == "heartbeat" for w in writes):
                assert time.monotonic() < deadline, "the control loop did not start"
                await asyncio.sleep(0.1)

            # -- the fuzz table -------------------------------------------------------------
            for _kind, payload, is_retained, *_ in FUZZ:
                if not is_retained:
                    operator.send("fuzzer", payload)
            fuzz_ids = {command_id for *_, command_id in FUZZ if command_id is not None}
            await _wait_for_acks(operator, fuzz_ids, "fuzz")
            by_id = {ack.get("id"): ack for ack in operator.acks}
            for kind, _payload, _retained, accepted, reason, command_id in FUZZ:
                if command_id is not None:
                    assert by_id[command_id]["accepted"] is accepted, (kind, by_id[command_id])
                    assert reason in by_id[command_id]["reason"], (kind, by_id[command_id])
                    assert by_id[command_id]["sender"] == "fuzzer"
            # the ones without a readable id are answered too, without one
            unnamed = sum(1 for *_, command_id in FUZZ if command_id is None)
            await _wait_for(lambda: operator.ids()[None] >= unnamed, "acks without an id")

            # -- the poison burst ----------------------------------------------------------
            huge = json.dumps({"manual_supply_temp_c": 0}).replace("0", str(10**400))
            deep = "[" * 2000 + "]" * 2000  # 4,000 bytes: under the size limit
            poison = {
                f"p{n:02}": (
                    '{"id": "p%02d", %s' % (n, huge[1:]) if n % 2 == 0 else '{"id": "p%02d", "mode": %s}' % (n, deep)  # noqa: UP031 - reads as the payload
                ).encode()
                for n in range(75)
            }
            cycles_before = control.cycles
            for payload in poison.values():
                operator.send("poisoner", payload)
            await _wait_for_acks(operator, set(poison), "poison burst")
            by_id = {ack.get("id"): ack for ack in operator.acks}
            for command_id in poison:
                reason = by_id[command_id]["reason"]
                assert "401 digits" in reason or "nested deeper" in reason, (command_id, reason)

            # -- the flood -----------------------------------------------------------------
            flood_started = time.monotonic()
            await asyncio.to_thread(_flood, operator)
            flood_ids = {f"x{n}" for n in range(FLOOD_RATE_PER_S * FLOOD_S)}
            await _wait_for_acks(operator, flood_ids, "flood")
            flood_ended = time.monotonic()
            operator.send("ender", json.dumps({"id": "end", "mode": "auto"}).encode())
            await _wait_for_acks(operator, {"end"}, "the last command")
            assert control.state.mode.value == "auto"
            cycles_during = control.cycles - cycles_before
        finally:
            operator.close()
            stop.set()
            await asyncio.wait_for(tasks[1], 30)
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await simulated.stop()
            cleaner = Operator(mosquitto.port)
            for _kind, _payload in retained:
                cleaner.send("fuzzer", b"", retain=True).wait_for_publish(10)
            cleaner.close()

    # every command exactly one ack with its id
    counts = operator.ids()
    sent_ids = fuzz_ids | set(poison) | flood_ids | {"end"}
    assert {i: counts[i] for i in sent_ids if counts[i] != 1} == {}
    flood_acks = [a for a in operator.acks if str(a.get("id", "")).startswith("x")]
    taken = sum(1 for a in flood_acks if not a["reason"].startswith("rate limit"))
    limited = len(flood_acks) - taken
    assert all(a["sender"] == "flooder" for a in flood_acks)

    # zero control cycles lost: none failed, and the heartbeats went on during the flood
    assert control.failed_cycles == 0
    assert not [e for e in logs if e["event"] in {"control_cycle_failed", "control_command_failed"}]
    heartbeats = Counter(d for t, d, s, _ in writes if s == "heartbeat" and flood_started <= t <= flood_ended)
    heartbeat_devices = {d for d, s in limits if s == "heartbeat"}
    assert heartbeat_devices
    assert set(heartbeats) == heartbeat_devices, heartbeats

    # zero writes outside limits
    outside = [(d, s, v) for _, d, s, v in writes if not limits[(d, s)][0] <= v <= limits[(d, s)][1]]
    assert outside == []

    # the flood's refusals are a few summary lines, not one per message
    summaries = [e for e in logs if e["event"] == "control_commands_rate_limited" and e["sender"] == "flooder"]
    assert 1 <= len(summaries) <= 4, len(summaries)
    assert sum(e["refused"] for e in summaries) <= limited
    rejected_lines = [e for e in logs if e["event"] == "control_command_rejected" and e.get("sender") == "flooder"]
    assert len(rejected_lines) == taken - sum(1 for a in flood_acks if a["accepted"])
    print(
        f"\ncycles during burst+flood: {cycles_during}, overruns: {control.overruns}, "
        f"flood: {len(flood_acks)} acked ({taken} taken, {limited} rate-limited) in "
        f"{flood_ended - flood_started:.1f} s, summary lines: {len(summaries)}, writes: {len(writes)}"
    )


async def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)
