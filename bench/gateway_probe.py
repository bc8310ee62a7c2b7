"""Run the gateway for a benchmark window and write its poll statistics as JSON.

``python bench/gateway_probe.py SITE.yaml SECONDS OUT.json [--uvloop]``: runs
:class:`gateway.service.Gateway` for a warm-up and then SECONDS, then dumps every poll lateness sample of the
last window, poll counts and overruns. CPU and memory are measured from outside (/proc).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import load_site
from gateway.logs import setup_logging
from gateway.service import Gateway

WARMUP_S = 3.0


async def main(site_path: str, seconds: float, out: str) -> None:
    setup_logging("warning", "json")
    gateway = Gateway(load_site(Path(site_path)))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.sleep(WARMUP_S)  # connections, first polls, MQTT session
    for poller in gateway.pollers:
        poller.stats.lateness_s.clear()
        poller.stats.polls = poller.stats.values = poller.stats.overruns = poller.stats.failures = 0
    print("measuring", flush=True)  # the parent starts its CPU and message counters here
    await asyncio.sleep(seconds)
    print("done", flush=True)
    stop.set()
    await task
    lateness = [x for p in gateway.pollers for x in p.stats.lateness_s]
    Path(out).write_text(
        json.dumps(
            {
                "lateness_s": lateness,
                "polls": sum(p.stats.polls for p in gateway.pollers),
                "failures": sum(p.stats.failures for p in gateway.pollers),
                "overruns": sum(p.stats.overruns for p in gateway.pollers),
                "values": sum(p.stats.values for p in gateway.pollers),
                "outbox_dropped": gateway.outbox.dropped,
                "mqtt_refused": gateway.publisher.refused,
            }
        )
    )


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
