"""The shipped Mosquitto configuration, with its ACL and TLS, decides who commands the plant.

deploy/make-site-credentials.sh makes a CA, the broker's certificate, passwords and the ACL in a
temporary folder; a private Mosquitto runs deploy/mosquitto.conf with its paths and ports pointed
there; a gateway with a control loop connects over TLS as user ``gateway``. Then: an operator's
command reaches it and the ack names the operator; the historian, the gateway's own account and
an operator writing on another operator's topic or on the bare topic never reach it; anonymous
clients are refused; a wrong password is one log line however often the gateway retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from gateway.config import load_site
from gateway.service import Gateway
from tests.services import MosquittoServer, free_port

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent
SITE = "dk-test-1"
TIMEOUT_S = 20.0


class SiteBroker(MosquittoServer):
    """Mosquitto running deploy/mosquitto.conf as shipped, its paths and ports moved to the test's."""

    def __init__(self, workdir: Path, credentials: Path) -> None:
        super().__init__(workdir=workdir)
        self.tls_port = free_port()
        self.credentials = credentials

    def config_text(self) -> str:
        text = (REPO / "deploy" / "mosquitto.conf").read_text(encoding="utf-8")
        for old, new in {
            "/etc/mosquitto/heat-gateway/": f"{self.credentials}/",
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.data_dir}/",
            "pid_file /run/mosquitto/mosquitto.pid\n": "",
            "listener 1883 127.0.0.1\n": f"listener {self.port} 127.0.0.1\n",
            "listener 8883\n": f"listener {self.tls_port} 127.0.0.1\n",
        }.items():
            assert old in text, f"deploy/mosquitto.conf no longer has {old!r}: update this test"
            text = text.replace(old, new)
        # Mosquitto started as root would switch to user "mosquitto": stay the test's user.
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n{text}"

    def refusals(self) -> int:
        """Connections the broker refused for a bad user name or password since start."""
        return self._output_since_start().count(b"not authorised")


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (make services)")
    folder = tmp_path_factory.mktemp("site") / "credentials"
    subprocess.run(
        [
            str(REPO / "deploy" / "make-site-credentials.sh"),
            *("--operator", "alice", "--operator", "bob", "--host", "127.0.0.1", "--host", "localhost"),
            *(SITE, str(folder)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


@pytest.fixture(scope="module")
def broker(credentials: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteBroker]:
    with SiteBroker(tmp_path_factory.mktemp("broker"), credentials) as server:
        yield server


def password(credentials: Path, user: str) -> str:
    return (credentials / "private" / f"{user}.password").read_text(encoding="utf-8").strip()


class Client:
    """A paho client over TLS as one user: publishes, and collects what it receives."""

    def __init__(
        self, broker: SiteBroker, user: str | None, secret: str | None, *, subscribe: str | None = None
    ) -> None:
        self.received: list[paho.MQTTMessage] = []
        self.connack = threading.Event()
        self.reason: str = ""
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.time_ns()}"
        )
        self.client.tls_set(ca_certs=str(broker.credentials / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        if user is not None:
            self.client.username_pw_set(user, secret)
        subscribed = threading.Event()

        def on_connect(client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
            self.reason = str(reason)
            self.connack.set()
            if subscribe is not None and not getattr(reason, "is_failure", True):
                client.subscribe(subscribe, qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        self.client.connect("127.0.0.1", broker.tls_port)
        self.client.loop_start()
        assert self.connack.wait(TIMEOUT_S), f"no CONNACK for {user}"
        if subscribe is not None and self.reason == "Success":
            assert subscribed.wait(TIMEOUT_S)

    def send(self, topic: str, command: dict[str, object]) -> None:
        info = self.client.publish(topic, json.dumps(command), qos=1)
        info.wait_for_publish(TIMEOUT_S)  # the broker has it (or has dropped it, by the ACL)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_site(tmp_path: Path, broker: SiteBroker, user: str, secret: str) -> Path:
    """A site with a control loop whose devices are not there (commands need no plant)."""
    closed = free_port()  # nothing listens: pollers back off, the cycle runs in its safe state
    path = tmp_path / f"site-{user}.yaml"
    path.write_text(
        f"site: {SITE}\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
        "devices:\n"
        f"  - {{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {closed}, profile: cdu}}\n"
        f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {closed}, "
        "unit_id: 10, profile: heat-meter}\n"
        f"  - {{name: hp-plc, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{closed}/', "
        "profile: hp-plc}\n"
        f"  - {{name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{closed}/', "
        "profile: panel-pc}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.tls_port}, tls: {{ca_file: {broker.credentials / 'ca.crt'}}}, "
        f"username: {user}, password: '{secret}', client_id: gw-{time.time_ns()}, spool: false}}\n"
        "control: {cycle_s: 0.5, heartbeat_period_s: 1.0}\n",
        encoding="utf-8",
    )
    return path


async def _wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def test_only_operators_command_the_plant_and_the_ack_names_them(
    tmp_path: Path, broker: SiteBroker, credentials: Path
) -> None:
    site = load_site(write_site(tmp_path, broker, "gateway", password(credentials, "gateway")))
    gateway = Gateway(site)
    assert gateway.control is not None
    cmd = f"heat/{SITE}/control/cmd"
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(gateway.run(stop))
        alice = Client(broker, "alice", password(credentials, "alice"), subscribe=f"heat/{SITE}/control/ack")
        historian = Client(broker, "historian", password(credentials, "historian"), subscribe=f"heat/{SITE}/+/metrics")
        own_account = Client(broker, "gateway", password(credentials, "gateway"))
        bob = Client(broker, "bob", password(credentials, "bob"))
        try:
            await _wait_for(lambda: gateway.control is not None and gateway.control.cycles > 0, "control cycles")
            await _wait_for(lambda: gateway.publisher.connected, "the gateway's connection")

            alice.send(f"{cmd}/alice", {"id": "a1", "mode": "off"})
            await _wait_for(lambda: any(json.loads(m.payload).get("id") == "a1" for m in alice.received), "ack a1")
            (ack,) = [json.loads(m.payload) for m in alice.received if json.loads(m.payload).get("id") == "a1"]
            assert ack == {"id": "a1", "accepted": True, "reason": "mode off", "mode": "off", "sender": "alice"}
            (line,) = [e for e in logs if e["event"] == "control_command_applied" and e["id"] == "a1"]
            assert line["sender"] == "alice"

            # Not operators, or not on their own topic: the broker drops every one of these.
            forbidden = [
                (historian, f"{cmd}/historian", "h1"),
                (historian, cmd, "h2"),
                (historian, f"{cmd}/alice", "h3"),
                (own_account, f"{cmd}/gateway", "g1"),
                (own_account, cmd, "g2"),
                (bob, f"{cmd}/alice", "b1"),  # bob pretending to be alice
                (bob, cmd, "b2"),  # bob without a name
                (alice, cmd, "a2"),
            ]
            for client, topic, command_id in forbidden:
                client.send(topic, {"id": command_id, "mode": "auto"})
            # The broker handled those before this one (each was acknowledged to its sender first).
            bob.send(f"{cmd}/bob", {"id": "b3", "mode": "auto"})
            await _wait_for(lambda: any(json.loads(m.payload).get("id") == "b3" for m in alice.received), "ack b3")
            acks = {json.loads(m.payload)["id"]: json.loads(m.payload) for m in alice.received}
            assert set(acks) == {"a1", "b3"}, acks
            assert acks["b3"]["sender"] == "bob"
            assert acks["b3"]["accepted"] is True
            assert gateway.control.state.mode.value == "auto"
            heard = {e.get("id") for e in logs if str(e["event"]).startswith("control_command")}
            assert heard == {"a1", "b3"}

            # The historian reads the site's metrics (the control loop's, every cycle).
            await _wait_for(lambda: historian.received, "metrics at the historian")
            assert all(m.topic.endswith("/metrics") for m in historian.received)
            # ...and publishes its own figures, never a device's readings
            historian.send(f"heat/{SITE}/cdu-1/metrics", {"forged": 1})
            historian.send(f"heat/{SITE}/historian/metrics", {"own": 1})
            await _wait_for(lambda: any(b'"own"' in m.payload for m in historian.received), "the historian's own")
            assert not any(b"forged" in m.payload for m in historian.received)
        finally:
            for client in (alice, historian, own_account, bob):
                client.close()
            stop.set()
            await asyncio.wait_for(task, TIMEOUT_S)


def test_anonymous_and_wrong_passwords_are_refused(broker: SiteBroker, credentials: Path) -> None:
    anonymous = Client(broker, None, None)
    wrong = Client(broker, "alice", "not-the-password")
    for client in (anonymous, wrong):
        client.close()
    assert anonymous.reason != "Success"
    assert wrong.reason != "Success"


async def test_a_wrong_password_is_one_clear_log_line(tmp_path: Path, broker: SiteBroker) -> None:
    site = load_site(write_site(tmp_path, broker, "gateway", "wrong-password"))
    gateway = Gateway(site)
    stop = asyncio.Event()
    refused_before = broker.refusals()
    with capture_logs() as logs:
        task = asyncio.create_task(gateway.run(stop))
        try:
            # paho retries after 1, 2, 4 s: wait until the broker has refused it three times
            await _wait_for(lambda: broker.refusals() >= refused_before + 3, "three refused logins")
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT_S)
    refused = [e for e in logs if "refused" in str(e["event"]) and str(e["event"]).startswith("mqtt")]
    assert len(refused) == 1, refused
    line = refused[0]
    assert line["log_level"] == "error"
    assert "not authori" in str(line).lower() or "password" in str(line).lower(), line
    assert "wrong-password" not in str(logs)


def test_the_historians_receipts_reach_the_gateway_account_and_nobody_forges_them(
    broker: SiteBroker, credentials: Path
) -> None:
    """The spool's 'stored' path (docs/nothing-lost.md) works through the shipped ACL."""
    receipts = f"heat/{SITE}/historian/#"
    gateway = Client(broker, "gateway", password(credentials, "gateway"), subscribe=receipts)
    historian = Client(broker, "historian", password(credentials, "historian"))
    alice = Client(broker, "alice", password(credentials, "alice"))
    try:
        for topic in ("stored", "stored_recent", "status"):
            alice.send(f"heat/{SITE}/historian/{topic}", {"forged": topic})
            gateway.send(f"heat/{SITE}/historian/{topic}", {"forged": f"gateway {topic}"})
            historian.send(f"heat/{SITE}/historian/{topic}", {"receipt": topic})
        deadline = time.monotonic() + TIMEOUT_S
        while len({m.topic for m in gateway.received}) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a forged message would arrive in the same order as the real ones
        seen = {m.topic.rsplit("/", 1)[1]: m.payload for m in gateway.received}
        assert set(seen) == {"stored", "stored_recent", "status"}, seen
        assert not any(b"forged" in m.payload for m in gateway.received)
    finally:
        for client in (gateway, historian, alice):
            client.close()
