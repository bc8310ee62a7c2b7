"""Every command in the README's Commands section, run as written against a running simulator.

The commands are read from the README itself, so a command that changes there is tested as it
now reads. The placeholders are filled in (FILE, DEVICE, HOST, PORT, ...), the example site is
replaced by one on free ports (the example's fixed ports may be taken by a demo), and the
commands that run until SIGTERM are started, checked to do their job, and stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live import Collector
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
HEAT_GATEWAY = str(Path(sys.executable).parent / "heat-gateway")

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The Commands block's command lines, without their comments (continuations joined)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Commands", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        code = line.split("  #", 1)[0].strip()
        if code.startswith("heat-gateway"):
            commands.append(code)
    return commands


def fault_examples() -> list[str]:
    """The `heat-gateway fault '...'` examples anywhere in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"`(heat-gateway fault '[^`]*')`", readme)))


class Site:
    """A site file on free ports: three CDUs and the heat-pump PLC, a private broker and database."""

    def __init__(self, tmp_path: Path, mqtt_port: int, influx_url: str) -> None:
        self.cdu_ports = [free_port() for _ in range(3)]
        self.opcua_port = free_port()
        self.control_port = free_port()
        devices = "".join(
            f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {port}, unit_id: 1, "
            "profile: cdu, poll_period_s: 0.5, timeout_s: 0.5}\n"
            for i, port in enumerate(self.cdu_ports, start=1)
        )
        devices += (
            "  - {name: hp-plc, kind: heat_pump_plc, protocol: opcua, "
            f'endpoint: "opc.tcp://127.0.0.1:{self.opcua_port}/", profile: hp-plc, '
            "poll_period_s: 1.0, timeout_s: 2.0}\n"
        )
        self.path = tmp_path / "site.yaml"
        self.path.write_text(
            f"site: e2e\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
            f"devices:\n{devices}"
            f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: readme-{os.getpid()}}}\n"
            f"influxdb: {{url: '{influx_url}', org: heat, bucket: heat, token: t}}\n",
            encoding="utf-8",
        )
        self.reports = tmp_path / "reports"

    def fill(self, command: str) -> list[str]:
        """The README's command with its placeholders filled in, as argv."""
        text = command.replace("config/site.example.yaml", str(self.path)).replace("FILE", str(self.path))
        text = text.replace("DEVICE SIGNAL VALUE", "cdu-1 tcs_supply_setpoint_c 38.5")
        text = text.replace("DEVICE [SIGNAL...]", "cdu-1 tcs_supply_temp_c heat_load_kw")
        text = text.replace("opc.tcp://HOST:PORT/", f"opc.tcp://127.0.0.1:{self.opcua_port}/")
        # only unit 1 exists behind each simulated CDU: ask for a few, not the default 1-247
        text = text.replace("HOST [--port 502]", f"127.0.0.1 --port {self.cdu_ports[0]} --units 1-3")
        text = text.replace("--report reports/", f"--report {self.reports}")
        text = text.replace("--control-port 15099", f"--control-port {self.control_port}")
        argv = shlex.split(text)
        if argv[1] == "fault":
            argv += ["--control-port", str(self.control_port)]
        argv[0] = HEAT_GATEWAY
        return argv


def run(argv: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_every_readme_command_works_as_written(tmp_path, mosquitto, victoria) -> None:
    commands = readme_commands()
    verbs = {shlex.split(c)[1] for c in commands}
    assert verbs == {"check", "simulate", "run", "historian", "read", "write", "browse", "scan", "fault"}, verbs
    site = Site(tmp_path, mosquitto.port, victoria.url)
    by_verb: dict[str, list[list[str]]] = {}
    for command in commands:
        argv = site.fill(command)
        by_verb.setdefault(argv[1], []).append(argv)
    serving = next(a for a in by_verb["simulate"] if "--control-port" in a)
    simulator = subprocess.Popen(serving, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    collector = Collector(mosquitto.port)
    try:
        deadline = time.monotonic() + 30
        while run([HEAT_GATEWAY, "read", "-c", str(site.path), "cdu-1"]).returncode != 0:
            assert time.monotonic() < deadline, "the simulator did not serve cdu-1"
            time.sleep(0.5)

        check = run(by_verb["check"][0])
        assert check.returncode == 0, check.stdout + check.stderr
        assert "cdu-3" in check.stdout

        read = run(by_verb["read"][0])
        assert read.returncode == 0, read.stderr
        assert "tcs_supply_temp_c" in read.stdout
        assert "heat_load_kw" in read.stdout

        write = run(by_verb["write"][0])
        assert write.returncode == 0, write.stdout + write.stderr
        assert "38.5" in write.stdout

        browse = run(by_verb["browse"][0])
        assert browse.returncode == 0, browse.stderr
        assert "nsu=urn:heat-gateway:sim:hp-plc;s=" in browse.stdout

        scan = run(by_verb["scan"][0])
        assert scan.returncode == 0, scan.stdout + scan.stderr
        assert re.search(r"\b1\b", scan.stdout)

        # `run` and, while it publishes, `historian`: each does its job and stops on SIGTERM.
        # The session's database holds other tests' site "e2e" too: only points stamped after
        # the historian started count as its work.
        started: list[tuple[str, subprocess.Popen[bytes]]] = []
        stored = 'cdu_tcs_supply_temp_c{device="cdu-2",site="e2e"}'
        try:
            for verb, ready in (
                ("run", lambda _since: bool(collector.fields("cdu-2"))),
                ("historian", lambda since: bool(victoria.export(stored, start=since))),
            ):
                since = time.time()
                process = subprocess.Popen(by_verb[verb][0], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started.append((verb, process))
                deadline = time.monotonic() + 40
                while not ready(since):
                    assert process.poll() is None, f"{verb} exited early with {process.returncode}"
                    assert time.monotonic() < deadline, f"{verb} did not do its job in 40 s"
                    if verb == "historian":
                        victoria.flush()
                    time.sleep(0.3)
            for verb, process in reversed(started):
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=15) == 0, f"{verb} did not stop cleanly on SIGTERM"
        finally:
            for _, process in started:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        # The fault examples, as the README writes them, against the serving simulator.
        examples = fault_examples()
        assert examples
        assert any("heat-gateway fault" in c for c in commands)
        for example in examples:
            argv = site.fill(example)
            fault = json.loads(argv[2])
            assert run(argv).returncode == 0, example
            broken = run([HEAT_GATEWAY, "read", "-c", str(site.path), fault["device"]], timeout_s=60)
            assert broken.returncode == 1, f"{example}: {fault['device']} still reads"
            clear = json.dumps({"device": fault["device"], "fault": "none"})
            assert run([HEAT_GATEWAY, "fault", clear, "--control-port", str(site.control_port)]).returncode == 0
            assert run([HEAT_GATEWAY, "read", "-c", str(site.path), fault["device"]]).returncode == 0
    finally:
        simulator.send_signal(signal.SIGTERM)
        try:
            simulator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            simulator.kill()
            simulator.wait()
        collector.close()

    fast = next(a for a in by_verb["simulate"] if "--fast" in a)
    result = run(fast, timeout_s=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout
    assert list(site.reports.glob("*.json"))
    assert list(site.reports.glob("*.png"))
