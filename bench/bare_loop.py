"""The baseline: the smallest asyncio + pymodbus + paho gateway one would write by hand.

``python bench/bare_loop.py SITE.yaml SECONDS OUT.json [--warmup S]`` reads the same site file as
the gateway (Modbus devices, one profile of contiguous holding registers) and, per device, every
period: one read of all registers, a line-protocol line of the raw values stamped when the
request went out, one QoS 1 publish on ``heat/{site}/{device}/metrics`` through paho's own
network thread (``loop_start``), as paho's examples do. No decoding by profile, no quality, no
spool, no process image: what is left is the floor the gateway's own work is compared with.
It prints ``measuring`` after the warm-up and ``done`` at the end, like gateway_probe.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import load_site


async def poll(device: str, host: str, port: int, count: int, period_s: float, mqtt: paho.Client, stats: dict) -> None:
    client = AsyncModbusTcpClient(host, port=port, timeout=1.0)
    await client.connect()
    topic = f"heat/bench/{device}/metrics"
    prefix = f"bench,device={device},site=bench "
    names = [f"r{i:03d}=" for i in range(count)]
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += period_s
        stamp = time.time_ns()
        reply = await client.read_holding_registers(0, count=count, device_id=1)
        fields = ",".join([n + str(v) for n, v in zip(names, reply.registers, strict=True)])
        mqtt.publish(topic, f"{prefix}{fields} {stamp}", qos=1)
        stats["polls"] += 1
        stats["values"] += count
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def main(site_path: str, seconds: float, out: str, warmup_s: float) -> None:
    site = load_site(Path(site_path))
    mqtt = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare")
    mqtt.max_inflight_messages_set(1000)
    mqtt.connect(site.config.mqtt.host, site.config.mqtt.port)
    sock = mqtt.socket()
    if isinstance(sock, socket.socket):  # without it Nagle holds small messages back (tens of ms)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mqtt.loop_start()
    stats = {"polls": 0, "values": 0}
    tasks = []
    for device in site.config.devices:
        count = len(site.profiles[device.profile].signals)
        tasks.append(
            asyncio.create_task(
                poll(device.name, device.host, device.port, count, device.poll_period_s, mqtt, stats),
                name=f"poll:{device.name}",
            )
        )
    await asyncio.sleep(warmup_s)
    stats["polls"] = stats["values"] = 0
    print("measuring", flush=True)
    await asyncio.sleep(seconds)
    print("done", flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    mqtt.loop_stop()
    mqtt.disconnect()
    Path(out).write_text(json.dumps(stats))


if __name__ == "__main__":
    warmup = float(sys.argv[sys.argv.index("--warmup") + 1]) if "--warmup" in sys.argv else 3.0
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], warmup))
