"""Fault injection on command into a running `heat-gateway simulate` process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


def command(port: int, body: dict) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(json.dumps(body).encode() + b"\n")
        return json.loads(sock.makefile().readline())


def modbus_read(port: int, timeout_s: float = 1.0) -> bytes:
    """FC3 read of holding register 100 at unit 1: the raw reply, or b'' on timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(bytes.fromhex("0001 0000 0006 01 03 0064 0001".replace(" ", "")))
        try:
            return sock.recv(256)
        except TimeoutError:
            return b""


@pytest.fixture
def simulator(tmp_path):
    modbus_port, control_port = free_port(), free_port()
    site = tmp_path / "site.yaml"
    site.write_text(
        f"site: sim\nprofiles_dir: {REPO / 'config' / 'profiles'}\ndevices:\n"
        f"  - {{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {modbus_port}, profile: cdu}}\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "-c", str(site), "--control-port", str(control_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", control_port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield modbus_port, control_port
    process.terminate()
    process.wait(timeout=10)


def test_faults_on_command(simulator):
    modbus_port, control_port = simulator
    reply = modbus_read(modbus_port)
    assert reply[7] == 3  # a normal FC3 answer (setpoint register)

    assert command(control_port, {"device": "cdu-1", "fault": "exception", "code": 6}) == {"ok": True}
    reply = modbus_read(modbus_port)
    assert (reply[7], reply[8]) == (0x83, 6)  # exception response, server device busy

    assert command(control_port, {"device": "cdu-1", "fault": "silent"}) == {"ok": True}
    assert modbus_read(modbus_port, timeout_s=0.5) == b""

    assert command(control_port, {"device": "cdu-1", "fault": "none"}) == {"ok": True}
    assert modbus_read(modbus_port)[7] == 3

    answer = command(control_port, {"device": "cdu-9", "fault": "silent"})
    assert answer["ok"] is False
    assert "no simulated device 'cdu-9'" in answer["error"]
    answer = command(control_port, {"device": "cdu-1", "fault": "sideways"})
    assert answer["ok"] is False
    assert "sideways" in answer["error"]
