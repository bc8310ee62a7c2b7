"""Serve many simulated Modbus devices from one process (run several for a benchmark).

``python bench/modbus_farm.py --profile bench/profiles/bench-100.yaml --first-port 20000 --count 50``
prints ``ready`` once every endpoint listens, then serves until SIGTERM. Register values change
every second so the gateway decodes real, changing data. It reports the requests it served
and its own CPU time on stderr at exit, so the benchmark can show the server is not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.loader import load_profile
from simulators.modbus_server import ModbusEndpoint, UnitImage


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", required=True)
    parser.add_argument("--first-port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    profile = load_profile(Path(args.profile))
    endpoints = []
    for i in range(args.count):
        endpoint = ModbusEndpoint("127.0.0.1", args.first_port + i)
        endpoint.units[1] = UnitImage(f"bench-{i}", profile, on_write=lambda _s, _v: None)
        await endpoint.start()
        endpoints.append(endpoint)
    names = list(profile.signals)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tick = 0
    while not stop.is_set():
        tick += 1
        for k, endpoint in enumerate(endpoints):
            endpoint.units[1].update({n: 20 + 10 * math.sin(tick / 10 + j + k) for j, n in enumerate(names)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    requests = sum(e.units[1].requests for e in endpoints)
    cpu = time.process_time()
    print(f"served {requests} requests, cpu {cpu:.2f} s, pid {os.getpid()}", file=sys.stderr, flush=True)
    for endpoint in endpoints:
        await endpoint.stop()


if __name__ == "__main__":
    asyncio.run(main())
