"""`make bench`: the gateway's throughput, CPU, memory and poll lateness, measured.

For each case, the simulated devices (Modbus or OPC UA) are served by separate processes (so
the server is not what we measure; its CPU is reported too), a private Mosquitto takes the
metrics, a subscriber counts the values that arrive, and the gateway runs in its own process
(bench/gateway_probe.py) whose CPU time and RSS are read from /proc over the measurement window.

``--only modbus`` / ``--only opcua`` / ``--only subscribe`` / ``--only "10 Hz"``: run the cases
whose protocol, mode or name contains the text. bench/README.md explains every column.

Figures drift from machine to machine and with load (2 shared cores here): compare the ratios
within one run, e.g. CPU per 1,000 values/s across the cases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from asyncua.client import ua_client
from asyncua.observer import Observer
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import gateway_probe  # noqa: E402 - beside this file
from services import MosquittoServer, free_port  # noqa: E402

from gateway.poller import DevicePoller  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Case:
    name: str
    devices: int
    points: int  # registers (Modbus) or nodes (OPC UA) per device, all read every period
    rate_hz: float
    server_processes: int = 2
    protocol: str = "modbus"
    mode: str = "poll"  # OPC UA: poll (one batched Read per period) or subscribe
    warmup_s: float = 3.0  # connections and first polls, before the window
    profile: str | None = None  # bench/profiles/{profile}.yaml; derived from protocol and points when None
    speed: bool = False  # a "speed" case: sample -> broker latency, CPU per message, the bare loop beside it

    @property
    def key(self) -> str:
        """What --only matches: protocol, mode and name."""
        return f"{self.protocol} {self.mode} {self.name}"


CASES = [
    # The speed cases: one message per device per poll, 100 uint16 registers, measured
    # with sample -> broker latency and against a bare asyncio + pymodbus + paho loop.
    Case("50 dev x 100 u16 @ 1 Hz", 50, 100, 1.0, profile="bench-u100", speed=True),
    Case("10 dev x 100 u16 @ 10 Hz", 10, 100, 10.0, 1, profile="bench-u100", speed=True),
    Case("50 dev x 100 reg @ 1 Hz", 50, 100, 1.0),
    Case("50 dev x 100 reg @ 10 Hz", 50, 100, 10.0),
    Case("200 dev x 125 reg @ 4 Hz", 200, 125, 4.0, server_processes=4),
    # 10 asyncua servers, 2 per process: one process serves ~1,000 changes/s (asyncua saturates
    # at 16-19k); OPC UA sessions take longer to open (types of 500 nodes, 500 monitored items).
    Case("10 srv x 500 nodes @ 1 Hz poll", 10, 500, 1.0, 5, "opcua", "poll", warmup_s=5.0),
    Case("10 srv x 500 nodes @ 1 Hz subscribe", 10, 500, 1.0, 5, "opcua", "subscribe", warmup_s=5.0),
]

FARM_SCRIPT = {"modbus": BENCH / "modbus_farm.py", "opcua": BENCH / "opcua_farm.py"}
# The programs a speed case runs beside the gateway, on the same servers and broker.
OTHERS = {"bare loop": BENCH / "bare_loop.py", "Node-RED": BENCH / "nodered_loop.py"}
NODERED_JS = BENCH / "nodered" / "node_modules" / "node-red" / "red.js"
PROFILE = {"modbus": "bench-{points}", "opcua": "opcua-{points}"}


def profile_name(case: Case) -> str:
    if case.profile is not None:
        return case.profile
    return PROFILE[case.protocol].format(points=case.points)


def nodelay(client: paho.Client) -> None:
    """The counter's own socket sends its acknowledgements at once (no delayed-ACK coupling)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Node-RED runs as a child of its wrapper)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` still running."""
    cpu = {}
    for pid in pids:
        try:
            cpu[pid] = cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return cpu


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
        self.latencies_ms: list[float] = []  # arrival minus the reading's timestamp, device lines only
        self.lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self.on_message
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: (nodelay(c), c.subscribe("heat/bench/+/metrics", qos=0), ready.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.wait(5)

    def on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        arrived_ns = time.time_ns()
        payload = message.payload
        fields = payload.split(b" ", 2)[1]
        with self.lock:
            self.values += fields.count(b",") + 1
            self.messages += 1
            if not message.topic.endswith("/gateway/metrics"):
                self.latencies_ms.append((arrived_ns - int(payload.rsplit(b" ", 1)[1])) / 1e6)

    def take(self) -> tuple[int, int, list[float]]:
        with self.lock:
            values, messages, latencies = self.values, self.messages, self.latencies_ms
            self.values = self.messages = 0
            self.latencies_ms = []
        return values, messages, latencies

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- the simulated devices ------------------------------------------------------------------------


@dataclass
class Farm:
    """The server processes of one case; their CPU is measured over the gateway's window."""

    processes: list[subprocess.Popen[str]]
    cpu0: list[float] = field(default_factory=list)

    def start_window(self) -> None:
        self.cpu0 = [cpu_seconds(p.pid) for p in self.processes]

    def cpu_pct(self, elapsed: float) -> tuple[float, float]:
        """(all processes together, the busiest one) in % of one core since start_window()."""
        used = [cpu_seconds(p.pid) - c0 for p, c0 in zip(self.processes, self.cpu0, strict=True)]
        return 100 * sum(used) / elapsed, 100 * max(used) / elapsed

    def stop(self) -> list[str]:
        """Terminate the servers; their reports (stderr) as lines."""
        for process in self.processes:
            process.terminate()
        reports: list[str] = []
        for process in self.processes:
            try:
                _, err = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
            reports.extend(line for line in err.splitlines() if line.strip())
        return reports


def start_farm(case: Case, first_port: int) -> Farm:
    """``case.devices`` servers on consecutive ports from ``first_port``, over ``server_processes``."""
    profile = BENCH / "profiles" / f"{profile_name(case)}.yaml"
    per = -(-case.devices // case.server_processes)
    farm = Farm([])
    for start in range(0, case.devices, per):
        count = min(per, case.devices - start)
        farm.processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(FARM_SCRIPT[case.protocol]),
                    "--profile",
                    str(profile),
                    "--first-port",
                    str(first_port + start),
                    "--count",
                    str(count),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in farm.processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            reports = farm.stop()
            raise FarmError(f"a {case.protocol} farm did not start: {' '.join(reports)}")
    return farm


class FarmError(Exception):
    """A farm process did not get ready (most often: one of its ports was taken)."""


def start_farm_somewhere(case: Case) -> tuple[Farm, int]:
    """A farm on a run of free ports; another run if one of them turns out taken (3 tries)."""
    for attempt in range(3):
        base = port_base(case.devices)
        try:
            return start_farm(case, base), base
        except FarmError as error:
            if attempt == 2 or "address already in use" not in str(error):
                raise SystemExit(str(error)) from None
            print(f"ports {base}..{base + case.devices - 1}: one is taken, trying another run", file=sys.stderr)
    raise AssertionError("unreachable")


def device_entry(case: Case, index: int, port: int) -> str:
    """One device of the site file, in flow style."""
    common = (
        f"name: dev-{index}, kind: bench, protocol: {case.protocol}, "
        f"profile: {profile_name(case)}, poll_period_s: {1 / case.rate_hz}, timeout_s: 1.0"
    )
    if case.protocol == "modbus":
        return f"{{{common}, host: 127.0.0.1, port: {port}}}"
    extra = ""
    if case.mode == "subscribe":
        extra = f", sampling_interval_ms: {1000 / case.rate_hz:g}, queue_size: 1"
    return f"{{{common}, endpoint: 'opc.tcp://127.0.0.1:{port}/', mode: {case.mode}{extra}}}"


def write_site(case: Case, first_port: int, broker: MosquittoServer, workdir: Path) -> Path:
    devices = "\n".join(f"  - {device_entry(case, i, first_port + i)}" for i in range(case.devices))
    site = workdir / "site.yaml"
    site.write_text(
        f"site: bench\nprofiles_dir: {BENCH / 'profiles'}\nstate_dir: {workdir / 'state'}\ndevices:\n{devices}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, client_id: bench-gateway, queue_size: 100000}}\n",
        encoding="utf-8",
    )
    return site


# --- the gateway ----------------------------------------------------------------------------------


def in_window(samples: list[list[float]], t0: float, t1: float) -> list[float]:
    """The values of (monotonic time, value) samples taken between t0 and t1."""
    return [value for at, value in samples if t0 <= at <= t1]


def measure_gateway(
    site: Path,
    farm: Farm,
    broker: MosquittoServer,
    seconds: float,
    workdir: Path,
    *,
    warmup_s: float,
    uvloop: bool,
    other: str | None = None,
) -> dict[str, Any]:
    """Run the gateway (or ``other``, a program of OTHERS) on ``site`` in its own process; what it
    did in a window of ``seconds``."""
    counter = Counter(broker.port)
    out = workdir / ("other.json" if other else "probe.json")
    command = [str(OTHERS[other])] if other else [str(Path(__file__).resolve()), "probe"]
    argv = [sys.executable, *command, str(site), str(seconds), str(out), "--warmup", str(warmup_s)]
    if uvloop:
        argv.append("--uvloop")
    gateway = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    try:
        while (line := gateway.stdout.readline()) and line.strip() != "measuring":
            print(f"probe: {line.strip()[:300]}", file=sys.stderr)  # a warning logged during the warm-up
        if not line:
            raise SystemExit("the gateway probe did not start")
        counter.take()
        farm.start_window()
        # the program's processes as the window opens; CPU counted for those alive at both ends
        pids = process_tree(gateway.pid) if other else [gateway.pid]
        t0, cpu0 = time.monotonic(), cpu_by_pid(pids)
        rss = []
        while gateway.poll() is None and time.monotonic() - t0 < seconds:
            rss.append(rss_mib(gateway.pid))
            time.sleep(0.5)
        gateway.stdout.readline()  # "done"
        t1 = time.monotonic()
        elapsed, cpu1 = t1 - t0, cpu_by_pid(pids)
        server_cpu, server_max = farm.cpu_pct(elapsed)
        values, messages, latencies = counter.take()
        gateway.wait(timeout=60)
    finally:
        if gateway.poll() is None:  # it failed or hangs: leave nothing running
            gateway.kill()
            gateway.wait()
        gateway.stdout.close()
        counter.close()
    probe = json.loads(out.read_text())
    lateness = probe.get("lateness_s", [])
    durations = in_window(probe.get("poll_durations", []), t0, t1)
    gc_pauses = in_window(probe.get("gc_pauses", []), t0, t1)
    cpu_s = sum(cpu1[pid] - cpu0[pid] for pid in cpu1 if pid in cpu0)
    return {
        "published_values_per_s": values / elapsed,
        "messages_per_s": messages / elapsed,
        "cpu_us_per_message": 1e6 * cpu_s / messages if messages else float("nan"),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "latency_max_ms": max(latencies, default=float("nan")),
        "decoded_values_per_s": probe["values"] / seconds,
        "notifications_per_s": sum(in_window(probe.get("notifications", []), t0, t1)) / elapsed,
        "gateway_cpu_pct": 100 * cpu_s / elapsed,
        "gateway_rss_mib": max(rss) if rss else float("nan"),
        "server_cpu_pct": server_cpu,
        "server_max_process_cpu_pct": server_max,
        "lateness_p50_ms": 1000 * percentile(lateness, 0.5),
        "lateness_p99_ms": 1000 * percentile(lateness, 0.99),
        "poll_p50_ms": 1000 * percentile(durations, 0.5),
        "poll_p99_ms": 1000 * percentile(durations, 0.99),
        "full_gc_count": len(gc_pauses),
        "full_gc_max_ms": 1000 * max(gc_pauses, default=0.0),
        "polls": probe["polls"],
        "overruns": probe.get("overruns", 0),
        "failures": probe.get("failures", 0),
        "outbox_dropped": probe.get("outbox_dropped", 0),
    }


def port_base(count: int) -> int:
    """The first of ``count`` consecutive ports for the farms, below the kernel's ephemeral range.

    A range inside it (32768-60999 by default) collides now and then with the local port of some
    outgoing connection, and the farm fails with "address already in use" (seen 2026-12-01).
    Below it, a listening service may still hold one (RabbitMQ's 25672 here):
    :func:`start_farm_somewhere` then tries another run."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    span = max(low - 10000 - count, 1)
    return 10000 + (free_port() % span)


def run_case(case: Case, broker: MosquittoServer, seconds: float, workdir: Path, *, uvloop: bool) -> dict[str, Any]:
    farm, base = start_farm_somewhere(case)
    try:
        site = write_site(case, base, broker, workdir)
        measured = measure_gateway(site, farm, broker, seconds, workdir, warmup_s=case.warmup_s, uvloop=uvloop)
        others = {
            other: measure_gateway(
                site, farm, broker, seconds, workdir, warmup_s=case.warmup_s, uvloop=False, other=other
            )
            for other in OTHERS
            if case.speed and (other != "Node-RED" or NODERED_JS.exists())
        }
    finally:
        reports = farm.stop()
    return {
        "case": case.name,
        "protocol": case.protocol,
        "mode": case.mode,
        "speed": case.speed,
        "target_values_per_s": case.devices * case.points * case.rate_hz,
        "target_messages_per_s": case.devices * case.rate_hz,
        **measured,
        "bare_loop": others.get("bare loop"),
        "nodered": others.get("Node-RED"),
        "server_reports": reports,
    }


# --- inside the gateway's process -----------------------------------------------------------------


def probe(argv: list[str]) -> int:
    """``run.py probe SITE SECONDS OUT [--warmup S] [--uvloop]``: bench/gateway_probe.py, plus what
    that does not record, as (monotonic time, value) pairs: the data-change notifications the
    OPC UA subscriptions deliver (asyncua's client observer), how long each poll takes and how
    long each full (generation 2) garbage collection stops the event loop."""
    parser = argparse.ArgumentParser(prog="run.py probe")
    parser.add_argument("site")
    parser.add_argument("seconds", type=float)
    parser.add_argument("out")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    notifications: list[tuple[float, int]] = []
    durations: list[tuple[float, float]] = []

    class CountingObserver(Observer):
        def observe_request(self, _request: object) -> contextlib.AbstractContextManager[None]:
            return nullcontext()

        def on_notification(self, _subscription_id: int | None, event_count: int) -> None:
            notifications.append((time.monotonic(), event_count))

    # every asyncua client the drivers build takes this observer instead of the null one
    ua_client.NULL_OBSERVER = CountingObserver()  # type: ignore[attr-defined]
    poll_once = DevicePoller.poll_once

    async def timed_poll_once(self: DevicePoller) -> Any:
        started = time.monotonic()
        try:
            return await poll_once(self)
        finally:
            ended = time.monotonic()
            durations.append((ended, ended - started))

    DevicePoller.poll_once = timed_poll_once  # type: ignore[method-assign]
    gateway_probe.WARMUP_S = args.warmup
    collections: list[tuple[float, float]] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:  # the oldest generation: a full collection
            now = time.monotonic()
            if phase == "start":
                gc_started[0] = now
            else:
                collections.append((now, now - gc_started[0]))

    gc.callbacks.append(on_gc)

    async def main() -> None:
        watchdog = asyncio.create_task(recancel())
        try:
            await gateway_probe.main(args.site, args.seconds, args.out)
        finally:
            watchdog.cancel()

    if args.uvloop:
        import uvloop  # noqa: PLC0415 - optional

        uvloop.install()
    asyncio.run(main())
    result = json.loads(Path(args.out).read_text())
    result.update(notifications=notifications, poll_durations=durations, gc_pauses=collections)
    Path(args.out).write_text(json.dumps(result))
    return 0


async def recancel(grace_s: float = 5.0) -> None:
    """Cancel again a task whose cancellation has been pending for ``grace_s``.

    Python 3.11's ``asyncio.wait_for`` (pymodbus awaits every reply with it) drops a
    cancellation that arrives as the awaited reply completes (fixed in 3.12): the poller then
    polls on, and the gateway never stops. This keeps the benchmark from hanging on it, and
    says so on stderr.
    """
    pending: dict[asyncio.Task[Any], int] = {}
    while True:
        await asyncio.sleep(1.0)
        for task in asyncio.all_tasks():
            if task.done() or not task.cancelling():
                continue
            pending[task] = pending.get(task, 0) + 1
            if pending[task] >= grace_s:
                print(
                    f"probe: {task.get_name()} ignored its cancellation for {grace_s:g} s: cancelled again",
                    file=sys.stderr,
                    flush=True,
                )
                pending[task] = 0
                task.cancel()


# --- output -------------------------------------------------------------------------------------------


def print_modbus(results: list[dict[str, Any]], seconds: float, loop: str) -> None:
    header = (
        f"{'case':<28}{'target/s':>10}{'published/s':>13}{'gw CPU %':>10}{'RSS MiB':>9}"
        f"{'srv CPU %':>11}{'late p50 ms':>13}{'late p99 ms':>13}{'overruns':>10}"
    )
    print(f"Modbus poll -> decode -> MQTT, {seconds:g} s per case, loop: {loop}")
    print(header)
    for r in results:
        print(
            f"{r['case']:<28}{r['target_values_per_s']:>10.0f}{r['published_values_per_s']:>13.0f}"
            f"{r['gateway_cpu_pct']:>10.1f}{r['gateway_rss_mib']:>9.1f}{r['server_cpu_pct']:>11.1f}"
            f"{r['lateness_p50_ms']:>13.2f}{r['lateness_p99_ms']:>13.2f}{r['overruns']:>10}"
        )
    print_cpu_per_thousand(results)


def print_opcua(results: list[dict[str, Any]], seconds: float, loop: str) -> None:
    header = (
        f"{'case':<38}{'target/s':>10}{'published/s':>13}{'arrived/s':>11}{'gw CPU %':>10}{'RSS MiB':>9}"
        f"{'srv CPU %':>11}{'srv max %':>11}{'late p50 ms':>13}{'late p99 ms':>13}{'poll p99 ms':>13}{'overruns':>10}"
    )
    print(f"OPC UA read or subscription -> MQTT, {seconds:g} s per case, loop: {loop}")
    print(header)
    for r in results:
        arrived = r["notifications_per_s"] if r["mode"] == "subscribe" else r["decoded_values_per_s"]
        print(
            f"{r['case']:<38}{r['target_values_per_s']:>10.0f}{r['published_values_per_s']:>13.0f}{arrived:>11.0f}"
            f"{r['gateway_cpu_pct']:>10.1f}{r['gateway_rss_mib']:>9.1f}{r['server_cpu_pct']:>11.1f}"
            f"{r['server_max_process_cpu_pct']:>11.1f}{r['lateness_p50_ms']:>13.2f}{r['lateness_p99_ms']:>13.2f}"
            f"{r['poll_p99_ms']:>13.2f}{r['overruns']:>10}"
        )
    print_cpu_per_thousand(results)


def print_speed(results: list[dict[str, Any]], seconds: float, loop: str) -> None:
    """The issue's speed cases: heat-gateway beside the bare loop, same servers, broker, window."""
    print(f"Speed: one message per device per poll, 100 uint16 registers, {seconds:g} s per run, loop: {loop}")
    print(
        f"{'case':<28}{'program':<14}{'msg/s':>8}{'CPU %':>8}{'CPU us/msg':>12}"
        f"{'sample->broker p50 ms':>23}{'p99 ms':>9}{'max ms':>9}"
    )
    for r in results:
        rows = (("heat-gateway", r), ("bare loop", r["bare_loop"]), ("Node-RED", r["nodered"]))
        for program, m in rows:
            if m is None:
                continue
            print(
                f"{r['case']:<28}{program:<14}{m['messages_per_s']:>8.1f}{m['gateway_cpu_pct']:>8.2f}"
                f"{m['cpu_us_per_message']:>12.0f}{m['latency_p50_ms']:>23.2f}{m['latency_p99_ms']:>9.2f}"
                f"{m['latency_max_ms']:>9.2f}"
            )
    ratios = ", ".join(f"{r['cpu_us_per_message'] / r['bare_loop']['cpu_us_per_message']:.2f}" for r in results)
    print(f"heat-gateway CPU per message / bare loop's: {ratios}")
    if all(r["nodered"] is not None for r in results):
        ratios = ", ".join(f"{r['cpu_us_per_message'] / r['nodered']['cpu_us_per_message']:.2f}" for r in results)
        print(f"heat-gateway CPU per message / Node-RED's: {ratios}")
    else:
        print("Node-RED: not installed, not measured (scripts/ensure-node-red.sh installs it into bench/nodered)")


def print_cpu_per_thousand(results: list[dict[str, Any]]) -> None:
    pauses = ", ".join(f"{r['full_gc_count']} x {r['full_gc_max_ms']:.1f} ms" for r in results)
    print(f"full garbage collections in the gateway (count x longest): {pauses}")
    if len(results) > 1:
        per_k = [
            r["gateway_cpu_pct"] / (r["published_values_per_s"] / 1000) for r in results if r["published_values_per_s"]
        ]
        figures = ", ".join(f"{x:.2f} %" for x in per_k)
        print(f"gateway CPU per 1,000 values/s: {figures} (median {statistics.median(per_k):.2f} %)")


def problems(results: list[dict[str, Any]]) -> Iterator[str]:
    """What makes a case's figures suspect: failed polls, dropped values, lost values."""
    for r in results:
        if r["failures"] or r["outbox_dropped"]:
            yield f"{r['protocol']} {r['case']}: {r['failures']} failed polls, {r['outbox_dropped']} readings dropped"
        if r["published_values_per_s"] < 0.95 * r["target_values_per_s"]:
            published, target = r["published_values_per_s"], r["target_values_per_s"]
            yield f"{r['protocol']} {r['case']}: published {published:.0f}/s of {target:.0f}/s"


def main() -> int:
    if sys.argv[1:2] == ["probe"]:
        return probe(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per case")
    parser.add_argument("--uvloop", action="store_true", help="run the gateway on uvloop")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", help="run only cases whose protocol (modbus, opcua), mode or name contains this")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp, MosquittoServer(workdir=Path(tmp) / "mosquitto") as broker:
        for case in CASES:
            if args.only and args.only not in case.key:
                continue
            workdir = Path(tmp) / case.key.replace(" ", "_").replace("@", "at")
            workdir.mkdir()
            results.append(run_case(case, broker, args.seconds, workdir, uvloop=args.uvloop))
            print(f"done: {case.protocol} {case.name}", file=sys.stderr, flush=True)
    loop = "uvloop" if args.uvloop else "asyncio"
    speed = [r for r in results if r["speed"]]
    modbus = [r for r in results if r["protocol"] == "modbus" and not r["speed"]]
    if speed:
        print_speed(speed, args.seconds, loop)
        print()
    opcua = [r for r in results if r["protocol"] == "opcua"]
    if modbus:
        print_modbus(modbus, args.seconds, loop)
    if modbus and opcua:
        print()
    if opcua:
        print_opcua(opcua, args.seconds, loop)
    for problem in problems(results):
        print(f"warning: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
