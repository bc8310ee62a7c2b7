"""Operator commands over MQTT: validated, applied at the next cycle, answered on control/ack."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_site
from gateway.service import Gateway
from simulators.cli import make_plant
from simulators.site import SimulatedSite
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


def write_site(tmp_path: Path, mqtt_port: int) -> Path:
    poll = 0.1  # seconds: commands are answered at the next control cycle
    lines = [
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, profile: cdu, "
        f"poll_period_s: {poll}, timeout_s: 0.5, backoff_max_s: 0.5}}"
        for i in range(1, 13)
    ]
    lines.append(
        f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
        f"unit_id: 10, profile: heat-meter, poll_period_s: {poll}, timeout_s: 0.5, backoff_max_s: 0.5}}"
    )
    for name, kind in (("hp-plc", "heat_pump_plc"), ("panel-pc", "panel_pc")):
        lines.append(
            f"  - {{name: {name}, kind: {kind}, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{free_port()}/', "
            f"profile: {name}, poll_period_s: {poll}, timeout_s: 1.0, backoff_max_s: 0.5}}"
        )
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: live\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
        "devices:\n" + "\n".join(lines) + "\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: live-{time.time_ns()}}}\n"
        "control: {cycle_s: 1.0, heartbeat_period_s: 5.0, input_max_age_s: 1.0}\n",
        encoding="utf-8",
    )
    return path


class Operator:
    """Publishes commands and collects the acknowledgements."""

    def __init__(self, port: int) -> None:
        self.acks: list[dict] = []
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"op-{time.time_ns()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: (c.subscribe("heat/live/control/ack", qos=1), ready.set())
        self.client.on_message = lambda _c, _u, m: self.acks.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(5)

    def send(self, payload: str | bytes) -> None:
        self.client.publish("heat/live/control/cmd", payload, qos=1)

    async def ack_for(self, command_id: str, timeout_s: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for ack in self.acks:
                if ack.get("id") == command_id:
                    return ack
            await asyncio.sleep(0.05)
        raise AssertionError(f"no ack for {command_id}: {self.acks}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_commands_are_validated_applied_and_acknowledged(tmp_path, mosquitto):
    site = load_site(write_site(tmp_path, mosquitto.port))
    plant = make_plant(seed=3)
    simulated = SimulatedSite(site, plant, speed=1.0, tick_s=0.1)
    await simulated.start()
    gateway = Gateway(site)
    assert gateway.control is not None
    stop = asyncio.Event()
    tasks = [asyncio.create_task(simulated.run()), asyncio.create_task(gateway.run(stop))]
    operator = Operator(mosquitto.port)
    try:
        await asyncio.sleep(1.0)  # subscriptions in place, first cycles run
        operator.send(json.dumps({"id": "1", "mode": "sideways"}))
        ack = await operator.ack_for("1")
        assert ack["accepted"] is False
        assert "mode must be auto, manual or off" in ack["reason"]
        assert ack["mode"] == "auto"

        operator.send(json.dumps({"id": "2", "mode": "manual", "manual_supply_temp_c": 99.0}))
        ack = await operator.ack_for("2")
        assert ack["accepted"] is False
        assert "manual_supply_temp_c 99 is outside" in ack["reason"]

        operator.send(json.dumps({"id": "3", "mode": "manual", "valve": 1}))
        ack = await operator.ack_for("3")
        assert ack["accepted"] is False
        assert "unknown key(s) valve" in ack["reason"]

        operator.send(b"{not json")
        for _ in range(60):  # commands are applied at the next control cycle (1 s)
            if any("not valid JSON" in a["reason"] for a in operator.acks):
                break
            await asyncio.sleep(0.05)
        assert any(a["accepted"] is False and "not valid JSON" in a["reason"] for a in operator.acks)

        operator.send(json.dumps({"id": "4", "mode": "manual", "manual_supply_temp_c": 68.0}))
        ack = await operator.ack_for("4")
        assert ack["accepted"] is True, ack
        assert ack["mode"] == "manual"
        assert gateway.control.state.mode.value == "manual"

        operator.send(json.dumps({"id": "5", "mode": "off"}))
        ack = await operator.ack_for("5")
        assert ack["accepted"] is True
        await asyncio.sleep(1.5)  # writes queued before the switch are done by now
        done = gateway.control.executor.done
        await asyncio.sleep(3.0)
        assert gateway.control.executor.done == done, "mode off must write nothing, heartbeats included"
    finally:
        operator.close()
        stop.set()
        await asyncio.wait_for(tasks[1], 10)
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await simulated.stop()
