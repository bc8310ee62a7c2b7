"""OPC UA driver against real asyncua servers started in-process on free ports (no mocks).

Each test serves a small profile with :class:`simulators.opcua_server.OpcUaDeviceServer` and
talks to it through :class:`gateway.drivers.opcua.OpcUaDriver`, as the gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import ua
from pydantic import SecretStr, ValidationError

from gateway.commissioning.opcua_browse import browse, format_tree
from gateway.config import load_site
from gateway.config.loader import load_profile
from gateway.config.profile import OpcUaProfile
from gateway.config.site import OpcUaDevice
from gateway.drivers.base import ConnectionRefused, DeviceFault, DeviceTimeout, DeviceUnavailable, WriteRefused
from gateway.drivers.factory import make_driver
from gateway.drivers.opcua import OpcUaDriver, fingerprint, parse_node_id
from gateway.drivers.opcua import subscription as subscription_module
from gateway.drivers.opcua.errors import AuthenticationFailed, BadStatusOnly
from gateway.poller import DevicePoller
from gateway.process_image import ProcessImage
from simulators.opcua_server import OpcUaDeviceServer, free_port, make_certificate, write_certificate

REPO = Path(__file__).resolve().parent.parent
URI = "urn:heat-gateway:test:plc"

PROFILE = OpcUaProfile.model_validate(
    {
        "protocol": "opcua",
        "model": "Test PLC",
        "namespace_uri": URI,
        "signals": {
            "supply_temp_c": {"node": f"nsu={URI};s=HeatPump.SupplyTemp", "type": "float64", "unit": "degC"},
            "flow_m3h": {"node": f"nsu={URI};s=HeatPump.Flow", "type": "float32", "unit": "m3/h"},
            "state": {"node": f"nsu={URI};s=HeatPump.State", "type": "uint16"},
            "enabled": {"node": f"nsu={URI};s=HeatPump.Enabled", "type": "bool"},
            "serial": {"node": f"nsu={URI};s=Info.Serial", "type": "string"},
            "setpoint_c": {
                "node": f"nsu={URI};s=HeatPump.Setpoint",
                "type": "float64",
                "access": "read_write",
                "min": 30,
                "max": 80,
            },
            "stage": {
                "node": f"nsu={URI};s=HeatPump.Stage",
                "type": "float64",
                "access": "read_write",
                "min": 0,
                "max": 4,
            },
        },
    }
)
# What the PLC really has: the profile above says float64 for both writable nodes; the server's
# variables are Float and Int16, so the driver must convert a write to the node's own type.
SERVER_PROFILE = PROFILE.model_copy(
    update={
        "signals": {
            **PROFILE.signals,
            "setpoint_c": PROFILE.signals["setpoint_c"].model_copy(update={"type": "float32"}),
            "stage": PROFILE.signals["stage"].model_copy(update={"type": "int16"}),
        }
    }
)
INITIAL: dict[str, float | str] = {
    "serial": "SN-0042",
    "supply_temp_c": 45.25,
    "flow_m3h": 120.5,
    "state": 4,
    "enabled": 1,
    "setpoint_c": 50.0,
    "stage": 2,
}


def make_device(server: OpcUaDeviceServer | str, **overrides: Any) -> OpcUaDevice:
    endpoint = server if isinstance(server, str) else server.endpoint
    settings: dict[str, Any] = {
        "name": "hp-plc",
        "kind": "heat_pump_plc",
        "profile": "test",
        "protocol": "opcua",
        "endpoint": endpoint,
        "poll_period_s": 0.2,
        "timeout_s": 1.0,
        "backoff_max_s": 0.4,
    }
    settings.update(overrides)
    return OpcUaDevice.model_validate(settings)


@pytest.fixture
async def server() -> AsyncIterator[OpcUaDeviceServer]:
    sim = OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL)
    await sim.start()
    yield sim
    await sim.stop()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# --- polling -----------------------------------------------------------------------------------


async def test_poll_reads_every_node_in_one_read_with_source_timestamps(server, tmp_path):
    source_time = datetime.now(UTC).replace(microsecond=250_000) - timedelta(seconds=5)
    await server.update({"supply_temp_c": 46.5}, source_time=source_time)
    async with OpcUaDriver(make_device(server), PROFILE, tmp_path) as driver:
        before = server.read_requests
        reading = await driver.read()
        assert server.read_requests - before == 1, "one Read service call for the whole device"
    assert reading.values == {
        "supply_temp_c": 46.5,
        "flow_m3h": 120.5,
        "state": 4.0,
        "enabled": 1.0,
        "setpoint_c": 50.0,
        "stage": 2.0,
    }
    assert reading.texts == {"serial": "SN-0042"}
    assert reading.bad == {}
    assert reading.uncertain == {}
    # The newest value is from now; freeze everything but one node to see its own timestamp.
    assert reading.timestamp_ns >= int(source_time.timestamp() * 1e9)


async def test_the_reading_carries_the_source_timestamp(tmp_path):
    profile = OpcUaProfile.model_validate(
        {"protocol": "opcua", "model": "one", "signals": {"a": {"node": f"nsu={URI};s=A", "type": "float64"}}}
    )
    async with OpcUaDeviceServer(profile) as sim:
        source_time = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
        await sim.update({"a": 1.5}, source_time=source_time)
        async with OpcUaDriver(make_device(sim), profile, tmp_path) as driver:
            reading = await driver.read()
    assert reading.values == {"a": 1.5}
    assert reading.timestamp_ns == int(source_time.timestamp()) * 10**9 + 678_000_000


async def test_reads_are_split_only_by_the_servers_max_nodes_per_read(tmp_path):
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, max_nodes_per_read=3) as sim:
        async with OpcUaDriver(make_device(sim), PROFILE, tmp_path) as driver:
            before = sim.read_requests
            reading = await driver.read()
            assert sim.read_requests - before == math.ceil(len(PROFILE.signals) / 3)
        assert len(reading.values) + len(reading.texts) == len(PROFILE.signals)
        # max_nodes_per_read in the site file overrides what the server says (and here breaks it)
        with pytest.raises(DeviceFault, match="BadTooManyOperations"):
            await OpcUaDriver(make_device(sim, max_nodes_per_read=5), PROFILE, tmp_path).connect()


async def test_nsu_ids_resolve_when_the_namespace_index_shifts(tmp_path):
    extra = ["urn:vendor:a", "urn:vendor:b", "urn:vendor:c"]
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, extra_namespaces=extra) as sim:
        namespaces = await sim._server.get_namespace_array()
        assert namespaces.index(URI) == 5, "the profile's namespace is not at the usual index 2"
        async with OpcUaDriver(make_device(sim), PROFILE, tmp_path) as driver:
            reading = await driver.read()
        assert reading.values["supply_temp_c"] == 45.25
        # The same node by index: ns=2 is urn:vendor:a here, so the node is not found, by name.
        by_index = OpcUaProfile.model_validate(
            {
                "protocol": "opcua",
                "model": "by index",
                "signals": {"t": {"node": "ns=2;s=HeatPump.SupplyTemp", "type": "float64"}},
            }
        )
        with pytest.raises(DeviceFault) as caught:
            await OpcUaDriver(make_device(sim), by_index, tmp_path).connect()
        message = str(caught.value)
        assert "hp-plc" in message
        assert "ns=2;s=HeatPump.SupplyTemp" in message
        assert "not on the server" in message


async def test_a_missing_namespace_uri_names_device_and_node(server, tmp_path):
    profile = OpcUaProfile.model_validate(
        {"protocol": "opcua", "model": "x", "signals": {"t": {"node": "nsu=urn:nowhere;s=T", "type": "float64"}}}
    )
    driver = OpcUaDriver(make_device(server), profile, tmp_path)
    with pytest.raises(DeviceFault) as caught:
        await driver.connect()
    message = str(caught.value)
    assert "hp-plc" in message
    assert "urn:nowhere" in message
    assert "nsu=urn:nowhere;s=T" in message
    assert not driver.connected
    folder = OpcUaProfile.model_validate(
        {"protocol": "opcua", "model": "x", "signals": {"t": {"node": f"nsu={URI};s=HeatPump", "type": "float64"}}}
    )
    with pytest.raises(DeviceFault, match=rf"are not variables: t \(nsu={URI};s=HeatPump\)"):
        await OpcUaDriver(make_device(server), folder, tmp_path).connect()


def test_node_ids_parse_and_bad_ones_are_config_errors(tmp_path):
    assert parse_node_id("nsu=urn:x:y;s=A.B;C").identifier == "A.B;C"
    assert parse_node_id("ns=3;i=1001").namespace_index == 3
    profile = OpcUaProfile.model_validate(
        {"protocol": "opcua", "model": "x", "signals": {"t": {"node": "HeatPump.Temp", "type": "float64"}}}
    )
    with pytest.raises(Exception, match=r"signals\.t\.node: 'HeatPump\.Temp' is not a node id"):
        OpcUaDriver(make_device("opc.tcp://127.0.0.1:4840"), profile, tmp_path)


async def test_a_bad_status_marks_only_that_signal_bad(server, tmp_path):
    async with OpcUaDriver(make_device(server), PROFILE, tmp_path) as driver:
        await server.set_bad("supply_temp_c", "BadSensorFailure")
        await server.set_bad("flow_m3h", "UncertainLastUsableValue")
        reading = await driver.read()
        assert reading.bad == {"supply_temp_c": "BadSensorFailure"}
        assert "supply_temp_c" not in reading.values
        assert reading.uncertain == {"flow_m3h": 120.5}
        assert reading.values["state"] == 4.0
        await server.clear("supply_temp_c")
        await server.clear("flow_m3h")
        reading = await driver.read()
        assert reading.bad == {}
        assert reading.values["supply_temp_c"] == 45.25


# --- subscriptions ------------------------------------------------------------------------------


async def test_subscription_delivers_changes(server, tmp_path):
    device = make_device(server, mode="subscribe", sampling_interval_ms=50)
    async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
        first = await driver.read()
        assert first.values["supply_temp_c"] == 45.25
        reads_before = server.read_requests
        await server.update({"supply_temp_c": 47.0, "state": 5})

        async def changed() -> bool:
            reading = await driver.read()
            return reading.values.get("supply_temp_c") == 47.0 and reading.values.get("state") == 5.0

        deadline = time.monotonic() + 3
        while not await changed():
            assert time.monotonic() < deadline, "change not delivered"
            await asyncio.sleep(0.05)
        assert server.read_requests == reads_before, "values came by subscription, not by Read"
        await server.set_bad("state", "BadOutOfService")
        await wait_for(lambda: True, 0)
        deadline = time.monotonic() + 3
        while "state" not in (await driver.read()).bad:
            assert time.monotonic() < deadline, "bad status not delivered"
            await asyncio.sleep(0.05)
        assert (await driver.read()).bad["state"] == "BadOutOfService"


async def test_subscription_deadband_holds_back_small_moves(server, tmp_path):
    device = make_device(server, mode="subscribe", sampling_interval_ms=20, deadband_abs=1.0)
    async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
        assert (await driver.read()).values["supply_temp_c"] == 45.25
        await server.update({"supply_temp_c": 45.75, "enabled": 0})
        await asyncio.sleep(0.5)
        reading = await driver.read()
        assert reading.values["supply_temp_c"] == 45.25, "a move below the deadband is not reported"
        assert reading.values["enabled"] == 0.0, "bool nodes have no deadband"
        await server.update({"supply_temp_c": 47.5})
        await asyncio.sleep(0.5)
        assert (await driver.read()).values["supply_temp_c"] == 47.5


async def test_subscription_values_go_stale_when_the_server_stops_confirming(server, tmp_path, monkeypatch):
    device = make_device(server, mode="subscribe")
    async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
        assert driver.stale_after_s == pytest.approx(0.6)  # 3 poll periods; keep-alive every 0.2 s
        assert (await driver.read()).bad == {}
        real = time.monotonic
        # The server's keep-alives stop reaching the driver (seen from the driver: time jumps).
        monkeypatch.setattr(subscription_module.time, "monotonic", lambda: real() + 1.0)
        reading = await driver.read()
        assert reading.values == {}
        assert set(reading.bad) == set(PROFILE.signals)
        assert reading.bad["supply_temp_c"].startswith("stale: not confirmed by the server for")
        # Much longer: the driver gives up on the session so the poller builds a new one.
        monkeypatch.setattr(subscription_module.time, "monotonic", lambda: real() + 10.0)
        with pytest.raises(DeviceUnavailable, match="subscription silent for"):
            await driver.read()


# --- writes -------------------------------------------------------------------------------------


async def test_writes_convert_to_the_nodes_own_type_and_read_back(server, tmp_path):
    async with OpcUaDriver(make_device(server), PROFILE, tmp_path) as driver:
        assert await driver.write("setpoint_c", 55.5) == 55.5  # profile float64 -> Float node
        assert await driver.write("stage", 3) == 3.0  # profile float64 -> Int16 node
        # 55.1 is not exact in a Float: the read-back is the Float's value
        back = await driver.write("setpoint_c", 55.1)
        assert back == pytest.approx(55.1, rel=1e-6)
    assert server.writes[:2] == [("setpoint_c", 55.5), ("stage", 3.0)]


async def test_writes_outside_the_profile_limits_are_refused_before_sending(server, tmp_path):
    async with OpcUaDriver(make_device(server), PROFILE, tmp_path) as driver:
        with pytest.raises(WriteRefused, match=r"outside its limits \[30, 80\]"):
            await driver.write("setpoint_c", 85)
        with pytest.raises(WriteRefused, match="read-only"):
            await driver.write("supply_temp_c", 40)
        with pytest.raises(WriteRefused, match="no signal"):
            await driver.write("nothing", 1)
    assert server.writes == []


async def test_status_codes_of_a_refused_write_name_device_and_node(tmp_path):
    # The PLC's own range is narrower than the profile's: 30-60, not 30-80.
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, limits={"setpoint_c": (30, 60)}) as sim:
        async with OpcUaDriver(make_device(sim), PROFILE, tmp_path) as driver:
            with pytest.raises(DeviceFault) as caught:
                await driver.write("setpoint_c", 70)
        message = str(caught.value)
        assert "BadOutOfRange" in message
        assert "hp-plc" in message
        assert f"nsu={URI};s=HeatPump.Setpoint" in message
        assert sim.writes == []
        # A profile that thinks the node is an Int32 sends the wrong type: BadTypeMismatch.
        wrong = PROFILE.model_copy(update={"signals": {"setpoint_c": PROFILE.signals["setpoint_c"]}})
        async with OpcUaDriver(make_device(sim), wrong, tmp_path) as driver:
            driver._by_signal["setpoint_c"].variant = ua.VariantType.Int32
            with pytest.raises(DeviceFault, match="BadTypeMismatch"):
                await driver.write("setpoint_c", 40)


async def test_a_read_only_user_gets_access_denied(tmp_path):
    users = {"viewer": "look", "operator": "act"}
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users=users, read_only_users={"viewer"}) as sim:
        device = make_device(sim, username="viewer", password="look")
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["supply_temp_c"] == 45.25
            with pytest.raises(DeviceFault, match=r"write refused: BadUserAccessDenied"):
                await driver.write("setpoint_c", 40)
        device = make_device(sim, username="operator", password="act")
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert await driver.write("setpoint_c", 40) == 40.0


# --- failures and reconnects ----------------------------------------------------------------------


async def test_connection_refused_and_timeouts(server, tmp_path):
    with pytest.raises(ConnectionRefused, match="connection refused") as caught:
        await OpcUaDriver(make_device(f"opc.tcp://127.0.0.1:{free_port()}/"), PROFILE, tmp_path).connect()
    assert caught.value.cause == "refused"
    async with OpcUaDriver(make_device(server, timeout_s=0.3), PROFILE, tmp_path) as driver:
        server.slow_s = 1.0
        with pytest.raises(DeviceTimeout, match=r"read: no reply within 0.3 s"):
            await driver.read()
        server.slow_s = 0.0


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_the_poller_rides_through_a_server_restart(mode, server, tmp_path):
    image = ProcessImage()
    driver = OpcUaDriver(make_device(server, mode=mode), PROFILE, tmp_path)
    poller = DevicePoller(driver, period_s=0.2, backoff_max_s=0.4, image=image, outbox=None)

    def sample(signal: str) -> Any:
        return image.snapshot(time.time_ns()).sample("hp-plc", signal)

    task = asyncio.create_task(poller.run(), name="poller")
    try:
        await wait_for(lambda: sample("supply_temp_c").value == 45.25)
        await server.stop()
        await wait_for(lambda: not poller.stats.available)
        assert sample("supply_temp_c").quality == "bad"
        await server.start()
        await server.update({"supply_temp_c": 52.0})
        await wait_for(lambda: sample("supply_temp_c").value == 52.0, timeout_s=8)
        assert poller.stats.available
        if mode == "subscribe":  # the new subscription delivers changes, not just the first value
            await server.update({"supply_temp_c": 53.0})
            await wait_for(lambda: sample("supply_temp_c").value == 53.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not driver.connected


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_a_server_answering_only_bad_statuses_makes_the_device_unavailable(mode, server, tmp_path):
    image = ProcessImage()
    driver = OpcUaDriver(make_device(server, mode=mode), PROFILE, tmp_path)
    poller = DevicePoller(driver, period_s=0.2, backoff_max_s=0.4, image=image, outbox=None)
    async with driver:
        assert await poller.poll_once() is not None
        assert poller.stats.available
        for signal in PROFILE.signals:
            await server.set_bad(signal, "BadOutOfService" if signal == "serial" else "BadSensorFailure")
        await asyncio.sleep(0.5)  # a publishing interval or two for the subscription
        with pytest.raises(BadStatusOnly) as caught:
            await driver.read()
        error = caught.value
        assert error.cause == "bad_status"
        assert str(error) == (
            f"hp-plc: {server.endpoint}: every node answers a bad status: BadOutOfService, BadSensorFailure x6"
        )
        assert error.statuses["supply_temp_c"] == "BadSensorFailure"
        assert await poller.poll_once() is None
        assert not poller.stats.available
        sample = image.snapshot(time.time_ns()).sample("hp-plc", "supply_temp_c")
        assert sample.quality == "bad"
        assert "BadSensorFailure x6" in str(sample.reason)
        # One good node is enough to publish: the others stay bad, each with its own status.
        await server.clear("supply_temp_c")
        await server.update({"supply_temp_c": 46.0})
        await asyncio.sleep(0.5)
        reading = await poller.poll_once()
        assert reading is not None
        assert reading.values == {"supply_temp_c": 46.0}
        assert reading.bad["flow_m3h"] == "BadSensorFailure"
        assert poller.stats.available


async def test_a_wrong_password_is_an_authentication_failure_naming_device_endpoint_and_user(tmp_path):
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users={"gateway": "s3cret"}) as sim:
        wrong = make_device(sim, username="gateway", password="guess")
        with pytest.raises(AuthenticationFailed) as caught:
            await OpcUaDriver(wrong, PROFILE, tmp_path).connect()
        assert caught.value.cause == "authentication"
        assert str(caught.value) == (
            f"hp-plc: connect to {sim.endpoint}: authentication failed for user 'gateway' "
            "(BadUserAccessDenied): wrong user name or password?"
        )
        anonymous = make_device(sim)
        with pytest.raises(AuthenticationFailed, match=f"connect to {sim.endpoint}: .* anonymous session"):
            await OpcUaDriver(anonymous, PROFILE, tmp_path).connect()


# --- security -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_certificate(tmp_path_factory) -> tuple[Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("pki"), "gateway", "urn:heat-gateway:test", server=False)


def secure_device(sim: OpcUaDeviceServer, cert: tuple[Path, Path], **security: Any) -> OpcUaDevice:
    settings = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "certificate": cert[0], "private_key": cert[1]}
    settings.update(security)
    return make_device(sim, username="gateway", password="s3cret", security=settings, timeout_s=2.0)


async def test_encrypted_session_with_user_and_trust_on_first_use(client_certificate, tmp_path):
    users = {"gateway": "s3cret"}
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users=users, encrypted=True) as sim:
        # The server refuses both an unsecured channel and an anonymous user.
        with pytest.raises(DeviceUnavailable, match="the server refuses an unsecured channel"):
            await OpcUaDriver(make_device(sim, username="gateway", password="s3cret"), PROFILE, tmp_path).connect()
        device = secure_device(sim, client_certificate)
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["supply_temp_c"] == 45.25
            assert await driver.write("setpoint_c", 61) == 61.0
        stored = tmp_path / "opcua" / "trusted" / "hp-plc.der"
        assert stored.read_bytes() == sim.certificate
        anonymous = device.model_copy(update={"username": None, "password": None})
        with pytest.raises(DeviceUnavailable, match="does not accept an anonymous session"):
            await OpcUaDriver(anonymous, PROFILE, tmp_path).connect()
        wrong = device.model_copy(update={"password": SecretStr("guess")})
        with pytest.raises(DeviceUnavailable) as caught:
            await OpcUaDriver(wrong, PROFILE, tmp_path).connect()
        assert "authentication failed for user 'gateway'" in str(caught.value)
        assert "BadUserAccessDenied" in str(caught.value)
        port = sim.port
    # Same endpoint, new server certificate: refused until an operator deletes the stored one.
    other = OpcUaDeviceServer(SERVER_PROFILE, port=port, users=users, encrypted=True)
    async with other:
        with pytest.raises(DeviceUnavailable, match="changed since it was first trusted") as caught:
            await OpcUaDriver(secure_device(other, client_certificate), PROFILE, tmp_path).connect()
        assert fingerprint(other.certificate)[:20] in str(caught.value)
        assert list((tmp_path / "opcua" / "rejected").glob("hp-plc-*.der"))
        stored.unlink()
        async with OpcUaDriver(secure_device(other, client_certificate), PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["state"] == 0.0


async def test_trust_list_pinned_certificate_and_sign_only(client_certificate, tmp_path):
    users = {"gateway": "s3cret"}
    modes = ("SignAndEncrypt", "Sign")
    async with OpcUaDeviceServer(
        SERVER_PROFILE, initial=INITIAL, users=users, encrypted=True, security_modes=modes
    ) as sim:
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        device = secure_device(sim, client_certificate, trust="list", trust_dir=trusted)
        with pytest.raises(DeviceUnavailable, match="is not in the trust list"):
            await OpcUaDriver(device, PROFILE, tmp_path).connect()
        rejected = next((tmp_path / "opcua" / "rejected").glob("hp-plc-*.der"))
        rejected.rename(trusted / "plc.der")  # what an operator does after checking the fingerprint
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["stage"] == 2.0
        other_cert, _ = make_certificate("urn:someone:else")
        (tmp_path / "pinned.der").write_bytes(other_cert)
        pinned = secure_device(sim, client_certificate, server_certificate=tmp_path / "pinned.der")
        with pytest.raises(DeviceUnavailable, match="is not the pinned"):
            await OpcUaDriver(pinned, PROFILE, tmp_path).connect()
        (tmp_path / "pinned.der").write_bytes(sim.certificate)
        sign_only = secure_device(sim, client_certificate, mode="Sign", server_certificate=tmp_path / "pinned.der")
        async with OpcUaDriver(sign_only, PROFILE, tmp_path) as driver:
            assert await driver.write("stage", 1) == 1.0


async def test_a_server_refusing_the_gateways_certificate_is_an_authentication_failure(client_certificate, tmp_path):
    gateway_der = client_certificate[0].read_bytes()
    stranger, _ = make_certificate("urn:someone:else")
    users = {"gateway": "s3cret"}
    async with OpcUaDeviceServer(
        SERVER_PROFILE, initial=INITIAL, users=users, encrypted=True, trusted_clients=[stranger]
    ) as sim:
        device = secure_device(sim, client_certificate)
        with pytest.raises(AuthenticationFailed) as caught:
            await OpcUaDriver(device, PROFILE, tmp_path).connect()
        message = str(caught.value)
        assert caught.value.cause == "authentication"
        assert message.startswith(f"hp-plc: connect to {sim.endpoint}: the server refused the secure channel")
        assert "BadCertificateUntrusted" in message
        assert str(client_certificate[0]) in message
        sim.trusted_clients = {gateway_der}  # what the PLC's operator does with the rejected certificate
        async with OpcUaDriver(device, PROFILE, tmp_path) as driver:
            assert (await driver.read()).values["supply_temp_c"] == 45.25


async def test_a_refused_server_certificate_is_an_authentication_failure(client_certificate, tmp_path):
    async with OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users={"gateway": "s3cret"}, encrypted=True) as sim:
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        device = secure_device(sim, client_certificate, trust="list", trust_dir=trusted)
        with pytest.raises(AuthenticationFailed, match=f"hp-plc: {sim.endpoint}: the server's certificate") as caught:
            await OpcUaDriver(device, PROFILE, tmp_path).connect()
        assert caught.value.cause == "authentication"


def test_security_settings_are_checked_with_the_config():
    with pytest.raises(ValidationError, match="policy Basic256Sha256 needs mode, certificate, private_key"):
        make_device("opc.tcp://h:4840", security={"policy": "Basic256Sha256"})
    with pytest.raises(ValidationError, match="trust list needs trust_dir"):
        make_device(
            "opc.tcp://h:4840",
            security={
                "policy": "Basic256Sha256",
                "mode": "Sign",
                "certificate": "c",
                "private_key": "k",
                "trust": "list",
            },
        )
    with pytest.raises(ValidationError, match="password is set but username is not"):
        make_device("opc.tcp://h:4840", password="x")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        make_device("opc.tcp://h:4840", security={"policy": "None", "polcy": "x"})


def test_the_factory_resolves_paths_beside_the_site_file(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plc.yaml").write_text(yaml.safe_dump(PROFILE.model_dump(mode="json", exclude_defaults=True)))
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": "test",
                "state_dir": "state",
                "devices": [
                    {
                        "name": "hp-plc",
                        "kind": "heat_pump_plc",
                        "protocol": "opcua",
                        "profile": "plc",
                        "endpoint": "opc.tcp://127.0.0.1:4840",
                        "security": {
                            "policy": "Basic256Sha256",
                            "mode": "SignAndEncrypt",
                            "certificate": "pki/gateway.der",
                            "private_key": "pki/gateway.pem",
                        },
                    }
                ],
            }
        )
    )
    site = load_site(site_file)
    driver = make_driver(site, site.config.devices[0])
    assert isinstance(driver, OpcUaDriver)
    assert driver.device.security.certificate == tmp_path / "pki" / "gateway.der"
    assert driver.trust_dir == tmp_path / "state" / "opcua" / "trusted"


# --- browse ---------------------------------------------------------------------------------------


async def test_browse_prints_the_tree_with_ids_types_access_and_values(server):
    lines = format_tree(await browse(server.endpoint, depth=4))
    text = "\n".join(lines)
    assert lines[0].startswith("Test PLC/")
    assert any(line.startswith("  HeatPump/") for line in lines)
    setpoint = next(line for line in lines if "Setpoint =" in line)
    assert setpoint.startswith("    Setpoint = 50")
    assert "Float" in setpoint
    assert "read_write" in setpoint
    assert f"nsu={URI};s=HeatPump.Setpoint" in setpoint
    assert "Serial = 'SN-0042'" in text
    assert "ServerStatus" not in text, "namespace 0 is left out"
    shallow = format_tree(await browse(server.endpoint, depth=1))
    assert shallow == [lines[0]]


async def test_browse_command_line(server):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "browse",
        server.endpoint,
        "--depth",
        "3",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith("Objects\n  Test PLC/")
    assert f"nsu={URI};s=HeatPump.SupplyTemp" in text
    assert "Double" in text


async def test_browse_command_line_reports_an_unreachable_server():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "browse",
        f"opc.tcp://127.0.0.1:{free_port()}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "connection refused" in err.decode()


# --- the shipped profiles -----------------------------------------------------------------------


def shipped_opcua_profiles() -> list[Path]:
    paths = sorted((REPO / "config" / "profiles").glob("*.yaml"))
    return [p for p in paths if (yaml.safe_load(p.read_text()) or {}).get("protocol") == "opcua"]


@pytest.mark.parametrize("path", shipped_opcua_profiles(), ids=lambda p: p.stem)
async def test_shipped_profiles_are_served_read_and_written(path, tmp_path):
    profile = load_profile(path)
    assert isinstance(profile, OpcUaProfile)
    values = {name: (spec.min if spec.min is not None else 1.0) for name, spec in profile.signals.items()}
    async with (
        OpcUaDeviceServer(profile, initial=values) as sim,
        OpcUaDriver(make_device(sim), profile, tmp_path) as driver,
    ):
        before = sim.read_requests
        reading = await driver.read()
        assert sim.read_requests - before == 1
        assert reading.bad == {}
        assert len(reading.values) + len(reading.texts) == len(profile.signals)
        for name, spec in profile.signals.items():
            if spec.access == "read_write":
                assert spec.max is not None
                assert await driver.write(name, spec.max) == pytest.approx(spec.max, rel=1e-6)


# --- the run log ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_process(tmp_path: Path, endpoint: str, broker_port: int) -> AsyncIterator[list[dict[str, Any]]]:
    """``heat-gateway run`` as a process, polling one OPC UA device as user gateway with password
    ``guess``; yields its run log (JSON lines, as parsed so far)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plc.yaml").write_text(yaml.safe_dump(PROFILE.model_dump(mode="json", exclude_defaults=True)))
    device = {
        "name": "hp-plc",
        "kind": "heat_pump_plc",
        "protocol": "opcua",
        "profile": "plc",
        "endpoint": endpoint,
        "username": "gateway",
        "password": "guess",
        "poll_period_s": 0.2,
        "timeout_s": 1.0,
        "backoff_max_s": 0.4,
    }
    site = {
        "site": "authtest",
        "state_dir": "state",
        "profiles_dir": "profiles",
        "devices": [device],
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": f"authtest-{time.time_ns()}"},
        "logging": {"format": "json"},
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(site_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []

    async def collect() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))

    reader = asyncio.create_task(collect(), name="run-log")
    try:
        yield lines
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
        await reader


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == name]


async def test_a_wrong_password_is_one_line_in_the_run_log(mosquitto, tmp_path):
    """A refused user is said once, with device, endpoint and cause, however often the poller
    retries; the right password then brings the device back."""
    async with (
        OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users={"gateway": "s3cret"}) as sim,
        gateway_process(tmp_path, sim.endpoint, mosquitto.port) as lines,
    ):
        await wait_for(lambda: bool(events(lines, "device_unavailable")), timeout_s=20)
        await asyncio.sleep(2.0)  # ten more retries at 0.2-0.4 s: none of them may log again
        down = events(lines, "device_unavailable")
        assert len(down) == 1, down
        assert down[0]["device"] == "hp-plc"
        assert down[0]["cause"] == "authentication"
        assert f"connect to {sim.endpoint}: authentication failed for user 'gateway'" in down[0]["reason"]
        assert "BadUserAccessDenied" in down[0]["reason"]
        assert events(lines, "device_still_unavailable") == []
        assert "guess" not in json.dumps(lines)  # the password itself is never logged
        # The PLC's operator gives the gateway's user the password the site file has.
        await sim.stop()
        sim.users = {"gateway": "guess"}
        await sim.start()
        await wait_for(lambda: bool(events(lines, "device_available")), timeout_s=20)
        assert len(events(lines, "device_unavailable")) == 1


async def test_a_password_changed_during_an_outage_is_logged_when_it_shows(mosquitto, tmp_path):
    """The PLC restarts with another password: the run log says the device went (session lost),
    then once that it is still down, now for authentication."""
    async with (
        OpcUaDeviceServer(SERVER_PROFILE, initial=INITIAL, users={"gateway": "guess"}) as sim,
        gateway_process(tmp_path, sim.endpoint, mosquitto.port) as lines,
    ):
        await wait_for(lambda: bool(events(lines, "device_available")), timeout_s=20)
        await sim.stop()
        sim.users = {"gateway": "changed"}
        await sim.start()
        await wait_for(
            lambda: any(line["cause"] == "authentication" for line in events(lines, "device_still_unavailable")),
            timeout_s=20,
        )
        settled = len(lines)
        await asyncio.sleep(2.0)  # ten more refused logins: not one more line
        assert not [line for line in lines[settled:] if "unavailable" in line.get("event", "")]
        down = events(lines, "device_unavailable")
        assert len(down) == 1
        assert down[0]["cause"] != "authentication"
        # One line per change of cause: session lost, maybe refused while the server restarted,
        # then authentication, which is where it stays.
        still = events(lines, "device_still_unavailable")
        causes = [down[0]["cause"]] + [line["cause"] for line in still]
        assert [line["was"] for line in still] == causes[:-1]
        assert all(a != b for a, b in itertools.pairwise(causes)), causes
        assert still[-1]["cause"] == "authentication"
        assert f"connect to {sim.endpoint}: authentication failed" in still[-1]["reason"]
