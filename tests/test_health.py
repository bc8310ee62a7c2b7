"""The opt-in HTTP endpoint (/healthz, Prometheus /metrics) and the historian's own figures.

The line-protocol -> Prometheus conversion is checked against prometheus_client's own parser;
the endpoints are scraped over real sockets from a gateway polling simulated CDUs and a
historian writing into a private victoria-metrics.
"""

from __future__ import annotations

import asyncio
import math
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.loader import load_site
from gateway.health import prometheus_text
from gateway.historian import Historian
from tests.live import PERIOD_S, running, wait_for, write_site
from tests.services import free_port


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_line_protocol_becomes_parseable_prometheus_text() -> None:
    lines = [
        "gateway,device=cdu-1,site=dk available=true,polls=12i,lateness_p99_s=0.0031 1700000000000000000",
        "gateway,device=cdu\\ 2,site=dk available=false,polls=3i,lateness_p99_s=0.5 1700000000000000000",
        'control,site=dk mode="manual",overrides="a,b",dh_deviation_k=NaN,writes=4u 1700000000000000000',
        'gateway,device=x,site=dk note="say \\"hi\\"\\\\" 1',
        "",
    ]
    families = _families(prometheus_text(lines))
    polls = {labels["device"]: value for labels, value in families["heat_gateway_polls"]}
    assert polls == {"cdu-1": 12.0, "cdu 2": 3.0}
    available = {labels["device"]: value for labels, value in families["heat_gateway_available"]}
    assert available == {"cdu-1": 1.0, "cdu 2": 0.0}
    assert families["heat_control_mode_info"] == [({"site": "dk", "mode": "manual"}, 1.0)]
    assert families["heat_control_overrides_info"][0][0]["overrides"] == "a,b"
    assert math.isnan(families["heat_control_dh_deviation_k"][0][1])
    assert families["heat_control_writes"][0][1] == 4.0
    assert families["heat_gateway_note_info"][0][0]["note"] == 'say "hi"\\'


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def _until(check, timeout_s: float, what: str):
    """Await ``check()`` (HTTP calls run in a thread: the servers live on this event loop) until truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


async def _get_async(url: str) -> tuple[int, str]:
    try:
        return await asyncio.to_thread(_get, url)
    except urllib.error.URLError:  # not listening yet
        return 0, ""


async def test_endpoints_answer_and_figures_move(tmp_path, mosquitto, victoria) -> None:
    site_path = write_site(tmp_path, mosquitto.port, victoria.url, cdus=2)
    gateway_port, historian_port = free_port(), free_port()
    with site_path.open("a", encoding="utf-8") as file:
        file.write(f"http: {{host: 127.0.0.1, gateway_port: {gateway_port}, historian_port: {historian_port}}}\n")
    site = load_site(site_path)
    assert site.config.influxdb is not None
    base = f"http://127.0.0.1:{gateway_port}"
    hist = f"http://127.0.0.1:{historian_port}"
    async with running(site_path, historian=False):
        historian = Historian(site.config.mqtt, site.config.influxdb, site.config.site, http=site.config.http)
        task = asyncio.create_task(historian.run(), name="historian")
        try:

            async def polls() -> dict[str, float]:
                status, text = await _get_async(f"{base}/metrics")
                if status != 200:
                    return {}
                return {labels["device"]: value for labels, value in _families(text).get("heat_gateway_polls", [])}

            async def first_polls() -> dict[str, float]:
                counts = await polls()
                return counts if counts.get("cdu-1", 0) > 0 else {}

            first = await _until(first_polls, 10 * PERIOD_S + 10, "polls on /metrics")

            async def moved() -> bool:
                return (await polls()).get("cdu-1", 0) > first["cdu-1"] + 2

            await _until(moved, 10 * PERIOD_S + 10, "the poll count to move")
            assert await _get_async(f"{base}/healthz") == (200, "ok\n")
            assert (await _get_async(f"{base}/nothing"))[0] == 404

            # The historian's endpoint, and its figures in the database through its own topic.
            async def historian_healthy() -> bool:
                return (await _get_async(f"{hist}/healthz"))[0] == 200

            await _until(historian_healthy, 15, "the historian connected")

            async def lines_written() -> float:
                status, text = await _get_async(f"{hist}/metrics")
                samples = _families(text).get("heat_historian_lines_written", []) if status == 200 else []
                return samples[0][1] if samples else 0.0

            await _until(lines_written, 20, "the historian writing")

            def exported() -> bool:
                victoria.flush()
                return bool(victoria.export('historian_lines_written{site="e2e"}'))

            await wait_for(exported, 30, "the historian's own figures in the database")
            lag = victoria.export('historian_lag_s{site="e2e"}')
            assert lag
            assert 0 <= lag[0]["values"][-1] < 30
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
