"""`make bench`: the gateway's throughput, CPU, memory and poll lateness, measured.

For each case, simulated Modbus devices are served by separate processes (so the server is
not what we measure; its CPU is reported too), a private Mosquitto takes the metrics, a
subscriber counts the values that arrive, and the gateway runs in its own process whose CPU
time and RSS are read from /proc over the measurement window.

Figures drift from machine to machine and with load (2 shared cores here): compare the ratios
within one run, e.g. CPU per 1,000 values/s across the cases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from services import MosquittoServer, free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Case:
    name: str
    devices: int
    registers: int
    rate_hz: float
    server_processes: int = 2


CASES = [
    Case("50 dev x 100 reg @ 1 Hz", 50, 100, 1.0),
    Case("50 dev x 100 reg @ 10 Hz", 50, 100, 10.0),
    Case("200 dev x 125 reg @ 4 Hz", 200, 125, 4.0, server_processes=4),
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Counter:
    """Counts fields (values) in the metrics lines that reach the broker."""

    def __init__(self, port: int) -> None:
        self.values = 0
        self.messages = 0
        self.lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self.on_message
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: (c.subscribe("heat/bench/+/metrics", qos=0), ready.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.wait(5)

    def on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        payload = message.payload
        fields = payload.split(b" ", 2)[1]
        with self.lock:
            self.values += fields.count(b",") + 1
            self.messages += 1

    def take(self) -> tuple[int, int]:
        with self.lock:
            values, messages = self.values, self.messages
            self.values = self.messages = 0
        return values, messages

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_case(case: Case, broker: MosquittoServer, seconds: float, workdir: Path, *, uvloop: bool) -> dict[str, object]:
    profile = ROOT / "bench" / "profiles" / f"bench-{case.registers}.yaml"
    base = free_port()
    # find a run of free ports: the farms bind them, so pick a high base and step on collisions
    base = 21000 + (base % 20000)
    per = -(-case.devices // case.server_processes)
    farms = []
    for k in range(case.server_processes):
        count = min(per, case.devices - k * per)
        farms.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "modbus_farm.py"), "--profile", str(profile),
                 "--first-port", str(base + k * per), "--count", str(count)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        )
    for farm in farms:
        assert farm.stdout is not None
        if farm.stdout.readline().strip() != "ready":
            raise SystemExit(f"a Modbus farm did not start: {farm.stderr.read() if farm.stderr else ''}")
    farm_cpu0 = [cpu_seconds(f.pid) for f in farms]

    devices = "\n".join(
        f"  - {{name: dev-{i}, kind: bench, protocol: modbus, host: 127.0.0.1, port: {base + i}, "
        f"profile: bench-{case.registers}, poll_period_s: {1 / case.rate_hz}, timeout_s: 1.0}}"
        for i in range(case.devices)
    )
    site = workdir / "site.yaml"
    site.write_text(
        f"site: bench\nprofiles_dir: {ROOT / 'bench' / 'profiles'}\ndevices:\n{devices}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, client_id: bench-gateway, queue_size: 100000}}\n",
        encoding="utf-8",
    )
    counter = Counter(broker.port)
    out = workdir / "probe.json"
    argv = [sys.executable, str(ROOT / "bench" / "gateway_probe.py"), str(site), str(seconds), str(out)]
    if uvloop:
        argv.append("--uvloop")
    gateway = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    if gateway.stdout.readline().strip() != "measuring":
        raise SystemExit("the gateway probe did not start")
    counter.take()
    t0, cpu0 = time.monotonic(), cpu_seconds(gateway.pid)
    rss = []
    while gateway.poll() is None:
        line_ready = time.monotonic() - t0 >= seconds
        if line_ready:
            break
        rss.append(rss_mib(gateway.pid))
        time.sleep(0.5)
    gateway.stdout.readline()  # "done"
    elapsed, cpu1 = time.monotonic() - t0, cpu_seconds(gateway.pid)
    values, messages = counter.take()
    gateway.wait(timeout=30)
    gateway.stdout.close()
    counter.close()
    farm_cpu = [cpu_seconds(f.pid) - c0 for f, c0 in zip(farms, farm_cpu0, strict=True)]
    for farm in farms:
        farm.terminate()
        farm.wait(timeout=10)
        for stream in (farm.stdout, farm.stderr):
            if stream:
                stream.close()
    probe = json.loads(out.read_text())
    lateness = probe["lateness_s"]
    return {
        "case": case.name,
        "target_values_per_s": case.devices * case.registers * case.rate_hz,
        "published_values_per_s": values / elapsed,
        "decoded_values_per_s": probe["values"] / seconds,
        "messages_per_s": messages / elapsed,
        "gateway_cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
        "gateway_rss_mib": max(rss) if rss else float("nan"),
        "server_cpu_pct": 100 * sum(farm_cpu) / elapsed,
        "lateness_p50_ms": 1000 * percentile(lateness, 0.5),
        "lateness_p99_ms": 1000 * percentile(lateness, 0.99),
        "overruns": probe["overruns"],
        "failures": probe["failures"],
        "outbox_dropped": probe["outbox_dropped"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per case")
    parser.add_argument("--uvloop", action="store_true", help="run the gateway on uvloop")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", help="run only cases whose name contains this")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp, MosquittoServer(workdir=Path(tmp) / "mosquitto") as broker:
        for case in CASES:
            if args.only and args.only not in case.name:
                continue
            workdir = Path(tmp) / case.name.replace(" ", "_").replace("@", "at")
            workdir.mkdir()
            results.append(run_case(case, broker, args.seconds, workdir, uvloop=args.uvloop))
            print(f"done: {case.name}", file=sys.stderr, flush=True)
    header = (
        f"{'case':<28}{'target/s':>10}{'published/s':>13}{'gw CPU %':>10}{'RSS MiB':>9}"
        f"{'srv CPU %':>11}{'late p50 ms':>13}{'late p99 ms':>13}{'overruns':>10}"
    )
    print(f"Modbus poll -> decode -> MQTT, {args.seconds:g} s per case, loop: {'uvloop' if args.uvloop else 'asyncio'}")
    print(header)
    for r in results:
        print(
            f"{r['case']:<28}{r['target_values_per_s']:>10.0f}{r['published_values_per_s']:>13.0f}"
            f"{r['gateway_cpu_pct']:>10.1f}{r['gateway_rss_mib']:>9.1f}{r['server_cpu_pct']:>11.1f}"
            f"{r['lateness_p50_ms']:>13.2f}{r['lateness_p99_ms']:>13.2f}{r['overruns']:>10}"
        )
    if len(results) > 1:
        per_k = [
            r["gateway_cpu_pct"] / (r["published_values_per_s"] / 1000) for r in results if r["published_values_per_s"]
        ]
        figures = ", ".join(f"{x:.2f} %" for x in per_k)
        print(f"gateway CPU per 1,000 values/s: {figures} (median {statistics.median(per_k):.2f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
