"""`make demo`'s script, run for real: simulators, a private Mosquitto, gateway and historian.

It listens on the example site's fixed simulator ports (15021-15040, 14840-14841), so it
cannot run beside another demo; the port check it does first is tested here too.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scripts" / "demo.py"

pytestmark = pytest.mark.slow


def _children_left(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


def test_demo_shows_the_plant_and_stops_everything_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--seconds", "600"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    deadline = time.monotonic() + 120
    try:
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if re.match(r"historian -> \S+: [\d ]+ lines written, \d+ lines/s", line):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    text = "".join(output)
    assert process.returncode == 0, text[-3000:] + rest[-3000:]
    assert "CONTROL IS ON" in text
    assert "legend:" in text
    assert re.search(r"^cdu-12 +\d+\.\d\d +\d+\.\d\d", text, re.MULTILINE), text[-3000:]
    assert "hp-plc" in text
    assert "hp_supply_setpoint_c=" in text  # the PLC's setpoints are shown, whatever the alphabet says
    assert "e+0" not in text
    assert re.search(r"historian -> \S+: [\d ]+ lines written, \d+ lines/s", text), text[-2000:]
    time.sleep(1)
    assert not _children_left(str(REPO / "config" / "site.example.yaml")), "a simulator or gateway outlived the demo"


def test_demo_refuses_to_start_when_a_simulator_port_is_taken() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 15040))
        except OSError:
            pytest.fail("port 15040 is already in use: is a demo running?")
        holder.listen()
        result = subprocess.run(
            [sys.executable, str(DEMO), "--seconds", "1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "15040 (heat-meter)" in result.stderr
    assert "Traceback" not in result.stderr
