"""Operator commands over MQTT: validated, applied at the next cycle, answered on control/ack."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_site
from gateway.service import Gateway
from simulators.cli import make_plant
from simulators.site import SimulatedSite
from tests.test_control_live import write_site


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
