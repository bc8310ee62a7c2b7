"""The OPC UA driver against node-opcua, a server that is not asyncua (tests/interop/opcua_server.js).

node-opcua is installed into tests/interop/node_modules by scripts/ensure-node-opcua.sh (which
`make test` runs; the fixture below runs it too, so the file also works on its own). The tests
skip only when node or npm is missing; a failed install fails them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.commissioning.opcua_browse import browse, format_tree
from gateway.config.profile import OpcUaProfile
from gateway.config.site import OpcUaDevice
from gateway.drivers.base import DeviceFault, DeviceUnavailable
from gateway.drivers.opcua import OpcUaDriver
from gateway.drivers.opcua.errors import AuthenticationFailed, BadStatusOnly
from simulators.opcua_server import free_port, write_certificate

REPO = Path(__file__).resolve().parent.parent
INTEROP = REPO / "tests" / "interop"
URI = "urn:heat-gateway:interop"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are needed for the node-opcua interop server (apt-get install nodejs npm)",
)

PROFILE = OpcUaProfile.model_validate(
    {
        "protocol": "opcua",
        "model": "node-opcua interop PLC",
        "namespace_uri": URI,
        "signals": {
            "supply_temp_c": {"node": f"nsu={URI};s=Plant.SupplyTemp", "type": "float64"},
            "flow_m3h": {"node": f"nsu={URI};s=Plant.Flow", "type": "float32"},
            "state": {"node": f"nsu={URI};s=Plant.State", "type": "uint16"},
            "enabled": {"node": f"nsu={URI};s=Plant.Enabled", "type": "bool"},
            "broken_c": {"node": f"nsu={URI};s=Plant.Broken", "type": "float64"},
            "serial": {"node": f"nsu={URI};s=Info.Serial", "type": "string"},
            # the profile says float64; the node is a Float (and Stage an Int16)
            "setpoint_c": {
                "node": f"nsu={URI};s=Plant.Setpoint",
                "type": "float64",
                "access": "read_write",
                "min": 20,
                "max": 80,
            },
            "stage": {
                "node": f"nsu={URI};s=Plant.Stage",
                "type": "float64",
                "access": "read_write",
                "min": 0,
                "max": 4,
            },
        },
    }
)


@pytest.fixture(scope="module")
def node_opcua() -> Path:
    """tests/interop with node-opcua installed (the script is a no-op when it already is)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "ensure-node-opcua.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"installing node-opcua failed:\n{result.stdout}\n{result.stderr}"
    assert (INTEROP / "node_modules" / "node-opcua").is_dir()
    return INTEROP


@asynccontextmanager
async def node_server(folder: Path, pki: Path, *flags: str) -> AsyncIterator[str]:
    """Start opcua_server.js on a free port; yield its endpoint; stop it (stdin closes -> exit)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "node",
        str(folder / "opcua_server.js"),
        str(port),
        str(pki),
        *flags,
        cwd=folder,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert process.stdout is not None
    assert process.stdin is not None
    output: list[str] = []
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError("node-opcua server exited:\n" + "".join(output))
                output.append(line)
                if line.startswith("LISTENING"):
                    break
        drain = asyncio.create_task(process.stdout.read(), name="node-opcua-output")
        yield f"opc.tcp://127.0.0.1:{port}"
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        if drain is not None:
            await drain


def make_device(endpoint: str, **overrides: Any) -> OpcUaDevice:
    settings: dict[str, Any] = {
        "name": "interop-plc",
        "kind": "heat_pump_plc",
        "profile": "interop",
        "protocol": "opcua",
        "endpoint": endpoint,
        "poll_period_s": 0.2,
        "timeout_s": 2.0,
    }
    settings.update(overrides)
    return OpcUaDevice.model_validate(settings)


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.1)


async def test_read_write_subscribe_and_browse_against_node_opcua(node_opcua, tmp_path):
    async with node_server(node_opcua, tmp_path / "pki") as endpoint:
        async with OpcUaDriver(make_device(endpoint), PROFILE, tmp_path) as driver:
            reading = await driver.read()
            assert reading.values["flow_m3h"] == 120.5
            assert reading.values["state"] == 4.0
            assert reading.values["enabled"] == 1.0
            assert reading.values["supply_temp_c"] >= 45.25
            assert reading.bad == {"broken_c": "BadSensorFailure"}
            assert reading.texts == {"serial": "NODE-0001"}
            assert await driver.write("setpoint_c", 55.5) == 55.5  # Float node
            assert await driver.write("stage", 3) == 3.0  # Int16 node
            with pytest.raises(DeviceFault, match=r"Plant\.Setpoint \(setpoint_c\): write refused: BadOutOfRange"):
                await driver.write("setpoint_c", 70)  # the server's own range is 30-60
            assert (await driver.read()).values["setpoint_c"] == 55.5

        # A device whose every node is Bad is unavailable, with the status names as the reason.
        only_broken = PROFILE.model_copy(update={"signals": {"broken_c": PROFILE.signals["broken_c"]}})
        async with OpcUaDriver(make_device(endpoint), only_broken, tmp_path) as driver:
            with pytest.raises(BadStatusOnly, match=f"{endpoint}: every node answers a bad status: BadSensorFailure$"):
                await driver.read()

        async with OpcUaDriver(make_device(endpoint, mode="subscribe"), PROFILE, tmp_path) as driver:
            first = (await driver.read()).values["supply_temp_c"]

            async def moved() -> bool:
                return (await driver.read()).values.get("supply_temp_c", first) > first

            await eventually(moved)
            assert (await driver.read()).bad == {"broken_c": "BadSensorFailure"}

        text = "\n".join(format_tree(await browse(endpoint, depth=3)))
        assert f"nsu={URI};s=Plant.Setpoint" in text
        assert "Setpoint = 55.5" in text
        assert "read_write" in text


async def test_encrypted_session_with_user_against_node_opcua(node_opcua, tmp_path):
    cert, key = write_certificate(tmp_path / "client", "gateway", "urn:heat-gateway:interop-test")
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "certificate": cert, "private_key": key}
    async with node_server(node_opcua, tmp_path / "pki", "--secure") as endpoint:
        device = make_device(endpoint, username="gateway", password="s3cret", security=security)
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["state"] == 4.0
            assert await driver.write("setpoint_c", 42) == 42.0
        assert (tmp_path / "opcua" / "trusted" / "interop-plc.der").is_file()
        wrong = make_device(endpoint, username="gateway", password="nope", security=security)
        with pytest.raises(
            AuthenticationFailed, match=f"connect to {endpoint}: authentication failed for user 'gateway'"
        ):
            await OpcUaDriver(wrong, PROFILE, tmp_path).connect()
        with pytest.raises(DeviceUnavailable, match="the server refuses an unsecured channel"):
            await OpcUaDriver(make_device(endpoint), PROFILE, tmp_path).connect()


async def test_a_server_that_does_not_trust_the_gateways_certificate(node_opcua, tmp_path):
    """node-opcua with automatic acceptance off: an unknown client certificate is refused."""
    cert, key = write_certificate(tmp_path / "client", "gateway", "urn:heat-gateway:interop-test")
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "certificate": cert, "private_key": key}
    async with node_server(node_opcua, tmp_path / "pki", "--secure", "--reject-unknown-clients") as endpoint:
        device = make_device(endpoint, username="gateway", password="s3cret", security=security)
        with pytest.raises(AuthenticationFailed) as caught:
            await OpcUaDriver(device, PROFILE, tmp_path).connect()
        assert caught.value.cause == "authentication"
        assert f"connect to {endpoint}: the server refused the secure channel" in str(caught.value)
